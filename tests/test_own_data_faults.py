"""Your own data under hostile input (issue 25): a folder dataset (or an ImageNet-style tree) is
verified before any run folder is made, also under ``--dry-run``, and a fault ends in one line
``error: ...`` with exit code 2, never a traceback.

Covered: a symlink loop in a class folder (refused, naming the link) and a class folder linked in
from elsewhere (followed, counted once); 16-bit and other pixel modes (scaled to 8-bit, not
clipped; a mode without a faithful reading refused); a truncated PNG in train/ or val/ and a
non-image ``.png`` (named before any run folder); a tree of one class (folder and ImageNet); the
verdict's cache (a second check decodes nothing); the header's held-out count.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from repro import data as D
from repro.config import DataSpec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test remembers verified trees in its own cache file, never in ~/.cache."""
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tree(root: Path, classes=("a", "b"), n_train: int = 20, n_val: int = 4) -> Path:
    """train/<class>/*.png and val/<class>/*.png: 8x8 grayscale PNGs, a different level per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.normal(60 + 80 * ci, 10, (8, 8)).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i:03d}.png")
    return root


def _truncate(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # the header reads, the pixels do not


def _cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run the CLI in-process: (exit code, non-empty stderr lines)."""
    from repro.cli import main

    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _smoke(tmp_path: Path, dataset: str, *extra: str) -> list[str]:
    return ["glancenet", "alpha", "--scale", "smoke", "--dataset", dataset, "--runs-dir", str(tmp_path / "runs"),
            "--out-dir", str(tmp_path / "out"), *extra]


def _no_run_folder(tmp_path: Path) -> bool:
    return not any((tmp_path / "runs").rglob("config.json"))


