"""DCP: Shen et al., "Learning to Prune in Training via Dynamic Channel Propagation", ICPR 2020.

A static network gets smaller while it trains (the algorithm follows the authors' code):
a 0/1 mask after the BatchNorm of every maskable channel group (:class:`ChannelMask`);
in the backward pass, for the BN output a and its gradient g, the utility
v_c = Σ_batch |Σ_{h,w} g·a| / (b·h·w), normalised by the layer's largest, accumulated as
U[active] *= decay; U += v; after a warm-up only the top k = N - round(N·pr) channels by
utility over all layers at once take part in forward and backward.  After training the
masked channels are cut out for real (:func:`repro.models.staged.prune_channels`) and the
cost is checked against :class:`~repro.models.staged.CostModel`.  Baselines: the unpruned network and L1-norm
filter pruning at the same FLOPs, in a run chain unpruned -> dcp -> l1.
docs/papers/dcp.md lists every choice and deviation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from repro import distributed as D
from repro.api import (Artifact, Claim, ConfigError, Figure, Option, Options, Paper, RunConfig, Series, Table,
                       TrainSpec, build_model, ce_step, model_names)
from repro.exits import (collect_logits, correct_per_seed, gap_with_spread, mean_and_spread, top1_with_spread,
                         topk_accuracy)
from repro.flops import CONVENTIONS, count_by_module
from repro.models import resnet, resnet50_dcp, vgg
from repro.models.staged import CostModel, MaskSlot, export_pruned, l1_keep
from repro.reference_data import load_reference, paper_value
from repro.render import dataset_name, paper_label
from repro.scales import CIFAR_SIZE, IMAGENET_SIZE, need_size, run_data
from repro.store import atomic_torch_save
from repro.train import EpochOffsetBatches, TruncatedBatches, tracked

PAPER_NAME = "dcp"
COST = "fvcore"  # the paper prints a percentage ("FLOPs pruned"): the convention hardly matters
EPS = 1e-12

# ============================================================================ the method


class _MaskFn(torch.autograd.Function):
    """``a · mask`` whose backward also hands (g, a) to the owner's utility accumulator.

    ``g`` is the gradient w.r.t. the BN output ``a`` (= incoming gradient · mask), the
    tensor the authors' backward hook on the BN output receives.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, mask: torch.Tensor, owner: ChannelMask) -> torch.Tensor:
        m = mask.to(a.dtype).view(1, -1, 1, 1)
        ctx.save_for_backward(a, m)
        ctx.owner = owner
        return a * m

    @staticmethod
    def backward(ctx, g_out: torch.Tensor):
        a, m = ctx.saved_tensors
        g = g_out * m
        ctx.owner.accumulate(g, a)
        return g, None, None


