"""The upper bound of every numeric command-line option, and the checks that enforce them.

Every numeric option has a range; a value outside it is one line naming the option, the value,
the bound and why (``error: --seeds 1000000000 is above its bound 100 (...)``), exit code 2,
before anything trains.  The bounds are what this program can do on a machine, not what a paper
uses: a value inside them still runs (it may run long).  The ``--set`` keys of the papers carry
their own bounds (:class:`repro.artifacts.Option` ``high``/``below``); ``tests/test_bounds.py``
fails when a numeric option of either kind has none.  README.md lists them
(``python -m repro.bounds`` prints the table).

This module imports no torch: the command line checks these before it loads anything heavy.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from repro.config import ConfigError


@dataclass(frozen=True)
class Bound:
    low: float
    high: float | None      # None: per machine or per run, see ``why`` (a callable gives the value)
    why: str

    def valid(self, high: float | None = None) -> str:
        hi = self.high if high is None else high
        return f"{_num(self.low)} <= N <= {_num(hi)}"


def _num(v) -> str:
    return f"{v:,}".replace(",", "") if isinstance(v, int) else f"{v:g}"


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# The largest learning rate a run may end up with after --lr-scale: every paper trains at 0.01-0.5;
# a thousand is already past any divergence.
MAX_LR = 1e3

# Integer options of `repro <paper> <artifact>` (by the CLI's parameter name); jobs' bound depends
# on the machine (``jobs_bound``).
CLI_BOUNDS: dict[str, Bound] = {
    "seeds": Bound(1, 100, "each seed retrains every run; the t-interval over seeds is tight long before"),
    "max_seeds": Bound(3, 100, "--seeds auto: a verdict needs 3 seeds; its looks stop at 3, 5, 7, 10 by default"),
    "epochs": Bound(1, 10_000, "the papers' longest schedule is 350 epochs"),
    "batch_size": Bound(1, 65_536, "a larger batch does not fit a GPU's memory at any scale"),
    "train_limit": Bound(1, None, "the training split of the run's dataset, less its held-out images"),
    "jobs": Bound(1, None, "one CPU core per job on this machine"),
    "workers": Bound(0, 128, "DataLoader processes per run"),
    "gpus_per_run": Bound(1, 16, "torchrun --standalone runs on one node"),
    "time_limit": Bound(1, 43_200, "minutes per Slurm job: 30 days"),
    "array_parallelism": Bound(1, 1000, "Slurm's default MaxArraySize is 1001"),
    "lr_scale": Bound(0, None, f"every run's learning rate after scaling must be finite and at most {MAX_LR:g}"),
}


def jobs_bound() -> int:
    """``--jobs``: one process per CPU core of this machine (at least 2)."""
    return max(2, cpu_cores())


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_int(name: str, value: int | None, high: int | None = None, why: str | None = None) -> None:
    """``value`` of option ``name`` within its :data:`CLI_BOUNDS` range (``high`` overrides a
    per-machine or per-run bound); None is not given."""
    if value is None:
        return
    b = CLI_BOUNDS[name]
    hi = b.high if high is None else high
    if value < b.low:
        what = "a positive integer" if b.low == 1 else f"{_num(b.low)} or more"
        raise ConfigError(f"{flag(name)} must be {what}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{flag(name)} {value} is above its bound {_num(hi)} ({why or b.why}); "
                          f"valid: {b.valid(hi)}")


def check_cli(*, jobs: int, workers: int, gpus_per_run: int, time_limit: int, array_parallelism: int) -> None:
    """The launcher and loader options (the Request checks its own)."""
    check_int("jobs", jobs, jobs_bound(), f"one CPU core per job; this machine has {cpu_cores()}")
    check_int("workers", workers)
    check_int("gpus_per_run", gpus_per_run)
    check_int("time_limit", time_limit)
    check_int("array_parallelism", array_parallelism)


def check_lr(lr_scale: float | None, cfgs) -> None:
    """Every planned run's learning rate after ``--lr-scale``: finite and at most :data:`MAX_LR`."""
    if lr_scale is None:
        return
    worst = max(cfgs, key=lambda c: c.train.lr, default=None)
    if worst is None:
        return
    lr = worst.train.lr
    if not math.isfinite(lr) or lr > MAX_LR:
        base = lr / lr_scale if math.isfinite(lr) else None
        most = f"; valid: 0 < F <= {MAX_LR / base:.3g} for this artifact" if base else ""
        raise ConfigError(f"--lr-scale {lr_scale:g} makes run {worst.paper}/{worst.name}'s learning rate "
                          f"{lr:g}, above its bound {MAX_LR:g} (a finite rate a run can train at){most}")
    if lr <= 0:
        raise ConfigError(f"--lr-scale {lr_scale:g} makes run {worst.paper}/{worst.name}'s learning rate 0; "
                          f"give a larger factor")


