"""CIFAR-adapted compact CNNs of the bias-loss paper's Table 4 (CIFAR-100, 32x32).

ShuffleNetV2, MobileNetV2 and SqueezeNet are torchvision's with stems adapted to 32x32;
NASNet-A (no torchvision version) is written here; the Huang et al. CIFAR DenseNets are
:mod:`repro.models.densenet`'s.  Every model follows the *feature interface* the bias
loss needs, so that it reads the last convolutional feature map without a second pass:

- ``forward_features(x)``: the last conv feature map before global pooling (N×C×H×W);
- ``forward_head(features)``: logits, and ``forward(x) = forward_head(forward_features(x))``;
- ``forward_with_features(x) -> (logits, features)``.

The run configs' model names (``shufflenetv2``, ``mobilenetv2``, ``squeezenet``, ``densenet``,
``densenet121``, ``nasnet_a``) are registered here (:func:`run_model`).  The sizes, the
authors' variants and the choices the paper leaves open are in docs/papers/biasloss.md.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from repro.models import register_model
from repro.models.densenet import CifarDenseNet
from repro.models.densenet import densenet_cifar as _densenet_cifar
from repro.models.staged import init_weights
from torchvision.models import densenet as tv_densenet
from torchvision.models import mobilenetv2 as tv_mnv2
from torchvision.models import shufflenetv2 as tv_shufflenet
from torchvision.models import squeezenet as tv_squeezenet


class FeatureInterface:
    """Mixin: ``forward`` and ``forward_with_features`` from ``forward_features`` + ``forward_head``.

    Put it first in the bases so its ``forward`` overrides the backbone's.
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.forward_features(x)
        return self.forward_head(features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _conv_like(old: nn.Conv2d, in_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    """A fresh conv replacing ``old`` (same out channels / bias), He-initialised."""
    conv = nn.Conv2d(in_channels, old.out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2, bias=old.bias is not None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


# --------------------------------------------------------------------------- ShuffleNetV2

_SHUFFLE_WIDTHS = {
    0.5: [24, 48, 96, 192, 1024],
    1.0: [24, 116, 232, 464, 1024],
    1.5: [24, 176, 352, 704, 1024],
    2.0: [24, 244, 488, 976, 2048],
}


class ShuffleNetV2Cifar(FeatureInterface, tv_shufflenet.ShuffleNetV2):
    """torchvision ShuffleNetV2 with a 3x3 stride-1 first conv and no max-pool."""

    def __init__(self, width: float = 0.5, num_classes: int = 100, in_channels: int = 3) -> None:
        if width not in _SHUFFLE_WIDTHS:
            raise ValueError(f"ShuffleNetV2 width must be one of {sorted(_SHUFFLE_WIDTHS)}, got {width}")
        super().__init__([4, 8, 4], _SHUFFLE_WIDTHS[width], num_classes=num_classes)
        self.width = width
        self.conv1[0] = _conv_like(self.conv1[0], in_channels, 3, 1)
        self.maxpool = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.conv5(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean([2, 3]))


def shufflenetv2_cifar(width: float = 0.5, num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2Cifar:
    """ShuffleNetV2 for 32x32.  ``width=0.5`` is a true 0.5x (~0.45 M at 100 classes);
    the bias-loss authors' "0.5x" is ``width=1.0`` (~1.36 M)."""
    return ShuffleNetV2Cifar(width, num_classes, in_channels)


# --------------------------------------------------------------------------- MobileNetV2

class MobileNetV2Cifar(FeatureInterface, tv_mnv2.MobileNetV2):
    """torchvision MobileNetV2 with the first conv and the 24-channel stage at stride 1."""

    def __init__(self, width: float = 0.75, num_classes: int = 100, in_channels: int = 3,
                 dropout: float = 0.2) -> None:
        setting = [
            # t, c, n, s
            [1, 16, 1, 1],
            [6, 24, 2, 1],  # stride 2 on ImageNet
            [6, 32, 3, 2],
            [6, 64, 4, 2],
            [6, 96, 3, 1],
            [6, 160, 3, 2],
            [6, 320, 1, 1],
        ]
        super().__init__(num_classes=num_classes, width_mult=width, inverted_residual_setting=setting,
                         dropout=dropout)
        self.width = width
        self.features[0][0] = _conv_like(self.features[0][0], in_channels, 3, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


def mobilenetv2_cifar(width: float = 0.75, num_classes: int = 100, in_channels: int = 3) -> MobileNetV2Cifar:
    return MobileNetV2Cifar(width, num_classes, in_channels)


# --------------------------------------------------------------------------- SqueezeNet

class SqueezeNetCifar(FeatureInterface, tv_squeezenet.SqueezeNet):
    """torchvision SqueezeNet with a 3x3 stride-1 first conv (max-pools kept: 32→16→8→4)."""

    def __init__(self, version: str = "1_0", num_classes: int = 100, in_channels: int = 3,
                 dropout: float = 0.5) -> None:
        super().__init__(version=version, num_classes=num_classes, dropout=dropout)
        self.version = version
        self.features[0] = _conv_like(self.features[0], in_channels, 3, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(features), 1)


def squeezenet_cifar(num_classes: int = 100, in_channels: int = 3, version: str = "1_0",
                     bn: bool = False) -> SqueezeNetCifar:
    """SqueezeNet 1.0 (default; Table 4's 1.25 M is 1.0's ImageNet count) or 1.1 for 32x32.

    ``bn``: the pytorch-cifar100 SqueezeNet (the recipe the paper's CIFAR-100 schedule comes from):
    a BatchNorm after the stem conv and after every fire-module conv, and no ReLU on the class-score
    map.  torchvision's SqueezeNet (no BN, ReLU on the class map) does not train at the paper's lr
    0.1: measured at quick scale it stays at 10 % (chance) with every loss."""
    m = SqueezeNetCifar(version, num_classes, in_channels)
    if bn:
        for fire in [f for f in m.modules() if isinstance(f, tv_squeezenet.Fire)]:
            for attr in ("squeeze", "expand1x1", "expand3x3"):
                conv = getattr(fire, attr)
                setattr(fire, attr, nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels)))
        stem = m.features[0]
        m.features[0] = nn.Sequential(stem, nn.BatchNorm2d(stem.out_channels))
        m.classifier[2] = nn.Identity()  # the ReLU after the final 1x1 conv
    return m


# --------------------------------------------------------------------------- DenseNet (Huang et al. CIFAR)

class DenseNetCifar(FeatureInterface, CifarDenseNet):
    """Huang et al.'s CIFAR DenseNet (:class:`repro.models.densenet.CifarDenseNet`: 3x3 stem,
    3 dense blocks at 32/16/8, BN-ReLU-GAP-FC) with the bias-loss feature interface."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last dense block, before the final BN-ReLU."""
        return CifarDenseNet.forward_features(self, x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


def densenet_cifar(depth: int = 100, growth: int = 12, bottleneck: bool = True, compression: float = 0.5,
                   num_classes: int = 100, in_channels: int = 3) -> DenseNetCifar:
    """DenseNet(-BC) for CIFAR.  Defaults: DenseNet-BC (L=100, k=12), ~0.8 M params."""
    return _densenet_cifar(depth, growth, bottleneck, compression, num_classes, in_channels, cls=DenseNetCifar)


class DenseNet121Cifar(FeatureInterface, tv_densenet.DenseNet):
    """torchvision DenseNet-121 (k=32, blocks 6/12/24/16) with a 3x3 stride-1 stem conv
    and no max-pool: the CIFAR DenseNet-121 the bias-loss authors' code trains."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64,
                         num_classes=num_classes)
        self.features.conv0 = _conv_like(self.features.conv0, in_channels, 3, 1)
        self.features.pool0 = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of denseblock4, before the final BN (norm5) and ReLU."""
        for name, module in self.features.named_children():
            if name == "norm5":
                break
            x = module(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features.norm5(features))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def densenet121_cifar(num_classes: int = 100, in_channels: int = 3) -> DenseNet121Cifar:
    return DenseNet121Cifar(num_classes, in_channels)


def densenet100_k12_cifar(num_classes: int = 100, in_channels: int = 3) -> DenseNetCifar:
    """DenseNet (L=100, k=12), no bottleneck, no compression: 7.0 M, Table 4's "DenseNet (k=12) 7M"."""
    return densenet_cifar(100, 12, False, 1.0, num_classes, in_channels)


# --------------------------------------------------------------------------- NASNet-A (CIFAR)

class _SepConvStack(nn.Sequential):
    """NASNet "separable_kxk_2": twice ReLU → depthwise kxk → pointwise 1x1 → BN (stride on the first)."""

    def __init__(self, channels: int, kernel: int, stride: int) -> None:
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [
                nn.ReLU(inplace=False),
                nn.Conv2d(channels, channels, kernel, stride=stride if i == 0 else 1, padding=kernel // 2,
                          groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
            ]
        super().__init__(*layers)


class _FactorizedReduce(nn.Module):
    """ReLU, then two stride-2 1x1 convs on the input and on it shifted by one pixel, concatenated, BN."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, half, 1, bias=False)
        self.conv2 = nn.Conv2d(in_channels, out_channels - half, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        p1 = self.conv1(x[:, :, ::2, ::2])
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        p2 = self.conv2(shifted[:, :, ::2, ::2])
        return self.bn(torch.cat([p1, p2], 1))


def _relu_conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels))


def _op(name: str, channels: int, stride: int) -> nn.Module:
    if name.startswith("sep"):
        return _SepConvStack(channels, int(name[3]), stride)
    if name == "avg3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "max3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "id":
        if stride != 1:
            raise ValueError("identity with stride is not used by NASNet-A")
        return nn.Identity()
    raise ValueError(name)


# (op on left input, left input index, op on right input, right input index), one line per combination.
# Hidden state 0 is the cell's (1x1-projected) current input h_i, 1 is the adjusted previous one h_{i-1};
# combination j becomes hidden state j + 2.  (TF-slim nasnet_utils, NASNet-A.)
_NORMAL_CELL = [
    ("sep5", 0, "sep3", 1),
    ("sep5", 1, "sep3", 1),
    ("avg3", 0, "id", 1),
    ("avg3", 1, "avg3", 1),
    ("sep3", 0, "id", 0),
]
_NORMAL_OUT = [1, 2, 3, 4, 5, 6]          # h_{i-1} and all five combinations: 6F channels
_REDUCTION_CELL = [
    ("sep5", 0, "sep7", 1),
    ("max3", 0, "sep7", 1),
    ("avg3", 0, "sep5", 1),
    ("id", 3, "avg3", 2),
    ("sep3", 2, "max3", 0),
]
_REDUCTION_OUT = [3, 4, 5, 6]             # the combinations not consumed inside the cell: 4F channels


class _NASNetCell(nn.Module):
    def __init__(self, in_channels: int, prev_channels: int, prev_reduced: bool, filters: int,
                 reduction: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.spec = _REDUCTION_CELL if reduction else _NORMAL_CELL
        self.outputs = _REDUCTION_OUT if reduction else _NORMAL_OUT
        self.base = _relu_conv_bn(in_channels, filters)
        if prev_reduced:  # h_{i-1} has twice the spatial size of h_i
            self.prev = _FactorizedReduce(prev_channels, filters)
        elif prev_channels != filters:
            self.prev = _relu_conv_bn(prev_channels, filters)
        else:
            self.prev = nn.Identity()
        stride = 2 if reduction else 1
        self.ops = nn.ModuleList()
        for op_l, i_l, op_r, i_r in self.spec:
            self.ops.append(_op(op_l, filters, stride if i_l < 2 else 1))
            self.ops.append(_op(op_r, filters, stride if i_r < 2 else 1))
        self.out_channels = filters * len(self.outputs)

    def forward(self, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        states = [self.base(x), self.prev(prev)]
        for j, (_, i_l, _, i_r) in enumerate(self.spec):
            states.append(self.ops[2 * j](states[i_l]) + self.ops[2 * j + 1](states[i_r]))
        return torch.cat([states[i] for i in self.outputs], 1)


class NASNetACifar(FeatureInterface, nn.Module):
    """NASNet-A "N @ 24F" for CIFAR: 3x3 stem (3F ch) + BN, then N normal cells at F,
    a reduction cell to 2F, N normal cells, a reduction cell to 4F, N normal cells;
    ReLU → global average pooling → (dropout) → Linear.  Each cell takes the outputs of
    the two previous cells (h_i, h_{i-1}); no auxiliary head, no drop-path."""

    def __init__(self, N: int = 4, filters: int = 44, num_classes: int = 100, in_channels: int = 3,
                 stem_multiplier: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        stem_c = stem_multiplier * filters
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_c, 3, padding=1, bias=False), nn.BatchNorm2d(stem_c))
        self.cells = nn.ModuleList()
        # (channels, spatial scale) of the last two outputs
        prev_c, cur_c = stem_c, stem_c
        prev_scale, cur_scale = 1, 1
        f = filters
        for group in range(3):
            if group > 0:
                f *= 2
                cell = _NASNetCell(cur_c, prev_c, prev_scale != cur_scale, f, reduction=True)
                self.cells.append(cell)
                prev_c, prev_scale, cur_c, cur_scale = cur_c, cur_scale, cell.out_channels, cur_scale * 2
            for _ in range(N):
                cell = _NASNetCell(cur_c, prev_c, prev_scale != cur_scale, f, reduction=False)
                self.cells.append(cell)
                prev_c, prev_scale, cur_c = cur_c, cur_scale, cell.out_channels
        self.num_features = cur_c
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cur_c, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last cell, before the final ReLU."""
        x = self.stem(x)
        prev = x
        for cell in self.cells:
            x, prev = cell(x, prev), x
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(F.relu(features), 1), 1)
        return self.fc(self.dropout(x))


def nasnet_a_cifar(N: int = 4, filters: int = 44, num_classes: int = 100, in_channels: int = 3) -> NASNetACifar:
    """NASNet-A "N @ 24·filters" for CIFAR; default 4 @ 1056 (the paper's "NASNet-A (N=4)")."""
    return NASNetACifar(N, filters, num_classes, in_channels)


# --------------------------------------------------------------------------- the runs' model names


def reduced(model: nn.Module, stem_stride: int = 1, bn_momentum: float | None = None) -> nn.Module:
    """The reduced scales' changes to a model: its first convolution at ``stem_stride`` (a 32x32
    image processed at 16x16 from the stem on) and every BatchNorm's ``bn_momentum``."""
    if stem_stride != 1:
        next(m for m in model.modules() if isinstance(m, nn.Conv2d)).stride = (stem_stride, stem_stride)
    if bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
    return model


def run_model(name: str, build: Callable[..., nn.Module]) -> None:
    """Register ``build(num_classes, in_channels, input_size, **model_args)`` under a run config's
    model name: the factory takes ``num_classes``, ``in_channels``, ``input_size`` (the CIFAR models
    take any size and ignore it), the run's ``model_args`` and the reduced scales' ``stem_stride``
    and ``bn_momentum`` (:func:`reduced`).  A key missing from ``model_args`` takes ``build``'s
    default: the model a run stored before the key existed was built with."""
    def factory(*, num_classes: int, in_channels: int = 3, input_size: int = 32, stem_stride: int = 1,
                bn_momentum: float | None = None, **model_args) -> nn.Module:
        return reduced(build(num_classes, in_channels, input_size, **model_args), stem_stride, bn_momentum)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"The run model {name!r} (:func:`repro.models.compact.run_model`)."
    register_model(name, factory)


run_model("shufflenetv2", lambda nc, ic, size, width=0.5: shufflenetv2_cifar(width, nc, ic))
run_model("mobilenetv2", lambda nc, ic, size, width=0.75: mobilenetv2_cifar(width, nc, ic))
run_model("squeezenet", lambda nc, ic, size, version="1_0", bn=False: squeezenet_cifar(nc, ic, version, bn))
run_model("densenet", lambda nc, ic, size, depth=100, growth=12, bottleneck=False, compression=1.0:
          densenet_cifar(depth, growth, bottleneck, compression, nc, ic))
run_model("densenet121", lambda nc, ic, size: densenet121_cifar(nc, ic))
run_model("nasnet_a", lambda nc, ic, size, N=4, filters=44: nasnet_a_cifar(N, filters, nc, ic))
