"""repro: reproduce the tables and accuracy-vs-FLOPs figures of efficient-CNN papers.

One command per artifact (``repro <paper> <artifact>``) plans the runs it needs, trains or
reuses them in the run store, fits early-exit thresholds on a held-out validation split,
and writes the table or figure with the paper's numbers beside ours.  The papers are
modules of :mod:`repro.papers`; the core (runner, store, training loop, evaluation, FLOPs
counting, rendering) names none of them.  Start at README.md; the pages are under docs/.
"""

__version__ = "0.1.0"

# The command's first instruction: Ctrl-C from here on ends it with one line and exit code 130
# (repro.interrupts); a program that imports repro as a library keeps Python's own handling.
from repro import interrupts as _interrupts  # noqa: E402

if _interrupts.is_command():
    _interrupts.install()
