"""The exit-policy study: the scores and the oracle by hand, no policy above the oracle, every fit on
validation only, the d-gate search and the gated MSDNet against what they stand for, and
``repro study exits`` end to end at smoke scale."""
import json
import math
import statistics

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import run_smoke

from repro.api import Claim, Request
from repro.exits import cascade_exit, early_exit, neg_entropy
from repro.papers import imta, study
from repro.render import building, read_table_csv


# ---------------------------------------------------------------------------- scores by hand


def test_entropy_and_margin_scores_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.7, 0.2, 0.1]], dtype=torch.float64)
    logits = p.log().float()
    h = [-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)),
         -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))]
    assert neg_entropy(logits).tolist() == pytest.approx([-h[0], -h[1]], rel=1e-6)  # the study's entropy score
    assert study.softmax_margin(logits).tolist() == pytest.approx([0.5 - 0.3, 0.7 - 0.2], abs=1e-6)
    # equal logits: no margin, the largest entropy; a shift of every logit changes neither
    z = torch.zeros(1, 10)
    assert float(study.softmax_margin(z)) == 0.0
    assert float(neg_entropy(z)) == pytest.approx(-math.log(10), rel=1e-6)
    assert torch.allclose(study.softmax_margin(logits + 3.0), study.softmax_margin(logits), atol=1e-6)
    # two classes: the margin is |2p - 1|
    two = torch.tensor([[0.9, 0.1], [0.25, 0.75]]).log()
    assert study.softmax_margin(two).tolist() == pytest.approx([0.8, 0.5], abs=1e-6)


def test_interpolation_along_a_curve():
    cost = torch.tensor([[0.2], [0.6], [0.4]], dtype=torch.float64)  # unsorted points
    acc = torch.tensor([[50.0], [90.0], [80.0]], dtype=torch.float64)
    out = study.interpolate([0.1, 0.2, 0.3, 0.5, 0.6, 0.7], cost, acc)[:, 0].tolist()
    assert math.isnan(out[0]) and math.isnan(out[-1])  # no extrapolation
    assert out[1:5] == pytest.approx([50.0, 65.0, 85.0, 90.0])
    one = study.interpolate([1.0, 0.9], torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 70.0,
                                                                                         dtype=torch.float64))
    assert float(one[0, 0]) == 70.0 and math.isnan(float(one[1, 0]))


# ---------------------------------------------------------------------------- the oracle


def test_oracle_by_hand():
    # 3 exits costing 1, 2, 4; sample 0 right at exit 1, sample 1 first right at exit 2,
    # sample 2 only at exit 3, sample 3 never
    correct = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    o = study.Oracle(correct, [1.0, 2.0, 4.0])
    assert o.end_cost == pytest.approx((1 + 2 + 4 + 1) / 4)  # everyone at its first correct exit, sample 3 at exit 1
    got = o.at([0.5, 1.0, 1.25, 1.5, 2.0, 3.0], torch.ones(1, 4))[:, 0].tolist()
    assert math.isnan(got[0])  # below the first exit's cost nothing is possible
    # budget 1.5: sample 1 (extra 1) and a third of sample 2 (extra 3) on top of sample 0
    assert got[1:] == pytest.approx([25.0, 50.0, 100 * (2 + 1 / 3) / 4, 75.0, 75.0])
    # weights (a bootstrap resample): sample 1 twice, sample 0 never
    w = torch.tensor([[0.0, 2.0, 1.0, 1.0]])
    assert o.at([1.5], w)[0, 0].item() == pytest.approx(100 * 2 / 4)


