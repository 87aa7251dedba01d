"""Backbones cut into stages, exits attached between them, and channel-mask slots.

Three small pieces shared by the ResNet, DenseNet and VGG families:

- :class:`StagedBackbone`: a plain single-exit classifier written as ``num_stages``
  stages plus a classifier (``forward_stage(i, x)``, ``forward_classifier(x)``);
- :class:`GatedBackbone`: a :class:`~repro.models.base.MultiExitNet` made of a staged
  backbone and one head after each chosen stage; the last exit is the backbone's own
  classifier.  Heads: decision gates (GAP → Linear) and GlanceNet bypasses (BN → ReLU →
  GAP → Linear);
- :class:`MaskSlot` / :func:`prune_channels`: where a channel mask may sit (after a
  BatchNorm, before its ReLU) and how to cut the masked channels out of the producing
  conv/BN and the consuming conv/linear for real (docs/papers/dcp.md);
  :func:`export_pruned` does it for every slot of a copy, :func:`l1_keep` picks a slot's
  filters by L1 norm (Li et al.), :class:`CostModel` predicts the pruned net's fvcore cost.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

import torch
from torch import nn

from repro.models.base import MultiExitNet


def init_weights(model: nn.Module) -> None:
    """torchvision-style init: He-normal (fan_out) convs, BN γ=1 β=0, linear bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def scaled(channels: int, width: float) -> int:
    """``channels × width``, rounded, at least 1."""
    return max(1, int(round(channels * width)))


