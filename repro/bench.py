"""``repro bench`` (``make bench``): the speed and memory figures of issue 8 against their targets.

Every figure is a ratio of two timings taken in this one run on this one machine (shared
machines drift; ratios hold), printed in a table with its target and pass/fail under a
line describing the machine, and written to ``bench/results.csv``:

1. Budgeted-batch threshold fitting + test evaluation (39 budgets, 5,000 validation and
   10,000 test samples, 7 exits, 100 classes, synthetic outputs): :func:`repro.exits.budgeted_sweep`
   vs :func:`reference_sweep`, a per-sample loop in the style of the authors' dynamic
   evaluation; the benchmark checks that both give the same thresholds, exits, accuracies
   and costs.  Target >= 100x.
2. Training data: :class:`repro.data.TensorBatches` (in-memory batched crop + flip) vs
   torchvision's per-image PIL transforms through a DataLoader, CIFAR-size images.  Target >= 20x.
3. MSDNet training step in the IMTA Table 1 configuration (batch 64): img/s and the
   fraction of the machine's measured fp32 matmul rate it reaches (conv + linear MACs x 3 for
   forward and backward, 2 FLOPs per MAC).  Target >= 1.2x the authors' MSDNet-PyTorch: timed
   side by side when a checkout is given (``--ref-msdnet PATH``), else against the fraction of
   the matmul rate it reaches on the issue's 2-core machine (34 %).
4. Real early exit (:func:`repro.exits.early_exit`) at batch 1 and batch 256 (compaction) for
   the quick-scale MSDNet, GlanceNet and ResNet + d-gates, random weights, thresholds fitted so
   that an equal share of a calibration batch leaves at each exit: measured speed-up over the
   full network / the speed-up the FLOPs predict (fvcore MACs, actual exit fractions).  Target >= 0.8.
5. Peak resident memory of a quick-scale training run (IMTA Table 1 phase I on Fashion-MNIST,
   in a child process): target < 4 GiB.
6. On a CUDA device: items 2-4 again with AMP and channels_last on, data on the GPU, item 3 as
   a fraction of the GPU's measured matmul rate in the AMP dtype.

Single-threaded work (items 1 and 4, item 3's one-thread setting) is timed by the thread's
CPU time, which is the wall-clock time of an idle machine and leaves out the time other
processes held the core on a shared one; everything else by the wall clock.

``--quick`` runs smaller sizes (1-2 minutes) as a sanity check; its ratios are noisier.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from repro.exits import cpu_model

# The authors' figures quoted by issue 8 for the 2-core machine these benchmarks run on.
REF_MSDNET_IMG_S = 69.0       # MSDNet-PyTorch, IMTA Table 1 config, batch 64, CPU, 2 threads
REF_MSDNET_FRACTION = 0.34    # ... as a fraction of that machine's fp32 matmul rate
# IMTA Table 1 cumulative costs (MSDNet counter, ANCHORS.md): the costs item 1 averages.
TABLE1_COSTS = [6.86e6, 14.35e6, 27.29e6, 48.45e6, 76.43e6, 108.85e6, 137.28e6]

TARGETS = {"sweep": 100.0, "data": 20.0, "train": 1.2, "early_exit": 0.8, "memory_gib": 4.0}


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


FULL = Sizes()
QUICK = Sizes(sweep_val=1000, sweep_test=2000, sweep_repeats=3, data_images=10000, data_ref_batches=25,
              data_ref_workers=(0, 2), gemm_n=1024, train_steps=3, train_min_steps=1, train_budget_s=10.0,
              train_compile=False, ee_single=24, ee_repeats=3, mem_batches=20, mem_eval_limit=2000)


@dataclass
class Figure:
    item: str
    figure: str
    value: float
    unit: str
    target: str = ""
    passed: bool | None = None
    note: str = ""


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def threads(n: int | None):
    """Run the block with ``n`` intra-op threads (None: leave as is)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, clock: str = "wall") -> float:
    """Seconds ``fn()`` takes: wall-clock (with the device synchronised), or ``clock="cpu"``:
    the CPU time of this thread, which for single-threaded work is the wall-clock time it
    would take on an idle machine (on a shared one it leaves out the time other processes
    held the core)."""
    if clock == "cpu":
        t0 = time.thread_time()
        fn()
        return time.thread_time() - t0
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 1,
              budget_s: float | None = None, min_repeats: int = 2, stat: str = "median",
              clock: str = "wall") -> dict[str, float]:
    """Seconds of each function (median, or ``stat="min"``: the run least disturbed by other
    processes), timed in alternation (each round runs every function once) so that a shared
    machine's drifting load hits all of them alike; stops early past ``budget_s``.
    ``clock``: see :func:`timed`.

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


# --------------------------------------------------------------------------- 1. budgeted sweep


def synthetic_outputs(num_exits: int, n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits exits x n x classes whose later exits are more often right and surer."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    z = torch.randn(num_exits, n, classes, generator=g)
    signal = torch.linspace(1.0, 4.0, num_exits)[:, None] * torch.rand(num_exits, n, generator=g) * 2
    z[:, torch.arange(n), y] += signal
    return z, y


def reference_sweep(val_logits: torch.Tensor, val_labels: torch.Tensor, test_logits: torch.Tensor,
                    test_labels: torch.Tensor, costs: Sequence[float], budgets: Sequence[int]) -> list[dict]:
    """Budgeted batch classification one sample at a time: the baseline of item 1.

    The protocol of ANCHORS.md, written the way the authors' dynamic evaluation is: scores
    and predictions as tensors, then Python loops over samples reading one element at a
    time.  For exit k, walk the validation samples in descending confidence, counting those
    no earlier exit took; the threshold is the confidence of the floor(n p_k)-th (nobody
    exits if there are too few); then every sample exits at the first exit whose confidence
    reaches its threshold.  (Predictions are the logits' argmax, as in ours; the authors take
    the argmax of the softmax, which can differ only on ties the softmax rounding creates.)
    """
    from repro.exits import budget_distributions

    num_exits, n = val_logits.shape[:2]
    vconf = val_logits.softmax(2).max(2).values
    tconf = test_logits.softmax(2).max(2).values
    vpred, tpred = val_logits.argmax(2), test_logits.argmax(2)
    order = vconf.sort(dim=1, descending=True).indices

    def evaluate(conf, pred, labels, T):
        m = labels.shape[0]
        counts, hits = [0] * num_exits, 0
        for i in range(m):
            for k in range(num_exits):
                if conf[k][i].item() >= T[k]:
                    if int(labels[i].item()) == int(pred[k][i].item()):
                        hits += 1
                    counts[k] += 1
                    break
        cost = sum(counts[k] * costs[k] for k in range(num_exits)) / m
        return {"acc": hits / m * 100, "cost": cost, "fractions": [c / m for c in counts]}

    rows = []
    for budget, p in zip(budgets, budget_distributions(num_exits, budgets)):
        T = torch.full((num_exits,), math.inf, dtype=torch.float64)
        filtered = torch.zeros(n)
        for k in range(num_exits - 1):
            want, count = math.floor(n * float(p[k])), 0
            for i in range(n):
                j = order[k][i]
                if filtered[j] == 0:
                    count += 1
                    if count == want:
                        T[k] = vconf[k][j].item()
                        break
            filtered.add_(vconf[k].double().ge(T[k]).to(filtered.dtype))
        T[num_exits - 1] = -math.inf
        v, r = evaluate(vconf, vpred, val_labels, T), evaluate(tconf, tpred, test_labels, T)
        rows.append({"budget": budget, "thresholds": T.tolist(), "val_acc": v["acc"], "val_cost": v["cost"],
                     "val_fractions": v["fractions"], "acc": r["acc"], "cost": r["cost"],
                     "fractions": r["fractions"]})
    return rows


def compare_sweeps(ours: pd.DataFrame, ref: list[dict]) -> str:
    """Raise if the two sweeps differ; return how exactly they agree."""
    if len(ours) != len(ref):
        raise AssertionError(f"item 1: {len(ours)} budgets vs {len(ref)} in the reference")
    exact = True
    for row, r in zip(ours.to_dict("records"), ref):
        for key in ("thresholds", "val_fractions", "fractions", "val_acc", "acc"):
            if row[key] != r[key]:
                raise AssertionError(f"item 1, budget {r['budget']}: {key} differ: {row[key]} vs {r[key]}")
        for key in ("val_cost", "cost"):
            if row[key] != r[key]:
                exact = False
                if not math.isclose(row[key], r[key], rel_tol=1e-12):
                    raise AssertionError(f"item 1, budget {r['budget']}: {key} differ: {row[key]} vs {r[key]}")
    return ("thresholds, exit fractions, accuracies and costs identical" if exact else
            "thresholds, exit fractions and accuracies identical; costs to 1e-12 (summation order)")


def bench_sweep(sz: Sizes, log) -> list[Figure]:
    from repro.exits import budgeted_sweep

    num_exits, classes = 7, 100
    vz, vy = synthetic_outputs(num_exits, sz.sweep_val, classes, 0)
    tz, ty = synthetic_outputs(num_exits, sz.sweep_test, classes, 1)
    budgets = list(range(1, sz.sweep_budgets + 1))
    cpu = torch.device("cpu")
    with threads(1):
        log(f"  1. reference loop ({len(budgets)} budgets, {sz.sweep_val} val / {sz.sweep_test} test) ...")
        ref_holder: list = []
        t_ref = timed(lambda: ref_holder.append(reference_sweep(vz, vy, tz, ty, TABLE1_COSTS, budgets)), cpu,
                      clock="cpu")
        ours = budgeted_sweep(vz, vy, tz, ty, TABLE1_COSTS, budgets=budgets)
        agree = compare_sweeps(ours, ref_holder[0])
        t_ours = alternate({"ours": lambda: budgeted_sweep(vz, vy, tz, ty, TABLE1_COSTS, budgets=budgets)},
                           cpu, sz.sweep_repeats, clock="cpu")["ours"]
    size = (f"{len(budgets)} budgets, {sz.sweep_val} val / {sz.sweep_test} test, 7 exits, 100 classes, "
            f"1 thread, CPU time")
    return [Figure("1", "budgeted sweep: per-sample reference loop", t_ref, "s", note=size),
            Figure("1", "budgeted sweep: ours (repro.exits.budgeted_sweep)", t_ours * 1000, "ms", note=agree),
            Figure("1", "budgeted sweep: speed-up over the reference", t_ref / t_ours, "x",
                   f">= {TARGETS['sweep']:.0f}x", t_ref / t_ours >= TARGETS["sweep"])]


# --------------------------------------------------------------------------- 2. data pipeline


class PILImages(torch.utils.data.Dataset):
    """Images kept as an HWC uint8 array and turned into PIL images one at a time, as
    torchvision's CIFAR datasets do; ``transform`` is the authors' per-image pipeline."""

    def __init__(self, data: np.ndarray, targets: list[int], transform):
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def bench_data(sz: Sizes, device: torch.device, log, tag: str = "2") -> list[Figure]:
    from torchvision import transforms

    from repro.data import DATASETS, TensorBatches

    info = DATASETS["cifar10"]
    g = torch.Generator().manual_seed(0)
    n = sz.data_images
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    ours = TensorBatches(x.to(device), y.to(device), 64, info=info, train=True, augment="crop_flip",
                         channels_last=device.type == "cuda")

    def epoch():
        for xb, yb in ours:
            pass

    # ours: with one intra-op thread and with all (the reference's workers use all cores too)
    settings = [1, None] if device.type == "cpu" and torch.get_num_threads() > 1 else [None]
    ours_by = {}
    for n_threads in settings:
        with threads(n_threads):
            log(f"  {tag}. ours: {n} CIFAR-size images per epoch, {torch.get_num_threads()} thread(s) ...")
            ours_by[torch.get_num_threads()] = n / alternate({"ours": epoch}, device, 3)["ours"]
    best_threads = max(ours_by, key=ours_by.get)
    ours_ips = ours_by[best_threads]

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    ds = PILImages(x.permute(0, 2, 3, 1).numpy(), y.tolist(), tf)
    ref = {}
    for w in sz.data_ref_workers:
        log(f"  {tag}. torchvision per-image pipeline, DataLoader with {w} workers ...")
        loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=w,
                                             pin_memory=device.type == "cuda")
        with threads(1 if device.type == "cpu" else None), warnings.catch_warnings():
            # the authors' default of 4 workers is more than this machine's cores: that is the point
            warnings.filterwarnings("ignore", message=".*worker processes in total.*")
            it = iter(loader)
            next(it)  # workers started, first batch in

            def run():
                for _ in range(sz.data_ref_batches):
                    xb, yb = next(it)
                    xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

            ref[w] = sz.data_ref_batches * 64 / timed(run, device)
            del it
    best_w = max(ref, key=ref.get)
    ratio = ours_ips / ref[best_w]
    note = ", ".join(f"{w} workers {v:.0f} img/s" for w, v in ref.items())
    dev = "GPU" if device.type == "cuda" else f"CPU, {best_threads} intra-op thread(s)"
    mine = ", ".join(f"{k} thread(s) {v:.0f} img/s" for k, v in ours_by.items())
    return [Figure(tag, f"data: ours (TensorBatches crop+flip, {dev})", ours_ips, "img/s", note=mine),
            Figure(tag, "data: torchvision PIL transforms + DataLoader (best)", ref[best_w], "img/s", note=note),
            Figure(tag, "data: speed-up over torchvision", ratio, "x", f">= {TARGETS['data']:.0f}x",
                   ratio >= TARGETS["data"])]


# --------------------------------------------------------------------------- 3. MSDNet training


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds of the Conv2d and Linear layers of one forward, per sample."""
    total = [0.0]

    def conv_hook(m, inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inp, out):
        total[0] += out.numel() * m.in_features

    hs = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
          for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(x)
            model.train(was)
    finally:
        for h in hs:
            h.remove()
    return total[0] / x.shape[0]


