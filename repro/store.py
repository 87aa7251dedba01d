"""The run store: one folder per run, atomic writes, and a lock per run.

A run lives in ``runs/<paper>/<name>-s<seed>-<hash>/``: ``config.json``, ``meta.json``,
``split.pt``, ``metrics.csv``, ``ckpt/<phase>.pt``, ``model.pt``, ``outputs.pt`` and, written
last, ``results.json`` (a run is done once it exists).  Every file is written atomically
(write, fsync, rename).  The ``lock`` file is a ``fcntl.lockf`` lock held by the process
that trains the run: the kernel (or the NFS lock manager) drops it when its owner dies, so
a run whose owner was killed is taken over and resumed from its last checkpoint.  POSIX
locks belong to a process, so parallel launchers use one process per run; a filesystem
that cannot lock is an error, never a silent wait.  docs/run-store.md describes the files,
and docs/scaling.md the locks on a shared filesystem.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from repro.config import RunConfig


# A write that fails for want of space (or quota) is one line naming the file, never a traceback
# or a half-written file: atomic writes remove their temporary and leave the previous file whole.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
EXIT_DISK_FULL = 3  # the command's exit code for a full disk (README: exit codes)


def is_disk_full(e: BaseException | None) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


class DiskFull(RuntimeError):
    """Writing ``path`` failed for want of space (ENOSPC) or quota (EDQUOT)."""

    def __init__(self, path, needed: int | None = None):
        self.path, self.needed = Path(path), needed
        need = f" (needs about {_size(needed)})" if needed else ""
        super().__init__(f"disk full writing {path}{need}: free space and rerun the same command to resume")


def _size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} bytes"


RESULTS_MAX_BYTES = 64 * 2**20  # no results.json of a run comes near it


class NotAFolder(ValueError):
    """A path the run store needs as a folder is a file (one line: ``error: ...``)."""


def make_dirs(path: Path) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(path) from None
        if isinstance(e, (NotADirectoryError, FileExistsError)):
            blocker = next((p for p in [Path(path), *Path(path).parents] if p.exists() and not p.is_dir()), path)
            raise NotAFolder(f"{blocker} is a file where a folder is needed for {path}; move it away, or "
                             f"give another --runs-dir / --out-dir") from None
        raise


def _write_atomically(path: Path, write, needed: int | None = None) -> None:
    """Write ``path`` through a temporary (``write(f)``, flush, fsync, rename): a reader never sees
    half a file, and on any failure (a full disk, Ctrl-C) the temporary is removed."""
    from repro import interrupts

    path = Path(path)
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with interrupts.temporary(tmp):
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            cause = getattr(e, "recorded", None) or e
            if isinstance(cause, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            if is_disk_full(cause) or is_disk_full(e.__context__):
                raise DiskFull(path, needed) from None
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _write_atomically(path, lambda f: f.write(data), len(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


class _Recording:
    """A file for torch.save that keeps the exception its writes raised (torch reports a failed
    write as 'unexpected pos ...')."""

    def __init__(self, f):
        self.f, self.recorded = f, None

    def write(self, b):
        try:
            return self.f.write(b)
        except BaseException as e:
            self.recorded = e
            raise

    def flush(self):
        return self.f.flush()


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj: Any, path: Path) -> None:
    def write(f):
        rec = _Recording(f)
        try:
            torch.save(obj, rec)
        except BaseException as e:
            if rec.recorded is not None:
                e.recorded = rec.recorded  # type: ignore[attr-defined]
            raise

    _write_atomically(path, write, _tensor_bytes(obj) or None)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the ``.<name>.tmp<pid>`` files that a killed atomic write left in ``folder`` (and
    its ``ckpt/``); call it only while holding the folder's run lock.  Returns what it removed."""
    gone = []
    for p in [*Path(folder).glob(".*.tmp*"), *Path(folder).glob("ckpt/.*.tmp*")]:
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Checkpoints hold tensors and plain Python values only: load them with weights_only."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"file {path} is missing; rerun with --force to train its run afresh") from None
    except Exception as e:
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            why = (f"it holds the Python global {found.group(1)}, which is not a tensor or plain "
                   f"value; repro never writes such files")
            raise CheckpointError(f"refused to load {path}: {why}; delete it and rerun the command", why) from None
        why = ("not a file written by torch.save (its pickle cannot be read)" if "Weights only load failed" in text
               else f"{type(e).__name__}: {(text.strip().splitlines() or [''])[0][:160]}")
        raise CheckpointError(f"cannot read {path} (corrupt: {why}); delete it and rerun the command "
                              f"(its run is retrained)", why) from None


