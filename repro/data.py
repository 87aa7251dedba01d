"""Datasets, the held-out validation split, and batches without per-image Python.

Small datasets (CIFAR, Fashion-MNIST, a folder dataset that fits) are loaded once into
uint8 tensors, moved to the training device, and augmented there a whole batch at a time
(random crop with zero padding, horizontal flip, optional rotation). ImageNet at its own
size, and folder datasets too large for memory, stream from an ImageFolder tree through a
DataLoader.  The validation split is held out of the training set with a fixed split seed
(0), the same for every training seed.  Fashion-MNIST is found by
:func:`find_fashion_mnist`; a file that is there but unreadable is reported as corrupt
(:class:`DataCorrupt`), never as missing, and is not downloaded over.  docs/data.md
describes the datasets, the lookup order and folder datasets.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from repro import distributed as D
from repro.config import ConfigError, DataSpec

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FOLDER_PREFIX = "folder:"
# A folder dataset (or ImageNet below its own size) is decoded into memory when the images a
# run needs take at most this many bytes of uint8 at the target size; else a DataLoader reads it.
IN_MEMORY_LIMIT_BYTES = 2 * 1024 ** 3
# Folder datasets: the size their images are resized to when the scale does not say.
DEFAULT_FOLDER_SIZE = 32


class DataUnavailable(RuntimeError):
    """The dataset is neither on disk nor downloadable: the message says where we looked."""


class DataCorrupt(DataUnavailable):
    """A dataset file is there but unreadable: the message names it and says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    # None for a folder dataset until it is loaded: load_data computes them from its
    # training images (Data.info has them).
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    in_memory: bool = True
    default_val_size: int = 5000
    train_size: int | None = None  # images in the training split, where known without reading it


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), train_size=50_000),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            train_size=50_000),
    # Fashion-MNIST is padded from 28x28 to 32x32 so that CIFAR architectures keep their spatial plan.
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 32, (0.2860,), (0.3530,), train_size=60_000),
    "imagenet": DatasetInfo("imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                            in_memory=False, default_val_size=50000, train_size=1_281_167),
    # Random class-dependent images, for unit tests only.
    "synthetic": DatasetInfo("synthetic", 10, 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def dataset_info(name: str, image_size: int | None = None) -> DatasetInfo:
    """What a model needs to know about a dataset at ``image_size`` (None: the dataset's own).

    ``folder:PATH`` is scanned (class folders, image headers for the channel count); ImageNet
    below 224 px is read like a folder dataset resized to that size.
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ConfigError(f"image size {image_size!r} must be an integer of at least 8 pixels")
    if name.startswith(FOLDER_PREFIX):
        tree = _folder_tree(name)
        size = image_size or DEFAULT_FOLDER_SIZE
        n = len(tree.train) + len(tree.val)
        return DatasetInfo(name, len(tree.classes), tree.channels, size, None, None,
                           in_memory=n * tree.channels * size * size <= IN_MEMORY_LIMIT_BYTES,
                           default_val_size=_folder_val_cap(len(tree.train)))
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}, "
                          f"{FOLDER_PREFIX}PATH (an ImageFolder tree with train/ and val/)")
    info = DATASETS[name]
    if image_size is None or image_size == info.image_size:
        return info
    if name == "imagenet":
        return replace(info, image_size=image_size)
    raise ConfigError(f"dataset '{name}' has {info.image_size}x{info.image_size} images; it is not "
                      f"resized to {image_size}x{image_size} (use a dataset of that size, or folder:PATH)")


def resizable(name: str) -> bool:
    """Whether ``name`` is read at any image size (folder datasets, ImageNet); the others have one."""
    return name.startswith(FOLDER_PREFIX) or name == "imagenet"


# ILSVRC-2012's image counts: what a plan assumes of an ImageNet tree it has not scanned
_IMAGENET_TRAIN, _IMAGENET_VAL = DATASETS["imagenet"].train_size, 50_000


def _images_used(n_train: int, n_val: int, spec: DataSpec) -> int:
    """The images a folder-read run decodes: its training images, held-out split and test images."""
    val = min(spec.val_size, _folder_val_cap(n_train))
    train = n_train - val if not spec.train_limit else min(n_train - val, spec.train_limit)
    return train + val + min(n_val, spec.test_limit or n_val)


def held_in_memory(name: str, spec: DataSpec) -> bool:
    """Whether :func:`load_data` will hold ``name`` read with ``spec`` in memory (TensorBatches)
    rather than read it through a DataLoader, known before anything is loaded.  ImageNet below
    224 px is not scanned: its tree is taken to hold ILSVRC's 1,281,167 + 50,000 images (a
    smaller tree may then be held in memory after all)."""
    info = dataset_info(name, spec.image_size)
    if not resizable(name):
        return info.in_memory
    if name.startswith(FOLDER_PREFIX):
        tree = _folder_tree(name)
        n_train, n_val = len(tree.train), len(tree.val)
    elif info.image_size == DATASETS["imagenet"].image_size:
        return False
    else:
        n_train, n_val = _IMAGENET_TRAIN, _IMAGENET_VAL
    size = info.image_size
    return _images_used(n_train, n_val, spec) * info.in_channels * size * size <= IN_MEMORY_LIMIT_BYTES


def run_info(name: str, image_size: int | None = None, root: Path | None = None) -> DatasetInfo:
    """:func:`dataset_info`, with ImageNet below 224 px counting the class folders of its tree
    under ``root`` (default: the data root) as :func:`load_data` does (dataset_info says 1000)."""
    info = dataset_info(name, image_size)
    if name == "imagenet" and info.image_size != DATASETS["imagenet"].image_size:
        info = replace(info, num_classes=len(_imagenet_tree(Path(root) if root else default_data_root()).classes))
    return info


def class_names(name: str) -> tuple[str, ...] | None:
    """A folder dataset's class names (its train/ folder names, in label order); None for the others."""
    return _folder_tree(name).classes if name.startswith(FOLDER_PREFIX) else None


def default_data_root() -> Path:
    return Path(os.environ.get("REPRO_DATA", Path.home() / ".cache" / "repro"))


# --------------------------------------------------------------------------- loading


@dataclass
class Arrays:
    """A dataset in memory: uint8 images N x C x H x W and int64 labels."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _corrupt(name: str, path: Path, why: str, what_to_do: str) -> DataCorrupt:
    return DataCorrupt(f"dataset '{name}': {path} is corrupt ({why}); {what_to_do}")


# ----------------------------------------------------------------- CIFAR


def _cifar_class(name: str):
    from torchvision import datasets

    base = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100

    class Checked(base):  # type: ignore[misc, valid-type]
        # torchvision checks md5 sums of the pickled batches; we check that they are there
        # (the sums are verified when torchvision downloads), so that a copy made any other
        # way, or the small fabricated files of our tests, load with the same parsing code.
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).exists() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                data = pickle.load(f, encoding="latin1")
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Checked


def _cifar_problem(name: str, folder: Path, cls) -> tuple[Path, str] | None:
    """The first unreadable or ill-shaped file of a CIFAR folder, and what is wrong with it."""
    classes = DATASETS[name].num_classes
    for f, _ in cls.train_list + cls.test_list:
        path = folder / f
        try:
            with open(path, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")
        except Exception as e:  # truncated, empty, not a pickle
            return path, f"not a readable pickle: {type(e).__name__}"
        if not isinstance(d, dict) or "data" not in d:
            return path, "no 'data' entry"
        labels = d.get("labels", d.get("fine_labels"))
        x = np.asarray(d["data"])
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            return path, f"images are {x.dtype} of shape {tuple(x.shape)}, expected uint8 N x 3072"
        if labels is None or len(labels) != x.shape[0]:
            return path, f"{x.shape[0]} images but {'no' if labels is None else len(labels)} labels"
        y = np.asarray(labels)
        if y.size and (y.min() < 0 or y.max() >= classes):
            return path, f"labels outside 0..{classes - 1}"
    meta = folder / cls.meta["filename"]
    try:
        with open(meta, "rb") as fh:
            m = pickle.load(fh, encoding="latin1")
        m[cls.meta["key"]]
    except Exception as e:
        return meta, f"no readable class names: {type(e).__name__}"
    return None


def _load_cifar(name: str, root: Path, download: bool) -> Arrays:
    cls = _cifar_class(name)
    folder = root / cls.base_folder
    redo = f"delete {folder} and rerun (torchvision downloads it again)"
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    if not all((folder / f).exists() for f in files):
        if not download:
            raise _unavailable(name, [folder], "torchvision downloads it into --data-root")
        try:
            cls(str(root), train=True, download=True)
        except Exception as e:  # no network, disk full, ...
            raise _unavailable(name, [folder], f"download failed ({type(e).__name__}); copy the extracted "
                                               f"'{cls.base_folder}' folder into --data-root") from None
    try:
        train, test = cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except Exception as e:
        problem = _cifar_problem(name, folder, cls) or (folder, f"{type(e).__name__}: {e}".splitlines()[0])
        raise _corrupt(name, *problem, redo) from None

    def to_tensor(ds):
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.int64)

    (a, b), (c, d) = to_tensor(train), to_tensor(test)
    classes = DATASETS[name].num_classes
    for x, y in ((a, b), (c, d)):
        if x.shape[0] != y.shape[0] or (y.numel() and (y.min() < 0 or y.max() >= classes)):
            problem = _cifar_problem(name, folder, cls) or (folder, "image and label counts differ")
            raise _corrupt(name, *problem, redo)
    return Arrays(a, b, c, d)


# ----------------------------------------------------------------- Fashion-MNIST


_FMNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@dataclass(frozen=True)
class FashionMNISTFiles:
    """Where Fashion-MNIST was found: ``source`` is 'data root' or 'system'."""
    source: str
    folder: Path
    files: tuple[Path, ...]  # in the order of _FMNIST_FILES


def fashion_mnist_folders(root: Path | None = None) -> list[Path]:
    """The folders looked in, in order: the data root's ``FashionMNIST/raw``, then Debian's."""
    root = Path(root) if root else default_data_root()
    return [root / "FashionMNIST" / "raw", FASHION_MNIST_SYSTEM_DIR]


def find_fashion_mnist(root: Path | None = None) -> FashionMNISTFiles | None:
    """Is Fashion-MNIST on disk, and where: the first folder of :func:`fashion_mnist_folders`
    that holds all four idx files (each plain or .gz; plain first), else None (then
    :func:`load_arrays` tries torchvision's download). Files are not opened here."""
    for source, folder in zip(("data root", "system"), fashion_mnist_folders(root)):
        found = []
        for name in _FMNIST_FILES:
            path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
            if path is None:
                break
            found.append(path)
        else:
            return FashionMNISTFiles(source, folder, tuple(found))
    return None


def _fmnist_hint(root: Path | None) -> str:
    raw = fashion_mnist_folders(root)[0]
    return (f"put the four idx files ({', '.join(_FMNIST_FILES)}, plain or .gz) in {raw}, "
            f"or apt-get install dataset-fashion-mnist")


def _read_idx(path: Path, images: bool, redo: str) -> np.ndarray:
    """One idx file: N x 28 x 28 uint8 images, or N labels in 0..9 (a header, then np.frombuffer)."""
    name = "fashion-mnist"
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DataUnavailable(f"dataset '{name}': {path} cannot be read ({type(e).__name__}); "
                              f"check its permissions") from None
    if path.suffix == ".gz":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as e:
            raise _corrupt(name, path, f"not a complete gzip file: {type(e).__name__}", redo) from None
    ndim = 3 if images else 1
    header = 4 + 4 * ndim
    if not blob:
        raise _corrupt(name, path, "the file is empty", redo)
    if len(blob) < header or blob[:3] != b"\x00\x00\x08" or blob[3] != ndim:
        raise _corrupt(name, path, f"not an idx file of {'28x28 images' if images else 'labels'} "
                                   f"(it starts with {blob[:4].hex() or 'nothing'})", redo)
    dims = [int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    n = dims[0]
    if images and dims[1:] != [28, 28]:
        raise _corrupt(name, path, f"images are {dims[1]}x{dims[2]}, expected 28x28", redo)
    want = header + n * (28 * 28 if images else 1)
    if len(blob) != want:
        what = f"{n} images of 28x28" if images else f"{n} labels"
        raise _corrupt(name, path, f"expected {what}, {want} bytes; the file has {len(blob)} bytes", redo)
    a = np.frombuffer(blob, np.uint8, offset=header)
    if images:
        return a.reshape(n, 28, 28)
    if a.size and a.max() > 9:
        raise _corrupt(name, path, f"labels outside 0..9 (up to {int(a.max())})", redo)
    return a


def _read_fashion_mnist(found: FashionMNISTFiles) -> Arrays:
    redo = ("reinstall it: apt-get install --reinstall dataset-fashion-mnist" if found.source == "system"
            else "delete it and rerun (repro then reads Debian's copy or downloads it)")
    out = []
    for img_path, lab_path in (found.files[:2], found.files[2:]):
        x, y = _read_idx(img_path, True, redo), _read_idx(lab_path, False, redo)
        if x.shape[0] != y.shape[0]:
            raise DataCorrupt(f"dataset 'fashion-mnist': {img_path} and {lab_path} are corrupt ({x.shape[0]} "
                              f"images but {y.shape[0]} labels); {redo.replace(' it', ' both', 1)}")
        padded = np.zeros((x.shape[0], 1, 32, 32), np.uint8)  # 28x28 -> 32x32, zero border
        padded[:, 0, 2:30, 2:30] = x
        out += [torch.from_numpy(padded), torch.from_numpy(y.astype(np.int64))]
    return Arrays(*out)


def _download_fashion_mnist(root: Path) -> None:
    """torchvision's download (md5-checked) into ``<root>/FashionMNIST/raw``, without parsing it."""
    from torchvision import datasets

    class FashionMNIST(datasets.FashionMNIST):  # the same name: the same raw folder
        def _load_data(self):
            return None, None

    FashionMNIST(str(root), train=True, download=True)


def _load_fashion_mnist(root: Path, download: bool) -> Arrays:
    found = find_fashion_mnist(root)
    looked = fashion_mnist_folders(root)
    if found is None:
        if not download:
            raise _unavailable("fashion-mnist", looked, _fmnist_hint(root))
        try:
            _download_fashion_mnist(root)
        except Exception as e:  # no network, disk full, ...
            raise _unavailable("fashion-mnist", looked,
                               f"download failed ({type(e).__name__}); {_fmnist_hint(root)}") from None
        found = find_fashion_mnist(root)
        if found is None:
            raise _unavailable("fashion-mnist", looked, f"the download left no files; {_fmnist_hint(root)}")
    return _read_fashion_mnist(found)


# ----------------------------------------------------------------- synthetic


def _load_synthetic(n_train: int = 1200, n_test: int = 400, seed: int = 0) -> Arrays:
    """Each class is a fixed random pattern plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    info = DATASETS["synthetic"]
    protos = torch.rand(info.num_classes, info.in_channels, 32, 32, generator=g) * 255

    def make(n):
        y = torch.randint(0, info.num_classes, (n,), generator=g)
        x = protos[y] * 0.6 + torch.rand(n, info.in_channels, 32, 32, generator=g) * 255 * 0.4
        return x.round().clamp(0, 255).to(torch.uint8), y

    (a, b), (c, d) = make(n_train), make(n_test)
    return Arrays(a, b, c, d)


# ----------------------------------------------------------------- image folders


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
# Channel count: every training image's header is read up to this many images, else an evenly
# spaced sample of this many (PIL reads headers only).
_MODE_SCAN_LIMIT = 20000


@dataclass(frozen=True)
class ImageTree:
    """An ImageFolder tree: classes from train/'s folder names, val/ labelled with the same ones."""
    name: str
    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    channels: int  # 1 when every image looked at is grayscale, else 3


def _tree_hint(name: str) -> str:
    return (f"{name} needs an ImageFolder tree: train/<class>/<image> and val/<class>/<image> "
            f"({', '.join(IMAGE_EXTENSIONS)})")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _list_images(folder: Path, name: str, walked: set[str], splits: tuple[str, ...] = ()) -> list[str]:
    """The image files under ``folder`` (a class folder), sorted, hidden entries skipped.

    Symbolic links to folders elsewhere are followed (a class kept on another disk), but each real
    folder is walked once for the whole tree (``walked``, shared by all class folders of train/ and
    val/), and a link to a folder inside ``splits`` (the real train/ and val/ folders) is refused:
    it would read images twice, under two labels, or loop.  One line names the link."""
    out: list[str] = []

    def refuse(path: str, target: str, why: str) -> DataUnavailable:
        return DataUnavailable(f"dataset '{name}': {path} is a symbolic link to {target}, {why}; remove the "
                               f"link (or replace it by a copy of the images it should add)")

    def cannot_read(e: OSError) -> None:
        raise DataUnavailable(f"dataset '{name}': cannot read the folder {e.filename} "
                              f"({e.strerror or type(e).__name__}); check its permissions")

    top = os.path.realpath(folder)
    if os.path.islink(folder) and any(_inside(top, s) for s in splits):
        raise refuse(str(folder), top, "a folder of the same dataset: its images would be read twice")
    if top in walked:
        raise refuse(str(folder), top, "a folder this dataset already reads: its images would be read twice")
    walked.add(top)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=cannot_read):
        here = os.path.realpath(dirpath)
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            path = os.path.join(dirpath, d)
            real = os.path.realpath(path)
            if os.path.islink(path):
                if _inside(here, real):
                    raise refuse(path, real, "a folder that holds the link itself (a loop)")
                if any(_inside(real, s) for s in splits):
                    raise refuse(path, real, "a folder of the same dataset: its images would be read twice")
            if real in walked:
                raise refuse(path, real, "a folder this dataset already reads: its images would be read twice")
            walked.add(real)
            keep.append(d)
        dirnames[:] = keep
        out += [os.path.join(dirpath, f) for f in sorted(filenames)
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return out


def _image_mode(path: str, name: str) -> str:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode
    except Exception as e:
        raise _corrupt(name, Path(path), f"not a readable image: {type(e).__name__}",
                       "delete or replace it") from None


@lru_cache(maxsize=16)
def _scan_tree(root: str, name: str, scan_modes: bool) -> ImageTree:
    base = Path(root)
    hint = _tree_hint(name)
    if not base.is_dir():
        raise DataUnavailable(f"dataset '{name}' not found: {base} is not a folder; {hint}")
    missing = [str(base / s) for s in ("train", "val") if not (base / s).is_dir()]
    if missing:
        raise DataUnavailable(f"dataset '{name}' not found (no {' or '.join(missing)}); {hint}")
    classes = sorted(e.name for e in os.scandir(base / "train") if e.is_dir() and not e.name.startswith("."))
    if len(classes) < 2:
        raise DataUnavailable(f"dataset '{name}': {base / 'train'} has {len(classes) or 'no'} class "
                              f"folder{'s' if len(classes) != 1 else ''}, it needs at least 2; {hint}")
    index = {c: i for i, c in enumerate(classes)}
    walked: set[str] = set()
    splits = (os.path.realpath(base / "train"), os.path.realpath(base / "val"))
    train = []
    for c in classes:
        files = _list_images(base / "train" / c, name, walked, splits)
        if not files:
            raise DataUnavailable(f"dataset '{name}': {base / 'train' / c} holds no images; "
                                  f"add some or remove the folder ({', '.join(IMAGE_EXTENSIONS)})")
        train += [(f, index[c]) for f in files]
    val = []
    for e in sorted(os.scandir(base / "val"), key=lambda e: e.name):
        if e.is_dir() and not e.name.startswith("."):
            if e.name not in index:
                raise DataUnavailable(f"dataset '{name}': {base / 'val' / e.name} is not a class of "
                                      f"{base / 'train'}; val/ must use train/'s class folder names")
            val += [(f, index[e.name]) for f in _list_images(base / "val" / e.name, name, walked, splits)]
    if not val:
        raise DataUnavailable(f"dataset '{name}': {base / 'val'} holds no images in class folders; {hint}")
    channels = 3
    if scan_modes:
        paths = [p for p, _ in train]
        if len(paths) > _MODE_SCAN_LIMIT:
            paths = [paths[i * len(paths) // _MODE_SCAN_LIMIT] for i in range(_MODE_SCAN_LIMIT)]
        channels = 1 if all(_image_mode(p, name) in _GRAY_MODES for p in paths) else 3
    return ImageTree(name, base, tuple(classes), tuple(train), tuple(val), channels)


def _folder_path(name: str) -> Path:
    path = name[len(FOLDER_PREFIX):]
    if not path:
        raise ConfigError(f"--dataset {FOLDER_PREFIX}PATH needs a path to an ImageFolder tree with train/ and val/")
    return Path(path).expanduser()


def _folder_tree(name: str) -> ImageTree:
    return _scan_tree(str(_folder_path(name).resolve()), name, True)


def _folder_val_cap(n_train: int) -> int:
    """A folder dataset's held-out split: at most a tenth of train/ (at least 1), and 5,000."""
    return max(1, min(5000, n_train // 10))


_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class _PixelModeRefused(ValueError):
    """An image that decodes but whose pixels have no faithful 8-bit reading: the message says why."""


def to_8bit(im, mode: str):
    """``im`` as an 8-bit PIL image of ``mode`` ('L' or 'RGB'), its values scaled, never clipped.

    16-bit integer pixels (I;16*, and I, which Pillow gives 16-bit PGM/PPM files) are read as
    0..65535 and divided by 257 (rounded), so 65535 -> 255; I pixels outside 0..65535 are
    refused.  Float (F) pixels are read as 0..1 and multiplied by 255; outside 0..1 (or not
    finite) they are refused.  Palette images with transparency go through RGBA; alpha is
    dropped (LA, RGBA, PA); CMYK, YCbCr, 1 and the rest of what Pillow converts are converted
    by Pillow.  A mode Pillow cannot convert (LAB, ...) is refused."""
    from PIL import Image

    if im.mode in _HIGH_DEPTH_MODES:
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise _PixelModeRefused(f"its {im.mode} pixels run from {a.min()} to {a.max()}, outside the 16-bit "
                                    f"range 0..65535")
        im = Image.fromarray(np.rint(a / 257.0).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im).astype(np.float64)
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
            raise _PixelModeRefused(f"its floating-point (F) pixels run from {np.nanmin(a):g} to "
                                    f"{np.nanmax(a):g}; repro reads float images only in 0..1")
        im = Image.fromarray(np.rint(a * 255.0).astype(np.uint8), "L")
    elif im.mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode == mode:
        return im
    try:
        return im.convert(mode)
    except ValueError as e:
        raise _PixelModeRefused(f"its pixel mode {im.mode} has no conversion to {mode} ({e})") from None


def _refused_mode(name: str, path: str, why: str) -> DataUnavailable:
    return DataUnavailable(f"dataset '{name}': {path} cannot be read as an 8-bit image ({why}); convert it "
                           f"to 8-bit RGB or grayscale, or remove it")


def _decode(path: str, mode: str, size: int, name: str) -> np.ndarray:
    """One image as ``size`` x ``size`` (x 3) uint8: shorter side resized to ``size`` (bilinear,
    antialiased), centre crop. JPEGs are decoded at a reduced scale when they are large.
    Other bit depths and modes are converted by :func:`to_8bit` (16-bit scaled, not clipped)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(mode, (size, size))
            im = to_8bit(im, mode)
            w, h = im.size
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)))
    except _PixelModeRefused as e:
        raise _refused_mode(name, path, str(e)) from None
    except Exception as e:  # unreadable, truncated
        raise _corrupt(name, Path(path), f"not a readable image: {type(e).__name__}",
                       "delete or replace it") from None


def _decode_many(paths: list[str], channels: int, size: int, name: str) -> torch.Tensor:
    """N x C x size x size uint8, decoded once (a few threads: PIL releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(paths), size, size, channels), np.uint8)

    def one(i: int) -> None:
        out[i] = _decode(paths[i], mode, size, name).reshape(size, size, channels)

    threads = max(1, min(8, torch.get_num_threads()))
    if threads == 1 or len(paths) < 64:
        for i in range(len(paths)):
            one(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(len(paths)), chunksize=64))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------- verifying a tree up front

# Bump when what verification checks changes: earlier verdicts then no longer count.
_VERIFY_VERSION = "1"
_VERIFY_CACHE_FILE = "verified-trees.json"
_VERIFY_CACHE_ENTRIES = 200  # the most recent verdicts kept
VERIFY_LOG_ABOVE = 2000  # trees of more images say so before they are verified (it takes a while)


def verify_cache_path() -> Path:
    """Where verified trees are remembered: ``$REPRO_CACHE_DIR``, else ``$XDG_CACHE_HOME/repro``,
    else ``~/.cache/repro``; the file is ``verified-trees.json`` (a few hundred bytes a tree)."""
    if os.environ.get("REPRO_CACHE_DIR"):
        base = Path(os.environ["REPRO_CACHE_DIR"])
    elif os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"]) / "repro"
    else:
        base = Path.home() / ".cache" / "repro"
    return base.expanduser() / _VERIFY_CACHE_FILE


def tree_digest(tree: ImageTree) -> str:
    """A content hash of a tree as a run would read it: every image's split, label, path relative
    to the tree, size and modification time (ns), and the channel count it is read with.  Any
    file added, removed, relabelled, rewritten or touched changes it."""
    import hashlib

    h = hashlib.sha256(f"repro-verify {_VERIFY_VERSION} channels={tree.channels}\n".encode())
    root = str(tree.root)
    for split, samples in (("train", tree.train), ("val", tree.val)):
        for path, y in samples:
            try:
                st = os.stat(path)
                stamp = f"{st.st_size} {st.st_mtime_ns}"
            except OSError as e:  # a broken link: the decode names it
                stamp = f"unreadable {e.errno}"
            h.update(f"{split}\0{y}\0{os.path.relpath(path, root)}\0{stamp}\n".encode())
    return h.hexdigest()


def _read_verify_cache(path: Path) -> dict:
    import json

    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}  # none yet, unreadable or garbage: verify again (and rewrite it)


def _remember_verified(path: Path, digest: str, entry: dict) -> None:
    """Add a verdict to the cache file (atomically); a cache that cannot be written is skipped."""
    import json
    import tempfile

    d = _read_verify_cache(path)
    d.pop(digest, None)
    d[digest] = entry
    d = dict(list(d.items())[-_VERIFY_CACHE_ENTRIES:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verified-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(d, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass


def _verify_image(path: str, mode: str, name: str) -> None:
    """Decode one image completely (a truncated body fails here, not only its header) and convert
    it to 8-bit ``mode``; raise the one-line error a run would raise.  JPEGs are decoded at a
    reduced scale (the whole stream is still read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(mode, (64, 64))
            im.load()
            to_8bit(im, mode)
    except _PixelModeRefused as e:
        raise _refused_mode(name, path, str(e)) from None
    except Exception as e:  # unreadable, truncated, not an image
        said = str(e).splitlines()[0] if str(e) and path not in str(e) else ""
        raise _corrupt(name, Path(path), f"not a readable image: {type(e).__name__}{': ' + said if said else ''}",
                       "delete or replace it") from None


def verify_tree(tree: ImageTree, log=None) -> bool:
    """Decode every image of ``tree`` (train/ and val/) once, before any run starts, so that a
    truncated, non-image or unconvertible file is named in one line now rather than mid-run.
    The verdict is cached under :func:`verify_cache_path`, keyed by :func:`tree_digest`: an
    unchanged tree is not decoded again.  Returns True when it decoded, False when the cache
    answered.  ``log`` (a callable) hears of trees above VERIFY_LOG_ABOVE images."""
    import time
    from concurrent.futures import ThreadPoolExecutor
    from datetime import datetime, timezone

    digest = tree_digest(tree)
    cache = verify_cache_path()
    if digest in _read_verify_cache(cache):
        return False
    paths = [p for p, _ in tree.train + tree.val]
    if log is not None and len(paths) > VERIFY_LOG_ABOVE:
        log(f"{tree.name}: verifying its {len(paths):,} images once (each is decoded; the verdict is "
            f"remembered in {cache})")
    mode = "L" if tree.channels == 1 else "RGB"
    t0 = time.time()
    errors: dict[int, Exception] = {}

    def one(i: int) -> None:
        if errors:  # one failure is enough: the others skip their work
            return
        try:
            _verify_image(paths[i], mode, tree.name)
        except DataUnavailable as e:
            errors[i] = e

    threads = max(1, min(8, torch.get_num_threads()))
    if threads == 1 or len(paths) < 64:
        for i in range(len(paths)):
            one(i)
            if errors:
                break
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(len(paths)), chunksize=64))
    if errors:
        raise errors[min(errors)]
    _remember_verified(cache, digest, {"root": str(tree.root), "dataset": tree.name, "images": len(paths),
                                       "seconds": round(time.time() - t0, 2),
                                       "verified": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return True


def check_tree(name: str, root: Path | None = None, log=None) -> ImageTree | None:
    """Pre-flight for a dataset read from an image tree (``folder:PATH``, ``imagenet``): its
    structure (at least 2 classes, no symlink loops or copies, images in every class) and every
    image decoded once (:func:`verify_tree`).  Returns the tree; None for other datasets."""
    if name.startswith(FOLDER_PREFIX):
        tree = _folder_tree(name)
    elif name == "imagenet":
        tree = _imagenet_tree(Path(root) if root else default_data_root())
    else:
        return None
    verify_tree(tree, log)
    return tree


def split_sizes(dataset: str, spec: DataSpec, root: Path | None = None) -> tuple[int | None, int]:
    """What a run of ``dataset`` read with ``spec`` trains on and holds out for validation:
    (training images, or None where unknown without reading the data; held-out images).  The
    held-out split is the scale's ``val_size``, except for datasets read as a folder
    (``folder:PATH``, ImageNet below 224 px), whose split is capped at a tenth of train/
    (:func:`_folder_val_cap`) and whose training images are what train/ has left, at most the limit."""
    image_size = getattr(spec, "image_size", None)
    limit = spec.train_limit or None
    if dataset.startswith(FOLDER_PREFIX):
        n_train = len(_folder_tree(dataset).train)
    elif dataset == "imagenet" and image_size and image_size != DATASETS["imagenet"].image_size:
        n_train = len(_imagenet_tree(Path(root) if root else default_data_root()).train)
    else:
        info = DATASETS.get(dataset)
        known = info.train_size if info and info.train_size else None
        held = int(spec.val_size)
        if known is None:
            return limit, held
        return (min(limit, known - held) if limit else known - held), held
    held = min(int(spec.val_size), _folder_val_cap(n_train))
    return (min(limit, n_train - held) if limit else n_train - held), held


def _mean_std(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std, in [0, 1] units, of N x C x H x W uint8 images (chunked, float64)."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    ss = torch.zeros_like(s)
    for i in range(0, x.shape[0], 1024):
        c = x[i:i + 1024].to(torch.float64)
        s += c.sum((0, 2, 3))
        ss += c.square().sum((0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (ss / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).clamp_min(1e-3).tolist())


class FolderImages(torch.utils.data.Dataset):
    """Images of an :class:`ImageTree` decoded one at a time (DataLoader workers): uint8 C x S x S."""

    def __init__(self, samples, channels: int, size: int, name: str):
        self.samples, self.channels, self.size, self.name = list(samples), channels, size, name
        self.targets = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, y = self.samples[i]
        a = _decode(path, "L" if self.channels == 1 else "RGB", self.size, self.name)
        return torch.from_numpy(a.reshape(self.size, self.size, self.channels).copy()).permute(2, 0, 1), y


def _evenly(n: int, k: int) -> torch.Tensor:
    """``k`` of ``n`` indices spread evenly (class-sorted folders keep every class)."""
    return torch.arange(k, dtype=torch.int64) * n // k


def load_arrays(name: str, root: Path | None = None, download: bool = True,
                image_size: int | None = None) -> Arrays:
    """A whole in-memory dataset; a folder dataset is decoded at ``image_size`` (default 32)."""
    root = Path(root) if root else default_data_root()
    if name.startswith(FOLDER_PREFIX):
        tree, info = _folder_tree(name), dataset_info(name, image_size)
        x = _decode_many([p for p, _ in tree.train + tree.val], tree.channels, info.image_size, name)
        y = torch.tensor([c for _, c in tree.train + tree.val], dtype=torch.int64)
        n = len(tree.train)
        return Arrays(x[:n], y[:n], x[n:], y[n:])
    dataset_info(name, image_size)  # fixed-size datasets refuse another size
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, root, download)
    if name == "fashion-mnist":
        return _load_fashion_mnist(root, download)
    if name == "synthetic":
        return _load_synthetic()
    raise ConfigError(f"dataset '{name}' is not held in memory")


def _unavailable(name: str, looked: list[Path], how: str) -> DataUnavailable:
    where = ", ".join(str(p) for p in looked)
    return DataUnavailable(f"dataset '{name}' not found (looked in {where}); {how}")


# --------------------------------------------------------------------------- split


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded permutation of the training set: the last ``val_size`` indices are validation."""
    if not 0 < val_size < n:
        raise ConfigError(f"validation size {val_size} must be between 1 and {n - 1} (the training set has {n})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:-val_size].clone(), perm[-val_size:].clone()


# --------------------------------------------------------------------------- augmentation


def _offsets(n: int, pad: int, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(device)
    return oy, ox


def _flips(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device).to(device) < 0.5


def _window(x: torch.Tensor, pad: int, oy: torch.Tensor, ox: torch.Tensor,
            flip: torch.Tensor | None) -> torch.Tensor:
    """The H x W window at (oy, ox) of every zero-padded image, mirrored where ``flip``:
    one gather with a flat per-image index over the padded plane (works on uint8)."""
    n, c, h, w = x.shape
    wp = w + 2 * pad
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    cols = torch.arange(w, device=x.device)
    cols = ox[:, None] + (torch.where(flip[:, None], w - 1 - cols, cols) if flip is not None else cols)
    rows = (oy[:, None] + torch.arange(h, device=x.device)) * wp
    idx = (rows[:, :, None] + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return xp.reshape(n, c, -1).gather(2, idx).view(n, c, h, w)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad each side by ``pad`` and crop back at a random offset per image, batched."""
    oy, ox = _offsets(x.shape[0], pad, gen, x.device)
    return _window(x, pad, oy, ox, None)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = _flips(x.shape[0], gen, x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """``random_flip(random_crop(x, pad, gen), gen)`` as one gather (instead of two gathers
    and a select): the same random draws in the same order, so the same images."""
    oy, ox = _offsets(x.shape[0], pad, gen, x.device)
    return _window(x, pad, oy, ox, _flips(x.shape[0], gen, x.device))


def random_rotate(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    angle = (torch.rand(x.shape[0], generator=gen, device=gen.device).to(x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


AUGMENTS = ("none", "crop_flip", "crop_flip_rotate")


def augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return x
    if kind not in AUGMENTS:
        raise ConfigError(f"unknown augmentation '{kind}'; choose one of: {', '.join(AUGMENTS)}")
    if kind == "crop_flip_rotate":
        x = random_rotate(x, 15.0, gen)
    return random_crop_flip(x, 4, gen)


# --------------------------------------------------------------------------- batches


def shard_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """A training epoch's order of ``n`` samples: a permutation seeded by (seed, epoch), the same on
    every rank, of which each rank takes every ``world``-th index (a disjoint shard, all of equal
    length: the last ``n mod world`` of the permutation are left out)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    per_rank = n // world
    return perm[: per_rank * world][rank :: world]


class TensorBatches:
    """Mini-batches of an in-memory uint8 dataset, augmented and normalised on its device.

    Training order is a seeded permutation per epoch, identical on every rank; under
    DDP each rank takes every ``world``-th index of it (a disjoint shard) and a
    ``batch_size // world`` slice per step, so the global batch is unchanged.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, info: DatasetInfo,
                 train: bool = False, augment: str = "none", seed: int = 0, rank: int = 0,
                 world: int = 1, drop_last: bool = False, channels_last: bool = False):
        self.x, self.y = x, y
        self.train, self.aug, self.seed = train, augment, seed
        self.rank, self.world = rank, world
        self.batch_size = batch_size // world if train else batch_size
        if self.batch_size < 1:
            raise ConfigError(f"batch size {batch_size} is smaller than the number of processes {world}")
        self.drop_last = drop_last
        self.channels_last = channels_last
        dev = x.device
        self.mean = torch.tensor(info.mean, device=dev).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(info.std, device=dev).view(1, -1, 1, 1) * 255
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = self.x.shape[0]
        if not self.train:
            return torch.arange(n)
        return shard_order(n, self.seed, self.epoch, self.rank, self.world)

    def __len__(self) -> int:
        n = self.x.shape[0] // self.world if self.train else self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return self.x.shape[0]

    # Training batches are prepared this many images at a time (several batches per call):
    # the dozen tensor ops of selection, augmentation and normalisation then cost their fixed
    # overhead once per chunk rather than once per batch.
    CHUNK_IMAGES = 512

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order().to(self.x.device)
        gen = torch.Generator(device=self.x.device)
        gen.manual_seed(self.seed * 7_919 + self.epoch * 104_729 + self.rank)
        bs, nb = self.batch_size, len(self)
        per = max(1, self.CHUNK_IMAGES // bs) if self.train else 1
        for c0 in range(0, nb, per):
            c1 = min(nb, c0 + per)
            idx = order[c0 * bs:c1 * bs]
            xc, yc = self._prepare(idx, gen), self.y.index_select(0, idx)
            for j in range(c1 - c0):
                yield xc[j * bs:(j + 1) * bs], yc[j * bs:(j + 1) * bs]

    def _prepare(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Images ``idx``: selected, augmented (training), normalised, as float32."""
        xb = self.x.index_select(0, idx)
        if self.train and self.aug == "crop_flip":
            xb = augment(xb, self.aug, gen)  # exact copies: cheaper on the uint8 images
        xb = xb.float()
        if self.train and self.aug not in ("crop_flip", "none"):
            xb = augment(xb, self.aug, gen)
        xb = xb.sub_(self.mean).div_(self.std)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb


class FeatureBatches:
    """Shuffled mini-batches of stored tensors (pooled features, per-exit logits) with their labels:
    TensorBatches' training interface and order (:func:`shard_order`) without images, for heads or
    thresholds trained on what a frozen network computed once.  A batch is (list of tensors, labels)."""

    def __init__(self, feats: list[torch.Tensor], y: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        e = D.env()
        self.feats, self.y, self.seed = feats, y, seed
        self.rank, self.world = e.rank, e.world
        self.batch_size = max(1, batch_size // self.world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        return self.y.shape[0]

    def __len__(self) -> int:
        return math.ceil((self.num_samples // self.world) / self.batch_size)

    def __iter__(self):
        order = shard_order(self.num_samples, self.seed, self.epoch, self.rank, self.world).to(self.y.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield [f.index_select(0, idx) for f in self.feats], self.y.index_select(0, idx)


class LoaderBatches:
    """A DataLoader behind the same interface as TensorBatches.

    With ``info`` the dataset yields uint8 images, and each batch is augmented (training) and
    normalised on the device as TensorBatches does it; without, the dataset's transforms do it
    (ImageNet at 224).
    """

    def __init__(self, dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                 world: int = 1, workers: int = 8, device: str | torch.device = "cpu", drop_last: bool = False,
                 info: DatasetInfo | None = None, augment: str = "none", channels_last: bool = False):
        from torch.utils.data import DataLoader, DistributedSampler

        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=train,
                                          seed=seed, drop_last=train) if (train or world > 1) else None
        self.loader = DataLoader(dataset, batch_size=batch_size // world if train else batch_size,
                                 sampler=self.sampler, shuffle=False, num_workers=workers,
                                 pin_memory=torch.device(device).type == "cuda", drop_last=drop_last,
                                 persistent_workers=workers > 0)
        self.device = torch.device(device)
        self.train, self.aug, self.seed, self.rank = train, augment, seed, rank
        self.channels_last = channels_last
        self.mean = self.std = None
        if info is not None:
            self.mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1) * 255
            self.std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1) * 255
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)

    def __iter__(self):
        gen = None
        if self.mean is not None and self.train and self.aug != "none":
            gen = torch.Generator(device=self.device)
            gen.manual_seed(self.seed * 7_919 + self.epoch * 104_729 + self.rank)
        for x, y in self.loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.mean is not None:
                x = self._prepare(x, gen)
            yield x, y

    def _prepare(self, xb: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if gen is not None and self.aug == "crop_flip":
            xb = augment(xb, self.aug, gen)
        xb = xb.float()
        if gen is not None and self.aug != "crop_flip":
            xb = augment(xb, self.aug, gen)
        xb = xb.sub_(self.mean).div_(self.std)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb


@dataclass
class Data:
    info: DatasetInfo
    train: TensorBatches | LoaderBatches
    val: TensorBatches | LoaderBatches
    test: TensorBatches | LoaderBatches
    val_labels: torch.Tensor
    test_labels: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor


class _ImageList(torch.utils.data.Dataset):
    """ImageFolder's reading (PIL, RGB, a transform) over an :class:`ImageTree`'s samples, so
    that val/ is labelled with train/'s classes even when it lacks some."""

    def __init__(self, samples, transform):
        self.samples, self.transform = list(samples), transform
        self.targets = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, y = self.samples[i]
        with Image.open(path) as im:
            return self.transform(to_8bit(im, "RGB")), y


def _imagenet_tree(root: Path) -> ImageTree:
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise _unavailable("imagenet", [root / "train", root / "val"],
                           "pass --data-root pointing at an ImageFolder tree with train/ and val/")
    return _scan_tree(str(root.resolve()), "imagenet", False)


def _imagenet_datasets(root: Path):
    from torchvision import transforms

    info = DATASETS["imagenet"]
    tree = _imagenet_tree(root)
    norm = transforms.Normalize(info.mean, info.std)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    test_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])
    return _ImageList(tree.train, train_tf), _ImageList(tree.train, test_tf), _ImageList(tree.val, test_tf)


def _load_folder(tree: ImageTree, info: DatasetInfo, spec: DataSpec, *, batch_size: int, device, seed: int,
                 rank: int, world: int, eval_batch_size: int, drop_last: bool, channels_last: bool,
                 workers: int, fixed_stats: bool) -> Data:
    """A folder dataset (or ImageNet below 224 px) at ``info.image_size``: decoded once into
    memory when the images the run uses fit in IN_MEMORY_LIMIT_BYTES, else read by a DataLoader.
    Mean and std come from the training split (all of it in memory, else 2,000 images of it)
    unless ``fixed_stats`` (ImageNet keeps its usual ones)."""
    n_train = len(tree.train)
    if n_train < 2:
        raise DataUnavailable(f"dataset '{tree.name}': {tree.root / 'train'} holds {n_train} image; it needs at least 2")
    train_idx, val_idx = split_indices(n_train, min(spec.val_size, _folder_val_cap(n_train)), spec.split_seed)
    if spec.train_limit:
        train_idx = train_idx[: spec.train_limit]
    test_n = min(len(tree.val), spec.test_limit or len(tree.val))
    test_idx = _evenly(len(tree.val), test_n)
    size, ch = info.image_size, info.in_channels
    train_y_all = torch.tensor([y for _, y in tree.train], dtype=torch.int64)
    val_y_all = torch.tensor([y for _, y in tree.val], dtype=torch.int64)
    n_used = len(train_idx) + len(val_idx) + test_n
    in_memory = n_used * ch * size * size <= IN_MEMORY_LIMIT_BYTES
    dev = torch.device(device)
    if in_memory:
        paths = ([tree.train[i][0] for i in torch.cat([train_idx, val_idx]).tolist()]
                 + [tree.val[i][0] for i in test_idx.tolist()])
        x = _decode_many(paths, ch, size, tree.name)
        tx, vx, sx = x[:len(train_idx)], x[len(train_idx):len(train_idx) + len(val_idx)], x[-test_n:]
        if not fixed_stats:
            mean, std = _mean_std(tx)
            info = replace(info, mean=mean, std=std)
    elif not fixed_stats:
        sample = train_idx[_evenly(len(train_idx), min(2000, len(train_idx)))]
        mean, std = _mean_std(_decode_many([tree.train[i][0] for i in sample.tolist()], ch, size, tree.name))
        info = replace(info, mean=mean, std=std)
    info = replace(info, in_memory=in_memory)
    vy, sy = train_y_all[val_idx], val_y_all[test_idx]
    common = dict(info=info, channels_last=channels_last)
    if in_memory:
        put = lambda t: t.to(dev)  # noqa: E731
        train = TensorBatches(put(tx), put(train_y_all[train_idx]), batch_size, train=True, augment=spec.augment,
                              seed=seed, rank=rank, world=world, drop_last=drop_last, **common)
        val = TensorBatches(put(vx), put(vy), eval_batch_size, **common)
        test = TensorBatches(put(sx), put(sy), eval_batch_size, **common)
    else:
        from torch.utils.data import Subset

        train_ds = FolderImages(tree.train, ch, size, tree.name)
        test_ds = FolderImages(tree.val, ch, size, tree.name)
        mk = lambda ds, train: LoaderBatches(ds, batch_size if train else eval_batch_size, train=train,  # noqa: E731
                                             seed=seed, rank=rank, world=world, device=dev, workers=workers,
                                             drop_last=drop_last and train, augment=spec.augment if train else "none",
                                             **common)
        train = mk(Subset(train_ds, train_idx.tolist()), True)
        val = mk(Subset(train_ds, val_idx.tolist()), False)
        test = mk(Subset(test_ds, test_idx.tolist()), False)
    return Data(info, train, val, test, vy, sy, train_idx, val_idx)


def load_data(dataset: str, spec: DataSpec, *, batch_size: int, root: Path | None = None,
              device: str | torch.device = "cpu", seed: int = 0, rank: int = 0, world: int = 1,
              eval_batch_size: int = 500, drop_last: bool = False, channels_last: bool = False,
              workers: int = 8) -> Data:
    """Everything a run needs: training batches, and validation/test batches without augmentation.

    ``spec.image_size`` (when DataSpec has it; None: the dataset's own size) sets the size a
    folder dataset is resized to (default 32); ImageNet below 224 is read as a folder dataset.
    """
    image_size = getattr(spec, "image_size", None)
    info = dataset_info(dataset, image_size)
    root = Path(root) if root else default_data_root()
    folder_kw = dict(batch_size=batch_size, device=device, seed=seed, rank=rank, world=world,
                     eval_batch_size=eval_batch_size, drop_last=drop_last, channels_last=channels_last,
                     workers=workers)
    if dataset.startswith(FOLDER_PREFIX):
        return _load_folder(_folder_tree(dataset), info, spec, fixed_stats=False, **folder_kw)
    if dataset == "imagenet" and info.image_size != DATASETS["imagenet"].image_size:
        tree = _imagenet_tree(root)
        info = replace(info, num_classes=len(tree.classes))
        return _load_folder(tree, info, spec, fixed_stats=True, **folder_kw)
    if not info.in_memory:
        train_ds, val_view, test_ds = _imagenet_datasets(root)
        train_idx, val_idx = split_indices(len(train_ds), spec.val_size, spec.split_seed)
        if spec.train_limit:
            train_idx = train_idx[: spec.train_limit]
        from torch.utils.data import Subset

        test_sub = Subset(test_ds, range(min(len(test_ds), spec.test_limit or len(test_ds))))
        labels = torch.tensor(train_ds.targets)
        mk = lambda ds, train: LoaderBatches(ds, batch_size if train else eval_batch_size, train=train,  # noqa: E731
                                             seed=seed, rank=rank, world=world, device=device,
                                             workers=workers, drop_last=drop_last and train)
        return Data(info, mk(Subset(train_ds, train_idx.tolist()), True),
                    mk(Subset(val_view, val_idx.tolist()), False), mk(test_sub, False),
                    labels[val_idx], torch.tensor([test_ds.targets[i] for i in test_sub.indices]),
                    train_idx, val_idx)

    arrays = load_arrays(dataset, root)
    train_idx, val_idx = split_indices(arrays.train_x.shape[0], spec.val_size, spec.split_seed)
    if spec.train_limit:
        train_idx = train_idx[: spec.train_limit]
    test_n = min(arrays.test_x.shape[0], spec.test_limit or arrays.test_x.shape[0])
    dev = torch.device(device)
    put = lambda t: t.to(dev)  # noqa: E731
    common = dict(info=info, channels_last=channels_last)
    train = TensorBatches(put(arrays.train_x[train_idx]), put(arrays.train_y[train_idx]), batch_size,
                          train=True, augment=spec.augment, seed=seed, rank=rank, world=world,
                          drop_last=drop_last, **common)
    val = TensorBatches(put(arrays.train_x[val_idx]), put(arrays.train_y[val_idx]), eval_batch_size, **common)
    test = TensorBatches(put(arrays.test_x[:test_n]), put(arrays.test_y[:test_n]), eval_batch_size, **common)
    return Data(info, train, val, test, arrays.train_y[val_idx], arrays.test_y[:test_n], train_idx, val_idx)


def first_test_images(cfg, n: int, device, root: Path | None = None, workers: int = 0) -> torch.Tensor:
    """The first ``n`` test images of a run's dataset (``cfg``: its :class:`~repro.config.RunConfig`),
    normalised as the run saw them, on ``device``: the input of the timing measurements."""
    data = load_data(cfg.dataset, cfg.data, batch_size=cfg.train.batch_size, root=root, device=str(device),
                     seed=cfg.seed, workers=workers)
    chunks, got = [], 0
    for x, _ in data.test:
        chunks.append(x)
        got += x.shape[0]
        if got >= n:
            break
    return torch.cat(chunks)[:n]
