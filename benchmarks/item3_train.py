"""Item 3: the MSDNet training step in the IMTA Table 1 configuration (batch 64): img/s and
the fraction of the machine's measured fp32 matmul rate it reaches (conv + linear MACs x 3 for
forward and backward, 2 FLOPs per MAC).  Target >= 1.2x the authors' MSDNet-PyTorch: timed
side by side when a checkout is given (``--ref-msdnet PATH``), else against the fraction of
the matmul rate it reaches on the issue's 2-core machine (34 %)."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import TARGETS, Figure, Sizes, alternate, write_profile
from repro.nn import threads
from repro.timing import timed

# The authors' figures quoted for the 2-core machine these benchmarks run on.
REF_MSDNET_IMG_S = 69.0       # MSDNet-PyTorch, IMTA Table 1 config, batch 64, CPU, 2 threads
REF_MSDNET_FRACTION = 0.34    # ... as a fraction of that machine's fp32 matmul rate


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


def run(sz: Sizes, device: torch.device, ref_msdnet: str | None, log, out_dir: Path,
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
