import os

import torch

# Tests run beside other processes on small machines: one intra-op thread keeps small
# convolutions from fighting over cores (and keeps timings out of the results); the CLI,
# called in-process by the tests and by their subprocesses, keeps it through REPRO_THREADS.
torch.set_num_threads(1)
os.environ.setdefault("REPRO_THREADS", "1")
# Image trees the tests verify are remembered in a cache of this session (and its subprocesses),
# not in the user's ~/.cache/repro (docs/data.md, "verified before anything runs").
if "REPRO_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["REPRO_CACHE_DIR"] = tempfile.mkdtemp(prefix="repro-test-cache-")
    atexit.register(shutil.rmtree, os.environ["REPRO_CACHE_DIR"], True)
# ... and one run at a time (`--jobs auto` would start runs in other processes when the load
# allows, so a test's in-process patches would not reach them); tests/test_jobs_auto.py sets it.
os.environ.setdefault("REPRO_JOBS", "1")


import re  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from repro.data import fashion_mnist_folders, find_fashion_mnist  # noqa: E402

# Where the loader would read Fashion-MNIST from (the data root, $REPRO_DATA or ~/.cache/repro,
# then Debian's /usr/share/datasets/fashion-mnist); None when it would have to download it.
FMNIST_FOUND = find_fashion_mnist()
FMNIST_MISSING = ("missing data: Fashion-MNIST not found (looked in "
                  f"{', '.join(str(p) for p in fashion_mnist_folders())}); "
                  "apt-get install dataset-fashion-mnist, or put its four idx files in the first folder")
# For end-to-end tests: @needs_fmnist
needs_fmnist = pytest.mark.skipif(FMNIST_FOUND is None, reason=FMNIST_MISSING)
# Skip reasons counted as missing data in the summary (this file's, and older wordings).
_MISSING_DATA = re.compile(r"missing data|Fashion-MNIST not (found|installed)", re.IGNORECASE)


def run_smoke(tmp_path_factory, paper: str, artifacts) -> Path:
    """Run ``repro <paper> <artifact> --scale smoke`` for each artifact into one fresh folder
    (runs shared between them); skip when the loader would not find Fashion-MNIST on disk."""
    if FMNIST_FOUND is None:
        pytest.skip(FMNIST_MISSING)
    from repro.cli import main

    root = tmp_path_factory.mktemp(f"{paper}_smoke")
    for artifact in artifacts:
        main([paper, artifact, "--scale", "smoke", "--runs-dir", str(root / "runs"), "--out-dir", str(root)])
    return root


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def missing_data_skips(reports) -> Counter:
    """Skip reasons that say data is missing, with how many tests each skipped."""
    return Counter(r for r in map(_skip_reason, reports) if _MISSING_DATA.search(r))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = missing_data_skips(terminalreporter.stats.get("skipped", []))
    if counts:
        n = sum(counts.values())
        terminalreporter.write_line(f"{n} test{'s' if n != 1 else ''} skipped for missing data:", yellow=True)
        for reason, k in counts.most_common():
            terminalreporter.write_line(f"  {k} x {reason}", yellow=True)
