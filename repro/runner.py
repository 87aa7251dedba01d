"""From a request to finished runs: plan, lock, train (or reuse), and hand results to an artifact.

    request (scale, seeds, overrides) --artifact.runs--> {name: run config} (seed 0)
      --resolve--> one config per seed, ancestors first --execute--> run folders
      --Runs (by name)--> artifact.build --> Table / Figure data
      --render.write_outputs--> tables/<scale>/ and figures/<scale>/

The contract types (:class:`~repro.api.Request`, :class:`~repro.api.Settings`,
:class:`~repro.api.RunContext`, :class:`~repro.api.Runs`) live in :mod:`repro.api`, which
paper modules import; no paper module imports the runner.  Before anything
trains, :func:`preflight` checks every input in one pass.  The runner seeds every
generator right before a trainer builds anything, so a run's numbers are a function of its
config (docs/run-store.md).
"""
from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from repro import distributed as D
from repro import interrupts
from repro.api import Request, RunContext, RunResult, Runs, Settings, first_test_images, resolve  # noqa: F401
from repro.artifacts import Artifact, get_paper, trainer
from repro.config import ConfigError, RunConfig
from repro.data import DATASETS
from repro.render import git_commit
from repro.store import LockUnsupported, Run, RunLocked, atomic_torch_save


def named_runs(artifact: Artifact, request: Request) -> dict[str, RunConfig]:
    """The artifact's runs by name, as its ``runs(request)`` declares them (seed 0, no overrides)."""
    runs = artifact.runs(request)
    if not isinstance(runs, dict):
        raise TypeError(f"{artifact.name}: runs(request) returns {{name: RunConfig}}, not {type(runs).__name__}")
    return runs


def plan(artifact: Artifact, request: Request) -> list[RunConfig]:
    """Every run an artifact needs, ancestors before descendants, each once."""
    from repro.convergence import twins

    out: dict[str, RunConfig] = {}
    for cfg in named_runs(artifact, request).values():
        for seeded in resolve(cfg, request):
            for c in [*reversed(seeded.ancestors()), seeded]:
                out.setdefault(c.key, c)
    for tw in twins(artifact, request).values():  # the convergence test's runs (docs/calibration.md)
        for c in [*reversed(tw.ancestors()), tw]:
            out.setdefault(c.key, c)
    return sorted(out.values(), key=lambda c: len(c.ancestors()))


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
        interrupts.note_training()
        if main:
            run.prepare()
            run.clean_temporaries()
        D.barrier()
        t0 = time.time()
        ctx = RunContext(cfg, run, settings)
        meta = dict(device=str(ctx.device), processes=D.env().world, commit=git_commit(), torch=torch.__version__,
                    threads=torch.get_num_threads())
        if settings.invocation:
            meta["invocation"] = settings.invocation
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
    """A region that a Ctrl-C interrupts by ``KeyboardInterrupt`` (unwinding it); elsewhere the
    command ends at once with one line (repro.interrupts)."""
    ACTIVE.append((what, run))
    try:
        with interrupts.raising():
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


interrupts.set_message(interrupted_message)  # what a Ctrl-C outside an activity says, once a run trained


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
        work = c["train"]["epochs"] * _train_images(c["dataset"], c["data"].get("train_limit"),
                                                    c["data"].get("val_size", 5000))
        rates.append(m["seconds"] / max(work, 1))
    if not rates:
        return None
    return sorted(rates)[len(rates) // 2] * cfg.train.epochs * _train_images(cfg.dataset, cfg.data.train_limit,
                                                                             cfg.data.val_size)


def _train_images(dataset: str, train_limit: int | None, val_size: int) -> int:
    """The images a run trains on per epoch: its ``train_limit``, else the training split less the
    held-out validation images.  A dataset whose split size is not known without reading it (a
    folder) is taken as 50,000: an estimate from runs on the same folder still scales right."""
    info = DATASETS.get(dataset)
    split = max(((info.train_size if info else None) or 50_000) - int(val_size), 1)
    return min(int(train_limit), split) if train_limit else split


