"""VGG-16-BN for 32x32 inputs, with a channel-mask slot after every BatchNorm.

The layout is torchvision's configuration "D" (13 3x3 convs, 5 max-pools) with BatchNorm.
As in the DCP authors' CIFAR VGG (the only consumer here): convolutions without bias (each
is followed by BN), and a single ``Linear(512·width, classes)`` on the flattened 1x1 map
left after the fifth max-pool, so the input must be 32x32.  Every conv unit is
``conv → bn → mask → relu`` (:class:`ConvBNMask`), ``mask`` an ``nn.Identity`` until DCP
replaces it; :func:`maskable_layers` lists them with the layer that consumes each one's
channels, for physical slicing.  docs/papers/dcp.md; its size is in docs/flops.md.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.vgg import cfgs

from repro.models import register_model
from repro.models.staged import MaskSlot, init_weights, scaled

__all__ = ["ConvBNMask", "VGGCifar", "maskable_layers", "vgg16_cifar"]


class ConvBNMask(nn.Module):
    """3x3 conv (no bias) → BN → ``mask`` slot (Identity) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.mask = nn.Identity()
        self.relu = nn.ReLU()  # not in place: the BN output may be held by a utility hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.mask(self.bn(self.conv(x))))


class VGGCifar(nn.Module):
    """``features`` (ConvBNMask units and max-pools, in cfg order) → flatten → ``classifier`` (one Linear)."""

    def __init__(self, cfg: list, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[tuple[str, nn.Module]] = []
        c = in_channels
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append((str(i), nn.MaxPool2d(kernel_size=2, stride=2)))
            else:
                out = scaled(int(v), width)
                layers.append((str(i), ConvBNMask(c, out)))
                c = out
        self.features = nn.Sequential(OrderedDict(layers))
        self.out_channels = c
        self.classifier = nn.Linear(c, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model
def vgg16_cifar(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGGCifar:
    """VGG-16-BN (torchvision cfg "D") for 32x32 inputs; ``width`` scales every conv's channels.

    Classifier: a single ``Linear(512·width, num_classes)`` (DCP authors' CIFAR
    VGG).  14.72 M params, 313.8 M fvcore MACs at 32x32 with 10 classes.
    """
    return VGGCifar(list(cfgs["D"]), num_classes, in_channels, width)


def maskable_layers(model: VGGCifar) -> list[MaskSlot]:
    """One :class:`MaskSlot` per conv unit, in forward order.

    Each slot's consumer is the next conv unit's conv, or the classifier's
    Linear for the last one (it reads the flattened 1x1 map, channel-major).
    """
    units = [(n, m) for n, m in model.features.named_children() if isinstance(m, ConvBNMask)]
    slots = []
    for k, (name, unit) in enumerate(units):
        consumer = units[k + 1][1].conv if k + 1 < len(units) else model.classifier
        slots.append(MaskSlot(f"features.{name}", unit.conv, unit.bn, unit, "mask", [consumer]))
    return slots
