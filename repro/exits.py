"""Early-exit evaluation shared by every multi-exit paper.

Everything here works on per-exit outputs collected once per run (``logits``: exits x
samples x classes) and is vectorised over samples:

- scores: how sure exit k is about a sample (max softmax, negative entropy, max logit);
- budgeted batch classification (MSDNet / IMTA protocol): for a budget, exit shares
  p_k ∝ q^k; thresholds fitted on the held-out validation split, applied to test;
  expected cost = Σ_k fraction_k × cumulative cost_k;
- fixed-threshold policies (GlanceNets' learned entropy thresholds, d-gate distances);
- cascades of gates: every threshold combination's accuracy and cost at once
  (:func:`cascade_grid`), the cheapest one reaching an accuracy (:func:`tune_thresholds`);
- spreads: a bootstrap interval over test samples, a t-interval over seeds;
- real early exit: an inference path that stops computing for samples that exit,
  compacting the batch between stages, and its timing.  docs/performance.md times it.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from repro.config import ConfigError
from repro.models.base import MultiExitNet
from repro.nn import threads
from repro.timing import time_call  # measure_speedup; the papers' timing artifacts import it from here too

Score = Callable[[torch.Tensor], torch.Tensor]


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability (MSDNet, IMTA)."""
    return logits.float().softmax(-1).amax(-1)


