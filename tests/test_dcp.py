"""DCP: utility update by hand, gradients of masked channels, the global top-k, export
equality and its fvcore cost, L1-norm pruning, resume, and every artifact at smoke scale."""
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_smoke
import torch
import torch.nn.functional as F

from repro.config import DataSpec, TrainSpec
from repro.data import load_data
from repro.models.resnet import maskable_layers as resnet_slots
from repro.models.resnet import resnet_cifar
from repro.models.resnet50_dcp import maskable_layers as r50_slots
from repro.models.resnet50_dcp import resnet50_dcp
from repro.models.vgg import maskable_layers as vgg_slots
from repro.models.vgg import vgg16_cifar
from repro.papers.dcp import (ChannelMask, CostModel, DCPController, count_macs, count_params, dcp_step,
                              export_pruned, l1_keep, match_uniform_fraction, select_channels, uniform_counts)
from repro.train import fit

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


# ---------------------------------------------------------------- utility and masks


def _toy():
    # b=2, c=3, h=1, w=2
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]], [[0.5, 0.5]]],
                      [[[-1.0, 1.0]], [[2.0, 2.0]], [[1.0, -2.0]]]])
    ctrl = DCPController([3], pr=0.0, decay=0.5, warmup_iters=10**6, total_iters=10)
    return a, ctrl, ChannelMask(ctrl, 0)


def _backward_through(mask_module, a, g_out):
    leaf = a.clone().requires_grad_()
    mask_module.train()
    (mask_module(leaf) * g_out).sum().backward()
    return leaf.grad


def test_utility_update_on_a_toy_layer_by_hand():
    a, ctrl, cm = _toy()
    ctrl.before_forward()  # iteration 0: every channel active
    _backward_through(cm, a, torch.ones_like(a))
    ctrl.before_forward()
    # Σ_hw g·a per sample: b0 (3, 2, 1), b1 (0, 4, -1); Σ_b |.| = (3, 6, 2); /(b·h·w = 4) = (0.75, 1.5, 0.5);
    # / max 1.5 -> (0.5, 1, 1/3); U = 0·0.5 + v
    assert ctrl.utility.tolist() == pytest.approx([0.5, 1.0, 1 / 3])
    ctrl.mask.copy_(torch.tensor([1.0, 1.0, 0.0]))  # channel 2 masked for the next iteration
    grad = _backward_through(cm, a, 2 * torch.ones_like(a))
    assert torch.equal(grad[:, 2], torch.zeros_like(grad[:, 2]))  # no gradient reaches the masked channel
    ctrl.before_forward()
    # g = 2 on channels 0, 1 and 0 on channel 2: Σ_b |Σ_hw g·a| = (6, 12, 0); /4 = (1.5, 3, 0); /3 = (0.5, 1, 0)
    # U[active] *= 0.5; U += v  ->  (0.25 + 0.5, 0.5 + 1, 1/3): the masked channel keeps its utility
    assert ctrl.utility.tolist() == pytest.approx([0.75, 1.5, 1 / 3])


def test_utility_is_untouched_when_no_backward_ran():
    a, ctrl, cm = _toy()
    ctrl.utility.copy_(torch.tensor([0.2, 0.4, 0.6]))
    ctrl.before_forward()
    cm.eval()
    cm(a)  # an evaluation forward in between (no backward)
    ctrl.before_forward()
    assert ctrl.utility.tolist() == pytest.approx([0.2, 0.4, 0.6])


def test_masked_channels_get_no_gradient_and_keep_their_utility():
    torch.manual_seed(0)
    net = vgg16_cifar(10, 1, width=0.125)
    slots = vgg_slots(net)
    ctrl = DCPController([s.channels for s in slots], pr=0.5, decay=0.6, warmup_iters=1, total_iters=10)
    ctrl.install(slots)
    step = dcp_step(ctrl)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    net.train()
    loss, _ = step(net, x, y)  # warm-up iteration
    loss.backward()
    net.zero_grad()
    loss, _ = step(net, x, y)  # masks from the utilities
    before = ctrl.utility.clone()
    masked = ctrl.mask == 0
    assert masked.sum() == round(ctrl.n * 0.5)
    loss.backward()
    for s, m in zip(slots, ctrl.layer_masks()):
        off = ~m
        assert torch.all(s.conv.weight.grad[off] == 0) and torch.all(s.bn.weight.grad[off] == 0)
        assert torch.all(s.bn.bias.grad[off] == 0)
        assert torch.any(s.conv.weight.grad[m] != 0)
        assert torch.all(s.consumers[0].weight.grad[:, off] == 0)  # the next layer reads zeros from them
    ctrl.before_forward()
    assert torch.equal(ctrl.utility[masked], before[masked])
    assert torch.all(ctrl.utility[~masked] != before[~masked])


