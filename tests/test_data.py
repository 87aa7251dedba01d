"""The data layer: Fashion-MNIST's lookup order and corrupt files, CIFAR pickles, folder
datasets (``folder:PATH``), ImageNet below 224 px, and the missing-data summary of the tests."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import repro.data as D
from repro.config import ConfigError, DataSpec
from repro.data import (DataCorrupt, DataUnavailable, LoaderBatches, TensorBatches, dataset_info,
                        find_fashion_mnist, load_arrays, load_data)

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


# ---------------------------------------------------------------- Fashion-MNIST files


def _idx_images(n: int, fill: int) -> bytes:
    return bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes([fill]) * (n * 784)


def _idx_labels(labels) -> bytes:
    return bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big") + bytes(labels)


def _write_fmnist(folder: Path, fill: int = 7, gz: bool = False, n_train: int = 12, n_test: int = 6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    blobs = [_idx_images(n_train, fill), _idx_labels([i % 10 for i in range(n_train)]),
             _idx_images(n_test, fill), _idx_labels([i % 10 for i in range(n_test)])]
    paths = []
    for name, blob in zip(NAMES, blobs):
        p = folder / (f"{name}.gz" if gz else name)
        p.write_bytes(gzip.compress(blob) if gz else blob)
        paths.append(p)
    return paths


@pytest.fixture
def fm(tmp_path, monkeypatch):
    """A data root and a stand-in for Debian's folder, both empty; downloads are recorded."""
    system = tmp_path / "system"
    monkeypatch.setattr(D, "FASHION_MNIST_SYSTEM_DIR", system)
    calls = []

    def no_download(root):
        calls.append(root)
        raise OSError("no network")

    monkeypatch.setattr(D, "_download_fashion_mnist", no_download)
    return tmp_path / "root", system, calls


def test_the_data_root_comes_first_then_the_system_folder_read_in_place(fm):
    root, system, calls = fm
    _write_fmnist(system, fill=2, gz=True)
    found = find_fashion_mnist(root)
    assert found.source == "system" and found.folder == system
    a = load_arrays("fashion-mnist", root)
    assert a.train_x.shape == (12, 1, 32, 32) and int(a.train_x[0, 0, 16, 16]) == 2
    assert int(a.train_x[0, 0, 0, 0]) == 0  # the 2-pixel zero border of 28 -> 32
    assert a.test_y.tolist() == [0, 1, 2, 3, 4, 5]
    assert not root.exists()  # nothing unpacked into the data root
    _write_fmnist(root / "FashionMNIST" / "raw", fill=5)  # plain files in the root win
    assert find_fashion_mnist(root).source == "data root"
    assert int(load_arrays("fashion-mnist", root).train_x[0, 0, 16, 16]) == 5
    assert calls == []


def test_gz_files_in_the_data_root_and_a_partial_root_falls_through(fm):
    root, system, _ = fm
    raw = root / "FashionMNIST" / "raw"
    _write_fmnist(raw, fill=9, gz=True)
    assert int(load_arrays("fashion-mnist", root).train_x[3, 0, 10, 10]) == 9
    (raw / f"{NAMES[3]}.gz").unlink()  # three of four: not used
    _write_fmnist(system, fill=4, gz=True)
    assert find_fashion_mnist(root).source == "system"


def test_download_only_when_neither_folder_has_the_files(fm, monkeypatch):
    root, _, _ = fm
    calls = []

    def fake_download(r):
        calls.append(r)
        _write_fmnist(Path(r) / "FashionMNIST" / "raw", fill=3)

    monkeypatch.setattr(D, "_download_fashion_mnist", fake_download)
    a = load_arrays("fashion-mnist", root)
    assert calls == [root] and int(a.train_x[0, 0, 16, 16]) == 3
    load_arrays("fashion-mnist", root)
    assert len(calls) == 1


def test_no_files_and_no_download_says_where_to_put_them(fm):
    root, system, calls = fm
    for download in (True, False):
        with pytest.raises(DataUnavailable) as e:
            load_arrays("fashion-mnist", root, download=download)
        msg = str(e.value)
        assert "\n" not in msg and "not found" in msg and str(system) in msg
        assert f"in {root / 'FashionMNIST' / 'raw'}" in msg and "apt-get install dataset-fashion-mnist" in msg
        assert ("download failed (OSError)" in msg) == download
    assert calls == [root]


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-100])