def channel_scores(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """First-order Taylor score per channel: ``Σ_batch |Σ_{h,w} g·a| / (b·h·w)`` (float32)."""
    b, _, h, w = a.shape
    return (g.float() * a.float()).sum((2, 3)).abs().sum(0) / (b * h * w)


class ChannelMask(nn.Module):
    """The module DCP puts in a mask slot: multiplies its channels by the controller's mask.

    It has no state of its own (the mask and utilities live in :class:`DCPController`,
    which is checkpointed); in training, the backward pass adds this layer's raw
    channel scores to the controller's pending buffer.
    """

    def __init__(self, controller: DCPController, layer: int) -> None:
        super().__init__()
        object.__setattr__(self, "controller", controller)  # not a submodule: no duplicate state
        self.layer = layer
        self.start = controller.offsets[layer]
        self.size = controller.sizes[layer]

    def current_mask(self) -> torch.Tensor:
        return self.controller.mask[self.start:self.start + self.size]

    def accumulate(self, g: torch.Tensor, a: torch.Tensor) -> None:
        c = self.controller
        c.pending[self.start:self.start + self.size].add_(channel_scores(g, a))
        c.fresh.fill_(1.0)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        mask = self.current_mask()
        if self.training and torch.is_grad_enabled():
            return _MaskFn.apply(a, mask, self)
        return a * mask.to(a.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, channels={self.size}"


def layer_best(u: torch.Tensor, layer_id: torch.Tensor, layers: int) -> torch.Tensor:
    """Flat index of each layer's highest-utility channel (the first one among ties)."""
    n = u.numel()
    lmax = torch.full((layers,), -math.inf, device=u.device, dtype=u.dtype)
    lmax = lmax.scatter_reduce(0, layer_id, u, "amax", include_self=True)
    pos = torch.arange(n, device=u.device)
    cand = torch.where(u == lmax[layer_id], pos, torch.full_like(pos, n))
    best = torch.full((layers,), n, device=u.device, dtype=torch.long)
    return best.scatter_reduce(0, layer_id, cand, "amin", include_self=True)


def select_channels(u: torch.Tensor, layer_id: torch.Tensor, layers: int, pr: float, rule: str = "topk",
                    guard: bool = True, scope: str = "global") -> tuple[torch.Tensor, torch.Tensor]:
    """The channels that propagate: a 0/1 float mask over all maskable channels, and the
    number of layers that the plain rule would have left empty (a 0-d tensor).

    - ``topk`` (default): exactly ``k = N − round(N·pr)`` channels, the highest utilities
      over all layers at once; ties go to the lower flat index (stable sort), so the
      selection is deterministic.  With ``guard`` every layer keeps at least its best
      channel (still k in all), since a layer with no channel cuts the network.
    - ``code`` (the authors' rule): threshold ``t`` = the utility at 0-based position
      ``round(N·pr)`` of the ascending order, keep ``U > t`` strictly (one channel fewer
      than k, fewer again with ties);
      with ``guard`` an emptied layer gets its best channel back.

    ``scope="layer"`` (the abstract's "a specific group of channels in each convolutional
    layer" read literally) ranks within every layer instead: layer l keeps its top
    ``C_l − round(C_l·pr)`` channels (at least one with ``guard``); ``rule`` is ignored.
    """
    n = u.numel()
    if scope == "layer":
        sizes = torch.bincount(layer_id, minlength=layers)
        keep_l = sizes - torch.round(sizes.double() * pr).long()
        if guard:
            keep_l = keep_l.clamp_min(1)
        order = torch.sort(u, descending=True, stable=True).indices
        order = order[torch.sort(layer_id[order], stable=True).indices]  # by layer, utility descending within
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(n, device=u.device) - starts[layer_id[order]]
        keep = torch.zeros_like(u)
        keep[order] = (rank < keep_l[layer_id[order]]).to(u.dtype)
        return keep, torch.zeros((), dtype=torch.long, device=u.device)
    elif scope != "global":
        raise ConfigError(f"unknown selection scope '{scope}'; choose one of: global, layer")
    drop = round(n * pr)
    if rule == "topk":
        order = torch.sort(u, descending=True, stable=True).indices
        keep0 = torch.zeros_like(u)
        keep0[order[: n - drop]] = 1.0
    elif rule == "code":
        t = torch.sort(u).values[min(drop, n - 1)]
        keep0 = (u > t).to(u.dtype)
    else:
        raise ConfigError(f"unknown selection rule '{rule}'; choose one of: topk, code")
    per_layer = torch.zeros(layers, device=u.device, dtype=u.dtype).index_add_(0, layer_id, keep0)
    empty = per_layer == 0
    hits = empty.sum()
    if not guard:
        return keep0, hits
    best = layer_best(u, layer_id, layers)
    if rule == "code":
        keep = keep0.clone()
        keep[best] = torch.maximum(keep0[best], empty.to(u.dtype))
        return keep, hits
    flag = torch.zeros(n, dtype=torch.uint8, device=u.device)
    flag[best] = 1
    order = order[torch.sort(flag[order], descending=True, stable=True).indices]
    keep = torch.zeros_like(u)
    keep[order[: n - drop]] = 1.0
    return keep, hits


class DCPController(nn.Module):
    """Masks, utilities and their history for all maskable layers (one flat vector of N channels).

    Every piece of state is a buffer, so a checkpoint (``ctx.fit(..., stateful=[ctrl])``)
    restores it exactly and a resumed run is identical.  Call :meth:`before_forward`
    before every training forward (the step function does) and :meth:`finalize` after
    training.
    """

    def __init__(self, sizes: Sequence[int], pr: float, decay: float, warmup_iters: int, total_iters: int,
                 u_init: str = "zero", rule: str = "topk", guard: bool = True, snapshots: int = 40,
                 names: Sequence[str] | None = None, scope: str = "global",
                 decay_schedule: Sequence[tuple[int, float]] = ()) -> None:
        super().__init__()
        if not 0.0 <= pr < 1.0:
            raise ConfigError(f"--set pr={pr}: the pruning rate must be in [0, 1)")
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"--set decay={decay}: the decay must be in [0, 1]")
        # (first iteration, decay from then on), sorted: the authors' ImageNet epoch_step
        self.decay_schedule = sorted((int(i), float(d)) for i, d in decay_schedule)
        if any(not 0.0 <= d <= 1.0 for _, d in self.decay_schedule):
            raise ConfigError(f"decay schedule {self.decay_schedule}: every decay must be in [0, 1]")
        self.sizes = [int(s) for s in sizes]
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.sizes))]
        self.layers, self.n = len(self.sizes), sum(self.sizes)
        self.offsets = [0]
        for s in self.sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.pr, self.decay, self.rule, self.guard, self.scope = float(pr), float(decay), rule, guard, scope
        self.warmup_iters, self.total_iters = int(warmup_iters), int(total_iters)
        if scope == "layer":
            self.keep_count = sum(max(1, c - round(c * self.pr)) if guard else c - round(c * self.pr)
                                  for c in self.sizes)
        else:
            self.keep_count = self.n - round(self.n * self.pr)
        if self.keep_count < self.layers and guard:
            raise ConfigError(f"pr={pr} keeps {self.keep_count} channels, fewer than the {self.layers} layers")
        sizes_t = torch.tensor(self.sizes)
        self.register_buffer("layer_id", torch.repeat_interleave(torch.arange(self.layers), sizes_t), persistent=False)
        if u_init == "zero":  # the authors' VGG
            u = torch.zeros(self.n)
        elif u_init == "inv_channels":  # the authors' ResNets: 1/C per channel
            u = torch.repeat_interleave(1.0 / sizes_t.float(), sizes_t)
        else:
            raise ValueError(f"u_init must be 'zero' or 'inv_channels', got {u_init!r}")
        self.register_buffer("utility", u)
        self.register_buffer("mask", torch.ones(self.n))
        self.register_buffer("pending", torch.zeros(self.n))
        self.register_buffer("fresh", torch.zeros(()))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("flips", torch.zeros(self.layers))
        self.register_buffer("guard_hits", torch.zeros((), dtype=torch.long))
        s = max(int(snapshots), 1)
        self.snap_iters = sorted({round(j * self.total_iters / s) for j in range(s)})
        rows = len(self.snap_iters) + 1  # + the final state
        self.register_buffer("hist_iter", torch.full((rows,), -1, dtype=torch.long))
        self.register_buffer("hist_util", torch.zeros(rows, self.n))
        self.register_buffer("hist_mask", torch.zeros(rows, self.n, dtype=torch.bool))
        self.register_buffer("hist_flips", torch.zeros(rows, self.layers))
        self.register_buffer("hist_count", torch.zeros((), dtype=torch.long))
        self._snap_set = set(self.snap_iters)
        self._it: int | None = None

    # --- checkpoint
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._it = None  # re-read the iteration counter from the loaded buffer
        return out

    # --- slots
    def install(self, slots: Sequence[MaskSlot]) -> list[ChannelMask]:
        if [s.channels for s in slots] != self.sizes:
            raise ValueError("the slots do not match the controller's layer sizes")
        masks = [ChannelMask(self, j) for j in range(self.layers)]
        for s, m in zip(slots, masks):
            s.set_mask(m)
        return masks

    # --- the per-iteration update
    def decay_at(self, iteration: int) -> float:
        """The decay applied to the scores of (0-based) training iteration ``iteration``."""
        d = self.decay
        for start, value in self.decay_schedule:
            if iteration >= start:
                d = value
        return d

    def apply_pending(self) -> None:
        """``U[active] *= decay; U += v / max_layer(v)`` with the scores of the last backward
        (nothing if no backward ran since the last call), ``decay`` being that of the
        iteration whose backward it was.  Raw scores are summed over processes first (DDP),
        so every rank keeps the same utilities."""
        it = self._it if self._it is not None else int(self.iteration)
        decay = self.decay_at(it - 1)
        v = D.all_reduce_sum(self.pending)
        v = torch.where(torch.isfinite(v), v, torch.zeros_like(v))
        lmax = torch.zeros(self.layers, device=v.device, dtype=v.dtype)
        lmax = lmax.scatter_reduce(0, self.layer_id, v, "amax", include_self=True)
        vn = v / lmax.clamp_min(EPS)[self.layer_id]
        fresh = self.fresh > 0
        gate = (self.mask > 0) & fresh
        self.utility.mul_(torch.where(gate, torch.full_like(v, decay), torch.ones_like(v)))
        self.utility.add_(torch.where(fresh, vn, torch.zeros_like(vn)))
        self.pending.zero_()
        self.fresh.zero_()

    def before_forward(self) -> None:
        if self._it is None:
            self._it = int(self.iteration)
        self.apply_pending()
        if self._it < self.warmup_iters:
            new = torch.ones_like(self.mask)
        else:
            new, hits = select_channels(self.utility, self.layer_id, self.layers, self.pr, self.rule, self.guard,
                                        self.scope)
            self.guard_hits.add_(hits)
        self.flips.index_add_(0, self.layer_id, (new != self.mask).to(self.flips.dtype))
        self.mask.copy_(new)
        if self._it in self._snap_set:
            self.snapshot()
        self._it += 1
        self.iteration.fill_(self._it)

    def snapshot(self) -> None:
        row = int(self.hist_count)
        if row >= self.hist_iter.numel():
            return
        self.hist_iter[row] = self._it if self._it is not None else int(self.iteration)
        self.hist_util[row] = self.utility
        self.hist_mask[row] = self.mask > 0
        self.hist_flips[row] = self.flips
        self.flips.zero_()
        self.hist_count.fill_(row + 1)

    def finalize(self) -> None:
        """After training: apply the last backward's scores (the utilities then equal the
        authors' final ones) and record the final state.  The mask is NOT re-selected:
        the network is evaluated and exported with the mask it was trained with last."""
        if self._it is None:
            self._it = int(self.iteration)
        self.apply_pending()
        if int(self.hist_count) < self.hist_iter.numel() and (
                int(self.hist_count) == 0 or int(self.hist_iter[int(self.hist_count) - 1]) != self._it):
            self.snapshot()

    # --- read-outs
    def layer_masks(self) -> list[torch.Tensor]:
        return [self.mask[a:b] > 0 for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def kept(self) -> list[int]:
        return [int(m.sum()) for m in self.layer_masks()]

    def keep_indices(self) -> list[torch.Tensor]:
        return [m.nonzero().flatten().cpu() for m in self.layer_masks()]


# ============================================================================ costs and export


def _count(model: nn.Module, input_shape: Sequence[int]):
    """fvcore MACs of one eval-mode, no-grad forward of a batch-1 input, and by module."""
    total, by_module = count_by_module(model, input_shape, "fvcore")
    return int(total), by_module


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """fvcore MACs (BatchNorm and adaptive pooling included) of one sample."""
    return _count(model, input_shape)[0]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def uniform_counts(sizes: Sequence[int], fraction: float) -> list[int]:
    return [min(c, max(1, int(math.floor(c * fraction + 0.5)))) for c in sizes]


def match_uniform_fraction(cost: CostModel, target_reduction: float, grid: int = 4000) -> tuple[float, list[int]]:
    """The keep fraction f (the same in every maskable layer, ≥ 1 channel each) whose
    predicted fvcore FLOPs reduction is closest to ``target_reduction`` (a fraction)."""
    f = torch.linspace(0, 1, grid + 1, dtype=torch.float64)
    sizes = torch.tensor(cost.sizes, dtype=torch.float64)
    counts = torch.minimum(sizes, torch.clamp(torch.floor(f[:, None] * sizes + 0.5), min=1))  # grid x slots
    ratio = counts / sizes
    macs = torch.full_like(f, float(cost.total_macs))
    for m_macs, _, _, o, i in cost.terms:  # the same formula as CostModel.predict, vectorised over f
        ro = ratio[:, o] if o is not None else 1.0
        ri = ratio[:, i] if i is not None else 1.0
        macs += m_macs * (ro * ri - 1)
    err = (1 - macs / cost.total_macs - target_reduction).abs()
    best = int(torch.nonzero(err == err.min()).flatten()[-1])  # the largest fraction among equals
    return float(f[best]), [int(c) for c in counts[best]]


# ============================================================================ models and runs

# The registered models DCP prunes (repro.models), and where each one's mask slots are
SLOTS: dict[str, Callable[[nn.Module], list[MaskSlot]]] = {
    "vgg16_cifar": vgg.maskable_layers, "resnet_cifar": resnet.maskable_layers,
    "resnet50_dcp": resnet50_dcp.maskable_layers}


@dataclass(frozen=True)
class Arch:
    """One architecture of the paper, its recipe at paper scale and its reduced CPU versions."""
    key: str
    label: str
    model: str
    args: dict[str, dict]           # model arguments per scale (CPU scales: narrower)
    pr: float                       # default pruning rate
    u_init: str                     # initial utility (authors: VGG zeros, ResNets 1/C)
    paper_dataset: str
    train: TrainSpec                # unpruned and DCP (from scratch) recipe at paper scale
    warmup_epochs: float            # all channels active (paper scale)
    dcp_init: str = "scratch"      # scratch | pretrained (start DCP from the unpruned run)
    pretrained_train: TrainSpec | None = None  # DCP recipe when it starts from the unpruned run
    pretrained_decay: float = 0.7
    finetune: TrainSpec = TrainSpec(epochs=40, batch_size=64, lr=0.001, schedule="constant", milestones=())
    quick_lr: float = 0.05          # CPU scales: one epoch, cosine, this peak learning rate
    # the authors' main2.py (HEAD) with init=pretrained: the first `start_epochs` epochs at a constant
    # `start_lr` (paper scale only), and the utility decay raised at these fractions of the DCP
    # iterations (net.epoch_step: +0.1 at each but the last, 1.0 at the last; every scale)
    start_epochs: int = 0
    start_lr: float = 0.0
    decay_milestones: tuple[float, ...] = ()


_SGD = dict(batch_size=64, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4)
# The authors' CIFAR --pre_trained path: lr 0.01, 200 epochs, drops at 100/150/190, decay 0.7
_CIFAR_PRETRAINED = TrainSpec(epochs=200, **{**_SGD, "lr": 0.01}, milestones=(100 / 200, 150 / 200, 190 / 200))

ARCHS: dict[str, Arch] = {
    "vgg16": Arch("vgg16", "VGG-16", "vgg16_cifar", {"paper": {}, "quick": {"width": 0.25}, "smoke": {"width": 0.0625}},
                  0.42, "zero", "cifar10",
                  TrainSpec(epochs=200, **_SGD, milestones=(100 / 200, 150 / 200, 190 / 200)), 10,
                  pretrained_train=_CIFAR_PRETRAINED, quick_lr=0.02),
    "resnet32": Arch("resnet32", "ResNet-32", "resnet_cifar",
                     {"paper": {"depth": 32}, "quick": {"depth": 32, "width": 8}, "smoke": {"depth": 32, "width": 4}},
                     0.5, "inv_channels", "cifar10",
                     TrainSpec(epochs=300, **_SGD, milestones=(150 / 300, 200 / 300, 250 / 300, 290 / 300)), 10,
                     pretrained_train=_CIFAR_PRETRAINED),
    "resnet56": Arch("resnet56", "ResNet-56", "resnet_cifar",
                     {"paper": {"depth": 56}, "quick": {"depth": 56, "width": 8}, "smoke": {"depth": 56, "width": 4}},
                     0.5, "inv_channels", "cifar10",
                     TrainSpec(epochs=300, **_SGD, milestones=(150 / 300, 200 / 300, 250 / 300, 290 / 300)), 10,
                     pretrained_train=_CIFAR_PRETRAINED),
    # ImageNet: the authors start from torchvision's pretrained ResNet-50 (main2.py at HEAD, b7845f7):
    # 60 epochs, batch 64, lr 0.01 for the first epoch then 0.1, x0.1 at epochs 36/48/54 (scheduler
    # stepped at each epoch's end), warm-up 5 epochs, pr 0.3, decay 0.6 raised by net.epoch_step to
    # 0.7 (epoch 36), 0.8 (48) and 1.0 (54).
    "resnet50": Arch("resnet50", "ResNet-50", "resnet50_dcp",
                     {"paper": {}, "quick": {"width": 16}, "smoke": {"width": 4}}, 0.3, "inv_channels", "imagenet",
                     TrainSpec(epochs=90, batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4,
                               milestones=(30 / 90, 60 / 90)), 5,
                     dcp_init="pretrained",
                     pretrained_train=TrainSpec(epochs=60, **_SGD, milestones=(36 / 60, 48 / 60, 54 / 60)),
                     pretrained_decay=0.6,
                     finetune=TrainSpec(epochs=20, batch_size=64, lr=0.001, schedule="constant", milestones=()),
                     start_epochs=1, start_lr=0.01, decay_milestones=(36 / 60, 48 / 60, 54 / 60)),
}


def head_decay_schedule(decay: float, milestones: Sequence[float]) -> list[list[float]]:
    """The authors' ``epoch_step``: [fraction of the DCP iterations, decay from then on]; +0.1 at every
    milestone but the last (at most 1), 1.0 at the last."""
    out = []
    for j, f in enumerate(milestones):
        d = 1.0 if j == len(milestones) - 1 else min(1.0, round(decay + 0.1 * (j + 1), 6))
        out.append([round(f, 6), d])
    return out


def dcp_phases(cfg: RunConfig) -> list[tuple[str, TrainSpec]]:
    """The ``ctx.fit`` phases of a DCP run.  With ``method["start_epochs"] = k`` (the authors' ImageNet
    recipe: lr 0.01 for the first epoch, then 0.1): phase ``dcp-start``, k epochs at the constant
    ``start_lr``, then phase ``dcp``, the remaining epochs on ``cfg.train``'s schedule with its
    milestones at the same absolute epochs.  The optimizer is rebuilt between the phases (its momentum
    buffer restarts; the authors' keeps it).  A schedule of at most k epochs (``--epochs``) is one phase."""
    t, m = cfg.train, cfg.method
    k = int(m.get("start_epochs", 0))
    if k <= 0 or t.epochs <= k:
        return [("dcp", t)]
    rest = t.epochs - k
    first = replace(t, epochs=k, lr=float(m["start_lr"]), schedule="constant", milestones=(), warmup_epochs=0.0)
    milestones = tuple(max(e - k, 0) / rest for e in t.milestone_epochs())
    return [("dcp-start", first), ("dcp", replace(t, epochs=rest, milestones=milestones))]


@dataclass(frozen=True)
class Recipe:
    """The training of one chain: the unpruned run (and DCP from scratch), DCP started from the
    unpruned run, and L1's fine-tuning on a fraction of each epoch's batches; data options."""
    base: TrainSpec
    pretrained: TrainSpec
    finetune: TrainSpec
    finetune_fraction: float = 1.0
    data: tuple[tuple[str, str], ...] = ()


def _paper_recipe(arch: Arch) -> Recipe:
    return Recipe(arch.train, arch.pretrained_train, arch.finetune)


def _cpu_recipe(arch: Arch) -> Recipe:
    """CPU scales: one epoch, cosine decay (a step schedule needs several epochs), no augmentation
    (nothing to overfit in one epoch; the measurements are in docs/papers/dcp.md, "Scales"), a peak
    learning rate per architecture (Arch.quick_lr); starting from the
    unpruned run and fine-tuning use a tenth of it (the authors' 0.01 vs 0.1), and L1 fine-tuning
    lasts a fifth of an epoch (Li et al.'s 40 epochs are a fifth of a 200-epoch schedule); where DCP
    starts from the unpruned run (ImageNet), as long as DCP's training (:func:`chain`)."""
    base = TrainSpec(epochs=1, batch_size=64, lr=arch.quick_lr, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                     milestones=())
    return Recipe(base, replace(base, lr=arch.quick_lr / 10), replace(base, lr=arch.quick_lr / 10, schedule="constant"),
                  0.2, (("augment", "none"),))


def _quick_recipe(arch: Arch) -> Recipe:
    """Quick: the convergence rule's protocol (docs/calibration.md): all 55k images, 10 epochs of cosine
    decay from Arch.quick_lr, crop + flip (the authors' CIFAR augmentation), channels_last; starting
    from the unpruned run uses a tenth of the rate; L1-norm pruning fine-tunes for as long as DCP trains
    (10 epochs at a tenth of the rate, cosine): equal training after the pruning decision, not Li et
    al.'s fifth of a schedule."""
    base = TrainSpec(epochs=10, batch_size=64, lr=arch.quick_lr, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                     milestones=(), memory_format="channels_last")
    low = replace(base, lr=arch.quick_lr / 10)
    return Recipe(base, low, low, 1.0, (("augment", "crop_flip"),))


RECIPES: dict[str, Callable[[Arch], Recipe]] = {"paper": _paper_recipe, "quick": _quick_recipe, "smoke": _cpu_recipe}


TABLE1_ARCHS = ("vgg16", "resnet32", "resnet56")
CHANNEL_ARCHS = ("vgg16", "resnet32")
RATIO_SWEEP = {"paper": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8), "quick": (0.3, 0.5, 0.7), "smoke": (0.3, 0.5)}
RATIO_SWEEP_VGG = {"paper": (0.2, 0.3, 0.42, 0.5, 0.6, 0.7, 0.8), "quick": (0.25, 0.42, 0.6), "smoke": (0.3, 0.42)}

