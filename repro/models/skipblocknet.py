"""SkipblockNet (Abrahamyan et al., "Bias Loss for Mobile Neural Networks", ICCV 2021)
and the torchvision MobileNetV3 baselines, with the feature interface of
:mod:`repro.models.compact` (``forward_features`` / ``forward_head`` /
``forward_with_features``).

SkipblockNet is a MobileNetV3-Large-like network (the authors' code, re-implemented on
torchvision's MobileNetV3 building blocks) with two skip blocks reading the first block's
output: adaptive average pool to the size of the tensor they are added to, then 1x1
conv-BN-ReLU, depthwise kxk conv-BN-ReLU, 1x1 conv-BN, added before the 80- and
112-channel stages.  The family: XS = small w 0.5, S = small w 0.75, M = large w 1.0,
L = large w 1.15.  The run configs' model names ``skipblocknet``, ``mobilenetv3_large`` and
``mobilenetv3_small`` are registered here.  The layout, its sizes and the choices are in
docs/papers/biasloss.md.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenetv3 as tv_mnv3
from torchvision.models._utils import _make_divisible
from torchvision.ops.misc import Conv2dNormActivation

from repro.models.compact import FeatureInterface, run_model

_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)  # torchvision's MobileNetV3 BN settings

# kernel, expansion ratio, out channels, SE, activation, stride  (after the first 16→16 block)
_BLOCKS = [
    (3, 4.0, 24, False, "RE", 2),
    (3, 3.0, 24, False, "RE", 1),
    (5, 3.0, 40, True, "RE", 2),
    (5, 3.0, 40, True, "RE", 1),
    (5, 6.0, 40, True, "HS", 1),   # MobileNetV3-L: ratio 3 (120), ReLU
    (3, 6.0, 80, False, "HS", 2),
    (3, 2.5, 80, False, "HS", 1),
    (3, 2.3, 80, False, "HS", 1),
    (3, 2.3, 80, False, "HS", 1),
    (3, 6.0, 112, True, "HS", 1),
    (3, 6.0, 112, True, "HS", 1),
    (5, 6.0, 160, True, "HS", 2),
    (5, 6.0, 160, True, "HS", 1),
    (5, 6.0, 160, True, "HS", 1),
]
_STAGE_ENDS = (5, 9, 11, 14)  # stages: 24+40 | 80 | 112 | 160 ; skips enter stages 2 and 3
# skip blocks: input channels (before width), expansion ratio, out channels, kernel
_SKIPS = [(16, 6.0, 40, 5), (16, 2.3, 80, 3)]


def make_divisible(v: float, divisor: int = 8) -> int:
    return _make_divisible(v, divisor)


class SkipBlock(nn.Module):
    """Adaptive average pool to ``size`` → 1x1 conv-BN-ReLU → depthwise kxk conv-BN-ReLU → 1x1 conv-BN."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, kernel: int,
                 norm_layer: Callable[..., nn.Module] = _norm) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Conv2dNormActivation(in_channels, hidden, 1, norm_layer=norm_layer, activation_layer=nn.ReLU),
            Conv2dNormActivation(hidden, hidden, kernel, groups=hidden, norm_layer=norm_layer,
                                 activation_layer=nn.ReLU),
            Conv2dNormActivation(hidden, out_channels, 1, norm_layer=norm_layer, activation_layer=None),
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.body(F.adaptive_avg_pool2d(x, size))


def _block(cin: int, kernel: int, expanded: int, cout: int, se: bool, act: str, stride: int) -> nn.Module:
    cfg = tv_mnv3.InvertedResidualConfig(cin, kernel, expanded, cout, se, act, stride, 1, width_mult=1.0)
    return tv_mnv3.InvertedResidual(cfg, _norm)


FIRST_BLOCKS = ("authors", "torchvision")


