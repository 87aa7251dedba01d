"""Bias loss and SkipblockNet: Abrahamyan et al., "Bias Loss for Mobile Neural Networks", ICCV 2021.

Bias loss (eqs. 1-6 and the clamp of Sec. 5): v_i, the unbiased variance of sample i's last
convolutional feature map (detached); v scaled to [0, 1] by min-max over the batch;
z(v) = exp(α·v) - β with α = β = 0.3, clamped to [0.5, 1.5]; L = mean_i z(v_i)·CE_i.  The
authors' code's variants (running-minimum scaling, no clamp, the first release's formula)
are ``--set`` options.  Baselines: cross-entropy, and focal loss mean_i (1 - p_t)^γ·CE_i
with γ = 2.  The models are the CIFAR compact CNNs of Table 4 (:mod:`repro.models.compact`)
and SkipblockNet with the MobileNetV3 baselines (:mod:`repro.models.skipblocknet`), whose
``forward_with_features`` gives the loss its feature map from the same forward pass.
docs/papers/biasloss.md lists every choice and deviation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from repro.api import (Artifact, Claim, ConfigError, DataSpec, Figure, Option, Options, Paper, RunConfig, Table,
                       TrainSpec, build_model)
from repro.data import run_info
from repro.exits import (collect_logits, correct_per_seed, gap_with_spread, mean_and_spread, time_call,
                         top1_with_spread, topk_accuracy)
from repro.exits import cpu_model as cpu_name
from repro.flops import CONVENTIONS, count_model
from repro.models import create_model, skipblocknet
from repro.nn import threads as num_threads  # n intra-op threads inside a block, restored after
from repro.reference_data import load_reference, paper_gap, paper_value
from repro.render import beside_paper
from repro.scales import CIFAR_SIZE, IMAGENET_SIZE, run_data
from repro.train import tracked

PAPER_NAME = "biasloss"
COST = "fvcore"  # the paper's "FLOPs" are multiply-adds (MobileNetV3 convention); fvcore's MACs, BN included

# ============================================================================ losses


def feature_variance(features: torch.Tensor) -> torch.Tensor:
    """Per-sample unbiased variance (eq. 1) of a detached N×C×H×W map over C·H·W, in float32.

    A map of a single element has no unbiased variance; it gets 0 (no spread).
    """
    f = features.detach().float().flatten(1)
    return f.var(1, correction=1 if f.shape[1] > 1 else 0)


def _global_min_max(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch min and max; under torch.distributed, over the global batch (all ranks)."""
    lo, hi = v.min(), v.max()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        both = torch.stack([-lo, hi])
        torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
        lo, hi = -both[0], both[1]
    return lo, hi


def scale_variance(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, reference_min: torch.Tensor | None = None,
                   eps: float = 1e-8) -> torch.Tensor:
    """Min-max scaling (eq. 3): (v - m) / (hi - lo), m = lo ("local") or ``reference_min``
    (the code's running minimum, "global").  No spread (hi - lo <= eps): all zeros."""
    m = lo if reference_min is None else reference_min
    span = hi - lo
    scaled = (v - m) / span.clamp_min(eps)
    return torch.where(span > eps, scaled, torch.zeros_like(scaled))


def bias_function(v: torch.Tensor, alpha: float = 0.3, beta: float = 0.3, formula: str = "paper",
                  clamp: tuple[float, float] | None = (0.5, 1.5)) -> torch.Tensor:
    """z(v) = exp(alpha v) - beta (eq. 6), or the first released code's exp(beta v) - 1 + alpha."""
    if formula == "paper":
        z = torch.exp(alpha * v) - beta
    elif formula == "code_v1":
        z = torch.exp(beta * v) - 1.0 + alpha
    else:
        raise ConfigError(f"unknown bias formula '{formula}'; choose one of: paper, code_v1")
    return z.clamp(clamp[0], clamp[1]) if clamp is not None else z


class CrossEntropy(nn.Module):
    """Plain cross-entropy; ignores the features."""

    def forward(self, logits: torch.Tensor, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) for multi-class: mean_i (1 - p_t)^gamma · (-log p_t), no alpha term."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logp_t = F.log_softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
        p_t = logp_t.exp()
        return (-(1 - p_t).clamp_min(0) ** self.gamma * logp_t).mean()


class BiasLoss(nn.Module):
    """Bias loss (eqs. 1-6): mean_i z(v_i) · CE_i, with v_i the scaled variance of sample i's
    detached feature map.  ``scaling="global"`` keeps a running minimum (a buffer, so it is
    checkpointed with the training state and resumes exactly)."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.3, scaling: str = "local",
                 clamp: tuple[float, float] | None = (0.5, 1.5), formula: str = "paper", eps: float = 1e-8):
        super().__init__()
        if scaling not in ("local", "global"):
            raise ConfigError(f"unknown bias scaling '{scaling}'; choose one of: local, global")
        bias_function(torch.zeros(1), alpha, beta, formula, clamp)  # validates the formula
        self.alpha, self.beta, self.scaling, self.formula, self.eps = float(alpha), float(beta), scaling, formula, eps
        self.clamp = tuple(clamp) if clamp is not None else None
        self.register_buffer("running_min", torch.tensor(math.inf))

    def weights(self, features: torch.Tensor) -> torch.Tensor:
        """z(v_i) for every sample of the batch (no gradient)."""
        with torch.no_grad():
            v = feature_variance(features)
            lo, hi = _global_min_max(v)
            ref = None
            if self.scaling == "global":
                if self.training:
                    self.running_min.copy_(torch.minimum(self.running_min, lo.to(self.running_min)))
                ref = torch.minimum(self.running_min.to(v), lo)
            return bias_function(scale_variance(v, lo, hi, ref, self.eps), self.alpha, self.beta, self.formula,
                                 self.clamp)

    def forward(self, logits: torch.Tensor, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.weights(features)
        return (z * F.cross_entropy(logits.float(), y, reduction="none")).mean()


LOSSES = ("ce", "focal", "bias")


def make_loss(method: dict) -> nn.Module:
    kind = method.get("loss", "ce")
    if kind == "ce":
        return CrossEntropy()
    if kind == "focal":
        return FocalLoss(method.get("gamma", 2.0))
    if kind == "bias":
        clamp = method.get("clamp", [0.5, 1.5])
        return BiasLoss(method.get("alpha", 0.3), method.get("beta", 0.3), method.get("scaling", "local"),
                        tuple(clamp) if clamp else None, method.get("formula", "paper"), method.get("eps", 1e-8))
    raise ConfigError(f"unknown loss '{kind}'; choose one of: {', '.join(LOSSES)}")


class WithFeatures(nn.Module):
    """``forward(x) -> (logits, features)`` of a model with the feature interface: the module
    the engine wraps in DDP, so that the training step calls DDP's forward (gradients synced)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_with_features(x)


def make_step(loss_fn: nn.Module):
    def step(model, x, y):
        logits, features = model(x)
        return loss_fn(logits, features, y), logits
    return step


