"""Every numeric option is bounded, and everything --dry-run promises it checks, it checks.

A value past its bound is one line, ``error: <option> <value> is above its bound <N> (why);
valid: <range>``, exit code 2, before any run folder exists.  The bounds themselves are walked
from the registry (every paper's ``--set`` keys) and from the command line's parameters, so an
option added without a bound fails here.  Nothing in this file trains.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from repro.cli import main

SMOKE = ["--scale", "smoke"]
DRY = ["--dry-run"]
BIG = str(10**9)

# (id, argv, environment, words in the one error line)
CASES = [
    # unbounded values
    ("dgate-grid-points", ["dgate", "table1", "--set", "grid_points=1000", *DRY], {},
     ["--set grid_points=1000 is above its bound 200", "about 24.1 GB", "2 <= x <= 200"]),
    ("seeds", ["imta", "table2", "--seeds", BIG, *DRY], {}, [f"--seeds {BIG} is above its bound 100", "1 <= N <= 100"]),
    ("epochs", ["imta", "table2", "--epochs", BIG, *DRY], {}, ["--epochs", "above its bound 10000"]),
    ("batch-size", ["imta", "table2", "--batch-size", BIG, *DRY], {}, ["--batch-size", "above its bound 65536"]),
    ("train-limit-above-split", ["imta", "table2", "--train-limit", "100000000", *SMOKE, *DRY], {},
     ["--train-limit 100000000 is above its bound 59744", "fashion-mnist's training split: 60,000 images"]),
    ("train-limit-above-split-train", ["imta", "fig7", "--train-limit", "100000000", *SMOKE], {},
     ["--train-limit 100000000 is above its bound"]),
    ("lr-scale-huge", ["imta", "table2", "--lr-scale", "1e300", *DRY], {},
     ["--lr-scale 1e+300", "above its bound 1000", "0 < F <= 1e+04"]),
    ("lr-scale-huge-train", ["imta", "fig7", "--lr-scale", "1e300", *SMOKE], {}, ["--lr-scale", "above its bound"]),
    ("lr-scale-inf", ["imta", "table2", "--lr-scale", "inf", *DRY], {}, ["--lr-scale", "positive number"]),
    ("jobs", ["imta", "table2", "--jobs", BIG, *DRY], {}, ["--jobs", "above its bound", "CPU core"]),
    ("workers", ["imta", "table2", "--workers", BIG, *DRY], {}, ["--workers", "above its bound 128"]),
    ("gpus-per-run", ["imta", "table2", "--gpus-per-run", "64", "--launcher", "submitit", *DRY], {},
     ["--gpus-per-run 64 is above its bound 16"]),
    ("time-limit", ["imta", "table2", "--time-limit", BIG, "--launcher", "submitit", *DRY], {},
     ["--time-limit", "above its bound 43200"]),
    ("array-parallelism", ["imta", "table2", "--array-parallelism", BIG, "--launcher", "submitit", *DRY], {},
     ["--array-parallelism", "above its bound 1000"]),
    # every paper's numeric --set keys
    ("biasloss-alpha", ["biasloss", "table4", "--set", "bias_alpha=11", *DRY], {}, ["bias_alpha=11", "bound 10"]),
    ("biasloss-beta", ["biasloss", "table4", "--set", "bias_beta=1e9", *DRY], {}, ["bias_beta=1e9", "bound 10"]),
    ("biasloss-gamma", ["biasloss", "table4", "--set", "focal_gamma=50", *DRY], {}, ["focal_gamma=50", "bound 10"]),
    ("dgate-l2", ["dgate", "table1", "--set", "l2=1e6", *DRY], {}, ["l2=1e6", "bound 100"]),
    ("dgate-time-batch", ["dgate", "table2", "--set", "time_batch=100000", *DRY], {}, ["time_batch", "bound 1024"]),
    ("dgate-time-images", ["dgate", "table2", "--set", "time_images=1000000", *DRY], {},
     ["time_images", "bound 50000"]),
    ("glancenet-depth", ["glancenet", "table1", "--set", "depth=100000", *DRY], {}, ["depth=100000", "bound 250"]),
    ("glancenet-growth", ["glancenet", "table1", "--set", "growth=100000", *DRY], {}, ["growth", "bound 64"]),
    ("dcp-pr", ["dcp", "table1", "--set", "pr=1", *DRY], {}, ["pr=1 is not below its bound 1", "0 <= x < 1"]),
    ("dcp-warmup", ["dcp", "table1", "--set", "warmup_frac=3", *DRY], {}, ["warmup_frac=3", "bound 1"]),
    ("dcp-prs-count", ["dcp", "fig-ratio", "--set", "prs=" + ",".join(["0.5"] * 21), *DRY], {},
     ["prs=", "21 rates, above the bound of 20"]),
    # --dry-run runs the pre-flight
    ("dry-imagenet-nowhere", ["imta", "table2", "--dataset", "imagenet", "--data-root", "/nowhere/at/all", *DRY], {},
     ["dataset 'imagenet' not found", "/nowhere/at/all/train"]),
    # paths and the environment
    ("repro-data-is-file", ["imta", "table2", *DRY], {"REPRO_DATA": "{file}"}, ["REPRO_DATA=", "is a file"]),
    ("repro-data-is-file-train", ["imta", "fig7", *SMOKE], {"REPRO_DATA": "{file}"}, ["REPRO_DATA=", "is a file"]),
    ("repro-data-empty", ["imta", "table2", *DRY], {"REPRO_DATA": ""}, ["REPRO_DATA is set but empty"]),
    ("runs-dir-empty", ["imta", "table2", "--runs-dir", "", *DRY], {}, ["--runs-dir is empty"]),
    ("out-dir-empty", ["imta", "fig7", "--out-dir", "", *SMOKE], {}, ["--out-dir is empty"]),
    ("data-root-empty", ["imta", "table2", "--data-root", "", *DRY], {}, ["--data-root is empty"]),
    ("list-runs-dir-empty", ["list", "--runs-dir", ""], {}, ["--runs-dir is empty"]),
    # a batch that does not split over the processes of a run
    ("batch-over-gpus", ["imta", "table2", "--batch-size", "5", "--gpus-per-run", "2", "--sync-bn",
                         "--launcher", "submitit", *DRY], {},
     ["batch size 5", "does not split over 2 processes", "--gpus-per-run 2", "multiple of 2"]),
    ("set-twice", ["dgate", "table1", "--set", "grid_points=10", "--set", "grid_points=20", *DRY], {},
     ["--set grid_points is given twice", "grid_points=10", "grid_points=20"]),
]


def _one_error(argv: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_value_past_its_bound_is_one_line_naming_the_bound(case, tmp_path, capsys, monkeypatch):
    _, argv, env, words = case
    monkeypatch.chdir(tmp_path)  # an empty --runs-dir would be here: nothing lands in the checkout
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for k, v in env.items():
        monkeypatch.setenv(k, v.replace("{file}", str(a_file)))
    if "REPRO_DATA" not in env:
        monkeypatch.delenv("REPRO_DATA", raising=False)
    if "--runs-dir" not in argv:
        argv = [*argv, "--runs-dir", str(tmp_path / "runs")]
    if "--out-dir" not in argv and argv[0] != "list":
        argv = [*argv, "--out-dir", str(tmp_path / "out")]
    code, err = _one_error(argv, capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], f"{w!r} not in {err[0]!r}"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "a run folder was made"
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"], "something was written"


# --------------------------------------------------------------------------- every option has a bound


def _numeric(opt) -> bool:
    """Whether a --set key takes a number (or a list of numbers): its parser reads '1' as one."""
    if opt.type is bool:
        return False
    try:
        value = opt.type("1")
    except Exception:  # a path, or a name
        return False
    values = value if isinstance(value, (tuple, list)) else [value]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _options():
    from repro.artifacts import Option, papers

    return [(p.name, k, o) for p in papers().values() for k, o in p.options.items() if isinstance(o, Option)]


def test_every_numeric_set_key_of_every_paper_has_an_upper_bound():
    from repro.config import ConfigError

    numeric = [(p, k, o) for p, k, o in _options() if _numeric(o)]
    assert len(numeric) >= 15, [k for _, k, _ in numeric]  # the walk finds them (a parser change hides none)
    for paper, key, opt in numeric:
        assert opt.choices or opt.high is not None or opt.below is not None, \
            f"{paper} --set {key} is numeric but has no upper bound (give its Option high=, below= or choices=)"
        if opt.choices:
            continue
        over = opt.high * 10 + 1 if opt.high is not None else opt.below
        raw = str(int(over) if opt.type is int or float(over).is_integer() else over)
        with pytest.raises(ConfigError, match=rf"--set {key}={raw} is (above|not below) its bound"):
            opt.parse(key, raw)


def test_every_numeric_command_line_option_has_a_bound():
    import typing

    from repro.bounds import CLI_BOUNDS
    from repro.cli import _make_command

    hints = typing.get_type_hints(_make_command(lambda: []))  # the parameters of every artifact command
    seen = set()
    for name, hint in hints.items():
        if {int, float} & {hint, *typing.get_args(hint)}:
            seen.add(name)
            assert name in CLI_BOUNDS, f"--{name.replace('_', '-')} is numeric but has no bound in repro.bounds"
    assert {"max_seeds", "epochs", "batch_size", "lr_scale", "train_limit", "workers"} <= seen
    # --seeds (N or auto) and --jobs (N or auto) are read as text, then bounded as integers
    assert {"seeds", "jobs"} <= set(CLI_BOUNDS)


def test_the_readme_states_the_bounds():
    from repro.bounds import table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table() in readme, "README.md's bounds table is out of date: python -m repro.bounds prints it"


def test_the_request_refuses_what_the_command_line_refuses():
    from repro.api import Request
    from repro.config import ConfigError

    with pytest.raises(ConfigError, match="--seeds 101 is above its bound 100"):
        Request(seeds=101)
    Request(seeds=100)


# --------------------------------------------------------------------------- --dry-run runs the pre-flight


def test_dry_run_names_a_corrupt_idx_gz(tmp_path, capsys):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte"):
        (raw / f"{f}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 12)[:-6])  # truncated
    code, err = _one_error(["imta", "fig7", *SMOKE, *DRY, "--data-root", str(tmp_path / "data"),
                            "--runs-dir", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(err) == 1, err
    assert "is corrupt" in err[0] and "not a complete gzip file" in err[0] and str(raw) in err[0], err
    assert not (tmp_path / "runs").exists()


def test_dry_run_names_a_corrupt_results_json(tmp_path, capsys):
    from test_bad_inputs import _fake_done_runs

    dirs = _fake_done_runs(tmp_path, ["imta", "fig7"])
    (dirs[0] / "results.json").write_text("{\"val_acc\": [1.0")
    code, err = _one_error(["imta", "fig7", *SMOKE, *DRY, "--runs-dir", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(err) == 1 and f"{dirs[0] / 'results.json'} is corrupt" in err[0], err


def test_dry_run_downloads_nothing_and_says_what_the_command_would(tmp_path, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    main(["imta", "fig7", *SMOKE, *DRY, "--dataset", "cifar10", "--data-root", str(root),
          "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert "dataset 'cifar10' not found" in err and "the command downloads it first" in err, err
    assert list(root.iterdir()) == []


# --------------------------------------------------------------------------- an honest summary


@pytest.mark.parametrize("mine", [False, True], ids=["trained-by-another", "trained-here"])
def test_the_summary_counts_runs_another_process_trained_as_reused(tmp_path, capsys, monkeypatch, mine):
    """The runs were to train; while this command waited for their locks another process (or this
    one) finished them: the summary says who trained them, from meta.json's command id."""
    import repro.runner as runner
    from repro.artifacts import get_paper
    from repro.store import Run, atomic_write_json

    cfgs = runner.plan(get_paper("imta").artifact("fig7"), runner.Request(scale="smoke"))

    def run_artifact(paper, artifact, request, settings, launch=None, **_):  # ensure() waited for the locks, reused
        for c in runner.plan(get_paper(paper).artifact(artifact), request):
            run = Run(settings.runs_dir, c)
            run.prepare()
            atomic_write_json(run.results_path, {"val_acc": [1.0]})
            atomic_write_json(run.dir / "meta.json", {"seconds": 1.0, "invocation": settings.invocation if mine
                                                      else "another-one"})
        return []

    monkeypatch.setattr(runner, "run_artifact", run_artifact)
    main(["imta", "fig7", *SMOKE, "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    n = len(cfgs)
    if mine:
        assert f"{n} run(s) trained, 0 reused," in last, last
    else:
        assert f"0 run(s) trained, {n} reused ({n} trained by another process meanwhile)" in last, last
    assert json.loads((Run(tmp_path / "runs", cfgs[0]).dir / "meta.json").read_text())["seconds"] == 1.0