def test_dcp_step_under_autocast_keeps_float32_state():
    """The GPU path trains under autocast; CPU bfloat16 autocast exercises the same dtype handling."""
    torch.manual_seed(0)
    net = resnet_cifar(8, 10, 1, width=4)
    slots = resnet_slots(net)
    ctrl = DCPController([s.channels for s in slots], pr=0.5, decay=0.6, warmup_iters=1, total_iters=4)
    ctrl.install(slots)
    step = dcp_step(ctrl)
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = step(net, x, y)
        loss.backward()
    ctrl.before_forward()
    assert ctrl.utility.dtype == torch.float32 and torch.isfinite(ctrl.utility).all()
    assert (ctrl.utility > 0).any() and int(ctrl.mask.sum()) == ctrl.keep_count


def test_global_topk_keeps_the_right_count_and_the_best_channels():
    g = torch.Generator().manual_seed(0)
    sizes = [5, 7, 3, 9]
    layer_id = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    u = torch.rand(sum(sizes), generator=g)
    for pr in (0.0, 0.3, 0.5, 0.74):
        keep, hits = select_channels(u, layer_id, 4, pr)
        k = 24 - round(24 * pr)
        assert int(keep.sum()) == k
        # brute force: the k largest utilities over all layers at once
        want = sorted(range(24), key=lambda i: -float(u[i]))[:k]
        if int(hits) == 0:
            assert sorted(keep.nonzero().flatten().tolist()) == sorted(want)
    # the authors' strict threshold keeps one channel fewer (no ties)
    keep, _ = select_channels(u, layer_id, 4, 0.5, rule="code", guard=False)
    assert int(keep.sum()) == 24 - 12 - 1


def test_guard_keeps_one_channel_in_a_layer_the_ranking_would_empty():
    sizes = [4, 4]
    layer_id = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes))
    u = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1, 0.3, 0.2, 0.05])
    keep, hits = select_channels(u, layer_id, 2, 0.5)
    assert int(hits) == 1 and int(keep.sum()) == 4
    assert keep.tolist() == [1, 1, 1, 0, 0, 1, 0, 0]  # layer 1's best (0.3) displaces layer 0's 4th
    keep0, _ = select_channels(u, layer_id, 2, 0.5, guard=False)
    assert keep0.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_layer_scope_keeps_the_top_of_every_layer():
    sizes = [4, 6]
    layer_id = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes))
    u = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.8, 0.01, 0.7, 0.3, 0.6, 0.02])
    keep, _ = select_channels(u, layer_id, 2, 0.5, scope="layer")
    # layer 0 keeps 2 of 4 (0.9, 0.5), layer 1 keeps 3 of 6 (0.8, 0.7, 0.6)
    assert keep.tolist() == [0, 1, 1, 0, 1, 0, 1, 0, 1, 0]
    ctrl = DCPController(sizes, 0.5, 0.6, 0, 1, scope="layer")
    assert ctrl.keep_count == 5


def test_selection_is_deterministic_under_ties():
    layer_id = torch.zeros(6, dtype=torch.long)
    keep, _ = select_channels(torch.zeros(6), layer_id, 1, 0.5)
    assert keep.tolist() == [1, 1, 1, 0, 0, 0]  # ties go to the lower index


# ---------------------------------------------------------------- export and costs