def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Minus the prediction entropy in nats (GlanceNets exit when entropy < threshold)."""
    logp = logits.float().log_softmax(-1)
    return (logp.exp() * logp).sum(-1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """The largest raw output (decision gates: d = Wx - b, exit when max d >= t)."""
    return logits.float().amax(-1)


SCORES: dict[str, Score] = {"confidence": confidence, "entropy": neg_entropy, "max_logit": max_logit}


@torch.no_grad()
def collect_logits(model: torch.nn.Module, batches, device: torch.device | None = None) -> torch.Tensor:
    """Per-exit logits over a whole split: exits x samples x classes (float32, CPU)."""
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    for x, _ in batches:
        out = model(x)
        out = torch.stack(list(out)) if isinstance(out, (list, tuple)) else out.unsqueeze(0)
        chunks.append(out.float().cpu())
    model.train(was_training)
    return torch.cat(chunks, dim=1)


@torch.no_grad()
def collect_compact(net: nn.Module, batches) -> dict[str, torch.Tensor]:
    """Per exit and sample (exits x N, CPU): the max output (a gate's max distance), the max softmax
    and the argmax; what a run stores in place of the logits when only these are needed."""
    was = net.training
    net.eval()
    scores, conf, preds = [], [], []
    for x, _ in batches:
        out = net(x)
        out = torch.stack(list(out)).float() if isinstance(out, (list, tuple)) else out.float().unsqueeze(0)
        scores.append(out.amax(-1).cpu())
        conf.append(out.softmax(-1).amax(-1).cpu())
        preds.append(out.argmax(-1).cpu())
    net.train(was)
    return {"scores": torch.cat(scores, 1), "conf": torch.cat(conf, 1), "preds": torch.cat(preds, 1)}


@torch.no_grad()
def features_of(net: nn.Module, batches) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The input of every gate over ``batches`` (``net.pooled_features(x)``, one matrix per gate) and
    the labels: what gates trained on a frozen network learn from (:class:`repro.data.FeatureBatches`)."""
    chunks, ys = [], []
    for x, y in batches:
        chunks.append(net.pooled_features(x))
        ys.append(y)
    return [torch.cat(c) for c in zip(*chunks)], torch.cat(ys)


def per_exit_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 (%) of every exit: a vector of length exits."""
    return (logits.argmax(-1) == labels).double().mean(1) * 100


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Top-k (%) of single-output logits: N x C, or exits x N x C as :func:`collect_logits`
    returns them (then the last exit's); k is capped at the number of classes."""
    if logits.dim() == 3:
        logits = logits[-1]
    k = min(k, logits.shape[-1])
    hit = (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1)
    return float(hit.double().mean() * 100)


# --------------------------------------------------------------------------- budgeted batch


def budget_distributions(num_exits: int, budgets: Sequence[int] = range(1, 40)) -> torch.Tensor:
    """Geometric exit distributions p_k ∝ q^k (k = 1..K), q = budget/20; one row per budget."""
    q = torch.tensor(list(budgets), dtype=torch.float64) / 20
    p = q[:, None] ** torch.arange(1, num_exits + 1, dtype=torch.float64)
    return p / p.sum(1, keepdim=True)


def fit_thresholds(val_scores: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Thresholds for one exit distribution, fitted on validation scores (exits x samples).

    For exit k, among the samples no earlier exit took, the threshold is the score of the
    floor(n * p_k)-th most confident one (nobody exits at k if too few remain, or if
    that count is zero); the last exit takes everyone left (threshold -inf).
    """
    return fit_thresholds_batch(val_scores, torch.as_tensor(probs, dtype=torch.float64)[None])[0]


def fit_thresholds_batch(val_scores: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """:func:`fit_thresholds` for many exit distributions at once: ``probs`` budgets x exits
    -> thresholds budgets x exits (float64).

    Vectorised over budgets and samples; the only loop is over exits (each exit's walk
    depends on who the earlier ones took).  Exit k's scores are sorted once; for every
    budget the running count of not-yet-exited samples along that order (a cumsum) gives
    the position of the floor(n * p_k)-th one by binary search.
    """
    s = val_scores.double()
    num_exits, n = s.shape
    probs = torch.as_tensor(probs, dtype=torch.float64)
    b = probs.shape[0]
    want = (n * probs).floor().long()  # == math.floor(n * float(p)): the same IEEE product
    thresholds = torch.full((b, num_exits), math.inf, dtype=torch.float64)
    thresholds[:, -1] = -math.inf
    exited = torch.zeros(b, n, dtype=torch.bool)
    for k in range(num_exits - 1):
        sk = s[k]
        order = sk.argsort(descending=True)
        left = (~exited[:, order]).cumsum(1)  # b x n: not-yet-exited samples so far, in that order
        w = want[:, k]
        ok = (w >= 1) & (w <= left[:, -1])
        pos = torch.searchsorted(left, w.clamp(min=1)[:, None]).squeeze(1).clamp(max=n - 1)
        thresholds[:, k] = torch.where(ok, sk[order][pos], torch.full_like(sk[:1], math.inf))
        exited |= sk[None] >= thresholds[:, k, None]
    return thresholds


def exit_index(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """The first exit whose score reaches its threshold, for every sample (the last takes the rest)."""
    return exit_index_batch(scores, torch.as_tensor(thresholds)[None])[0]


def exit_index_batch(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """:func:`exit_index` for budgets x exits thresholds: budgets x samples exit indices."""
    s = scores.double()
    t = thresholds.double()
    num_exits = s.shape[0]
    idx = torch.full((t.shape[0], s.shape[1]), num_exits - 1, dtype=torch.long)
    for k in range(num_exits - 2, -1, -1):  # the earliest passing exit wins: overwrite backwards
        idx.masked_fill_(s[k][None] >= t[:, k, None], k)
    return idx


def evaluate_exits(exit_idx: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                   costs: Sequence[float]) -> dict:
    """Accuracy (%), expected cost and exit fractions of one exit assignment."""
    n = labels.numel()
    preds = logits.argmax(-1)[exit_idx, torch.arange(n)]
    counts = torch.bincount(exit_idx, minlength=logits.shape[0]).double()
    cost = float((counts * torch.as_tensor(costs, dtype=torch.float64)).sum() / n)
    return {"acc": float((preds == labels).double().mean() * 100), "cost": cost,
            "fractions": (counts / n).tolist(), "correct": preds == labels}


def _evaluate_batch(scores: torch.Tensor, thresholds: torch.Tensor, correct: torch.Tensor,
                    costs: Sequence[float]) -> dict:
    """Accuracy (%), expected cost and exit fractions for budgets x exits ``thresholds``,
    given ``correct`` (exits x samples: is exit k right about sample i).

    Works on budgets x samples boolean masks (who exits at k = passes k and no earlier
    exit), 4x faster than building the exit indices and gathering with them.
    """
    s = scores.double()
    num_exits, n = s.shape
    b = thresholds.shape[0]
    taken = torch.zeros(b, n, dtype=torch.bool)
    counts = torch.empty(b, num_exits, dtype=torch.float64)
    hits = torch.empty(b, num_exits, dtype=torch.float64)
    for k in range(num_exits):
        here = (s[k][None] >= thresholds[:, k, None]) if k < num_exits - 1 else torch.ones(b, n, dtype=torch.bool)
        here &= ~taken
        counts[:, k] = here.sum(1)
        hits[:, k] = (here & correct[k]).sum(1)
        taken |= here
    cost = (counts * torch.as_tensor(costs, dtype=torch.float64)).sum(1) / n
    return {"acc": hits.sum(1) / n * 100, "cost": cost, "fractions": counts / n, "counts": counts, "hits": hits}


def budgeted_sweep(val_logits: torch.Tensor, val_labels: torch.Tensor, test_logits: torch.Tensor,
                   test_labels: torch.Tensor, costs: Sequence[float], score: str | Score = "confidence",
                   budgets: Sequence[int] = range(1, 40)) -> pd.DataFrame:
    """Budgeted batch classification: one row per budget (thresholds from validation only).

    All budgets at once: scores and predictions are computed once per split, thresholds
    for every budget by :func:`fit_thresholds_batch`, exits and accuracies as
    budgets x samples tensors.
    """
    fn = SCORES[score] if isinstance(score, str) else score
    budgets = list(budgets)
    # small tensors (budgets x samples): on a shared machine two OpenMP threads fighting for
    # two busy cores made the sweep 20x slower (1.1 s instead of 0.06 s)
    with threads(1):
        val_s, test_s = fn(val_logits), fn(test_logits)
        t = fit_thresholds_batch(val_s, budget_distributions(val_logits.shape[0], budgets))
        v = _evaluate_batch(val_s, t, val_logits.argmax(-1) == val_labels, costs)
        r = _evaluate_batch(test_s, t, test_logits.argmax(-1) == test_labels, costs)
    return pd.DataFrame({"budget": budgets, "thresholds": t.tolist(), "val_acc": v["acc"].tolist(),
                         "val_cost": v["cost"].tolist(), "val_fractions": v["fractions"].tolist(),
                         "acc": r["acc"].tolist(), "cost": r["cost"].tolist(),
                         "fractions": r["fractions"].tolist()})


def budgeted_correct(sweep: pd.DataFrame, test_logits: torch.Tensor, test_labels: torch.Tensor,
                     score: str | Score = "confidence") -> tuple[np.ndarray, torch.Tensor]:
    """A :func:`budgeted_sweep`'s test curve in the form :func:`correct_at_cost` interpolates: the
    average cost of each budget and, budgets x samples, whether each test sample is right at the
    exit that budget's thresholds send it to."""
    fn = SCORES[score] if isinstance(score, str) else score
    with threads(1):
        idx = exit_index_batch(fn(test_logits), torch.tensor(sweep["thresholds"].tolist(), dtype=torch.float64))
        right = test_logits.argmax(-1) == test_labels  # exits x samples
    return sweep["cost"].to_numpy(dtype=float), right.gather(0, idx)


def correct_at_cost(per_seed: Sequence[tuple[np.ndarray, torch.Tensor]], x: float) -> list[torch.Tensor]:
    """Per seed, each test sample's correctness on a curve linearly interpolated at cost ``x``: the
    curve is (costs of its points, points x samples correctness); np.interp's weights of the points
    applied to their per-sample correctness, so its mean is the interpolated top-1, and two curves'
    gap pairs the same samples (:func:`gap_with_spread`)."""
    out = []
    for xs, ok in per_seed:
        order = np.argsort(xs, kind="stable")
        w = np.array([np.interp(x, xs[order], e) for e in np.eye(len(xs))])
        out.append(torch.as_tensor(w) @ ok[order].double())
    return out


def fixed_thresholds(logits: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float],
                     costs: Sequence[float], score: str | Score) -> dict:
    """Evaluate one set of thresholds (last exit takes the rest) on stored logits."""
    fn = SCORES[score] if isinstance(score, str) else score
    t = torch.tensor(list(thresholds) + [-math.inf] * (logits.shape[0] - len(thresholds)), dtype=torch.float64)
    t[-1] = -math.inf
    return evaluate_exits(exit_index(fn(logits), t), logits, labels, costs)


# --------------------------------------------------------------------------- cascades of gates


def cascade_exit(scores: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """A cascade of gates (d-gates' Algorithm 1): the first gate i with score_i >= t_i, else k (the
    final classifier).  ``scores``: gates x N."""
    t = torch.as_tensor(list(thresholds), dtype=torch.float64)[:, None]
    passes = torch.cat([scores.double() >= t, torch.ones(1, scores.shape[1], dtype=torch.bool)])
    return passes.to(torch.uint8).argmax(0)


def cascade_eval(scores: torch.Tensor, correct: torch.Tensor, costs: Sequence[float],
                 thresholds: Sequence[float]) -> dict:
    """Accuracy (%), expected cost and exit fractions of fixed thresholds.

    ``scores``: gates x N (the exit score of each gate); ``correct``: (gates+1) x N
    (is exit i's prediction right); ``costs``: cumulative cost of each exit.
    """
    n = scores.shape[1]
    e = cascade_exit(scores, thresholds)
    ok = correct[e, torch.arange(n)]
    c = torch.as_tensor(list(costs), dtype=torch.float64)[e]
    frac = torch.bincount(e, minlength=scores.shape[0] + 1).double() / n * 100
    return {"acc": float(ok.double().mean() * 100), "cost": float(c.mean()), "fractions": frac.tolist(),
            "correct": ok, "exit": e, "sample_cost": c}


def threshold_grid(scores: torch.Tensor, points: int) -> torch.Tensor:
    """Candidate thresholds of one gate: ``points`` quantiles of its scores, then +inf (never exit)."""
    q = torch.quantile(scores.double(), torch.linspace(0, 1, max(points, 2), dtype=torch.float64))
    return torch.cat([torch.unique(q), torch.tensor([math.inf], dtype=torch.float64)])


def cascade_grid(scores: torch.Tensor, correct: torch.Tensor, costs: Sequence[float],
                 grids: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accuracy (%) and expected cost of *every* threshold combination of a k-gate cascade.

    ``grids[d]`` holds gate d's candidate thresholds (ascending).  With b_d = #{grid
    values <= score}, a sample passes gate d at grid index j iff j < b_d, so it exits
    at gate i iff b_d <= j_d for d < i and b_i > j_i.  Sums over samples are read off
    histograms of (b_0..b_i) with prefix sums along d < i and a suffix sum along i:
    O(N + Π G_d) for all combinations, no loop over samples or combinations.
    Returns tensors of shape (G_0, ..., G_{k-1}).
    """
    k, n = scores.shape
    sizes = [len(g) for g in grids]
    b = [torch.searchsorted(g.double().contiguous(), s.double().contiguous(), right=True)
         for g, s in zip(grids, scores)]
    acc = torch.zeros(sizes, dtype=torch.float64)
    cost = torch.zeros(sizes, dtype=torch.float64)
    for i in range(k + 1):
        dims = min(i + 1, k)
        shape = [sizes[d] + 1 for d in range(dims)]
        flat = torch.zeros(n, dtype=torch.long)
        for d in range(dims):
            flat = flat * shape[d] + b[d]
        total = int(np.prod(shape))
        sums = []
        for w in (correct[i].double(), torch.ones(n, dtype=torch.float64)):
            h = torch.bincount(flat, weights=w, minlength=total).view(shape)
            for d in range(dims):
                if d < i or i == k:  # gates before i (or all, for the final exit): failed, b_d <= j_d
                    h = h.cumsum(d).narrow(d, 0, sizes[d])
                else:  # gate i itself: passed, b_i > j_i
                    h = h.flip(d).cumsum(d).flip(d).narrow(d, 1, sizes[d])
            sums.append(h.reshape(h.shape + (1,) * (k - dims)))
        acc = acc + sums[0]
        cost = cost + sums[1] * float(costs[i])
    return {"acc": acc * 100 / n, "cost": cost / n}


def cheapest_reaching(grid: dict, grids: Sequence[torch.Tensor], targets: Sequence[float]) -> list[dict]:
    """For each accuracy target (%), the threshold combination of a :func:`cascade_grid` that
    reaches it at the lowest expected cost (ties: the more accurate), from one grid evaluation
    for all targets; every gate off (+inf) when nothing reaches the target."""
    acc, cost = grid["acc"].flatten(), grid["cost"].flatten()
    shape = tuple(grid["acc"].shape)
    out = []
    for target in targets:
        ok = acc >= target - 1e-9
        if not bool(ok.any()):
            idx = tuple(len(g) - 1 for g in grids)
        else:
            c = torch.where(ok, cost, torch.full_like(cost, math.inf))
            best = c.min()
            cand = ok & (c <= best + 1e-9 * max(1.0, abs(float(best))))
            flat = int(torch.where(cand, acc, torch.full_like(acc, -1.0)).argmax())
            idx = tuple(int(v) for v in np.unravel_index(flat, shape))
        out.append({"thresholds": [float(grids[d][j]) for d, j in enumerate(idx)], "acc": float(grid["acc"][idx]),
                    "cost": float(grid["cost"][idx])})
    return out


def tune_thresholds(scores: torch.Tensor, correct: torch.Tensor, costs: Sequence[float], target: float,
                    points: int = 40, method: str = "grid", grids: Sequence[torch.Tensor] | None = None) -> dict:
    """Thresholds reaching ``target`` accuracy (%) at the lowest expected cost, on the data given
    (validation).  ``grid``: the cheapest combination of the whole grid (ties: the more
    accurate; :func:`cheapest_reaching`); ``greedy``: gate by gate, t_i the cheapest with
    t_1..t_{i-1} fixed and later gates off.  If nothing reaches the target, every gate is off (+inf)."""
    if method not in ("grid", "greedy"):
        raise ConfigError(f"--set tune={method}: choose one of: grid, greedy")
    grids = list(grids) if grids is not None else [threshold_grid(s, points) for s in scores]
    g = cascade_grid(scores, correct, costs, grids)
    if method == "grid":
        return cheapest_reaching(g, grids, [target])[0]
    ok = g["acc"] >= target - 1e-9
    idx = [len(x) - 1 for x in grids]
    if bool(ok[tuple(idx)]):
        for i in range(len(grids)):
            sl = list(idx)
            sl[i] = slice(None)
            line_ok, line_cost = ok[tuple(sl)], g["cost"][tuple(sl)]
            c = torch.where(line_ok, line_cost, torch.full_like(line_cost, math.inf))
            idx[i] = int(c.argmin())
    idx = tuple(idx)
    return {"thresholds": [float(grids[d][j]) for d, j in enumerate(idx)], "acc": float(g["acc"][idx]),
            "cost": float(g["cost"][idx])}


# --------------------------------------------------------------------------- spread


def bootstrap_ci(correct: torch.Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (%) of the accuracy over test samples."""
    c = correct.double().flatten()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, c.numel(), (n_boot, c.numel()), generator=g)
    means = c[idx].mean(1) * 100
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)