MAX_RATES = 20


def _rates(raw: str) -> tuple[float, ...]:
    prs = tuple(float(x) for x in raw.split(",") if x.strip())
    if not prs:
        raise ValueError("no rate given")
    if len(prs) > MAX_RATES:
        raise ValueError(f"{len(prs)} rates, above the bound of {MAX_RATES}: each rate trains its own runs")
    return prs


_rates.__name__ = "comma-separated pruning rates"

OPTIONS = Options({
    "pr": Option("DCP pruning rate (fraction of all maskable channels dropped) for table1, fig-channels and "
                 "imagenet (default: VGG-16 0.42, ResNet-32/56 0.5, ResNet-50 0.3)", float, low=0, below=1),
    "prs": Option("pruning rates swept by fig-ratio (default per scale, e.g. quick 0.3,0.5,0.7)", _rates,
                  low=0, below=1),
    "ratio_arch": Option("architecture of fig-ratio", str, "resnet32", choices=("vgg16", "resnet32", "resnet56")),
    "decay": Option("utility decay of active channels per iteration (default 0.6; 0.7 for CIFAR init=pretrained; "
                    "ImageNet: the start of the rising schedule x, x+0.1, x+0.2, then 1.0)", float, low=0, high=1),
    "warmup_frac": Option("fraction of the DCP iterations with every channel active (default: the authors' 10 of "
                          "200/300 epochs CIFAR, 5 of 60 ImageNet)", float, low=0, below=1),
    "select": Option("topk: exactly N - round(N*pr) channels kept; code: the authors' strict threshold", str, "topk",
                     choices=("topk", "code")),
    "scope": Option("global: one ranking over all layers (the authors' code); layer: top 1-pr of every layer (the "
                    "abstract's literal reading)", str, "global", choices=("global", "layer")),
    "l1_match": Option("flops: one keep fraction in every layer, FLOPs reduction matched to DCP's; layers: DCP's "
                       "per-layer channel counts", str, "flops", choices=("flops", "layers")),
    "init": Option("CIFAR DCP start: scratch, or pretrained (from the unpruned run: lr 0.01, decay 0.7)", str,
                   "scratch", choices=("scratch", "pretrained")),
    "imagenet_init": Option("paper-scale ImageNet unpruned ResNet-50: torchvision (the authors' pretrained weights) "
                            "or train (our own 90-epoch run)", str, "torchvision", choices=("torchvision", "train")),
})


