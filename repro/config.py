"""Run configs: one frozen, fully resolved record per training run.

A run is named by its paper, a short readable name, and a hash of everything that can
change its numbers: model and its arguments, dataset and :class:`DataSpec` (split sizes,
input size), method, :class:`TrainSpec` (epochs, batch, lr, schedule, optimiser), seed
and parent run.  Where it runs (device, number of processes, threads) is not part of the
hash.  :class:`ConfigError` is the one-line error every bad input becomes.  The run store
that keeps runs by this name is described in docs/run-store.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the problem and the valid choices."""


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "multistep"  # multistep | cosine | constant
    # Milestones as fractions of `epochs`, so that a schedule keeps its shape
    # when a scale shortens it: the paper's 150/225 of 300 epochs is (0.5, 0.75).
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    drop_last: bool = False
    # "sgd" (momentum, nesterov), "rmsprop" (torch.optim.RMSprop: smoothing rmsprop_alpha,
    # rmsprop_eps added outside the square root) or "rmsprop_tf" (TensorFlow's rule,
    # repro.train.RMSpropTF); momentum and weight_decay as for SGD
    optimizer: str = "sgd"
    rmsprop_alpha: float = 0.9
    rmsprop_eps: float = 1e-3
    # > 0: an exponential moving average of the weights (and BatchNorm statistics), updated
    # after every step, is what the run ends with (repro.train.fit)
    ema_decay: float = 0.0
    # "contiguous" (NCHW) or "channels_last" (NHWC): the layout the model and its batches train in.
    # On the CPU, oneDNN's convolutions run 1.2-2.3x faster in channels_last on the quick networks
    # (bench item 7), with other rounding: so it is part of the run's identity, not a setting.
    memory_format: str = "contiguous"

    def __post_init__(self):
        if self.memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"memory_format {self.memory_format!r}: choose one of: {', '.join(MEMORY_FORMATS)}")

    def milestone_epochs(self) -> list[int]:
        return [int(round(m * self.epochs)) for m in self.milestones]


# TrainSpec fields added after runs were first stored: left out of a run's hash while they
# hold these values, so that those runs keep their folders.
_HASH_OMITS_AT_DEFAULT = {"optimizer": "sgd", "rmsprop_alpha": 0.9, "rmsprop_eps": 1e-3, "ema_decay": 0.0,
                          "memory_format": "contiguous"}
MEMORY_FORMATS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class DataSpec:
    train_limit: int | None = None  # use only the first N images of the training split
    val_size: int = 5000            # held out from the training set (never the test set)
    test_limit: int | None = None
    augment: str = "crop_flip"      # none | crop_flip | crop_flip_rotate
    split_seed: int = 0             # the held-out split is the same for every training seed
    image_size: int | None = None   # folder datasets (and ImageNet below 224) are resized to it; None: 32 / ImageNet's 224


@dataclass(frozen=True)
class RunConfig:
    paper: str
    name: str
    kind: str                      # which of the paper's run functions trains it
    dataset: str
    model: str
    model_args: dict = field(default_factory=dict)
    method: dict = field(default_factory=dict)
    train: TrainSpec = TrainSpec()
    data: DataSpec = DataSpec()
    seed: int = 0
    parent: RunConfig | None = None  # a run this one starts from (e.g. IMTA phase I)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["parent"] = self.parent.to_dict() if self.parent else None
        return d

    def hashed_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the later-added TrainSpec fields that hold their defaults."""
        d = self.to_dict()
        for node in (d, *_parents(d)):
            if node["train"].get("optimizer", "sgd") == "sgd":  # the RMSProp settings do nothing then
                node["train"].pop("rmsprop_alpha", None)
                node["train"].pop("rmsprop_eps", None)
            for k, default in _HASH_OMITS_AT_DEFAULT.items():
                if k in node["train"] and node["train"][k] == default:
                    del node["train"][k]
            if "image_size" in node["data"] and node["data"]["image_size"] in (None, _own_size(node["dataset"])):
                del node["data"]["image_size"]  # added later; None or the dataset's fixed size: the same images
        return d

    @property
    def key(self) -> str:
        blob = json.dumps(self.hashed_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def dirname(self) -> str:
        return f"{self.name}-s{self.seed}-{self.key}"

    def with_seed(self, seed: int) -> RunConfig:
        parent = self.parent.with_seed(seed) if self.parent else None
        return replace(self, seed=seed, parent=parent)

    def ancestors(self) -> list[RunConfig]:
        out, p = [], self.parent
        while p is not None:
            out.append(p)
            p = p.parent
        return out


def _own_size(dataset: str) -> int | None:
    """The image size of a dataset that has its own (ImageNet: 224), else None (folder datasets)."""
    from repro.data import DATASETS  # repro.data imports this module

    info = DATASETS.get(dataset)
    return info.image_size if info is not None else None


def _parents(d: dict) -> list[dict]:
    out = []
    while d.get("parent"):
        d = d["parent"]
        out.append(d)
    return out


def override(cfg: RunConfig, *, dataset: str | None = None, epochs: int | None = None,
             train_limit: int | None = None, batch_size: int | None = None,
             lr_scale: float | None = None) -> RunConfig:
    """Apply command-line overrides to a run and, recursively, to the runs it starts from."""
    parent = override(cfg.parent, dataset=dataset, epochs=epochs, train_limit=train_limit,
                      batch_size=batch_size, lr_scale=lr_scale) if cfg.parent else None
    train, data = cfg.train, cfg.data
    if lr_scale is not None and lr_scale != 1:
        train = replace(train, lr=train.lr * lr_scale)
    if epochs is not None:
        train = replace(train, epochs=epochs)
    if batch_size is not None:
        train = replace(train, batch_size=batch_size)
    if train_limit is not None:
        data = replace(data, train_limit=train_limit)
    return replace(cfg, dataset=dataset or cfg.dataset, train=train, data=data, parent=parent)


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"--{name} must be a positive integer, got {value}")
