"""DCP: utility update by hand, gradients of masked channels, the global top-k, export
equality and its fvcore cost, L1-norm pruning, resume, and every artifact at smoke scale."""
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_smoke
import torch

from repro.config import DataSpec, TrainSpec
from repro.data import load_data
from repro.models.resnet import maskable_layers as resnet_slots
from repro.models.resnet import resnet_cifar
from repro.models.resnet50_dcp import maskable_layers as r50_slots
from repro.models.resnet50_dcp import resnet50_dcp
from repro.models.vgg import maskable_layers as vgg_slots
from repro.models.vgg import vgg16_cifar
from repro.models.staged import CostModel, export_pruned, l1_keep
from repro.papers.dcp import (ChannelMask, DCPController, count_macs, count_params, dcp_controller, dcp_phases,
                              dcp_step, match_uniform_fraction, select_channels, uniform_counts)
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
    from repro.api import Request

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
    assert r50["dcp"].train.epochs == 60 and r50["dcp"].train.batch_size == 64  # main2.py at HEAD
    assert r50["dcp"].method["pr"] == 0.3 and r50["dcp"].method["decay"] == 0.6
    assert r50["dcp"].method["warmup_frac"] * 60 == pytest.approx(5, abs=1e-3)
    opts = Request(scale="paper", options=(("pr", "0.6"), ("init", "pretrained")))
    assert chain(opts, "vgg16")["dcp"].method["pr"] == 0.6 and chain(opts, "vgg16")["dcp"].method["decay"] == 0.7
    # full-size models build and cost what the model docs say (fvcore MACs at 32x32, 10 classes)
    assert count_macs(vgg16_cifar(), (3, 32, 32)) == pytest.approx(313.8e6, rel=1e-3)
    assert count_macs(resnet_cifar(56), (3, 32, 32)) == pytest.approx(126.8e6, rel=1e-3)


def _per_epoch(cfg, steps: int = 1) -> tuple[list[float], list[float]]:
    """(lr, decay) of every epoch of a DCP run as its trainer runs it: the phases' specs through the
    engine's schedule (checked at the start and the end of each epoch), the controller's decay."""
    from repro.train import lr_factor

    lrs = []
    for _, spec in dcp_phases(cfg):
        for e in range(spec.epochs):
            lo, hi = (spec.lr * lr_factor(spec, e + f) for f in (0.0, (steps - 1) / steps))
            assert lo == pytest.approx(hi)  # constant within the epoch, as MultiStepLR stepped per epoch
            lrs.append(lo)
    net = resnet50_dcp(10, 3, width=4, stem="cifar")
    ctrl = dcp_controller(cfg, r50_slots(net), steps)
    decays = [ctrl.decay_at(e * steps + j) for e in range(cfg.train.epochs) for j in (0, steps - 1)]
    assert decays[::2] == decays[1::2]
    return lrs, decays[::2]


def test_imagenet_dcp_schedule_follows_main2_at_head():
    """main2.py at HEAD: lr 0.01 in epoch 0, then 0.1, x0.1 from epochs 36, 48, 54 (MultiStepLR stepped at
    each epoch's end); net.epoch_step raises the decay 0.6 -> 0.7 (36) -> 0.8 (48) -> 1.0 (54)."""
    from repro.papers.dcp import chain
    from repro.api import Request

    cfg = chain(Request(scale="paper"), "resnet50")["dcp"]
    lrs, decays = _per_epoch(cfg, steps=7)
    want_lr = [0.01] + [0.1] * 35 + [0.01] * 12 + [0.001] * 6 + [1e-4] * 6
    want_decay = [0.6] * 36 + [0.7] * 12 + [0.8] * 6 + [1.0] * 6
    assert len(lrs) == 60 and lrs == pytest.approx(want_lr, rel=1e-9)
    assert decays == pytest.approx(want_decay, rel=1e-9)
    assert dcp_controller(cfg, r50_slots(resnet50_dcp(10, 3, width=4)), 7).warmup_iters == 5 * 7  # 5 of 60 epochs
    # CIFAR (main.py never calls epoch_step): one phase, constant decay
    vgg = chain(Request(scale="paper"), "vgg16")["dcp"]
    assert "decay_schedule" not in vgg.method and [n for n, _ in dcp_phases(vgg)] == ["dcp"]
    # --set decay=x: HEAD's rule from x (+0.1 at each drop but the last, 1.0 at the last)
    up = chain(Request(scale="paper", options=(("decay", "0.5"),)), "resnet50")["dcp"]
    assert up.method["decay_schedule"] == [[0.6, 0.6], [0.8, 0.7], [0.9, 1.0]]