def _randomise_bn(net, gen):
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("name,make,slots_fn", [
    ("vgg16", lambda: vgg16_cifar(10, 1, width=0.125), vgg_slots),
    ("resnet32", lambda: resnet_cifar(32, 10, 1, width=4), resnet_slots),
    ("resnet50", lambda: resnet50_dcp(10, 1, width=4, stem="cifar"), r50_slots),
])
def test_exported_network_equals_the_masked_one_and_costs_what_the_mask_predicts(name, make, slots_fn):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    net = make()
    _randomise_bn(net, gen)
    slots = slots_fn(net)
    cost = CostModel(net, slots, (1, 32, 32))
    assert cost.predict([s.channels for s in slots]) == (count_macs(net, (1, 32, 32)), count_params(net))
    ctrl = DCPController([s.channels for s in slots], pr=0.6, decay=0.6, warmup_iters=0, total_iters=1)
    ctrl.utility.copy_(torch.rand(ctrl.n, generator=gen))
    ctrl.install(slots)
    ctrl.before_forward()
    net.eval()
    x = torch.randn(6, 1, 32, 32, generator=gen)
    with torch.no_grad():
        masked = net(x)
    keep = ctrl.keep_indices()
    pruned = export_pruned(net, slots_fn, keep)
    pruned.eval()
    with torch.no_grad():
        out = pruned(x)
    assert torch.allclose(out, masked, atol=1e-4, rtol=1e-4), (out - masked).abs().max()
    kept = [len(k) for k in keep]
    assert sum(kept) == ctrl.keep_count < ctrl.n
    assert all(type(s.get_mask()).__name__ == "Identity" for s in slots_fn(pruned))
    assert (count_macs(pruned, (1, 32, 32)), count_params(pruned)) == cost.predict(kept)


def test_cost_model_against_brute_force_on_random_widths():
    gen = torch.Generator().manual_seed(2)
    net = vgg16_cifar(10, 3, width=0.125)
    slots = vgg_slots(net)
    cost = CostModel(net, slots, (3, 32, 32))
    for _ in range(3):
        kept = [int(torch.randint(1, s.channels + 1, (1,), generator=gen)) for s in slots]
        pruned = export_pruned(net, vgg_slots, [torch.arange(n) for n in kept])
        assert cost.predict(kept) == (count_macs(pruned, (3, 32, 32)), count_params(pruned))
    # hand check of one term: the first conv (3 -> 8, 3x3, 32x32 outputs) costs 8·32·32·3·9 MACs
    assert cost.terms and count_macs(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), (3, 32, 32)) == 8 * 1024 * 27


def test_l1_keeps_the_filters_with_the_largest_l1_norm():
    net = resnet_cifar(20, 10, 1, width=4)
    slot = resnet_slots(net)[0]
    with torch.no_grad():
        slot.conv.weight.copy_(torch.randn_like(slot.conv.weight))
    norms = [float(slot.conv.weight[c].detach().abs().sum()) for c in range(slot.channels)]
    want = sorted(sorted(range(slot.channels), key=lambda c: -norms[c])[:2])
    assert l1_keep(slot, 2).tolist() == want


def test_uniform_fraction_matches_the_target_flops_reduction():
    net = resnet_cifar(32, 10, 1, width=16)
    slots = resnet_slots(net)
    cost = CostModel(net, slots, (1, 32, 32))
    f, counts = match_uniform_fraction(cost, 0.40)
    red = 1 - cost.predict(counts)[0] / cost.total_macs
    assert abs(red - 0.40) < 0.01 and counts == uniform_counts(cost.sizes, f)
    assert all(1 <= n <= c for n, c in zip(counts, cost.sizes))


def test_resnet50_dcp_is_torchvision_resnet50_with_mask_slots():
    import torchvision

    ours, theirs = resnet50_dcp(), torchvision.models.resnet50()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    slots = r50_slots(ours)
    assert len(slots) == 32 and sum(s.channels for s in slots) == 2 * (3 * 64 + 4 * 128 + 6 * 256 + 3 * 512)
    assert count_macs(ours, (3, 224, 224)) == count_macs(theirs, (3, 224, 224)) == 4111512576


# ---------------------------------------------------------------- training engine


