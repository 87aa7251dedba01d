"""DenseNets for 32x32 inputs, built from torchvision's ``_DenseBlock`` and ``_Transition``.

- :func:`densenet_cifar`: Huang et al.'s CIFAR DenseNet (3 dense blocks, 3x3 stem conv,
  1x1-conv + 2x2 average-pool transitions, BN-ReLU-GAP-FC); DenseNet-BC with
  ``bottleneck=True, compression=0.5`` ((L-4)/6 layers per block), else the plain one
  ((L-4)/3 layers per block);
- :class:`GlanceDenseNet`: a CIFAR DenseNet with a bypass (BN → ReLU → GAP → FC) after each
  dense block but the last; :func:`glance_densenet` defaults to L=40, k=12;
- :func:`densenet201_cifar`: torchvision's DenseNet-201 with the CIFAR stem (decision gates;
  registered as ``densenet201``).

Stage i is the transition before dense block i followed by the block, so an exit after
stage i reads dense block i's output.  Sizes: docs/flops.md; the choice of L=40 for
GlanceNets: docs/papers/glancenet.md.  ``densenet_cifar``, ``densenet201`` and ``glance_densenet``
are registered models (:func:`repro.models.create_model`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.densenet import _DenseBlock, _Transition

from repro.models import register_model
from repro.models.staged import BypassHead, GatedBackbone, StagedBackbone, init_weights

__all__ = ["CifarDenseNet", "GlanceDenseNet", "densenet_cifar", "densenet201", "densenet201_cifar", "glance_densenet"]


class _PlainDenseLayer(nn.Module):
    """Non-bottleneck dense layer: BN → ReLU → 3x3 conv (→ dropout); takes the list of earlier maps."""

    def __init__(self, in_channels: int, growth_rate: int, drop_rate: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, inputs: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        x = inputs if isinstance(inputs, torch.Tensor) else torch.cat(inputs, 1)
        out = self.conv(self.relu(self.norm(x)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


def _dense_block(
    num_layers: int, in_channels: int, growth_rate: int, bn_size: int | None, drop_rate: float
) -> _DenseBlock:
    if bn_size is not None:
        return _DenseBlock(num_layers, in_channels, bn_size, growth_rate, drop_rate)
    block = _DenseBlock(0, in_channels, 1, growth_rate, drop_rate)  # empty; same concat-all forward
    for i in range(num_layers):
        block.add_module(
            "denselayer%d" % (i + 1), _PlainDenseLayer(in_channels + i * growth_rate, growth_rate, drop_rate)
        )
    return block


class CifarDenseNet(StagedBackbone):
    """A DenseNet for 32x32 inputs (stride-1 3x3 stem, no max-pool).

    ``stages[i]`` is an ``nn.Sequential`` with children ``stem`` (i = 0) or
    ``transition`` (i > 0), then ``dense``; ``classifier`` (alias ``final``) is
    BN → ReLU → GAP → flatten → Linear.  ``bn_size=None`` gives non-bottleneck
    layers; ``stem_norm`` adds BN-ReLU after the stem conv (torchvision keeps
    them; Huang et al.'s CIFAR nets have a bare conv).
    """

    def __init__(
        self,
        growth_rate: int,
        block_config: Sequence[int],
        num_init_features: int,
        bn_size: int | None = 4,
        compression: float = 0.5,
        drop_rate: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
        stem_norm: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        self.num_classes = num_classes
        self.growth_rate = growth_rate
        self.block_config = tuple(block_config)
        stem: list[tuple[str, nn.Module]] = [
            ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=3, stride=1, padding=1, bias=False))
        ]
        if stem_norm:
            stem += [("norm0", nn.BatchNorm2d(num_init_features)), ("relu0", nn.ReLU(inplace=True))]
        c = num_init_features
        stages, self.stage_channels = [], []
        for i, n in enumerate(self.block_config):
            parts: list[tuple[str, nn.Module]] = []
            if i == 0:
                parts.append(("stem", nn.Sequential(OrderedDict(stem))))
            else:
                out = int(c * compression)  # floor, as Huang et al. and torchvision
                parts.append(("transition", _Transition(c, out)))
                c = out
            parts.append(("dense", _dense_block(n, c, growth_rate, bn_size, drop_rate)))
            c += n * growth_rate
            stages.append(nn.Sequential(OrderedDict(parts)))
            self.stage_channels.append(c)
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Sequential(
            OrderedDict(
                norm=nn.BatchNorm2d(c),
                relu=nn.ReLU(inplace=True),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                fc=nn.Linear(c, num_classes),
            )
        )
        init_weights(self)

    @property
    def final(self) -> nn.Sequential:
        return self.classifier

    @property
    def blocks(self) -> nn.ModuleList:
        return self.stages


@register_model
def densenet_cifar(
    depth: int = 100,
    growth: int = 12,
    bottleneck: bool = True,
    compression: float | None = None,
    num_classes: int = 10,
    in_channels: int = 3,
    drop_rate: float = 0.0,
    num_blocks: int = 3,
    cls: type[CifarDenseNet] | None = None,
) -> CifarDenseNet:
    """Huang et al.'s CIFAR DenseNet(-BC) of total depth ``depth`` and growth rate ``growth``.

    ``bottleneck=True``: DenseNet-BC, (depth-4)/6 bottleneck layers per block,
    stem 2·growth channels, ``compression`` 0.5 unless given.
    ``bottleneck=False``: plain DenseNet, (depth-4)/3 layers per block, stem
    16 channels, ``compression`` 1 unless given.  ``drop_rate`` is Huang et
    al.'s 0.2 dropout for un-augmented data (0 by default).  Quick-scale
    versions: lower ``depth``/``growth``.  DenseNet-BC (100, 12): 0.769 M params,
    296.5 M fvcore MACs; DenseNet (40, 12): 1.020 M, 269.4 M (32x32, 10 classes).
    ``cls``: a subclass of :class:`CifarDenseNet` to build (e.g. one with another interface).
    """
    per_layer = 2 if bottleneck else 1
    layers_total = depth - (num_blocks + 1)
    if layers_total <= 0 or layers_total % (num_blocks * per_layer):
        raise ValueError(
            f"depth - {num_blocks + 1} must be a positive multiple of {num_blocks * per_layer}, got depth {depth}"
        )
    n = layers_total // (num_blocks * per_layer)
    if compression is None:
        compression = 0.5 if bottleneck else 1.0
    return (cls or CifarDenseNet)(
        growth_rate=growth,
        block_config=(n,) * num_blocks,
        num_init_features=2 * growth if bottleneck else 16,
        bn_size=4 if bottleneck else None,
        compression=compression,
        drop_rate=drop_rate,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def densenet201_cifar(
    num_classes: int = 10,
    in_channels: int = 3,
    growth: int = 32,
    blocks: Sequence[int] = (6, 12, 48, 32),
    init_features: int = 64,
    drop_rate: float = 0.0,
) -> CifarDenseNet:
    """torchvision DenseNet-201 with the CIFAR stem: conv3x3 s1 → BN → ReLU, no max-pool.

    4 stages (dense blocks 1-4, stage i>0 starting with the transition before
    its block) for gates after dense blocks 1-3.  18.10 M params, 1.3797 G
    fvcore MACs at 32x32, 10 classes (the paper's 2.72 G "FLOPs" = 2 × MACs).
    Quick scale: smaller ``growth``, ``blocks``, ``init_features``.
    """
    return CifarDenseNet(
        growth_rate=growth,
        block_config=blocks,
        num_init_features=init_features,
        bn_size=4,
        compression=0.5,
        drop_rate=drop_rate,
        num_classes=num_classes,
        in_channels=in_channels,
        stem_norm=True,
    )



@register_model("densenet201")
def densenet201(num_classes: int = 10, in_channels: int = 3, growth: int = 32,
                blocks: Sequence[int] = (6, 12, 48, 32), init_features: int = 64) -> CifarDenseNet:
    """DenseNet-201 (k = 32, 6-12-48-32) with the CIFAR stem (torchvision's blocks): decision gates."""
    return densenet201_cifar(num_classes, in_channels, growth, tuple(blocks), init_features)

class GlanceDenseNet(GatedBackbone):
    """GlanceNet on a CIFAR DenseNet: a bypass after dense blocks ``bypass_after``.

    A bypass is BN → ReLU → global average pooling → Linear (logits; the softmax
    is the caller's).  The last exit is the backbone's own BN-ReLU-GAP-FC.
    Default ``bypass_after``: every dense block but the last, so a 3-block
    DenseNet has 3 exits.  MultiExitNet stage i runs (the transition before
    and) the dense blocks up to the one exit i reads.
    """

    def __init__(self, backbone: CifarDenseNet, bypass_after: Sequence[int] | None = None) -> None:
        super().__init__(backbone, bypass_after, head_factory=BypassHead)

    @property
    def bypasses(self) -> nn.ModuleList:
        return self.heads

    @property
    def bypass_after(self) -> tuple[int, ...]:
        return self.exits_after


@register_model
def glance_densenet(
    depth: int = 40,
    growth: int = 12,
    bottleneck: bool = False,
    compression: float | None = None,
    num_classes: int = 10,
    in_channels: int = 3,
    drop_rate: float = 0.0,
    bypass_after: Sequence[int] | None = None,
) -> GlanceDenseNet:
    """A GlanceNet on ``densenet_cifar(depth, growth, bottleneck, ...)``.

    Defaults to the plain DenseNet L=40, k=12 (269.4 M fvcore MACs, the closer
    match to the paper's 276 M baseline) with bypasses after dense blocks 1
    and 2 (3 exits).
    """
    backbone = densenet_cifar(
        depth, growth, bottleneck, compression, num_classes, in_channels, drop_rate=drop_rate
    )
    return GlanceDenseNet(backbone, bypass_after)
