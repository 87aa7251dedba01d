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
import shutil  # noqa: E402
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


# ---------------------------------------------------------------------------- the shared smoke run store
# REPRO_SMOKE_RUNS names a run store that `make smoke` trained into (`make test` and .ci/run set it to
# the Makefile's SMOKE_RUNS, runs/ by default). A smoke fixture copies the finished runs it would
# train from there into its own temporary store before it runs the CLI, then adds the runs it
# trained back. Runs are content-addressed (the folder names the config's hash) and training is
# deterministic (tests/test_determinism.py), so a copied run holds what retraining it would give:
# the same numbers, without training every smoke run twice in CI. The tests only ever write
# into their temporary stores; the shared one only gains finished runs it lacked, each put in place
# by one rename. Without the variable every fixture trains into its temporary store.
# Tests of training itself (determinism, resume, launchers, --force) keep stores of their own.
SMOKE_RUNS_ENV = "REPRO_SMOKE_RUNS"


def shared_smoke_runs() -> Path | None:
    value = os.environ.get(SMOKE_RUNS_ENV, "").strip()
    return Path(value).resolve() if value else None


def smoke_request(**overrides):
    from repro.api import Request

    return Request(scale="smoke", **overrides)


def seed_smoke_runs(runs: Path, paper: str, artifact: str, request=None) -> int:
    """Copy the finished runs ``repro <paper> <artifact>`` plans for ``request`` (smoke scale by
    default) from the shared smoke store into ``runs``; returns how many were copied."""
    shared = shared_smoke_runs()
    if shared is None or not shared.is_dir() or shared == Path(runs).resolve():
        return 0
    from repro.artifacts import get_paper
    from repro.runner import plan
    from repro.store import Run

    copied = 0
    for cfg in plan(get_paper(paper).artifact(artifact), request or smoke_request()):
        src, dst = Run(shared, cfg).dir, Run(runs, cfg).dir
        if (src / "results.json").is_file() and not dst.exists():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*.tmp*"))
            copied += 1
    return copied


def share_smoke_runs(runs: Path) -> int:
    """Add the finished runs in ``runs`` that the shared smoke store lacks (each copied beside its
    place under a hidden name, then renamed into it); returns how many were added."""
    shared = shared_smoke_runs()
    runs = Path(runs)
    if shared is None or shared == runs.resolve() or not runs.is_dir():
        return 0
    added = 0
    for done in sorted(runs.glob("*/*/results.json")):
        src = done.parent
        dst = shared / src.parent.name / src.name
        if dst.exists():
            continue  # there already (or being trained there): never touched
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.incoming{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".*.tmp*"))
        try:
            os.rename(tmp, dst)  # fails if another process put it there meanwhile
            added += 1
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return added


def smoke_cli(paper: str, artifact: str, runs: Path, out: Path, *, train_limit: int | None = None,
              options: dict[str, str] | None = None, main=None):
    """``repro <paper> <artifact> --scale smoke [--train-limit N] [--set K=V ...] --runs-dir runs
    --out-dir out`` with the shared smoke store's runs copied in first and the new ones added back
    (``main``: the CLI, or a wrapper of it that expects an exit code)."""
    if main is None:
        from repro.cli import main
    options = options or {}
    seed_smoke_runs(runs, paper, artifact,
                    smoke_request(train_limit=train_limit, options=tuple(options.items())))
    argv = [paper, artifact, "--scale", "smoke"]
    if train_limit is not None:
        argv += ["--train-limit", str(train_limit)]
    for k, v in options.items():
        argv += ["--set", f"{k}={v}"]
    try:
        return main([*argv, "--runs-dir", str(runs), "--out-dir", str(out)])
    finally:
        share_smoke_runs(runs)


def run_smoke(tmp_path_factory, paper: str, artifacts) -> Path:
    """Run ``repro <paper> <artifact> --scale smoke`` for each artifact into one fresh folder
    (runs shared between them, and with $REPRO_SMOKE_RUNS: smoke_cli); skip when the loader
    would not find Fashion-MNIST on disk."""
    if FMNIST_FOUND is None:
        pytest.skip(FMNIST_MISSING)
    root = tmp_path_factory.mktemp(f"{paper}_smoke")
    for artifact in artifacts:
        smoke_cli(paper, artifact, root / "runs", root)
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
