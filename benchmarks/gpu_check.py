"""``make gpu-check`` (``python -m benchmarks --gpu-check``): what only a GPU can check, on one GPU
in a few minutes, ending in one table.

1. the CUDA-marked tests (``pytest -m cuda``);
2. a paper-scale IMTA run, phase I then phase II (``repro imta fig7 --scale paper``: the CIFAR
   MSDNet), on fabricated CIFAR-100 files, 2 epochs of 150 steps each phase, AMP (bf16 where the GPU
   computes it natively), channels_last, the data held on the GPU;
3. the same command in another run store, SIGKILLed once phase I has checkpointed an epoch, then
   resumed: its results and weights against (2)'s, bit-identical or the largest difference;
4. ``torchrun --nproc_per_node 1`` with NCCL (a smoke-scale artifact);
5. benchmarks 2-4 on the GPU (benchmark 6: img/s, the fraction of the GPU's matmul rate, real
   early exit).

``--dry-run`` runs every step on the CPU at smoke sizes (gloo instead of NCCL, no AMP), so that the
script cannot rot where there is no GPU (tests/test_gpu_check.py runs it)."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    name: str
    ok: bool | None  # None: skipped
    seconds: float
    detail: str


def fake_cifar100(root: Path, n_train: int, n_test: int) -> Path:
    """CIFAR-100 files in torchvision's format (random images, labels 0-99) under ``root``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        d = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "fine_labels": (np.arange(n) % 100).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(d, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [str(i) for i in range(100)]}, fh)
    return root