def test_resumed_dcp_run_is_identical(tmp_path):
    data = load_data("synthetic", DataSpec(val_size=200, train_limit=256), batch_size=64, seed=0)
    spec = TrainSpec(epochs=3, batch_size=64, lr=0.05, schedule="cosine", milestones=())

    def setup():
        torch.manual_seed(0)
        net = vgg16_cifar(10, 3, width=0.0625)
        slots = vgg_slots(net)
        ctrl = DCPController([s.channels for s in slots], 0.5, 0.6, 3, 3 * len(data.train), snapshots=6)
        ctrl.install(slots)
        return net, ctrl

    net, ctrl = setup()
    fit(net, dcp_step(ctrl), data.train, spec, ckpt_path=tmp_path / "a.pt", phase="dcp",
        device=torch.device("cpu"), seed=0, stateful=[ctrl], log=lambda s: None)

    class Stop(Exception):
        pass

    def interrupt(epoch):
        if epoch == 0:
            raise Stop

    net2, ctrl2 = setup()
    with pytest.raises(Stop):
        fit(net2, dcp_step(ctrl2), data.train, spec, ckpt_path=tmp_path / "b.pt", phase="dcp",
            device=torch.device("cpu"), seed=0, stateful=[ctrl2], on_epoch_end=interrupt, log=lambda s: None)
    net3, ctrl3 = setup()
    torch.manual_seed(99)
    fit(net3, dcp_step(ctrl3), data.train, spec, ckpt_path=tmp_path / "b.pt", phase="dcp",
        device=torch.device("cpu"), seed=0, stateful=[ctrl3], log=lambda s: None)
    for k, v in ctrl.state_dict().items():
        assert torch.equal(v, ctrl3.state_dict()[k]), k
    for k, v in net.state_dict().items():
        assert torch.equal(v, net3.state_dict()[k]), k
    assert int(ctrl3.hist_count) == 6 and int(ctrl3.iteration) == 3 * len(data.train)


def test_paper_scale_configs_follow_the_authors_recipes():
    from repro.papers.dcp import chain
    from repro.runner import Request

    r = Request(scale="paper")
    vgg = chain(r, "vgg16")
    assert vgg["dcp"].train.epochs == 200 and vgg["dcp"].train.milestone_epochs() == [100, 150, 190]
    assert vgg["dcp"].train.batch_size == 64 and vgg["dcp"].train.lr == 0.1 and vgg["dcp"].dataset == "cifar10"
    assert vgg["dcp"].method["pr"] == 0.42 and vgg["dcp"].method["decay"] == 0.6
    assert vgg["dcp"].method["warmup_frac"] * 200 == pytest.approx(10, abs=1e-3)
    assert vgg["l1"].train.epochs == 40 and vgg["l1"].train.lr == 0.001 and vgg["l1"].parent == vgg["dcp"]
    res = chain(r, "resnet32")
    assert res["dcp"].train.milestone_epochs() == [150, 200, 250, 290] and res["dcp"].model_args == {"depth": 32}
    r50 = chain(r, "resnet50")
    assert r50["unpruned"].method["init"] == "torchvision" and r50["dcp"].method["init"] == "pretrained"
    assert r50["dcp"].train.lr == 0.01 and r50["dcp"].train.milestone_epochs() == [13, 22, 28]
    assert r50["dcp"].method["pr"] == 0.3 and r50["dcp"].method["decay"] == 0.6
    assert r50["dcp"].method["warmup_frac"] * 90 == pytest.approx(5, abs=1e-3)
    opts = Request(scale="paper", options=(("pr", "0.6"), ("init", "pretrained")))
    assert chain(opts, "vgg16")["dcp"].method["pr"] == 0.6 and chain(opts, "vgg16")["dcp"].method["decay"] == 0.7
    # full-size models build and cost what the model docs say (fvcore MACs at 32x32, 10 classes)
    assert count_macs(vgg16_cifar(), (3, 32, 32)) == pytest.approx(313.8e6, rel=1e-3)
    assert count_macs(resnet_cifar(56), (3, 32, 32)) == pytest.approx(126.8e6, rel=1e-3)