# Student's t quantile t_{0.975, df} for df = 1..30 (beyond: 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_halfwidth(values: Sequence[float]) -> float:
    """Half-width of the 95 % t-interval of the mean over seeds: t_{0.975, n-1} · s / √n, with
    s the sample standard deviation (n − 1); NaN for one value (a seed is not a spread)."""
    a = np.asarray(values, dtype=float)
    if a.size < 2:
        return math.nan
    t = _T975[a.size - 2] if a.size - 1 <= len(_T975) else 1.96
    return float(t * a.std(ddof=1) / math.sqrt(a.size))


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """The one rule for a spread over seeds: the mean and the half-width of its 95 % t-interval
    (:func:`t_halfwidth`; with two seeds t = 12.7, so two seeds never read as certainty).
    One seed: the value and NaN (the callers then use a paired bootstrap over test samples)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), t_halfwidth(a)


# --------------------------------------------------------------------------- real early exit


def _rows(state, index: torch.Tensor):
    """Keep the samples ``index`` of a state (tensor or list of tensors), keeping each
    tensor's memory layout: a channels_last tensor is gathered as the N x H x W x C array it
    is (whole rows copied), where plain ``index_select`` would hand the next convolutions an
    NCHW tensor to reorder."""
    if not isinstance(state, torch.Tensor):
        return [_rows(s, index) for s in state]
    if state.dim() == 4 and not state.is_contiguous() and state.is_contiguous(memory_format=torch.channels_last):
        return state.permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2)
    return state.index_select(0, index)


@torch.no_grad()
def early_exit(net: MultiExitNet, x: torch.Tensor, thresholds: Sequence[float], score: str | Score
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Classify ``x`` exit by exit, computing later stages only for samples still undecided.

    Returns predictions and the exit (0-based) of every sample.  Scores are compared with
    the thresholds in float64, as :func:`exit_index` does.  After each exit the batch is
    compacted to the samples still undecided (keeping the tensors' memory layout).  A batch
    of one takes a path without any indexing: one host-side comparison per exit.
    """
    fn = SCORES[score] if isinstance(score, str) else score
    n, k = x.shape[0], net.num_exits
    thresholds = [float(t) for t in thresholds]
    state, prev = x, None
    if n == 1:
        for i in range(k):
            state = net.stage(i, state)
            logits = net.head(i, state, prev)
            if i == k - 1 or float(fn(logits)) >= thresholds[i]:
                return logits.argmax(1), torch.full((1,), i, dtype=torch.long, device=x.device)
            prev = logits
    preds = torch.empty(n, dtype=torch.long, device=x.device)
    exits = torch.empty(n, dtype=torch.long, device=x.device)
    alive = torch.arange(n, device=x.device)
    for i in range(k):
        state = net.stage(i, state)
        logits = net.head(i, state, prev)
        if i == k - 1:
            preds[alive], exits[alive] = logits.argmax(1), i
            break
        go = fn(logits).double() >= thresholds[i]
        preds[alive[go]], exits[alive[go]] = logits[go].argmax(1), i
        keep = (~go).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        alive, state, prev = alive[keep], _rows(state, keep), logits[keep]
    return preds, exits