CORRUPTIONS = {
    "empty": (0, lambda p: p.write_bytes(b""), "empty"),
    "header only": (0, lambda p: p.write_bytes(p.read_bytes()[:16]), "expected 12 images of 28x28"),
    "truncated": (0, _truncate, "file has"),
    "trailing bytes": (0, lambda p: p.write_bytes(p.read_bytes() + b"x"), "file has"),
    "garbage": (0, lambda p: p.write_bytes(b"<html>404 not found</html>"), "not an idx file"),
    "wrong image size": (2, lambda p: p.write_bytes(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big")
                                                    + (32).to_bytes(4, "big") * 2 + bytes(2048)), "32x32"),
    "labels out of range": (1, lambda p: p.write_bytes(_idx_labels([0] * 11 + [10])), "labels outside 0..9"),
    "label count": (3, lambda p: p.write_bytes(_idx_labels([1] * 5)), "6 images but"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_idx_file_says_corrupt_and_names_it_without_downloading(fm, kind):
    root, _, calls = fm
    which, damage, why = CORRUPTIONS[kind]
    paths = _write_fmnist(root / "FashionMNIST" / "raw")
    damage(paths[which])
    with pytest.raises(DataCorrupt) as e:
        load_arrays("fashion-mnist", root)
    msg = str(e.value)
    assert "\n" not in msg and "corrupt" in msg and str(paths[which]) in msg and why in msg, msg
    assert "delete both and rerun" in msg if kind == "label count" else "delete it and rerun" in msg
    assert calls == []


def test_a_truncated_gzip_in_the_system_folder_says_reinstall(fm):
    root, system, calls = fm
    paths = _write_fmnist(system, gz=True)
    paths[0].write_bytes(paths[0].read_bytes()[:30])
    with pytest.raises(DataCorrupt, match=r"t.*train-images-idx3-ubyte\.gz is corrupt \(not a complete gzip.*"
                                          r"apt-get install --reinstall dataset-fashion-mnist"):
        load_arrays("fashion-mnist", root)
    assert calls == []


def test_the_cli_prints_one_line_for_a_corrupt_file(fm, tmp_path, capsys):
    from repro.cli import main

    root, _, _ = fm
    paths = _write_fmnist(root / "FashionMNIST" / "raw")
    paths[2].write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        main(["imta", "table2", "--scale", "smoke", "--data-root", str(root), "--runs-dir", str(tmp_path / "runs"),
              "--out-dir", str(tmp_path)])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"{paths[2]} is corrupt (the file is empty)" in err[0]


# ---------------------------------------------------------------- CIFAR pickles


def _fake_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / f, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, fh)
    return folder


CIFAR_CORRUPTIONS = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a readable pickle"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable pickle"),
    "wrong shape": (lambda p: pickle.dump({"data": np.zeros((3, 4096), np.uint8), "labels": [0, 1, 2]},
                                          open(p, "wb")), "expected uint8 N x 3072"),
    "label count": (lambda p: pickle.dump({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1]},
                                          open(p, "wb")), "4 images but 2 labels"),
    "labels out of range": (lambda p: pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]},
                                                  open(p, "wb")), "labels outside 0..9"),
}


@pytest.mark.parametrize("kind", list(CIFAR_CORRUPTIONS))
def test_a_corrupt_cifar_batch_says_corrupt_and_names_it(tmp_path, kind):
    folder = _fake_cifar10(tmp_path)
    damage, why = CIFAR_CORRUPTIONS[kind]
    damage(folder / "data_batch_3")
    with pytest.raises(DataCorrupt) as e:
        load_arrays("cifar10", tmp_path, download=False)
    msg = str(e.value)
    assert "\n" not in msg and f"{folder / 'data_batch_3'} is corrupt" in msg and why in msg, msg
    assert f"delete {folder}" in msg


# ---------------------------------------------------------------- folder datasets


