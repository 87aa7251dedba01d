"""Scales: how much data, model and schedule a request gets.

- smoke: a few hundred real images, one epoch, narrow models: a pipeline check (CI);
- quick: real data (Fashion-MNIST by default), reduced models and a few epochs, on a CPU;
- paper: the paper's datasets, architectures and full schedules, meant for GPUs.

A scale fixes the data side here (split sizes, input size: 32 px at smoke and quick, the
paper's at paper scale); each paper module picks its models and schedules per scale, and
builds its runs' DataSpec with :func:`run_data`.  README.md lists the scales and their costs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from repro.config import ConfigError, DataSpec

# The input size of the CPU scales: folder datasets and ImageNet are resized to it there.
SMALL_SIZE = 32
# The papers' input sizes at paper scale: their ImageNet artifacts and their CIFAR ones.
IMAGENET_SIZE, CIFAR_SIZE = 224, 32


@dataclass(frozen=True)
class Scale:
    name: str
    dataset: str | None   # None: the paper's own dataset
    data: DataSpec | None  # None: the paper's own split sizes, at the paper's input size
    description: str
    # the scale's protocols must pass the convergence test before a claim gets a verdict
    # (repro.convergence: a twin of each baseline trained for twice its epochs)
    converge: bool = False


SCALES: dict[str, Scale] = {
    "smoke": Scale("smoke", "fashion-mnist",
                   DataSpec(train_limit=512, val_size=256, test_limit=512, image_size=SMALL_SIZE),
                   "512 training images, 1 epoch, narrow models (CI; < 60 s per artifact on 2 CPU cores)"),
    "quick": Scale("quick", "fashion-mnist", DataSpec(val_size=5000, image_size=SMALL_SIZE),
                   "Fashion-MNIST (55k train / 5k held-out val / 10k test), small models trained until converged",
                   converge=True),
    "paper": Scale("paper", None, None, "the paper's dataset, architecture and full schedule (GPU)"),
}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise ConfigError(f"unknown scale '{name}'; choose one of: {', '.join(SCALES)}")
    return SCALES[name]


def input_size(request, dataset: str, paper_size: int) -> int:
    """The size a run's images are read at: the scale's (32 px at smoke and quick); at paper
    scale ``paper_size``, the paper's for the artifact (224 for its ImageNet artifacts, 32 for
    its CIFAR ones).  A dataset of one size (CIFAR, Fashion-MNIST) keeps its own at paper scale
    (``--scale paper --dataset cifar10`` on an ImageNet artifact); models that cannot take it
    are refused by their paper."""
    from repro.data import DATASETS, resizable

    scale = request.scale_preset
    if scale.data is not None and scale.data.image_size is not None:
        return scale.data.image_size
    if resizable(dataset) or dataset not in DATASETS:
        return paper_size
    return DATASETS[dataset].image_size


def run_data(request, dataset: str, paper_size: int, train_limits: dict[str, int] | None = None,
             **fields) -> DataSpec:
    """A run's DataSpec: the scale's split sizes (paper scale: the dataset's own held-out size)
    at :func:`input_size`; ``fields`` replace others (``augment``).  ``train_limits`` is a paper's
    calibrated training-set size per scale (docs/calibration.md: halved where an artifact was over
    its budget), for the scale's own dataset only (another dataset trains on all of it);
    ``--train-limit`` still overrides it.  Refuses in one line (ConfigError) a dataset
    that cannot be read at that size."""
    if train_limits and request.scale in train_limits and dataset == request.scale_preset.dataset:
        fields.setdefault("train_limit", train_limits[request.scale])  # calibrated on the scale's own dataset
    from repro.data import dataset_info

    size = input_size(request, dataset, paper_size)
    info = dataset_info(dataset, size)  # a fixed-size dataset at another size: one line
    scale = request.scale_preset
    base = scale.data if scale.data is not None else DataSpec(val_size=info.default_val_size)
    return replace(base, image_size=size, **fields)


def need_size(paper: str, model: str, spec: DataSpec, dataset: str, size: int) -> None:
    """Refuse (ConfigError, one line) a run whose ``model`` takes exactly ``size``-px images
    when its data is read at another size."""
    got = spec.image_size
    if got is not None and got != size:
        raise ConfigError(f"{paper}: {model} takes {size}x{size} images, but {dataset} is read at {got}x{got} "
                          f"here; choose a dataset read at {size}x{size} (imagenet and folder:PATH are resized "
                          f"to the scale's size: {SMALL_SIZE} at smoke and quick, the paper's at paper scale)")
