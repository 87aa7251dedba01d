"""``--jobs auto`` (the default): an artifact's independent runs train side by side when the
machine's free cores allow, every CPU run at a thread count that depends on neither the load nor
how many runs train alongside, so that its numbers equal those of the same run trained alone."""
from __future__ import annotations

import json
import os

import pytest

from repro.launch import AUTO_THREADS, LocalParallel, auto_jobs, auto_threads, resolve_auto


@pytest.mark.parametrize("runs, cores, load, threads, gpus, want", [
    (5, 2, 0.0, 1, 0, 2),     # idle 2-core machine: two runs at once
    (5, 2, 1.0, 1, 0, 1),     # one core busy with another job: one at a time
    (5, 2, 0.4, 1, 0, 2),     # a light load rounds away
    (1, 16, 0.0, 1, 0, 1),    # one run: nothing to put beside it
    (3, 16, 0.0, 1, 0, 3),    # never more than the runs
    (9, 16, 0.0, 4, 0, 4),    # REPRO_THREADS=4: 4 runs of 4 threads on 16 cores
    (9, 16, 30.0, 1, 0, 1),   # overloaded: at least one
    (5, 1, 0.0, 1, 4, 4),     # one per GPU
    (2, 1, 0.0, 1, 4, 2),
])
def test_auto_jobs(runs, cores, load, threads, gpus, want):
    assert auto_jobs(runs, cores, cores, load, threads, gpus=gpus) == want


def test_auto_threads_come_from_the_environment_never_from_the_load(monkeypatch):
    monkeypatch.delenv("REPRO_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for load in (0.0, 1.5, 40.0):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert auto_threads() == AUTO_THREADS == 1
        n, threads, _ = resolve_auto("cpu", 4)
        assert threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert auto_threads() == 3
    monkeypatch.setenv("REPRO_THREADS", "2")
    assert auto_threads() == 2


def test_auto_is_one_at_a_time_under_torchrun_or_submitit(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert resolve_auto("cpu", 4, "submitit")[0] == 1
    from repro import distributed as D

    monkeypatch.setattr(D, "_ENV", D.DistEnv(rank=0, world=2))  # as under torchrun
    assert resolve_auto("cpu", 4)[0] == 1


def test_local_parallel_gives_each_slot_the_fixed_thread_count(monkeypatch):
    monkeypatch.delenv("REPRO_THREADS", raising=False)
    from repro.runner import Settings

    slots = LocalParallel(2, threads=1)._slots(Settings(device="cpu"))
    assert slots == [{"OMP_NUM_THREADS": "1", "REPRO_THREADS": "1"}] * 2


def test_jobs_bad_value_is_one_line(capsys):
    from repro.cli import main

    with pytest.raises(SystemExit) as e:
        main(["imta", "table2", "--jobs", "many", "--dry-run"])
    assert e.value.code == 2
    assert "--jobs must be a positive integer or auto" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_trained_side_by_side_under_auto_equal_sequential_ones(tmp_path, monkeypatch, capsys):
    """IMTA table2 at smoke scale (two phase-I runs and three phase-II children): under --jobs auto on
    an idle 2-core machine (patched) they train two at a time in child processes, each at one
    thread, and are bit-identical to the same runs trained one after another in this process."""
    from conftest import FMNIST_FOUND, FMNIST_MISSING
    from test_determinism import assert_same, snapshot

    if FMNIST_FOUND is None:
        pytest.skip(FMNIST_MISSING)
    from repro.cli import main

    args = ["imta", "table2", "--scale", "smoke", "--epochs", "1"]
    main([*args, "--jobs", "1", "--runs-dir", str(tmp_path / "seq" / "runs"), "--out-dir", str(tmp_path / "seq")])
    capsys.readouterr()
    monkeypatch.delenv("REPRO_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("REPRO_JOBS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    main([*args, "--runs-dir", str(tmp_path / "auto" / "runs"), "--out-dir", str(tmp_path / "auto")])
    err = capsys.readouterr().err
    assert "--jobs auto: 2 runs at once, 1 torch thread each" in err, err[-2000:]
    runs = sorted((tmp_path / "auto" / "runs").glob("*/*/results.json"))
    assert len(runs) == 5
    for r in runs:  # trained by the parallel launcher's children, each at one thread
        assert (r.parent / "launch.log").exists()
        assert json.loads((r.parent / "meta.json").read_text())["threads"] == 1
    assert_same(snapshot(tmp_path / "seq" / "runs"), snapshot(tmp_path / "auto" / "runs"))