# --------------------------------------------------------------------------- pre-flight

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_dir(flag: str, path: Path | None, write: bool = True, sep: str = " ") -> None:
    """``path`` is a folder or can be made one (nothing on its way is a file), and, with
    ``write``, the nearest folder that exists on its way accepts a new file.  ``flag`` names it
    in the message (``--runs-dir``, or ``REPRO_DATA`` with ``sep`` '=')."""
    if path is None:
        return
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; give a folder")
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == Path(path).expanduser().absolute() else f"lies under the file {probe}"
        raise ConfigError(f"{flag}{sep}{path} {what}; give a folder")
    if write:
        import tempfile

        try:
            tempfile.TemporaryFile(dir=probe).close()
        except OSError as e:
            raise ConfigError(f"{flag}{sep}{path}: cannot write in {probe} ({os.strerror(e.errno or 0)}); "
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
    env = os.environ.get("REPRO_DATA")
    if settings.data_root is None and env is not None:  # the data root it stands for: the same checks
        if not env.strip():
            raise ConfigError("REPRO_DATA is set but empty; unset it or give a folder")
        check_dir("REPRO_DATA", Path(env), write=False, sep="=")


def preflight(targets: Sequence[tuple[str, str]], request: Request, settings: Settings, *, local: bool = True,
              gpus_per_run: int = 1, check_runs: bool = True, dry_run: bool = False,
              note: Callable[[str], None] | None = None) -> dict[tuple[str, str], list[RunConfig]]:
    """Check a command before anything trains: the ``--set`` values, every run config the targets
    need (their bounds: learning rate, training images, batch split over processes), the
    settings, the files of runs already done and the data of runs to train.  ``dry_run`` runs
    the same checks but downloads nothing: a dataset that is not on disk and would be downloaded
    is told to ``note``.  Returns each target's planned runs."""
    from repro import bounds

    for p, _ in targets:
        get_paper(p).check_options(request.options)
    plans = {(p, a): plan(get_paper(p).artifact(a), request) for p, a in targets}
    every = list({c.key: c for cfgs in plans.values() for c in cfgs}.values())
    bounds.check_lr(request.lr_scale, every)
    bounds.check_train_limit(request.train_limit, every)
    bounds.check_last_batch(every)
    for folder in sorted({Run(settings.runs_dir, c).dir.parent for c in every}):  # <runs>/<paper>
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder} is a file where a folder is needed for the runs of {folder.name}; move it "
                              f"away, or give another --runs-dir")
    if not local and gpus_per_run > 1:
        bounds.check_world(every, gpus_per_run, f"--gpus-per-run {gpus_per_run}")
    elif D.env().world > 1:
        bounds.check_world(every, D.env().world, "torchrun's processes")
    check_settings(settings, local=local, gpus_per_run=gpus_per_run)
    if check_runs:
        for c in every:
            Run(settings.runs_dir, c).check_done()
        todo = {c.dataset: c for c in every if not Run(settings.runs_dir, c).done}
        for name, c in sorted(todo.items()):
            said = check_data(name, settings.data_root, download=not dry_run, image_size=c.data.image_size,
                              log=settings.log)
            if said and note is not None:
                note(said)
    return plans


def check_data(name: str, root: Path | None, download: bool = True, image_size: int | None = None,
               log: Callable[[str], None] | None = None) -> str | None:
    """The dataset is present and readable (corrupt files named), before anything trains: an
    in-memory dataset is read once (Fashion-MNIST: under a second); a folder or ImageNet tree
    is scanned (2 classes or more, no symlink loops) and every image of it decoded once, the
    verdict cached (:func:`repro.data.verify_tree`); an ImageNet tree must have its train/ and
    val/ folders under the data root.  Downloads happen here too, where the dataset allows them;
    without ``download`` (``--dry-run``) a dataset that is not on disk but would be downloaded
    returns a note saying so."""
    from repro.data import (DataCorrupt, DataUnavailable, _imagenet_tree, check_tree, dataset_info,
                            default_data_root, load_arrays)

    if name in ("cifar10", "cifar100", "fashion-mnist"):
        try:
            load_arrays(name, root, download=download)
        except DataUnavailable as e:
            if download or isinstance(e, DataCorrupt):
                raise
            return f"note: {str(e).split(';')[0]}; the command downloads it first"
    elif name == "imagenet":
        base = Path(root) if root else default_data_root()
        if not (base / "train").is_dir() or not (base / "val").is_dir():
            _imagenet_tree(base)  # the one-line 'not found' naming both folders
        check_tree(name, root, log)
    elif name != "synthetic":
        dataset_info(name, image_size)
        check_tree(name, root, log)
    return None


