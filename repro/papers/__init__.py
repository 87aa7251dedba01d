"""One module per paper: its models and losses, its runs, its artifacts (see repro.artifacts).

Each module defines ``PAPER = Paper(...)``, which the registry discovers:
:mod:`.imta`, :mod:`.glancenet`, :mod:`.dgate`, :mod:`.biasloss` and :mod:`.dcp`, one docs
page each under docs/papers/.  ``manifest.json`` beside them is the registry as plain data
for the command line (``python -m repro.manifest`` rewrites it); docs/adding-a-paper.md
shows how to add one.
"""