def method_for(loss: str, request=None) -> dict:
    """The ``method`` dict of a run trained with ``loss``; only the chosen loss's options enter
    it, so changing a bias-loss option does not retrain the CE and focal runs."""
    opts = OPTIONS.read(request)
    if loss == "ce":
        return {"loss": "ce"}
    if loss == "focal":
        return {"loss": "focal", "gamma": opts.focal_gamma}
    if loss == "bias":
        return {"loss": "bias", "alpha": opts.bias_alpha, "beta": opts.bias_beta, "scaling": opts.bias_scaling,
                "clamp": [0.5, 1.5] if opts.bias_clamp else None, "formula": opts.bias_formula, "eps": 1e-8}
    raise ConfigError(f"unknown loss '{loss}'; choose one of: {', '.join(LOSSES)}")

# ============================================================================ models


@dataclass(frozen=True)
class Arch:
    """A row of a table: the paper's architecture and its reduced versions (``model_args`` by scale)."""
    key: str                 # row key of the reference CSV
    label: str
    model: str               # registered model name (repro.models.compact / skipblocknet)
    paper: dict
    quick: dict = field(default_factory=dict)
    smoke: dict = field(default_factory=dict)

    def args(self, scale: str) -> dict:
        return dict({"paper": self.paper, "quick": self.quick, "smoke": self.smoke}[scale])


# Table 4's CIFAR models.  Paper scale: the CIFAR-adapted models of repro.models.compact.
# Quick / smoke: the first conv at stride 2 (32x32 input processed at 16x16) and
# narrower / shallower versions, to fit 2 CPU cores.
COMPACT = {a.key: a for a in [
    Arch("shufflenetv2-0.5x", "ShuffleNetV2 0.5x", "shufflenetv2", {"width": 0.5},
         {"width": 0.5, "stem_stride": 2}, {"width": 0.5, "stem_stride": 2}),
    Arch("mobilenetv2-0.75x", "MobileNetV2 0.75x", "mobilenetv2", {"width": 0.75},
         {"width": 0.25, "stem_stride": 2}, {"width": 0.25, "stem_stride": 2}),
    Arch("nasnet-a-n4", "NASNet-A (N=4)", "nasnet_a", {"N": 4, "filters": 44},
         {"N": 1, "filters": 8, "stem_stride": 2}, {"N": 1, "filters": 4, "stem_stride": 2}),
    Arch("squeezenet", "SqueezeNet", "squeezenet", {"version": "1_0", "bn": True},
         {"version": "1_1", "bn": True, "stem_stride": 2}, {"version": "1_1", "bn": True, "stem_stride": 2}),
    Arch("densenet-k12", "DenseNet (k=12)", "densenet",
         {"depth": 100, "growth": 12, "bottleneck": False, "compression": 1.0},
         {"depth": 16, "growth": 12, "bottleneck": True, "compression": 0.5, "stem_stride": 2},
         {"depth": 10, "growth": 6, "bottleneck": True, "compression": 0.5, "stem_stride": 2}),
]}
DENSENET_CHOICES = {
    "k12": ("densenet", {"depth": 100, "growth": 12, "bottleneck": False, "compression": 1.0}),
    "bc": ("densenet", {"depth": 100, "growth": 12, "bottleneck": True, "compression": 0.5}),
    "121": ("densenet121", {}),
}

# The SkipblockNet family and the MobileNetV3 baselines (ImageNet models; ImageNet stem,
# stride 2, at every scale).  Reduced scales multiply every width by FAMILY_WIDTH.
# SkipblockNet: the authors' first block (its 1x1 expansion conv; --set first_block=torchvision drops it).
# MobileNetV3: the classifier's hidden layer stays 1280 at every width, as the MobileNetV3 reference
# whose counts Table 1 prints (--set mnv3_last_channel=scaled: torchvision's builders' 1280·w).
_SBN = {"first_block": "authors"}
FAMILY = {a.key: a for a in [
    Arch("skipblocknet-xs", "SkipblockNet-XS", "skipblocknet", {"width_mult": 0.5, "mode": "small", **_SBN}),
    Arch("skipblocknet-s", "SkipblockNet-S", "skipblocknet", {"width_mult": 0.75, "mode": "small", **_SBN}),
    Arch("skipblocknet-m", "SkipblockNet-M", "skipblocknet", {"width_mult": 1.0, "mode": "large", **_SBN}),
    Arch("skipblocknet-l", "SkipblockNet-L", "skipblocknet", {"width_mult": 1.15, "mode": "large", **_SBN}),
    Arch("mobilenetv3-small-1.0x", "MobileNetV3-Small 1.0x", "mobilenetv3_small", {"width_mult": 1.0}),
    Arch("mobilenetv3-large-0.75x", "MobileNetV3-Large 0.75x", "mobilenetv3_large",
         {"width_mult": 0.75, "last_channel": 1280}),
    Arch("mobilenetv3-large-1.0x", "MobileNetV3-Large 1.0x", "mobilenetv3_large", {"width_mult": 1.0}),
    Arch("mobilenetv3-large-1.05x", "MobileNetV3-Large 1.05x", "mobilenetv3_large",
         {"width_mult": 1.05, "last_channel": 1280}),
    Arch("mobilenetv3-large-1.25x", "MobileNetV3-Large 1.25x", "mobilenetv3_large",
         {"width_mult": 1.25, "last_channel": 1280}),
]}
FAMILY_WIDTH = {"paper": 1.0, "quick": 0.5, "smoke": 0.25}
# MobileNetV3's BN momentum 0.01 (TF 0.99) averages over ~100 steps: on a 1-epoch schedule the running
# statistics lag the weights and eval-mode accuracy collapses (measured: 83 % in train mode, 9 % in eval
# mode after one quick epoch).  PyTorch's default 0.1 at reduced scales.
FAMILY_BN_MOMENTUM = {"paper": None, "quick": 0.1, "smoke": 0.1}
FIRST_BLOCKS = skipblocknet.FIRST_BLOCKS
MNV3_LAST = ("fixed", "scaled")
# Table 1's rows, grouped by cost as in the paper; (SkipblockNet, the MobileNetV3 it is compared with)
TABLE1_ROWS = ["mobilenetv3-small-1.0x", "skipblocknet-xs", "mobilenetv3-large-0.75x", "skipblocknet-s",
               "mobilenetv3-large-1.0x", "skipblocknet-m", "mobilenetv3-large-1.25x", "skipblocknet-l"]
TABLE1_PAIRS = [("skipblocknet-xs", "mobilenetv3-small-1.0x"), ("skipblocknet-s", "mobilenetv3-large-0.75x"),
                ("skipblocknet-m", "mobilenetv3-large-1.0x"), ("skipblocknet-l", "mobilenetv3-large-1.25x")]


def family_args(arch: Arch, scale: str, request=None) -> dict:
    """model_args of a family row at ``scale`` (the request's ``first_block`` / ``mnv3_last_channel``)."""
    opts = OPTIONS.read(request)
    a = dict(arch.paper)
    a["width_mult"] = round(a["width_mult"] * FAMILY_WIDTH[scale], 6)
    if arch.model == "skipblocknet" and opts.first_block == "torchvision":
        a.pop("first_block", None)
    if arch.model in skipblocknet.MNV3_LAST_CHANNEL:
        # the paper-width model's last channel, reduced with the scale; written only where it differs from
        # torchvision's make_divisible(last · width)
        a.pop("last_channel", None)
        base = skipblocknet.MNV3_LAST_CHANNEL[arch.model]
        last = skipblocknet.make_divisible(base * FAMILY_WIDTH[scale])
        if opts.mnv3_last_channel == "fixed" and last != skipblocknet.make_divisible(
                base * a["width_mult"]):
            a["last_channel"] = last
    if FAMILY_BN_MOMENTUM[scale] is not None:
        a["bn_momentum"] = FAMILY_BN_MOMENTUM[scale]
    return a