def _env(dry: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "REPRO_JOBS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if dry:
        env["REPRO_THREADS"] = env.get("REPRO_THREADS", "1")
    return env


def _sh(cmd: list[str], dry: bool, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(dry), capture_output=True, text=True, timeout=timeout)


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error") or "Error" in ln:
            return ln[:200]
    return lines[-1][:200] if lines else ""


def imta_cmd(runs: Path, data: Path, dry: bool) -> list[str]:
    """Phase I + phase II of IMTA's CIFAR MSDNet: paper scale on the GPU (AMP is on by default
    there), smoke scale on the CPU in the dry mode."""
    if dry:
        scale = ["--scale", "smoke", "--device", "cpu", "--train-limit", "256", "--batch-size", "64"]
    else:
        scale = ["--scale", "paper", "--device", "cuda", "--train-limit", "9600", "--channels-last", "--amp"]
    return [sys.executable, "-m", "repro", "imta", "fig7", "--dataset", "cifar100", "--data-root", str(data),
            "--epochs", "2", *scale, "--runs-dir", str(runs), "--out-dir", str(runs.parent)]


def snapshot(runs: Path) -> dict:
    out = {}
    for d in sorted(p.parent for p in runs.glob("*/*/results.json")):
        out[d.name] = {"results": json.loads((d / "results.json").read_text()),
                       "model": torch.load(d / "model.pt", map_location="cpu", weights_only=True)}
    return out


def compare(a: dict, b: dict) -> tuple[bool, float]:
    """(bit-identical, largest absolute difference of any weight or result number)."""
    if a.keys() != b.keys() or not a:
        return False, float("inf")
    same, worst = True, 0.0

    def walk(x, y):
        nonlocal same, worst
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                same = False
                if x.is_floating_point():
                    worst = max(worst, float((x.double() - y.double()).abs().max()))
        elif isinstance(x, dict):
            for k in x:
                walk(x[k], y[k])
        elif isinstance(x, (list, tuple)):
            for u, v in zip(x, y):
                walk(u, v)
        elif x != y:
            same = False
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                worst = max(worst, abs(float(x) - float(y)))
    for k in a:
        walk(a[k], b[k])
    return same, worst


def _timed(name: str, fn: Callable[[], tuple[bool | None, str]], log) -> Step:
    log(f"gpu-check: {name} ...")
    t0 = time.perf_counter()
    try:
        ok, detail = fn()
    except Exception as e:  # a failed step is a row of the table, not the end of the check
        ok, detail = False, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    return Step(name, ok, time.perf_counter() - t0, detail)


def run(dry: bool = False, work: Path | None = None, log=None) -> list[Step]:
    """Every step (see the module's docstring); ``dry``: on the CPU at smoke sizes."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    cuda = torch.cuda.is_available()
    if not dry and not cuda:
        return [Step("GPU check", None, 0.0, "skipped: no CUDA device here (python -m benchmarks --gpu-check "
                                              "--dry-run runs it on the CPU)")]
    tmp = tempfile.TemporaryDirectory(prefix="gpu-check-") if work is None else None
    work = Path(tmp.name if tmp else work)
    data = fake_cifar100(work / "data", 9600 + 5000 if not dry else 5300, 10000 if not dry else 500)
    steps: list[Step] = []

    def cuda_tests():
        where = "tests/test_gpu_check.py" if dry else "tests"  # dry: the marker's wiring, not the whole suite
        r = _sh([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", where], dry, 600)
        ok = r.returncode in (0, 5)  # 5: nothing collected
        return ok, _last(r.stdout) or _last(r.stderr)
    steps.append(_timed("CUDA-marked tests (pytest -m cuda)", cuda_tests, log))

    ref_runs = work / "ref" / "runs"

    def imta():
        r = _sh(imta_cmd(ref_runs, data, dry), dry, 600)
        if r.returncode != 0:
            return False, _last(r.stderr)
        metas = [json.loads(p.read_text()) for p in ref_runs.glob("*/*/meta.json")]
        res = [json.loads(p.read_text()) for p in sorted(ref_runs.glob("*/*/results.json"))]
        acc = "/".join(f"{a:.1f}" for a in res[-1].get("test_acc", [])) if res else "?"
        secs = sum(m.get("seconds", 0) for m in metas)
        steps = "2 x 4" if dry else "2 x 150"
        return len(res) == 2, (f"{len(res)} runs, {steps} steps each at batch 64, training {secs:.0f} s, on "
                               f"{metas[0]['device'] if metas else '?'}; test acc per exit {acc} (random data)")
    steps.append(_timed("IMTA phase I + II, paper scale, fabricated CIFAR-100" +
                        (" (dry: smoke, CPU)" if dry else ", AMP + channels_last"), imta, log))

    def kill_resume():
        runs = work / "killed" / "runs"
        proc = subprocess.Popen(imta_cmd(runs, data, dry), cwd=ROOT, env=_env(dry), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        try:
            while proc.poll() is None and time.time() < deadline and not list(runs.glob("*/*/ckpt/*.pt")):
                time.sleep(0.05)
            if proc.poll() is not None:
                return False, "the run finished before its first checkpoint: nothing was killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        r = _sh(imta_cmd(runs, data, dry), dry, 600)
        if r.returncode != 0:
            return False, _last(r.stderr)
        resumed = "resuming at epoch" in r.stderr
        same, worst = compare(snapshot(ref_runs), snapshot(runs))
        how = "bit-identical to" if same else f"largest difference {worst:.3g} from"
        ok = resumed and (same or worst < 1e-2)
        return ok, (f"killed after phase I's first checkpoint, {'resumed from it' if resumed else 'NOT resumed'}; "
                    f"{how} the uninterrupted run")
    steps.append(_timed("kill (SIGKILL) and resume" + (" (dry: CPU)" if dry else " of the CUDA run"), kill_resume, log))

    def torchrun():
        runs = work / "ddp" / "runs"
        dev = "cpu" if dry else "cuda"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "repro",
               "imta", "fig7", "--scale", "smoke", "--device", dev, "--runs-dir", str(runs),
               "--out-dir", str(runs.parent)]
        r = _sh(cmd, dry, 300)
        backend = "gloo" if dry else os.environ.get("REPRO_DIST_BACKEND", "nccl")
        n = len(list(runs.glob("*/*/results.json")))
        return r.returncode == 0 and n == 2, f"{backend}; {n} runs trained" + ("" if r.returncode == 0 else
                                                                             f": {_last(r.stderr)}")
    steps.append(_timed("torchrun --nproc_per_node 1" + (" (dry: gloo, CPU)" if dry else " (NCCL)"), torchrun, log))

    bench_rows: list = []

    def bench():
        from benchmarks import item2_data, item3_train, item4_early_exit, item6_cuda
        from benchmarks.harness import QUICK, machine

        out_dir = work / "bench"
        if dry:
            torch.set_num_threads(1)  # one setting of benchmark 3, and no thrashing on a shared machine
            sz = replace(QUICK, data_images=2000, data_ref_batches=4, data_ref_workers=(0,), gemm_n=256,
                         train_steps=1, train_budget_s=1.0, ee_batch=32, ee_single=4, ee_repeats=1)
            cpu = torch.device("cpu")
            rows = (item2_data.run(sz, cpu, log, tag="6") + item3_train.run(sz, cpu, None, log, out_dir, tag="6")
                    + item4_early_exit.run(sz, cpu, log, out_dir, tag="6"))
        else:
            rows = item6_cuda.run(replace(QUICK, train_compile=False), None, log, out_dir, machine(torch.device("cpu")))
        bench_rows.extend(rows)
        ee = [f for f in rows if f.figure.startswith("early exit") and f.target]
        missed = sum(f.passed is False for f in rows)
        # the check is that they run on the device; a missed speed target is shown in its row
        return True, (f"{len(rows)} figures, {missed} target(s) missed (rows below); real early exit "
                      "measured / FLOPs speed-up " + ", ".join(f"{f.value:.2f}" for f in ee))
    steps.append(_timed("benchmarks 2-4 on the " + ("CPU (dry)" if dry else "GPU") + " (benchmark 6)", bench, log))
    for f in bench_rows:
        if f.unit in ("img/s", "%", "GFLOP/s", "TFLOP/s") or f.figure.startswith("early exit"):
            steps.append(Step(f"  {f.figure}", f.passed, 0.0, f"{f.value:,.4g} {f.unit}".strip()))
    if tmp is not None:
        tmp.cleanup()
    return steps


def print_table(steps: list[Step], device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"repro gpu-check: {device}")
    for col in ("step", "result", "seconds", "detail"):
        table.add_column(col, overflow="fold", max_width=90 if col == "detail" else None)
    for s in steps:
        mark = "skipped" if s.ok is None and not s.name.startswith("  ") else \
            ("" if s.ok is None else ("pass" if s.ok else "FAIL"))
        table.add_row(s.name, mark, f"{s.seconds:.0f}" if s.seconds else "", s.detail)
    Console(width=200).print(table)


def main(dry: bool = False) -> int:
    """Run the check, print its table; exit status 1 if a step failed."""
    t0 = time.perf_counter()
    device = (f"CPU dry run ({torch.__version__})" if dry else
              f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})" if torch.cuda.is_available() else "no GPU")
    steps = run(dry)
    print_table(steps, device)
    print(f"gpu-check took {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 1 if any(s.ok is False and not s.name.startswith("  ") for s in steps) else 0
