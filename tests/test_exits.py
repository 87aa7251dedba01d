"""Early-exit evaluation: the budgeted-batch protocol against a per-sample reference; cascades of gates
(Algorithm 1 of the d-gate paper) and the threshold search against brute force."""
import itertools
import math

import numpy as np

import pytest
import torch

from repro.exits import (budget_distributions, correct_at_cost, budgeted_sweep, early_exit, evaluate_exits, exit_index,
                         fit_thresholds, fixed_thresholds, neg_entropy, confidence, accuracy_with_spread,
                         cascade_eval, cascade_exit, cascade_grid, cheapest_reaching, threshold_grid, tune_thresholds)
from repro.models.base import MultiExitNet


def reference_thresholds(scores, probs):
    """The protocol of ANCHORS.md, one sample at a time (MSDNet's dynamic evaluation)."""
    k, n = len(scores), len(scores[0])
    t = [math.inf] * k
    filtered = [False] * n
    for e in range(k - 1):
        want = math.floor(n * float(probs[e]))
        order = sorted(range(n), key=lambda i: -scores[e][i])
        count = 0
        for i in order:
            if not filtered[i]:
                count += 1
                if count == want:
                    t[e] = scores[e][i]
                    break
        for i in range(n):
            if scores[e][i] >= t[e]:
                filtered[i] = True
    t[-1] = -math.inf
    return t


def reference_exit(scores, t):
    out = []
    for i in range(len(scores[0])):
        for e in range(len(scores)):
            if scores[e][i] >= t[e] or e == len(scores) - 1:
                out.append(e)
                break
    return out


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 300, 7, generator=g) * torch.tensor([1.0, 1.5, 2.0, 3.0])[:, None, None]


def test_budget_distribution_is_geometric():
    p = budget_distributions(3, [10, 40])
    # q = 0.5: weights 0.5, 0.25, 0.125 -> 4/7, 2/7, 1/7; q = 2: 2, 4, 8 -> 1/7, 2/7, 4/7
    assert torch.allclose(p[0], torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64))
    assert torch.allclose(p[1], torch.tensor([1 / 7, 2 / 7, 4 / 7], dtype=torch.float64))


def test_thresholds_match_per_sample_reference(logits):
    scores = confidence(logits)
    for probs in budget_distributions(4, range(1, 40, 3)):
        ours = fit_thresholds(scores, probs)
        ref = reference_thresholds(scores.double().tolist(), probs)
        assert ours.tolist() == ref
        assert exit_index(scores, ours).tolist() == reference_exit(scores.double().tolist(), ref)


def test_validation_exit_fractions_follow_the_budget(logits):
    scores = confidence(logits)  # continuous scores: no ties
    n = scores.shape[1]
    for probs in budget_distributions(4, [5, 20, 35]):
        t = fit_thresholds(scores, probs)
        counts = torch.bincount(exit_index(scores, t), minlength=4)
        for k in range(3):
            assert counts[k] == math.floor(n * float(probs[k])) or counts[k] == 0


def test_too_few_left_means_nobody_exits():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1]])
    t = fit_thresholds(scores, torch.tensor([0.75, 0.5, 0.0], dtype=torch.float64))
    # exit 1 takes 3 samples; exit 2 wants floor(4*0.5) = 2 but only 1 is left: nobody exits there
    assert t[0] == pytest.approx(0.7) and t[1] == math.inf and t[2] == -math.inf


def test_expected_cost_and_accuracy_by_hand():
    logits = torch.zeros(2, 4, 3)
    logits[0, :, 0] = torch.tensor([5.0, 5.0, 0.0, 0.0])  # exit 1 sure about samples 0, 1 (class 0)
    logits[1, :, 1] = 1.0                                  # exit 2 says class 1 for everyone
    labels = torch.tensor([0, 1, 1, 1])
    r = evaluate_exits(torch.tensor([0, 0, 1, 1]), logits, labels, [10.0, 30.0])
    assert r["cost"] == pytest.approx(20.0)            # (2*10 + 2*30) / 4
    assert r["acc"] == pytest.approx(75.0)              # sample 1 wrong at exit 1
    assert r["fractions"] == [0.5, 0.5]


def test_sweep_uses_validation_only(logits):
    labels = torch.zeros(300, dtype=torch.long)
    a = budgeted_sweep(logits, labels, logits, labels, [1, 2, 3, 4])
    b = budgeted_sweep(logits, labels, logits * 0 + logits[:, torch.randperm(300)], labels, [1, 2, 3, 4])
    assert a["thresholds"].tolist() == b["thresholds"].tolist()  # test data changes nothing fitted
    assert list(a["budget"]) == list(range(1, 40))
    assert (a["cost"] >= 1).all() and (a["cost"] <= 4).all()


def test_entropy_score_by_hand():
    z = torch.log(torch.tensor([[0.5, 0.5], [1.0, 1e-30]]))
    assert neg_entropy(z).tolist() == pytest.approx([-math.log(2), 0.0], abs=1e-6)