def make_first_block(c: int, kind: str = "authors") -> nn.Module:
    """The 16·w → 16·w inverted residual after the stem (3x3, expansion ratio 1, h-swish, no SE).

    ``authors``: always a 1x1 expansion conv + BN + h-swish first, as the authors' ``InvertedResidual``
    (``hidden_dim == inp`` does not drop it); ``torchvision``: torchvision's block, which has no
    expansion conv when the expanded width equals the input width.
    """
    if kind not in FIRST_BLOCKS:
        raise ValueError(f"first_block must be one of {FIRST_BLOCKS}, got {kind!r}")
    block = _block(c, 3, c, c, False, "HS", 1)
    if kind == "authors":
        expand = Conv2dNormActivation(c, c, 1, norm_layer=_norm, activation_layer=nn.Hardswish)
        block.block = nn.Sequential(expand, *block.block)
    return block


class SkipblockNet(FeatureInterface, nn.Module):
    def __init__(self, width_mult: float = 1.0, mode: str = "large", num_classes: int = 1000,
                 in_channels: int = 3, input_size: int = 224, cifar_stem: bool = False,
                 dropout: float = 0.2, first_block: str = "authors") -> None:
        super().__init__()
        if mode not in ("large", "small"):
            raise ValueError(f"mode must be 'large' or 'small', got {mode!r}")
        self.width_mult, self.mode, self.input_size, self.cifar_stem = width_mult, mode, input_size, cifar_stem
        self.first_block_kind = first_block
        self.num_classes = num_classes

        c = make_divisible(16 * width_mult)
        self.stem = Conv2dNormActivation(in_channels, c, 3, stride=1 if cifar_stem else 2, norm_layer=_norm,
                                         activation_layer=nn.Hardswish)
        self.first_block = make_first_block(c, first_block)
        base_c = c

        stages: list[nn.Module] = []
        blocks: list[nn.Module] = []
        expanded = c
        for i, (k, t, out, se, act, s) in enumerate(_BLOCKS, start=1):
            out = make_divisible(out * width_mult)
            expanded = make_divisible(c * t)
            blocks.append(_block(c, k, expanded, out, se, act, s))
            c = out
            if i in _STAGE_ENDS:
                stages.append(nn.Sequential(*blocks))
                blocks = []
        self.stages = nn.ModuleList(stages)

        skips = []
        for cin, t, out, k in _SKIPS:
            cin = make_divisible(cin * width_mult)
            skips.append(SkipBlock(cin, make_divisible(cin * t), make_divisible(out * width_mult), k))
        assert cin == base_c
        self.skips = nn.ModuleList(skips)

        last_conv = expanded  # = 6 · (160·w) rounded
        self.last_conv = Conv2dNormActivation(c, last_conv, 1, norm_layer=_norm, activation_layer=nn.Hardswish)
        hidden = {"large": 1280, "small": 1024}[mode]
        if width_mult > 1.0:
            hidden = make_divisible(hidden * width_mult)
        self.num_features = last_conv
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, hidden),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(hidden, num_classes),
        )
        # skip sizes at the nominal input size (for reference; forward uses the actual sizes)
        first = input_size if cifar_stem else math.ceil(input_size / 2)
        self.skip_sizes = (math.ceil(first / 4), math.ceil(first / 8))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last 1x1 conv's output (960·w channels, 7x7 at 224), before global pooling."""
        base = self.first_block(self.stem(x))
        x = self.stages[0](base)
        x = x + self.skips[0](base, x.shape[-2:])
        x = self.stages[1](x)
        x = x + self.skips[1](base, x.shape[-2:])
        x = self.stages[3](self.stages[2](x))
        return self.last_conv(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


def skipblocknet(width_mult: float = 1.0, mode: str = "large", num_classes: int = 1000, in_channels: int = 3,
                 input_size: int = 224, cifar_stem: bool = False, first_block: str = "authors") -> SkipblockNet:
    return SkipblockNet(width_mult, mode, num_classes, in_channels, input_size, cifar_stem, first_block=first_block)


def skipblocknet_xs(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                    cifar_stem: bool = False) -> SkipblockNet:
    return SkipblockNet(0.5, "small", num_classes, in_channels, input_size, cifar_stem)


def skipblocknet_s(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                   cifar_stem: bool = False) -> SkipblockNet:
    return SkipblockNet(0.75, "small", num_classes, in_channels, input_size, cifar_stem)


def skipblocknet_m(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                   cifar_stem: bool = False) -> SkipblockNet:
    return SkipblockNet(1.0, "large", num_classes, in_channels, input_size, cifar_stem)


def skipblocknet_l(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                   cifar_stem: bool = False) -> SkipblockNet:
    return SkipblockNet(1.15, "large", num_classes, in_channels, input_size, cifar_stem)


# --------------------------------------------------------------------------- MobileNetV3 baselines

# the classifier's hidden width of MobileNetV3 at width 1, by model name
MNV3_LAST_CHANNEL = {"mobilenetv3_large": 1280, "mobilenetv3_small": 1024}


class MobileNetV3Features(FeatureInterface, tv_mnv3.MobileNetV3):
    """torchvision MobileNetV3; ``forward_features`` is ``features`` (ends with the 1x1 conv to 960/576).

    ``last_channel``: the hidden width of the classifier (the last 1280/1024-wide layer).  None is
    torchvision's builders' choice, ``make_divisible(1280 · w)``, scaled with the width.  The MobileNetV3
    reference keeps 1280 below width 1, and the bias-loss paper's Table 1 counts match 1280 at 0.75x and
    at 1.25x alike: Large 0.75x 3.93 M params (paper 4.0 M; 3.38 M scaled), 1.25x 7.46 M (7.5 M; 8.16 M
    scaled).  The biasloss runs pass 1280 (1024 for Small) at every width.
    """

    def __init__(self, arch: str, width_mult: float = 1.0, num_classes: int = 1000, in_channels: int = 3,
                 cifar_stem: bool = False, dropout: float = 0.2, last_channel: int | None = None) -> None:
        setting, scaled = tv_mnv3._mobilenet_v3_conf(arch, width_mult=width_mult)
        last_channel = scaled if last_channel is None else int(last_channel)
        super().__init__(setting, last_channel, num_classes=num_classes, dropout=dropout)
        if in_channels != 3 or cifar_stem:
            old = self.features[0][0]
            conv = nn.Conv2d(in_channels, old.out_channels, 3, stride=1 if cifar_stem else 2, padding=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out")
            self.features[0][0] = conv

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(features), 1))