def test_paper_scale_chain_runs_a_few_batches_on_synthetic_data(tmp_path):
    """ResNet-32 at full width through the real trainers: unpruned -> dcp -> l1 (a few batches)."""
    from repro.papers.dcp import chain
    from repro.runner import Request, Settings, execute
    from repro.store import Run

    runs = chain(Request(scale="paper", dataset="synthetic"), "resnet32")
    small = DataSpec(val_size=64, train_limit=64, test_limit=64)
    one = lambda c: replace(c, data=small, train=replace(c.train, epochs=1, batch_size=32))  # noqa: E731
    base = one(runs["unpruned"])
    dcp = replace(one(runs["dcp"]), parent=base)
    l1 = replace(one(runs["l1"]), parent=dcp)
    settings = Settings(runs_dir=tmp_path, log=lambda s: None)
    for c in (base, dcp, l1):
        assert execute(c, settings) == "trained"
    res = Run(tmp_path, dcp).results()
    assert res["macs"] == res["macs_predicted"] and res["params"] == res["params_predicted"]
    assert abs(res["top1"] - res["masked_top1"]) <= 0.1 and sum(res["kept"]) == res["keep_count"]
    assert res["macs_full"] == pytest.approx(69.8e6, rel=2e-3)
    l1r = Run(tmp_path, l1).results()
    assert abs(l1r["flops_reduction_pct"] - res["flops_reduction_pct"]) < 2.0


# ---------------------------------------------------------------- every artifact at smoke scale


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(tmp_path_factory, "dcp", ("table1", "fig-ratio", "fig-channels", "imagenet"))


def _read(path):
    return pd.read_csv(path, comment="#")


def test_table1_smoke(smoke):
    md = (smoke / "tables" / "dcp_table1.md").read_text()
    assert "scale: smoke" in md and "dataset: fashion-mnist" in md and "fvcore" in md and "seeds: 1 seed" in md
    assert "DCP − L1-norm top-1" in md and "equal the mask's prediction" in md
    df = _read(smoke / "tables" / "dcp_table1.csv")
    labels = list(df["row"])
    assert len(labels) == 9 and labels[0] == "VGG-16 unpruned" and labels[1].startswith("VGG-16 DCP")
    assert df["top1"].between(0, 100).all()
    assert df["flops_reduction_pct"].iloc[[1, 2, 4, 5, 7, 8]].between(5, 95).all()
    assert df.loc[1, "top1 paper"] == 93.50 and df.loc[4, "flops_reduction_pct paper"] == 50.2
    assert (df["masked_top1"].iloc[[1, 4, 7]] - df["top1"].iloc[[1, 4, 7]]).abs().max() <= 0.1
    # L1 is pruned to DCP's FLOPs reduction (as close as whole channels allow at smoke widths)
    assert (df["flops_reduction_pct"].iloc[[2, 5, 8]].values - df["flops_reduction_pct"].iloc[[1, 4, 7]].values
            ).__abs__().max() < 8


def test_fig_ratio_smoke(smoke):
    assert (smoke / "figures" / "dcp_fig-ratio.png").stat().st_size > 1000
    df = _read(smoke / "figures" / "dcp_fig-ratio.csv")
    dcp = df[df["method"] == "DCP"].sort_values("pr")
    assert list(dcp["pr"]) == [0.3, 0.5] and dcp["flops_reduction_pct"].is_monotonic_increasing
    assert set(df["method"]) >= {"DCP", "unpruned", "paper DCP"} and df["top1"].between(0, 100).all()


def test_fig_channels_smoke(smoke):
    assert (smoke / "figures" / "dcp_fig-channels.pdf").exists()
    df = _read(smoke / "figures" / "dcp_fig-channels.csv")
    assert set(df["arch"]) == {"vgg16", "resnet32"}
    last = df.sort_values("iteration").groupby(["arch", "layer_index"]).tail(1)
    assert (last["active"] == last["kept_final"]).all() and (last["active"] >= 1).all()
    first = df[df["iteration"] == 0]
    assert (first["active"] == first["channels"]).all()  # warm-up: every channel active
    assert df.groupby("arch")["layer_index"].nunique().to_dict() == {"vgg16": 13, "resnet32": 15}


def test_imagenet_smoke(smoke):
    df = _read(smoke / "tables" / "dcp_imagenet.csv")
    assert list(df["row"])[0] == "ResNet-50 unpruned" and len(df) == 3
    assert df.loc[1, "top1 paper"] == 74.25 and df.loc[1, "top5 paper"] == 92.05
    assert df["top5"].between(0, 100).all() and (df["top5"] >= df["top1"]).all()
    md = (smoke / "tables" / "dcp_imagenet.md").read_text()
    assert "our own training run" in md
