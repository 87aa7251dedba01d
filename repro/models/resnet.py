"""ResNets for 32x32 inputs, built from torchvision's BasicBlock and Bottleneck.

- :func:`resnet_cifar_imagenet_style`: the ImageNet ResNets (Bottleneck, four stages,
  64-128-256-512 planes) with the usual CIFAR stem (3x3 stride-1 first conv, no
  max-pool), registered at depth 101 as ``resnet101`` (the decision-gate paper's CIFAR
  ResNet-101) and, with torchvision's ImageNet stem, ``resnet101_imagenet``
  (:func:`from_torchvision_resnet` maps torchvision's weights onto both);
- :func:`resnet_cifar`: He et al.'s CIFAR ResNet (6n+2 layers, 3 stages of n basic
  blocks, 16-32-64 channels) used by Dynamic Channel Propagation, with a channel-mask
  slot inside every basic block (:func:`maskable_layers`).

Both are staged backbones (:class:`~repro.models.staged.StagedBackbone`): wrap one in
:class:`~repro.models.staged.GatedBackbone` to attach exits between stages.  Their sizes
are in docs/flops.md.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from repro.models import register_model
from repro.models.staged import MaskSlot, StagedBackbone, init_weights

__all__ = [
    "CifarImageNetResNet",
    "CifarResNet",
    "MaskableBasicBlock",
    "from_torchvision_resnet",
    "maskable_layers",
    "resnet101_cifar",
    "resnet101_imagenet",
    "resnet_cifar",
    "resnet_cifar_imagenet_style",
]

IMAGENET_STYLE_BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _classifier(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, num_classes))


# ---------------------------------------------------------------------------
# ImageNet-style ResNet with the CIFAR stem


class CifarImageNetResNet(StagedBackbone):
    """torchvision's ResNet layout, CIFAR stem: conv3x3 s1 → BN → ReLU (no max-pool).

    ``stages[0]`` = stem + layer1, ``stages[1..3]`` = layer2..layer4;
    ``classifier`` = global average pool → flatten → Linear.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.inplanes = width
        stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages = []
        self.stage_channels = []
        for i, n in enumerate(blocks):
            planes = width * 2**i
            layer = self._make_layer(block, planes, n, stride=1 if i == 0 else 2)
            stages.append(nn.Sequential(stem, *layer) if i == 0 else nn.Sequential(*layer))
            self.stage_channels.append(planes * block.expansion)
        self.stages = nn.ModuleList(stages)
        self.classifier = _classifier(self.stage_channels[-1], num_classes)
        init_weights(self)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> list[nn.Module]:
        downsample = None
        out = planes * block.expansion
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [block(self.inplanes, planes) for _ in range(1, n)]
        return layers


def resnet_cifar_imagenet_style(
    depth: int = 101,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 64,
    blocks: Sequence[int] | None = None,
) -> CifarImageNetResNet:
    """ImageNet ResNet-``depth`` (18/34: BasicBlock; 50/101/152: Bottleneck) with the CIFAR stem.

    ``width`` is the stem/first-stage planes (64 in the paper; stage i has
    ``width·2^i`` planes, ×4 out for Bottleneck); ``blocks`` overrides the
    number of blocks per stage (e.g. ``(1, 1, 2, 1)`` for a quick-scale
    ResNet-101 look-alike, with the block type still chosen by ``depth``).
    Depth 101 at width 64 costs 2.5202 G fvcore MACs at 32x32, 10 classes
    (42.51 M params); the decision-gate paper's 5.02 G "FLOPs" is 2 × MACs.
    """
    if depth not in IMAGENET_STYLE_BLOCKS:
        raise ValueError(f"depth must be one of {sorted(IMAGENET_STYLE_BLOCKS)}, got {depth}")
    kind, default_blocks = IMAGENET_STYLE_BLOCKS[depth]
    block = Bottleneck if kind == "bottleneck" else BasicBlock
    return CifarImageNetResNet(
        block, tuple(blocks) if blocks is not None else default_blocks, num_classes, in_channels, width
    )



@register_model("resnet101")
def resnet101_cifar(num_classes: int = 10, in_channels: int = 3, width: int = 64,
                    blocks: Sequence[int] | None = None) -> CifarImageNetResNet:
    """ResNet-101 (bottleneck, 3-4-23-3) with the CIFAR stem (torchvision's blocks): decision gates."""
    return resnet_cifar_imagenet_style(101, num_classes, in_channels, width, blocks)


