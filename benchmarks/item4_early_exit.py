"""Item 4: real early exit (:func:`repro.exits.early_exit`) at batch 1 and batch 256
(compaction) for the quick-scale MSDNet, GlanceNet and ResNet + d-gates, random weights,
thresholds fitted so that an equal share of a calibration batch leaves at each exit: measured
speed-up over the full network / the speed-up the FLOPs predict (fvcore MACs, actual exit
fractions).  Target >= 0.8."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from benchmarks.harness import TARGETS, Figure, Sizes, alternate, write_profile
from repro.nn import threads


def predicted_speedup(fractions: torch.Tensor, cumulative: torch.Tensor) -> float:
    """Full cost / expected cost under early exit: ``cumulative[-1] / sum_k fractions[k] *
    cumulative[k]``, where ``cumulative[k]`` is the cost (MACs, or seconds) of running the
    net until exit k and ``fractions[k]`` the share of samples leaving there."""
    return float(cumulative[-1] / (fractions * cumulative).sum())


def early_exit_models() -> list[tuple[str, nn.Module, tuple[int, int, int], str]]:
    """The three quick-scale multi-exit nets (random weights), their input and exit score.

    MSDNet: IMTA's quick scale (5 exits, ``imta.MODEL_ARGS["quick"]``), max-softmax confidence.
    GlanceNet: a plain DenseNet L=10, k=12 with bypasses after dense blocks 1 and 2 (the
    glancenet module's quick scale), entropy.  ResNet + d-gates: the ImageNet-style ResNet
    (Bottleneck) at width 8 with (1, 1, 2, 1) blocks (the dgate module's quick scale), gates
    after stages 1-3, max gate output.
    """
    from repro.models.densenet import glance_densenet
    from repro.models.msdnet import msdnet_cifar_5exit
    from repro.models.resnet import resnet_cifar_imagenet_style
    from repro.models.staged import GatedBackbone
    from repro.papers.imta import MODEL_ARGS

    shape = (1, 32, 32)  # Fashion-MNIST, padded to 32x32
    torch.manual_seed(0)
    return [
        ("MSDNet (IMTA quick)", msdnet_cifar_5exit(num_classes=10, in_channels=1, **MODEL_ARGS["quick"]), shape,
         "confidence"),
        ("GlanceNet (DenseNet L=10 k=12)", glance_densenet(10, 12, False, num_classes=10, in_channels=1),
         shape, "entropy"),
        ("ResNet + d-gates (w8, 1-1-2-1)",
         GatedBackbone(resnet_cifar_imagenet_style(101, num_classes=10, in_channels=1, width=8, blocks=(1, 1, 2, 1)),
                       exits_after=(0, 1, 2)), shape, "max_logit"),
    ]


def run(sz: Sizes, device: torch.device, log, out_dir: Path, tag: str = "4",
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
