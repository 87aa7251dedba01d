"""ImageNet ResNet-50 with Dynamic Channel Propagation mask slots (torchvision layout).

:class:`ResNet50DCP` is torchvision's ResNet-50 written out with a width knob and two
channel-mask slots in every bottleneck (:class:`MaskableBottleneck`): ``mask1`` between
``bn1`` and the first ReLU, ``mask2`` between ``bn2`` and the second, ``nn.Identity`` until
a pruning method puts a mask there.  ``width=64, stem="imagenet"`` (the default) is exactly
torchvision's ``resnet50()``, with the same module names, so torchvision's weights load as
they are; ``width`` scales every stage's planes for the CPU scales; ``stem="cifar"`` takes
32x32 inputs.  :func:`maskable_layers` lists the 32 slots with the layer that consumes
each one's channels, for :func:`repro.models.staged.prune_channels`.  docs/papers/dcp.md.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from repro.models import register_model
from repro.models.staged import MaskSlot

__all__ = ["MaskableBottleneck", "ResNet50DCP", "maskable_layers", "resnet50_dcp"]


class MaskableBottleneck(Bottleneck):
    """torchvision's Bottleneck with mask slots ``mask1`` (after ``bn1``) and ``mask2`` (after ``bn2``).

    The ReLUs after the slots are not in place: a pruning method may hold on to
    the BN outputs (they feed its channel-utility computation).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mask1 = nn.Identity()
        self.mask2 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = F.relu(self.mask1(self.bn1(self.conv1(x))))
        out = F.relu(self.mask2(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet50DCP(nn.Module):
    """torchvision's ResNet (Bottleneck blocks) with mask slots; module names as in torchvision."""

    def __init__(self, blocks: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000, in_channels: int = 3,
                 width: int = 64, stem: str = "imagenet") -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.num_classes = num_classes
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(width, blocks[0], 1)
        self.layer2 = self._make_layer(width * 2, blocks[1], 2)
        self.layer3 = self._make_layer(width * 4, blocks[2], 2)
        self.layer4 = self._make_layer(width * 8, blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * Bottleneck.expansion, num_classes)
        # torchvision's initialisation (zero_init_residual=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        layers = [MaskableBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [MaskableBottleneck(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def resnet50_dcp(num_classes: int = 1000, in_channels: int = 3, width: int = 64, stem: str = "imagenet",
                 blocks: Sequence[int] = (3, 4, 6, 3)) -> ResNet50DCP:
    """ResNet-50 (torchvision layout) with DCP mask slots; see the module docstring."""
    return ResNet50DCP(tuple(blocks), num_classes, in_channels, width, stem)


def maskable_layers(model: nn.Module) -> list[MaskSlot]:
    """Two :class:`MaskSlot` per :class:`MaskableBottleneck`, in forward order:
    ``<block>.mask1`` (``conv1``/``bn1``, consumed by ``conv2``) and ``<block>.mask2``
    (``conv2``/``bn2``, consumed by ``conv3``)."""
    slots = []
    for name, m in model.named_modules():
        if isinstance(m, MaskableBottleneck):
            slots.append(MaskSlot(f"{name}.mask1", m.conv1, m.bn1, m, "mask1", [m.conv2]))
            slots.append(MaskSlot(f"{name}.mask2", m.conv2, m.bn2, m, "mask2", [m.conv3]))
    return slots