def split_size(cfg) -> tuple[int, str] | None:
    """The images a run can train on: its dataset's training split less the held-out ones, and
    a note on where the number comes from; None where it is not known without reading the data."""
    from repro.data import DATASETS, FOLDER_PREFIX, _folder_tree, _folder_val_cap

    if cfg.dataset.startswith(FOLDER_PREFIX):
        n = len(_folder_tree(cfg.dataset).train)  # scanned once (cached); the pre-flight scans it anyway
        val = min(cfg.data.val_size, _folder_val_cap(n))
    else:
        info = DATASETS.get(cfg.dataset)
        if info is None or info.train_size is None:
            return None
        n, val = info.train_size, cfg.data.val_size
    return n - val, f"{cfg.dataset}'s training split: {n:,} images less {val:,} held out"


def check_train_limit(train_limit: int | None, cfgs) -> None:
    """``--train-limit`` at most the training images of every planned run's dataset."""
    if train_limit is None:
        return
    for c in cfgs:
        known = split_size(c)
        if known is not None and train_limit > known[0]:
            check_int("train_limit", train_limit, known[0], known[1])


def check_last_batch(cfgs) -> None:
    """No run ends an epoch on a batch of one image: BatchNorm cannot train on one (a 1-d BatchNorm
    fails; a 2-d one normalises a sample by itself), and a run with one training image cannot
    train at all.  Checked where the training images are known without reading the data."""
    for c in cfgs:
        for run in (c, *c.ancestors()):
            known = split_size(run)
            if known is None or run.train.drop_last:
                continue
            n = min(run.data.train_limit, known[0]) if run.data.train_limit else known[0]
            b = run.train.batch_size
            if n < 2 or n % b == 1:
                why = "one training image" if n < 2 else f"{n:,} training images in batches of {b} end on a batch of one"
                raise ConfigError(f"run {run.paper}/{run.name}: {why}, which BatchNorm cannot train on; "
                                  f"change --train-limit or --batch-size")


def check_world(cfgs, world: int, why: str) -> None:
    """Every run's global batch splits evenly over ``world`` processes (DDP: one share per rank)."""
    if world <= 1:
        return
    for c in cfgs:
        for run in (c, *c.ancestors()):
            b = run.train.batch_size
            if b % world:
                raise ConfigError(f"batch size {b} of run {run.paper}/{run.name} does not split over {world} "
                                  f"processes ({why}); give --batch-size a multiple of {world}")


def table() -> str:
    """The bounds as a Markdown table (README.md's)."""
    rows = ["| option | valid | why |", "|---|---|---|"]
    for name, b in CLI_BOUNDS.items():
        if name == "jobs":
            rng = "1 <= N <= the CPU cores of this machine (at least 2)"
        elif name == "train_limit":
            rng = "1 <= N <= the dataset's training split less its held-out images"
        elif name == "lr_scale":
            rng = f"0 < F, with every run's learning rate x F finite and <= {MAX_LR:g}"
        else:
            rng = b.valid()
        rows.append(f"| `{flag(name)}` | {rng} | {b.why} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