def compact_arch(request, key: str, scale: str | None = None) -> tuple[str, dict]:
    """(model, args) of a Table 4 row at ``scale`` with the request's options applied."""
    scale = scale or request.scale
    arch = COMPACT[key]
    model, args, opts = arch.model, arch.args(scale), OPTIONS.read(request)
    if key == "shufflenetv2-0.5x":
        args["width"] = opts.shufflenet_width
    if key == "squeezenet":
        args["bn"] = opts.squeezenet == "bn"
    if key == "densenet-k12":
        choice = opts.densenet
        if scale == "paper":  # the choice is between paper-scale DenseNets
            model, args = DENSENET_CHOICES[choice][0], dict(DENSENET_CHOICES[choice][1])
    return model, args


# ============================================================================ schedules

# Quick: the convergence rule's protocol (docs/calibration.md): all 55k images, 10 epochs of cosine
# decay with a short warm-up, crop + flip (the authors' train.py), channels_last (1.3-2.3x faster on
# these nets on the CPU, bench item 7).  Smoke: one epoch, no augmentation.
REDUCED_RECIPES = {
    "quick": TrainSpec(epochs=10, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                       schedule="cosine", warmup_epochs=0.5, memory_format="channels_last"),
    "smoke": TrainSpec(epochs=1, batch_size=64, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                       schedule="constant"),
}
# Table 4's CIFAR-100 recipes at paper scale (--set cifar_recipe) and their augmentation.
CIFAR_RECIPES = {
    # paper Sec. 5.2 (= weiaicunzai/pytorch-cifar100): SGD 0.9, wd 5e-4, lr 0.1 x0.2 at 60/120/160 of 200,
    # batch 128, one warm-up epoch; flip + rotation (+-15 deg) + crop 32 pad 4
    "paper": (TrainSpec(epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                        milestones=(0.3, 0.6, 0.8), gamma=0.2, warmup_epochs=1.0), "crop_flip_rotate"),
    # the authors' train.py: 160 epochs, wd 1e-4, x0.1 at 80 and 122, crop + flip, incomplete batches skipped
    "code": (TrainSpec(epochs=160, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4,
                       milestones=(80 / 160, 122 / 160), gamma=0.1, drop_last=True), "crop_flip"),
}


def _imagenet_recipe(epochs: int = 350, warmup: float = 3.0) -> TrainSpec:
    """The ImageNet recipe (paper Sec. 5.1, EfficientNet's): TensorFlow's RMSProp (decay 0.9, momentum 0.9;
    epsilon 1e-3, EfficientNet's), weight decay 1e-5, batch 512, lr warmed up to 0.032 over 3 epochs then x0.97
    every 2.4 epochs, weight EMA 0.99995 (per step); 350 epochs (the paper gives none: EfficientNet's)."""
    steps = tuple((warmup + 2.4 * k) / epochs for k in range(1, int((epochs - warmup) / 2.4) + 1))
    return TrainSpec(epochs=epochs, batch_size=512, lr=0.032, optimizer="rmsprop_tf", rmsprop_alpha=0.9,
                     rmsprop_eps=1e-3, momentum=0.9, weight_decay=1e-5, milestones=steps, gamma=0.97,
                     warmup_epochs=warmup, ema_decay=0.99995)


IMAGENET_RECIPE = _imagenet_recipe()


def cifar_spec(request) -> tuple[TrainSpec, str]:
    """Table 4's CIFAR-100 recipe (TrainSpec, augmentation)."""
    if request.scale in REDUCED_RECIPES:
        return REDUCED_RECIPES[request.scale], "none"
    return CIFAR_RECIPES[OPTIONS.read(request).cifar_recipe]


def imagenet_spec(request) -> TrainSpec:
    return REDUCED_RECIPES.get(request.scale, IMAGENET_RECIPE)


# ============================================================================ runs


def _data_spec(request, dataset: str, augment: str, paper_size: int = CIFAR_SIZE) -> DataSpec:
    """At ``paper_size`` at paper scale (224 for the ImageNet families); every model takes any size.
    Reduced scales: no augmentation (one epoch sees every image once: augmentation only slows
    convergence; measured on MobileNetV3-L x0.5, 20k images: 82.2 % without, 74.4 % with crop + flip)."""
    return run_data(request, dataset, paper_size,
                    augment={"quick": "crop_flip", "smoke": "none"}.get(request.scale, augment))


def compact_run(request, key: str, loss: str) -> RunConfig:
    """A Table 4 run: a CIFAR compact model trained with ``loss`` (CIFAR-100 at paper scale)."""
    dataset = request.dataset_for("cifar100")
    spec, augment = cifar_spec(request)
    model, args = compact_arch(request, key)
    return RunConfig(paper=PAPER_NAME, name=f"{key}-{loss}", kind="train", dataset=dataset, model=model,
                     model_args=args, method=method_for(loss, request), train=spec,
                     data=_data_spec(request, dataset, augment))


def family_run(request, key: str, loss: str) -> RunConfig:
    """A SkipblockNet / MobileNetV3 run (ImageNet at paper scale)."""
    dataset = request.dataset_for("imagenet")
    arch = FAMILY[key]
    return RunConfig(paper=PAPER_NAME, name=f"{key}-{loss}", kind="train", dataset=dataset, model=arch.model,
                     model_args=family_args(arch, request.scale, request), method=method_for(loss, request),
                     train=imagenet_spec(request), data=_data_spec(request, dataset, "crop_flip", IMAGENET_SIZE))


def family_loss(request, key: str) -> str:
    """Table 1: SkipblockNets with bias loss (``--set loss=...`` changes it), MobileNetV3 with CE."""
    if key.startswith("skipblocknet"):
        return OPTIONS.read(request).loss
    return "ce"


def table4_runs(request) -> dict[str, RunConfig]:
    """``<model>/<loss>``: every compact CNN with every loss (the reference CSV's row keys)."""
    return {f"{k}/{loss}": compact_run(request, k, loss) for k in COMPACT for loss in LOSSES}


def table1_runs(request) -> dict[str, RunConfig]:
    """Every family row, SkipblockNets with the request's loss, MobileNetV3 with CE."""
    return {k: family_run(request, k, family_loss(request, k)) for k in TABLE1_ROWS}


TABLE3_ROWS = [("mobilenetv3-large-1.0x", "ce"), ("mobilenetv3-large-1.0x", "bias"), ("skipblocknet-m", "ce"),
               ("skipblocknet-m", "bias"), ("mobilenetv3-large-1.05x", "ce")]


def table3_runs(request) -> dict[str, RunConfig]:
    return {f"{k}/{loss}": family_run(request, k, loss) for k, loss in TABLE3_ROWS}


