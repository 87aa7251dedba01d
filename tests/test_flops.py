import pytest
import torch
from torch import nn

from repro.flops import CONVENTIONS, Cost, count_exits, count_model
from repro.models.msdnet import msdnet_cifar_5exit, msdnet_cifar_7exit, msdnet_imagenet


def _close(got, want, rel):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert abs(g - w) <= rel * w, (list(got), list(want))


def test_conventions_listed():
    assert {"fvcore", "msdnet", "flops2x"} <= set(CONVENTIONS)


def test_imta_table1_msdnet_convention():
    df = count_exits(msdnet_cifar_7exit(num_classes=100), (3, 32, 32), "msdnet")
    assert list(df.columns) == ["exit", "cost", "params"]
    assert list(df.exit) == [1, 2, 3, 4, 5, 6, 7]
    _close(df.cost / 1e6, [6.86, 14.35, 27.29, 48.45, 76.43, 108.85, 137.28], 0.01)
    _close(df.params / 1e6, [0.30, 0.65, 1.11, 1.73, 2.38, 3.05, 3.97], 0.03)


def test_msdnet_5exit_budgeted_config():
    df = count_exits(msdnet_cifar_5exit(num_classes=100), (3, 32, 32), "msdnet")
    _close(df.cost / 1e6, [6.86, 14.35, 27.54, 41.71, 58.48], 0.01)


def test_msdnet_imagenet_config():
    df = count_exits(msdnet_imagenet(num_classes=1000), (3, 224, 224), "msdnet")
    _close(df.cost / 1e6, [339.9, 685.5, 1008.2, 1254.5, 1360.5], 0.01)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)  # bias: not counted
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.bn(self.conv(x)))).flatten(1))


def test_tiny_net_hand_counts():
    conv = 3 * 4 * 9 * 8 * 8  # 6912 multiply-adds
    bn = 2 * 4 * 8 * 8  # fvcore: eval BN with affine = 2 per element
    fc = 64 * 10
    relu = 4 * 8 * 8
    pool = 4 * 4 * 4 * (2 * 2)  # output elements x kernel area
    params = (3 * 4 * 9 + 4) + 2 * 4 + (64 * 10 + 10)
    m = _Tiny()
    c = count_model(m, (3, 8, 8))
    assert isinstance(c, Cost)
    assert c.macs == conv + bn + fc
    assert c.params == params
    assert count_model(m, (3, 8, 8), "flops2x").macs == 2 * (conv + bn + fc)
    assert count_model(m, (3, 8, 8), "msdnet").macs == conv + relu + pool + fc + 10
    assert m.training  # mode restored


def test_tiny_conv_linear_fvcore():
    m = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(2 * 3 * 3, 5))
    assert count_model(m, (1, 5, 5)).macs == 1 * 2 * 9 * 3 * 3 + 18 * 5


def test_flops2x_is_twice_fvcore_on_msdnet():
    net = msdnet_cifar_7exit(nBlocks=2)
    a = count_exits(net, (3, 32, 32), "fvcore")
    b = count_exits(net, (3, 32, 32), "flops2x")
    assert (b.cost == 2 * a.cost).all()
    assert (a.params == b.params).all()
    assert (a.cost.diff().dropna() > 0).all()


def test_unknown_convention():
    with pytest.raises(ValueError):
        count_model(nn.Linear(2, 2), (2,), "nope")