def chain(request, arch_key: str, pr: float | None = None) -> dict[str, RunConfig]:
    """The three runs of one (architecture, pr): {"unpruned", "dcp", "l1"} (l1 ← dcp ← unpruned)."""
    arch, opts = ARCHS[arch_key], OPTIONS.read(request)
    scale = request.scale
    recipe = RECIPES[scale](arch)
    dataset = request.dataset_for(arch.paper_dataset)
    data = run_data(request, dataset, IMAGENET_SIZE if arch.paper_dataset == "imagenet" else CIFAR_SIZE,
                    **dict(recipe.data))
    if arch.model == "vgg16_cifar":  # its classifier flattens the last 1x1 map of a 32-px image
        need_size(PAPER_NAME, f"{arch.label} ({arch.model})", data, dataset, CIFAR_SIZE)
    args = dict(arch.args[scale])
    pr = float(opts.given("pr", arch.pr)) if pr is None else float(pr)
    init = arch.dcp_init if arch.paper_dataset == "imagenet" else opts.init
    base_train, ft_train, ft_frac = recipe.base, recipe.finetune, recipe.finetune_fraction
    dcp_train = recipe.pretrained if init == "pretrained" else recipe.base
    if init == "pretrained" and scale != "paper":
        # DCP and L1 both start from the trained unpruned run: at the CPU scales L1's fine-tuning lasts
        # as long as DCP's training from it (not a fifth of an epoch against DCP's whole one); the
        # paper scale keeps Li et al.'s fine-tuning, and the claim says so (_claims)
        ft_train, ft_frac = replace(ft_train, epochs=dcp_train.epochs), 1.0
    # warm-up: the same fraction of the DCP schedule as the authors' epochs
    authors = arch.pretrained_train if init == "pretrained" and arch.pretrained_train else arch.train
    warmup = opts.given("warmup_frac", arch.warmup_epochs / authors.epochs)
    decay = opts.given("decay", arch.pretrained_decay if init == "pretrained" else 0.6)
    # one global ranking (the code, the default) or one per layer; the key is only written when
    # it is not the default, so default runs keep their identity
    scope = {} if opts.scope == "global" else {"scope": opts.scope}
    # main2.py at HEAD: the decay rises at the lr drops (every scale, as fractions of the DCP iterations)
    # and the first epoch runs at lr 0.01 (paper scale); keys only written when used, so CIFAR runs keep
    # their identity
    head = {}
    if init == "pretrained" and arch.decay_milestones:
        head["decay_schedule"] = head_decay_schedule(decay, arch.decay_milestones)
    if init == "pretrained" and arch.start_epochs and scale == "paper":
        head.update(start_epochs=arch.start_epochs, start_lr=arch.start_lr)
    base_init = "train"
    if arch.paper_dataset == "imagenet" and scale == "paper" and dataset == "imagenet":
        base_init = opts.imagenet_init
    base = RunConfig(paper=PAPER_NAME, name=f"{arch_key}-unpruned", kind="unpruned", dataset=dataset,
                     model=arch.model, model_args=args, method={"init": base_init}, train=base_train, data=data)
    dcp = RunConfig(paper=PAPER_NAME, name=f"{arch_key}-dcp-pr{pr:g}", kind="dcp", dataset=dataset, model=arch.model,
                    model_args=args, train=dcp_train, data=data, parent=base,
                    method={"pr": pr, "decay": decay, "warmup_frac": round(warmup, 6), "u_init": arch.u_init,
                            "select": opts.select, "guard": True,
                            "init": init, **scope, **head})
    l1 = RunConfig(paper=PAPER_NAME, name=f"{arch_key}-dcp-pr{pr:g}-l1", kind="l1", dataset=dataset,
                   model=arch.model, model_args=args, train=ft_train, data=data, parent=dcp,
                   method={"criterion": "l1", "match": opts.l1_match,
                           "batches_frac": ft_frac})
    return {"unpruned": base, "dcp": dcp, "l1": l1}