def duration(seconds: float) -> str:
    """A time estimate in words: seconds below a minute, minutes below 90, else hours."""
    if seconds < 59.5:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def eta_text(cfgs: Sequence[RunConfig], runs_dir: Path, what: str = "run(s)", at_once: int = 1) -> str:
    """'about 3 min for 5 run(s)', or for how many of them an estimate exists (:func:`estimate_seconds`:
    finished runs of the same kind in the store), or 'no time estimate yet'; ``at_once``: runs
    trained side by side (the time is divided by it)."""
    known = [s for s in (estimate_seconds(c, runs_dir) for c in cfgs) if s is not None]
    if not known:
        return "no time estimate yet"
    total = sum(known) / max(1, min(at_once, len(known)))
    if len(known) == len(cfgs):
        return f"about {duration(total)} for {len(cfgs)} {what}"
    return (f"about {duration(total)} for {len(known)} of the {len(cfgs)} {what} "
            f"(the others have no finished run of the same kind to estimate from)")


class JobProgress:
    """'run k of N' over a whole command (every artifact it builds), with the time the runs still
    to go are estimated to take from finished runs of the same kind (the ones this command just
    trained included): one log line as each run starts."""

    def __init__(self, todo: Sequence[RunConfig], runs_dir: Path):
        self.todo = {c.key: c for c in todo}
        self.runs_dir = Path(runs_dir)
        self.started: list[str] = []

    def start(self, cfg: RunConfig) -> str:
        if cfg.key not in self.todo:  # not foreseen (a parent); counted from here on
            self.todo[cfg.key] = cfg
        if cfg.key not in self.started:
            self.started.append(cfg.key)
        k = self.started.index(cfg.key) + 1
        left = [cfg] + [c for key, c in self.todo.items() if key not in self.started]
        return (f"run {k} of {len(self.todo)}: {cfg.paper}/{cfg.dirname} "
                f"({eta_text(left, self.runs_dir, 'run(s) left')})")


def ensure(cfgs: Sequence[RunConfig], settings: Settings) -> None:
    todo = [c for c in cfgs if not Run(settings.runs_dir, c).done
            or (settings.force and c.key not in settings.forced)]
    progress = settings.progress
    for i, cfg in enumerate(todo, 1):
        settings.log(progress.start(cfg) if isinstance(progress, JobProgress) else
                     f"run {i} of {len(todo)}: {cfg.paper}/{cfg.dirname}")
        execute(cfg, settings)


def run_artifact(paper_name: str, artifact_name: str, request: Request, settings: Settings,
                 launch: Callable[[Sequence[RunConfig], Settings], bool] | None = None, *, level: float = 0.95,
                 auto: str = "", write: bool = True, verdicts: list | None = None, progress_of: str = ""
                 ) -> list[Path]:
    """Make sure the artifact's runs are done (or launched), then build it. Returns written paths.
    ``level``: the claims' confidence level; ``auto``: the header's --seeds auto line; without
    ``write`` the build's claims are judged but nothing is written (--seeds auto's looks);
    ``verdicts`` collects (claim, evidence, paper, sign, verdict, headline, line) of every claim;
    ``progress_of`` (' (artifact 2 of 9)') goes into its 'building' line."""
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
    settings.log(f"{paper_name} {artifact_name}{progress_of}: building from {len(cfgs)} run(s) (evaluation, "
                 f"thresholds, intervals, claims){', then writing' if write else ''}…")
    from dataclasses import replace

    from repro import convergence
    from repro.render import building, claim, run_set_digest, training_note, write_outputs

    settings = replace(settings, scale=request.scale)
    import json

    metas = []
    for c in cfgs:
        try:
            metas.append(json.loads((Run(settings.runs_dir, c).dir / "meta.json").read_text()))
        except (OSError, ValueError):
            pass
    named = named_runs(artifact, request)
    with building(request, runs=len(cfgs), wall_seconds=sum(m.get("seconds", 0.0) for m in metas),
                  threads=[m["threads"] for m in metas if "threads" in m],
                  training=training_note(cfgs, lambda c: _split_sizes(c, settings)),
                  run_set=run_set_digest(f"{c.paper}/{c.dirname}" for c in cfgs if c.seed == 0),
                  level=level, auto=auto, outliers=outlying_seeds(named, request, settings),
                  convergence=convergence.check(artifact, request, settings)) as ctx:
        built = artifact.build(request, Runs(request, settings, named), settings)
        if write:
            paths = write_outputs(built, paper_name, artifact_name, request, settings)
        else:
            from repro.render import Figure, Table

            for out in built if isinstance(built, (list, tuple)) else [built]:
                if isinstance(out, (Table, Figure)):
                    for c in out.claims:
                        claim(c.name, c.evidence, c.paper, c.sign, c.headline)
            paths = []
        if verdicts is not None:
            verdicts.extend(ctx.verdicts)
        return paths