def table5_runs(request) -> dict[str, RunConfig]:
    """Table 5's rows (reference keys) and the runs they are measured on: table3's, and table4's
    ShuffleNetV2 for the paper's ShuffleNet rows."""
    family = {f"{k}/{loss}": family_run(request, k, loss) for k in ("skipblocknet-m", "mobilenetv3-large-1.0x")
              for loss in ("ce", "bias")}
    shuffle = {f"shufflenet/{loss}": compact_run(request, "shufflenetv2-0.5x", loss) for loss in ("ce", "bias")}
    order = ["skipblocknet-m/ce", "skipblocknet-m/bias", "shufflenet/ce", "shufflenet/bias",
             "mobilenetv3-large-1.0x/ce", "mobilenetv3-large-1.0x/bias"]
    return {k: {**family, **shuffle}[k] for k in order}


def table2_runs(request) -> dict[str, RunConfig]:
    """The top-1 of table2's trained rows: table1's SkipblockNet-M and MobileNetV3-L runs."""
    return {k: family_run(request, k, family_loss(request, k)) for k in ("skipblocknet-m", "mobilenetv3-large-1.0x")}


# ============================================================================ training


def conv_layers(net: nn.Module, x: torch.Tensor) -> list[nn.Conv2d]:
    """The model's convolutions in the order one forward calls them, without the squeeze-and-
    excitation convolutions (they act on pooled 1x1 vectors: fully connected layers in effect)."""
    from torchvision.ops.misc import SqueezeExcitation

    se = {id(c) for m in net.modules() if isinstance(m, SqueezeExcitation) for c in m.modules()}
    order: list[nn.Conv2d] = []
    seen: set[int] = set()

    def hook(mod, inputs, output):
        if id(mod) not in seen:
            seen.add(id(mod))
            order.append(mod)

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, nn.Conv2d) and id(m) not in se]
    was = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(x)
    finally:
        net.train(was)
        for h in handles:
            h.remove()
    return order


VARIANCE_LAYERS = (5, 20, "last")


def variance_layer_indices(n_convs: int) -> list[int]:
    """1-based indices of the 5th, 20th and last convolutions (capped at the last one)."""
    return [n_convs if k == "last" else min(int(k), n_convs) for k in VARIANCE_LAYERS]


@torch.no_grad()
def collect_with_variances(net: nn.Module, batches, layers: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1 x N x C) over a split and, from the same forward passes, the per-sample
    unbiased variance over C·H·W of each of ``layers``' outputs (len(layers) x N)."""
    store: list[list[torch.Tensor]] = [[] for _ in layers]

    def hook(k):
        def record(mod, inputs, output):
            store[k].append(feature_variance(output).cpu())
        return record

    handles = [m.register_forward_hook(hook(k)) for k, m in enumerate(layers)]
    try:
        logits = collect_logits(net, batches)
    finally:
        for h in handles:
            h.remove()
    return logits, torch.stack([torch.cat(s) for s in store]) if layers else torch.zeros(0)


def train(ctx) -> dict:
    cfg = ctx.cfg
    data = ctx.data()
    info = data.info
    net = ctx.to_device(build_model(cfg, info, input_size=info.image_size))
    loss_fn = make_loss(cfg.method).to(ctx.device)
    ctx.fit(WithFeatures(net), make_step(loss_fn), "train", stateful=[loss_fn])
    ctx.save_model(net)
    net.eval()
    probe = torch.zeros(2, info.in_channels, info.image_size, info.image_size, device=ctx.device)
    convs = conv_layers(net, probe)
    idx = variance_layer_indices(len(convs))
    val_logits = collect_logits(net, tracked(data.val, "outputs: validation"))
    test_logits, test_var = collect_with_variances(net, tracked(data.test, "outputs: test"),
                                                   [convs[i - 1] for i in idx])
    ctx.save_outputs(val_logits=val_logits, val_labels=data.val_labels, test_logits=test_logits,
                     test_labels=data.test_labels, test_variance=test_var)
    with torch.no_grad():
        feats = net.forward_features(probe[:1])
    cost = count_model(net, (info.in_channels, info.image_size, info.image_size), convention=COST)
    return {"val_acc": float((val_logits[0].argmax(1) == data.val_labels).double().mean() * 100),
            "test_acc": float((test_logits[0].argmax(1) == data.test_labels).double().mean() * 100),
            "test_top5": topk_accuracy(test_logits, data.test_labels, 5),
            "params": cost.params, "macs": cost.macs, "cost_convention": COST,
            "feature_shape": list(feats.shape[1:]), "num_convs": len(convs), "variance_layers": idx,
            "final_bias_running_min": float(loss_fn.running_min) if isinstance(loss_fn, BiasLoss) else None}


# ============================================================================ what the artifacts read


@lru_cache(maxsize=64)
def _arch_cost(model: str, args_key: tuple, num_classes: int, in_channels: int, size: int, macs: bool
               ) -> tuple[float, int]:
    net = create_model(model, num_classes=num_classes, in_channels=in_channels, input_size=size, **dict(args_key))
    if not macs:
        return math.nan, sum(p.numel() for p in net.parameters())
    c = count_model(net, (in_channels, size, size), convention=COST)
    return c.macs, c.params


def arch_cost(model: str, args: dict, num_classes: int = 1000, in_channels: int = 3, size: int = 224,
              macs: bool = True) -> tuple[float, int]:
    """(MACs, params) of an architecture built fresh (not trained): the paper's counting setting."""
    return _arch_cost(model, tuple(sorted(args.items())), num_classes, in_channels, size, macs)


def _correct(*runs) -> list[torch.Tensor]:
    """Per seed, each test image's correctness, averaged over ``runs`` (one run's seeds each): the
    per-image difference of two such averages is the mean over the pairs of their differences, so
    :func:`gap_with_spread` of them is the gap of "the mean over the 5 models" with its paired spread."""
    return [torch.stack(seed).double().mean(0) for seed in zip(*(correct_per_seed(r) for r in runs))]


def _gap(name: str, runs, a: list[str], b: list[str], artifact: str, paper: float | None = None,
         headline: bool = False) -> Claim:
    """The claim of a top-1 gap mean(a) - mean(b) over run names, the paper's gap of the same rows
    (``paper``, or its rows' gap in ``artifact``) beside it."""
    if paper is None and len(a) == 1:
        paper = paper_gap(PAPER_NAME, artifact, a[0], b[0], "top1")
    return Claim(name, gap_with_spread(_correct(*(runs[k] for k in a)), _correct(*(runs[k] for k in b)), arms=(a, b)),
                 paper, headline=headline)


def _mean_result(runs, key: str) -> float:
    return float(sum(r.results[key] for r in runs) / len(runs))


def _nonempty_beside_paper(ours: list[dict], artifact: str, rows, columns, labels, reference=None) -> pd.DataFrame:
    """Ours beside the paper's numbers (the core's :func:`repro.render.beside_paper`) less every
    all-empty column.  For ``Table(frame=...)`` where a table mixes quantities only we measure (the
    trained models' costs, CPU latency) with ones only the paper gives (Pixel latency): the core's
    ``Table(ours=...)`` would print an empty paper (or ours) column beside each."""
    df = beside_paper(pd.DataFrame(ours), PAPER_NAME, artifact, rows, columns, labels, reference=reference)
    return df.drop(columns=[c for c in df.columns if df[c].isna().all()])