# ============================================================================ trainers


def _build(cfg: RunConfig, info) -> tuple[nn.Module, Callable[[nn.Module], list[MaskSlot]]]:
    if cfg.model not in SLOTS:
        raise ConfigError(f"dcp has no model '{cfg.model}'; choose one of: {', '.join(SLOTS)}")
    model = build_model(cfg, info)
    return model, SLOTS[cfg.model]


def dcp_step(ctrl: DCPController):
    def step(model, x, y):
        ctrl.before_forward()
        out = model(x)
        return F.cross_entropy(out, y), out
    return step


def _val_eval(data):
    def evaluate(model) -> dict:
        return {"val_acc": topk_accuracy(collect_logits(D.unwrap(model), data.val), data.val_labels)}
    return evaluate


def _accs(out: dict) -> dict:
    return {"top1": topk_accuracy(out["test_logits"], out["test_labels"]),
            "top5": topk_accuracy(out["test_logits"], out["test_labels"], 5),
            "val_top1": topk_accuracy(out["val_logits"], out["val_labels"])}


def _input_shape(info) -> tuple[int, int, int]:
    return (info.in_channels, info.image_size, info.image_size)


def _load_torchvision_resnet50(model: nn.Module) -> None:
    try:
        from torchvision.models import ResNet50_Weights, resnet50

        state = resnet50(weights=ResNet50_Weights.IMAGENET1K_V1).state_dict()
    except Exception as e:  # no network, no cache
        raise ConfigError(f"cannot load torchvision's pretrained ResNet-50 ({type(e).__name__}); put "
                          f"resnet50-0676ba61.pth in $TORCH_HOME/hub/checkpoints or pass "
                          f"--set imagenet_init=train") from None
    model.load_state_dict(state)


def train_unpruned(ctx) -> dict:
    """The unpruned network, trained with the same recipe as DCP (or torchvision's weights)."""
    cfg = ctx.cfg
    data = ctx.data()
    model, _ = _build(cfg, data.info)
    if cfg.method.get("init") == "torchvision":
        _load_torchvision_resnet50(model)
        model = ctx.to_device(model)
    else:
        model = ctx.to_device(model)
        ctx.fit(model, ce_step, "train", eval_fn=_val_eval(data) if cfg.train.epochs > 3 else None)
    ctx.save_model(model)
    out = ctx.collect_outputs(model)
    macs = count_macs(D.unwrap(model), _input_shape(data.info))
    return {**_accs(out), "macs": macs, "params": count_params(model), "cost_convention": COST}


def dcp_controller(cfg: RunConfig, slots: Sequence[MaskSlot], steps_per_epoch: int) -> DCPController:
    """The controller of a DCP run: warm-up and decay milestones are fractions of its iterations."""
    m = cfg.method
    total = steps_per_epoch * cfg.train.epochs
    warmup = round(m["warmup_frac"] * total)
    if m["pr"] > 0 and m["warmup_frac"] > 0:
        warmup = max(1, warmup)
    schedule = [(round(f * total), d) for f, d in m.get("decay_schedule", ())]
    return DCPController([s.channels for s in slots], m["pr"], m["decay"], warmup, total, m["u_init"],
                         m.get("select", "topk"), m.get("guard", True), names=[s.name for s in slots],
                         scope=m.get("scope", "global"), decay_schedule=schedule)


