"""SkipblockNet family, MobileNetV3 baselines and the CIFAR compact models of the bias-loss paper.

Sizes at 224x224 / 1000 classes are checked against the paper's Table 1 (within 5 %)
where they agree, and pinned to our measured values (±0.5 %) in every case.
MACs are fvcore's count (one multiply-add = 1, BN included).
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from repro.models import compact, create_model, list_models, skipblocknet
from repro.models.compact import FeatureInterface


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fvcore_macs(model: nn.Module, size: int = 224, channels: int = 3) -> float:
    from fvcore.nn import FlopCountAnalysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fa = FlopCountAnalysis(model.eval(), torch.zeros(1, channels, size, size))
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        return float(fa.total())


# name: (paper params, paper MACs, our params, our fvcore MACs).  Paper = Table 1.  With the
# authors' first block (its 1x1 expansion conv included).
SKIPBLOCKNET = {
    "skipblocknet_xs": (2.3e6, 81e6, 2_328_680, 82.315328e6),
    # S MACs: ours 180.3 M vs the paper's 152 M (+19 %).  w=0.75 rounds the early layers
    # (16, 24 ch) up to the w=1 widths and the expanded widths follow the authors' rule
    # (ratio × rounded input), so the early, high-resolution layers cost as much as at w=1.
    # Params agree (3.59 M vs 3.6 M).  Only the measured value is pinned for S MACs.
    "skipblocknet_s": (3.6e6, None, 3_587_416, 180.331488e6),
    "skipblocknet_m": (5.5e6, 246e6, 5_532_352, 247.765824e6),
    "skipblocknet_l": (7.1e6, 364e6, 7_134_360, 366.628896e6),
}


IMAGENET_MODELS = {"skipblocknet_xs": skipblocknet.skipblocknet_xs, "skipblocknet_s": skipblocknet.skipblocknet_s,
                   "skipblocknet_m": skipblocknet.skipblocknet_m, "skipblocknet_l": skipblocknet.skipblocknet_l,
                   "mobilenetv3_large": skipblocknet.mobilenetv3_large,
                   "mobilenetv3_small": skipblocknet.mobilenetv3_small}


@pytest.mark.parametrize("name", list(SKIPBLOCKNET))
def test_skipblocknet_size_at_224(name):
    paper_p, paper_m, ours_p, ours_m = SKIPBLOCKNET[name]
    model = IMAGENET_MODELS[name]()
    p, m = n_params(model), fvcore_macs(model)
    assert p == pytest.approx(paper_p, rel=0.05)
    if paper_m is not None:
        assert m == pytest.approx(paper_m, rel=0.05)
    assert p == pytest.approx(ours_p, rel=0.005)
    assert m == pytest.approx(ours_m, rel=0.005)


def test_first_block_is_the_authors_with_its_expansion_conv():
    """The authors' first inverted residual always starts with a 1x1 16->16 conv + BN + h-swish, which
    torchvision's block leaves out when the expanded width equals the input width: 256 + 32 = 288
    parameters and 16·16·112·112 conv + 2·16·112·112 BN = 3.61 M fvcore MACs at 224."""
    ours, tv = skipblocknet.skipblocknet_m(), skipblocknet.SkipblockNet(1.0, "large", first_block="torchvision")
    assert n_params(ours) - n_params(tv) == 16 * 16 + 2 * 16 == 288
    assert n_params(ours.first_block) == 288 + n_params(tv.first_block)
    assert fvcore_macs(ours) - fvcore_macs(tv) == 16 * 16 * 112 * 112 + 2 * 16 * 112 * 112 == 3_612_672
    expand = ours.first_block.block[0]
    assert isinstance(expand[0], nn.Conv2d) and expand[0].kernel_size == (1, 1) and expand[0].in_channels == 16
    assert isinstance(expand[1], nn.BatchNorm2d) and isinstance(expand[2], nn.Hardswish)
    assert ours.first_block.use_res_connect
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
                   for m in tv.first_block.block[0].modules())  # torchvision's starts with the depthwise conv
    with pytest.raises(ValueError):
        skipblocknet.SkipblockNet(1.0, "large", first_block="other")


def test_mobilenetv3_params_match_torchvision():
    assert n_params(skipblocknet.mobilenetv3_large()) == 5_483_032
    assert n_params(skipblocknet.mobilenetv3_small()) == 2_542_856
    # the last channel: torchvision's builders scale it (960 at 0.75x), the reference keeps 1280
    assert skipblocknet.mobilenetv3_large(width_mult=0.75).classifier[0].out_features == 960
    kept = skipblocknet.mobilenetv3_large(width_mult=0.75, last_channel=1280)
    assert kept.classifier[0].out_features == 1280 and kept.classifier[3].in_features == 1280
    assert n_params(kept) == 3_928_296


def test_skipblocknet_m_is_mobilenetv3_large_plus_skips():
    """M = MobileNetV3-L + the two skip blocks + the wider 40-channel block (Table 3's ablation)."""
    m = skipblocknet.skipblocknet_m()
    skips = sum(n_params(s) for s in m.skips)
    assert 0 < n_params(m) - skips - 5_483_032 < 60_000


# CIFAR-100 (100 classes, 32x32) param counts, pinned ±1 %.  Table 4's "Params" column
# (ShuffleNetV2 0.5x 1.4 M, MobileNetV2 0.75x 2.6 M, NASNet-A 5.3 M, SqueezeNet 1.25 M,
# DenseNet k=12 7 M) matches the 1000-class ImageNet counts of those models, not these.
CIFAR_MODELS = {
    "shufflenetv2_cifar": (compact.shufflenetv2_cifar, {}, 444_292),  # true 0.5x (authors' "0.5x" = width 1.0)
    "shufflenetv2_x1_0_cifar": (compact.shufflenetv2_cifar, {"width": 1.0}, 1_356_104),
    "mobilenetv2_cifar": (compact.mobilenetv2_cifar, {}, 1_483_524),  # 0.75x
    "squeezenet_cifar": (compact.squeezenet_cifar, {}, 775_204),      # SqueezeNet 1.0
    "squeezenet1_1_cifar": (compact.squeezenet_cifar, {"version": "1_1"}, 773_796),
    "densenet_cifar": (compact.densenet_cifar, {}, 800_032),          # DenseNet-BC L=100 k=12 (Huang et al.: 0.8 M)
    "densenet100_k12_cifar": (compact.densenet100_k12_cifar, {}, 7_084_852),  # DenseNet L=100 k=12 (7.0 M)
    "densenet40_k12_cifar": (compact.densenet_cifar, {"depth": 40, "growth": 12, "bottleneck": False,
                                                      "compression": 1.0}, 1_060_132),  # L=40 k=12 (1.0 M)
    "densenet121_cifar": (compact.densenet121_cifar, {}, 7_048_676),  # the authors' code (k=32)
    "nasnet_a_cifar": (compact.nasnet_a_cifar, {}, 4_326_840),        # NASNet-A 4 @ 1056 (5.28 M at 1000 classes)
}


def _cifar(name: str, **kwargs) -> nn.Module:
    make, args, _ = CIFAR_MODELS[name]
    return make(**args, **kwargs)


@pytest.mark.parametrize("name", list(CIFAR_MODELS))
def test_cifar_param_counts(name):
    assert n_params(_cifar(name, num_classes=100)) == pytest.approx(CIFAR_MODELS[name][2], rel=0.01)


# The run configs' model names (their hashes hold them) and the family functions they build.
RUN_MODELS = {"shufflenetv2": ({"width": 0.5}, lambda: compact.shufflenetv2_cifar(0.5, 10, 1)),
              "mobilenetv2": ({"width": 0.75}, lambda: compact.mobilenetv2_cifar(0.75, 10, 1)),
              "squeezenet": ({"version": "1_1", "bn": False}, lambda: compact.squeezenet_cifar(10, 1, "1_1")),
              "densenet": ({"depth": 10, "growth": 6, "bottleneck": True, "compression": 0.5},
                           lambda: compact.densenet_cifar(10, 6, True, 0.5, 10, 1)),
              "densenet121": ({}, lambda: compact.densenet121_cifar(10, 1)),
              "nasnet_a": ({"N": 1, "filters": 4}, lambda: compact.nasnet_a_cifar(1, 4, 10, 1)),
              "skipblocknet": ({"width_mult": 0.5, "mode": "small", "first_block": "authors"},
                               lambda: skipblocknet.SkipblockNet(0.5, "small", 10, 1, input_size=32)),
              "mobilenetv3_large": ({"width_mult": 0.5}, lambda: skipblocknet.mobilenetv3_large(10, 1, 0.5)),
              "mobilenetv3_small": ({"width_mult": 0.5}, lambda: skipblocknet.mobilenetv3_small(10, 1, 0.5))}


@pytest.mark.parametrize("name", list(RUN_MODELS))
def test_run_model_names_are_registered(name):
    args, make = RUN_MODELS[name]
    want = make()
    assert name in list_models()
    net = create_model(name, num_classes=10, in_channels=1, input_size=32, **args)
    assert repr(net) == repr(want) and n_params(net) == n_params(want)
    # the reduced scales' changes: the first conv's stride and every BN's momentum
    net = create_model(name, num_classes=10, in_channels=1, stem_stride=2, bn_momentum=0.3, **args)
    assert next(m for m in net.modules() if isinstance(m, nn.Conv2d)).stride == (2, 2)
    momenta = {m.momentum for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert momenta <= {0.3}  # SqueezeNet without bn has none
    with pytest.raises(TypeError):  # a model_args key the model does not take
        create_model(name, num_classes=10, in_channels=1, no_such_key=1, **args)


def test_missing_model_args_keys_build_the_older_models():
    """A run stored before first_block / last_channel existed has no such key: torchvision's block
    and its scaled last channel."""
    sbn = create_model("skipblocknet", num_classes=1000, width_mult=1.0, mode="large", input_size=224)
    assert sbn.first_block_kind == "torchvision" and sbn.skip_sizes == (28, 14)
    mv3 = create_model("mobilenetv3_large", num_classes=1000, width_mult=0.75)
    assert mv3.classifier[0].out_features == 960


def test_nasnet_a_6_at_768_matches_nasnet_paper():
    # Zoph et al. Table 1: NASNet-A (6 @ 768), CIFAR-10: 3.3 M parameters.
    assert n_params(compact.nasnet_a_cifar(6, 32, num_classes=10)) == pytest.approx(3.3e6, rel=0.02)


def _check_interface(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    assert isinstance(model, FeatureInterface)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        logits, feats2 = model.forward_with_features(x)
        out = model(x)
    assert feats.dim() == 4 and feats.shape[0] == x.shape[0]
    assert torch.equal(feats, feats2)
    assert torch.allclose(logits, out)
    assert torch.allclose(model.forward_head(feats), out)
    return feats


@pytest.mark.parametrize("name", list(IMAGENET_MODELS))
def test_imagenet_models_feature_interface(name):
    torch.manual_seed(0)
    model = IMAGENET_MODELS[name]()
    feats = _check_interface(model, torch.randn(1, 3, 224, 224))
    assert feats.shape[-2:] == (7, 7)


@pytest.mark.parametrize("name", list(CIFAR_MODELS))
def test_cifar_models_feature_interface(name):
    torch.manual_seed(0)
    model = _cifar(name, num_classes=100, in_channels=1)
    feats = _check_interface(model, torch.randn(2, 1, 32, 32))
    assert feats.shape[-1] >= 2  # not collapsed to 1x1 before the head's pooling


def _output_sizes(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> list[tuple[int, int]]:
    """Spatial size of each module's (first) output, from one eval forward."""
    seen: dict[int, tuple[int, int]] = {}

    def hook(k: int):
        def record(module, inputs, output) -> None:
            seen.setdefault(k, tuple(output.shape[-2:]))
        return record

    hooks = [m.register_forward_hook(hook(k)) for k, m in enumerate(modules)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return [seen[k] for k in range(len(modules))]


def _first_stage_size(model: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    return _output_sizes(model, [module], x)[0]


def test_cifar_stems_keep_32x32():
    x = torch.randn(1, 3, 32, 32)
    sh = compact.shufflenetv2_cifar()
    assert _first_stage_size(sh, sh.maxpool, x) == (32, 32)
    mb = compact.mobilenetv2_cifar()
    assert _first_stage_size(mb, mb.features[3], x) == (32, 32)  # end of the 24-channel stage
    sq = compact.squeezenet_cifar()
    assert _first_stage_size(sq, sq.features[1], x) == (32, 32)
    dn = compact.densenet_cifar()
    assert _first_stage_size(dn, dn.stages[0].dense.denselayer1, x) == (32, 32)  # first dense layer
    d121 = compact.densenet121_cifar()
    assert _first_stage_size(d121, d121.features.denseblock1, x) == (32, 32)
    nas = compact.nasnet_a_cifar()
    assert _first_stage_size(nas, nas.cells[0], x) == (32, 32)
    mv3 = skipblocknet.mobilenetv3_small(num_classes=10, cifar_stem=True)
    assert _first_stage_size(mv3, mv3.features[0], x) == (32, 32)


@pytest.mark.parametrize("factory", [skipblocknet.skipblocknet_xs, skipblocknet.skipblocknet_l])
def test_skipblocknet_cifar_stem(factory):
    """Fashion-MNIST padded to 32x32, 1 channel: stride-1 stem, skips pooled to 8 and 4."""
    model = factory(num_classes=10, in_channels=1, input_size=32, cifar_stem=True)
    x = torch.randn(2, 1, 32, 32)
    sizes = _output_sizes(model, [model.first_block, model.skips[0], model.skips[1]], x)
    assert sizes == [(32, 32), (8, 8), (4, 4)]
    assert model.skip_sizes == (8, 4)
    feats = _check_interface(model, x)
    assert feats.shape[-2:] == (2, 2)
    assert skipblocknet.skipblocknet_m().skip_sizes == (28, 14)


def test_skipblocknet_skip_sizes_at_224():
    model = skipblocknet.skipblocknet_m()
    x = torch.randn(1, 3, 224, 224)
    assert _output_sizes(model, [model.skips[0], model.skips[1]], x) == [(28, 28), (14, 14)]


def test_skipblocknet_trains_one_step():
    model = skipblocknet.skipblocknet_xs(num_classes=10, in_channels=1, input_size=32, cifar_stem=True)
    logits, feats = model.train().forward_with_features(torch.randn(4, 1, 32, 32))
    loss = nn.functional.cross_entropy(logits, torch.arange(4)) + feats.var() * 0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