def _recipe(cfg: RunConfig) -> str:
    t = cfg.train
    return (f"recipe: {t.epochs} epochs, batch {t.batch_size}, {t.optimizer} lr {t.lr} (nesterov {t.nesterov}), "
            f"wd {t.weight_decay}, {t.schedule}"
            + ("" if t.schedule != "multistep" or not t.milestones else
               f" x{t.gamma} at epochs {t.milestone_epochs()}" if len(t.milestones) <= 4 else
               f" x{t.gamma} at {len(t.milestones)} milestones from epoch {t.milestone_epochs()[0]}")
            + f", warm-up {t.warmup_epochs} epochs, augment {cfg.data.augment}")


def _inputs(cfg: RunConfig, settings) -> str:
    info = run_info(cfg.dataset, cfg.data.image_size, settings.data_root)  # the size and classes the runs had
    return f"{info.image_size}x{info.image_size}x{info.in_channels} inputs, {info.num_classes} classes"


def _family_model(request, cfg: RunConfig, settings) -> str:
    """The trained SkipblockNet / MobileNetV3 models, as the header's model line."""
    w = FAMILY_WIDTH[request.scale]
    opts = OPTIONS.read(request)
    fb, last = opts.first_block, opts.mnv3_last_channel
    return ("SkipblockNet / MobileNetV3, ImageNet stem (stride 2)" + ("" if w == 1 else f", every width x {w}")
            + f", {_inputs(cfg, settings)}; SkipblockNet's first block "
            + ("has the authors' 1x1 expansion conv" if fb == "authors" else "is torchvision's (no expansion conv)")
            + "; MobileNetV3's classifier hidden layer is "
            + ("1280 (Small: 1024) at every width, as the MobileNetV3 reference"
               if last == "fixed" else "scaled with the width (1280·w), as torchvision's builders"))


COUNTED_224 = "the mflops and params_m columns: the paper's architectures (authors' first block, 1280) at 224x224x3, " \
              "1000 classes, built and counted here"


# ============================================================================ table 4


def build_table4(request, runs, settings) -> Table:
    """Top-1 of the compact CNNs with each loss; the claims: bias loss over CE and focal, per model and
    on average over the five."""
    ours = []
    for key in COMPACT:
        model, paper_args = compact_arch(request, key, "paper")
        params = arch_cost(model, paper_args, 100, 3, 32, macs=False)[1]
        ours += [{"row": key, "column": "params_m", "value": params / 1e6},
                 {"row": key, "column": "run_params_m", "value": _mean_result(runs[f"{key}/ce"], "params") / 1e6}]
        for loss in LOSSES:
            top1, spread = top1_with_spread(runs[f"{key}/{loss}"])
            ours.append({"row": key, "column": loss, "value": top1, "spread": spread})
    claims = [_gap(f"{COMPACT[key].label}: bias loss - {other}", runs, [f"{key}/bias"], [f"{key}/{other}"], "table4",
                   headline=other == "ce")
              for key in COMPACT for other in ("ce", "focal")]
    for other in ("ce", "focal"):
        paper = [paper_gap(PAPER_NAME, "table4", f"{k}/bias", f"{k}/{other}", "top1") for k in COMPACT]
        claims.append(_gap(f"mean over the 5 models: bias loss - {other}", runs, [f"{k}/bias" for k in COMPACT],
                           [f"{k}/{other}" for k in COMPACT], "table4", sum(paper) / len(paper), headline=other == "ce"))
    # the paper's Table 4 is keyed (<model>/<loss>, top1) and (<model>, params_m): read it as (<model>, <loss>)
    ref = load_reference(PAPER_NAME)
    ref = ref[ref["artifact"] == "table4"]
    remap = pd.DataFrame([{"row": r.split("/")[0], "column": r.split("/")[1] if "/" in r else c, "value": v}
                          for r, c, v in zip(ref["row"], ref["column"], ref["value"])])
    cfg = runs.config("shufflenetv2-0.5x/ce")
    opts = [f"{k}={v}" for k, v in request.options]
    notes = ["params_m: the paper-scale CIFAR-100 architecture (100 classes, 32x32); the paper's column matches the "
             "ImageNet (1000-class) counts of these models; run_params_m: the model trained here",
             f"losses: CE; focal gamma={method_for('focal', request)['gamma']}; bias {method_for('bias', request)}",
             _recipe(cfg) + (f"; options {', '.join(opts)}" if opts else "")]
    model = (f"Table 4's compact CNNs ({_inputs(cfg, settings)}): "
             + "; ".join(f"{a.label} = {m} {args}" for a, (m, args) in
                         ((a, compact_arch(request, k)) for k, a in COMPACT.items())))
    frame = _nonempty_beside_paper(ours, "table4", list(COMPACT), ["params_m", "run_params_m", *LOSSES],
                                   {k: a.label for k, a in COMPACT.items()}, reference=remap)
    return Table("Top-1 (%) of compact CNNs trained with CE, focal and bias loss (CIFAR-100)", cfg.dataset, model,
                 "params counted (M); no FLOPs in this table", frame=frame, notes=notes, claims=claims)


# ============================================================================ table 1 / fig 1


def _family_rows(runs, keys) -> list[dict]:
    """Per family row: the paper-scale architecture's cost at 224, and the trained run's top-1,
    top-5 and cost."""
    ours = []
    for key in keys:
        arch, trained = FAMILY[key], runs[key]
        macs, params = arch_cost(arch.model, arch.paper)
        top1, spread = top1_with_spread(trained)
        ours += [{"row": key, "column": "mflops", "value": macs / 1e6},
                 {"row": key, "column": "params_m", "value": params / 1e6},
                 {"row": key, "column": "top1", "value": top1, "spread": spread},
                 {"row": key, "column": "top5", "value": _mean_result(trained, "test_top5")},
                 {"row": key, "column": "run_mmacs", "value": _mean_result(trained, "macs") / 1e6},
                 {"row": key, "column": "run_params_m", "value": _mean_result(trained, "params") / 1e6}]
    return ours


def _small_note() -> str:
    key, arch = "mobilenetv3-small-1.0x", FAMILY["mobilenetv3-small-1.0x"]
    macs, params = arch_cost(arch.model, arch.paper)
    val = lambda c: paper_value(PAPER_NAME, "table1", key, c)  # noqa: E731
    return (f"MobileNetV3-Small 1.0x: the paper prints {val('params_m'):g} M params / {val('mflops'):g} MFLOPs, which "
            f"disagrees with the MobileNetV3 paper's own {val('howard2019_params_m'):g} M / "
            f"{val('howard2019_mflops'):g} M (Howard et al. 2019, Table 3); our count of torchvision's model, "
            f"{params / 1e6:.2f} M / {macs / 1e6:.1f} M, matches the latter: the difference is left as it is")


