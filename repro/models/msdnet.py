"""MSDNet (Huang et al., ICLR 2018) with IMTA's training options (Li et al., ICCV 2019).

A multi-scale dense network: the first layer builds a pyramid of ``nScales`` feature maps
(each half the resolution of the previous); every later layer appends ``growthRate *
grFactor[s]`` channels to scale ``s``, from the same scale and, where it exists, the finer
one (a strided conv), concatenated to the input.  With ``prune='max'`` the finest scales
are dropped as depth grows, each drop followed by a 1x1 transition.  Exit ``i`` sits on the
coarsest scale after block ``i``.  Written from the papers and the authors' code; no code
copied.  IMTA options: ``gradient_equilibrium`` (the coarsest-scale output of block i gets
the average of the gradients of the losses at and after exit i), ``isc`` (exit i classifies
its pooled feature concatenated with Linear+BN+ReLU of exit i-1's logits; ``isc_detach``).
docs/papers/imta.md has the configs and the choices.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from repro.models import register_model
from repro.models.base import MultiExitNet, State
from repro.nn import grad_rescale


@dataclass
class MSDNetConfig:
    nBlocks: int = 7
    base: int = 1
    step: int = 1
    stepmode: str = "lin_grow"  # "even" | "lin_grow"
    nChannels: int = 16
    growthRate: int = 6
    grFactor: tuple[int, ...] = (1, 2, 4)
    bnFactor: tuple[int, ...] = (1, 2, 4)
    nScales: int = 3
    prune: str = "max"  # "max" | "min"
    bottleneck: bool = True
    reduction: float = 0.5
    stem: str = "cifar"  # "cifar" (3x3 s1 first conv) | "imagenet" (7x7 s2 + max-pool)
    head_channels: int | None = 128  # None: keep the block's channels (ImageNet head)
    in_channels: int = 3
    num_classes: int = 100
    gradient_equilibrium: bool = False
    isc: bool = False
    isc_detach: bool = True
    # Width of the ISC embedding of exit i-1's logits; None (default): exit i's own pooled
    # feature width, as the authors' code (128 on CIFAR, 384/352/304/560 on ImageNet step 4).
    isc_hidden: int | None = None
    # Speed only (numbers identical up to float rounding): activations and conv weights in
    # channels_last (NHWC). On CPU, oneDNN's convolutions skip their layout reorders: an IMTA
    # Table 1 training step ran about 1.15x faster with one thread (docs/performance.md).
    channels_last: bool = True

    def block_layers(self) -> list[int]:
        """Number of MSD layers in each block."""
        out = []
        for i in range(self.nBlocks):
            if i == 0:
                out.append(self.base)
            elif self.stepmode == "even":
                out.append(self.step)
            elif self.stepmode == "lin_grow":
                out.append(self.step * i + 1)
            else:
                raise ValueError(f"unknown stepmode {self.stepmode!r}")
        return out


def conv_bn_relu(n_in: int, n_out: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(n_out),
        nn.ReLU(inplace=True),
    )


def _branch(n_in: int, n_out: int, stride: int, bottleneck: bool, bn_width: int) -> nn.Sequential:
    """[1x1 bottleneck conv-BN-ReLU,] 3x3 conv-BN-ReLU with the given stride."""
    layers: list[nn.Module] = []
    inner = n_in
    if bottleneck:
        inner = min(n_in, bn_width * n_out)
        layers += list(conv_bn_relu(n_in, inner, 1, 1, 0))
    layers += list(conv_bn_relu(inner, n_out, 3, stride, 1))
    return nn.Sequential(*layers)


class _ScaleUnit(nn.Module):
    """New channels at one scale: a regular conv on the same scale and, when the
    finer scale is present, a strided conv on it (half the new channels each).
    Output = cat(same-scale input, new channels)."""

    def __init__(self, n_same: int, n_finer: int | None, growth: int, bottleneck: bool,
                 bn_same: int, bn_finer: int):
        super().__init__()
        if n_finer is None:
            self.down = None
            self.normal = _branch(n_same, growth, 1, bottleneck, bn_same)
        else:
            self.down = _branch(n_finer, growth // 2, 2, bottleneck, bn_finer)
            self.normal = _branch(n_same, growth // 2, 1, bottleneck, bn_same)

    def forward(self, same: torch.Tensor, finer: torch.Tensor | None) -> torch.Tensor:
        if self.down is None:
            return torch.cat([same, self.normal(same)], dim=1)
        return torch.cat([same, self.down(finer), self.normal(same)], dim=1)


class _MSDLayer(nn.Module):
    """One MSD layer: ``in_scales`` input maps -> ``out_scales`` output maps (the
    coarsest ones); ``n_in`` channels per unit of grFactor, ``growth`` new."""

    def __init__(self, n_in: int, growth: int, cfg: MSDNetConfig, in_scales: int, out_scales: int):
        super().__init__()
        S = cfg.nScales
        self.in_offset = S - in_scales  # absolute index of the finest input scale
        self.out_offset = S - out_scales
        self.units = nn.ModuleList()
        for s in range(self.out_offset, S):
            has_finer = s - 1 >= self.in_offset
            self.units.append(_ScaleUnit(
                n_in * cfg.grFactor[s],
                n_in * cfg.grFactor[s - 1] if has_finer else None,
                growth * cfg.grFactor[s],
                cfg.bottleneck,
                cfg.bnFactor[s],
                cfg.bnFactor[s - 1] if has_finer else 1,
            ))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for j, unit in enumerate(self.units):
            s = self.out_offset + j
            k = s - self.in_offset  # position of scale s in the input list
            out.append(unit(xs[k], xs[k - 1] if unit.down is not None else None))
        return out


class _Transition(nn.Module):
    """1x1 conv-BN-ReLU on every remaining scale (channel reduction)."""

    def __init__(self, n_in: int, n_out: int, cfg: MSDNetConfig, out_scales: int):
        super().__init__()
        offset = cfg.nScales - out_scales
        self.convs = nn.ModuleList(
            conv_bn_relu(n_in * cfg.grFactor[s], n_out * cfg.grFactor[s], 1, 1, 0)
            for s in range(offset, cfg.nScales))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for conv, x in zip(self.convs, xs)]


class _FirstLayer(nn.Module):
    """Builds the pyramid: scale 0 from the image, scale s by a strided conv of scale s-1."""

    def __init__(self, cfg: MSDNetConfig):
        super().__init__()
        c = [cfg.nChannels * g for g in cfg.grFactor[:cfg.nScales]]
        if cfg.stem == "cifar":
            first = conv_bn_relu(cfg.in_channels, c[0], 3, 1, 1)
        elif cfg.stem == "imagenet":
            # The authors' 7x7 stem conv keeps its bias (every other conv has none): with it the
            # parameter counts match theirs exactly.
            first = nn.Sequential(nn.Conv2d(cfg.in_channels, c[0], 7, 2, 3, bias=True), nn.BatchNorm2d(c[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            raise ValueError(f"unknown stem {cfg.stem!r}")
        self.layers = nn.ModuleList([first])
        for s in range(1, cfg.nScales):
            self.layers.append(conv_bn_relu(c[s - 1], c[s], 3, 2, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class _Block(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, xs):
        for layer in self.layers:
            xs = layer(xs)
        return xs


class MSDNet(MultiExitNet):
    """MSDNet as ``nBlocks`` stages and heads (see :class:`MultiExitNet`).

    State between stages: the list of per-scale tensors, finest first (the
    finest scales disappear as they are pruned); exit ``i`` reads the last
    (coarsest) one.  Keyword arguments are the fields of :class:`MSDNetConfig`.

    Gradient Equilibrium (``gradient_equilibrium=True``), k exits, 0-based i:
    ``head(i)`` rescales the gradient of the coarsest-scale tensor it reads by
    1/(k-i), and ``stage(i+1)`` rescales the gradient of the coarsest-scale
    tensor it receives from block i by (k-i-1)/(k-i).  With the loss an
    unweighted sum of the exits' cross-entropies, the gradient at the
    coarsest-scale output of block i is then the average of the gradients of
    the losses at exits i..k-1.  Like the authors' code, only the coarsest scale
    is rescaled: gradient that reaches block i through its finer-scale outputs
    is the plain sum.
    """

    def __init__(self, **kwargs):
        super().__init__()
        cfg = MSDNetConfig(**kwargs)
        cfg.grFactor, cfg.bnFactor = tuple(cfg.grFactor), tuple(cfg.bnFactor)
        if len(cfg.grFactor) < cfg.nScales or len(cfg.bnFactor) < cfg.nScales:
            raise ValueError("grFactor and bnFactor need one entry per scale")
        if cfg.prune not in ("max", "min"):
            raise ValueError(f"unknown prune {cfg.prune!r}")
        self.cfg = cfg
        self.num_exits = cfg.nBlocks
        S = cfg.nScales
        spans = cfg.block_layers()
        n_layers_all = sum(spans)
        interval = math.ceil(n_layers_all / S)

        self.blocks = nn.ModuleList()
        self.head_features = nn.ModuleList()
        self.classifiers = nn.ModuleList()
        self.head_dims: list[int] = []
        n_in = cfg.nChannels
        layer_no = 0  # 1-based count of MSD layers so far
        scales_now = S
        for i, span in enumerate(spans):
            mods: list[nn.Module] = [_FirstLayer(cfg)] if i == 0 else []
            for l_in_block in range(span):
                layer_no += 1
                if cfg.prune == "max":
                    in_scales = S - math.floor(max(0, layer_no - 2) / interval)
                    out_scales = S - math.floor((layer_no - 1) / interval)
                else:  # "min": block i keeps the scales the remaining exits need
                    in_scales = scales_now
                    out_scales = min(S, cfg.nBlocks - i)
                mods.append(_MSDLayer(n_in, cfg.growthRate, cfg, in_scales, out_scales))
                n_in += cfg.growthRate
                scales_now = out_scales
                if cfg.prune == "max" and in_scales > out_scales and cfg.reduction > 0:
                    n_out = math.floor(cfg.reduction * n_in)
                    mods.append(_Transition(n_in, n_out, cfg, out_scales))
                    n_in = n_out
            self.blocks.append(_Block(mods))
            c_last = n_in * cfg.grFactor[S - 1]
            hc = cfg.head_channels or c_last
            self.head_features.append(nn.Sequential(
                conv_bn_relu(c_last, hc, 3, 2, 1),
                conv_bn_relu(hc, hc, 3, 2, 1),
                nn.AvgPool2d(2),
                nn.Flatten(1),
            ))
            self.classifiers.append(nn.Linear(hc, cfg.num_classes))
            self.head_dims.append(hc)

        # ISC modules, one per exit after the first: index i-1 serves exit i.
        # The plain classifiers of exits >= 1 are kept (so phase-I weights load
        # with strict=True minus the ISC keys) but unused while isc is on.
        self.isc_embed = nn.ModuleList()
        self.isc_classifiers = nn.ModuleList()
        if cfg.isc:
            for i in range(1, cfg.nBlocks):
                hidden = cfg.isc_hidden or self.head_dims[i]
                self.isc_embed.append(nn.Sequential(
                    nn.Linear(cfg.num_classes, hidden),
                    nn.BatchNorm1d(hidden),
                    nn.ReLU(inplace=True),
                ))
                self.isc_classifiers.append(
                    nn.Linear(self.head_dims[i] + hidden, cfg.num_classes))
        self._init_weights()
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)

    def _init_weights(self) -> None:
        for m in self.modules():
            _init_module(m)

    # -- flags that may be switched after construction ------------------
    @property
    def gradient_equilibrium(self) -> bool:
        return self.cfg.gradient_equilibrium

    @gradient_equilibrium.setter
    def gradient_equilibrium(self, on: bool) -> None:
        self.cfg.gradient_equilibrium = bool(on)

    @property
    def isc(self) -> bool:
        return self.cfg.isc

    @property
    def isc_detach(self) -> bool:
        return self.cfg.isc_detach

    @isc_detach.setter
    def isc_detach(self, on: bool) -> None:
        self.cfg.isc_detach = bool(on)

    # -- MultiExitNet ---------------------------------------------------
    def stage(self, i: int, state: State) -> State:
        if i == 0 and self.cfg.channels_last and isinstance(state, torch.Tensor) and state.dim() == 4:
            state = state.contiguous(memory_format=torch.channels_last)
        if i > 0 and self.cfg.gradient_equilibrium:
            k = self.num_exits
            state = list(state)
            # continuing path after block i-1: (k-(i-1)-1)/(k-(i-1))
            state[-1] = grad_rescale(state[-1], (k - i) / (k - i + 1))
        return self.blocks[i](state)

    def head(self, i: int, state: State, prev_logits: torch.Tensor | None) -> torch.Tensor:
        x = state[-1]
        if self.cfg.gradient_equilibrium:
            x = grad_rescale(x, 1.0 / (self.num_exits - i))
        feat = self.head_features[i](x)
        if self.cfg.isc and i > 0:
            if prev_logits is None:
                raise ValueError("ISC needs the previous exit's logits")
            p = prev_logits.detach() if self.cfg.isc_detach else prev_logits
            z = torch.cat([feat, self.isc_embed[i - 1](p)], dim=1)
            return self.isc_classifiers[i - 1](z)
        return self.classifiers[i](feat)

    # -- IMTA phase II --------------------------------------------------
    def final_layer_modules(self) -> list[nn.Module]:
        """The modules producing the logits from the pooled features: each exit's
        final Linear (the ISC classifier for exits >= 1 when ISC is on) and the
        ISC embeddings."""
        if not self.cfg.isc:
            return list(self.classifiers)
        return [self.classifiers[0], *self.isc_embed, *self.isc_classifiers]

    def reset_final_layers(self) -> None:
        """Re-create every module of :meth:`final_layer_modules` (fresh weights, BatchNorm
        statistics reset), as the authors' phase II does: it builds new classifiers and ISC
        modules and loads only the backbone and the heads' convolutions from phase I."""
        for mod in self.final_layer_modules():
            for m in mod.modules():
                if isinstance(m, (nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Conv2d)):
                    m.reset_parameters()
                    _init_module(m)

    def final_layer_parameters(self) -> list[nn.Parameter]:
        """What IMTA's phase II trains: final linear classifiers + ISC modules."""
        return [p for m in self.final_layer_modules() for p in m.parameters()]

    def frozen_modules(self) -> list[nn.Module]:
        """What IMTA's phase II freezes: the blocks and the heads' convolutions."""
        return [*self.blocks, *self.head_features]

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def _init_module(m: nn.Module) -> None:
    """MSDNet's initialisation: conv weights N(0, 2/fan_out), BatchNorm 1/0, Linear bias 0
    (Linear weights and conv biases keep PyTorch's default)."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.zeros_(m.bias)


_FIELDS = {f.name for f in fields(MSDNetConfig)}


def _make(defaults: dict, overrides: dict) -> MSDNet:
    unknown = set(overrides) - _FIELDS
    if unknown:
        raise TypeError(f"unknown MSDNet option(s): {sorted(unknown)}")
    return MSDNet(**{**defaults, **overrides})


_CIFAR = dict(nChannels=16, growthRate=6, grFactor=(1, 2, 4), bnFactor=(1, 2, 4), nScales=3,
              prune="max", bottleneck=True, reduction=0.5, stem="cifar", head_channels=128)


@register_model
def msdnet_cifar(num_classes: int = 100, in_channels: int = 3, nBlocks: int = 5, **overrides) -> MSDNet:
    """The CIFAR lin_grow family of IMTA Section 4.1 (base 1, step 1): ``nBlocks`` exits and
    nBlocks(nBlocks+1)/2 layers, i.e. 4/5/6/7/8 exits = depth 10/15/21/28/36."""
    return _make(dict(_CIFAR, nBlocks=nBlocks, base=1, step=1, stepmode="lin_grow",
                      num_classes=num_classes, in_channels=in_channels), overrides)


@register_model
def msdnet_cifar_7exit(num_classes: int = 100, in_channels: int = 3, **overrides) -> MSDNet:
    """IMTA Table 1: 7 blocks, lin_grow, base 1, step 1 (1+2+...+7 = 28 layers)."""
    return _make(dict(_CIFAR, nBlocks=7, base=1, step=1, stepmode="lin_grow",
                      num_classes=num_classes, in_channels=in_channels), overrides)


@register_model
def msdnet_cifar_5exit(num_classes: int = 100, in_channels: int = 3, **overrides) -> MSDNet:
    """Budgeted-batch CIFAR config of the MSDNet-PyTorch README: 5 blocks, lin_grow,
    base 1, step 1 (15 layers)."""
    return _make(dict(_CIFAR, nBlocks=5, base=1, step=1, stepmode="lin_grow",
                      num_classes=num_classes, in_channels=in_channels), overrides)


@register_model
def msdnet_cifar_anytime(num_classes: int = 100, in_channels: int = 3, **overrides) -> MSDNet:
    """Anytime CIFAR config: 7 blocks, even, base 4, step 2 (16 layers); 7 blocks is
    the block count whose cost at the last exit is the 75.94 M of the authors' op counter on that config."""
    return _make(dict(_CIFAR, nBlocks=7, base=4, step=2, stepmode="even",
                      num_classes=num_classes, in_channels=in_channels), overrides)