def matmul_call(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 0.3
                ) -> tuple[Callable[[], None], float]:
    """A call of repeated n x n x n torch.matmul lasting about ``seconds``, and its FLOPs
    (2 n^3 per matmul): timed in alternation with the work it is the yardstick of."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    torch.matmul(a, b)
    once = timed(lambda: torch.matmul(a, b), device)
    reps = max(1, min(200, int(seconds / max(once, 1e-6))))

    def call():
        for _ in range(reps):
            torch.matmul(a, b)
    return call, 2.0 * n ** 3 * reps


def load_reference_msdnet(path: str | Path, num_classes: int = 100) -> nn.Module:
    """The authors' MSDNet (a checkout of kalviny/MSDNet-PyTorch) in the IMTA Table 1 config."""
    file = Path(path) / "models" / "msdnet.py"
    if not file.exists():
        from repro.config import ConfigError

        raise ConfigError(f"--ref-msdnet {path}: no models/msdnet.py there (a checkout of MSDNet-PyTorch)")
    spec = importlib.util.spec_from_file_location("_reference_msdnet", file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = SimpleNamespace(nBlocks=7, nChannels=16, base=1, step=1, stepmode="lin_grow", growthRate=6,
                           grFactor=[1, 2, 4], bnFactor=[1, 2, 4], nScales=3, prune="max", bottleneck=True,
                           reduction=0.5, data="cifar100" if num_classes == 100 else "cifar10",
                           num_classes=num_classes)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its layers
        return mod.MSDNet(args)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                amp_dtype: torch.dtype | None, scaler=None) -> Callable[[], None]:
    """One step as repro.train.fit takes it: forward, sum of the exits' CE, backward, SGD."""
    def step():
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x)
            loss = sum(F.cross_entropy(o, y) for o in out)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    return step