def build_table1(request, runs, settings) -> Table:
    """The family's costs and top-1; the claims: each SkipblockNet over the MobileNetV3 of its cost."""
    loss_of = {k: runs.config(k).method["loss"] for k in TABLE1_ROWS}
    claims = [_gap(f"{FAMILY[a].label} - {FAMILY[b].label}", runs, [a], [b], "table1") for a, b in TABLE1_PAIRS]
    cfg = runs.config("skipblocknet-m")
    notes = [COUNTED_224 + "; run_mmacs, run_params_m: the models trained at this scale",
             "SkipblockNet rows trained with the loss in brackets (paper: bias loss), MobileNetV3 rows with CE",
             _small_note(),
             "paper rows for other networks (MUXNet, GhostNet, ...) are in the reference CSV and in fig1",
             _recipe(cfg)]
    frame = _nonempty_beside_paper(_family_rows(runs, TABLE1_ROWS), "table1", TABLE1_ROWS,
                                   ["mflops", "params_m", "top1", "top5", "run_mmacs", "run_params_m"],
                                   {k: f"{FAMILY[k].label} ({loss_of[k]})" for k in TABLE1_ROWS})
    return Table("SkipblockNet family vs MobileNetV3: FLOPs, params, top-1 (ImageNet)", cfg.dataset,
                 _family_model(request, cfg, settings), CONVENTIONS[COST], frame=frame, notes=notes, claims=claims)


def build_fig1(request, runs, settings) -> Figure:
    """Left: our top-1 against our cost (the trained models' below paper scale); right: the paper's
    Table 1 (SkipblockNets and the other networks), with our SkipblockNet counts beside its points."""
    from repro.render import dataset_name, label_points, paper_label, place_legend

    loss = runs.config("skipblocknet-m").method["loss"]
    rows = _family_rows(runs, TABLE1_ROWS)
    ours = pd.DataFrame(rows).pivot_table(index="row", columns="column", values="value")
    accs = {r["row"]: (r["value"], r["spread"]) for r in rows if r["column"] == "top1"}
    cfg = runs.config("skipblocknet-m")
    ref = load_reference(PAPER_NAME)
    ref = ref[ref["artifact"] == "table1"].pivot_table(index="row", columns="column", values="value")
    by_cost = lambda keys: sorted(keys, key=lambda k: ours.loc[k, "run_mmacs"])  # noqa: E731
    sbn, mv3 = by_cost([k for k in TABLE1_ROWS if k.startswith("skipblocknet")]), by_cost(
        [k for k in TABLE1_ROWS if k.startswith("mobilenetv3")])
    ref_sbn = sorted([k for k in ref.index if k.startswith("skipblocknet")], key=lambda k: ref.loc[k, "mflops"])
    others = [k for k in ref.index if k not in ref_sbn]
    xcol = "mflops" if request.scale == "paper" else "run_mmacs"

    def draw():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.6))
        for keys, label, style in ((sbn, f"SkipblockNet ({loss})", "-o"), (mv3, "MobileNetV3 (ce)", "--s")):
            a1.errorbar([ours.loc[k, xcol] for k in keys], [accs[k][0] for k in keys],
                        yerr=[accs[k][1] for k in keys], fmt=style, capsize=3, label=f"ours: {label}")
        label_points(a1, [ours.loc[k, xcol] for k in sbn + mv3], [accs[k][0] for k in sbn + mv3],
                     [FAMILY[k].label.replace("SkipblockNet-", "SBN-").replace("MobileNetV3-", "MV3-")
                      for k in sbn + mv3])
        a1.set_xlabel("MMACs per image of the trained models (fvcore)" if xcol == "run_mmacs"
                      else "MMACs per image at 224x224 (fvcore)")
        a1.set_ylabel(f"test top-1 (%) on {dataset_name(cfg.dataset)}")
        a1.set_title(f"ours ({request.scale} scale, {dataset_name(cfg.dataset)})", fontsize=9)
        a2.plot([ref.loc[k, "mflops"] for k in ref_sbn], [ref.loc[k, "top1"] for k in ref_sbn], "-o",
                color="tab:red", label=paper_label("imagenet", "SkipblockNet (bias loss)"))
        a2.scatter([ref.loc[k, "mflops"] for k in others], [ref.loc[k, "top1"] for k in others], marker="x",
                   color="0.3", label=paper_label("imagenet", "other networks (CE)"))
        label_points(a2, [ref.loc[k, "mflops"] for k in others], [ref.loc[k, "top1"] for k in others], others,
                     fontsize=5)
        a2.scatter([ours.loc[k, "mflops"] for k in sbn], [ref.loc[k, "top1"] for k in sbn], marker="+", s=60,
                   color="tab:blue", label="SkipblockNet at our MMAC count (fvcore), the paper's top-1")
        if request.scale == "paper":
            a1.plot([ref.loc[k, "mflops"] for k in ref_sbn], [ref.loc[k, "top1"] for k in ref_sbn], "k*",
                    label=paper_label("imagenet", "SkipblockNet (bias loss)"))
        a2.set_xlabel("MMACs per image at 224x224 (the paper's \"MFLOPs\" are multiply-adds)")
        a2.set_ylabel(f"top-1 (%) on {dataset_name('imagenet')}")
        a2.set_title(f"{paper_label('imagenet')}: Table 1", fontsize=9)
        for ax in (a1, a2):
            ax.grid(alpha=0.3)
        place_legend(a1, "best" if request.scale == "paper" else "below")  # smoke/quick: error bars fill a1
        place_legend(a2, "best")
        return fig

    data = [{"source": "ours", "row": k, "loss": runs.config(k).method["loss"],
             "mmacs_trained": ours.loc[k, "run_mmacs"],
             "mflops_224": ours.loc[k, "mflops"], "params_m_224": ours.loc[k, "params_m"], "top1": accs[k][0],
             "top1_spread": accs[k][1], "dataset": cfg.dataset} for k in TABLE1_ROWS]
    data += [{"source": "paper", "row": k, "loss": "bias" if k in ref_sbn else "ce",
              "mflops_224": ref.loc[k, "mflops"], "params_m_224": ref.loc[k, "params_m"], "top1": ref.loc[k, "top1"],
              "dataset": "imagenet"} for k in ref.index]
    return Figure("Top-1 vs FLOPs of the SkipblockNet family", cfg.dataset, _family_model(request, cfg, settings),
                  CONVENTIONS[COST], draw=draw, data=pd.DataFrame(data),
                  notes=["error bars: spread of top-1 (see seeds)"])


# ============================================================================ table 3


def build_table3(request, runs, settings) -> Table:
    """The ablation: bias loss and the skip blocks, each alone and together, and SkipblockNet-M
    against a MobileNetV3-L widened to its cost."""
    keys = [f"{k}/{loss}" for k, loss in TABLE3_ROWS]
    ours = []
    for (k, _), row in zip(TABLE3_ROWS, keys):
        macs, params = arch_cost(FAMILY[k].model, FAMILY[k].paper)
        top1, spread = top1_with_spread(runs[row])
        ours += [{"row": row, "column": "top1", "value": top1, "spread": spread},
                 {"row": row, "column": "mflops", "value": macs / 1e6},
                 {"row": row, "column": "params_m", "value": params / 1e6}]
    labels = {r: f"{FAMILY[k].label} + {'bias loss' if loss == 'bias' else 'CE'}" for (k, loss), r in
              zip(TABLE3_ROWS, keys)}
    m, s = "mobilenetv3-large-1.0x", "skipblocknet-m"
    pairs = [("bias loss on MobileNetV3-L", f"{m}/bias", f"{m}/ce"),
             ("skip blocks under CE (SkipblockNet-M - MobileNetV3-L)", f"{s}/ce", f"{m}/ce"),
             ("bias loss on SkipblockNet-M", f"{s}/bias", f"{s}/ce"),
             ("both (SkipblockNet-M + bias - MobileNetV3-L + CE)", f"{s}/bias", f"{m}/ce"),
             ("skip blocks vs wider MobileNetV3 (SkipblockNet-M CE - MobileNetV3-L 1.05x CE)", f"{s}/ce",
              "mobilenetv3-large-1.05x/ce")]
    cfg = runs.config(f"{s}/bias")
    return Table("Ablation: MobileNetV3-L vs SkipblockNet-M x CE vs bias loss (ImageNet)", cfg.dataset,
                 _family_model(request, cfg, settings), CONVENTIONS[COST], ours, keys, ["top1", "mflops", "params_m"],
                 labels, notes=[COUNTED_224, f"bias loss: {cfg.method}", _recipe(cfg)],
                 claims=[_gap(n, runs, [a], [b], "table3") for n, a, b in pairs])


