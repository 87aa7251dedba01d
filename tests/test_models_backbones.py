"""ResNet / DenseNet / VGG backbones: published sizes, staged exits, channel-mask slicing."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from repro.models import resnet, vgg
from repro.models.densenet import GlanceDenseNet, densenet201_cifar, densenet_cifar
from repro.models.resnet import resnet_cifar, resnet_cifar_imagenet_style
from repro.models.staged import GatedBackbone, LinearGate, prune_channels
from repro.models.vgg import vgg16_cifar


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fvcore_macs(model: nn.Module, in_channels: int = 3) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis
    model.eval()
    flops = FlopCountAnalysis(model, torch.randn(1, in_channels, 32, 32))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    with torch.no_grad():
        return float(flops.total())


# --- published costs (fvcore counts one multiply-add as one flop; the d-gate paper's "FLOPs" are 2x) ---


def test_resnet101_cifar_cost_matches_dgate_paper():
    model = resnet_cifar_imagenet_style(101, num_classes=10)
    assert model.num_stages == 4
    assert model.stage_channels == [256, 512, 1024, 2048]
    macs = fvcore_macs(model)
    assert abs(2 * macs - 5.02e9) / 5.02e9 < 0.03, macs


def test_densenet201_cifar_cost_matches_dgate_paper():
    model = densenet201_cifar(num_classes=10)
    assert model.num_stages == 4
    assert model.stage_channels == [256, 512, 1792, 1920]
    macs = fvcore_macs(model)
    assert abs(2 * macs - 2.72e9) / 2.72e9 < 0.03, macs


# --- parameter counts ---


@pytest.mark.parametrize(
    "depth,shortcut,expected",
    [(32, "A", 464_154), (56, "A", 853_018), (32, "B", 466_906), (56, "B", 855_770), (20, "A", 269_722)],
)
def test_resnet_cifar_params(depth, shortcut, expected):
    assert n_params(resnet_cifar(depth, num_classes=10, shortcut=shortcut)) == expected


def test_vgg16_cifar_params():
    model = vgg16_cifar(num_classes=10)
    assert n_params(model) == 14_724_042
    assert len(vgg.maskable_layers(model)) == 13
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_densenet_cifar_configs():
    bc = densenet_cifar(100, 12, bottleneck=True)
    plain = densenet_cifar(40, 12, bottleneck=False)
    assert bc.block_config == (16, 16, 16) and bc.stage_channels == [216, 300, 342]
    assert plain.block_config == (12, 12, 12) and plain.stage_channels == [160, 304, 448]
    assert n_params(bc) == 769_162
    assert n_params(plain) == 1_019_722
    with pytest.raises(ValueError):
        densenet_cifar(41, 12, bottleneck=True)


# --- multi-exit wrappers ---


def _small_densenet(in_channels: int = 3) -> nn.Module:
    return densenet_cifar(depth=22, growth=6, bottleneck=True, num_classes=10, in_channels=in_channels)


def test_glance_densenet_exits_and_forward_until():
    torch.manual_seed(0)
    backbone = _small_densenet()
    net = GlanceDenseNet(backbone).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        outs = net(x)
        assert net.num_exits == 3 and len(outs) == 3
        assert all(o.shape == (3, 10) for o in outs)
        for i in range(3):
            part = net.forward_until(x, i)
            assert len(part) == i + 1
            for a, b in zip(part, outs):
                torch.testing.assert_close(a, b)
        torch.testing.assert_close(outs[-1], backbone(x))
    bypass = net.bypasses[0]
    assert [type(m) for m in bypass.children()] == [nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Linear]
    assert bypass.norm.num_features == backbone.stage_channels[0]


def test_glance_densenet_bypass_positions():
    net = GlanceDenseNet(_small_densenet(), bypass_after=[1])
    assert net.num_exits == 2
    assert net.stage_span(0) == (0, 1) and net.stage_span(1) == (2,)
    with pytest.raises(ValueError):
        GlanceDenseNet(_small_densenet(), bypass_after=[2])


@pytest.mark.parametrize(
    "make",
    [
        lambda: resnet_cifar_imagenet_style(101, num_classes=10, in_channels=1, width=8, blocks=(1, 1, 2, 1)),
        lambda: densenet201_cifar(num_classes=10, in_channels=1, growth=4, blocks=(1, 2, 2, 1), init_features=8),
    ],
    ids=["resnet101-small", "densenet201-small"],
)
def test_gated_backbone(make):
    torch.manual_seed(0)
    backbone = make()
    net = GatedBackbone(backbone, exits_after=(0, 1, 2)).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        outs = net(x)
        assert net.num_exits == 4 and len(outs) == 4
        assert all(o.shape == (2, 10) for o in outs)
        torch.testing.assert_close(outs[-1], backbone(x))
        torch.testing.assert_close(net.forward_until(x, 1), outs[:2])
    assert [g.fc.in_features for g in net.gates] == backbone.stage_channels[:3]
    # gates are replaceable and train on a frozen backbone
    net.set_head(1, LinearGate(backbone.stage_channels[1], 10))
    net.freeze_backbone()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert all(p.requires_grad for p in net.gates.parameters())
    assert GatedBackbone(backbone, exits_after=(1,)).num_exits == 2


# --- DCP mask slots and physical slicing ---


class _ChannelMask(nn.Module):
    def __init__(self, keep: torch.Tensor, channels: int) -> None:
        super().__init__()
        m = torch.zeros(channels)
        m[keep] = 1.0
        self.register_buffer("m", m.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.m


def _check_slicing(model: nn.Module, slots, x: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    model.eval()
    for m in model.modules():  # non-trivial BN statistics, so a missed copy shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    keeps = []
    for s in slots:
        keep = torch.randperm(s.channels, generator=g)[: max(1, s.channels // 2)].sort().values
        s.set_mask(_ChannelMask(keep, s.channels))
        keeps.append(keep)
    with torch.no_grad():
        masked = model(x)
        for s, keep in zip(slots, keeps):
            prune_channels(s, keep)
            assert isinstance(s.get_mask(), nn.Identity) and s.channels == keep.numel()
        pruned = model(x)
    torch.testing.assert_close(pruned, masked, rtol=1e-4, atol=1e-5)


def test_resnet_cifar_mask_slots_slice_exactly():
    torch.manual_seed(0)
    model = resnet_cifar(20, num_classes=10, in_channels=1, width=8)
    slots = resnet.maskable_layers(model)
    assert len(slots) == 9 and all(s.attr == "mask1" for s in slots)
    before = n_params(model)
    _check_slicing(model, slots, torch.randn(2, 1, 32, 32))
    assert n_params(model) < before


def test_vgg_mask_slots_slice_exactly():
    torch.manual_seed(0)
    model = vgg16_cifar(num_classes=10, in_channels=1, width=0.125)
    slots = vgg.maskable_layers(model)
    assert slots[-1].consumers == [model.classifier]
    _check_slicing(model, slots, torch.randn(2, 1, 32, 32))
    assert model.classifier.in_features == slots[-1].channels


def test_glance_densenet_factory_defaults():
    from repro.models.densenet import glance_densenet

    net = glance_densenet(depth=16, growth=4, in_channels=1)
    assert net.num_exits == 3 and net.bypass_after == (0, 1)
    assert net.backbone.block_config == (4, 4, 4)
    assert len(net(torch.randn(2, 1, 32, 32))) == 3


def test_every_papers_model_is_registered_without_importing_a_paper():
    """``create_model`` finds the decision gates' ResNet-101s and DenseNet-201 from the registry alone."""
    import subprocess
    import sys

    code = ("import sys; from repro.models import create_model; "
            "[create_model(n, num_classes=10, **a) for n, a in (('resnet101', {'width': 4, 'blocks': [1, 1, 1, 1]}), "
            "('resnet101_imagenet', {'width': 4, 'blocks': [1, 1, 1, 1]}), "
            "('densenet201', {'growth': 4, 'blocks': [1, 1, 1, 1], 'init_features': 8}))]; "
            "assert not any(m.startswith('repro.papers.') for m in sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