def bench_train(sz: Sizes, device: torch.device, ref_msdnet: str | None, log, out_dir: Path,
                tag: str = "3") -> list[Figure]:
    """Item 3.  Ours eager, and ours as ``repro --compile`` trains it (:func:`repro.train.compiled`,
    compiled afresh at each thread count, its compile time reported), against the reference
    (the authors' MSDNet timed side by side, or the issue's figure for it); judged at the
    setting where ours is fastest."""
    from repro.config import TrainSpec
    from repro.models.msdnet import msdnet_cifar_7exit
    from repro.train import compiled, cpp_compiler, cuda_amp_dtype, make_optimizer

    cuda = device.type == "cuda"
    amp_dtype = cuda_amp_dtype() if cuda else None
    spec = TrainSpec(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)  # IMTA phase I
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 100, (64,), generator=g).to(device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)

    def ours_model() -> nn.Module:
        torch.manual_seed(0)
        m = msdnet_cifar_7exit(num_classes=100, in_channels=3, gradient_equilibrium=True).to(device)
        return m.to(memory_format=torch.channels_last) if cuda else m

    def scaler():
        return torch.amp.GradScaler("cuda") if cuda and amp_dtype == torch.float16 else None

    def ours_step(compile_it: bool) -> Callable[[], None]:
        m = ours_model()
        return _train_step(compiled(m) if compile_it else m, make_optimizer(m.parameters(), spec), x, y,
                           amp_dtype, scaler())

    macs = conv_linear_macs(ours_model(), x[:1])
    fns = {"ours": ours_step(False)}
    if ref_msdnet:
        theirs = load_reference_msdnet(ref_msdnet).to(device)
        if cuda:
            theirs = theirs.to(memory_format=torch.channels_last)
        # their main.py: SGD, momentum 0.9, weight decay 1e-4 (no Nesterov)
        opt = torch.optim.SGD(theirs.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
        fns["reference"] = _train_step(theirs, opt, x, y, amp_dtype, scaler())

    settings = [None] if cuda else [None] + ([1] if torch.get_num_threads() > 1 else [])
    figures, judged = [], []
    compile_it = sz.train_compile and (cuda or cpp_compiler() is not None)
    if sz.train_compile and not compile_it:
        figures.append(Figure(tag, "MSDNet train: ours, compiled", float("nan"), "",
                              note="skipped: torch.compile on the CPU needs a C++ compiler (g++) on PATH"))
    for n_threads in settings:
        with threads(n_threads):
            label = "GPU" if cuda else f"{torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)}"
            variants = dict(fns)
            if compile_it:
                torch._dynamo.reset()  # CPU kernels are generated for the current thread count
                log(f"  {tag}. compiling MSDNet's training step (torch.compile, {label}) ...")
                variants["ours, compiled"] = ours_step(True)
                t0 = time.perf_counter()
                variants["ours, compiled"]()
                variants["ours, compiled"]()
                compile_s = time.perf_counter() - t0
            log(f"  {tag}. MSDNet IMTA Table 1 training step, batch 64, {label} ...")
            mm, mm_flops = matmul_call(device, amp_dtype or torch.float32, 8192 if cuda else sz.gemm_n)
            # one thread: CPU time (what an idle machine's wall-clock would be); more: wall-clock
            clock = "cpu" if not cuda and torch.get_num_threads() == 1 else "wall"
            t = alternate({**variants, "matmul": mm}, device, sz.train_steps, warmup=1, budget_s=sz.train_budget_s,
                          min_repeats=sz.train_min_steps, clock=clock)
        rate = mm_flops / t["matmul"]
        mm = f"{'bf16' if amp_dtype == torch.bfloat16 else 'fp16' if amp_dtype else 'fp32'} matmul"
        figures.append(Figure(tag, f"{mm} rate ({label})", rate / 1e9, "GFLOP/s",
                              note="CPU time" if clock == "cpu" else "wall-clock"))
        for name in [v for v in variants if v.startswith("ours")]:
            ips = 64 / t[name]
            frac = ips * macs * 3 * 2 / rate
            extra = f"; compiling took {compile_s:.0f} s" if name == "ours, compiled" else ""
            figures += [Figure(tag, f"MSDNet train: {name} ({label})", ips, "img/s",
                               note=f"{macs / 1e6:.1f} M conv+linear MACs/img{extra}"),
                        Figure(tag, f"MSDNet train: {name}, fraction of {mm} rate ({label})", 100 * frac, "%",
                               note="MACs x 3 (fwd+bwd) x 2 FLOP / matmul FLOP/s")]
            if "reference" in t:
                judged.append((ips, t["reference"] / t[name], name, label,
                               "vs MSDNet-PyTorch timed side by side", n_threads))
            else:
                judged.append((ips, frac / REF_MSDNET_FRACTION, name, label,
                               f"our fraction of the {mm} rate / the {REF_MSDNET_FRACTION:.0%} MSDNet-PyTorch reaches "
                               f"({REF_MSDNET_IMG_S:.0f} img/s on the issue's 2-core machine)", n_threads))
        if "reference" in t:
            rips = 64 / t["reference"]
            figures.append(Figure(tag, f"MSDNet train: MSDNet-PyTorch ({label})", rips, "img/s",
                                  note=f"{100 * rips * macs * 6 / rate:.1f} % of the {mm} rate"))
            if "ours, compiled" in t:
                figures.append(Figure(tag, f"MSDNet train: ours eager / MSDNet-PyTorch ({label})",
                                      t["reference"] / t["ours"], "x", note="both eager: the same kernels"))
    # judged at the setting where ours is fastest (the one a run would use)
    _, ratio, name, label, how, n_threads = max(judged, key=lambda j: j[0])
    ok = ratio >= TARGETS["train"]
    note = f"{name} at {label} (our fastest setting); {how}"
    if not ok:
        with threads(n_threads):
            note += f"; profile ({label}): {write_profile(out_dir, 'train', fns['ours'])}"
    figures.append(Figure(tag, "MSDNet train: ours / reference", ratio, "x", f">= {TARGETS['train']}x", ok, note))
    return figures


def write_profile(out_dir: Path, name: str, fn: Callable[[], object]) -> str:
    fn()
    text = profile_summary(lambda: [fn() for _ in range(2)])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile_{name}.txt"
    path.write_text(text)
    print(text, file=sys.stderr)
    return str(path)


# --------------------------------------------------------------------------- 4. real early exit


def predicted_speedup(fractions: torch.Tensor, cumulative: torch.Tensor) -> float:
    """Full cost / expected cost under early exit: ``cumulative[-1] / sum_k fractions[k] *
    cumulative[k]``, where ``cumulative[k]`` is the cost (MACs, or seconds) of running the
    net until exit k and ``fractions[k]`` the share of samples leaving there."""
    return float(cumulative[-1] / (fractions * cumulative).sum())


def early_exit_models() -> list[tuple[str, nn.Module, tuple[int, int, int], str]]:
    """The three quick-scale multi-exit nets (random weights), their input and exit score.

    MSDNet: IMTA's quick scale (5 exits, QUICK_ARGS), max-softmax confidence.
    GlanceNet: a plain DenseNet L=10, k=12 with bypasses after dense blocks 1 and 2 (the
    glancenet module's quick scale), entropy.  ResNet + d-gates: the ImageNet-style ResNet
    (Bottleneck) at width 8 with (1, 1, 2, 1) blocks (the dgate module's quick scale), gates
    after stages 1-3, max gate output.
    """
    from repro.models.densenet import glance_densenet
    from repro.models.msdnet import msdnet_cifar_5exit
    from repro.models.resnet import resnet_cifar_imagenet_style
    from repro.models.staged import GatedBackbone
    from repro.papers.imta import QUICK_ARGS

    shape = (1, 32, 32)  # Fashion-MNIST, padded to 32x32
    torch.manual_seed(0)
    return [
        ("MSDNet (IMTA quick)", msdnet_cifar_5exit(num_classes=10, in_channels=1, **QUICK_ARGS), shape, "confidence"),
        ("GlanceNet (DenseNet L=10 k=12)", glance_densenet(10, 12, False, num_classes=10, in_channels=1),
         shape, "entropy"),
        ("ResNet + d-gates (w8, 1-1-2-1)",
         GatedBackbone(resnet_cifar_imagenet_style(101, num_classes=10, in_channels=1, width=8, blocks=(1, 1, 2, 1)),
                       exits_after=(0, 1, 2)), shape, "max_logit"),
    ]


def bench_early_exit(sz: Sizes, device: torch.device, log, out_dir: Path, tag: str = "4",
                     prepare: bool = True) -> list[Figure]:
    """Item 4.  Both paths run the same inference copy of the net (``prepare``:
    :func:`repro.exits.inference_net`, BatchNorm folded into the preceding conv, channels_last);
    the FLOPs are counted (fvcore) on that copy."""
    from repro.exits import SCORES, early_exit, fit_thresholds, inference_net
    from repro.flops import count_exits
    from repro.train import cuda_amp_dtype

    cuda = device.type == "cuda"
    amp = (torch.autocast("cuda", dtype=cuda_amp_dtype())
           if cuda else contextlib.nullcontext())
    figures = []
    for name, net, shape, score in early_exit_models():
        net = inference_net(net, channels_last=True) if prepare else net.eval()
        costs = torch.tensor(count_exits(net, shape, "fvcore")["cost"].tolist(), dtype=torch.float64)
        net = net.to(device)
        k = net.num_exits
        g = torch.Generator().manual_seed(1)
        x = torch.randn(sz.ee_batch, *shape, generator=g).to(device).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), amp:
            scores = SCORES[score](torch.stack([z.float() for z in net(x)])).cpu()
        # equal shares (the geometric distribution of budget 20, q = 1): exit k takes
        # floor(n/K) of the samples the earlier exits left, on this calibration batch
        t = fit_thresholds(scores, torch.full((k,), 1.0 / k, dtype=torch.float64)).tolist()
        singles = list(x[: sz.ee_single].split(1))

        def full_batch():
            with torch.no_grad(), amp:
                net.forward_until(x, k - 1)

        def early_batch():
            with amp:
                return early_exit(net, x, t, score)

        def full_one():
            with torch.no_grad(), amp:
                for xi in singles:
                    net.forward_until(xi, k - 1)

        def early_one():
            with amp:
                return [early_exit(net, xi, t, score) for xi in singles]

        def upto(i: int, inputs: list[torch.Tensor]) -> Callable[[], None]:
            def run():
                with torch.no_grad(), amp:
                    for xi in inputs:
                        net.forward_until(xi, i)
            return run

        with threads(1 if not cuda else None):
            for mode, full, early, exits_of in (
                    ("batch 1", full_one, early_one, lambda r: torch.cat([e for _, e in r])),
                    (f"batch {sz.ee_batch}", full_batch, early_batch, lambda r: r[1])):
                log(f"  {tag}. early exit, {name}, {mode} ...")
                ex = exits_of(early()).cpu()
                frac = torch.bincount(ex, minlength=k).double() / ex.numel()
                predicted = predicted_speedup(frac, costs)
                # the full net stopped after each earlier exit: what the net's own times predict
                prefixes = {f"until exit {i}": upto(i, singles if mode == "batch 1" else [x]) for i in range(k - 1)}
                tm = alternate({"full": full, "early": early, **prefixes}, device, sz.ee_repeats, stat="min",
                               clock="wall" if cuda else "cpu")
                times = torch.tensor([tm[f"until exit {i}"] for i in range(k - 1)] + [tm["full"]], dtype=torch.float64)
                measured = tm["full"] / tm["early"]
                ratio = measured / predicted
                by_time = predicted_speedup(frac, times)
                ok = ratio >= TARGETS["early_exit"]
                note = (f"measured {measured:.2f}x, FLOPs predict {predicted:.2f}x; exit fractions "
                        + "/".join(f"{f:.2f}" for f in frac.tolist()))
                if not ok:
                    note += f"; profile: {write_profile(out_dir, f'early_exit_{len(figures)}', early)}"
                figures.append(Figure(tag, f"early exit: {name}, {mode}: measured / FLOPs speed-up", ratio, "",
                                      f">= {TARGETS['early_exit']}", ok, note))
                share = lambda v: "/".join(f"{f:.2f}" for f in (v / v[-1]).tolist())  # noqa: E731
                figures.append(Figure(
                    tag, f"early exit: {name}, {mode}: measured / per-exit-time speed-up", measured / by_time, "",
                    note=(f"the net stopped after each exit predicts {by_time:.2f}x; time until each exit "
                          f"{share(times)} of the full net's, FLOPs {share(costs)}")))
    return figures


