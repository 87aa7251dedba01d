"""Item 5: peak resident memory of a quick-scale training run (IMTA Table 1 phase I on
Fashion-MNIST, in a child process).  Target < 4 GiB."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import TARGETS, Figure, FirstImages, Sizes


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
    from repro.models import create_model

    p1, _ = imta.phase_specs("quick")
    model = create_model("msdnet_cifar_7exit", num_classes=data.info.num_classes, in_channels=data.info.in_channels,
                         gradient_equilibrium=True, **imta.MODEL_ARGS["quick"])

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

    Head = FirstImages  # eval_limit None: lim is 10**9, every image

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


def _pythonpath() -> str:
    """The checkout holding benchmarks/ first: the child imports this module from any cwd."""
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def run(sz: Sizes, log) -> list[Figure]:
    log(f"  5. quick-scale training run in a child process ({sz.mem_batches} batches) ...")
    with tempfile.TemporaryDirectory() as tmp:
        code = (f"from benchmarks.item5_memory import _memory_child; "
                f"_memory_child({sz.mem_batches}, {sz.mem_eval_limit!r}, {tmp!r})")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": _pythonpath()})
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