@register_model("resnet101_imagenet")
def resnet101_imagenet(num_classes: int = 1000, in_channels: int = 3, width: int = 64,
                       blocks: Sequence[int] | None = None) -> CifarImageNetResNet:
    """torchvision's ResNet-101 as a staged backbone: 7x7 stride-2 conv, BN, ReLU, 3x3 max-pool stem.

    Same module tree as the CIFAR-stem model (``stages.0.0`` is the stem), so
    :func:`from_torchvision_resnet` maps torchvision's weights onto either.
    """
    net = resnet_cifar_imagenet_style(101, num_classes, in_channels, width, blocks)
    stem = nn.Sequential(nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
                         nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    init_weights(stem)
    net.stages[0][0] = stem
    return net


def from_torchvision_resnet(state: dict) -> dict:
    """torchvision ResNet keys (conv1, bn1, layerN.i, fc) -> the staged layout of :class:`CifarImageNetResNet`."""
    out = {}
    for k, v in state.items():
        if k.startswith("conv1."):
            k = "stages.0.0.0." + k[len("conv1."):]
        elif k.startswith("bn1."):
            k = "stages.0.0.1." + k[len("bn1."):]
        elif re.match(r"layer\d+\.", k):
            layer, idx, rest = k.split(".", 2)
            n = int(layer[len("layer"):])
            k = f"stages.{n - 1}.{int(idx) + (1 if n == 1 else 0)}.{rest}"
        elif k.startswith("fc."):
            k = "classifier.2." + k[len("fc."):]
        out[k] = v
    return out

# ---------------------------------------------------------------------------
# He et al. CIFAR ResNet (6n+2) with DCP mask slots


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and append zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class MaskableBasicBlock(BasicBlock):
    """torchvision's BasicBlock with a mask slot ``mask1`` between ``bn1`` and the first ReLU.

    ``mask1`` is an ``nn.Identity`` until a channel-pruning method replaces it;
    ``conv1``/``bn1`` produce the masked channels and ``conv2`` consumes them.
    The ReLU after the slot is not in place, so the BN output (which a
    utility hook may hold on to) is never overwritten.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mask1 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        # not in place: a pruning method may keep a reference to the BN output
        out = F.relu(self.mask1(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(StagedBackbone):
    """He et al.'s CIFAR ResNet: stem conv3x3(16)-BN-ReLU, 3 stages of n basic blocks, GAP, FC.

    ``stages[0]`` includes the stem.  ``shortcut`` is "A" (zero-padding identity,
    parameter-free) or "B" (1x1 conv + BN projection where the shape changes).
    """

    def __init__(
        self,
        n: int,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        shortcut: str = "B",
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.num_classes = num_classes
        self.shortcut = shortcut
        stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        inplanes = width
        stages, self.stage_channels = [], []
        for i in range(3):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(n):
                s = stride if b == 0 else 1
                downsample = None
                if s != 1 or inplanes != planes:
                    if shortcut == "A":
                        downsample = PadShortcut(inplanes, planes, s)
                    else:
                        downsample = nn.Sequential(
                            nn.Conv2d(inplanes, planes, kernel_size=1, stride=s, bias=False),
                            nn.BatchNorm2d(planes),
                        )
                layers.append(MaskableBasicBlock(inplanes, planes, s, downsample))
                inplanes = planes
            stages.append(nn.Sequential(stem, *layers) if i == 0 else nn.Sequential(*layers))
            self.stage_channels.append(planes)
        self.stages = nn.ModuleList(stages)
        self.classifier = _classifier(inplanes, num_classes)
        init_weights(self)


@register_model
def resnet_cifar(
    depth: int = 32,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    shortcut: str = "B",
) -> CifarResNet:
    """He et al.'s CIFAR ResNet-``depth`` (depth = 6n+2: 20, 32, 44, 56, 110, ...).

    ``shortcut="B"`` (default) is what the DCP authors' ResNet-32 uses: a 1x1
    conv + BN projection on the two blocks where the shape changes, identity
    elsewhere.  ``shortcut="A"`` is He et al.'s CIFAR choice (zero-padded
    identity): ResNet-32 0.4642 M / ResNet-56 0.8530 M params at 10 classes
    (B: 0.4669 M / 0.8558 M).  ``width`` is the first stage's channels (16).
    Every block has a DCP mask slot ``mask1`` (see :func:`maskable_layers`).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    return CifarResNet((depth - 2) // 6, num_classes, in_channels, width, shortcut)


def maskable_layers(model: nn.Module) -> list[MaskSlot]:
    """One :class:`MaskSlot` per :class:`MaskableBasicBlock` in ``model``, in forward order.

    The slot is the block's inner channel: ``conv1``/``bn1`` produce it, the
    mask goes in ``block.mask1``, ``conv2`` consumes it.  Names are the blocks'
    qualified module names.  Block outputs (tied together by the residual
    additions) are not maskable, as in the DCP authors' CIFAR ResNet.
    """
    return [
        MaskSlot(name, m.conv1, m.bn1, m, "mask1", [m.conv2])
        for name, m in model.named_modules()
        if isinstance(m, MaskableBasicBlock)
    ]