# --------------------------------------------------------------------------- 5. peak memory


def _memory_child(batches: int, eval_limit: int | None, workdir: str) -> None:
    """A quick-scale training run (IMTA Table 1 phase I: quick MSDNet, 7 exits, GE, Fashion-MNIST
    55k/5k/10k in memory) for ``batches`` batches through repro.train.fit, then the per-exit
    outputs on validation and test and the per-exit cost count; prints its peak RSS."""
    from repro.config import DataSpec
    from repro.data import DataUnavailable, load_data
    from repro.exits import collect_logits
    from repro.flops import count_exits
    from repro.papers import imta
    from repro.train import fit

    torch.set_num_threads(1)
    dataset = "fashion-mnist"
    try:
        data = load_data(dataset, DataSpec(val_size=5000), batch_size=64)
    except DataUnavailable:
        dataset = "synthetic"
        data = load_data(dataset, DataSpec(val_size=200), batch_size=64)
    p1, _ = imta._phase_specs("quick", False)
    model = imta.MODELS["msdnet_cifar_7exit"](num_classes=data.info.num_classes, in_channels=data.info.in_channels,
                                              gradient_equilibrium=True, **imta.QUICK_ARGS)

    class Limited:
        def __init__(self, b, n):
            self.b, self.n = b, n

        def set_epoch(self, e):
            self.b.set_epoch(e)

        def __len__(self):
            return min(self.n, len(self.b))

        def __iter__(self):
            for i, item in enumerate(self.b):
                if i >= self.n:
                    return
                yield item

    class Head:
        def __init__(self, b, n):
            self.b, self.n = b, n

        def __iter__(self):
            seen = 0
            for x, y in self.b:
                if eval_limit is not None and seen >= self.n:
                    return
                seen += x.shape[0]
                yield x, y

    from dataclasses import replace

    t0 = time.perf_counter()
    fit(model, imta.make_step({}), Limited(data.train, batches), replace(p1, epochs=1),
        ckpt_path=Path(workdir) / "phase1.pt", phase="phase1", device=torch.device("cpu"), seed=0, log=lambda m: None)
    lim = eval_limit or 10 ** 9
    val = collect_logits(model, Head(data.val, lim))
    test = collect_logits(model, Head(data.test, lim))
    count_exits(model, (data.info.in_channels, 32, 32), "msdnet")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"peak_rss": rss, "dataset": dataset, "train_images": len(data.train_idx),
                      "val_logits": list(val.shape), "test_logits": list(test.shape),
                      "seconds": time.perf_counter() - t0}))