def test_decay_schedule_is_the_decay_of_the_iteration_whose_scores_are_applied():
    # one channel, score 1 every iteration (v / max = 1): U <- d(it) * U + 1, with d = 0.5 for iterations
    # 0-1 and 0.25 from iteration 2 on
    ctrl = DCPController([1], pr=0.0, decay=0.5, warmup_iters=10, total_iters=10, decay_schedule=[(2, 0.25)])
    cm = ChannelMask(ctrl, 0)
    a = torch.ones(1, 1, 1, 1)
    u = 0.0
    for it in range(4):
        ctrl.before_forward()  # applies the scores of iteration it - 1
        if it > 0:
            u = (0.5 if it - 1 < 2 else 0.25) * u + 1
        assert float(ctrl.utility) == pytest.approx(u)
        _backward_through(cm, a, torch.ones_like(a))
    ctrl.finalize()  # the last iteration's (3) scores, with its decay
    assert float(ctrl.utility) == pytest.approx(0.25 * u + 1)
    with pytest.raises(Exception):
        DCPController([1], pr=0.0, decay=0.5, warmup_iters=1, total_iters=2, decay_schedule=[(1, 1.5)])


def test_imagenet_recipe_trains_in_two_phases_and_resumes(tmp_path, monkeypatch):
    """The HEAD recipe through the real trainers (a small ResNet-50 on synthetic data, 3 epochs): epoch 1 at
    the start lr, then the main schedule; the controller counts every iteration of both phases, and a run
    interrupted in the second phase resumes to the same network."""
    import repro.train
    from repro.papers.dcp import chain
    from repro.api import Request, Settings
    from repro.runner import execute
    from repro.store import Run

    runs = chain(Request(scale="paper", dataset="synthetic"), "resnet50")
    small = DataSpec(val_size=32, train_limit=64, test_limit=32)
    one = lambda c: replace(c, data=small, model_args={"width": 4, "stem": "cifar"},  # noqa: E731
                            train=replace(c.train, epochs=3, batch_size=32))
    base = one(runs["unpruned"])
    dcp = replace(one(runs["dcp"]), parent=base)
    for d in ("a", "b"):
        assert execute(base, Settings(runs_dir=tmp_path / d, log=lambda s: None)) == "trained"
    assert execute(dcp, Settings(runs_dir=tmp_path / "a", log=lambda s: None)) == "trained"
    run = Run(tmp_path / "a", dcp)
    metrics = pd.read_csv(run.metrics_path)
    assert metrics["phase"].tolist() == ["dcp-start", "dcp", "dcp"]
    assert metrics["lr"].iloc[0] == pytest.approx(0.01)
    res = run.results()
    assert res["total_iters"] == 3 * 2 and res["macs"] == res["macs_predicted"]
    assert int(torch.load(run.dir / "dcp_state.pt")["iteration"]) == 6

    class Stop(Exception):
        pass

    fit_ = repro.train.fit

    def stop_in_phase_two(*args, **kw):
        if kw["phase"] == "dcp":
            kw["on_epoch_end"] = lambda epoch: (_ for _ in ()).throw(Stop())
        return fit_(*args, **kw)

    monkeypatch.setattr(repro.train, "fit", stop_in_phase_two)
    with pytest.raises(Stop):
        execute(dcp, Settings(runs_dir=tmp_path / "b", log=lambda s: None))
    monkeypatch.setattr(repro.train, "fit", fit_)
    logs: list[str] = []
    assert execute(dcp, Settings(runs_dir=tmp_path / "b", log=logs.append)) == "trained"
    assert any("dcp: resuming at epoch 2/2" in line for line in logs), logs
    again = Run(tmp_path / "b", dcp)
    for name in ("model.pt", "dcp_state.pt"):
        a, b = torch.load(run.dir / name), torch.load(again.dir / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_paper_scale_chain_runs_a_few_batches_on_synthetic_data(tmp_path):
    """ResNet-32 at full width through the real trainers: unpruned -> dcp -> l1 (a few batches)."""
    from repro.papers.dcp import chain
    from repro.api import Request, Settings
    from repro.runner import execute
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


def test_table1_from_synthetic_runs_pairs_the_gaps_and_shows_only_the_papers_columns(tmp_path):
    """table1 built from given runs (two seeds): top1_change and the claims are the paired gaps of
    repro.exits.gap_with_spread, the paper's columns appear only where the README gives a number."""
    from repro.api import Request, Runs, Settings
    from repro.exits import gap_with_spread
    from repro.papers import dcp
    from repro.render import read_table_csv
    from repro.runner import build_and_write

    class FakeRun:
        def __init__(self, results, outputs):
            self.results, self.outputs = results, outputs

    request = Request(scale="smoke", seeds=2)
    named = dcp.PAPER.artifacts["table1"].runs(request)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (200,), generator=g)
    given = {}
    for i, name in enumerate(named):
        runs = []
        for seed in range(2):
            logits = torch.randn(1, 200, 10, generator=g)
            k = 100 + 20 * (i % 3) + seed  # the first k images are right
            logits[0, :k].scatter_(1, labels[:k, None], 9.0)
            top1 = float((logits[0].argmax(-1) == labels).double().mean() * 100)
            macs = 1e6 * (3 - i % 3)
            res = {"top1": top1, "top5": top1, "macs": macs, "params": 1e5, "macs_predicted": macs,
                   "params_predicted": 1e5, "flops_reduction_pct": 10.0 * (i % 3), "params_reduction_pct": 5.0,
                   "masked_top1": top1, "guard_hits": 0, "warmup_iters": 1, "total_iters": 8, "keep_fraction": 0.5,
                   "finetune_batches": 2}
            runs.append(FakeRun(res, {"test_logits": logits, "test_labels": labels}))
        given[name] = runs
    build_and_write("dcp", "table1", request, Runs.fixed(given, named, request), Settings(out_dir=tmp_path))
    df = read_table_csv(tmp_path / "tables" / "smoke" / "dcp_table1.csv")
    assert [c for c in df.columns if c.endswith(" paper")] == ["top1 paper", "flops_reduction_pct paper"]
    correct = lambda n: [r.outputs["test_logits"][0].argmax(-1) == labels for r in given[n]]  # noqa: E731
    gap, spread = gap_with_spread(correct("resnet32/dcp"), correct("resnet32/unpruned"))
    assert df.loc[4, "top1_change"] == pytest.approx(gap) and df.loc[4, "top1_change ±"] == pytest.approx(spread)
    md = (tmp_path / "tables" / "smoke" / "dcp_table1.md").read_text()
    gap, _ = gap_with_spread(correct("vgg16/dcp"), correct("vgg16/l1"))
    assert f"VGG-16: DCP − L1-norm top-1 at the same FLOPs (paper: DCP is superior, no L1 number): ours {gap:+.2f}" \
        in md
    assert "model: vgg16_cifar {'width': 0.0625}; resnet_cifar {'depth': 32, 'width': 4}" in md


