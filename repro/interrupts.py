"""Ctrl-C from a command's first instruction to its last: exit code 130 and one line, never a traceback.

Python's own handling raises ``KeyboardInterrupt`` wherever the main thread happens to be.
During the imports of torch and its extensions that breaks the process (a C extension half
initialised, a C++ callback that aborts, an interrupt swallowed by an import that then fails
later), so a command (``repro ...`` or ``python -m repro ...``; :func:`install` is called by
``repro/__init__.py``, its first instruction) handles SIGINT itself:

- inside a region that cleans up after itself (:func:`raising`: a run training, the wait for
  another process's run lock, the parallel launcher's loop) the first Ctrl-C raises
  ``KeyboardInterrupt`` as before: the run keeps its finished epochs and the message says so
  (``repro.runner.interrupted_message``);
- anywhere else (start-up, imports, planning, data loading, rendering, after the summary line)
  and on a second Ctrl-C, the handler writes the one line itself, removes the temporaries of
  atomic writes in progress, and ends the process with ``os._exit(130)``.  Nothing there holds
  state worth unwinding: every file is written atomically (results.json last), and the kernel
  drops the run locks.

SIGINT ignored at start (a job started in the background by a non-interactive shell,
``cmd &`` in a script) is handled all the same, and so is one held blocked until now.
This module imports only the standard library: it is loaded before anything else of repro.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable, Iterator

EXIT_INTERRUPTED = 130
NOTHING_TRAINED = "interrupted: nothing was trained; run the same command again to resume"
AFTER_FINISH = "interrupted after the command had finished: every run and file it wrote is complete"

_installed = False
_raising = 0          # depth of the regions where the first Ctrl-C raises KeyboardInterrupt
_raised = False       # a KeyboardInterrupt was raised: the next Ctrl-C ends the process at once
_said = False         # the one line has been written
_trained = False      # a run started training (or was launched) in this process
_finished = False     # the command wrote its summary line
_message: Callable[[], str] | None = None  # the runner's interrupted_message, once it is loaded
_temporaries: set[str] = set()  # files of atomic writes in progress (removed on an exit here)


def is_command() -> bool:
    """Whether this process is the ``repro`` command (its console script, or ``python -m repro``
    while runpy imports the package), not a program or a test importing repro as a library."""
    argv = sys.argv or [""]
    if argv[0] == "-m":  # python [options] -m <module>: runpy is importing the module's package
        orig = list(getattr(sys, "orig_argv", []))
        return "-m" in orig and orig[orig.index("-m") + 1:orig.index("-m") + 2] == ["repro"]
    return os.path.basename(argv[0]) in ("repro", "repro.exe")


def install() -> None:
    """Take SIGINT over for the rest of the process (idempotent); also when it was ignored or
    blocked when the process started."""
    global _installed
    signal.signal(signal.SIGINT, _handler)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if not _installed:
        import atexit

        atexit.register(_at_exit)  # registered first: runs after every other exit handler
    _installed = True


def installed() -> bool:
    return _installed


def _at_exit() -> None:
    # Python resets its signal handlers to the default after the exit handlers, and a Ctrl-C in
    # the rest of the shutdown would kill the process by the signal with no word: the command is
    # complete by then, so the interrupt is ignored
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _handler(signum, frame) -> None:
    global _raised
    if _raising and not _raised:
        _raised = True
        raise KeyboardInterrupt
    exit_now()


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """A region that unwinds cleanly on ``KeyboardInterrupt`` (its callers report what is kept)."""
    global _raising
    _raising += 1
    try:
        yield
    finally:
        _raising -= 1


def current_message() -> str:
    if _finished:
        return AFTER_FINISH
    if _trained and _message is not None:
        with contextlib.suppress(Exception):
            return _message()
    if _trained:
        return "interrupted; finished runs and epochs are kept: run the same command again to resume"
    return NOTHING_TRAINED


def say(msg: str) -> None:
    """Write ``error: <first line of msg>`` and a newline to stderr in one write, once."""
    global _said
    lines = (msg or "").strip().splitlines()
    _said = True
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    text = f"error: {lines[0] if lines else 'interrupted'}\n"
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


def exit_now(msg: str | None = None) -> None:
    """End the process now with exit code 130 (the line first, unless it was written)."""
    if not _said:
        say(msg or current_message())
    for path in list(_temporaries):
        with contextlib.suppress(OSError):
            os.unlink(path)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(EXIT_INTERRUPTED)


def note_training() -> None:
    global _trained
    _trained = True


def note_finished() -> None:
    global _finished
    _finished = True


def set_message(fn: Callable[[], str]) -> None:
    global _message
    _message = fn


@contextlib.contextmanager
def temporary(path) -> Iterator[None]:
    """``path`` is a temporary being written: an exit here removes it."""
    p = os.fspath(path)
    _temporaries.add(p)
    try:
        yield
    finally:
        _temporaries.discard(p)