def bench_memory(sz: Sizes, log) -> list[Figure]:
    log(f"  5. quick-scale training run in a child process ({sz.mem_batches} batches) ...")
    with tempfile.TemporaryDirectory() as tmp:
        code = (f"from repro.bench import _memory_child; "
                f"_memory_child({sz.mem_batches}, {sz.mem_eval_limit!r}, {tmp!r})")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"item 5: the child run failed:\n{proc.stderr[-2000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    gib = max(info["peak_rss"], 0) / 2 ** 30
    note = (f"IMTA Table 1 phase I, quick MSDNet, {info['dataset']} ({info['train_images']} train images in memory), "
            f"{sz.mem_batches} batches + outputs on {info['val_logits'][1]} val / {info['test_logits'][1]} test; "
            f"getrusage(children) {children / 2 ** 30:.2f} GiB")
    return [Figure("5", "peak RSS of a quick-scale training run", gib, "GiB", f"< {TARGETS['memory_gib']:.0f} GiB",
                   gib < TARGETS["memory_gib"], note)]


# --------------------------------------------------------------------------- driver


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


def main(ref_msdnet: str | None = None, out: Path = Path("bench/results.csv"), quick: bool = False,
         items: Sequence[str] = ("1", "2", "3", "4", "5", "6"), sizes: Sizes | None = None) -> list[Figure]:
    """Run the benchmark (``items``: which of 1-6), print the table, write ``out`` (CSV, one
    row per figure, with the machine's description in every row)."""
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
        figures += bench_sweep(sz, log)
    if "2" in items:
        figures += bench_data(sz, cpu, log)
    if "3" in items:
        figures += bench_train(sz, cpu, ref_msdnet, log, out_dir)
    if "4" in items:
        figures += bench_early_exit(sz, cpu, log, out_dir)
    if "5" in items:
        figures += bench_memory(sz, log)
    if "6" in items:
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            mach["device"] = machine(gpu)["device"]
            log("  6. the GPU: AMP + channels_last, data on the GPU")
            figures += bench_data(sz, gpu, log, tag="6")
            figures += bench_train(sz, gpu, ref_msdnet, log, out_dir, tag="6")
            figures += bench_early_exit(sz, gpu, log, out_dir, tag="6")
        else:
            figures.append(Figure("6", "GPU: items 2-4 with AMP + channels_last", float("nan"), "",
                                  note="skipped: no CUDA device here"))
    seconds = time.perf_counter() - t0
    print_table(figures, mach)
    log(f"bench took {seconds:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([asdict(f) for f in figures])
    for k, v in mach.items():
        df[k] = v
    df["quick"] = quick
    df["date"] = time.strftime("%Y-%m-%d %H:%M")
    tmp = out.with_name(f".{out.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)
    log(f"wrote {out}")
    return figures