def test_fixed_thresholds_last_exit_takes_the_rest():
    logits = torch.zeros(3, 2, 2)
    logits[:, :, 0] = 1.0
    r = fixed_thresholds(logits, torch.tensor([0, 0]), [math.inf, math.inf], [1, 2, 3], "confidence")
    assert r["fractions"] == [0.0, 0.0, 1.0] and r["cost"] == 3


class ToyExits(MultiExitNet):
    """Three stages of a linear map; head i is a fixed linear classifier. Counts rows computed."""

    def __init__(self):
        super().__init__()
        self.num_exits = 3
        g = torch.Generator().manual_seed(1)
        self.w = [torch.randn(8, 8, generator=g) for _ in range(3)]
        self.c = [torch.randn(8, 5, generator=g) * 3 for _ in range(3)]
        self.rows = [0, 0, 0]

    def stage(self, i, state):
        self.rows[i] += state.shape[0]
        return torch.tanh(state @ self.w[i])

    def head(self, i, state, prev):
        return state @ self.c[i]


def test_real_early_exit_agrees_with_stored_logits_and_skips_work():
    net = ToyExits()
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(2))
    logits = torch.stack(net(x))
    t = torch.tensor([0.9, 0.7, -math.inf], dtype=torch.float64)
    want = exit_index(confidence(logits), t)
    net.rows = [0, 0, 0]
    preds, exits = early_exit(net, x, t.tolist(), "confidence")
    assert exits.tolist() == want.tolist()
    assert preds.tolist() == logits.argmax(-1)[want, torch.arange(200)].tolist()
    # later stages only saw the samples that had not exited
    assert net.rows == [200, int((want >= 1).sum()), int((want >= 2).sum())]
    for i in range(5):  # batch size 1 gives the same answers
        p1, e1 = early_exit(net, x[i:i + 1], t.tolist(), "confidence")
        assert (p1.item(), e1.item()) == (preds[i].item(), exits[i].item())


def test_t_halfwidth_by_hand():
    from repro.exits import mean_and_spread, t_halfwidth

    assert t_halfwidth([1.0, 2.0, 3.0]) == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)  # s = 1, n = 3
    assert t_halfwidth([80.0, 90.0]) == pytest.approx(12.706 * math.sqrt(50) / math.sqrt(2), rel=1e-4)
    assert math.isnan(t_halfwidth([5.0]))  # one seed is not a spread
    assert mean_and_spread([1.0, 2.0, 3.0]) == pytest.approx((2.0, 4.303 / math.sqrt(3)), rel=1e-4)


def test_spread_is_a_t_interval_over_seeds_or_bootstrap_for_one():
    labels = torch.zeros(100, dtype=torch.long)
    a = torch.zeros(1, 100, 2); a[0, :80, 0] = 1; a[0, 80:, 1] = 1   # 80 % right
    b = torch.zeros(1, 100, 2); b[0, :90, 0] = 1; b[0, 90:, 1] = 1   # 90 % right
    mean, spread = accuracy_with_spread([(a, labels), (b, labels)])
    # two seeds: t(0.975, 1) = 12.706 times the standard error sqrt(50) / sqrt(2)
    assert mean == pytest.approx([85.0]) and spread == pytest.approx([12.706 * math.sqrt(50) / math.sqrt(2)], rel=1e-4)
    mean1, half = accuracy_with_spread([(a, labels)])
    # binomial standard error sqrt(.8*.2/100) = 4 %, so the 95 % half-width is about 7.8
    assert mean1 == pytest.approx([80.0]) and 6.0 < half[0] < 9.5


def test_interpolated_correctness_averages_to_the_interpolated_accuracy():
    g = torch.Generator().manual_seed(0)
    xs = np.array([3.0, 1.0, 2.0, 2.0, 4.0])  # unsorted, with a tie
    ok = torch.rand(5, 50, generator=g) < 0.7
    accs = ok.double().mean(1).numpy() * 100
    order = np.argsort(xs, kind="stable")
    for x in (1.0, 1.7, 2.0, 3.5, 4.0):
        (soft,) = correct_at_cost([(xs, ok)], x)
        assert float(soft.mean() * 100) == pytest.approx(np.interp(x, xs[order], accs[order]))


def test_budgeted_correct_is_the_sweeps_test_curve_sample_by_sample():
    """Its per-budget mean is budgeted_sweep's test top-1: the same thresholds send each sample to the same exit."""
    from repro.exits import budgeted_correct, budgeted_sweep

    g = torch.Generator().manual_seed(1)
    val, test = torch.randn(4, 300, 5, generator=g), torch.randn(4, 200, 5, generator=g)
    yv, yt = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (200,), generator=g)
    sweep = budgeted_sweep(val, yv, test, yt, [1.0, 2.0, 3.0, 4.0], "confidence", budgets=range(1, 10))
    xs, ok = budgeted_correct(sweep, test, yt, "confidence")
    assert ok.shape == (9, 200)
    assert np.allclose(ok.double().mean(1).numpy() * 100, sweep["acc"].to_numpy())
    assert np.allclose(xs, sweep["cost"].to_numpy())


