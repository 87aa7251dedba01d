"""Every bad input ends in one line naming the problem and what to do, a non-zero exit, and no
traceback; where it can be known up front, before any run trains (the pre-flight check).

The CLI cases are one table: (arguments, exit code, words the message must contain).  Cases that
need files (a corrupt run store, a refused checkpoint) build them first.
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

from conftest import needs_fmnist
from repro.cli import main

SMOKE = ["--scale", "smoke"]

# (id, argv, exit code, words in the one-line message)
CASES = [
    ("no-command", [], 2, ["no command"]),
    ("paper-alone", ["imta"], 2, ["no command"]),
    ("unknown-paper", ["nopaper", "table1"], 2, ["unknown paper", "imta"]),
    ("unknown-artifact", ["imta", "table9"], 2, ["unknown artifact", "table2"]),
    ("unknown-option", ["imta", "table2", "--frobnicate"], 2, ["frobnicate"]),
    ("bad-scale", ["imta", "table2", "--scale", "huge", "--dry-run"], 2, ["unknown scale", "smoke"]),
    ("bad-dataset", ["imta", "table2", "--dataset", "mnist3", "--dry-run"], 2, ["unknown dataset", "cifar10"]),
    ("zero-seeds", ["imta", "table2", "--seeds", "0", "--dry-run"], 2, ["--seeds", "positive"]),
    ("negative-epochs", ["imta", "table2", "--epochs", "-1", "--dry-run"], 2, ["--epochs", "positive"]),
    ("zero-train-limit", ["imta", "table2", "--train-limit", "0", "--dry-run"], 2, ["--train-limit"]),
    ("zero-batch", ["imta", "table2", "--batch-size", "0", "--dry-run"], 2, ["--batch-size"]),
    ("not-a-number", ["imta", "table2", "--epochs", "two", "--dry-run"], 2, ["--epochs", "integer"]),
    ("bad-lr-scale", ["imta", "table2", "--lr-scale", "0", "--dry-run"], 2, ["--lr-scale", "positive"]),
    ("nan-lr-scale", ["imta", "table2", "--lr-scale", "nan", "--dry-run"], 2, ["--lr-scale"]),
    ("zero-jobs", ["imta", "table2", "--jobs", "0", "--dry-run"], 2, ["--jobs"]),
    ("bad-launcher", ["imta", "table2", "--launcher", "slurm", "--dry-run"], 2, ["launcher", "submitit"]),
    ("bad-device", ["imta", "table2", "--device", "foo", "--dry-run"], 2, ["--device foo", "cuda:N"]),
    ("cuda-without-gpu", ["imta", "table2", "--device", "cuda", "--dry-run"], 2, ["cuda", "auto, cpu"]),
    ("negative-workers", ["imta", "table2", "--workers", "-1", "--dry-run"], 2, ["--workers", "0 or more"]),
    ("sync-bn-single", ["imta", "table2", "--sync-bn", "--dry-run"], 2, ["--sync-bn", "several processes"]),
    ("set-no-equals", ["imta", "table2", "--set", "foo", "--dry-run"], 2, ["KEY=VALUE"]),
    ("set-unknown-key", ["imta", "table2", "--set", "foo=1", "--dry-run"], 2, ["unknown option", "foo"]),
    ("set-unknown-key-train", ["imta", "table2", "--set", "foo=1"] + SMOKE, 2, ["unknown option"]),
    ("dcp-pr-above-1", ["dcp", "table1", "--set", "pr=1.5"] + SMOKE, 2, ["pr=1.5", "< 1"]),
    ("dcp-decay-negative", ["dcp", "table1", "--set", "decay=-5"] + SMOKE, 2, ["decay=-5", "0 <= x <= 1"]),
    ("dcp-prs-garbage", ["dcp", "fig-ratio", "--set", "prs=a,b", "--dry-run"], 2, ["prs=a,b", "pruning rates"]),
    ("dcp-ratio-arch", ["dcp", "fig-ratio", "--set", "ratio_arch=vgg19", "--dry-run"], 2, ["vgg16, resnet32"]),
    ("biasloss-alpha-nan", ["biasloss", "table4", "--set", "bias_alpha=nan", "--dry-run"], 2, ["finite"]),
    ("biasloss-bool", ["biasloss", "table4", "--set", "bias_clamp=maybe", "--dry-run"], 2, ["bool"]),
    ("biasloss-loss", ["biasloss", "table1", "--set", "loss=mse", "--dry-run"], 2, ["ce, focal, bias"]),
    ("dgate-l2-negative", ["dgate", "table1", "--set", "l2=-3e3", "--dry-run"], 2, ["l2=-3e3", "0 <= x"]),
    ("dgate-grid-zero", ["dgate", "table1", "--set", "grid_points=0", "--dry-run"], 2, ["grid_points=0"]),
    ("dgate-time-batch", ["dgate", "table2", "--set", "time_batch=-4", "--dry-run"], 2, ["time_batch=-4"]),
    ("dgate-checkpoint-missing", ["dgate", "table1", "--set", "backbone_checkpoint=/no/such.pt", "--dry-run"], 2,
     ["no such file"]),
    ("glancenet-growth-zero", ["glancenet", "hem", "--set", "growth=0"] + SMOKE, 2, ["growth=0", "1 <= x"]),
    ("glancenet-alpha", ["glancenet", "table1", "--set", "alpha=2", "--dry-run"], 2, ["alpha=2"]),
    ("glancenet-bypass", ["glancenet", "table1", "--set", "bypass_after=x", "--dry-run"], 2, ["bypass_after"]),
    ("out-dir-is-file", ["imta", "table2", "--out-dir", "{file}"] + SMOKE, 2, ["--out-dir", "is a file"]),
    ("out-dir-under-file", ["imta", "table2", "--out-dir", "{file}/sub"] + SMOKE, 2, ["lies under the file"]),
    ("runs-dir-is-file", ["imta", "table2", "--runs-dir", "{file}"] + SMOKE, 2, ["--runs-dir", "is a file"]),
    ("data-root-is-file", ["imta", "table2", "--data-root", "{file}"] + SMOKE, 2, ["--data-root", "is a file"]),
    ("bench-items", ["bench", "--items", "9"], 2, ["--items", "1,2,3"]),
]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return e.value.code, (err[-1] if err else "")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit(case, tmp_path, capsys, monkeypatch):
    _, argv, code, words = case
    monkeypatch.chdir(tmp_path)  # nothing the case writes lands in the checkout
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    argv = [a.replace("{file}", str(a_file)) for a in argv]
    if "--runs-dir" not in argv:
        argv += ["--runs-dir", str(tmp_path / "runs")] if argv[:1] not in ([], ["imta"], ["bench"]) else []
    got, line = _run(argv, capsys)
    assert got == code, line
    assert line.startswith("error: "), line
    for w in words:
        assert w in line, f"{w!r} not in {line!r}"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/*/ckpt")), "a run trained"


# --------------------------------------------------------------------------- a corrupt run store


def _fake_done_runs(tmp_path: Path, argv: list[str]) -> list[Path]:
    """Mark every run of the artifact done with valid files, as if trained (nothing trains)."""
    from repro.runner import Request, plan
    from repro.artifacts import get_paper
    from repro.store import Run, atomic_write_json

    request = Request(scale="smoke")
    dirs = []
    for cfg in plan(get_paper(argv[0]).artifact(argv[1]), request):
        run = Run(tmp_path / "runs", cfg)
        run.prepare()
        atomic_write_json(run.results_path, {"val_acc": [1.0]})
        torch.save({"val_logits": [torch.zeros(4, 10)], "val_labels": torch.zeros(4, dtype=torch.long),
                    "test_logits": [torch.zeros(4, 10)], "test_labels": torch.zeros(4, dtype=torch.long)},
                   run.outputs_path)
        dirs.append(run.dir)
    return dirs


@pytest.mark.parametrize("content", ["", "{\"val_acc\": [1.0", "[1, 2, 3]", "\x00\x01garbage"],
                         ids=["empty", "truncated", "wrong-type", "garbage"])
def test_a_corrupt_results_json_is_named_before_anything_trains(tmp_path, capsys, content):
    argv = ["imta", "fig7"]
    dirs = _fake_done_runs(tmp_path, argv)
    (dirs[0] / "results.json").write_text(content)
    code, line = _run([*argv, *SMOKE, "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)], capsys)
    assert code == 2
    assert f"{dirs[0] / 'results.json'} is corrupt" in line and f"rm -r {dirs[0]}" in line, line
    assert "only that run is retrained" in line


def test_outputs_with_inconsistent_shapes_are_named(tmp_path, capsys):
    argv = ["imta", "fig7"]
    dirs = _fake_done_runs(tmp_path, argv)
    for d in dirs:
        torch.save({"val_logits": [torch.zeros(3, 10)], "val_labels": torch.zeros(4, dtype=torch.long)},
                   d / "outputs.pt")
    code, line = _run([*argv, *SMOKE, "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and "outputs.pt is corrupt" in line and "do not match 4 labels" in line, line


def test_a_pickle_payload_is_refused_naming_the_file_and_the_global(tmp_path, capsys):
    argv = ["imta", "fig7"]
    dirs = _fake_done_runs(tmp_path, argv)
    for d in dirs:
        torch.save({"val_logits": os.system}, d / "outputs.pt")
    code, line = _run([*argv, *SMOKE, "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and "outputs.pt" in line and "system" in line, line
    assert "weights_only" not in line


def test_a_checkpoint_missing_keys_says_so(tmp_path):
    from repro.store import CheckpointError
    from repro.train import fit
    from test_core import _tiny_setup

    model, data, spec, step = _tiny_setup(tmp_path, epochs=2)
    torch.save({"model": model.state_dict(), "finished": False}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"c.pt is incomplete \(missing epoch, optimizer, rng, scaler, sched"):
        fit(model, step, data.train, spec, ckpt_path=tmp_path / "c.pt", phase="p", device=torch.device("cpu"),
            seed=0, log=lambda s: None)


def test_a_garbage_metrics_csv_is_named(tmp_path):
    from repro.store import CorruptRun
    from repro.runner import Request, plan
    from repro.artifacts import get_paper
    from repro.store import Run

    cfg = plan(get_paper("imta").artifact("fig7"), Request(scale="smoke"))[0]
    run = Run(tmp_path, cfg)
    run.prepare()
    run.metrics_path.write_bytes(b"\x00\x01\x02,\n\"unterminated")
    with pytest.raises(CorruptRun, match="metrics.csv is corrupt"):
        run.metrics()


def test_a_killed_write_leaves_no_temporary_behind(tmp_path):
    from repro.store import remove_temporaries

    (tmp_path / "ckpt").mkdir()
    for name in (".model.pt.tmp123", "ckpt/.phase1.pt.tmp9"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "model.pt").write_bytes(b"keep")
    assert sorted(p.name for p in remove_temporaries(tmp_path)) == [".model.pt.tmp123", ".phase1.pt.tmp9"]
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["model.pt"]


# --------------------------------------------------------------------------- interrupts (a real SIGINT)


def _popen(tmp_path: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "repro", "imta", "fig7", "--scale", "smoke", "--epochs", "3",
           "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path), *extra]
    # a shell that starts a job in the background (CI scripts, nohup ... &) hands it SIGINT ignored,
    # and Python then never raises KeyboardInterrupt: the child gets the default handling back, as
    # a command typed at a terminal has it
    return subprocess.Popen(cmd, env={**os.environ, "REPRO_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.slow
@needs_fmnist
def test_ctrl_c_during_training_exits_130_and_says_what_is_kept(tmp_path):
    proc = _popen(tmp_path)
    deadline = time.time() + 300
    while not any((tmp_path / "runs").glob("*/*/ckpt/*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 130, err[-1500:]
    assert last.startswith("error: interrupted run imta/msdnet_cifar_5exit-phase1"), last
    assert "kept: phase 'phase1' up to epoch" in last and "same command again to resume" in last, last
    assert "Traceback" not in err


@pytest.mark.slow
@needs_fmnist
def test_ctrl_c_while_waiting_for_a_lock_exits_130(tmp_path):
    from repro.artifacts import get_paper
    from repro.runner import Request, plan
    from repro.store import Run

    cfg = plan(get_paper("imta").artifact("fig7"), Request(scale="smoke", epochs=3))[0]
    with Run(tmp_path / "runs", cfg).lock():
        proc = _popen(tmp_path)
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "waiting for" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    err = "".join(lines) + err
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 130, err[-1500:]
    assert last.startswith("error: interrupted while waiting for the lock of run imta/"), last
    assert "Traceback" not in err


def test_a_non_finite_loss_names_a_means_to_lower_the_learning_rate():
    from repro.train import NonFiniteLoss

    assert "--lr-scale 0.5" in str(NonFiniteLoss("p", 0, 3))


def test_lr_scale_multiplies_every_runs_learning_rate_and_its_parents():
    from repro.artifacts import get_paper
    from repro.runner import Request, plan

    art = get_paper("imta").artifact("fig7")
    base = {c.name: c for c in plan(art, Request(scale="smoke"))}
    half = {c.name: c for c in plan(art, Request(scale="smoke", lr_scale=0.5))}
    for name, c in base.items():
        assert half[name].train.lr == c.train.lr * 0.5
        assert half[name].key != c.key
        if c.parent is not None:
            assert half[name].parent.train.lr == c.parent.train.lr * 0.5


def test_corrupt_data_is_named_before_anything_trains(tmp_path, capsys):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte"):
        (raw / f).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 12)  # a header claiming nothing, no data
    code, line = _run(["imta", "fig7", *SMOKE, "--data-root", str(tmp_path / "data"), "--runs-dir",
                       str(tmp_path / "runs"), "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and "is corrupt" in line and str(raw) in line, line
    assert not (tmp_path / "runs").exists()  # the pre-flight check ran before any run folder was made
