"""The contract between the core and a paper module: what a paper imports, and nothing else.

- :class:`Request`: what changes numbers (scale, seeds, overrides, ``--set``);
- :class:`Settings`: where and how runs execute (none of it enters a run's hash);
- :class:`RunContext`: what a paper's trainer gets (its config and folder, data, the
  training engine, where to save its outputs);
- :class:`Runs`: what an artifact's build gets, its finished runs by the names its
  ``runs(request)`` gave them (every seed of each);
- the output types a build returns (:class:`~repro.render.Table`, :class:`~repro.render.Figure`,
  :class:`~repro.render.Claim`, :class:`~repro.render.Series`), which the core writes;
- the paper's declarations (:class:`~repro.artifacts.Paper`, :class:`~repro.artifacts.Artifact`,
  :class:`~repro.artifacts.Option`, :class:`~repro.artifacts.Options`: its ``--set`` keys, read back
  typed with ``OPTIONS.read(request).<key>``) and configs (:class:`~repro.config.RunConfig`,
  :class:`~repro.config.TrainSpec`, :class:`~repro.config.DataSpec`);
- the vocabulary every trainer and build repeats: :func:`build_model` (a run's untrained model),
  :func:`~repro.train.ce_step` (the cross-entropy training step), :func:`model_name` /
  :func:`model_names` (the model line of an artifact's header).

A paper module imports this module (and models, losses, evaluation helpers), never the
runner.  docs/adding-a-paper.md walks through an example.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from repro import distributed as D
from repro.artifacts import Artifact, Option, Options, OptionValues, Paper, parse_bool  # noqa: F401  (re-exported)
from repro.config import ConfigError, DataSpec, RunConfig, TrainSpec, check_positive, override  # noqa: F401
from repro.data import Data, first_test_images as _first_images, load_data
from repro.render import Claim, Figure, Series, Table  # noqa: F401  (re-exported)
from repro.scales import Scale, get_scale
from repro.store import CheckpointError, CorruptRun, Run, atomic_torch_save, load_checkpoint
from repro.train import ce_step  # noqa: F401  (re-exported)

__all__ = ["Artifact", "Claim", "ConfigError", "DataSpec", "Figure", "Option", "OptionValues", "Options", "Paper",
           "Request", "RunConfig", "RunContext", "RunResult", "Runs", "Series", "Settings", "Table", "TrainSpec",
           "build_model", "ce_step", "first_test_images", "model_name", "model_names"]


@dataclass(frozen=True)
class Request:
    """What the user asked for: the scale, seeds and overrides that change numbers."""
    scale: str = "quick"
    seeds: int = 1
    dataset: str | None = None
    epochs: int | None = None
    train_limit: int | None = None
    batch_size: int | None = None
    lr_scale: float | None = None  # multiplies every run's learning rate
    # Paper-specific options from `--set KEY=VALUE` (e.g. dgate's hinge variant), as given; each paper
    # declares the keys it takes as Options and reads them typed with OPTIONS.read(request).
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        get_scale(self.scale)
        from repro.bounds import check_int

        for name in ("seeds", "epochs", "train_limit", "batch_size"):  # the per-dataset bound of
            check_int(name, getattr(self, name))  # --train-limit is checked on the planned runs
        if self.lr_scale is not None and not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise ConfigError(f"--lr-scale must be a positive number, got {self.lr_scale}")
        if self.dataset is not None:
            from repro.data import FOLDER_PREFIX, _folder_path, dataset_info

            if self.dataset.startswith(FOLDER_PREFIX):  # absolute: run hashes must not depend on the cwd
                object.__setattr__(self, "dataset", f"{FOLDER_PREFIX}{_folder_path(self.dataset).resolve()}")
            data = self.scale_preset.data
            dataset_info(self.dataset, data.image_size if data is not None else None)  # paper scale: per artifact

    @property
    def scale_preset(self) -> Scale:
        return get_scale(self.scale)

    def overrides(self) -> list[str]:
        """The command-line settings that change numbers, as ``--flag value`` words (empty: none)."""
        out = [f"--{k.replace('_', '-')} {v}" for k in ("dataset", "epochs", "train_limit", "batch_size", "lr_scale")
               if (v := getattr(self, k)) is not None]
        return out + [f"--set {k}={v}" for k, v in self.options]

    def dataset_for(self, paper_default: str) -> str:
        """The dataset a run uses: --dataset, else the scale's, else the paper's."""
        return self.dataset or self.scale_preset.dataset or paper_default


@dataclass
class Settings:
    """Where and how runs execute; none of this changes a run's identity (hash)."""
    runs_dir: Path = Path("runs")
    out_dir: Path = Path(".")
    data_root: Path | None = None
    device: str = "auto"
    amp: bool = True
    channels_last: bool = False
    compile: bool = False  # torch.compile the model for its training steps (repro.train.compiled)
    sync_bn: bool = False
    force: bool = False
    workers: int = 8
    log: Callable[[str], None] = print
    forced: set = field(default_factory=set)
    scale: str = ""  # set by run_artifact: outputs are laid out by scale
    # this command's id, written to the meta.json of every run it trains (its jobs' too): the
    # summary tells runs it trained from runs another process trained while it waited
    invocation: str = ""
    # the command's "run k of N" over all its artifacts (repro.runner.JobProgress); None: per artifact
    progress: object = None

    @property
    def tables_dir(self) -> Path:
        """``<out-dir>/tables/<scale>``: smoke outputs never land beside committed quick ones."""
        return Path(self.out_dir) / "tables" / self.scale

    @property
    def figures_dir(self) -> Path:
        return Path(self.out_dir) / "figures" / self.scale