def train_dcp(ctx) -> dict:
    cfg, m = ctx.cfg, ctx.cfg.method
    data = ctx.data()
    model, slots_fn = _build(cfg, data.info)
    if m.get("init") == "pretrained":
        model.load_state_dict(ctx.parent_state())
    shape = _input_shape(data.info)
    slots = slots_fn(model)
    cost = CostModel(model, slots, shape)  # the full network, before any mask is installed
    ctrl = dcp_controller(cfg, slots, len(data.train))
    warmup, total = ctrl.warmup_iters, ctrl.total_iters
    ctrl.install(slots)
    model = ctx.to_device(model)
    ctrl.to(ctx.device)
    done = 0
    for phase, spec in dcp_phases(cfg):
        ctx.fit(model, dcp_step(ctrl), phase, spec=spec, stateful=[ctrl], batches=EpochOffsetBatches(data.train, done),
                eval_fn=_val_eval(data) if cfg.train.epochs > 3 else None)
        done += spec.epochs
    ctrl.finalize()
    bare = D.unwrap(model)
    ctx.save_model(bare)
    if D.env().is_main:
        atomic_torch_save(ctrl.state_dict(), ctx.run.dir / "dcp_state.pt")
    masked_val = collect_logits(bare, tracked(data.val, "masked outputs: validation"))
    masked_test = collect_logits(bare, tracked(data.test, "masked outputs: test"))
    keep = ctrl.keep_indices()
    kept = [int(k.numel()) for k in keep]
    pruned = export_pruned(bare, slots_fn, keep)
    ctx.save_model(pruned, "pruned")
    hist = int(ctrl.hist_count)
    out = ctx.collect_outputs(pruned, masked_val_logits=masked_val, masked_test_logits=masked_test,
                              hist_iter=ctrl.hist_iter[:hist].cpu(), hist_util=ctrl.hist_util[:hist].cpu(),
                              hist_mask=ctrl.hist_mask[:hist].cpu(), hist_flips=ctrl.hist_flips[:hist].cpu(),
                              utility=ctrl.utility.cpu(), mask=ctrl.mask.cpu())
    macs = count_macs(pruned, shape)
    params = count_params(pruned)
    pred_macs, pred_params = cost.predict(kept)
    masked_top1 = topk_accuracy(masked_test, out["test_labels"])
    res = {**_accs(out), "masked_top1": masked_top1,
           "masked_val_top1": topk_accuracy(masked_val, out["val_labels"]),
           "export_max_abs_diff": float((out["test_logits"] - masked_test).abs().max()),
           "export_agreement": float((out["test_logits"].argmax(-1) == masked_test.argmax(-1)).double().mean() * 100),
           "macs_full": cost.total_macs, "params_full": cost.total_params, "macs": macs, "params": params,
           "macs_predicted": pred_macs, "params_predicted": pred_params,
           "flops_reduction_pct": 100 * (1 - macs / cost.total_macs),
           "params_reduction_pct": 100 * (1 - params / cost.total_params),
           "channels_reduction_pct": 100 * (1 - sum(kept) / sum(cost.sizes)),
           "layers": [s.name for s in slots], "channels": cost.sizes, "kept": kept,
           "keep_count": ctrl.keep_count, "warmup_iters": warmup, "total_iters": total,
           "guard_hits": int(ctrl.guard_hits), "cost_convention": COST}
    if abs(res["top1"] - masked_top1) > 0.1 or macs != pred_macs or params != pred_params:
        ctx.log(f"WARNING dcp export mismatch: top-1 {res['top1']:.3f} vs masked {masked_top1:.3f}, "
                f"MACs {macs} vs predicted {pred_macs}, params {params} vs predicted {pred_params}")
    return res


def train_l1(ctx) -> dict:
    """Li et al.: prune the trained unpruned network by filter L1 norm, then fine-tune."""
    cfg, m = ctx.cfg, ctx.cfg.method
    dcp_cfg = cfg.parent
    base_cfg = dcp_cfg.parent if dcp_cfg is not None else None
    if dcp_cfg is None or base_cfg is None or dcp_cfg.kind != "dcp" or base_cfg.kind != "unpruned":
        raise ConfigError(f"run {cfg.name}: an l1 run needs the chain unpruned -> dcp -> l1")
    data = ctx.data()
    model, slots_fn = _build(cfg, data.info)
    ctx.ancestor(base_cfg).load_into(model, map_location="cpu")
    dcp_res = ctx.ancestor(dcp_cfg).results
    shape = _input_shape(data.info)
    slots = slots_fn(model)
    cost = CostModel(model, slots, shape)
    target = dcp_res["flops_reduction_pct"] / 100
    if m["match"] == "layers":
        counts, fraction = list(dcp_res["kept"]), None
    else:
        fraction, counts = match_uniform_fraction(cost, target)
    keep = [l1_keep(s, n) for s, n in zip(slots, counts)]
    model = export_pruned(model, slots_fn, keep)
    model = ctx.to_device(model)
    before = topk_accuracy(collect_logits(model, data.test), data.test_labels)
    batches = data.train if m.get("batches_frac", 1.0) >= 1 else TruncatedBatches(data.train, m["batches_frac"])
    ctx.fit(model, ce_step, "finetune", batches=batches,
            eval_fn=_val_eval(data) if cfg.train.epochs > 3 else None)
    ctx.save_model(model)
    out = ctx.collect_outputs(model)
    macs, params = count_macs(D.unwrap(model), shape), count_params(model)
    pred_macs, pred_params = cost.predict(counts)
    return {**_accs(out), "top1_before_finetune": before, "macs_full": cost.total_macs,
            "params_full": cost.total_params, "macs": macs, "params": params, "macs_predicted": pred_macs,
            "params_predicted": pred_params, "flops_reduction_pct": 100 * (1 - macs / cost.total_macs),
            "params_reduction_pct": 100 * (1 - params / cost.total_params),
            "target_flops_reduction_pct": 100 * target, "keep_fraction": fraction,
            "layers": [s.name for s in slots], "channels": cost.sizes, "kept": counts,
            "finetune_batches": len(batches), "cost_convention": COST}


# ============================================================================ artifacts

METHODS = ("unpruned", "dcp", "l1")
COLUMNS = ["top1", "top1_change", "flops_reduction_pct", "params_reduction_pct", "mmacs", "params_m", "masked_top1"]
COST_LINE = f"{CONVENTIONS[COST]}; reductions relative to the same unpruned model"
GAP_NOTE = ("± of a difference (top1_change, the claims below): a paired 95 % bootstrap over the test images for one "
            "seed, the 95 % t-interval of the per-seed differences otherwise (repro.exits.gap_with_spread)")


def _chains(request, archs: Sequence[str]) -> dict[str, RunConfig]:
    """One chain per architecture, its runs named ``<arch>/<method>``."""
    return {f"{a}/{m}": c for a in archs for m, c in chain(request, a).items()}


def _value(rr, key: str) -> tuple[float, float]:
    return mean_and_spread([float(r.results[key]) for r in rr])


def _method_rows(runs, arch: str, top5: bool = False) -> list[dict]:
    """Our long rows of one chain: top-1 (and top-5), its change vs the unpruned run (a paired gap),
    FLOPs and params reductions, MMACs, params, and DCP's top-1 with its masks (before export)."""
    rows, base = [], runs[f"{arch}/unpruned"]
    for method in METHODS:
        key = f"{arch}/{method}"
        rr = runs[key]
        cells = {"top1": top1_with_spread(rr), **({"top5": _value(rr, "top5")} if top5 else {})}
        if method == "unpruned":
            cells.update(flops_reduction_pct=(0.0, math.nan), params_reduction_pct=(0.0, math.nan))
        else:
            cells["top1_change"] = gap_with_spread(correct_per_seed(rr), correct_per_seed(base))
            cells.update({c: _value(rr, c) for c in ("flops_reduction_pct", "params_reduction_pct")})
        cells.update(mmacs=(_value(rr, "macs")[0] / 1e6, math.nan), params_m=(_value(rr, "params")[0] / 1e6, math.nan))
        if method == "dcp":
            cells["masked_top1"] = _value(rr, "masked_top1")
        rows += [{"row": key, "column": c, "value": v, "spread": s} for c, (v, s) in cells.items()]
    return rows


def _labels(runs, archs: Sequence[str]) -> dict[str, str]:
    out = {}
    for a in archs:
        label = ARCHS[a].label
        match = "same FLOPs" if runs.config(f"{a}/l1").method["match"] == "flops" else "same layer widths"
        out.update({f"{a}/unpruned": f"{label} unpruned",
                    f"{a}/dcp": f"{label} DCP (pr {runs.config(f'{a}/dcp').method['pr']:g})",
                    f"{a}/l1": f"{label} L1-norm + fine-tune ({match})"})
    return out