# ============================================================================ table 5


TABLE5_PAPER_ONLY = ["inceptionv3/ce", "densenet169/ce"]
TABLE5_LAYERS = ("layer5", "layer20", "last")
TABLE5_COLUMNS = [f"{layer}_{stat}" for layer in TABLE5_LAYERS for stat in ("avg", "max", "min")]


TABLE5_CLAIMED = {"skipblocknet-m": "SkipblockNet-M", "shufflenet": "ShuffleNetV2",
                  "mobilenetv3-large-1.0x": "MobileNetV3-L"}  # the rows trained with both losses
TABLE5_LAYER_NAMES = {"layer5": "the 5th conv", "layer20": "the 20th conv", "last": "the last conv"}


def variance_claim(runs, base: str, i: int) -> Claim:
    """The paper's variance claim at layer ``i`` of ``base``: the average per-image variance with bias
    loss minus with CE, in % of CE's.  The average is a mean over the test images, so the evidence is
    per image: every image's variance under each loss divided by CE's average (over seeds and images),
    seed s of bias loss paired with seed s of CE (the same test images); the gap is then
    100 (mean_bias / mean_CE - 1), the interval counts the seeds and the images (CE's average taken
    as known).  The paper's value: 100 (BL / CE - 1) of its Table 5's avg columns."""
    layer = TABLE5_LAYERS[i]
    bias, ce = f"{base}/bias", f"{base}/ce"
    a = [r.outputs["test_variance"][i].double() for r in runs[bias]]
    b = [r.outputs["test_variance"][i].double() for r in runs[ce]]
    scale = float(torch.stack(b).mean())
    pb, pc = (paper_value(PAPER_NAME, "table5", row, f"{layer}_avg") for row in (bias, ce))
    paper = None if pb is None or pc is None else 100 * (pb / pc - 1)
    return Claim(f"{TABLE5_CLAIMED[base]}: avg variance at {TABLE5_LAYER_NAMES[layer]}, bias loss minus CE (% of CE's)",
                 gap_with_spread([x / scale for x in a], [x / scale for x in b], arms=(bias, ce)), paper)


def build_table5(request, runs, settings) -> Table:
    """Per-sample variance of the 5th, 20th and last conv outputs on the test split, CE against
    bias loss (the paper: bias loss raises it); mean over seeds and its spread."""
    ours, notes = [], []
    for row in runs:
        per_seed = []
        for r in runs[row]:
            v = r.outputs["test_variance"].double()  # 3 x N
            per_seed.append(torch.stack([v.mean(1), v.amax(1), v.amin(1)], 1).flatten().tolist())  # layer-major
        stats = [mean_and_spread(col) for col in zip(*per_seed)]
        ours += [{"row": row, "column": c, "value": m, "spread": s} for c, (m, s) in zip(TABLE5_COLUMNS, stats)]
        res, cfg = runs[row][0].results, runs.config(row)
        notes.append(f"{row}: conv layers {res['variance_layers']} of {res['num_convs']} ({cfg.model} "
                     f"{cfg.model_args}, {cfg.dataset})")
    claims = [variance_claim(runs, base, i) for base in TABLE5_CLAIMED for i in range(len(TABLE5_LAYERS))]
    order = list(runs) + TABLE5_PAPER_ONLY
    notes = ["per test image: unbiased variance over C·H·W of the raw output of the 5th, 20th and last "
             "Conv2d in forward order (squeeze-and-excitation convs excluded); avg / max / min over the test split",
             "Inception V3 and DenseNet-169 rows: the paper's ImageNet-pretrained models, not trained here",
             "ShuffleNet rows: Table 4's ShuffleNetV2 runs (CIFAR-100 at paper scale; the paper's is ImageNet)",
             "claims: the paper's Sec. 5.5, 'the bias loss can increase the variance throughout the model': the avg "
             "variance with bias loss minus with CE, in % of CE's (paper: its Table 5's BL/CE avg ratio - 1)",
             *notes]
    cfg = runs.config("skipblocknet-m/bias")
    return Table("Average / max / min per-sample variance of conv outputs, CE vs bias loss", cfg.dataset,
                 f"table3's SkipblockNet-M and MobileNetV3-L, table4's ShuffleNetV2 ({_inputs(cfg, settings)})",
                 "variance of activations (no cost in this table)", ours, order, TABLE5_COLUMNS,
                 {r: r.replace("/ce", " (CE)").replace("/bias", " (BL)") for r in order}, notes=notes, digits=3,
                 claims=claims)


# ============================================================================ table 2 (latency)


TABLE2_ROWS = ["skipblocknet-m", "ghostnet-1.3x", "mnasnet-a2", "mobilenetv3-large-1.0x", "mobilenetv2-1.0x"]
TABLE2_LABELS = {"skipblocknet-m": "SkipblockNet-M", "ghostnet-1.3x": "GhostNet 1.3x", "mnasnet-a2": "MnasNet-A2",
                 "mobilenetv3-large-1.0x": "MobileNetV3-Large 1.0x", "mobilenetv2-1.0x": "MobileNetV2 1.0x"}
LATENCY_REPEATS = {"smoke": (1, 3), "quick": (3, 20), "paper": (10, 100)}  # (warm-up, timed) forwards


def latency_models() -> dict:
    """The timed models at 224x224x3, 1000 classes: the paper-scale SkipblockNet-M and MobileNetV3-L,
    and torchvision's MobileNetV2 1.0x."""
    from torchvision.models import mobilenet_v2

    out = {k: create_model(FAMILY[k].model, num_classes=1000, in_channels=3, input_size=224, **FAMILY[k].paper)
           for k in ("skipblocknet-m", "mobilenetv3-large-1.0x")}
    return {**out, "mobilenetv2-1.0x": mobilenet_v2(num_classes=1000, width_mult=1.0)}


@torch.no_grad()
def measure_latency(net: nn.Module, device: torch.device, size: int = 224, warmup: int = 3, repeats: int = 20,
                    threads: int | None = 1) -> float:
    """Median batch-1 forward time (ms) on ``device`` (CPU: with ``threads`` intra-op threads)."""
    net = net.eval().to(device)
    x = torch.randn(1, 3, size, size, device=device)
    if device.type == "cpu" and threads is not None:
        with num_threads(threads):
            return 1000 * time_call(lambda: net(x), device, warmup, repeats)
    return 1000 * time_call(lambda: net(x), device, warmup, repeats)


