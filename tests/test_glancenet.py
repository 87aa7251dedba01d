"""GlanceNets: the hard example weight and the threshold loss by hand, thresholds under alpha,
entropy early exit against the shared evaluator, paper-scale configs, and the four artifacts
end to end at smoke scale."""
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import run_smoke
import torch
import torch.nn.functional as F

from repro.config import ConfigError
from repro.exits import bootstrap_ci, early_exit, exit_index, gap_with_spread, neg_entropy
from repro.models.densenet import glance_densenet
from repro.papers.glancenet import (ALPHAS, GlanceTraining, ThresholdBank, acc_stat, entropy, entropy_targets,
                                    glance_exit_index, glance_runs, hem_loss, hem_weights, outcomes, policy,
                                    score_thresholds, stat_spread)
from repro.api import Request, Runs, Settings

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def two_class(p: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly [p, 1 - p] (class 0 probability p)."""
    p = torch.tensor(p, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()], 1).float()


def h2(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731


# ---------------------------------------------------------------------------- eq. 1, 2


def test_hem_weight_by_hand_with_edge_cases():
    # label 0 everywhere; p = probability of the label at exits 1, 2, 3
    # A: right (0.8), wrong (0.3)  -> w2 = sig(0/0.8 - 1) + .5, w3 = sig(0.7/0.8 - 1) + .5
    # B: wrong (0.2), wrong (0.4)  -> no earlier right prediction: w2 = w3 = 1.5
    # C: wrong (0.4), right (0.9)  -> w2 = 1.5, w3 = sig(0.6/0.9 - 1) + .5
    # D: right (0.7), right (0.6)  -> all earlier right: w2 = w3 = sig(-1) + .5
    y = torch.zeros(4, dtype=torch.long)
    logits = [two_class([0.8, 0.2, 0.4, 0.7]), two_class([0.3, 0.4, 0.9, 0.6]), two_class([0.5, 0.5, 0.5, 0.5])]
    w = hem_weights(logits, y)
    want = torch.tensor([[1, 1, 1, 1],
                         [sig(-1) + .5, 1.5, 1.5, sig(-1) + .5],
                         [sig(0.7 / 0.8 - 1) + .5, 1.5, sig(0.6 / 0.9 - 1) + .5, sig(-1) + .5]])
    assert torch.allclose(w, want.float(), atol=1e-6)
    assert float(w.min()) >= sig(-1) + .5 - 1e-6 and float(w.max()) <= 1.5
    # hem_last=False: the backbone's own classifier is not reweighted
    w2 = hem_weights(logits, y, last=False)
    assert torch.equal(w2[-1], torch.ones(4)) and torch.equal(w2[:2], w[:2])


def test_hem_loss_treats_weights_as_constants():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 5, (16,), generator=g)
    base = [torch.randn(16, 5, generator=g) * 2 for _ in range(3)]
    a = [z.clone().requires_grad_() for z in base]
    hem_loss(a, y).backward()
    w = hem_weights(base, y)
    b = [z.clone().requires_grad_() for z in base]
    sum((wi * F.cross_entropy(z, y, reduction="none")).mean() for wi, z in zip(w, b)).backward()
    for za, zb in zip(a, b):
        assert torch.allclose(za.grad, zb.grad, atol=1e-7)
    # without HEM: the plain sum of cross-entropies
    assert float(hem_loss(base, y, hem=False)) == pytest.approx(sum(float(F.cross_entropy(z, y)) for z in base))


# ---------------------------------------------------------------------------- eq. 3, 4


def test_entropy_by_hand():
    assert entropy(two_class([0.3])).item() == pytest.approx(h2(0.3), rel=1e-6)
    assert entropy(torch.zeros(1, 10)).item() == pytest.approx(math.log(10), rel=1e-6)
    z = torch.randn(5, 7)
    assert torch.allclose(entropy(z), -neg_entropy(z), atol=1e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_threshold_loss_by_hand_and_its_gradient(alpha):
    # bypass 1: right with p(label) 0.9, 0.6; wrong with p(label) 0.2, 0.45
    y = torch.zeros(4, dtype=torch.long)
    z = two_class([0.9, 0.6, 0.2, 0.45]).requires_grad_()
    bank = ThresholdBank([alpha], 1, 2, init=0.3)
    loss = bank.loss([z], y)
    max_r, min_w = max(h2(0.9), h2(0.6)), min(h2(0.2), h2(0.45))
    want = (1 - alpha) * (max_r - 0.3) ** 2 + alpha * (min_w - 0.3) ** 2
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert float(bank.H.grad) == pytest.approx(2 * (1 - alpha) * (0.3 - max_r) + 2 * alpha * (0.3 - min_w), rel=1e-5)
    assert z.grad is None  # entropies are detached: the term moves only the thresholds
    # the letter's ||.||_2 of a scalar: absolute values
    absb = ThresholdBank([alpha], 1, 2, norm="abs", init=0.3)
    assert absb.loss([z], y).item() == pytest.approx((1 - alpha) * abs(max_r - 0.3) + alpha * abs(min_w - 0.3),
                                                     rel=1e-5)


def test_threshold_loss_edge_cases_drop_the_missing_half():
    y = torch.zeros(3, dtype=torch.long)
    bank = ThresholdBank([0.7], 1, 2, init=0.1)
    all_right = two_class([0.9, 0.8, 0.6])
    assert bank.loss([all_right], y).item() == pytest.approx(0.3 * (h2(0.6) - 0.1) ** 2, rel=1e-5)
    all_wrong = two_class([0.1, 0.3, 0.45])
    assert bank.loss([all_wrong], y).item() == pytest.approx(0.7 * (h2(0.1) - 0.1) ** 2, rel=1e-5)
    for z in (all_right, all_wrong):
        assert math.isfinite(bank.loss([z], y).item())


def test_bank_rows_are_independent_and_sum():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (32,), generator=g)
    z = [torch.randn(32, 4, generator=g) * 3 for _ in range(2)]
    bank = ThresholdBank([0.2, 0.8], 2, 4)
    singles = [ThresholdBank([a], 2, 4) for a in (0.2, 0.8)]
    assert bank.loss(z, y).item() == pytest.approx(sum(s.loss(z, y).item() for s in singles), rel=1e-6)


def test_thresholds_fall_as_alpha_rises_on_a_toy_problem():
    """SGD on eq. 4 over a stream of batches: H_T settles at the alpha-weighted mean of the batch
    targets, so when wrong predictions can be confident, a larger alpha gives a lower threshold."""
    g = torch.Generator().manual_seed(0)
    alphas = list(ALPHAS)
    bank = ThresholdBank(alphas, 2, 10)
    opt = torch.optim.SGD(bank.parameters(), lr=0.002, momentum=0.9)
    scale = torch.tensor([1.5, 3.0])[:, None, None]  # bypass 2 is sharper than bypass 1
    targets = []
    for _ in range(1000):
        y = torch.randint(0, 10, (64,), generator=g)
        z = torch.randn(2, 64, 10, generator=g) * scale
        z[:, torch.arange(64), y] += 2.0  # right more often than not
        targets.append(torch.stack(entropy_targets(list(z), y)[:2]))
        opt.zero_grad()
        bank.loss(list(z), y).backward()
        opt.step()
    H = bank.H.detach()
    assert (H.diff(dim=0) < 0).all(), H  # strictly falling along alpha, at both bypasses
    t = torch.stack(targets[500:]).mean(0)  # 2 x bypasses: mean max-right, mean min-wrong
    a = torch.tensor(alphas)[:, None]
    assert torch.allclose(H, (1 - a) * t[0] + a * t[1], atol=0.06)  # batch-to-batch noise


def _tiny_net():
    return glance_densenet(depth=7, growth=4, in_channels=1)


def _train(alphas, steps=4):
    torch.manual_seed(0)
    net = _tiny_net()
    model = GlanceTraining(net, ThresholdBank(alphas, net.num_exits - 1, 10), hem=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x, y = torch.randn(16, 1, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        loss, _ = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_alpha_bank_equals_separate_runs():
    """alpha never reaches the network: a bank of alphas trains the same weights and thresholds."""
    bank = _train([0.1, 0.5, 0.9])
    single = _train([0.9])
    for (k, a), (_, b) in zip(bank.net.state_dict().items(), single.net.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    assert bank.bank.thresholds(0.9) == pytest.approx(single.bank.thresholds(0.9), abs=1e-6)
    assert bank.bank.thresholds(0.1) != pytest.approx(bank.bank.thresholds(0.9), abs=1e-3)


# ---------------------------------------------------------------------------- inference


def test_entropy_exit_agrees_with_shared_evaluator_on_stored_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 400, 10, generator=g) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    labels = torch.randint(0, 10, (400,), generator=g)
    ent = entropy(logits)
    H = [float(ent[0].quantile(0.3)), float(ent[1].quantile(0.5))]
    ours = glance_exit_index(logits, H)
    shared = exit_index(neg_entropy(logits), torch.tensor(score_thresholds(H) + [-math.inf], dtype=torch.float64))
    assert torch.equal(ours, shared)
    assert 0 < (ours == 0).sum() < 400 and (ours == 1).sum() > 0 and (ours == 2).sum() > 0
    # the per-sample reference: walk the bypasses one sample at a time
    ref = []
    for n in range(400):
        e = next((k for k in range(2) if float(ent[k, n]) < H[k]), 2)
        ref.append(e)
    assert ours.tolist() == ref
    out = policy(logits, labels, score_thresholds(H), [1.0, 2.0, 3.0])
    assert torch.equal(out["exit"], ours)
    pred = logits.argmax(-1)[ours, torch.arange(400)]
    assert torch.equal(out["correct"].bool(), pred == labels)
    assert float(out["cost"].mean()) == pytest.approx(float(torch.tensor([1.0, 2.0, 3.0])[ours].mean()))


def test_real_early_exit_matches_stored_logits():
    torch.manual_seed(0)
    net = _tiny_net().eval()
    with torch.no_grad():  # sharper, spread-out predictions than an untrained net's
        for fc in [*(h.fc for h in net.bypasses), net.backbone.classifier.fc]:
            fc.weight.mul_(40)
    x = torch.randn(64, 1, 32, 32)
    with torch.no_grad():
        logits = torch.stack(net(x))
    ent = entropy(logits)

    def between(e, q):  # a threshold halfway between two neighbouring entropies: no ties
        s = e.sort().values
        j = int(q * (len(s) - 1))
        assert s[j + 1] - s[j] > 1e-4
        return float(s[j] + s[j + 1]) / 2

    H = [between(ent[0], 0.4), between(ent[1], 0.6)]
    preds, exits = early_exit(net, x, score_thresholds(H), "entropy")
    assert torch.equal(exits, glance_exit_index(logits, H))
    assert torch.equal(preds, logits.argmax(-1)[exits, torch.arange(64)])
    assert len(set(exits.tolist())) == 3


def test_stat_spread_one_seed_is_the_shared_bootstrap_and_seeds_give_std():
    g = torch.Generator().manual_seed(0)
    correct = (torch.rand(500, generator=g) < 0.7).double()
    value, half = stat_spread([{"correct": correct}], acc_stat)
    lo, hi = bootstrap_ci(correct)
    assert value == pytest.approx(70.0, abs=5) and half == pytest.approx((hi - lo) / 2, rel=1e-9)
    two = [{"correct": correct}, {"correct": 1 - correct}]
    v2, s2 = stat_spread(two, acc_stat)
    a, b = float(correct.mean() * 100), float((1 - correct).mean() * 100)
    # two seeds: t(0.975, 1) · s / √2 with s = |a − b| / √2
    assert v2 == pytest.approx((a + b) / 2) and s2 == pytest.approx(12.706 * abs(a - b) / 2, rel=1e-4)


def _synthetic_hem_run(seed: int, n: int = 400):
    """A result-like GlanceNet run: 3 exits whose entropy falls and accuracy rises with depth, and a
    threshold bank whose thresholds fall as alpha rises (so alpha 1.0 exits later and is right more often)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    logits = torch.randn(3, n, 10, generator=g)
    for k, sharp in enumerate((1.0, 2.5, 5.0)):
        logits[k, torch.arange(n), labels] += sharp * (torch.rand(n, generator=g) < 0.3 + 0.25 * k)
    ent = entropy(logits[:2])
    thresholds = [[float(ent[b].quantile(0.9 - 0.8 * a)) for b in range(2)] for a in ALPHAS]
    results = {"alphas": list(ALPHAS), "thresholds": thresholds, "costs": [1e6, 2e6, 3e6], "backbone_cost": 2.9e6}
    return SimpleNamespace(results=results, outputs={"test_logits": logits, "test_labels": labels})


def test_alpha_build_from_fixed_runs_claims_paired_gaps(tmp_path):
    """The alpha artifact built from synthetic runs (no training): its claim is the paired gap of
    repro.exits.gap_with_spread (at one seed: the test images' spread, z x the standard error of the
    per-image differences), shown without a verdict below 3 seeds, and every alpha of the bank is drawn."""
    from repro.runner import build_and_write

    request = Request(scale="quick")
    rrs = [_synthetic_hem_run(0)]
    runs = Runs.fixed({"hem": rrs}, {"hem": glance_runs(request)["hem"]}, request)
    paths = build_and_write("glancenet", "alpha", request, runs, Settings(out_dir=tmp_path))
    csv = next(p for p in paths if p.name == "glancenet_alpha.csv")
    head = [line for line in csv.read_text().splitlines() if line.startswith("# ")]
    d = (outcomes(rrs, 1.0)[0]["correct"].double() - outcomes(rrs, 0.1)[0]["correct"].double()) * 100
    gap, spread = float(d.mean()), 1.959964 * float(d.std()) / math.sqrt(d.numel())
    assert gap > spread > 0  # the synthetic bank: alpha 1.0 is more accurate, beyond the test images' spread
    assert tuple(gap_with_spread([o["correct"] for o in outcomes(rrs, 1.0)],
                                 [o["correct"] for o in outcomes(rrs, 0.1)])) == pytest.approx((gap, spread), abs=1e-4)
    line = next(h for h in head if h.startswith("# top-1 at alpha=1.0 minus alpha=0.1"))
    assert line.endswith(f"ours {gap:+.2f} ± {spread:.2f} (test images only) (no verdict)")
    assert "no claim gets a verdict below 3 seeds" in csv.read_text()
    claims = pd.read_csv(tmp_path / "figures" / "quick" / "glancenet_alpha.claims.csv", comment="#")
    assert claims["verdict"].tolist() == ["no verdict"] * len(claims) and claims["direction"].tolist() == [1, -1]
    assert any("model: DenseNet L=10 k=12, bypasses after dense blocks 1, 2" in h for h in head)
    df = _read(csv)
    ours = df[df["source"] == "ours"]
    assert [round(a, 1) for a in ours["alpha"]] == list(ALPHAS)
    assert ours["H_bypass1"].is_monotonic_decreasing and ours["H_bypass1_spread"].isna().all()  # one seed: none
    assert ours["top1"].iloc[-1] > ours["top1"].iloc[0]
    assert any(p.suffix == ".png" and p.stat().st_size > 10_000 for p in paths)


# ---------------------------------------------------------------------------- configs


def test_paper_scale_config_cost_and_one_training_step():
    from repro.data import dataset_info
    from repro.flops import count_model
    from repro.papers.glancenet import build_model

    runs = glance_runs(Request(scale="paper"))
    cfg = runs["hem"]
    assert cfg.dataset == "cifar10" and cfg.model_args == {"depth": 40, "growth": 12, "bottleneck": False,
                                                             "bypass_after": [0, 1]}
    assert cfg.train.epochs == 300 and cfg.train.batch_size == 64 and cfg.data.val_size == 5000
    assert runs["densenet"].model_args == {"depth": 40, "growth": 12, "bottleneck": False}
    assert set(ALPHAS) <= set(cfg.method["alphas"]) and 0.9 in cfg.method["alphas"]
    net = build_model(cfg, dataset_info("cifar10"))
    macs = count_model(net.backbone, (3, 32, 32)).macs
    assert abs(macs - 276e6) / 276e6 < 0.03, macs  # 269.4 M: the closest documented config
    model = GlanceTraining(net, ThresholdBank(cfg.method["alphas"], 2, 10))
    loss, logits = model(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    loss.backward()
    assert len(logits) == 3 and math.isfinite(loss.item()) and model.bank.H.grad is not None


def test_options_change_the_runs_and_bad_values_are_config_errors():
    r = glance_runs(Request(scale="smoke", options=(("alpha", "0.95"), ("bypass_after", "1"), ("tnorm", "abs"))))
    assert 0.95 in r["hem"].method["alphas"] and r["hem"].model_args["bypass_after"] == [1]
    assert r["hem"].method["tnorm"] == "abs" and r["no-hem"].method["hem"] is False
    assert r["hem"].key != glance_runs(Request(scale="smoke"))["hem"].key
    for bad in (("bypass_after", "2"), ("bypass_after", "x"), ("alpha", "1.5"), ("tnorm", "l3"), ("depth", "8")):
        with pytest.raises(ConfigError):
            glance_runs(Request(scale="smoke", options=(bad,)))


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(tmp_path_factory, "glancenet", ("table1", "hem", "alpha", "tradeoff"))


def _read(path):
    return pd.read_csv(path, comment="#")


@pytest.mark.slow
def test_e2e_runs_are_shared(smoke):
    runs = sorted(p.name.split("-s0-")[0] for p in (smoke / "runs" / "glancenet").iterdir())
    assert runs == ["densenet", "glancenet-hem", "glancenet-nohem"]
    d = next((smoke / "runs" / "glancenet").glob("glancenet-hem-*"))
    import json

    res = json.loads((d / "results.json").read_text())
    assert len(res["thresholds"]) == len(res["alphas"]) >= 10 and len(res["costs"]) == 3
    assert res["costs"][0] < res["costs"][1] < res["costs"][2] and res["backbone_cost"] < res["costs"][2]
    from repro.store import load_checkpoint

    assert load_checkpoint(d / "thresholds.pt")["H"].shape == (len(res["alphas"]), 2)


@pytest.mark.slow
def test_e2e_table1(smoke):
    md = (smoke / "tables" / "smoke" / "glancenet_table1.md").read_text()
    assert "scale: smoke" in md and "dataset: fashion-mnist" in md and "fvcore" in md and "seeds: 1 seed" in md
    assert "FLOPs reduction of GlanceNet vs DenseNet (%)" in md and "paper +30.18" in md
    df = _read(smoke / "tables" / "smoke" / "glancenet_table1.csv")
    assert len(df) == 4 and df["row"].iloc[0] == "DenseNet (baseline)"
    assert df["top1"].between(0, 100).all() and (df["top1 ±"] >= 0).all()
    assert df.loc[0, "speedup"] == 1 and df.loc[0, "flops_reduction_pct"] == 0
    assert df.loc[2, "top1 paper"] == 92.36 and df.loc[2, "mmacs paper"] == 186 and df.loc[0, "mmacs paper"] == 276
    assert (df["speedup"] * (1 - df["flops_reduction_pct"] / 100) - 1).abs().max() < 1e-6
    assert (df["wall_speedup_b1"] > 0).all() and (df["wall_speedup_batched"] > 0).all()
    fr = df.loc[1:, ["exit1_pct", "exit2_pct", "exit3_pct"]].sum(axis=1)
    assert (fr - 100).abs().max() < 1e-6 and df.loc[1, "exit3_pct"] == 100
    assert (df.loc[1:, "exit1_pct ±"] >= 0).all()  # every cell has a spread


@pytest.mark.slow
def test_e2e_hem(smoke):
    df = _read(smoke / "tables" / "smoke" / "glancenet_hem.csv")
    assert list(df["row"]) == ["GlanceNet without HEM (alpha=0.5)", "GlanceNet with HEM (alpha=0.5)"]
    assert list(df["top1 paper"]) == [89.12, 89.84] and list(df["speedup paper"]) == [1.54, 1.69]
    assert ((df[["exit1_pct", "exit2_pct", "exit3_pct"]].sum(axis=1)) - 100).abs().max() < 1e-6
    extra = df.loc[1, "exit1_pct"] - df.loc[0, "exit1_pct"]
    assert df.loc[1, "first_bypass_extra_pct"] == pytest.approx(extra)
    assert df.loc[1, "first_bypass_extra_pct paper"] == 15
    assert "samples at the first bypass" in (smoke / "tables" / "smoke" / "glancenet_hem.md").read_text()


@pytest.mark.slow
def test_e2e_alpha(smoke):
    df = _read(smoke / "figures" / "smoke" / "glancenet_alpha.csv")
    paper, df = df[df["source"] == "paper"], df[df["source"] == "ours"]
    assert [round(a, 1) for a in df["alpha"]] == list(ALPHAS)
    # the paper's two alphas (table1 0.9, hem 0.5) with their CIFAR-10 numbers, from the reference CSV
    assert paper.set_index("alpha")[["top1", "speedup"]].to_dict("index") == {0.9: {"top1": 92.36, "speedup": 1.43},
                                                                             0.5: {"top1": 89.84, "speedup": 1.69}}
    axes = [line for line in open(smoke / "figures" / "smoke" / "glancenet_alpha.csv") if line.startswith("# axes")]
    assert any("grey: the paper's suggested alpha range (0.5-1)" in a for a in axes)  # the shading is labelled
    assert any("paper, CIFAR-10: top-1 (%)" in a for a in axes)
    for c in ("H_bypass1", "H_bypass2"):
        assert df[c].is_monotonic_decreasing  # larger alpha, lower threshold (the paper's claim)
    assert df["top1"].between(0, 100).all() and (df["speedup"] > 0).all()
    assert (smoke / "figures" / "smoke" / "glancenet_alpha.png").stat().st_size > 10_000


@pytest.mark.slow
def test_e2e_tradeoff(smoke):
    df = _read(smoke / "figures" / "smoke" / "glancenet_tradeoff.csv")
    paper, df = df[df["source"] == "paper"], df[df["source"] == "ours"]
    assert set(df["method"]) == {"val-searched", "learned", "densenet", "glancenet-no-exit"}
    assert (df.loc[df["method"] == "val-searched", "top1_spread"] > 0).all()  # a band at one seed too
    assert paper["mflops"].tolist() == [186, 276] and paper["method"].str.startswith("paper, CIFAR-10: ").all()
    axes = [line for line in open(smoke / "figures" / "smoke" / "glancenet_tradeoff.csv") if line.startswith("# axes")]
    assert len(axes) == 2 and "MMACs, fvcore counter" in axes[0]
    assert (df["method"] == "learned").sum() == 10 and (df["method"] == "val-searched").sum() == 39
    assert df["top1"].between(0, 100).all() and (df["mflops"] > 0).all()
    assert (smoke / "figures" / "smoke" / "glancenet_tradeoff.png").stat().st_size > 10_000


def test_the_quick_scale_trains_on_all_the_data_unless_overridden():
    """docs/calibration.md (converge first): all 55k images, 10 cosine epochs; hem's convergence test is
    a 20-epoch twin of the GlanceNet without HEM."""
    from repro.artifacts import get_paper
    from repro.runner import plan

    art = get_paper("glancenet").artifact("hem")
    cfgs = plan(art, Request(scale="quick"))
    assert {c.data.train_limit for c in cfgs} == {None}
    assert sorted((c.name, c.train.epochs) for c in cfgs) == [
        ("glancenet-hem", 10), ("glancenet-nohem", 10), ("glancenet-nohem", 20)]
    assert {c.data.train_limit for c in plan(art, Request(scale="quick", train_limit=1000))} == {1000}
    assert {c.data.train_limit for c in plan(art, Request(scale="smoke"))} == {512}