def _claims(runs, archs: Sequence[str]) -> list[Claim]:
    """DCP against L1-norm at the same FLOPs and against the unpruned network: the authors claim
    superiority but print neither an L1 nor an unpruned number, so there is no paper gap."""
    out = []
    for a in archs:
        d, l1, u = (correct_per_seed(runs[f"{a}/{m}"]) for m in ("dcp", "l1", "unpruned"))
        label = ARCHS[a].label
        out += [Claim(f"{label}: DCP − L1-norm top-1 at the same FLOPs{_training_gap(runs, a)} "
                      "(paper: DCP is superior, no L1 number)",
                      gap_with_spread(d, l1, arms=(f"{a}/dcp", f"{a}/l1")), sign=+1, headline=True),
                Claim(f"{label}: DCP − unpruned top-1", gap_with_spread(d, u, arms=(f"{a}/dcp", f"{a}/unpruned")))]
    return out


def finetune_epochs(l1: RunConfig) -> float:
    """The epochs of L1's fine-tuning (its schedule times the fraction of each epoch's batches)."""
    return l1.train.epochs * float(l1.method.get("batches_frac", 1.0))


def _training_gap(runs, arch: str) -> str:
    """Where DCP starts from the unpruned run and L1's fine-tuning from it is shorter than DCP's
    training (the paper scale's Li et al. recipe), the claim says so: a confound stated."""
    dcp, l1 = runs.config(f"{arch}/dcp"), runs.config(f"{arch}/l1")
    if dcp is None or l1 is None or dcp.method.get("init") != "pretrained":
        return ""
    ft = finetune_epochs(l1)
    return "" if ft == dcp.train.epochs else f", L1 fine-tuned {ft:g} epochs against DCP's {dcp.train.epochs:g}"


def _check_notes(runs, archs: Sequence[str]) -> list[str]:
    """What every run checked: export vs masked network, exact cost, guard hits, L1's match."""
    notes = []
    for a in archs:
        dr, lr = runs[f"{a}/dcp"], runs[f"{a}/l1"]
        m, l1cfg = runs.config(f"{a}/dcp").method, runs.config(f"{a}/l1")
        diff = max(abs(r.results["top1"] - r.results["masked_top1"]) for r in dr)
        exact = all(r.results["macs"] == r.results["macs_predicted"] and
                    r.results["params"] == r.results["params_predicted"] for r in dr + lr)
        hits = sum(r.results.get("guard_hits", 0) for r in dr)
        fr = [r.results.get("keep_fraction") for r in lr]
        match = (f"uniform keep fraction {', '.join(f'{f:.3f}' for f in fr)} per layer"
                 if all(f is not None for f in fr) else "DCP's per-layer channel counts")
        rises = "".join(f" -> {d:g} at {100 * f:g} %" for f, d in m.get("decay_schedule", ()))
        rises += " of the iterations" if rises else ""
        start = (f", lr {m['start_lr']:g} for the first {m['start_epochs']} epoch(s)" if m.get("start_epochs") else "")
        notes.append(f"{ARCHS[a].label}: DCP pr {m['pr']:g}, decay {m['decay']:g}{rises}{start}, warm-up "
                     f"{dr[0].results['warmup_iters']}/{dr[0].results['total_iters']} iterations, init {m['init']}; "
                     f"exported vs masked test top-1 |Δ| ≤ {diff:.3f} pp; fvcore MACs/params of the exported "
                     f"networks {'equal' if exact else 'DIFFER FROM'} the mask's prediction; layers kept alive "
                     f"by the ≥1-channel guard: {hits} iteration-layers; L1 ({l1cfg.method['match']} match): "
                     f"{match}, fine-tuned {lr[0].results['finetune_batches']} batches/epoch x "
                     f"{l1cfg.train.epochs} epoch(s)")
    return notes


def _chain_table(title: str, artifact: str, runs, archs: Sequence[str], columns: Sequence[str],
                 notes: Sequence[str]) -> Table:
    """Unpruned, DCP and L1 of each architecture, the paper's numbers (the authors' README: DCP's
    top-1 and "FLOPs pruned") on our DCP rows."""
    ours = pd.DataFrame([r for a in archs for r in _method_rows(runs, a, "top5" in columns)])
    ref = load_reference(PAPER_NAME)
    ref = pd.DataFrame([{"row": f"{r['row']}/dcp", "column": r["column"], "value": r["value"]}
                        for _, r in ref[ref["artifact"] == artifact].iterrows() if r["row"] in archs],
                       columns=["row", "column", "value"])
    keys = [f"{a}/{m}" for a in archs for m in METHODS]
    cfgs = [runs.config(k) for k in keys]
    return Table(title, cfgs[0].dataset, model_names(cfgs), COST_LINE, ours, keys, columns, _labels(runs, archs),
                 reference=ref, notes=[*notes, GAP_NOTE, *_check_notes(runs, archs)], claims=_claims(runs, archs))


def table1_runs(request) -> dict[str, RunConfig]:
    return _chains(request, TABLE1_ARCHS)


def build_table1(request, runs, settings) -> Table:
    return _chain_table("Top-1 (%), FLOPs and params reduction (%): DCP vs L1-norm pruning (CIFAR-10)", "table1", runs,
                        TABLE1_ARCHS, COLUMNS,
                        ["top1_change: top-1 minus the unpruned run's (pp); masked_top1: DCP network with its masks, "
                         "before export; paper numbers: the authors' README (pruned top-1, 'FLOPs pruned')"])


def imagenet_runs(request) -> dict[str, RunConfig]:
    return _chains(request, ("resnet50",))


def build_imagenet(request, runs, settings) -> Table:
    init = ("torchvision's pretrained weights (IMAGENET1K_V1), as the authors"
            if runs.config("resnet50/unpruned").method["init"] == "torchvision"
            else "our own training run (stands in for the authors' pretrained ResNet-50)")
    t = runs.config("resnet50/dcp").train
    drops = f" x{t.gamma:g} at epochs {t.milestone_epochs()}" if t.schedule == "multistep" and t.milestones else ""
    notes = [f"unpruned ResNet-50: {init}; DCP starts from it",
             f"DCP recipe: main2.py at HEAD, {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g} {t.schedule}{drops}"]
    return _chain_table("ResNet-50 top-1/top-5 (%), FLOPs and params reduction (%): DCP vs L1-norm (ImageNet)", "imagenet",
                        runs, ("resnet50",), ["top1", "top5", *COLUMNS[1:]], notes)


def _ratio_setup(request) -> tuple[str, tuple[float, ...]]:
    opts = OPTIONS.read(request)
    arch = opts.ratio_arch
    prs = opts.given("prs", (RATIO_SWEEP_VGG if arch == "vgg16" else RATIO_SWEEP)[request.scale])
    return arch, tuple(sorted(set(prs)))


def ratio_runs(request) -> dict[str, RunConfig]:
    """The unpruned run (the same for every pr), then DCP and L1 per pr, named ``<method>/pr<pr>``."""
    arch, prs = _ratio_setup(request)
    out = {}
    for pr in prs:
        runs = chain(request, arch, pr)
        out.setdefault("unpruned", runs["unpruned"])
        out.update({f"dcp/pr{pr:g}": runs["dcp"], f"l1/pr{pr:g}": runs["l1"]})
    return out