# ---------------------------------------------------------------- every artifact at smoke scale


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(tmp_path_factory, "dcp", ("table1", "fig-ratio", "fig-channels", "imagenet"))


def _read(path):
    return pd.read_csv(path, comment="#")


@pytest.mark.slow
def test_table1_smoke(smoke):
    md = (smoke / "tables" / "smoke" / "dcp_table1.md").read_text()
    assert "scale: smoke" in md and "dataset: fashion-mnist" in md and "fvcore" in md and "seeds: 1 seed" in md
    assert "DCP − L1-norm top-1" in md and "equal the mask's prediction" in md
    df = _read(smoke / "tables" / "smoke" / "dcp_table1.csv")
    labels = list(df["row"])
    assert len(labels) == 9 and labels[0] == "VGG-16 unpruned" and labels[1].startswith("VGG-16 DCP")
    assert df["top1"].between(0, 100).all()
    assert df["flops_reduction_pct"].iloc[[1, 2, 4, 5, 7, 8]].between(5, 95).all()
    assert df.loc[1, "top1 paper"] == 93.50 and df.loc[4, "flops_reduction_pct paper"] == 50.2
    assert (df["masked_top1"].iloc[[1, 4, 7]] - df["top1"].iloc[[1, 4, 7]]).abs().max() <= 0.1
    # L1 is pruned to DCP's FLOPs reduction (as close as whole channels allow at smoke widths)
    assert (df["flops_reduction_pct"].iloc[[2, 5, 8]].values - df["flops_reduction_pct"].iloc[[1, 4, 7]].values
            ).__abs__().max() < 8