def resolve(cfg: RunConfig, request: Request) -> list[RunConfig]:
    """A paper's run config with the request's overrides, once per seed."""
    cfg = override(cfg, dataset=request.dataset, epochs=request.epochs, train_limit=request.train_limit,
                   batch_size=request.batch_size, lr_scale=request.lr_scale)
    return [cfg.with_seed(s) for s in range(request.seeds)]



class RunResult:
    def __init__(self, run: Run):
        self.run, self.cfg = run, run.cfg
        self._results: dict | None = None
        self._outputs: dict | None = None

    @property
    def results(self) -> dict:
        if self._results is None:
            self._results = self.run.results()
        return self._results

    @property
    def outputs(self) -> dict:
        if self._outputs is None:
            self._outputs = self.run.outputs()
        return self._outputs

    def metrics(self):
        return self.run.metrics()

    def load_into(self, module: nn.Module, name: str = "model", map_location="cpu") -> nn.Module:
        """The run's ``<name>.pt`` (``model.pt``: its final weights) loaded into ``module``; a file
        that does not fit it is named with the way forward (``rm -r`` the run's folder)."""
        return self.run.load_into(module, name, map_location)


class Runs(Mapping):
    """The finished runs of an artifact, by the names its ``runs(request)`` gave them: ``runs[name]``
    is one :class:`RunResult` per seed (seed 0 first); ``runs.config(name)`` is the paper's
    (seed-0, un-overridden) config of that name.  ``runs[cfg]`` looks a config up directly, for a
    build that derives one from another (a parent's run)."""

    def __init__(self, request: Request, settings: Settings, named: Mapping[str, RunConfig] | None = None):
        self.request, self.settings = request, settings
        self._named = dict(named or {})
        self._fixed: dict | None = None

    @classmethod
    def fixed(cls, results: Mapping[str, list], named: Mapping[str, RunConfig] | None = None,
              request: Request | None = None, settings: Settings | None = None) -> Runs:
        """Runs given directly, {name: one result-like per seed} (tests build an artifact from
        synthetic outputs with it); ``named`` optionally gives their configs."""
        out = cls(request or Request(), settings or Settings(), named or {})
        out._fixed = dict(results)
        for name in results:
            out._named.setdefault(name, None)
        return out

    def config(self, name: str) -> RunConfig:
        if name not in self._named:
            raise KeyError(f"no run named {name!r}; this artifact's runs are: {', '.join(self._named)}")
        return self._named[name]

    def __getitem__(self, key: str | RunConfig) -> list[RunResult]:
        if self._fixed is not None:
            if isinstance(key, RunConfig):
                key = next((n for n, c in self._named.items() if c is not None and c.key == key.key), key.key)
            if key not in self._fixed:
                raise KeyError(f"no run named {key!r}; given: {', '.join(self._fixed)}")
            return self._fixed[key]
        cfg = key if isinstance(key, RunConfig) else self.config(key)
        runs = [Run(self.settings.runs_dir, c) for c in resolve(cfg, self.request)]
        missing = [r.dir for r in runs if not r.done]
        if missing:
            raise ConfigError(f"run {missing[0]} has no results yet; run the artifact without --no-wait first")
        return [RunResult(r) for r in runs]

    def __iter__(self) -> Iterator[str]:
        return iter(self._named)

    def __len__(self) -> int:
        return len(self._named)


# --------------------------------------------------------------------------- training one run


@lru_cache(maxsize=4)
def _cached_data(dataset: str, spec, batch_size: int, root, device: str, seed: int, rank: int, world: int,
                 drop_last: bool, channels_last: bool, workers: int) -> Data:
    return load_data(dataset, spec, batch_size=batch_size, root=root, device=device, seed=seed, rank=rank,
                     world=world, drop_last=drop_last, channels_last=channels_last, workers=workers)


