"""Datasets, the held-out validation split, and batches without per-image Python.

Small datasets (CIFAR, Fashion-MNIST) are loaded once with torchvision into
uint8 tensors, moved to the training device, and augmented there a whole batch
at a time (random crop with zero padding, horizontal flip, optional rotation).
ImageNet streams from an ImageFolder tree through a DataLoader.
"""
from __future__ import annotations

import gzip
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from repro.config import ConfigError, DataSpec

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataUnavailable(RuntimeError):
    """The dataset is neither on disk nor downloadable: the message says where we looked."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_memory: bool = True
    default_val_size: int = 5000


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # Fashion-MNIST is padded from 28x28 to 32x32 so that CIFAR architectures keep their spatial plan.
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 32, (0.2860,), (0.3530,)),
    "imagenet": DatasetInfo("imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                            in_memory=False, default_val_size=50000),
    # Random class-dependent images, for unit tests only.
    "synthetic": DatasetInfo("synthetic", 10, 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


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
            import pickle

            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                data = pickle.load(f, encoding="latin1")
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Checked


def _load_cifar(name: str, root: Path, download: bool) -> Arrays:
    cls = _cifar_class(name)
    try:
        train, test = cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except RuntimeError:
        if not download:
            raise _unavailable(name, [root / cls.base_folder], "torchvision downloads it into --data-root")
        try:
            train = cls(str(root), train=True, download=True)
            test = cls(str(root), train=False, download=True)
        except Exception as e:  # no network, disk full, ...
            raise _unavailable(name, [root / cls.base_folder],
                               f"download failed ({type(e).__name__}); copy the extracted "
                               f"'{cls.base_folder}' folder into --data-root") from None

    def to_tensor(ds):
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.int64)

    (a, b), (c, d) = to_tensor(train), to_tensor(test)
    return Arrays(a, b, c, d)


_FMNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _load_fashion_mnist(root: Path, download: bool) -> Arrays:
    from torchvision import datasets

    raw = root / "FashionMNIST" / "raw"
    if not all((raw / f).exists() for f in _FMNIST_FILES):
        # Debian's dataset-fashion-mnist package ships the four .gz files: unpack them into
        # torchvision's layout so that torchvision's own reader parses them.
        system = [FASHION_MNIST_SYSTEM_DIR / f"{f}.gz" for f in _FMNIST_FILES]
        if all(p.exists() for p in system):
            raw.mkdir(parents=True, exist_ok=True)
            for src, name in zip(system, _FMNIST_FILES):
                tmp = raw / f".{name}.tmp{os.getpid()}"
                with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                os.replace(tmp, raw / name)
    try:
        train = datasets.FashionMNIST(str(root), train=True, download=False)
        test = datasets.FashionMNIST(str(root), train=False, download=False)
    except RuntimeError:
        looked = [raw, FASHION_MNIST_SYSTEM_DIR]
        if not download:
            raise _unavailable("fashion-mnist", looked, "apt-get install dataset-fashion-mnist") from None
        try:
            train = datasets.FashionMNIST(str(root), train=True, download=True)
            test = datasets.FashionMNIST(str(root), train=False, download=True)
        except Exception as e:
            raise _unavailable("fashion-mnist", looked,
                               f"download failed ({type(e).__name__}); apt-get install dataset-fashion-mnist") from None

    def to_tensor(ds):
        x = F.pad(ds.data.unsqueeze(1), (2, 2, 2, 2))  # 28x28 -> 32x32, zero border
        return x.contiguous(), ds.targets.to(torch.int64)

    (a, b), (c, d) = to_tensor(train), to_tensor(test)
    return Arrays(a, b, c, d)


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


def _unavailable(name: str, looked: list[Path], how: str) -> DataUnavailable:
    where = ", ".join(str(p) for p in looked)
    return DataUnavailable(f"dataset '{name}' not found (looked in {where}); {how}")


def load_arrays(name: str, root: Path | None = None, download: bool = True) -> Arrays:
    root = Path(root) if root else default_data_root()
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, root, download)
    if name == "fashion-mnist":
        return _load_fashion_mnist(root, download)
    if name == "synthetic":
        return _load_synthetic()
    dataset_info(name)
    raise ConfigError(f"dataset '{name}' is not held in memory")


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
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        per_rank = n // self.world
        return perm[: per_rank * self.world][self.rank :: self.world]

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


class LoaderBatches:
    """A DataLoader (ImageNet) behind the same interface as TensorBatches."""

    def __init__(self, dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                 world: int = 1, workers: int = 8, device: str | torch.device = "cpu", drop_last: bool = False):
        from torch.utils.data import DataLoader, DistributedSampler

        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=train,
                                          seed=seed, drop_last=train) if (train or world > 1) else None
        self.loader = DataLoader(dataset, batch_size=batch_size // world if train else batch_size,
                                 sampler=self.sampler, shuffle=False, num_workers=workers,
                                 pin_memory=torch.device(device).type == "cuda", drop_last=drop_last,
                                 persistent_workers=workers > 0)
        self.device = torch.device(device)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


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


def _imagenet_datasets(root: Path):
    from torchvision import datasets, transforms

    info = DATASETS["imagenet"]
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise _unavailable("imagenet", [root / "train", root / "val"],
                           "pass --data-root pointing at an ImageFolder tree with train/ and val/")
    norm = transforms.Normalize(info.mean, info.std)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    test_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])
    return (datasets.ImageFolder(str(root / "train"), train_tf),
            datasets.ImageFolder(str(root / "train"), test_tf),
            datasets.ImageFolder(str(root / "val"), test_tf))


def load_data(dataset: str, spec: DataSpec, *, batch_size: int, root: Path | None = None,
              device: str | torch.device = "cpu", seed: int = 0, rank: int = 0, world: int = 1,
              eval_batch_size: int = 500, drop_last: bool = False, channels_last: bool = False,
              workers: int = 8) -> Data:
    """Everything a run needs: training batches, and validation/test batches without augmentation."""
    info = dataset_info(dataset)
    root = Path(root) if root else default_data_root()
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


