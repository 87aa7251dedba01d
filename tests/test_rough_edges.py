"""Issue 29's rough edges, one test each: --force's summary and dry run, make demo/test/results, errors
without torch, nothing printed before a data error, help texts, the scale line under --epochs, the
estimate's wording, docs that disagree with the code; and the two new features: repro curves and
the run k of N progress over a whole command."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_bad_inputs import _fake_done_runs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--scale", "smoke"]


from test_cli import _exit  # noqa: E402  (argv -> exit code, stdout, stderr)


def _done_fig7(tmp_path) -> list[Path]:
    """imta fig7's two smoke runs, done, with outputs an artifact can be built from."""
    dirs = _fake_done_runs(tmp_path, ["imta", "fig7"])
    g = torch.Generator().manual_seed(0)
    for d in dirs:
        logits = torch.randn(5, 64, 10, generator=g)
        torch.save({"val_logits": logits, "val_labels": torch.randint(0, 10, (64,), generator=g),
                    "test_logits": logits, "test_labels": torch.randint(0, 10, (64,), generator=g)},
                   d / "outputs.pt")
    return dirs


# --------------------------------------------------------------------------- --force


def test_force_dry_run_lists_the_runs_it_would_retrain(tmp_path, capsys):
    _done_fig7(tmp_path)
    code, out, _ = _exit(["imta", "fig7", *SMOKE, "--force", "--dry-run", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert code == 0
    assert "nothing to train" not in out and "2 run(s) to train" in out, out
    assert out.count("retrain ") == 2


def test_force_counts_the_retrained_runs_as_trained(tmp_path, capsys, monkeypatch):
    from repro import runner

    _done_fig7(tmp_path)
    retrained = []

    def fake_execute(cfg, settings):  # what execute leaves: the run done, its meta naming this command
        run = runner.Run(settings.runs_dir, cfg)
        (run.dir / "meta.json").write_text(json.dumps({"invocation": settings.invocation, "seconds": 1.0}))
        settings.forced.add(cfg.key)
        retrained.append(cfg.key)
        return "trained"

    monkeypatch.setattr(runner, "execute", fake_execute)
    code, _, err = _exit(["imta", "fig7", *SMOKE, "--force", "--jobs", "1", "--runs-dir", str(tmp_path / "runs"),
                          "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert len(retrained) == 2
    assert "2 run(s) trained, 0 reused" in err, err
    assert "run 1 of 2" in err and "run 2 of 2" in err


def test_force_with_no_train_is_refused(tmp_path, capsys):
    code, _, err = _exit(["imta", "fig7", *SMOKE, "--force", "--no-train", "--runs-dir", str(tmp_path)], capsys)
    assert code == 2 and "--force" in err and "--no-train" in err


# --------------------------------------------------------------------------- Makefile, .gitignore


def _target(makefile: str, name: str) -> tuple[str, str]:
    """(prerequisites, recipe) of a Makefile target."""
    m = re.search(rf"^{name}:(.*)\n((?:\t.*\n)*)", makefile, re.M)
    assert m, name
    return m.group(1), m.group(2)


def test_make_test_and_demo_fetch_the_data_the_same_way_and_demo_writes_elsewhere():
    mk = (ROOT / "Makefile").read_text()
    for name in ("test", "demo"):
        assert "data" in _target(mk, name)[0].split(), f"make {name} must depend on make data"
    assert "find_fashion_mnist" in _target(mk, "data")[1]
    demo = _target(mk, "demo")[1]
    assert "--out-dir $(DEMO_DIR)" in demo and "DEMO_DIR ?= demo" in mk and "wrote $(DEMO_DIR)" in demo
    assert "/demo/" in (ROOT / ".gitignore").read_text().split()
    assert "make data" in (ROOT / ".ci" / "run").read_text()
    results = _target(mk, "results")[1]
    assert "git status --porcelain" in results  # results say what changed outside the results


def test_curves_figures_are_git_ignored():
    ignore = (ROOT / ".gitignore").read_text().split()
    assert "/figures/*/*.curves.png" in ignore


# --------------------------------------------------------------------------- errors without torch


@pytest.mark.parametrize("argv", [
    ["imta", "tabel2"],
    ["imta", "table2", "--set", "ofa_teacher=bogus"],
    ["imta", "table2", "--set", "no_such_key=1"],
    ["dgate", "table1", "--set", "grid_points=abc"],
    ["imta", "table2", "--epochs", "0"],
    ["imta", "table2", "--seeds", "many"],
    ["curves", "imta", "tabel2"],
], ids=["typo", "bad-choice", "unknown-key", "bad-type", "epochs-0", "bad-seeds", "curves-typo"])
def test_a_typo_errors_in_one_line_without_importing_torch(argv):
    code = ("import sys\nfrom repro.cli import main\ntry:\n    main(%r)\nexcept SystemExit as e:\n"
            "    print('exit', e.code, 'torch' in sys.modules)\n" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip().splitlines()[-1] == "exit 2 False", (out.stdout, out.stderr[-800:])
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: ")


def test_nothing_about_training_prints_before_a_data_error(tmp_path, capsys):
    code, out, err = _exit(["imta", "table2", *SMOKE, "--dataset", "imagenet", "--data-root", "/nowhere",
                            "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)], capsys)
    assert code == 2
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "/nowhere" in lines[0], lines
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- help texts


def _help(argv) -> str:
    out = subprocess.run([sys.executable, "-m", "repro", *argv, "--help"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_artifact_help_is_short_whole_and_says_what_the_options_do():
    text = _help(["imta", "table2"])
    lines = text.splitlines()
    assert len(lines) <= 70, len(lines)
    assert max(map(len, lines)) <= 80
    assert "…" not in text  # no help cut off
    assert "--no-no-wait" not in text and "--no-force" not in text
    flat = " ".join(text.split())
    assert "exit 2 if any are" in flat  # --no-train: exit code 2, as a ConfigError ends
    assert "--compile" in flat and "for long runs." in flat
    assert "ofa_teacher" not in text  # the paper's --set keys: in `repro imta --help` only
    assert "ofa_teacher:" in _help(["imta"])


def test_readme_lists_every_option_and_the_commands():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("Options of every artifact command")[1].split("\n\n")[1]
    for flag in ("--only", "--no-train", "--force", "--dry-run", "--seeds", "--set", "--compile"):
        assert f"`{flag}" in table, flag
    assert "exit non-zero" not in table
    for command in ("repro claims", "repro curves"):
        assert command in readme.split("## Command line")[1].split("## Scales")[0], command


# --------------------------------------------------------------------------- wording


def test_the_smoke_scale_line_names_the_epochs_given():
    from repro.render import building, scale_note
    from repro.runner import Request

    with building(Request(scale="smoke", epochs=2)):
        note = scale_note("smoke")
    assert "2 epochs (--epochs)" in note and "1 epoch" not in note
    with building(Request(scale="smoke")):
        assert "1 epoch" in scale_note("smoke")


def test_estimates_below_a_minute_are_in_seconds_and_say_for_how_many_runs():
    from repro.cli import _estimate_line
    from repro.runner import duration

    assert duration(12.4) == "12 s" and duration(0.2) == "1 s" and duration(600) == "10 min"
    assert duration(3 * 3600) == "3.0 h"
    runs = list(range(73))
    line = _estimate_line(runs, Path("runs"), lambda c, d: 6.0 if c < 5 else None)
    assert "73 run(s) to train; an estimate exists for 5 of them: about 30 s" in line
    assert "the other 68" in line and "0 min" not in line
    assert "about 2 min on this machine" in _estimate_line(runs[:4], Path("runs"), lambda c, d: 30.0)


# --------------------------------------------------------------------------- docs


def test_docs_agree_with_the_code_and_the_committed_results():
    bias = (ROOT / "docs" / "papers" / "biasloss.md").read_text()
    assert "S ≈ 3.6 M / 152 M" not in bias and "180.3 M" in bias
    assert "are all within 5 % of Table 1" not in bias and "MobileNetV3-Small 1.0×" in bias
    glance = (ROOT / "docs" / "papers" / "glancenet.md").read_text()
    assert "2,600 steps" not in glance and "1,300 steps" in glance  # 27,500 x 3 / 64 = 1,289
    readme = (ROOT / "README.md").read_text()
    header = (ROOT / "tables" / "quick" / "imta_table2.md").read_text()
    minutes = float(re.search(r"wall time: ([\d.]+) min", header).group(1))
    assert f"took {round(minutes)} minutes" in readme
    assert "90 % at every exit" not in readme


# --------------------------------------------------------------------------- repro curves


def _with_metrics(dirs) -> None:
    for i, d in enumerate(dirs):
        (d / "metrics.csv").write_text(
            "phase,epoch,lr,train_loss,train_acc,seconds,img_per_s,val_acc_exit1,val_acc_exit2\n"
            f"phase1,1,0.1,2.0,30,1,100,40,{45 + i}\nphase1,2,0.05,1.5,50,1,100,60,{65 + i}\n"
            f"phase2,1,0.01,1.0,60,1,100,70,{75 + i}\n")


def test_curves_draw_every_run_and_list_the_missing(tmp_path, capsys):
    dirs = _done_fig7(tmp_path)
    _with_metrics(dirs[:1])
    code, out, err = _exit(["curves", "imta", "fig7", *SMOKE, "--runs-dir", str(tmp_path / "runs"),
                            "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    png = tmp_path / "figures" / "smoke" / "imta_fig7.curves.png"
    assert png.stat().st_size > 0
    assert "1 run(s) without metrics.csv" in err and dirs[1].name in err
    assert "train loss 2 -> 1, still falling" in out and "val top-1 75.0 % (val_acc_exit2)" in out


def test_curves_without_any_run_exit_2(tmp_path, capsys):
    code, _, err = _exit(["curves", "imta", "fig7", *SMOKE, "--runs-dir", str(tmp_path / "runs"),
                          "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: no run of imta fig7")
    assert not (tmp_path / "figures").exists()


def test_curves_tensorboard_missing_is_one_line(tmp_path, capsys, monkeypatch):
    _with_metrics(_done_fig7(tmp_path))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    code, _, err = _exit(["curves", "imta", "fig7", *SMOKE, "--runs-dir", str(tmp_path / "runs"),
                          "--tensorboard", str(tmp_path / "tb")], capsys)
    assert code == 2 and err.strip() == ("error: --tensorboard needs the tensorboard package: "
                                         "pip install 'repro[tensorboard]'")


def test_val_columns_in_exit_order():
    from repro.curves import val_columns

    cols = ["lr", "val_acc_exit10", "val_acc_exit2", "train_loss", "val_acc_gate1", "H_a0.5_b1", "val_top1"]
    assert val_columns(cols) == ["val_top1", "val_acc_gate1", "val_acc_exit2", "val_acc_exit10"]


# --------------------------------------------------------------------------- progress over a command


def test_job_progress_counts_over_the_whole_command(tmp_path):
    from repro.artifacts import get_paper
    from repro.runner import JobProgress, Request, plan

    cfgs = plan(get_paper("imta").artifact("fig7"), Request(scale="smoke"))
    p = JobProgress(cfgs, tmp_path)
    lines = [p.start(c) for c in cfgs]
    assert lines[0].startswith(f"run 1 of {len(cfgs)}: imta/") and "no time estimate yet" in lines[0]
    assert lines[-1].startswith(f"run {len(cfgs)} of {len(cfgs)}")