def _photo(rng, h: int, w: int, gray: bool, cls: int) -> np.ndarray:
    """A smooth gradient in a class colour plus noise, h x w (x 3)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / w * (cls + 1) * 3.1) + np.cos(yy / h * 2.3)) * 60 + 120
    if gray:
        img = base + rng.normal(0, 12, (h, w))
    else:
        tint = np.array([[40, -30, 10], [-20, 30, -40], [10, 10, 50]])[cls % 3]
        img = base[..., None] + tint + rng.normal(0, 12, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def _tree(root: Path, classes=("cat", "dog", "fox"), n_train=20, n_val=5, gray=False, jpeg_every=4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(24, 90)), int(rng.integers(24, 90))  # mixed sizes and aspects
                img = Image.fromarray(_photo(rng, h, w, gray, ci))
                if i % jpeg_every == 0:
                    img.save(root / split / c / f"{i:03d}.jpg", quality=90)
                else:
                    img.save(root / split / c / f"{i:03d}.png")
    (root / "train" / classes[0] / "notes.txt").write_text("not an image")  # ignored
    return root


def test_folder_dataset_info_from_the_tree(tmp_path):
    rgb, gray = _tree(tmp_path / "rgb"), _tree(tmp_path / "gray", classes=("a", "b"), gray=True)
    info = dataset_info(f"folder:{rgb}")
    assert (info.num_classes, info.in_channels, info.image_size, info.mean) == (3, 3, 32, None)
    assert info.in_memory and info.default_val_size == 6  # a tenth of the 60 training images
    g = dataset_info(f"folder:{gray}", image_size=48)
    assert (g.num_classes, g.in_channels, g.image_size) == (2, 1, 48)


@pytest.mark.parametrize("gray", [False, True])
def test_folder_dataset_loads_resized_in_memory_with_its_own_statistics(tmp_path, gray):
    root = _tree(tmp_path / "t", gray=gray)
    ch = 1 if gray else 3
    d = load_data(f"folder:{root}", DataSpec(val_size=256, test_limit=9, augment="crop_flip"), batch_size=16)
    assert isinstance(d.train, TensorBatches) and d.info.in_memory
    assert len(d.val_idx) == 6 and len(d.train_idx) == 54  # val_size capped at a tenth of train/
    assert set(d.train_idx.tolist()).isdisjoint(d.val_idx.tolist())
    assert d.train.x.shape == (54, ch, 32, 32) and d.train.x.dtype == torch.uint8
    assert d.test_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 9 of val/'s 15, spread over its classes
    assert len(d.info.mean) == ch and all(0.2 < m < 0.8 for m in d.info.mean)
    x = torch.cat([xb for xb, _ in d.val])  # normalised with the training split's statistics
    assert x.shape == (6, ch, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(torch.tensor(d.info.mean), d.train.x.double().mean((0, 2, 3)).float() / 255)
    assert torch.allclose(torch.tensor(d.info.std), d.train.x.double().std((0, 2, 3), correction=0).float() / 255)
    xt = torch.cat([xb for xb, _ in d.train])  # augmented: crop (zero padding) and flip
    assert xt.shape == (54, ch, 32, 32) and xt.dtype == torch.float32
    d48 = load_data(f"folder:{root}", DataSpec(val_size=4, image_size=48), batch_size=16)
    assert d48.train.x.shape[1:] == (ch, 48, 48) and d48.info.image_size == 48


def test_the_dataloader_path_gives_the_same_images_as_the_in_memory_one(tmp_path, monkeypatch):
    root = _tree(tmp_path / "t")
    spec = DataSpec(val_size=5, train_limit=20, augment="crop_flip")
    mem = load_data(f"folder:{root}", spec, batch_size=8)
    monkeypatch.setattr(D, "IN_MEMORY_LIMIT_BYTES", 0)
    stream = load_data(f"folder:{root}", spec, batch_size=8, workers=0)
    assert isinstance(stream.train, LoaderBatches) and not stream.info.in_memory
    assert torch.equal(mem.val_idx, stream.val_idx) and torch.equal(mem.test_labels, stream.test_labels)
    for a, b in ((mem.val, stream.val), (mem.test, stream.test)):
        xa, ya = map(torch.cat, zip(*a))
        xb, yb = map(torch.cat, zip(*b))
        assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-5)
    xs, ys = next(iter(stream.train))
    assert xs.shape == (8, 3, 32, 32) and xs.dtype == torch.float32 and ys.dtype == torch.int64
    assert len(stream.train) == 3  # 20 images in batches of 8


def test_val_folders_take_train_s_class_numbers(tmp_path):
    root = _tree(tmp_path / "t", n_val=2)
    import shutil

    shutil.rmtree(root / "val" / "cat")
    d = load_data(f"folder:{root}", DataSpec(val_size=3), batch_size=8)
    assert d.test_labels.tolist() == [1, 1, 2, 2]


def _one_line(exc_type, fn, *match):
    with pytest.raises(exc_type) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for m in match:
        assert m in msg, msg
    return msg


def test_a_bad_folder_tree_gives_one_line(tmp_path):
    bad = tmp_path / "bad"
    _one_line(DataUnavailable, lambda: dataset_info(f"folder:{tmp_path / 'nowhere'}"), "is not a folder", "train/")
    bad.mkdir()
    _one_line(DataUnavailable, lambda: dataset_info(f"folder:{bad}"), "no ", "train", "val")
    (bad / "train").mkdir()
    (bad / "val").mkdir()
    _one_line(DataUnavailable, lambda: dataset_info(f"folder:{bad}"), "has no class folders")
    (bad / "train" / "a").mkdir()
    _one_line(DataUnavailable, lambda: dataset_info(f"folder:{bad}"), "has 1 class folder,")
    (bad / "train" / "b").mkdir()
    _one_line(DataUnavailable, lambda: dataset_info(f"folder:{bad}"), f"{bad / 'train' / 'a'} holds no images")
    _one_line(ConfigError, lambda: dataset_info("folder:"), "needs a path")
    t = _tree(tmp_path / "t", n_train=3, n_val=1)
    (t / "val" / "owl").mkdir()
    _one_line(DataUnavailable, lambda: dataset_info(f"folder:{t}"), "owl is not a class of")


def test_a_corrupt_image_is_named(tmp_path):
    t = _tree(tmp_path / "t", n_train=4, n_val=2)
    junk = t / "train" / "dog" / "zzz.png"
    junk.write_bytes(b"\x89PNG garbage")
    _one_line(DataCorrupt, lambda: load_data(f"folder:{t}", DataSpec(val_size=2), batch_size=4),
              f"{junk} is corrupt (not a readable image", "delete or replace it")
    junk.unlink()
    D._scan_tree.cache_clear()
    g = _tree(tmp_path / "g", n_train=2, n_val=1, gray=True)
    (g / "train" / "a").mkdir()
    (g / "train" / "a" / "x.jpg").write_bytes(b"")  # a grayscale tree reads every header up front
    _one_line(DataCorrupt, lambda: dataset_info(f"folder:{g}"), f"{g / 'train' / 'a' / 'x.jpg'} is corrupt")
    good = t / "val" / "fox" / "001.png"
    good.write_bytes(good.read_bytes()[:200])  # the header reads, the pixels do not
    _one_line(DataCorrupt, lambda: load_data(f"folder:{t}", DataSpec(val_size=2), batch_size=4),
              f"{good} is corrupt")


def test_the_cli_refuses_a_bad_folder_in_one_line(tmp_path, capsys):
    from repro.cli import main

    with pytest.raises(SystemExit) as e:
        main(["imta", "table2", "--scale", "smoke", "--dataset", f"folder:{tmp_path}", "--runs-dir",
              str(tmp_path / "runs"), "--out-dir", str(tmp_path)])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: dataset 'folder:") and "train" in err[0]


# ---------------------------------------------------------------- ImageNet, sizes


def test_imagenet_below_224_is_read_as_a_folder_dataset(tmp_path):
    _tree(tmp_path, classes=("n01", "n02"), n_train=6, n_val=2)
    d = load_data("imagenet", DataSpec(val_size=256, test_limit=512, train_limit=512, image_size=32),
                  root=tmp_path, batch_size=4)
    assert isinstance(d.train, TensorBatches) and d.train.x.shape[1:] == (3, 32, 32)
    assert d.info.num_classes == 2 and d.info.mean == D.DATASETS["imagenet"].mean
    assert len(d.val_idx) == 1 and len(d.train_idx) == 11 and d.test_labels.tolist() == [0, 0, 1, 1]
    assert dataset_info("imagenet", 32).image_size == 32 and dataset_info("imagenet").image_size == 224


def test_fixed_size_datasets_refuse_another_size():
    assert dataset_info("cifar10", 32) is D.DATASETS["cifar10"]
    _one_line(ConfigError, lambda: dataset_info("cifar10", 224), "32x32", "224x224")
    _one_line(ConfigError, lambda: dataset_info("nope"), "unknown dataset", "folder:PATH")


# ---------------------------------------------------------------- tests see what the loader sees


def test_missing_data_skips_are_counted():
    from conftest import FMNIST_MISSING, missing_data_skips

    class R:
        def __init__(self, reason):
            self.longrepr = ("f.py", 1, f"Skipped: {reason}")

    reports = [R(FMNIST_MISSING), R(FMNIST_MISSING), R("Fashion-MNIST not installed (apt-get ...)"), R("no GPU")]
    counts = missing_data_skips(reports)
    assert counts[FMNIST_MISSING] == 2 and sum(counts.values()) == 3


def test_conftest_looks_where_the_loader_looks(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    assert find_fashion_mnist() is None
    _write_fmnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    assert find_fashion_mnist().folder == tmp_path / "FashionMNIST" / "raw"