def validation_top1(run: Run) -> tuple[float, int] | None:
    """A finished run's validation top-1 (%) at its last exit and its class count, from its outputs
    (:func:`repro.convergence.exit_top1`: ``val_logits`` or ``val_preds``; the class count from the
    logits, else from the labels); None where it saved none."""
    from repro.convergence import exit_top1

    try:
        out = run.outputs()
    except Exception:  # no outputs: nothing to compare
        return None
    top1 = exit_top1(run, out)
    if top1 is None:
        return None
    classes = int(out["val_logits"].shape[-1]) if "val_logits" in out else int(out["val_labels"].max()) + 1
    return top1[-1], classes


def outlying_seeds(named: dict, request: Request, settings: Settings) -> list[tuple[str, int, float, float]]:
    """Every named run whose validation top-1 at some seed is far from its siblings' (beyond 4 pooled
    robust deviations and 2 points, or within 5 points of chance: :func:`repro.stats.outlying`):
    (name, seed, its top-1, the median).  Needs 3 seeds or more; shown in the header, never dropped."""
    from repro.stats import MIN_SEEDS, outlying

    if request.seeds < MIN_SEEDS or request.scale == "smoke":  # smoke runs sit near chance by design
        return []
    groups, classes = {}, None
    for name, cfg in named.items():
        if cfg is None:
            continue
        got = [validation_top1(Run(settings.runs_dir, c)) for c in resolve(cfg, request)]
        if any(g is None for g in got):
            continue
        groups[name] = [g[0] for g in got]
        classes = got[0][1]
    if not groups:
        return []
    return [(name, s, groups[name][s], statistics.median(groups[name]))
            for name, s in outlying(groups, chance=100 / classes)]


def _split_sizes(cfg: RunConfig, settings: Settings) -> tuple[int | None, int]:
    """The images a finished run trained on and held out: from its ``split.pt`` (the indices it
    used), else as :func:`repro.data.split_sizes` computes them, else its config's numbers."""
    from repro.data import DataUnavailable, split_sizes

    try:
        split = torch.load(Run(settings.runs_dir, cfg).dir / "split.pt", map_location="cpu", weights_only=True)
        return len(split["train"]), len(split["val"])
    except Exception:  # no split.pt (a run from elsewhere), unreadable: computed below
        pass
    try:
        return split_sizes(cfg.dataset, cfg.data, settings.data_root)
    except (DataUnavailable, ConfigError):  # the tree is gone since: the config's numbers
        return None, cfg.data.val_size


def build_and_write(paper_name: str, artifact_name: str, request: Request, runs: Runs, settings: Settings
                    ) -> list[Path]:
    """Build an artifact from ``runs`` (finished, or :meth:`Runs.fixed` ones) and write its files:
    what :func:`run_artifact` does once its runs are done (tests call it with synthetic runs)."""
    from dataclasses import replace

    from repro.render import building, write_outputs

    settings = replace(settings, scale=request.scale)
    with building(request):
        built = get_paper(paper_name).artifact(artifact_name).build(request, runs, settings)
        return write_outputs(built, paper_name, artifact_name, request, settings)