class StagedBackbone(nn.Module):
    """A single-exit classifier cut into stages.

    Subclasses set ``stages`` (an ``nn.ModuleList``), ``classifier`` (feature map
    → logits), ``stage_channels`` (output channels of each stage) and
    ``num_classes``; the rest follows.
    """

    stages: nn.ModuleList
    classifier: nn.Module
    stage_channels: list[int]
    num_classes: int

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.stages[i](x)

    def forward_classifier(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before the classifier (what bias loss reads)."""
        for i in range(self.num_stages):
            x = self.forward_stage(i, x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_classifier(self.forward_features(x))


class LinearGate(nn.Module):
    """Decision gate: global average pooling → one Linear (d = Wx + b, raw distances)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class BypassHead(nn.Module):
    """GlanceNet bypass: BN → ReLU → global average pooling → Linear (logits; callers apply softmax)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.norm(x))), 1))


HeadFactory = Callable[[int, int], nn.Module]


class GatedBackbone(MultiExitNet):
    """A staged backbone with a head after each stage in ``exits_after`` (0-based).

    Exit ``j < len(exits_after)`` is ``heads[j]`` on the output of backbone stage
    ``exits_after[j]``; the last exit is the backbone's classifier on the last
    stage.  MultiExitNet stage ``j`` runs the backbone stages between two exits.
    With ``exits_after=(0, 1, 2)`` on a 4-stage backbone there are 4 exits.

    ``heads`` is an ``nn.ModuleList``: replace a head with ``set_head(j, module)``
    (or plain item assignment); the backbone's parameters are untouched by it, so
    heads can be trained on a frozen backbone (:meth:`freeze_backbone`).
    """

    def __init__(
        self,
        backbone: StagedBackbone,
        exits_after: Sequence[int] | None = None,
        num_classes: int | None = None,
        head_factory: HeadFactory = LinearGate,
    ) -> None:
        super().__init__()
        n = backbone.num_stages
        if exits_after is None:
            exits_after = tuple(range(n - 1))
        exits_after = tuple(int(i) for i in exits_after)
        if list(exits_after) != sorted(set(exits_after)) or any(i < 0 or i >= n - 1 for i in exits_after):
            raise ValueError(f"exits_after must be increasing stage indices in [0, {n - 2}], got {exits_after}")
        if num_classes is None:
            num_classes = backbone.num_classes
        self.backbone = backbone
        self.exits_after = exits_after
        self.num_classes = num_classes
        self.num_exits = len(exits_after) + 1
        self.heads = nn.ModuleList(
            head_factory(backbone.stage_channels[i], num_classes) for i in exits_after
        )
        bounds = (-1, *exits_after, n - 1)
        # backbone stages run by exit j: bounds[j]+1 .. bounds[j+1]
        self._spans = [tuple(range(bounds[j] + 1, bounds[j + 1] + 1)) for j in range(self.num_exits)]

    @property
    def gates(self) -> nn.ModuleList:
        return self.heads

    def set_head(self, j: int, module: nn.Module) -> None:
        self.heads[j] = module

    def freeze_backbone(self) -> None:
        """requires_grad=False on the backbone and eval mode for it (BN statistics frozen)."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def stage_span(self, j: int) -> tuple[int, ...]:
        """The backbone stages that MultiExitNet stage ``j`` runs."""
        return self._spans[j]

    def stage(self, i: int, state: torch.Tensor) -> torch.Tensor:
        for s in self._spans[i]:
            state = self.backbone.forward_stage(s, state)
        return state

    def head(self, i: int, state: torch.Tensor, prev_logits: torch.Tensor | None) -> torch.Tensor:
        if i < len(self.heads):
            return self.heads[i](state)
        return self.backbone.forward_classifier(state)

    @torch.no_grad()
    def pooled_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Global-average-pooled feature maps at every early exit (what linear gates on them read)."""
        feats, state = [], x
        for i in range(len(self.heads)):
            state = self.stage(i, state)
            feats.append(state.float().mean((2, 3)))
        return feats


# ---------------------------------------------------------------------------
# channel-mask slots (Dynamic Channel Propagation)


@dataclass
class MaskSlot:
    """One maskable group of channels.

    ``conv`` → ``bn`` produce the channels; ``getattr(owner, attr)`` (an
    ``nn.Identity`` by default) sits between ``bn`` and the ReLU, where a mask
    module goes; ``consumers`` are the layers that read these channels as input
    (an ``nn.Conv2d``, or an ``nn.Linear`` reading the flattened map, channel
    major).
    """

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    owner: nn.Module
    attr: str
    consumers: list[nn.Module] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.bn.num_features

    def set_mask(self, module: nn.Module) -> None:
        setattr(self.owner, self.attr, module)

    def get_mask(self) -> nn.Module:
        return getattr(self.owner, self.attr)

    def clear_mask(self) -> None:
        setattr(self.owner, self.attr, nn.Identity())


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone())


def prune_channels(slot: MaskSlot, keep: torch.Tensor | Sequence[int]) -> None:
    """Keep only channels ``keep`` of ``slot``, in place, and put an Identity back in the slot.

    Slices the producing conv's output channels (weight and bias), every BN
    tensor (weight, bias, running mean and variance), and the consumers' input
    channels, so the smaller network computes exactly what the masked one did
    when the mask zeroed the other channels (pass the kept indices in
    ascending order to keep the channel order).
    """
    idx = torch.as_tensor(keep, dtype=torch.long, device=slot.bn.weight.device).flatten()
    c = slot.channels
    if idx.numel() == 0:
        raise ValueError(f"{slot.name}: cannot keep zero channels")
    if int(idx.min()) < 0 or int(idx.max()) >= c:
        raise ValueError(f"{slot.name}: channel index out of range 0..{c - 1}")
    conv, bn = slot.conv, slot.bn
    if conv.groups != 1:
        raise NotImplementedError("grouped convolutions are not sliceable here")
    conv.weight = _param(conv.weight[idx])
    if conv.bias is not None:
        conv.bias = _param(conv.bias[idx])
    conv.out_channels = idx.numel()
    if bn.affine:
        bn.weight = _param(bn.weight[idx])
        bn.bias = _param(bn.bias[idx])
    if bn.track_running_stats and bn.running_mean is not None:
        bn.running_mean = bn.running_mean[idx].clone()
        bn.running_var = bn.running_var[idx].clone()
    bn.num_features = idx.numel()
    for m in slot.consumers:
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise NotImplementedError("grouped convolutions are not sliceable here")
            m.weight = _param(m.weight[:, idx])
            m.in_channels = idx.numel()
        elif isinstance(m, nn.Linear):
            if m.in_features % c:
                raise ValueError(f"{slot.name}: Linear in_features {m.in_features} is not a multiple of {c}")
            hw = m.in_features // c
            cols = (idx[:, None] * hw + torch.arange(hw, device=idx.device)[None, :]).flatten()
            m.weight = _param(m.weight[:, cols])
            m.in_features = cols.numel()
        else:
            raise TypeError(f"{slot.name}: cannot slice the inputs of {type(m).__name__}")
    slot.clear_mask()


class CostModel:
    """The fvcore cost and parameter count of a maskable network as a function of how many
    channels each slot keeps, from one count of the full network.

    fvcore's cost of a conv is ``out_c · H·W · in_c · k²`` (linear: ``in · out``; BN in
    eval: 2 per element), so slicing a slot's channels scales the producing conv and BN
    by ``kept/C`` and the consumer by ``kept_in/C_in``; nothing else changes (ReLU,
    max-pool and the mask's multiply are not counted).  Exact rational arithmetic: the
    prediction must equal fvcore's count of the exported network to the unit.
    """

    def __init__(self, model: nn.Module, slots: Sequence[MaskSlot], input_shape: Sequence[int]):
        from repro.flops import count_by_module

        total, by_module = count_by_module(model, input_shape, "fvcore")
        total = int(total)
        names = {id(m): n for n, m in model.named_modules()}
        out_slot: dict[int, int] = {}
        in_slot: dict[int, int] = {}
        modules: dict[int, nn.Module] = {}
        for j, s in enumerate(slots):
            for m in (s.conv, s.bn):
                out_slot[id(m)] = j
                modules[id(m)] = m
            for m in s.consumers:
                in_slot[id(m)] = j
                modules[id(m)] = m
        self.sizes = [s.channels for s in slots]
        self.total_macs, self.total_params = total, sum(p.numel() for p in model.parameters())
        self.terms: list[tuple[int, int, int, int | None, int | None]] = []
        for mid, m in modules.items():
            w = m.weight.numel() if getattr(m, "weight", None) is not None else 0
            b = m.bias.numel() if getattr(m, "bias", None) is not None else 0
            # a BN's bias is per channel like its weight; a conv's bias follows its outputs; a
            # Linear consumer's bias follows its (unsliced) outputs
            self.terms.append((int(by_module.get(names[mid], 0)), w, b, out_slot.get(mid), in_slot.get(mid)))

    def predict(self, kept: Sequence[int]) -> tuple[int, int]:
        """(fvcore MACs, params) of the network with ``kept[j]`` channels in slot j."""
        if len(kept) != len(self.sizes):
            raise ValueError("one kept count per slot")
        macs, params = Fraction(self.total_macs), Fraction(self.total_params)
        for m_macs, w, b, o, i in self.terms:
            ro = Fraction(kept[o], self.sizes[o]) if o is not None else Fraction(1)
            ri = Fraction(kept[i], self.sizes[i]) if i is not None else Fraction(1)
            macs += m_macs * (ro * ri - 1)
            params += w * (ro * ri - 1) + b * (ro - 1)
        return int(round(macs)), int(round(params))


def export_pruned(model: nn.Module, slots_fn: Callable[[nn.Module], list[MaskSlot]],
                  keep: Sequence[torch.Tensor]) -> nn.Module:
    """A physically smaller copy of ``model``: slot j keeps channels ``keep[j]`` (conv, BN with
    its running statistics, and the consumer sliced; the mask slots back to Identity)."""
    out = copy.deepcopy(model)
    slots = slots_fn(out)
    for s in slots:
        s.clear_mask()
    for s, idx in zip(slots, keep):
        prune_channels(s, torch.as_tensor(idx, dtype=torch.long).sort().values)
    return out


def l1_keep(slot: MaskSlot, n: int) -> torch.Tensor:
    """Li et al.: the ``n`` filters of the slot's conv with the largest L1 norm
    (Σ|W| over input channels and kernel), in ascending channel order."""
    norms = slot.conv.weight.detach().abs().sum(dim=(1, 2, 3))
    order = torch.sort(norms, descending=True, stable=True).indices
    return order[:n].sort().values.cpu()