def build_fig_ratio(request, runs, settings) -> Figure:
    arch, prs = _ratio_setup(request)
    label = ARCHS[arch].label
    series, frames = [], []
    for method, name in (("dcp", "DCP"), ("l1", "L1-norm + fine-tune (same FLOPs)")):
        points = []
        for pr in prs:
            rr = runs[f"{method}/pr{pr:g}"]
            (x, x_spread), (y, e) = _value(rr, "flops_reduction_pct"), top1_with_spread(rr)
            points.append((x, y, e))
            frames.append({"method": name, "source": "ours", "pr": pr, "flops_reduction_pct": x,
                           "flops_reduction_spread": x_spread,
                           "params_reduction_pct": _value(rr, "params_reduction_pct")[0], "top1": y,
                           "top1_spread": e, "seeds": len(rr)})
        xs, ys, es = zip(*sorted(points, key=lambda t: t[0]))
        series.append(Series(name, list(xs), list(ys), list(es)))
    base = runs["unpruned"]
    y, e = top1_with_spread(base)
    series.append(Series(f"{label} unpruned", [0.0], [y], [e], kind="points"))
    frames.append({"method": "unpruned", "source": "ours", "pr": 0.0, "flops_reduction_pct": 0.0, "top1": y,
                   "top1_spread": e, "seeds": len(base)})
    pt, pf = (paper_value(PAPER_NAME, "table1", arch, c) for c in ("top1", "flops_reduction_pct"))
    paper = []
    if pt is not None and pf is not None:  # the authors' README: CIFAR-10
        name = paper_label("cifar10", f"DCP {label} (authors' README)")
        paper.append(Series(name, [pf], [pt], kind="paper"))
        frames.append({"method": name, "source": "paper", "pr": math.nan, "flops_reduction_pct": pf, "top1": pt})
    cfg = runs.config("unpruned")
    same = cfg.dataset == "cifar10" and request.scale == "paper"  # the paper's dataset: one axis
    return Figure(f"{label}: top-1 vs FLOPs reduction (pr swept), DCP vs L1-norm", cfg.dataset,
                  model_names([runs.config(k) for k in runs]), COST_LINE, series,
                  f"FLOPs reduction (% of the unpruned model's MMACs, {COST})",
                  f"test top-1 (%) on {dataset_name(cfg.dataset)}", pd.DataFrame(frames), paper=paper,
                  paper_axes=None if same else ("FLOPs reduction (%, the README's \"FLOPs pruned\")",
                                                f"top-1 (%) on {dataset_name('cifar10')}"),
                  paper_title=paper_label("cifar10", "authors' README"), paper_sharex=True,
                  notes=["band and error bars: the 95 % t-interval over seeds, or the 95 % bootstrap half-width "
                         "for one seed"])


def channels_runs(request) -> dict[str, RunConfig]:
    return {a: chain(request, a)["dcp"] for a in CHANNEL_ARCHS}


def _history_frame(arch: str, run) -> pd.DataFrame:
    o, r = run.outputs, run.results
    it, util, mask, flips = o["hist_iter"], o["hist_util"], o["hist_mask"], o["hist_flips"]
    sizes = r["channels"]
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    rows = []
    for li, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        for t in range(it.numel()):
            m = mask[t, a:b]
            u = util[t, a:b]
            rows.append({"arch": arch, "layer": r["layers"][li], "layer_index": li, "channels": sizes[li],
                         "kept_final": r["kept"][li], "iteration": int(it[t]),
                         "progress": int(it[t]) / max(r["total_iters"], 1), "active": int(m.sum()),
                         "flips_since_previous": float(flips[t, li]),
                         "utility_mean_active": float(u[m].mean()) if m.any() else math.nan,
                         "utility_mean_inactive": float(u[~m].mean()) if (~m).any() else math.nan})
    return pd.DataFrame(rows)


def _few_layers(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})


def build_fig_channels(request, runs, settings) -> Figure:
    """Per architecture (seed 0): the channels each layer keeps, and for its first, middle and last
    layer the active fraction and the mask flips over training."""
    panels = {a: (runs[a][0].results, runs.config(a).method["pr"], _history_frame(a, runs[a][0]))
              for a in CHANNEL_ARCHS}

    def draw():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from repro.render import place_legend

        fig, axes = plt.subplots(len(panels), 3, figsize=(14, 4.2 * len(panels)), squeeze=False)
        for row, (arch, (r, pr, df)) in enumerate(panels.items()):
            label = ARCHS[arch].label
            ax = axes[row][0]
            idx = list(range(len(r["channels"])))
            ax.bar(idx, r["channels"], color="0.85", label="channels")
            ax.bar(idx, r["kept"], color="tab:blue", label="kept after training")
            ax.set_xlabel("maskable layer (forward order)")
            ax.set_ylabel("output channels of the layer (count)")
            ax.set_title(f"{label}: kept {sum(r['kept'])}/{sum(r['channels'])} (pr {pr:g}), "
                         f"FLOPs −{r['flops_reduction_pct']:.1f} %", fontsize=9)
            place_legend(ax, "best")
            warm = r["warmup_iters"] / max(r["total_iters"], 1)
            for li in _few_layers(len(r["channels"])):
                d = df[df["layer_index"] == li]
                name = f"layer {li} ({r['layers'][li]}, {r['channels'][li]} ch)"
                axes[row][1].plot(d["progress"], d["active"] / r["channels"][li], "-o", ms=2, label=name)
                axes[row][2].plot(d["progress"], d["flips_since_previous"] / r["channels"][li], "-o", ms=2,
                                  label=name)
            axes[row][1].set_ylabel("active fraction of the layer's channels")
            axes[row][2].set_ylabel("mask flips per channel since last snapshot")
            for ax in axes[row][1:]:
                ax.axvline(warm, color="0.5", ls=":", lw=1)
                ax.set_xlabel("fraction of training iterations (dotted: end of warm-up)")
                place_legend(ax, "best")
                ax.grid(alpha=0.3)
            axes[row][1].set_title(f"{label}: active set over training", fontsize=9)
            axes[row][2].set_title(f"{label}: active-set changes over training", fontsize=9)
        return fig

    cfgs = [runs.config(a) for a in CHANNEL_ARCHS]
    return Figure("Channels kept per layer, and the active set over training", cfgs[0].dataset, model_names(cfgs),
                  COST_LINE, data=pd.concat([df for _, _, df in panels.values()], ignore_index=True), draw=draw,
                  dpi=130, notes=["snapshots every 1/40 of training; flips = channels entering or leaving the "
                                  "active set"])


PAPER = Paper(
    name=PAPER_NAME,
    title="Shen et al., Learning to Prune in Training via Dynamic Channel Propagation (ICPR 2020)",
    artifacts={a.name: a for a in [
        Artifact("table1", "CIFAR-10 VGG-16 / ResNet-32 / ResNet-56: unpruned, DCP and L1-norm pruning at the same "
                 "FLOPs (top-1, FLOPs and params reduction)", table1_runs, build_table1,
                 baselines=tuple(f"{a}/unpruned" for a in TABLE1_ARCHS), headline=True),
        Artifact("fig-ratio", "Top-1 vs FLOPs reduction over a sweep of pr, DCP vs L1-norm", ratio_runs,
                 build_fig_ratio, baselines=("unpruned",)),
        Artifact("fig-channels", "Channels kept per layer, and the active set over training (VGG-16, ResNet-32)",
                 channels_runs, build_fig_channels,
                 baselines=CHANNEL_ARCHS),
        Artifact("imagenet", "ResNet-50 (ImageNet at paper scale): unpruned, DCP from it, L1-norm at the same FLOPs",
                 imagenet_runs, build_imagenet,
                 baselines=("resnet50/unpruned",)),
    ]},
    trainers={"unpruned": train_unpruned, "dcp": train_dcp, "l1": train_l1},
    options=OPTIONS,
)
