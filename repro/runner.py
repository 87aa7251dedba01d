"""From a request to finished runs: plan, lock, train (or reuse), and hand results to an artifact.

    request (scale, seeds, overrides) --artifact.runs--> run configs (seed 0)
      --resolve--> one config per seed, ancestors first --execute--> run folders
      --Results--> artifact.build --> tables/<scale>/ and figures/<scale>/

:class:`Request` is what changes numbers (scale, seeds, overrides, ``--set``);
:class:`Settings` is where and how runs execute (none of it enters a run's hash).  A
trainer gets a :class:`RunContext` (data, the training loop, outputs).  Before anything
trains, :func:`preflight` checks every input in one pass.  The runner seeds every
generator right before a trainer builds anything, so a run's numbers are a function of its
config (docs/run-store.md).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from repro import distributed as D
from repro.artifacts import Artifact, get_paper, trainer
from repro.config import ConfigError, RunConfig, TrainSpec, check_positive, override
from repro.data import Data, load_data
from repro.render import git_commit
from repro.scales import Scale, get_scale
from repro.store import LockUnsupported, Run, RunLocked, atomic_torch_save, load_checkpoint


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
    # Paper-specific options from `--set KEY=VALUE` (e.g. dgate's hinge variant); each paper
    # declares the keys it takes in Paper.options.
    options: tuple[tuple[str, str], ...] = ()

    def option(self, key: str, default=None, choices=None, type=str):
        """The value of ``--set key=...`` converted with ``type``, else ``default``."""
        raw = dict(self.options).get(key)
        if raw is None:
            return default
        try:
            from repro.artifacts import parse_bool

            value = parse_bool(raw) if type is bool else type(raw)
        except ValueError:
            raise ConfigError(f"--set {key}={raw}: expected a {type.__name__}") from None
        if choices is not None and value not in choices:
            raise ConfigError(f"--set {key}={raw}: choose one of: {', '.join(map(str, choices))}")
        return value

    def __post_init__(self):
        get_scale(self.scale)
        for name in ("seeds", "epochs", "train_limit", "batch_size"):
            check_positive(name.replace("_", "-"), getattr(self, name))
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


def plan(artifact: Artifact, request: Request) -> list[RunConfig]:
    """Every run an artifact needs, ancestors before descendants, each once."""
    out: dict[str, RunConfig] = {}
    for cfg in artifact.runs(request):
        for seeded in resolve(cfg, request):
            for c in [*reversed(seeded.ancestors()), seeded]:
                out.setdefault(c.key, c)
    return sorted(out.values(), key=lambda c: len(c.ancestors()))


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


class Results:
    """Finished runs of an artifact, looked up by the paper's (seed-0, un-overridden) config."""

    def __init__(self, request: Request, settings: Settings):
        self.request, self.settings = request, settings

    def __getitem__(self, cfg: RunConfig) -> list[RunResult]:
        runs = [Run(self.settings.runs_dir, c) for c in resolve(cfg, self.request)]
        missing = [r.dir for r in runs if not r.done]
        if missing:
            raise ConfigError(f"run {missing[0]} has no results yet; run the artifact without --no-wait first")
        return [RunResult(r) for r in runs]


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
                            self.cfg.train.drop_last, self.settings.channels_last and self.device.type == "cuda",
                            self.settings.workers)

    def to_device(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.settings.channels_last and self.device.type == "cuda":
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
        return load_checkpoint(parent.dir / f"{name}.pt", map_location=self.device)

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


def first_test_images(cfg: RunConfig, settings: Settings, n: int, device: torch.device) -> torch.Tensor:
    """The first ``n`` test images of a run's dataset, normalised, on ``device`` (for timing)."""
    data = load_data(cfg.dataset, cfg.data, batch_size=cfg.train.batch_size, root=settings.data_root,
                     device=str(device), seed=cfg.seed, workers=settings.workers)
    chunks, got = [], 0
    for x, _ in data.test:
        chunks.append(x)
        got += x.shape[0]
        if got >= n:
            break
    return torch.cat(chunks)[:n]


def execute(cfg: RunConfig, settings: Settings) -> str:
    """Train one run unless it is done; returns 'reused' or 'trained'. Parents must be done."""
    run = Run(settings.runs_dir, cfg)
    must_force = settings.force and cfg.key not in settings.forced
    if D.broadcast_object(run.done) and not must_force:  # rank 0's view: all ranks take the same path
        return "reused"
    main = D.env().is_main
    wait_msg = lambda owner: settings.log(f"{cfg.paper}/{cfg.dirname}: waiting for {owner}")  # noqa: E731
    lock = run.lock(on_wait=wait_msg) if not D.env().enabled else _ddp_lock(run, wait_msg)
    with activity(f"while waiting for the lock of run {cfg.paper}/{cfg.dirname} (held by another process)"):
        stack = contextlib.ExitStack()
        stack.enter_context(lock)
    with stack:
        if must_force and main:
            run.reset()
        settings.forced.add(cfg.key)
        if D.broadcast_object(run.done if main else None):
            return "reused"  # somebody else finished it while we waited
        for p in cfg.ancestors()[:1]:
            if not Run(settings.runs_dir, p).done:
                raise ConfigError(f"run {cfg.name} needs {p.name} first, which has no results")
        if main:
            run.prepare()
            run.clean_temporaries()
        D.barrier()
        t0 = time.time()
        ctx = RunContext(cfg, run, settings)
        meta = dict(device=str(ctx.device), processes=D.env().world, commit=git_commit(), torch=torch.__version__,
                    threads=torch.get_num_threads())
        if main:
            _note_thread_change(run, meta["threads"], settings.log)
            data = ctx.data()
            atomic_torch_save({"train": data.train_idx, "val": data.val_idx}, run.dir / "split.pt")
            run.write_meta(**meta)
        settings.log(f"{cfg.paper}/{cfg.dirname}: training ({cfg.kind}, {cfg.dataset}, "
                     f"{cfg.train.epochs} epochs, seed {cfg.seed}) on {ctx.device}")
        seed_everything(cfg.seed, ctx.device)  # before the trainer builds anything of the run
        with activity(f"run {cfg.paper}/{cfg.dirname}", run):
            results = trainer(cfg)(ctx)
        if main:  # results.json holds what the config determines; wall time goes to meta.json
            run.write_meta(**meta, seconds=time.time() - t0)
            run.write_results(results)
        D.barrier()
    return "trained"


def _note_thread_change(run: Run, threads: int, log) -> None:
    """Say so when a run resumes with another torch thread count than it started with: CPU kernels
    round differently with another count, so the resumed run is no longer bit-identical."""
    import json

    try:
        before = json.loads((run.dir / "meta.json").read_text()).get("threads")
    except (OSError, ValueError):
        return
    if before is not None and before != threads and any((run.dir / "ckpt").glob("*.pt")):
        log(f"note: {run.cfg.paper}/{run.cfg.dirname} started with {before} torch thread(s) and resumes with "
            f"{threads}: its numbers will differ in the last bits from an uninterrupted run; "
            f"REPRO_THREADS={before} resumes it exactly")


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    """Seed every generator a run may draw from (torch's CPU and CUDA generators, Python's
    ``random``, NumPy's global state) from the run's seed.  The runner calls it right before
    a run's trainer builds its model, so that initial weights, data order, augmentation and
    dropout are a function of the run's config alone.  On CUDA, cuDNN is also told to pick
    deterministic kernels (bit-identity across processes is guaranteed on the CPU only)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device is not None and device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


# What this process is doing now, for the message of an interrupt (Ctrl-C): a stack of
# (description, run) pairs; train.fit records the last finished epoch in ACTIVE_EPOCH.
ACTIVE: list[tuple[str, Run | None]] = []


INTERRUPTED: list[tuple[str, Run | None]] = []  # the innermost activity a Ctrl-C went through


@contextlib.contextmanager
def activity(what: str, run: Run | None = None):
    ACTIVE.append((what, run))
    try:
        yield
    except KeyboardInterrupt:
        if not INTERRUPTED:
            INTERRUPTED.append(ACTIVE[-1])
        raise
    finally:
        ACTIVE.pop()


def interrupted_message() -> str:
    """One line for an interrupted command: what was interrupted, what is kept, how to resume."""
    where = INTERRUPTED or ACTIVE
    if not where:
        return "interrupted; finished runs and epochs are kept: run the same command again to resume"
    what, run = where[-1]
    kept = ""
    if run is not None:
        from repro import train

        last = train.LAST_CHECKPOINT
        if last is not None and Path(last[0]).parent == run.dir / "ckpt":
            kept = f"; kept: phase '{last[1]}' up to epoch {last[2]}/{last[3]}, in {last[0]}"
        else:
            kept = "; no epoch of it had finished yet"
    return f"interrupted {what}{kept}; run the same command again to resume"


@contextlib.contextmanager
def _ddp_lock(run: Run, on_wait, poll: float = 2.0):
    """Under torchrun: rank 0 takes the run's lock; while another process holds it, rank 0
    retries every ``poll`` seconds and all ranks meet in a short collective at each try,
    so that waiting for hours never runs into the process group's collective timeout."""
    main = D.env().is_main
    with contextlib.ExitStack() as stack:
        told = False
        while True:
            got = False
            if main:
                try:
                    stack.enter_context(run.lock(wait=False))
                    got = True
                except LockUnsupported:
                    raise
                except RunLocked:
                    if not told:
                        on_wait(run.owner())
                        told = True
            if D.broadcast_object(got):
                break
            time.sleep(poll)
        yield


def estimate_seconds(cfg: RunConfig, runs_dir: Path) -> float | None:
    """Wall time to train ``cfg`` on this machine, from finished runs of the same paper, name, model
    and method (any seed, schedule or data size) in the store: the median of their ``meta.json``
    seconds per epoch and training image, times this run's; None when there is no such run."""
    import json

    want = json.loads(json.dumps({k: cfg.to_dict()[k] for k in ("model", "model_args", "method")}, default=str))
    rates = []
    for meta in Path(runs_dir, cfg.paper).glob(f"{cfg.name}-s*/meta.json"):
        try:
            m = json.loads(meta.read_text())
            c = json.loads((meta.parent / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if "seconds" not in m or not (meta.parent / "results.json").exists():
            continue
        if any(c.get(k) != v for k, v in want.items()):  # another architecture costs otherwise
            continue
        work = c["train"]["epochs"] * (c["data"].get("train_limit") or 50_000)
        rates.append(m["seconds"] / max(work, 1))
    if not rates:
        return None
    return sorted(rates)[len(rates) // 2] * cfg.train.epochs * (cfg.data.train_limit or 50_000)


# --------------------------------------------------------------------------- pre-flight

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_dir(flag: str, path: Path | None, write: bool = True) -> None:
    """``path`` is a folder or can be made one (nothing on its way is a file), and, with
    ``write``, the nearest folder that exists on its way accepts a new file."""
    if path is None:
        return
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == Path(path).expanduser().absolute() else f"lies under the file {probe}"
        raise ConfigError(f"{flag} {path} {what}; give a folder")
    if write:
        import tempfile

        try:
            tempfile.TemporaryFile(dir=probe).close()
        except OSError as e:
            raise ConfigError(f"{flag} {path}: cannot write in {probe} ({os.strerror(e.errno or 0)}); "
                              f"give a writable folder") from None


def check_settings(settings: Settings, *, local: bool = True, gpus_per_run: int = 1) -> None:
    """Everything about where and how runs execute that can be known before any run trains."""
    if not _DEVICE.match(settings.device):
        raise ConfigError(f"--device {settings.device}: choose one of: auto, cpu, cuda, cuda:N")
    if local and settings.device != "auto":
        D.resolve_device(settings.device)  # cuda asked for without a GPU: one line now, not after planning
    if settings.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {settings.workers}")
    if settings.sync_bn and not (D.env().world > 1 or (not local and gpus_per_run > 1)):
        raise ConfigError("--sync-bn needs several processes per run (torchrun, or --launcher submitit with "
                          "--gpus-per-run > 1); leave it out for a single process")
    check_dir("--runs-dir", settings.runs_dir)
    check_dir("--out-dir", settings.out_dir)
    check_dir("--data-root", settings.data_root, write=False)


def preflight(targets: Sequence[tuple[str, str]], request: Request, settings: Settings, *, local: bool = True,
              gpus_per_run: int = 1, check_runs: bool = True) -> dict[tuple[str, str], list[RunConfig]]:
    """Check a command before anything trains: the ``--set`` values, every run config the targets
    need, the settings, and the files of runs already done.  Returns each target's planned runs."""
    for p, _ in targets:
        get_paper(p).check_options(request.options)
    plans = {(p, a): plan(get_paper(p).artifact(a), request) for p, a in targets}
    check_settings(settings, local=local, gpus_per_run=gpus_per_run)
    if check_runs:
        for cfgs in plans.values():
            for c in cfgs:
                Run(settings.runs_dir, c).check_done()
        todo = {c.dataset for cfgs in plans.values() for c in cfgs if not Run(settings.runs_dir, c).done}
        for name in sorted(todo):
            check_data(name, settings.data_root)
    return plans


def check_data(name: str, root: Path | None) -> None:
    """The dataset is present and readable (corrupt files named), before anything trains: an
    in-memory dataset is read once (Fashion-MNIST: under a second); a folder or ImageNet tree
    is scanned.  Downloads happen here too, where the dataset allows them."""
    from repro.data import dataset_info, load_arrays

    if name in ("cifar10", "cifar100", "fashion-mnist"):
        load_arrays(name, root)
    elif name != "synthetic":
        dataset_info(name)


def ensure(cfgs: Sequence[RunConfig], settings: Settings) -> None:
    todo = [c for c in cfgs if not Run(settings.runs_dir, c).done or settings.force]
    for i, cfg in enumerate(todo, 1):
        settings.log(f"run {i} of {len(todo)}: {cfg.paper}/{cfg.dirname}")
        execute(cfg, settings)


def run_artifact(paper_name: str, artifact_name: str, request: Request, settings: Settings,
                 launch: Callable[[Sequence[RunConfig], Settings], bool] | None = None) -> list[Path]:
    """Make sure the artifact's runs are done (or launched), then build it. Returns written paths."""
    paper = get_paper(paper_name)
    artifact = paper.artifact(artifact_name)
    paper.check_options(request.options)
    cfgs = plan(artifact, request)
    if launch is None:
        ensure(cfgs, settings)
    elif not launch(cfgs, settings):
        return []  # launched elsewhere and not waiting
    if not D.env().is_main:
        return []
    from dataclasses import replace

    from repro.render import building

    settings = replace(settings, scale=request.scale)
    import json

    metas = []
    for c in cfgs:
        try:
            metas.append(json.loads((Run(settings.runs_dir, c).dir / "meta.json").read_text()))
        except (OSError, ValueError):
            pass
    with building(request, runs=len(cfgs), wall_seconds=sum(m.get("seconds", 0.0) for m in metas),
                  threads=[m["threads"] for m in metas if "threads" in m]):
        return artifact.build(request, Results(request, settings), settings)