@pytest.mark.slow
def test_fig_ratio_smoke(smoke):
    assert (smoke / "figures" / "smoke" / "dcp_fig-ratio.png").stat().st_size > 1000
    df = _read(smoke / "figures" / "smoke" / "dcp_fig-ratio.csv")
    dcp = df[df["method"] == "DCP"].sort_values("pr")
    assert list(dcp["pr"]) == [0.3, 0.5] and dcp["flops_reduction_pct"].is_monotonic_increasing
    paper = "paper, CIFAR-10: DCP ResNet-32 (authors' README)"
    assert set(df["method"]) >= {"DCP", "unpruned", paper} and df["top1"].between(0, 100).all()
    assert df.loc[df["method"] == paper, "source"].tolist() == ["paper"]
    # the paper's CIFAR-10 point has a panel of its own (it would squash ours), the same x axis
    axes = [line for line in open(smoke / "figures" / "smoke" / "dcp_fig-ratio.csv") if line.startswith("# axes")]
    assert len(axes) == 2 and f"legend: {paper}" in axes[1] and "on CIFAR-10" in axes[1]
    assert "% of the unpruned model's MMACs" in axes[0] and "on Fashion-MNIST" in axes[0]


@pytest.mark.slow
def test_fig_channels_smoke(smoke):
    assert (smoke / "figures" / "smoke" / "dcp_fig-channels.pdf").exists()
    df = _read(smoke / "figures" / "smoke" / "dcp_fig-channels.csv")
    assert set(df["arch"]) == {"vgg16", "resnet32"}
    last = df.sort_values("iteration").groupby(["arch", "layer_index"]).tail(1)
    assert (last["active"] == last["kept_final"]).all() and (last["active"] >= 1).all()
    first = df[df["iteration"] == 0]
    assert (first["active"] == first["channels"]).all()  # warm-up: every channel active
    assert df.groupby("arch")["layer_index"].nunique().to_dict() == {"vgg16": 13, "resnet32": 15}


@pytest.mark.slow
def test_imagenet_smoke(smoke):
    df = _read(smoke / "tables" / "smoke" / "dcp_imagenet.csv")
    assert list(df["row"])[0] == "ResNet-50 unpruned" and len(df) == 3
    assert df.loc[1, "top1 paper"] == 74.25 and df.loc[1, "top5 paper"] == 92.05
    assert df["top5"].between(0, 100).all() and (df["top5"] >= df["top1"]).all()
    md = (smoke / "tables" / "smoke" / "dcp_imagenet.md").read_text()
    assert "our own training run" in md


def test_the_quick_scale_trains_on_all_the_data_and_fine_tunes_l1_as_long_as_dcp_trains():
    """docs/calibration.md (converge first): all 55k images, 10 cosine epochs for the unpruned run and
    DCP, and L1-norm pruning fine-tuned for as long (equal training after the pruning decision)."""
    from repro.api import Request
    from repro.artifacts import get_paper
    from repro.runner import plan

    art = get_paper("dcp").artifact("table1")
    cfgs = plan(art, Request(scale="quick"))
    assert {c.data.train_limit for c in cfgs} == {None}
    for c in cfgs:
        if c.kind == "l1":
            assert c.train.epochs == c.parent.train.epochs == 10 and c.method["batches_frac"] == 1.0
            assert c.train.lr == pytest.approx(c.parent.train.lr / 10)
    assert {c.data.train_limit for c in plan(art, Request(scale="quick", train_limit=2000))} == {2000}