def synthetic(seed: int = 0, k: int = 4, c: int = 6, n_val: int = 300, n_test: int = 400):
    """Per-exit logits that get better with depth, d-gate outputs, learned thresholds, costs."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.randint(0, c, (n,), generator=g)
        strength = torch.linspace(0.3, 3.0, k)[:, None, None]
        logits = torch.randn(k, n, c, generator=g) * 1.5 + strength * F.one_hot(y, c)
        gate = logits + torch.randn(k, n, c, generator=g)  # the gates: other classifiers on the same net
        gate[-1] = logits[-1]  # the last exit is the network's own classifier
        return logits, y, gate

    vl, vy, vg = split(n_val)
    tl, ty, tg = split(n_test)
    out = {"val_logits": vl, "val_labels": vy, "test_logits": tl, "test_labels": ty}
    gout = {"val_scores": vg.amax(-1), "val_preds": vg.argmax(-1), "val_labels": vy,
            "test_scores": tg.amax(-1), "test_preds": tg.argmax(-1), "test_labels": ty}
    learned = {"alphas": [0.1, 0.5, 0.9], "thresholds": [[1.4, 1.3, 1.2], [1.0, 0.9, 0.8], [0.5, 0.4, 0.4]]}
    costs = [1.0, 2.0, 3.5, 5.0]
    gate_costs = [1.1, 2.2, 3.7, 5.1]
    return out, costs, gout, gate_costs, learned


def _policy_points(curves: dict):
    """(policy, accuracy %, relative cost) of every point of every deployable policy's curve."""
    out = []
    for p, cv in curves.items():
        if isinstance(cv, study.Curve):
            acc, cost = cv.summary(torch.ones(1, cv.n))
            out += [(p, float(a), float(x)) for a, x in zip(acc[:, 0], cost[:, 0])]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_policy_beats_the_oracle_on_the_same_outputs(seed):
    curves = study.policy_curves(*synthetic(seed))
    points = _policy_points(curves)
    assert {p for p, _, _ in points} == {"confidence", "entropy", "learned", "dgates", "max_logit", "margin", "none"}
    for p, acc, cost in points:
        bound = curves["oracle_gates" if p == "dgates" else "oracle"]  # the d-gates' exits are other classifiers
        assert acc <= float(bound.at([cost], torch.ones(1, bound.n))[0, 0]) + 1e-6, (p, acc, cost)
    # at the matched costs (interpolated), point estimates and every bootstrap resample alike
    m = study.matched([curves])
    for p in study.REAL:
        bound = "oracle_gates" if p == "dgates" else "oracle"
        for j in range(len(study.FRACTIONS)):
            est = m.est[p][0, j]
            if not math.isnan(est):
                assert est <= m.est[bound][0, j] + 1e-6, (p, study.FRACTIONS[j])
            both = ~(m.boot[p][0, j].isnan() | m.boot[bound][0, j].isnan())
            assert bool((m.boot[p][0, j][both] <= m.boot[bound][0, j][both] + 1e-6).all()), (p, study.FRACTIONS[j])
    # the oracle's end: every sample some exit gets right, each at its first correct exit
    out, costs = synthetic(seed)[:2]
    correct = out["test_logits"].argmax(-1) == out["test_labels"]
    end = curves["oracle"].at([1.0], torch.ones(1, correct.shape[1]))[0, 0]
    assert float(end) == pytest.approx(100 * float(correct.any(0).double().mean()))


def test_matched_spreads_are_the_one_gap_rule_where_nothing_is_interpolated():
    # two one-point curves at the full cost: the matched accuracy is a plain accuracy; at one seed the
    # paired bootstrap over the same resamples is close to the rule's z x the standard error over images
    g = torch.Generator().manual_seed(7)
    n = 500
    a, b = (torch.rand(1, n, generator=g) < q for q in (0.8, 0.7))
    curve = lambda c: study.Curve(c.float(), torch.ones(1, n), [1.0], [[-math.inf]])  # noqa: E731
    m = study.matched([{"none": curve(a), "other": curve(b)}], [1.0])
    got = m.gap("none", "other", 0)
    gap, spread = got
    d = (a[0].double() - b[0].double()) * 100
    assert gap == pytest.approx(float(d.mean())) and got.seeds == 1
    assert spread == pytest.approx(1.959964 * float(d.std()) / math.sqrt(n), abs=0.1)  # 5.40 vs 5.38
    with building(Request(scale="quick")):
        assert Claim("x", got).line().endswith("(test images only) (no verdict)")
    # several seeds: the per-seed gaps' mean, and an interval at least the t-interval over the seeds
    seeds = [{"none": curve(torch.rand(1, n, generator=g) < 0.8), "other": curve(torch.rand(1, n, generator=g) < 0.7)}
             for _ in range(3)]
    got = study.matched(seeds, [1.0]).gap("none", "other", 0)
    per_seed = [float((s["none"].correct[0].double() - s["other"].correct[0].double()).mean() * 100) for s in seeds]
    assert got.gap == pytest.approx(sum(per_seed) / 3) and got.per_seed == pytest.approx(per_seed)
    t_half = 4.302653 * statistics.stdev(per_seed) / math.sqrt(3)
    assert got.halfwidth() >= t_half - 1e-6


def test_matched_gaps_over_seeds_count_the_test_images_the_seeds_share():
    """Single-point curves (nothing to interpolate): the per-image scores are known, so the core's
    rule computes the interval exactly (repro.stats.gap_evidence); the study's bootstrap estimate of
    the shared test-image part must agree with it (within the bootstrap's own noise), and be wider
    than the t-interval over seeds alone."""
    from repro.stats import gap_evidence

    n, g = 600, torch.Generator().manual_seed(3)
    easy = torch.rand(n, generator=g)  # images policy a gets right more often: a shared image part
    rows = [(torch.rand(n, generator=g) < 0.45 + 0.5 * easy).float() for _ in range(3)]
    base = [(torch.rand(n, generator=g) < 0.6).float() for _ in range(3)]
    curve = lambda c: study.Curve(c[None], torch.ones(1, n), [1.0], [[-math.inf]])  # noqa: E731
    got = study.matched([{"none": curve(a), "other": curve(b)} for a, b in zip(rows, base)], [1.0]).gap("none", "other", 0)
    exact = gap_evidence(rows, base)
    assert got.gap == pytest.approx(exact.gap) and got.var_seed == pytest.approx(exact.var_seed)
    assert got.halfwidth() == pytest.approx(exact.halfwidth(), rel=0.1)
    assert got.var_image > 0 and got.halfwidth() > 4.302653 * math.sqrt(exact.var_seed / 3)