# --------------------------------------------------------------------------- cascades of gates


def test_algorithm1_on_fixed_distances():
    # max distances of 3 gates for 5 samples; thresholds (1.0, 0.5, 2.0)
    scores = torch.tensor([[1.2, 0.3, 0.9, -1.0, 0.99],
                           [0.1, 0.6, 0.7, 0.2, 0.4],
                           [3.0, 0.0, 0.1, 2.0, 1.0]])
    exits = cascade_exit(scores, [1.0, 0.5, 2.0])
    assert exits.tolist() == [0, 1, 1, 2, 3]  # >= is an exit; 3 = the backbone's classifier
    correct = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    ev = cascade_eval(scores, correct, [1.0, 2.0, 3.0, 4.0], [1.0, 0.5, 2.0])
    assert ev["acc"] == pytest.approx(100 * 4 / 5)  # sample 3 exits at gate 2 where it is wrong
    assert ev["cost"] == pytest.approx((1 + 2 + 2 + 3 + 4) / 5)
    assert ev["fractions"] == pytest.approx([20.0, 40.0, 20.0, 20.0])
    # +inf switches a gate off
    assert cascade_exit(scores, [math.inf] * 3).tolist() == [3] * 5


def _synthetic_cascade(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(3, n, generator=g) + torch.tensor([[0.0], [0.4], [0.8]])
    # later exits are more often right, and a confident gate is more often right
    p = torch.sigmoid(scores * 1.5 + torch.tensor([[-0.5], [0.2], [0.9]]))
    correct = torch.cat([torch.rand(3, n, generator=g) < p, torch.rand(1, n, generator=g) < 0.93])
    return scores, correct, [1.0, 2.2, 3.1, 4.0]


def test_cascade_grid_matches_every_combination():
    scores, correct, costs = _synthetic_cascade()
    grids = [torch.tensor([-0.5, 0.3, 1.0, math.inf]), torch.tensor([0.0, 0.8, math.inf]),
             torch.tensor([-1.0, 0.5, 1.5, 2.0, math.inf])]
    g = cascade_grid(scores, correct, costs, grids)
    for idx in itertools.product(*(range(len(x)) for x in grids)):
        t = [float(grids[d][j]) for d, j in enumerate(idx)]
        ev = cascade_eval(scores, correct, costs, t)
        assert g["acc"][idx].item() == pytest.approx(ev["acc"])
        assert g["cost"][idx].item() == pytest.approx(ev["cost"])


@pytest.mark.parametrize("target", [75.0, 85.0, 90.0])
def test_tuning_finds_the_cheapest_triple(target):
    scores, correct, costs = _synthetic_cascade(seed=3)
    grids = [threshold_grid(s, 12) for s in scores]
    best = None
    for t in itertools.product(*(g.tolist() for g in grids)):  # brute force, one triple at a time
        ev = cascade_eval(scores, correct, costs, t)
        if ev["acc"] >= target - 1e-9 and (best is None or ev["cost"] < best[1] - 1e-12):
            best = (t, ev["cost"], ev["acc"])
    got = tune_thresholds(scores, correct, costs, target, grids=grids)
    assert best is not None
    assert got["cost"] == pytest.approx(best[1])
    assert got["acc"] >= target
    ev = cascade_eval(scores, correct, costs, got["thresholds"])
    assert ev["cost"] == pytest.approx(got["cost"]) and ev["acc"] == pytest.approx(got["acc"])
    greedy = tune_thresholds(scores, correct, costs, target, grids=grids, method="greedy")
    assert greedy["acc"] >= target and greedy["cost"] >= got["cost"] - 1e-9


def test_unreachable_target_switches_every_gate_off():
    scores, correct, costs = _synthetic_cascade()
    got = tune_thresholds(scores, correct, costs, 101.0, points=8)
    assert got["thresholds"] == [math.inf] * 3 and got["cost"] == pytest.approx(costs[-1])


@pytest.mark.parametrize("gates", [2, 3, 4])
def test_cheapest_reaching_picks_what_tune_thresholds_picks(gates):
    g = torch.Generator().manual_seed(gates)
    n = 400
    scores = torch.randn(gates, n, generator=g)
    correct = torch.rand(gates + 1, n, generator=g) < torch.linspace(0.4, 0.9, gates + 1)[:, None]
    costs = [float(i + 1) for i in range(gates + 1)]
    points = max(8, min(40, int(4e5 ** (1 / gates))))  # the study's grid_points
    grids = [threshold_grid(s, points) for s in scores]
    grid = cascade_grid(scores, correct, costs, grids)
    targets = [-1.0, 40.0, 55.0, 62.5, 70.0, float(grid["acc"].max()), 101.0]
    for t, mine in zip(targets, cheapest_reaching(grid, grids, targets)):
        theirs = tune_thresholds(scores, correct, costs, t, points, "grid", grids)
        assert mine == theirs, t
