"""Same config, same numbers: a run's model.pt, outputs.pt and results.json are a function of its
config alone, on the CPU at one thread count (the tests run with REPRO_THREADS=1).

Checked end to end with IMTA fig7 at smoke scale over two epochs (phase-I runs, and phase-II
runs that build new heads on top of their parent): trained in a fresh process, trained again in
another, trained in-process after another paper's runs, under ``--jobs 2``, killed (SIGKILL) at
several points and resumed by the same command, and forced twice.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FMNIST_FOUND, FMNIST_MISSING


def require_smoke_data() -> None:
    if FMNIST_FOUND is None:
        pytest.skip(FMNIST_MISSING)

pytestmark = pytest.mark.slow

ARGS = ["imta", "fig7", "--scale", "smoke", "--epochs", "2"]


def _cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "repro", *ARGS, "--runs-dir", str(root / "runs"), "--out-dir", str(root),
            *extra]


def _env() -> dict:
    return {**os.environ, "REPRO_THREADS": "1"}


def _repro(root: Path, *extra: str) -> subprocess.CompletedProcess:
    out = subprocess.run(_cmd(root, *extra), env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def snapshot(runs: Path) -> dict[str, dict]:
    """Every finished run's model.pt, outputs.pt and results.json, by run folder name."""
    out = {}
    for d in sorted(p.parent for p in runs.glob("*/*/results.json")):
        out[d.name] = {"results": (d / "results.json").read_text(),
                       **{f: torch.load(d / f, weights_only=True) for f in ("model.pt", "outputs.pt")
                          if (d / f).exists()}}
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a, (sorted(a), sorted(b))
    for run in a:
        for f in a[run]:
            assert _equal(a[run][f], b[run][f]), f"{run}/{f} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    require_smoke_data()
    root = tmp_path_factory.mktemp("det_ref")
    _repro(root)
    return snapshot(root / "runs")


def test_the_same_command_twice_in_fresh_processes_gives_identical_runs(reference, tmp_path):
    _repro(tmp_path)
    assert_same(reference, snapshot(tmp_path / "runs"))


def test_a_run_trained_after_other_runs_in_one_process_is_identical(reference, tmp_path):
    from repro.cli import main

    main(["dgate", "table1", "--scale", "smoke", "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)])
    main([*ARGS, "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)])
    got = {k: v for k, v in snapshot(tmp_path / "runs").items() if k in reference}
    assert_same(reference, got)


def test_runs_trained_under_jobs_2_are_identical(reference, tmp_path):
    _repro(tmp_path, "--jobs", "2")
    assert_same(reference, snapshot(tmp_path / "runs"))


def test_force_twice_gives_identical_runs(reference, tmp_path):
    _repro(tmp_path)
    _repro(tmp_path, "--force")
    first = snapshot(tmp_path / "runs")
    _repro(tmp_path, "--force")
    assert_same(reference, first)
    assert_same(reference, snapshot(tmp_path / "runs"))


def _kill_when(root: Path, ready) -> None:
    """Start the command, SIGKILL it as soon as ``ready(runs)`` holds, then resume it to the end."""
    proc = subprocess.Popen(_cmd(root), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while proc.poll() is None and not ready(root / "runs") and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the command finished before the kill point"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _repro(root)


def _checkpoint_epochs(runs: Path) -> list[int]:
    out = []
    for p in runs.glob("*/*/ckpt/*.pt"):
        try:
            out.append(int(torch.load(p, weights_only=True)["epoch"]))
        except Exception:  # being written
            pass
    return out


KILL_POINTS = {
    # the first run's folder exists (split.pt written) but no epoch has finished
    "before_first_checkpoint": lambda runs: any(runs.glob("*/*/split.pt")) and not any(runs.glob("*/*/ckpt/*.pt")),
    # one epoch of the first run checkpointed, the second under way
    "mid_run": lambda runs: 1 in _checkpoint_epochs(runs) and not any(runs.glob("*/*/results.json")),
    # a run has finished, the next not yet
    "between_runs": lambda runs: len(list(runs.glob("*/*/results.json"))) == 1,
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_and_resumed_runs_are_identical(reference, tmp_path, point):
    _kill_when(tmp_path, KILL_POINTS[point])
    assert_same(reference, snapshot(tmp_path / "runs"))


def test_results_json_holds_no_wall_time_and_meta_records_threads(reference, tmp_path):
    _repro(tmp_path)
    for meta in (tmp_path / "runs").glob("*/*/meta.json"):
        m = json.loads(meta.read_text())
        assert m["threads"] == 1 and m["seconds"] > 0
        assert "seconds" not in json.loads((meta.parent / "results.json").read_text())