def _fitted(curves: dict) -> dict:
    return {p: (cv.thresholds, cv.val_cost) for p, cv in curves.items() if isinstance(cv, study.Curve)}


def test_every_fit_uses_the_validation_split_only():
    out, costs, gout, gate_costs, learned = synthetic(3)
    ref = _fitted(study.policy_curves(out, costs, gout, gate_costs, learned))
    g = torch.Generator().manual_seed(9)
    n, k, c = out["test_labels"].numel(), out["test_logits"].shape[0], out["test_logits"].shape[2]
    garbage_y = out["test_labels"][torch.randperm(n, generator=g)]
    bad = {**out, "test_labels": garbage_y, "test_logits": torch.randn(k, n, c, generator=g) * 5}
    bad_g = {**gout, "test_labels": garbage_y, "test_scores": torch.randn(k, n, generator=g),
             "test_preds": torch.randint(0, c, (k, n), generator=g)}
    got = _fitted(study.policy_curves(bad, costs, bad_g, gate_costs, learned))
    assert got.keys() == ref.keys() and len(ref) == 7
    for p in ref:
        assert got[p][0] == ref[p][0], p  # thresholds
        assert got[p][1] == pytest.approx(ref[p][1]), p  # validation costs (they pick what is timed)
    # while the validation split does move them: its scores (budgeted batch) and labels (d-gates)
    noisy = {**out, "val_logits": out["val_logits"] + torch.randn(out["val_logits"].shape, generator=g)}
    moved = _fitted(study.policy_curves(noisy, costs, gout, gate_costs, learned))
    assert all(moved[p][0] != ref[p][0] for p in ("confidence", "entropy", "max_logit", "margin"))
    shuffled = {**gout, "val_labels": gout["val_labels"][torch.randperm(gout["val_labels"].numel(), generator=g)]}
    assert _fitted(study.policy_curves(out, costs, shuffled, gate_costs, learned))["dgates"][0] != ref["dgates"][0]


def test_threshold_learner_reads_validation_outputs_only(tmp_path):
    from repro.train import fit

    out = synthetic(4)[0]
    method = {"alphas": [0.1, 0.5, 0.9], "tnorm": "sq"}
    spec = study.THRESHOLD_TRAIN["smoke"]

    def learn(outputs, name):
        def run_fit(model, step, phase, batches):
            return fit(model, step, batches, spec, ckpt_path=tmp_path / f"{name}.pt", phase=phase,
                       device=torch.device("cpu"), seed=0)
        return study.learn_thresholds(outputs, method, run_fit, torch.device("cpu"), 64, 0)[0]

    ref = learn(out, "a")
    g = torch.Generator().manual_seed(5)
    garbage = {**out, "test_logits": torch.randn(out["test_logits"].shape, generator=g),
               "test_labels": torch.zeros_like(out["test_labels"])}
    assert learn(garbage, "b") == ref
    assert ref["alphas"] == [0.1, 0.5, 0.9] and len(ref["thresholds"][0]) == 3
    # larger alpha, lower thresholds (eq. 4's weighted mean of the two entropies)
    assert all(ref["thresholds"][0][i] > ref["thresholds"][2][i] for i in range(3))


# ---------------------------------------------------------------------------- d-gates, gated MSDNet


@pytest.mark.parametrize("isc", [False, True])
def test_gated_msdnet_keeps_the_last_exit_and_exits_like_its_stored_outputs(isc):
    from repro.models import create_model

    torch.manual_seed(0)
    msd = create_model("msdnet_cifar_5exit", num_classes=10, in_channels=1, **imta.MODEL_ARGS["smoke"], isc=isc).eval()
    gated = study.gated_net(msd).eval()
    x = torch.randn(12, 1, 32, 32)
    with torch.no_grad():
        for lin in gated.gates:
            lin.weight.normal_()
        ours, theirs = gated(x), msd(x)
    assert torch.allclose(ours[-1], theirs[-1], atol=1e-5)  # the MSDNet's own last classifier (with ISC's chain)
    feats = gated.pooled_features(x)
    assert all(torch.allclose(lin(f), o, atol=1e-5) for lin, f, o in zip(gated.gates, feats, ours[:-1]))
    # real early exit agrees with the cascade on the full outputs
    scores = torch.stack([o.amax(-1) for o in ours])
    t = [float(s.median()) for s in scores[:-1]]
    preds, exits = early_exit(gated, x, t + [-math.inf], "max_logit")
    want = cascade_exit(scores[:-1], t)
    assert torch.equal(exits, want)
    assert torch.equal(preds, torch.stack(ours).argmax(-1)[want, torch.arange(12)])


