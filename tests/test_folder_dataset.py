"""Your own dataset end to end: ``--dataset folder:PATH`` through the scales and every paper.

One artifact of each paper runs at smoke scale on a small ImageFolder tree of real PNGs (3
classes, mixed sizes); its outputs must have 3 classes and its header must name the folder.
Datasets or sizes an artifact cannot take are refused in one line before anything trains.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from repro import data as D
from repro import scales
from repro.artifacts import get_paper
from repro.config import ConfigError, DataSpec, RunConfig
from repro.runner import Request, plan

CLASSES = ("ant", "bee", "cow")


def _png_tree(root: Path, n_train: int = 40, n_val: int = 12) -> Path:
    """train/<class>/*.png and val/<class>/*.png: smooth class-coloured RGB images with noise,
    of mixed sizes and aspect ratios (16..80 px a side)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, c in enumerate(CLASSES):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(16, 80)), int(rng.integers(16, 80))
                yy, xx = np.mgrid[0:h, 0:w]
                base = (np.sin(xx / w * (ci + 1) * 3.1) + np.cos(yy / h * 2.3)) * 60 + 120
                tint = np.array([[40, -30, 10], [-20, 30, -40], [10, 10, 50]])[ci]
                img = base[..., None] + tint + rng.normal(0, 12, (h, w, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / split / c / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _png_tree(tmp_path_factory.mktemp("folder") / "tree")


def _cli(*argv: str) -> None:
    from repro.cli import main

    main(list(argv))


def _refused(capsys, *argv: str) -> str:
    """Run the CLI, expect exit code 2 and exactly one line on stderr; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _cli(*argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _run_dirs(runs: Path) -> list[Path]:
    """The run folders under ``runs`` (a run's folder has its config.json from its start)."""
    return sorted(p.parent for p in runs.rglob("config.json"))


# (paper, artifact): one artifact of each paper, a cheap one
ONE_PER_PAPER = [("imta", "fig7"), ("glancenet", "alpha"), ("dgate", "fig7"), ("biasloss", "table2"),
                 ("dcp", "imagenet")]


@pytest.mark.slow
def test_one_artifact_of_each_paper_runs_on_a_folder_dataset(tree, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    for paper, artifact in ONE_PER_PAPER:
        _cli(paper, artifact, "--scale", "smoke", "--dataset", f"folder:{tree}", "--runs-dir", str(runs),
             "--out-dir", str(out))
    for paper, _ in ONE_PER_PAPER:
        dirs = _run_dirs(runs / paper)
        assert dirs and all((d / "results.json").exists() for d in dirs), paper
        for d in dirs:
            cfg = json.loads((d / "config.json").read_text())
            assert cfg["dataset"] == f"folder:{tree}" and cfg["data"]["image_size"] == 32, d
            o = torch.load(d / "outputs.pt")
            if "test_logits" in o:  # exits x images x classes
                assert o["test_logits"].shape[-1] == 3 and o["test_logits"].shape[1] == 3 * 12, d
            else:  # dgate: per-exit predictions; the gates' width is in the model
                assert o["test_preds"].shape[-1] == 3 * 12
                state = torch.load(d / "model.pt")
                assert {v.shape[0] for v in state.values() if v.ndim == 2} == {3}, d  # classifier, gates
    for paper, artifact in ONE_PER_PAPER:  # the title names the dataset: "… — ours: folder:…, smoke scale"
        table = out / "tables" / "smoke" / f"{paper}_{artifact}.md"
        header = table if table.exists() else out / "figures" / "smoke" / f"{paper}_{artifact}.csv"
        assert f"ours: folder:{tree}, smoke scale" in header.read_text().splitlines()[0], paper
    # dgate fig7 is per class: one row per gate and class, named after the class folders
    fig7 = (out / "figures" / "smoke" / "dgate_fig7.csv").read_text()
    assert all(f",{c}," in fig7 for c in CLASSES)


@pytest.mark.slow
def test_imagenet_at_smoke_scale_is_read_at_32_px_with_its_tree_classes(tree, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    from repro.artifacts import papers

    for paper in sorted(p for p in papers() if p != "study"):  # every artifact of every paper plans
        _cli(paper, "all", "--scale", "smoke", "--dataset", "imagenet", "--data-root", str(tree),
             "--runs-dir", str(runs), "--dry-run")
    _cli("dgate", "fig7", "--scale", "smoke", "--dataset", "imagenet", "--data-root", str(tree),
         "--runs-dir", str(runs), "--out-dir", str(out))
    (gates,) = [d for d in _run_dirs(runs / "dgate") if "gates" in d.name]
    assert json.loads((gates / "config.json").read_text())["data"]["image_size"] == 32
    classes = {line.split(",")[0] for line in (out / "figures" / "smoke" / "dgate_fig7.csv").read_text().splitlines()
               if line and not line.startswith(("#", "class"))}
    assert classes == {"0", "1", "2"}  # the tree's 3 classes, not ImageNet's 1000


def test_a_relative_folder_path_is_made_absolute_so_hashes_do_not_depend_on_the_cwd(tree, monkeypatch):
    artifact = get_paper("glancenet").artifact("alpha")
    absolute = [c.key for c in plan(artifact, Request(scale="smoke", dataset=f"folder:{tree}"))]
    monkeypatch.chdir(tree.parent)
    request = Request(scale="smoke", dataset=f"folder:{tree.name}")
    assert request.dataset == f"folder:{tree}"
    assert [c.key for c in plan(artifact, request)] == absolute


def test_fixed_size_runs_keep_their_hashes():
    old = DataSpec(train_limit=512, val_size=256, test_limit=512)  # the smoke scale before it had a size
    for dataset, size in (("fashion-mnist", 32), ("cifar100", 32), ("imagenet", 224)):
        cfg = RunConfig(paper="p", name="n", kind="k", dataset=dataset, model="m", data=old)
        assert replace(cfg, data=replace(old, image_size=size)).key == cfg.key, dataset
    # every smoke run of imta table2 is the run it was when the scale had no image size
    without = replace(scales.SCALES["smoke"], data=replace(scales.SCALES["smoke"].data, image_size=None))
    now = [c.key for c in plan(get_paper("imta").artifact("table2"), Request(scale="smoke"))]
    try:
        scales.SCALES["smoke"], kept = without, scales.SCALES["smoke"]
        before = [c.key for c in plan(get_paper("imta").artifact("table2"), Request(scale="smoke"))]
    finally:
        scales.SCALES["smoke"] = kept
    assert now == before
    # a folder dataset's size is part of its runs' identity
    f = RunConfig(paper="p", name="n", kind="k", dataset="folder:/x", model="m", data=replace(old, image_size=32))
    assert replace(f, data=replace(old, image_size=48)).key != f.key


def test_scales_set_the_input_size():
    assert scales.SCALES["smoke"].data.image_size == scales.SCALES["quick"].data.image_size == 32
    paper = Request(scale="paper")
    assert scales.input_size(paper, "folder:/x", 224) == 224 and scales.input_size(paper, "imagenet", 32) == 32
    assert scales.input_size(paper, "cifar10", 224) == 32  # a fixed-size dataset keeps its own size
    assert scales.input_size(Request(scale="smoke"), "imagenet", 224) == 32


# ---------------------------------------------------------------- refusals


def test_a_model_that_needs_224_px_is_refused_on_a_32_px_dataset(tmp_path, capsys):
    line = _refused(capsys, "imta", "table3", "--scale", "paper", "--dataset", "cifar100", "--runs-dir",
                    str(tmp_path / "runs"), "--out-dir", str(tmp_path))
    assert "msdnet_imagenet takes 224x224" in line and "cifar100" in line
    assert not _run_dirs(tmp_path / "runs")


def test_cached_gate_features_are_refused_for_a_dataset_read_through_a_dataloader(tree, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.setattr(D, "IN_MEMORY_LIMIT_BYTES", 0)  # the tree no longer fits: a DataLoader reads it
    line = _refused(capsys, "dgate", "table1", "--scale", "smoke", "--dataset", f"folder:{tree}", "--set",
                    "features=cached", "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path))
    assert "features=cached" in line and "DataLoader" in line and "features=online" in line
    assert not _run_dirs(tmp_path / "runs")
    # by default such a dataset gets online features
    (gates,) = [c for c in plan(get_paper("dgate").artifact("table1"),
                                Request(scale="smoke", dataset=f"folder:{tree}")) if c.kind == "gates"]
    assert gates.method["features"] == "online"


def test_a_missing_folder_is_refused_before_planning(tmp_path, capsys):
    line = _refused(capsys, "dcp", "imagenet", "--scale", "smoke", "--dataset", f"folder:{tmp_path / 'none'}",
                    "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path))
    assert "not found" in line and "train/" in line
    assert not _run_dirs(tmp_path / "runs")


# Which artifacts take images of another size than 32 (the smoke scale patched to 48 px): the
# CIFAR MSDNet (IMTA) and DCP's VGG-16 need exactly 32; the others take any size.
AT_48 = {("imta", "table2"): "msdnet_cifar_5exit takes 32x32", ("imta", "fig5"): "takes 32x32",
         ("dcp", "table1"): r"VGG-16 \(vgg16_cifar\) takes 32x32", ("dcp", "fig-channels"): "takes 32x32",
         ("glancenet", "table1"): None, ("dgate", "table1"): None, ("dgate", "fig7"): None,
         ("biasloss", "table1"): None, ("biasloss", "table4"): None, ("dcp", "imagenet"): None,
         ("dcp", "fig-ratio"): None}


def test_every_paper_says_which_artifacts_take_other_sizes(tree, monkeypatch):
    smoke = scales.SCALES["smoke"]
    monkeypatch.setitem(scales.SCALES, "smoke", replace(smoke, data=replace(smoke.data, image_size=48)))
    request = Request(scale="smoke", dataset=f"folder:{tree}")
    for (paper, artifact), refusal in AT_48.items():
        if refusal is None:
            cfgs = plan(get_paper(paper).artifact(artifact), request)
            assert cfgs and all(c.data.image_size == 48 for c in cfgs), (paper, artifact)
        else:
            with pytest.raises(ConfigError, match=refusal) as e:
                plan(get_paper(paper).artifact(artifact), request)
            assert "\n" not in str(e.value)