class RunContext:
    """What a paper's trainer gets: its config, its folder, data, and the training engine."""

    def __init__(self, cfg: RunConfig, run: Run, settings: Settings):
        self.cfg, self.run, self.settings = cfg, run, settings
        self.device = D.resolve_device(settings.device)
        self.log = settings.log

    # data
    def data(self, batch_size: int | None = None) -> Data:
        e = D.env()
        D.per_rank_batch(batch_size or self.cfg.train.batch_size)  # the global batch must split evenly
        return _cached_data(self.cfg.dataset, self.cfg.data, batch_size or self.cfg.train.batch_size,
                            self.settings.data_root, str(self.device), self.cfg.seed, e.rank, e.world,
                            self.cfg.train.drop_last, self.channels_last, self.settings.workers)

    @property
    def channels_last(self) -> bool:
        """The run trains in channels_last: its TrainSpec says so (part of its identity), or
        ``--channels-last`` on CUDA."""
        return (self.cfg.train.memory_format == "channels_last"
                or (self.settings.channels_last and self.device.type == "cuda"))

    def to_device(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # training
    def fit(self, model: nn.Module, step, phase: str, spec: TrainSpec | None = None,
            params: Sequence[nn.Parameter] | None = None, eval_fn=None, stateful: Sequence[nn.Module] = (),
            batches=None) -> list[dict]:
        from repro.train import fit

        spec = spec or self.cfg.train
        wrapped = D.wrap_ddp(model, self.device, self.settings.sync_bn)
        return fit(wrapped, step, batches if batches is not None else self.data().train, spec,
                   ckpt_path=self.run.ckpt_path(phase), phase=phase, device=self.device, seed=self.cfg.seed,
                   params=params, metrics_path=self.run.metrics_path, amp=self.settings.amp,
                   stateful=stateful, eval_fn=eval_fn, log=self.log, compile=self.settings.compile)

    # files
    def save_model(self, model: nn.Module, name: str = "model") -> None:
        if D.env().is_main:
            atomic_torch_save(D.unwrap(model).state_dict(), self.run.dir / f"{name}.pt")

    def parent_state(self, name: str = "model") -> dict:
        if self.cfg.parent is None:
            raise ConfigError(f"run {self.cfg.name} has no parent run")
        parent = Run(self.settings.runs_dir, self.cfg.parent)
        path = parent.dir / f"{name}.pt"
        if not path.exists():
            raise CorruptRun(parent, path, "missing")
        try:
            return load_checkpoint(path, map_location=self.device)
        except CheckpointError as e:
            raise CorruptRun(parent, path, e.why) from None

    def ancestor(self, cfg: RunConfig | None = None) -> RunResult:
        """A finished ancestor run of this one (default: the parent), with its ``results``,
        ``outputs`` and ``metrics()``; ``.run.dir`` is its folder."""
        cfg = self.cfg.parent if cfg is None else cfg
        if cfg is None or cfg.key not in {a.key for a in self.cfg.ancestors()}:
            raise ConfigError(f"run {self.cfg.name} has no such ancestor run")
        return RunResult(Run(self.settings.runs_dir, cfg))

    def save_outputs(self, **tensors: torch.Tensor) -> None:
        if D.env().is_main:
            atomic_torch_save({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()},
                              self.run.outputs_path)

    def collect_outputs(self, model: nn.Module, **extra) -> dict:
        """Per-exit logits on validation and test, saved once in outputs.pt."""
        from repro.exits import collect_logits
        from repro.train import tracked  # a bar over the batches, on a terminal

        data = self.data()
        bare = D.unwrap(model)
        out = {"val_logits": collect_logits(bare, tracked(data.val, "outputs: validation")),
               "val_labels": data.val_labels,
               "test_logits": collect_logits(bare, tracked(data.test, "outputs: test")),
               "test_labels": data.test_labels, **extra}
        self.save_outputs(**out)
        return out

    def collect_compact_outputs(self, model: nn.Module) -> dict:
        """Per exit, on validation and test, what :func:`repro.exits.collect_compact` keeps of the
        outputs (max output, max softmax, prediction), saved once in outputs.pt with the labels."""
        from repro.exits import collect_compact
        from repro.train import tracked

        data, bare, out = self.data(), D.unwrap(model), {}
        for split, batches, labels in (("val", data.val, data.val_labels), ("test", data.test, data.test_labels)):
            for k, v in collect_compact(bare, tracked(batches, f"outputs: {split}")).items():
                out[f"{split}_{k}"] = v
            out[f"{split}_labels"] = labels.cpu()
        self.save_outputs(**out)
        return out



def build_model(cfg: RunConfig, info, **extra) -> nn.Module:
    """The untrained model of a run: its registered ``model`` built with its ``model_args`` for the
    dataset ``info`` (classes, channels), plus ``extra`` factory arguments the paper derives."""
    from repro.models import create_model

    return create_model(cfg.model, num_classes=info.num_classes, in_channels=info.in_channels, **cfg.model_args,
                        **extra)


def model_name(cfg: RunConfig) -> str:
    """A run's model as an artifact's header names it: ``"<model> <model_args>"``."""
    return f"{cfg.model} {cfg.model_args or ''}".strip()


def model_names(cfgs: Sequence[RunConfig]) -> str:
    """The distinct :func:`model_name` of several runs, in order, joined by "; "."""
    return "; ".join(dict.fromkeys(model_name(c) for c in cfgs))


def first_test_images(cfg: RunConfig, settings: Settings, n: int, device: torch.device) -> torch.Tensor:
    """The first ``n`` test images of a run's dataset, normalised, on ``device`` (for timing)."""
    return _first_images(cfg, n, device, root=settings.data_root, workers=settings.workers)
