"""Clocks for the timing artifacts and the benchmarks.

- :func:`timed`: one call, by the wall clock or the thread's CPU time, after a device sync;
- :func:`time_call`: the median of repeated calls after warm-up.

:mod:`repro.exits` re-exports them for the papers' latency columns (decision gates,
GlanceNets, bias loss Table 2); the benchmarks (docs/performance.md) use them too.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, clock: str = "wall") -> float:
    """Seconds ``fn()`` takes: wall-clock (with the device synchronised before and after), or
    ``clock="cpu"``: the CPU time of this thread, which for single-threaded work is the
    wall-clock time it would take on an idle machine (on a shared one it leaves out the time
    other processes held the core)."""
    if clock == "cpu":
        t0 = time.thread_time()
        fn()
        return time.thread_time() - t0
    if clock != "wall":
        raise ValueError(f"clock: 'wall' or 'cpu', not {clock!r}")
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5) -> float:
    """Median wall-clock seconds of ``fn()`` after ``warmup`` calls (with freed memory kept for
    reuse, as in training: :func:`repro.train.keep_freed_memory`)."""
    from repro.train import keep_freed_memory

    keep_freed_memory()
    for _ in range(warmup):
        fn()
    return float(np.median([timed(fn, device) for _ in range(repeats)]))