@register_model
def msdnet_imagenet(num_classes: int = 1000, in_channels: int = 3, **overrides) -> MSDNet:
    """ImageNet config: 4 scales, 5 blocks, even, base 4, step 4 (the authors' run_GE.sh).
    IMTA Figure 5's other members are step 6 and 7, with base = step (``step=6, base=6``):
    then the exits' feature widths are those the authors' IMTA code hard-codes."""
    return _make(dict(nBlocks=5, base=4, step=4, stepmode="even", nChannels=32, growthRate=16,
                      grFactor=(1, 2, 4, 4), bnFactor=(1, 2, 4, 4), nScales=4, prune="max",
                      bottleneck=True, reduction=0.5, stem="imagenet", head_channels=None,
                      num_classes=num_classes, in_channels=in_channels), overrides)


@register_model
def msdnet_cifar_small(num_classes: int = 10, in_channels: int = 3, **overrides) -> MSDNet:
    """A CPU-sized CIFAR MSDNet for quick runs: 4 exits, 8 base channels,
    growth 4, 32-channel heads."""
    return _make(dict(_CIFAR, nBlocks=4, base=1, step=1, stepmode="lin_grow", nChannels=8,
                      growthRate=4, head_channels=32,
                      num_classes=num_classes, in_channels=in_channels), overrides)


def _n_exits(n: int):
    def factory(num_classes: int = 100, in_channels: int = 3, **overrides) -> MSDNet:
        return msdnet_cifar(num_classes, in_channels, nBlocks=n, **overrides)
    factory.__doc__ = f"The CIFAR lin_grow MSDNet with {n} exits (depth {n * (n + 1) // 2}): :func:`msdnet_cifar`."
    return factory


for _n in (2, 3, 4, 6, 8):  # 5 and 7 exits have their own factories above (the same networks)
    register_model(f"msdnet_cifar_{_n}exit", _n_exits(_n))