def build_table2(request, runs, settings) -> Table:
    """Batch-1 latency of the models on this machine's CPU (and GPU), the paper's on Pixel phones,
    and the top-1 of table1's runs of the two trained rows."""
    warmup, repeats = LATENCY_REPEATS[request.scale]
    cuda = torch.cuda.is_available()
    ours, lat = [], {}
    for key, net in latency_models().items():
        lat[key] = measure_latency(net, torch.device("cpu"), 224, warmup, repeats, threads=1)
        ours.append({"row": key, "column": "cpu1_ms", "value": lat[key]})
        if cuda:
            ours.append({"row": key, "column": "cuda_ms",
                         "value": measure_latency(net, torch.device("cuda"), 224, warmup, repeats)})
    for key in runs:
        top1, spread = top1_with_spread(runs[key])
        ours.append({"row": key, "column": "top1", "value": top1, "spread": spread})
    overhead = lat["skipblocknet-m"] - lat["mobilenetv3-large-1.0x"]
    p_over = paper_gap(PAPER_NAME, "table2", "skipblocknet-m", "mobilenetv3-large-1.0x", "pixel4_ms")
    cfg = runs.config("skipblocknet-m")
    notes = [f"latency: batch 1, 224x224x3, 1000 classes, eval mode, median of {repeats} runs after {warmup} "
             f"warm-up, random weights; CPU: {cpu_name()}, 1 intra-op thread (torch {torch.__version__})"
             + (f"; CUDA: {torch.cuda.get_device_name(0)}" if cuda else "; CUDA: not available"),
             "paper: Pixel 4 / Pixel 3 phones, one core, PyTorch Mobile 1.6 (not comparable with our CPU)",
             f"SkipblockNet-M - MobileNetV3-L latency: ours {overhead:+.2f} ms on CPU "
             f"({100 * overhead / lat['mobilenetv3-large-1.0x']:+.0f} %); paper {p_over:+.0f} ms on Pixel 4",
             f"top1: SkipblockNet-M ({cfg.method['loss']}) and MobileNetV3-L (ce) runs of table1 "
             f"({cfg.dataset} at this scale); GhostNet, MnasNet-A2 and MobileNetV2 are not trained here",
             "CPU timings on a shared machine vary between calls; compare rows of one table only"]
    frame = _nonempty_beside_paper(ours, "table2", TABLE2_ROWS, ["top1", "cpu1_ms"] + (["cuda_ms"] if cuda else [])
                                   + ["pixel4_ms", "pixel3_ms"], TABLE2_LABELS)
    return Table("Top-1 and batch-1 latency (ms): ours on this machine, paper on Pixel phones", cfg.dataset,
                 "latency: the paper-scale SkipblockNet-M, MobileNetV3-Large 1.0x and MobileNetV2 1.0x; top1: "
                 + _family_model(request, cfg, settings), "wall-clock latency (ms)", frame=frame, notes=notes)


# ============================================================================ the paper

OPTIONS = Options({
    "loss": Option("loss of the SkipblockNet rows of table1/table2/fig1 (the paper's: bias); table3/table4/table5 "
                   "compare losses and always train each", str, "bias", choices=LOSSES),
    "bias_scaling": Option("local: batch min-max (paper); global: the authors' code's running minimum", str, "local",
                           choices=("local", "global")),
    "bias_clamp": Option("clamp z to [0.5, 1.5] (paper Sec. 5; the code has no clamp)", bool, True),
    "bias_formula": Option("paper: exp(alpha v) - beta; code_v1: the first released code's exp(beta v) - 1 + alpha",
                           str, "paper", choices=("paper", "code_v1")),
    "bias_alpha": Option("alpha of the bias loss weight", float, 0.3, low=-10, high=10),
    "bias_beta": Option("beta of the bias loss weight", float, 0.3, low=-10, high=10),
    "first_block": Option("SkipblockNet's first block: the authors' (with its 1x1 16->16 expansion conv) or "
                          "torchvision's (without)", str, "authors", choices=FIRST_BLOCKS),
    "mnv3_last_channel": Option("MobileNetV3's classifier hidden width: fixed (1280, Small 1024, at every width, as "
                                "the MobileNetV3 reference and Table 1) or scaled (1280*w, torchvision's builders)",
                                str, "fixed", choices=MNV3_LAST),
    "focal_gamma": Option("focal loss gamma (the paper does not state it)", float, 2.0, low=0, high=10),
    "shufflenet_width": Option("Table 4's ShuffleNetV2 width (0.5: the paper's label; the authors' code trains 1.0)",
                               float, 0.5, choices=(0.5, 1.0)),
    "squeezenet": Option("Table 4's SqueezeNet: bn (as in pytorch-cifar100: BN after every conv, no ReLU on the "
                         "class map) or torchvision's (no BN; does not train at lr 0.1)", str, "bn",
                         choices=("bn", "torchvision")),
    "densenet": Option("Table 4's DenseNet at paper scale: k12 = L=100 k=12 (7.0 M), bc = DenseNet-BC L=100 k=12 "
                       "(0.8 M), 121 = the authors' CIFAR DenseNet-121 (k=32)", str, "k12",
                       choices=tuple(DENSENET_CHOICES)),
    "cifar_recipe": Option("Table 4's schedule at paper scale: paper (Sec. 5.2) or code (the authors' train.py: 160 "
                           "epochs, wd 1e-4, x0.1 at 80/122, crop+flip)", str, "paper", choices=tuple(CIFAR_RECIPES)),
})

PAPER = Paper(
    name=PAPER_NAME,
    title="Abrahamyan et al., Bias Loss for Mobile Neural Networks (ICCV 2021)",
    artifacts={a.name: a for a in [
        Artifact("table1", "SkipblockNet XS/S/M/L and MobileNetV3: FLOPs, params, top-1", table1_runs, build_table1,
                 baselines=tuple(TABLE1_ROWS)),
        Artifact("table2", "Batch-1 latency (CPU 1 thread, CUDA) vs the paper's Pixel phones", table2_runs,
                 build_table2, baselines=("skipblocknet-m", "mobilenetv3-large-1.0x")),
        Artifact("table3", "Ablation MobileNetV3-L / SkipblockNet-M x CE / bias loss", table3_runs, build_table3,
                 baselines=("mobilenetv3-large-1.0x/ce", "skipblocknet-m/ce")),
        Artifact("table4", "Compact CNNs (CIFAR-100) trained with CE, focal and bias loss", table4_runs, build_table4,
                 baselines=tuple(f"{k}/ce" for k in COMPACT), headline=True),
        Artifact("table5", "Per-sample feature variance at the 5th/20th/last conv, CE vs bias loss", table5_runs,
                 build_table5, baselines=("skipblocknet-m/ce", "mobilenetv3-large-1.0x/ce", "shufflenet/ce")),
        Artifact("fig1", "Top-1 vs FLOPs of the SkipblockNet family (ours vs paper)", table1_runs, build_fig1,
                 baselines=tuple(TABLE1_ROWS)),
    ]},
    trainers={"train": train},
    options=OPTIONS,
)
