"""The command line's everyday path: --no-train, the dry-run's estimate, repro list per scale, completion."""
from __future__ import annotations

import json

import pytest
import torch

from repro.cli import main
from test_bad_inputs import _fake_done_runs


def _exit(argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_no_train_lists_every_missing_run_and_exits_non_zero(tmp_path, capsys):
    code, _, err = _exit(["imta", "fig7", "--scale", "smoke", "--no-train", "--runs-dir", str(tmp_path / "runs"),
                          "--out-dir", str(tmp_path)], capsys)
    assert code != 0
    missing = [line for line in err.splitlines() if line.startswith("missing: imta/")]
    assert len(missing) == 2 and "2 run(s) missing" in err.splitlines()[-1]
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing created


def test_no_train_renders_from_the_runs_that_exist(tmp_path, capsys):
    dirs = _fake_done_runs(tmp_path, ["imta", "fig7"])
    g = torch.Generator().manual_seed(0)
    for d in dirs:
        logits = torch.randn(5, 64, 10, generator=g)  # exits x samples x classes, as collect_logits saves
        torch.save({"val_logits": logits, "val_labels": torch.randint(0, 10, (64,), generator=g),
                    "test_logits": logits, "test_labels": torch.randint(0, 10, (64,), generator=g)},
                   d / "outputs.pt")
    code, _, err = _exit(["imta", "fig7", "--scale", "smoke", "--no-train", "--runs-dir", str(tmp_path / "runs"),
                          "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert (tmp_path / "figures" / "smoke" / "imta_fig7.png").stat().st_size > 0
    assert "0 run(s) trained, 2 reused" in err


def test_dry_run_says_how_many_runs_and_estimates_from_finished_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, out, _ = _exit(["imta", "fig7", "--scale", "smoke", "--dry-run", "--runs-dir", str(runs)], capsys)
    assert code == 0 and "2 run(s) to train; no time estimate" in out
    # a finished run of the same kind, 1 epoch in 60 s: the 2-epoch version is estimated at 2 minutes
    dirs = _fake_done_runs(tmp_path, ["imta", "fig7"])
    for d in dirs:
        (d / "meta.json").write_text(json.dumps({"seconds": 60.0}))
    code, out, _ = _exit(["imta", "fig7", "--scale", "smoke", "--epochs", "2", "--dry-run", "--runs-dir",
                          str(runs)], capsys)
    assert code == 0 and "2 run(s) to train, about 4 min on this machine" in out, out


def test_list_counts_runs_per_scale(tmp_path, capsys):
    _fake_done_runs(tmp_path, ["imta", "fig7"])
    code, out, _ = _exit(["list", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert code == 0 and "per scale: smoke / quick / paper" in out
    imta = out.split("\nimta:")[1]
    # quick: fig7's two runs and the convergence twin of its baseline
    assert "2/2 / 0/3 / 0/2" in next(line for line in imta.splitlines() if line.strip().startswith("fig7"))
    code, out, _ = _exit(["list", "--scale", "smoke", "--runs-dir", str(tmp_path / "runs")], capsys)
    imta = out.split("\nimta:")[1]
    assert "2/2" in next(line for line in imta.splitlines() if line.strip().startswith("fig7"))


def test_shell_completion_is_enabled(capsys):
    code, out, _ = _exit(["--help"], capsys)
    assert code == 0 and "--install-completion" in out and "--show-completion" in out


@pytest.mark.parametrize("paper,key", [("dgate", "grid_points"), ("dcp", "pr"), ("imta", "ofa_teacher")])
def test_paper_help_lists_its_set_keys_with_type_and_range(paper, key, capsys):
    code, out, _ = _exit([paper, "--help"], capsys)
    assert code == 0 and f"{key}:" in out


def test_the_manifest_equals_what_the_paper_modules_declare():
    from repro import manifest

    assert manifest.load() == manifest.build(), "run `python -m repro.manifest` after changing a paper's artifacts"


@pytest.mark.parametrize("argv", [["--help"], ["imta", "--help"], ["imta", "table2", "--help"], ["list"]])
def test_help_and_list_import_no_torch(argv):
    import subprocess
    import sys

    code = ("import sys\nfrom repro.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-500:]


def test_only_headline_plans_the_headline_artifacts_and_their_convergence_twins(tmp_path, capsys):
    code, out, _ = _exit(["all", "--only", "headline", "--scale", "quick", "--dry-run", "--runs-dir",
                          str(tmp_path)], capsys)
    assert code == 0
    listed = {line.split()[1].split("/")[0] for line in out.splitlines() if line.strip().startswith("missing")}
    assert listed == {"imta", "glancenet", "dgate", "biasloss", "dcp"}  # not the study
    twins = {line.strip() for line in out.splitlines() if "resnet101-backbone-s" in line and "40 ep]" in line}
    assert len(twins) == 1 and "-s0-" in twins.pop()  # d-gates' backbone twin (table1's and fig4's, 2 x 20 epochs): seed 0 only
    code, _, err = _exit(["all", "--only", "headlines", "--dry-run"], capsys)
    assert code != 0 and "choose one of: table, figure, headline" in err
