"""The driver: which items, their sizes, the table and ``bench/results.csv``; and the command
line of ``python -m benchmarks`` (also behind ``repro bench`` in a checkout)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from benchmarks import (item1_sweep, item2_data, item3_train, item4_early_exit, item5_memory, item6_cuda,
                        item7_quick)
from benchmarks.harness import FULL, ITEMS, QUICK, Figure, Sizes, machine, print_table, write_csv
from repro.config import ConfigError


def check_args(items: str, ref_msdnet: str | None) -> tuple[str, ...]:
    """The items chosen by ``--items`` (e.g. "3,4"); a bad one, or a ``--ref-msdnet`` that is
    no MSDNet-PyTorch checkout, is a one-line :class:`ConfigError`."""
    chosen = [i.strip() for i in items.split(",") if i.strip()]
    bad = [i for i in chosen if i not in ITEMS]
    if bad or not chosen:
        raise ConfigError(f"--items: unknown item {bad[0] if bad else repr(items)}; choose from {','.join(ITEMS)}")
    if ref_msdnet and not (Path(ref_msdnet) / "models" / "msdnet.py").is_file():
        raise ConfigError(f"--ref-msdnet: {ref_msdnet}/models/msdnet.py not found; give a checkout of "
                          "kalviny/MSDNet-PyTorch")
    return tuple(chosen)


def main(ref_msdnet: str | None = None, out: Path = Path("bench/results.csv"), quick: bool = False,
         items: Sequence[str] = ITEMS, sizes: Sizes | None = None) -> list[Figure]:
    """Run the benchmark (``items``: which of 1-7), print the table, write ``out`` (CSV, one
    row per figure, with the machine's description in every row) and, for a missed target,
    a profile next to it."""
    sz = sizes or (QUICK if quick else FULL)
    out = Path(out)
    out_dir = out.parent
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    cpu = torch.device("cpu")
    mach = machine(cpu)
    log(f"repro bench{' --quick' if quick else ''}: {mach}")
    from repro.train import keep_freed_memory

    keep_freed_memory()  # as repro.train.fit does: every timing below runs in a tuned process
    for stale in out_dir.glob("profile_*.txt"):  # profiles are written for this run's failures only
        stale.unlink()
    t0 = time.perf_counter()
    figures: list[Figure] = []
    if "1" in items:
        figures += item1_sweep.run(sz, log)
    if "2" in items:
        figures += item2_data.run(sz, cpu, log)
    if "3" in items:
        figures += item3_train.run(sz, cpu, ref_msdnet, log, out_dir)
    if "4" in items:
        figures += item4_early_exit.run(sz, cpu, log, out_dir)
    if "5" in items:
        figures += item5_memory.run(sz, log)
    if "6" in items:
        figures += item6_cuda.run(sz, ref_msdnet, log, out_dir, mach)
    if "7" in items:
        figures += item7_quick.run(sz, log, out_dir)
    seconds = time.perf_counter() - t0
    print_table(figures, mach)
    log(f"bench took {seconds:.0f} s")
    write_csv(figures, mach, out, quick)
    log(f"wrote {out}")
    return figures


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks``: the arguments of ``repro bench``; bad input is one line, exit 2."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Speed and memory benchmarks against "
                                "their targets (README, Performance).")
    p.add_argument("--ref-msdnet", default=None, help="a checkout of kalviny/MSDNet-PyTorch to time side by side")
    p.add_argument("--out", default="bench/results.csv", help="the results CSV; profiles go next to it")
    p.add_argument("--quick", action="store_true", help="smaller sizes, no torch.compile (about a minute)")
    p.add_argument("--items", default=",".join(ITEMS), help="which items to run, e.g. 3,4")
    p.add_argument("--gpu-check", action="store_true", help="the GPU check instead (benchmarks.gpu_check, "
                   "make gpu-check): CUDA tests, a paper-scale IMTA run, kill and resume, torchrun, benchmark 6")
    p.add_argument("--dry-run", action="store_true", help="with --gpu-check: every step on the CPU at smoke sizes")
    a = p.parse_args(argv)
    if a.gpu_check:
        from benchmarks import gpu_check

        return gpu_check.main(dry=a.dry_run)
    if a.dry_run:
        print("error: --dry-run goes with --gpu-check", file=sys.stderr)
        return 2
    try:
        items = check_args(a.items, a.ref_msdnet)
        main(ref_msdnet=a.ref_msdnet, out=Path(a.out), quick=a.quick, items=items)
    except ConfigError as e:
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0