def mobilenetv3_large(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                      cifar_stem: bool = False, last_channel: int | None = None) -> MobileNetV3Features:
    return MobileNetV3Features("mobilenet_v3_large", width_mult, num_classes, in_channels, cifar_stem,
                               last_channel=last_channel)


def mobilenetv3_small(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                      cifar_stem: bool = False, last_channel: int | None = None) -> MobileNetV3Features:
    return MobileNetV3Features("mobilenet_v3_small", width_mult, num_classes, in_channels, cifar_stem,
                               last_channel=last_channel)


# the runs' model names (ImageNet stem, stride 2, at every scale); a key missing from a run's
# model_args builds the model as it was before the key existed: torchvision's first block,
# torchvision's scaled last channel
run_model("skipblocknet", lambda nc, ic, size, width_mult, mode, first_block="torchvision":
          SkipblockNet(width_mult, mode, nc, ic, input_size=size, cifar_stem=False, first_block=first_block))
run_model("mobilenetv3_large", lambda nc, ic, size, width_mult=1.0, last_channel=None:
          mobilenetv3_large(nc, ic, width_mult, last_channel=last_channel))
run_model("mobilenetv3_small", lambda nc, ic, size, width_mult=1.0, last_channel=None:
          mobilenetv3_small(nc, ic, width_mult, last_channel=last_channel))