def inference_net(net: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``net`` for inference timing, computing the same function:

    - every BatchNorm2d that directly follows a Conv2d is folded into the conv's weights and
      bias (consecutive children of an ``nn.Sequential``; ``conv{i}``/``bn{i}`` of
      torchvision's BasicBlock and Bottleneck and their subclasses), leaving an Identity;
      pre-activation BatchNorms (BN -> ReLU -> conv, DenseNet) stay;
    - ``channels_last`` weights (convolutions then produce NHWC activations).

    Both remove memory passes that cost time but no multiply-adds, so that wall-clock time
    tracks the FLOPs more closely (docs/performance.md, real early exit).
    """
    import sys

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    # torchvision's residual blocks (only if torchvision is loaded: a net cannot hold them otherwise)
    tv = sys.modules.get("torchvision.models.resnet")
    blocks = (tv.BasicBlock, tv.Bottleneck) if tv is not None else ()
    net = copy.deepcopy(net).eval()
    for m in list(net.modules()):
        if isinstance(m, nn.Sequential):
            names = list(m._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = m._modules[a], m._modules[b]
                if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                    m._modules[a], m._modules[b] = fuse_conv_bn_eval(conv, bn), nn.Identity()
        elif blocks and isinstance(m, blocks):
            for i in (1, 2, 3):
                conv, bn = getattr(m, f"conv{i}", None), getattr(m, f"bn{i}", None)
                if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                    setattr(m, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                    setattr(m, f"bn{i}", nn.Identity())
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


@torch.no_grad()
def measure_speedup(net: MultiExitNet, x: torch.Tensor, thresholds: Sequence[float], score: str | Score,
                    batch_size: int, warmup: int = 1, repeats: int = 3) -> dict:
    """Wall-clock time per image of the full network vs real early exit over ``x``."""
    net.eval()
    device = x.device
    chunks = list(x.split(batch_size))

    def full():
        for c in chunks:
            net.forward_until(c, net.num_exits - 1)

    def early():
        for c in chunks:
            early_exit(net, c, thresholds, score)

    t_full = time_call(full, device, warmup, repeats)
    t_early = time_call(early, device, warmup, repeats)
    return {"batch_size": batch_size, "ms_full": 1000 * t_full / x.shape[0],
            "ms_early": 1000 * t_early / x.shape[0], "speedup": t_full / t_early}


def split_accuracies(out: dict) -> dict[str, list[float]]:
    """Top-1 (%) of every exit on validation and test, from a run's outputs (per-exit ``*_logits`` as
    ``RunContext.collect_outputs`` saves them, or the ``*_preds`` of ``collect_compact_outputs``):
    ``{"val_acc": [...], "test_acc": [...]}``, what a trainer's results.json reports."""
    def acc(split: str) -> list[float]:
        preds = out.get(f"{split}_preds")
        if preds is None:
            return per_exit_accuracy(out[f"{split}_logits"], out[f"{split}_labels"]).tolist()
        return ((preds == out[f"{split}_labels"]).double().mean(1) * 100).tolist()
    return {"val_acc": acc("val"), "test_acc": acc("test")}


def per_exit_val_eval(data, unwrap: Callable[[nn.Module], nn.Module] | None = None) -> Callable[[nn.Module], dict]:
    """An ``eval_fn`` for ``ctx.fit``: the validation top-1 of every exit after each epoch
    (``val_acc_exit1``, ...) of the model (``unwrap(model)`` when the trained module wraps it)."""
    from repro import distributed as D

    def evaluate(model) -> dict:
        inner = D.unwrap(model)
        acc = per_exit_accuracy(collect_logits(unwrap(inner) if unwrap else inner, data.val), data.val_labels)
        return {f"val_acc_exit{i + 1}": float(a) for i, a in enumerate(acc)}
    return evaluate


def outputs_per_seed(runs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (test logits exits x N x C, test labels) per seed of a run (``runs``: its finished seeds)."""
    return [(r.outputs["test_logits"], r.outputs["test_labels"]) for r in runs]


def correct_per_seed(runs, exit: int = -1) -> list[torch.Tensor]:
    """Per seed, each test image's correctness at exit ``exit`` (default the last): what
    :func:`gap_with_spread` pairs."""
    return [lg[exit].argmax(-1) == lb for lg, lb in outputs_per_seed(runs)]


def top1_with_spread(runs, exit: int = -1) -> tuple[float, float]:
    """Test top-1 (%) at exit ``exit`` over a run's seeds, and its spread (:func:`accuracy_with_spread`)."""
    mean, spread = accuracy_with_spread(outputs_per_seed(runs))
    return mean[exit], spread[exit]


def accuracy_with_spread(runs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[float], list[float]]:
    """Per-exit test accuracy (%) over seeds, and its spread.

    ``runs``: one (logits exits x N x C, labels) per seed. With several seeds the
    spread is the 95 % t-interval over seeds (:func:`mean_and_spread`); with one, the
    half-width of the 95 % bootstrap interval over test samples.
    """
    accs = torch.stack([per_exit_accuracy(lg, lb) for lg, lb in runs])  # seeds x exits
    if len(runs) > 1:
        pairs = [mean_and_spread(accs[:, k].tolist()) for k in range(accs.shape[1])]
        return [m for m, _ in pairs], [s for _, s in pairs]
    logits, labels = runs[0]
    correct = logits.argmax(-1) == labels
    spreads = []
    for k in range(logits.shape[0]):
        lo, hi = bootstrap_ci(correct[k])
        spreads.append((hi - lo) / 2)
    return accs[0].tolist(), spreads


def rate_with_spread(correct: Sequence[torch.Tensor]) -> tuple[float, float]:
    """The share (%) of test samples that are right (``correct``: per seed, each sample's 0/1) and
    its spread by the one rule: one seed, the half-width of the 95 % bootstrap interval over the
    samples; N ≥ 2 seeds, the half-width of the 95 % t-interval over seeds."""
    if len(correct) > 1:
        return mean_and_spread([float(c.double().mean() * 100) for c in correct])
    lo, hi = bootstrap_ci(correct[0])
    return float(correct[0].double().mean() * 100), (hi - lo) / 2


def gap_with_spread(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], arms=None):
    """The one rule for a gap between two methods (points): ``a`` and ``b`` hold, per seed, each test
    sample's correctness (0/1, or a fraction on an interpolated curve; the same samples in the same
    order).  Returns the :class:`repro.stats.Gap` (the mean of the per-seed gaps, its interval counting
    the seeds and the test images they share, and the evidence itself); it unpacks as (gap,
    half-width of its 95 % interval) where a table shows "mean ± spread".  ``arms``: the run names
    behind ``a`` and ``b`` (each a name or a list of names), so that a claim can show an outlying
    seed of one of them."""
    from repro.stats import gap_evidence

    if len(a) != len(b) or not a:
        raise ValueError(f"a gap needs the same seeds on both sides, got {len(a)} and {len(b)}")
    for x, y in zip(a, b):
        if x.shape != y.shape:
            raise ValueError("the methods compared are not scored on the same test samples")
    if arms is not None:
        arms = tuple((side,) if isinstance(side, str) else tuple(side) for side in arms)
    return gap_evidence(a, b, arms)


def cpu_model() -> str:
    """The CPU's model name (for the machine line of timed tables)."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