def _keys(runs) -> set[str]:
    return {c.key for c in (runs.values() if isinstance(runs, dict) else runs)}


def test_backbones_are_the_papers_runs():
    from repro.papers import glancenet

    for scale in ("smoke", "quick", "paper"):
        r = Request(scale=scale)
        runs = study.study_runs(r)
        table2 = _keys(imta.table2_runs(r))
        assert runs["msdnet"]["backbone"].key in table2 and runs["imta"]["backbone"].key in table2
        assert runs["glancenet"]["backbone"].key in _keys(glancenet.table1_runs(r))
        named = study.exits_runs(r)  # the artifact's runs by name: <backbone>, <backbone>/gates, .../thresholds
        assert set(named) == {f"{k}{role}" for k in study.BACKBONES for role in ("", "/gates", "/thresholds")}
        assert named["glancenet/thresholds"] == named["glancenet"]  # its thresholds were learned in training
        for key, rs in runs.items():
            assert rs["gates"].parent == rs["backbone"] and rs["gates"].paper == "study"
            if key != "glancenet":
                assert rs["thresholds"].parent == rs["backbone"] and rs["thresholds"].kind == "thresholds"


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(tmp_path_factory, "study", ["exits"])


@pytest.mark.slow
def test_smoke_writes_the_table_and_a_figure_per_backbone(smoke):
    tables, figures = smoke / "tables" / "smoke", smoke / "figures" / "smoke"
    for suffix in (".md", ".csv", ".tex"):
        assert (tables / f"study_exits{suffix}").stat().st_size > 0
    for key in study.BACKBONES:
        for suffix in (".png", ".pdf", ".csv"):
            assert (figures / f"study_exits_{key}{suffix}").stat().st_size > 0
        data = read_table_csv(figures / f"study_exits_{key}.csv")
        assert set(data["policy"]) == set(study.POLICIES)
    df = read_table_csv(tables / "study_exits.csv")
    assert len(df) == len(study.BACKBONES) * len(study.POLICIES)
    assert not [c for c in df.columns if c.endswith((" paper", " Δ"))]  # no reference numbers: ours only
    cols = [f"acc_{study._pct(f)}" for f in study.FRACTIONS]
    assert set(cols + [c + " ±" for c in cols] + ["speedup_b1_50pct", "speedup_batched_50pct"]) <= set(df.columns)
    md = (tables / "study_exits.md").read_text()
    assert "smoke scale" in md and "ranking, MSDNet" in md and "no verdict" in md
    # the core's header: every backbone's model and counter; a claim per neighbouring pair
    assert "- model: " in md and all(f"{k}: " in md for k in study.BACKBONES) and "MSDNet's counter" in md
    assert "MSDNet, 25 % cost: " in md and "(points): ours " in md
    for key in study.BACKBONES:
        head = (figures / f"study_exits_{key}.csv").read_text().split("\nbackbone,")[0]
        assert "# model: " in head and "# axes 1: x = average cost per image" in head
    runs = smoke / "runs"
    for key in study.BACKBONES:
        rows = df[df["policy"].str.startswith(f"{key}: ")].set_index("policy")
        # the oracle bounds every policy that uses the network's own exits
        for p in ("confidence", "entropy", "learned", "max_logit", "margin"):
            for c in cols:
                mine, bound = rows.loc[f"{key}: {study.LABELS[p]}", c], rows.loc[f"{key}: {study.LABELS['oracle']}", c]
                if not (pd.isna(mine) or pd.isna(bound)):
                    assert mine <= bound + 1e-6, (key, p, c)
        # no early exit is the backbone's last exit, exactly
        cfg = study.exits_runs(Request(scale="smoke"))[key]
        res = json.loads((runs / cfg.paper / cfg.dirname / "results.json").read_text())
        assert rows.loc[f"{key}: {study.LABELS['none']}", "acc_100pct"] == pytest.approx(res["test_acc"][-1], abs=1e-6)
        for p in study.REAL:
            assert rows.loc[f"{key}: {study.LABELS[p]}", "speedup_b1_50pct"] > 0
    # the extra runs are the study's, children of the papers' runs
    extra = sorted(p.name for p in (runs / "study").iterdir())
    assert len(extra) == 5 and all((runs / "study" / d / "results.json").exists() for d in extra)
    for d in extra:
        cfg = json.loads((runs / "study" / d / "config.json").read_text())
        assert cfg["parent"]["paper"] in ("imta", "glancenet")

