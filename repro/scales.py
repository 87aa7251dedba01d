"""Scales: how much data, model and schedule a request gets.

- smoke: a few hundred real images, one epoch, narrow models: a pipeline check (CI);
- quick: real data (Fashion-MNIST by default), reduced models and a few epochs, on a CPU;
- paper: the paper's datasets, architectures and full schedules, meant for GPUs.

A scale fixes the data side here (split sizes, input size: 32 px at smoke and quick, the
paper's at paper scale); each paper module picks its models and schedules per scale, and
builds its runs' DataSpec with :func:`run_data`.  README.md lists the scales and their costs.
"""
from __future__ import annotations

from dataclasses import dataclass

from repro.config import ConfigError, DataSpec


@dataclass(frozen=True)
class Scale:
    name: str
    dataset: str | None   # None: the paper's own dataset
    data: DataSpec | None  # None: the paper's own split sizes
    description: str


SCALES: dict[str, Scale] = {
    "smoke": Scale("smoke", "fashion-mnist", DataSpec(train_limit=512, val_size=256, test_limit=512),
                   "512 training images, 1 epoch, narrow models (CI; < 60 s per artifact on 2 CPU cores)"),
    "quick": Scale("quick", "fashion-mnist", DataSpec(val_size=5000),
                   "Fashion-MNIST (55k train / 5k held-out val / 10k test), small models, a few epochs"),
    "paper": Scale("paper", None, None, "the paper's dataset, architecture and full schedule (GPU)"),
}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise ConfigError(f"unknown scale '{name}'; choose one of: {', '.join(SCALES)}")
    return SCALES[name]
