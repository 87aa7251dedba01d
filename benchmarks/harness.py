"""The benchmark's own machinery: sizes and targets, timing in alternation, the machine's
description, profiles, the :class:`Figure` record and the results table / CSV."""
from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from repro.exits import cpu_model
from repro.timing import timed

TARGETS = {"sweep": 100.0, "data": 20.0, "train": 1.2, "early_exit": 0.8, "memory_gib": 4.0}
ITEMS = ("1", "2", "3", "4", "5", "6", "7")


@dataclass(frozen=True)
class Sizes:
    sweep_val: int = 5000
    sweep_test: int = 10000
    sweep_budgets: int = 39
    sweep_repeats: int = 5
    data_images: int = 50000
    data_ref_batches: int = 100
    data_ref_workers: tuple[int, ...] = (0, 2, 4)
    gemm_n: int = 2048
    train_steps: int = 8
    train_min_steps: int = 3
    train_budget_s: float = 45.0
    train_compile: bool = True  # also time ours under torch.compile (minutes of compiling)
    ee_batch: int = 256
    ee_single: int = 128
    ee_repeats: int = 7
    mem_batches: int = 100
    mem_eval_limit: int | None = None
    quick_repeats: int = 5          # item 7: alternations per network
    quick_budget_s: float = 40.0    # ... stopping early past this many seconds per network
    quick_train_batches: int = 60   # ... training batches of the quick epoch timed (scaled to the epoch)
    quick_eval_limit: int | None = None  # ... images of each split timed for validation / output collection
    quick_compile_nets: int = 1     # ... the first N networks (IMTA's MSDNet first) also compiled (train_compile)


FULL = Sizes()
QUICK = Sizes(sweep_val=1000, sweep_test=2000, sweep_repeats=3, data_images=10000, data_ref_batches=25,
              data_ref_workers=(0, 2), gemm_n=1024, train_steps=3, train_min_steps=1, train_budget_s=10.0,
              train_compile=False, ee_single=24, ee_repeats=3, mem_batches=20, mem_eval_limit=2000,
              quick_repeats=2, quick_budget_s=4.0, quick_train_batches=8, quick_eval_limit=1000)


@dataclass
class Figure:
    item: str
    figure: str
    value: float
    unit: str
    target: str = ""
    passed: bool | None = None
    note: str = ""


class FirstImages:
    """The batches of ``batches`` up to ``n`` images (the batch that reaches ``n`` included); ``n``
    None: all of them."""

    def __init__(self, batches, n: int | None):
        self.b, self.n = batches, n

    def __iter__(self):
        seen = 0
        for x, y in self.b:
            if self.n is not None and seen >= self.n:
                return
            seen += x.shape[0]
            yield x, y


def alternate(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 1,
              budget_s: float | None = None, min_repeats: int = 2, stat: str = "median",
              clock: str = "wall") -> dict[str, float]:
    """Seconds of each function (median, or ``stat="min"``: the run least disturbed by other
    processes), timed in alternation (each round runs every function once) so that a shared
    machine's drifting load hits all of them alike; stops early past ``budget_s``.
    ``clock``: see :func:`repro.timing.timed`.

    Each round takes the functions in a new (seeded) random order: a function can slow the
    one that runs after it (one MSDNet training step made the next one, another net's, 15-30 %
    slower), and in a fixed order the same function would always pay for it."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order, rng = list(fns), random.Random(0)
    t_start = time.perf_counter()
    for r in range(repeats):
        rng.shuffle(order)
        for k in order:
            times[k].append(timed(fns[k], device, clock))
        if budget_s is not None and r + 1 >= min_repeats and time.perf_counter() - t_start > budget_s:
            break
    agg = np.min if stat == "min" else np.median
    return {k: float(agg(v)) for k, v in times.items()}


def machine(device: torch.device) -> dict:
    import psutil

    dev = "cpu"
    if device.type == "cuda":
        dev = f"cuda ({torch.cuda.get_device_name(device)})"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": cpu_model(), "cores": psutil.cpu_count(logical=False) or os.cpu_count(),
            "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": dev, "load_avg_1min": round(load, 2)}


def profile_summary(fn: Callable[[], object], rows: int = 15) -> str:
    """A torch.profiler table (self CPU time) of ``fn()``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def write_profile(out_dir: Path, name: str, fn: Callable[[], object]) -> str:
    """``out_dir/profile_<name>.txt``: where the time of a missed target goes."""
    fn()
    text = profile_summary(lambda: [fn() for _ in range(2)])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile_{name}.txt"
    path.write_text(text)
    print(text, file=sys.stderr)
    return str(path)


def print_table(figures: list[Figure], mach: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    line = (f"{mach['cpu']}, {mach['cores']} cores ({mach['logical_cpus']} logical), torch threads "
            f"{mach['threads']}, torch {mach['torch']}, device {mach['device']}, load avg {mach['load_avg_1min']}")
    table = Table(title="repro bench", caption=line, show_lines=False)
    for col in ("item", "figure", "value", "target", "pass", "note"):
        table.add_column(col, overflow="fold", max_width=70 if col == "note" else None)
    for f in figures:
        mark = "" if f.passed is None else ("[green]pass[/green]" if f.passed else "[red]FAIL[/red]")
        table.add_row(f.item, f.figure, f"{f.value:,.4g} {f.unit}".strip(), f.target, mark, f.note)
    Console(stderr=False, width=200).print(table)


def write_csv(figures: list[Figure], mach: dict, out: Path, quick: bool) -> None:
    """One row per figure, the machine's description in every row; written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([asdict(f) for f in figures])
    for k, v in mach.items():
        df[k] = v
    df["quick"] = quick
    df["date"] = time.strftime("%Y-%m-%d %H:%M")
    tmp = out.with_name(f".{out.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)
