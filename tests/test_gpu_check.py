"""``make gpu-check`` (benchmarks/gpu_check.py): its pieces, its dry mode on the CPU (so that it
cannot rot without a GPU), and the CUDA-marked tests it runs first (skipped without a GPU)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_fabricated_cifar100_loads_as_cifar100(tmp_path):
    from repro.data import load_arrays

    gpu_check.fake_cifar100(tmp_path, 30, 10)
    a = load_arrays("cifar100", tmp_path, download=False)
    assert a.train_x.shape == (30, 3, 32, 32) and a.test_y.tolist() == list(range(10))


def test_compare_tells_identical_from_different():
    a = {"r": {"results": {"acc": [1.0, 2.0]}, "model": {"w": torch.ones(3)}}}
    b = {"r": {"results": {"acc": [1.0, 2.0]}, "model": {"w": torch.ones(3) + 1e-4}}}
    assert gpu_check.compare(a, a) == (True, 0.0)
    same, worst = gpu_check.compare(a, b)
    assert not same and worst == pytest.approx(1e-4, rel=1e-3)
    assert gpu_check.compare(a, {}) == (False, float("inf"))


def test_without_a_gpu_the_check_says_skipped(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    steps = gpu_check.run(dry=False)
    assert len(steps) == 1 and steps[0].ok is None and "--dry-run" in steps[0].detail


def test_gpu_check_commands_name_the_gpu_settings(tmp_path):
    cmd = gpu_check.imta_cmd(tmp_path / "runs", tmp_path, dry=False)
    for flag in ("--scale paper", "--device cuda", "--channels-last", "--amp", "--dataset cifar100", "--epochs 2"):
        assert flag in " ".join(cmd)
    assert "--device cpu" in " ".join(gpu_check.imta_cmd(tmp_path / "runs", tmp_path, dry=True))


@pytest.mark.slow
def test_gpu_check_dry_run_passes_on_the_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--gpu-check", "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    for step in ("CUDA-marked tests", "IMTA phase I + II", "kill (SIGKILL) and resume", "torchrun",
                 "benchmarks 2-4"):
        line = next(ln for ln in r.stdout.splitlines() if step in ln)
        assert "pass" in line, line
    assert "bit-identical" in r.stdout


# ---------------------------------------------------------------- run by `make gpu-check` on a GPU

@pytest.mark.cuda
@needs_cuda
def test_cuda_amp_dtype_is_bf16_where_the_gpu_computes_it():
    from repro.train import cuda_amp_dtype

    native = torch.cuda.get_device_capability()[0] >= 8
    assert cuda_amp_dtype() == (torch.bfloat16 if native else torch.float16)


@pytest.mark.cuda
@needs_cuda
def test_a_smoke_run_trains_on_cuda_with_amp_and_channels_last(tmp_path):
    import json

    from repro.cli import main

    main(["imta", "fig7", "--scale", "smoke", "--device", "cuda", "--channels-last", "--runs-dir",
          str(tmp_path / "runs"), "--out-dir", str(tmp_path)])
    metas = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/*/meta.json")]
    assert len(metas) == 2 and all(m["device"].startswith("cuda") for m in metas)