_HELD: set[Path] = set()  # run folders whose lock this process holds (POSIX locks are per process)


class CheckpointError(RuntimeError):
    def __init__(self, msg: str, why: str = ""):
        super().__init__(msg)
        self.why = why or msg


class CorruptRun(CheckpointError):
    """A finished run's file cannot be read: the message names it and how to retrain that run alone."""

    def __init__(self, run: "Run", path: Path, why: str):
        super().__init__(f"{path} is corrupt ({why}); delete the run's folder (rm -r {run.dir}) and rerun "
                         f"the command: only that run is retrained")


class RunLocked(RuntimeError):
    pass


class LockUnsupported(RunLocked):
    """The run store's filesystem cannot take POSIX locks."""


class Run:
    """A run's folder and the files in it."""

    def __init__(self, runs_dir: Path, cfg: RunConfig):
        self.cfg = cfg
        self.dir = Path(runs_dir) / cfg.paper / cfg.dirname

    # paths
    @property
    def results_path(self) -> Path:
        return self.dir / "results.json"

    @property
    def outputs_path(self) -> Path:
        return self.dir / "outputs.pt"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.csv"

    def ckpt_path(self, phase: str) -> Path:
        return self.dir / "ckpt" / f"{phase}.pt"

    # state
    @property
    def done(self) -> bool:
        return self.results_path.exists()

    def state(self) -> str:
        if self.done:
            return "done"
        if not self.dir.exists():
            return "missing"
        if self.locked_by_other():
            return "running"
        return "partial" if any((self.dir / "ckpt").glob("*.pt")) else "missing"

    def results(self) -> dict:
        """results.json, checked: a JSON object; a key a reader asks for and it lacks is named
        (repro.runfiles)."""
        from repro import runfiles

        try:
            with open(self.results_path, "rb") as f:  # bounded: a results.json is kilobytes
                raw = f.read(RESULTS_MAX_BYTES + 1)
            if len(raw) > RESULTS_MAX_BYTES:
                raise CorruptRun(self, self.results_path, f"over {RESULTS_MAX_BYTES // 2**20} MiB, not a results file")
            out = json.loads(raw.decode())
        except (OSError, ValueError) as e:
            raise CorruptRun(self, self.results_path, f"{type(e).__name__}: {str(e)[:80]}") from None
        return runfiles.results(self, out)

    def outputs(self) -> dict:
        """outputs.pt, checked (repro.runfiles.outputs): per-exit float logits, finite, of the
        dataset's class count, as many samples as labels, labels in range."""
        from repro import runfiles

        if not self.outputs_path.exists():
            raise CorruptRun(self, self.outputs_path, "missing")
        try:
            out = load_checkpoint(self.outputs_path)
        except CheckpointError as e:
            raise CorruptRun(self, self.outputs_path, e.why) from None
        return runfiles.outputs(self, out)

    def metrics(self):
        """metrics.csv as a DataFrame, checked: there, with fit's columns and at least one row."""
        import pandas as pd

        from repro import runfiles

        if not self.metrics_path.exists():
            raise CorruptRun(self, self.metrics_path, "missing")
        try:
            df = pd.read_csv(self.metrics_path)
        except (OSError, ValueError) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
            raise CorruptRun(self, self.metrics_path, f"{type(e).__name__}") from None
        return runfiles.metrics(self, df)

    def load_into(self, module, name: str = "model", map_location: Any = "cpu", strict: bool = True):
        """Load this finished run's ``<name>.pt`` into ``module`` (checked: it must fit)."""
        from repro import runfiles

        return runfiles.load_into(self, module, name, map_location, strict)

    def check_done(self) -> None:
        """Raise CorruptRun if this finished run's results.json cannot be read."""
        if self.done:
            self.results()

    def clean_temporaries(self) -> list[Path]:
        return remove_temporaries(self.dir)

    def prepare(self) -> None:
        make_dirs(self.dir)
        cfg_path = self.dir / "config.json"
        if not cfg_path.exists():
            atomic_write_json(cfg_path, self.cfg.to_dict())

    def write_meta(self, **meta: Any) -> None:
        atomic_write_json(self.dir / "meta.json", {"host": socket.gethostname(), "time": time.time(), **meta})

    def write_results(self, results: dict) -> None:
        atomic_write_json(self.results_path, results)

    def reset(self) -> None:
        """Forget results and checkpoints (``--force``); the folder and its lock stay."""
        for p in [self.results_path, self.outputs_path, self.metrics_path, *self.dir.glob("ckpt/*.pt")]:
            p.unlink(missing_ok=True)

    # locking
    @contextlib.contextmanager
    def lock(self, wait: bool = True, poll: float = 2.0, on_wait=None) -> Iterator[None]:
        """Hold this run's lock; with ``wait`` block until its current owner lets go or dies."""
        make_dirs(self.dir)
        try:
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(self.dir / "lock") from None
            raise
        held = False
        try:
            told = False
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in _HELD_ERRNOS:
                        raise _unsupported(self.dir, e) from None
                    if not wait:
                        raise RunLocked(f"run {self.dir} is being trained by {self.owner()}") from None
                    if on_wait and not told:
                        on_wait(self.owner())
                        told = True
                    time.sleep(poll)
            held = True
            _HELD.add(self.dir)
            os.ftruncate(fd, 0)
            job = _job_id()
            info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                               **({"job": job} if job else {})}).encode()
            try:
                os.pwrite(fd, info, 0)
            except OSError as e:
                if is_disk_full(e):
                    raise DiskFull(self.dir / "lock", len(info)) from None
                raise
            yield
        finally:
            try:
                if held:
                    _HELD.discard(self.dir)
                    fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def owner(self) -> str:
        try:
            info = json.loads((self.dir / "lock").read_text() or "{}")
            job = f" (job {info['job']})" if info.get("job") else ""
            return f"pid {info.get('pid')} on {info.get('host')}{job}"
        except (OSError, ValueError):
            return "another process"

    def locked_by_other(self) -> bool:
        path = self.dir / "lock"
        if self.dir in _HELD or not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(fd, fcntl.LOCK_UN)
            return False
        except OSError as e:
            if e.errno not in _HELD_ERRNOS:
                raise _unsupported(self.dir, e) from None
            return True
        finally:
            os.close(fd)


def _job_id() -> str | None:
    """The Slurm (array) job this process runs in, as squeue shows it, if any."""
    e = os.environ
    if e.get("SLURM_ARRAY_JOB_ID") and e.get("SLURM_ARRAY_TASK_ID"):
        return f"{e['SLURM_ARRAY_JOB_ID']}_{e['SLURM_ARRAY_TASK_ID']}"
    return e.get("SLURM_JOB_ID") or e.get("SUBMITIT_LOCAL_JOB_ID")


# lockf's answers when another process holds the lock; anything else (ENOLCK, EOPNOTSUPP, ...)
# means the filesystem cannot lock, and waiting would never end.
_HELD_ERRNOS = (errno.EACCES, errno.EAGAIN)


def _unsupported(folder: Path, e: OSError) -> LockUnsupported:
    return LockUnsupported(f"cannot lock runs in {folder.parent}: {os.strerror(e.errno or 0)} (errno {e.errno}); "
                     f"put --runs-dir on a filesystem with POSIX locks (local disk, NFSv4, Lustre/GPFS "
                     f"mounted with locking)")