def _refused(capsys, tmp_path: Path, argv: list[str], *words: str) -> str:
    code, err = _cli(capsys, *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    assert "Traceback" not in err[0] and all(w in err[0] for w in words), err[0]
    assert _no_run_folder(tmp_path)
    return err[0]


# ---------------------------------------------------------------- symbolic links


def test_a_symlink_loop_in_a_class_folder_is_refused_naming_the_link(tmp_path, capsys):
    t = _tree(tmp_path / "t")
    loop = t / "train" / "a" / "loop"
    loop.symlink_to("..")  # ln -s .. train/a/loop: it once read 3,280 images, b's labelled a
    for argv in (_smoke(tmp_path, f"folder:{t}"), _smoke(tmp_path, f"folder:{t}", "--dry-run")):
        line = _refused(capsys, tmp_path, argv, str(loop), "symbolic link", "loop", "remove the link")
    assert not (tmp_path / "out").exists()
    # a link to another class's folder would read its images twice, under two labels
    loop.unlink()
    copy = t / "train" / "a" / "more"
    copy.symlink_to(t / "train" / "b")
    line = _refused(capsys, tmp_path, _smoke(tmp_path, f"folder:{t}"), str(copy), "read twice")
    assert "\n" not in line


def test_a_class_folder_linked_in_from_elsewhere_is_followed_once(tmp_path):
    t = _tree(tmp_path / "t", n_train=20, n_val=4)
    elsewhere = _tree(tmp_path / "other", classes=("c",), n_train=7, n_val=1)
    (t / "train" / "c").symlink_to(elsewhere / "train" / "c")  # a class kept on another disk
    (t / "train" / "a" / "sub").symlink_to(tmp_path / "other" / "val" / "c")  # a subfolder linked in
    tree = D._folder_tree(f"folder:{t}")
    assert tree.classes == ("a", "b", "c")
    counts = np.bincount([y for _, y in tree.train])
    assert counts.tolist() == [20 + 1, 20, 7]  # every image once, in its own class
    assert len(tree.val) == 8


# ---------------------------------------------------------------- pixel modes


def test_16_bit_pngs_are_scaled_to_8_bit_not_clipped(tmp_path):
    from PIL import Image

    t = _tree(tmp_path / "t", n_train=10, n_val=2)
    rng = np.random.default_rng(1)
    truth = []
    for c in ("a", "b"):
        for i in range(10):
            a = rng.integers(0, 65536, (8, 8)).astype(np.uint16)  # mean about 32,768: 128 in 8 bits
            Image.fromarray(a).save(t / "train" / c / f"{i:03d}.png")
            truth.append(a)
    assert Image.open(t / "train" / "a" / "000.png").mode == "I;16"
    x = D.load_arrays(f"folder:{t}", image_size=8).train_x.double()
    want = np.stack(truth).astype(np.float64) / 257
    assert x.shape == (20, 1, 8, 8)
    assert abs(x.mean().item() - want.mean()) < 0.5, (x.mean().item(), want.mean())  # was 253.7: clipped
    assert np.abs(x.numpy()[:, 0] - want).max() <= 0.5  # each pixel: value / 257, rounded
    assert 120 < x.mean().item() < 136


def test_other_pixel_modes_are_read_or_refused_in_one_line(tmp_path):
    from PIL import Image

    gray = np.arange(64, dtype=np.float64).reshape(8, 8) * 4  # 0..252
    cases = {
        "I": Image.fromarray((gray * 257).astype(np.int32), "I"),  # 16-bit PGM opens as I
        "F": Image.fromarray((gray / 255).astype(np.float32), "F"),
        "LA": Image.fromarray(gray.astype(np.uint8), "L").convert("LA"),
        "P": Image.fromarray(gray.astype(np.uint8), "L").convert("P"),
        "RGBA": Image.fromarray(gray.astype(np.uint8), "L").convert("RGBA"),
        "CMYK": Image.fromarray(gray.astype(np.uint8), "L").convert("RGB").convert("CMYK"),
        "1": Image.fromarray(gray.astype(np.uint8) >= 128),
    }
    for mode, im in cases.items():
        assert im.mode == mode
        got = np.asarray(D.to_8bit(im, "L"), dtype=np.float64)
        want = (gray >= 128) * 255.0 if mode == "1" else gray
        assert np.abs(got - want).max() <= 1.0, mode
        assert np.asarray(D.to_8bit(im, "RGB")).shape == (8, 8, 3), mode
    # pixels without a faithful 8-bit reading: refused
    for im, mode, words in ((Image.fromarray(np.full((8, 8), 70000, np.int32), "I"), "RGB", "outside the 16-bit"),
                            (Image.fromarray(np.full((8, 8), 3.5, np.float32), "F"), "L", "only in 0..1"),
                            (Image.new("LAB", (8, 8)), "L", "no conversion to L")):  # Pillow has none
        with pytest.raises(D._PixelModeRefused, match=words):
            D.to_8bit(im, mode)
    # ... in one line naming the file, before any run folder
    t = _tree(tmp_path / "t", n_train=4, n_val=1)
    bad = t / "train" / "b" / "float.tif"
    Image.fromarray(np.full((8, 8), 3.5, np.float32), "F").save(bad)
    with pytest.raises(D.DataUnavailable) as e:
        D.check_tree(f"folder:{t}")
    assert str(bad) in str(e.value) and "convert it to 8-bit" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- faults, before any run folder


def _subprocess_cli(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "REPRO_THREADS": "1", "REPRO_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "repro", *argv], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_truncated_png_is_named_before_any_run_folder(tmp_path, split):
    t = _tree(tmp_path / "t")
    bad = t / split / "b" / "001.png"
    _truncate(bad)
    proc = _subprocess_cli(tmp_path, _smoke(tmp_path, f"folder:{t}"))
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in proc.stderr, err
    assert str(bad) in err[0] and "is corrupt" in err[0] and "truncated" in err[0], err[0]
    assert "delete or replace it" in err[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_a_non_image_png_in_val_is_named_before_any_run_folder(tmp_path, capsys):
    t = _tree(tmp_path / "t")
    fake = t / "val" / "a" / "notes.png"
    fake.write_text("these are my notes, not a picture\n")
    for extra in ((), ("--dry-run",)):
        _refused(capsys, tmp_path, _smoke(tmp_path, f"folder:{t}", *extra), str(fake), "is corrupt",
                 "not a readable image", "delete or replace it")
    assert not (tmp_path / "runs").exists()


def test_a_tree_of_one_class_is_refused_folder_and_imagenet(tmp_path, capsys):
    t = _tree(tmp_path / "t", classes=("only",))
    _refused(capsys, tmp_path, _smoke(tmp_path, f"folder:{t}"), "1 class folder", "at least 2")
    _refused(capsys, tmp_path, _smoke(tmp_path, "imagenet", "--data-root", str(t)), "1 class folder",
             "at least 2")
    _refused(capsys, tmp_path, _smoke(tmp_path, "imagenet", "--data-root", str(t), "--dry-run"),
             "1 class folder")
    assert not (tmp_path / "runs").exists()


def test_an_imagenet_tree_is_verified_too(tmp_path, capsys):
    t = _tree(tmp_path / "t")
    bad = t / "train" / "a" / "005.png"
    _truncate(bad)
    _refused(capsys, tmp_path, _smoke(tmp_path, "imagenet", "--data-root", str(t)), str(bad), "is corrupt")


# ---------------------------------------------------------------- the verdict's cache


def test_a_verified_tree_is_not_decoded_again(tmp_path, monkeypatch, own_cache):
    t = _tree(tmp_path / "t", n_train=6, n_val=2)
    calls = []
    real = D._verify_image
    monkeypatch.setattr(D, "_verify_image", lambda *a: (calls.append(a[0]), real(*a))[1])
    tree = D._folder_tree(f"folder:{t}")
    assert D.verify_tree(tree) is True and len(calls) == 16  # every image of train/ and val/, once
    assert (own_cache / "verified-trees.json").is_file()
    assert D.verify_tree(tree) is False and len(calls) == 16  # the cache answers: nothing decoded
    # the pre-flight (check_data) reads the same cache
    from repro.runner import check_data

    check_data(f"folder:{t}", None)
    assert len(calls) == 16
    # a file rewritten (another size or time) is a new tree: verified again, and found bad
    bad = t / "val" / "b" / "001.png"
    _truncate(bad)
    D._scan_tree.cache_clear()
    with pytest.raises(D.DataCorrupt, match="truncated"):
        D.verify_tree(D._folder_tree(f"folder:{t}"))
    assert len(calls) > 16
    # a cache file that is garbage is ignored (and rewritten)
    (own_cache / "verified-trees.json").write_text("{not json")
    bad.unlink()
    D._scan_tree.cache_clear()
    assert D.verify_tree(D._folder_tree(f"folder:{t}")) is True
    assert D.verify_tree(D._folder_tree(f"folder:{t}")) is False


def test_a_cache_that_cannot_be_written_does_not_stop_a_run(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("REPRO_CACHE_DIR", str(blocker / "sub"))  # under a file: cannot be made
    t = _tree(tmp_path / "t", n_train=3, n_val=1)
    tree = D._folder_tree(f"folder:{t}")
    assert D.verify_tree(tree) is True and D.verify_tree(tree) is True  # verified each time, no error


# ---------------------------------------------------------------- the header's held-out count


def test_the_header_states_the_images_really_held_out(tmp_path, capsys):
    from repro.render import training_note
    from repro.scales import SCALES

    t = _tree(tmp_path / "t", n_train=20, n_val=4)  # 40 training images: 4 held out (a tenth)
    quick = SCALES["quick"].data
    assert quick.val_size == 5000 and D.split_sizes(f"folder:{t}", quick) == (36, 4)
    assert D.split_sizes("fashion-mnist", quick) == (55_000, 5000)
    smoke = SCALES["smoke"].data  # a limit of 512 images: the tree has 36 left to train on
    assert D.split_sizes(f"folder:{t}", smoke)[0] == 36
    code, err = _cli(capsys, "glancenet", "alpha", "--scale", "quick", "--epochs", "1", "--dataset", f"folder:{t}",
                     "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"))
    assert code == 0, err
    header = (tmp_path / "out" / "figures" / "quick" / "glancenet_alpha.csv").read_text()
    line = next(x for x in header.splitlines() if x.startswith("# training:"))
    assert "the training split less 4 held-out validation images" in line, line
    assert "5,000" not in line
    # the numbers a run really used
    import torch

    import json

    (split,) = [p for p in (tmp_path / "runs").rglob("split.pt")  # not the convergence twin (2 epochs)
                if json.loads((p.parent / "config.json").read_text())["train"]["epochs"] == 1]
    saved = torch.load(split)
    assert len(saved["val"]) == 4 and len(saved["train"]) == 36
    # without sizes (tests of the renderer), the config's numbers
    from types import SimpleNamespace as NS

    cfg = NS(kind="k", train=NS(epochs=1), data=NS(train_limit=None, val_size=5000), method={})
    assert training_note([cfg]).startswith("the training split less 5,000 held-out")
    assert training_note([cfg], lambda c: (36, 4)).startswith("the training split less 4 held-out")
