"""Study: every exit policy of the five papers on the same backbones (``repro study exits``).

Each multi-exit paper evaluates its own exit rule on its own network: MSDNet/IMTA a max-softmax
threshold fitted for budgeted batch classification, GlanceNets entropy thresholds learned while
training, decision gates hinge-trained linear gates with thresholds tuned on the cascade.  This
module compares the rules on equal terms: the same trained networks, the same held-out validation
split for every fit, the same test images, the same cost counter per network, and matched costs.

Why it sits beside the papers: the core discovers every module of ``repro/papers`` and knows
nothing of any paper, so a cross-paper comparison is added the way a paper is, as a ``Paper``
whose "method" is the comparison.  It trains nothing the papers already train: its backbones are
the papers' own run configs (the same hashes, so ``imta table2`` and ``glancenet table1`` runs
are reused, and vice versa), and its only runs are what a policy needs on top of a frozen
backbone, declared with ``parent=`` that backbone's run:

- ``gates``: one linear d-gate per early exit on the exit's pooled feature, hinge-trained on
  the training split as ``repro dgate`` trains them (``repro.papers.dgate``: loss, penalty,
  schedule, cached un-augmented features, standardisation folded back);
- ``thresholds``: GlanceNets' entropy-threshold learner (eq. 4, ``glancenet.ThresholdBank``)
  run on the frozen network's *validation* outputs, for the networks that were not trained with
  it (the MSDNets; the GlanceNet's own thresholds were learned in training).

Policies (all fitted on the held-out validation split; never on test):

1. max softmax, budgeted batch (MSDNet/IMTA: ``exits.budgeted_sweep``);
2. entropy, budgeted batch;
3. entropy thresholds learned by eq. 4 (one curve point per alpha);
4. d-gates: the cascade's thresholds tuned on validation for a ladder of accuracy targets
   (``exits.tune_thresholds``: gate i only sees what gates 1..i-1 passed on);
5. max logit, and the margin between the two largest softmax scores, budgeted batch;
6. the oracle (each sample leaves at the first exit that gets it right: a bound, computed on
   test, that no policy can beat) and no early exit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from repro import distributed as D
from repro.api import (Artifact, Claim, ConfigError, Figure, Paper, RunConfig, Table, TrainSpec,
                       first_test_images, model_name)
from repro.data import FeatureBatches, TensorBatches, dataset_info
from repro.exits import (SCORES, budgeted_sweep, cascade_exit, cascade_grid, cheapest_reaching,
                         early_exit, exit_index_batch, features_of, inference_net, mean_and_spread,
                         split_accuracies, threshold_grid, time_call)
from repro.flops import CONVENTIONS, count_exits
from repro.models.base import MultiExitNet
from repro.models.msdnet import MSDNet
from repro.models.staged import GatedBackbone, LinearGate
from repro.nn import threads
from repro.papers import dgate, glancenet, imta

PAPER_NAME = "study"
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # matched costs, as fractions of the full network's cost
N_BOOT = 1000

# ---------------------------------------------------------------------------- scores


def softmax_margin(logits: torch.Tensor) -> torch.Tensor:
    """The largest minus the second largest softmax probability."""
    top = logits.float().softmax(-1).topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


BUDGET_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "confidence": SCORES["confidence"], "entropy": SCORES["entropy"], "max_logit": SCORES["max_logit"],
    "margin": softmax_margin}

POLICIES = ("confidence", "entropy", "learned", "dgates", "max_logit", "margin", "oracle", "oracle_gates", "none")
REAL = ("confidence", "entropy", "learned", "dgates", "max_logit", "margin")  # policies one can deploy
LABELS = {"confidence": "max softmax, budgeted batch", "entropy": "entropy, budgeted batch",
          "learned": "entropy, learned thresholds (eq. 4)", "dgates": "d-gates, tuned on val",
          "max_logit": "max logit, budgeted batch", "margin": "top-2 softmax margin, budgeted batch",
          "oracle": "oracle (first correct exit)", "oracle_gates": "oracle over the d-gate cascade's exits",
          "none": "no early exit"}
BUDGET_FIT = "val: budgeted batch, 39 geometric exit distributions"


def grid_points(num_gates: int) -> int:
    """Candidate thresholds per gate for the cascade search: dgate's 40, fewer for 4+ gates
    (the exact search is over points^gates combinations)."""
    return max(8, min(40, int(4e5 ** (1 / max(num_gates, 1)))))


# ---------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class Backbone:
    label: str
    short: str
    run: Callable  # request -> the paper's RunConfig (seed 0)
    native_thresholds: bool  # trained with GlanceNets' threshold learner


BACKBONES = {
    "msdnet": Backbone("MSDNet, 5 exits (imta table2 row 1: no GE/ISC/OFA)", "MSDNet",
                       lambda r: imta.ablation_runs(r)["baseline"], False),
    "imta": Backbone("MSDNet + IMTA, 5 exits (imta table2 row 5: GE+ISC+OFA)", "MSDNet+IMTA",
                     lambda r: imta.ablation_runs(r)["ge+isc+ofa"], False),
    "glancenet": Backbone("GlanceNet: DenseNet with bypasses after dense blocks 1-2, HEM (glancenet table1)",
                          "GlanceNet", lambda r: glancenet.glance_runs(r)["hem"], True),
}
BUILDERS = {"imta": imta.build_model, "glancenet": glancenet.build_model}  # the backbone runs' papers

THRESHOLD_TRAIN = {s: TrainSpec(epochs=10, batch_size=64, lr=0.1, nesterov=True, weight_decay=1e-4,
                                milestones=(0.75,)) for s in ("smoke", "quick", "paper")}
# real early-exit timing: images at batch 1, images batched, that batch, matched costs timed
# and (warm-up calls, timed repeats: the median counts)
TIMING = {"smoke": (4, 32, 32, (0.5,), 1, 1), "quick": (100, 500, 250, (0.25, 0.5, 0.75), 1, 3),
          "paper": (500, 5000, 500, (0.25, 0.5, 0.75), 1, 3)}


def gate_run(request, parent: RunConfig) -> RunConfig:
    """Linear d-gates on the frozen ``parent`` network (one per early exit)."""
    method = {"gates": "GAP/pooled exit feature -> Linear, one per early exit", "loss": "ovr", "l2": 1e-4,
              "standardize": True, "features": "cached"}
    return RunConfig(paper=PAPER_NAME, name=f"{parent.name}-dgates", kind="gates", dataset=parent.dataset,
                     model=parent.model, model_args=parent.model_args, method=method,
                     train=dgate.gate_train_spec(request.scale), data=parent.data, parent=parent)


def threshold_run(request, parent: RunConfig) -> RunConfig:
    """GlanceNets' entropy-threshold learner on the frozen ``parent``'s validation outputs."""
    method = {"alphas": list(glancenet.ALPHAS), "tnorm": "sq", "threshold_init": "ln(C)/2",
              "empty_batch": "drop the missing half of J_T", "source": "validation outputs of the frozen parent"}
    return RunConfig(paper=PAPER_NAME, name=f"{parent.name}-entropy-thresholds", kind="thresholds",
                     dataset=parent.dataset, model=parent.model, model_args=parent.model_args, method=method,
                     train=THRESHOLD_TRAIN[request.scale], data=parent.data, parent=parent)


def study_runs(request) -> dict[str, dict[str, RunConfig]]:
    """Per backbone: its run, its d-gates run and the run that holds its learned thresholds."""
    out = {}
    for key, b in BACKBONES.items():
        cfg = b.run(request)
        out[key] = {"backbone": cfg, "gates": gate_run(request, cfg),
                    "thresholds": cfg if b.native_thresholds else threshold_run(request, cfg)}
    return out


def exits_runs(request) -> dict[str, RunConfig]:
    """``<backbone>``, ``<backbone>/gates``, ``<backbone>/thresholds`` (the GlanceNet's own run
    holds its thresholds, so there that name is the backbone's run again)."""
    return {key if role == "backbone" else f"{key}/{role}": cfg
            for key, rs in study_runs(request).items() for role, cfg in rs.items()}


# ---------------------------------------------------------------------------- gated networks


class GatedMSDNet(MultiExitNet):
    """An MSDNet whose early exits are d-gates: exit i < k-1 is a Linear on exit i's pooled
    feature (``head_features[i]``, what its own classifier reads); the last exit is the MSDNet's
    own last classifier.

    With ISC the last classifier needs the previous exits' own logits, so the chain goes on:
    stage i computes exit i-1's own logits (the state is [scales, pooled feature, previous own
    logits]); a sample that leaves at gate i never computes them, and the cost counted at each
    exit is what really runs.
    """

    def __init__(self, msd: MSDNet):
        super().__init__()
        self.msd = msd
        self.num_exits = msd.num_exits
        self.gates = nn.ModuleList(nn.Linear(msd.head_dims[i], msd.cfg.num_classes) for i in range(self.num_exits - 1))

    def own_logits(self, i: int, feat: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        m = self.msd
        if m.isc and i > 0:
            return m.isc_classifiers[i - 1](torch.cat([feat, m.isc_embed[i - 1](prev)], dim=1))
        return m.classifiers[i](feat)

    def stage(self, i: int, state):
        if i == 0:
            scales, chain = self.msd.stage(0, state), None
        else:
            scales, feat, *rest = state
            chain = self.own_logits(i - 1, feat, rest[0] if rest else None) if self.msd.isc else None
            scales = self.msd.stage(i, scales)
        feat = self.msd.head_features[i](scales[-1])
        return [scales, feat] + ([chain] if chain is not None else [])

    def head(self, i: int, state, prev_logits):
        feat = state[1]
        if i < self.num_exits - 1:
            return self.gates[i](feat)
        return self.own_logits(i, feat, state[2] if len(state) > 2 else None)

    @torch.no_grad()
    def pooled_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, state = [], x
        for i in range(self.num_exits - 1):
            state = self.stage(i, state)
            feats.append(state[1].float())
        return feats


def gated_net(backbone: nn.Module) -> MultiExitNet:
    """The d-gate version of a trained multi-exit ``backbone``: gates in place of its early exits."""
    if isinstance(backbone, MSDNet):
        return GatedMSDNet(backbone)
    if isinstance(backbone, GatedBackbone):  # GlanceNet: gates on the raw dense-block outputs, as dgate's
        return GatedBackbone(backbone.backbone, backbone.exits_after, head_factory=LinearGate)
    raise ConfigError(f"no d-gate version of {type(backbone).__name__}")


def gate_layers(net: MultiExitNet) -> nn.ModuleList:
    """The gates' Linear layers (shared with ``net``): what the gates run saves."""
    if isinstance(net, GatedMSDNet):
        return net.gates
    return nn.ModuleList(h.fc for h in net.heads)


def load_backbone(cfg: RunConfig, state, device) -> nn.Module:
    """The backbone of ``cfg`` with its weights: a state dict, or a finished run (its checked model.pt)."""
    net = BUILDERS[cfg.paper](cfg, dataset_info(cfg.dataset))
    if isinstance(state, dict):
        net.load_state_dict(state)
    else:
        state.load_into(net, map_location=device)
    return net.to(device).eval()


# ---------------------------------------------------------------------------- trainers


def train_gates(ctx) -> dict:
    cfg, data = ctx.cfg, ctx.data()
    info, m = data.info, cfg.method
    backbone = load_backbone(cfg.parent, ctx.ancestor(), ctx.device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    # the frozen network runs as its inference copy (BatchNorm folded, channels_last: the same
    # function, 1.5-2x faster on a CPU), as real early exit runs it; costs are counted on the
    # network as trained (below), the convention of the backbone's own costs
    net = ctx.to_device(gated_net(inference_net(backbone))).eval()
    layers = gate_layers(net)
    if not isinstance(data.train, TensorBatches):
        raise ConfigError(f"study: d-gate features are cached from an in-memory dataset, not {cfg.dataset}")
    plain = TensorBatches(data.train.x, data.train.y, 500, info=info)  # un-augmented, in order
    feats, y = features_of(net, plain)
    val_feats, _ = features_of(net, data.val)
    bank = ctx.to_device(dgate.GateBank([lin.in_features for lin in layers], info.num_classes))
    if m["standardize"]:
        for i, f in enumerate(feats):
            bank.set_stats(i, f.mean(0), f.std(0))
    val_y = data.val_labels.to(y.device)

    def evaluate(model) -> dict:
        with torch.no_grad():
            outs = D.unwrap(model)(val_feats)
        return {f"val_acc_gate{i + 1}": float((d.argmax(1) == val_y).double().mean() * 100) for i, d in enumerate(outs)}

    ctx.fit(bank, dgate.gate_step(m["loss"], float(m["l2"])), "gates",
            batches=FeatureBatches(feats, y, cfg.train.batch_size, cfg.seed), eval_fn=evaluate)
    with torch.no_grad():
        for i, lin in enumerate(layers):
            w, b = D.unwrap(bank).folded(i)
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    ctx.save_model(layers, "gates")
    out = ctx.collect_compact_outputs(net)
    convention = ctx.ancestor().results["cost_convention"]
    plain_net = gated_net(backbone).to(ctx.device).eval()
    gate_layers(plain_net).load_state_dict(layers.state_dict())
    with threads(1):
        costs = count_exits(plain_net, (1, info.in_channels, info.image_size, info.image_size), convention)
    return {**split_accuracies(out), "costs": costs["cost"].tolist(),
            "params": costs["params"].tolist(), "cost_convention": convention}


class _ThresholdLoss(nn.Module):
    """``forward(per-exit logits, y)``: the threshold bank's eq. 4 loss on the early exits."""

    def __init__(self, bank: glancenet.ThresholdBank):
        super().__init__()
        self.bank = bank

    def forward(self, logits: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return self.bank.loss(logits[:-1], y)


def learn_thresholds(outputs: dict, method: dict, fit: Callable, device, batch_size: int, seed: int
                     ) -> tuple[dict, glancenet.ThresholdBank]:
    """GlanceNets' eq. 4 threshold learners (one per alpha) trained on the *validation* logits of
    a frozen network (``outputs``: its outputs.pt); ``fit(model, step, phase, batches=...)``
    runs the training engine.  Reads nothing but ``val_logits`` and ``val_labels``."""
    vl, vy = outputs["val_logits"].float(), outputs["val_labels"]
    k, _, c = vl.shape
    bank = glancenet.ThresholdBank(method["alphas"], k - 1, c, norm=method["tnorm"]).to(device)
    batches = FeatureBatches([vl[i].to(device) for i in range(k)], vy.to(device), batch_size, seed)

    def step(model, logits, y):
        return model(logits, y), logits[-1]

    fit(_ThresholdLoss(bank), step, "thresholds", batches=batches)
    return {"alphas": list(method["alphas"]), "thresholds": [bank.thresholds(a) for a in method["alphas"]],
            "source": "validation outputs of the frozen network"}, bank


def train_thresholds(ctx) -> dict:
    cfg = ctx.cfg
    outputs = ctx.ancestor().outputs
    result, bank = learn_thresholds(outputs, cfg.method, ctx.fit, ctx.device, cfg.train.batch_size, cfg.seed)
    ctx.save_model(bank, "thresholds")
    return result


# ---------------------------------------------------------------------------- curves


@dataclass
class Curve:
    """A policy's accuracy-vs-cost curve on test: one point per fitted threshold set.

    ``correct`` and ``cost`` are per point and test sample (cost relative to the full network's);
    ``val_cost`` is each point's expected validation cost (relative), which picks the thresholds
    that are timed; ``thresholds`` are what real early exit runs with."""
    correct: torch.Tensor  # P x N, float32 0/1
    cost: torch.Tensor     # P x N, float32
    val_cost: list[float]
    thresholds: list[list[float]]
    score: object = None   # exit score for real early exit (None: not deployable)
    net: str = "backbone"  # the network real early exit runs: "backbone" or "gates"
    fit: str = ""

    @property
    def n(self) -> int:
        return self.correct.shape[1]

    def summary(self, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy (%) and mean relative cost of every point under sample weights ``W`` (B x N,
        rows summing to N): P x B each."""
        n = W.shape[1]
        return (self.correct @ W.T).double() * (100 / n), (self.cost @ W.T).double() / n

    def at(self, xs: Sequence[float], W: torch.Tensor) -> torch.Tensor:
        """Accuracy at each relative cost in ``xs``, by linear interpolation along the curve
        (NaN outside its cost range): len(xs) x B."""
        acc, cost = self.summary(W)
        return interpolate(xs, cost, acc)


def interpolate(xs: Sequence[float], cost: torch.Tensor, acc: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Per column b of ``cost``/``acc`` (P x B), the accuracy at cost x, linear between the
    points sorted by cost; NaN where x is outside [min cost, max cost] (``tol``: float32 costs)."""
    p, b = cost.shape
    c, order = cost.T.sort(dim=1)
    a = acc.T.gather(1, order)
    out = torch.full((len(xs), b), math.nan, dtype=torch.float64)
    for r, x in enumerate(xs):
        inside = (c[:, 0] <= x + tol) & (c[:, -1] >= x - tol)
        if p == 1:
            out[r] = torch.where(inside, a[:, 0], out[r])
            continue
        j = torch.searchsorted(c.contiguous(), torch.full((b, 1), float(x), dtype=c.dtype)).squeeze(1).clamp(1, p - 1)
        c0, c1 = c.gather(1, (j - 1)[:, None]).squeeze(1), c.gather(1, j[:, None]).squeeze(1)
        a0, a1 = a.gather(1, (j - 1)[:, None]).squeeze(1), a.gather(1, j[:, None]).squeeze(1)
        w = torch.where(c1 > c0, (x - c0) / (c1 - c0).clamp_min(1e-300), torch.ones_like(c0)).clamp(0, 1)
        out[r] = torch.where(inside, a0 + w * (a1 - a0), out[r])
    return out


class Oracle:
    """The best any exit policy can do on these outputs at each average cost.

    Every sample pays at least the first exit's cost c_0; leaving at its first correct exit
    instead costs e_i = c_first - c_0 more and gains one correct sample (samples no exit gets
    right leave at exit 1).  The most correct samples for a budget is the greedy choice by
    e_i, and its linear relaxation (partial samples) is a concave upper bound in the cost; a
    policy's points, and the lines between them, lie under it.  Its end is the oracle of "each
    sample exits at the first exit that classifies it correctly"; past that it stays flat.
    Computed on test, with the labels: a bound, not a policy."""

    score = None
    net = None
    fit = "none: a bound (computed with the test labels)"

    def __init__(self, correct: torch.Tensor, costs: Sequence[float]):
        correct = torch.as_tensor(correct).bool()
        c = torch.as_tensor(list(costs), dtype=torch.float64)
        any_right = correct.any(0)
        first = correct.to(torch.uint8).argmax(0)
        extra = c[first] - c[0]
        idx = any_right.nonzero().squeeze(1)
        e = extra[idx]
        order = e.argsort(stable=True)
        self.idx, self.e, self.c0, self.n = idx[order], e[order], float(c[0]), correct.shape[1]
        self.end_cost = float(c[0] + e.sum() / self.n) if e.numel() else float(c[0])

    def at(self, xs: Sequence[float], W: torch.Tensor) -> torch.Tensor:
        b, n = W.shape
        out = torch.full((len(xs), b), math.nan, dtype=torch.float64)
        m = self.idx.numel()
        if m == 0:
            for r, x in enumerate(xs):
                out[r] = 0.0 if x >= self.c0 - 1e-6 else math.nan
            return out
        w = W[:, self.idx].double()
        cum_n, cum_c = w.cumsum(1), (w * self.e).cumsum(1)
        zero = torch.zeros(b, 1, dtype=torch.float64)
        base_n, base_c = torch.cat([zero, cum_n], 1), torch.cat([zero, cum_c], 1)
        for r, x in enumerate(xs):
            if x < self.c0 - 1e-6:  # float32 costs of the curves: the same tolerance as interpolate's
                continue
            beta = torch.full((b, 1), max(x - self.c0, 0.0) * n, dtype=torch.float64)
            j = torch.searchsorted(cum_c.contiguous(), beta, right=True).squeeze(1)  # samples fully paid for
            k = base_n.gather(1, j[:, None]).squeeze(1)
            spent = base_c.gather(1, j[:, None]).squeeze(1)
            jj = j.clamp(max=m - 1)
            part = torch.minimum(w.gather(1, jj[:, None]).squeeze(1),
                                 (beta.squeeze(1) - spent) / self.e[jj].clamp_min(1e-300))
            out[r] = (k + torch.where(j < m, part, torch.zeros_like(part))) * (100 / n)
        return out


def _points_curve(idx: torch.Tensor, correct: torch.Tensor, rel_costs: torch.Tensor, val_cost, thresholds,
                  **kw) -> Curve:
    """A curve from exit indices (P x N) on test: each point's per-sample correctness and cost."""
    return Curve(correct=correct.gather(0, idx).float(), cost=rel_costs[idx].float(),
                 val_cost=[float(v) for v in val_cost], thresholds=[list(map(float, t)) for t in thresholds], **kw)


def budget_curve(out: dict, costs: Sequence[float], score: str) -> Curve:
    """Budgeted batch thresholds of ``score`` fitted on validation (``exits.budgeted_sweep``)."""
    fn = BUDGET_SCORES[score]
    full = float(costs[-1])
    sweep = budgeted_sweep(out["val_logits"], out["val_labels"], out["test_logits"], out["test_labels"], costs, fn)
    t = torch.tensor(sweep["thresholds"].tolist(), dtype=torch.float64)
    with threads(1):
        idx = exit_index_batch(fn(out["test_logits"]), t)
    correct = out["test_logits"].argmax(-1) == out["test_labels"]
    rel = torch.as_tensor(list(costs), dtype=torch.float64) / full
    return _points_curve(idx, correct, rel, sweep["val_cost"] / full, t.tolist(), score=fn, fit=BUDGET_FIT)


def learned_curve(out: dict, costs: Sequence[float], result: dict, native: bool) -> Curve:
    """GlanceNets' learned entropy thresholds, one point per alpha of the bank."""
    full = float(costs[-1])
    rel = torch.as_tensor(list(costs), dtype=torch.float64) / full
    fn = SCORES["entropy"]
    with threads(1):
        vs, ts = fn(out["val_logits"]), fn(out["test_logits"])
        ths = [glancenet.score_thresholds(glancenet.learned(result, a)) + [-math.inf] for a in result["alphas"]]
        t = torch.tensor(ths, dtype=torch.float64)
        idx, vidx = exit_index_batch(ts, t), exit_index_batch(vs, t)
    correct = out["test_logits"].argmax(-1) == out["test_labels"]
    fit = ("training batches (eq. 4, with the network)" if native
           else "val outputs of the frozen net (eq. 4; not trained with it)")
    return _points_curve(idx, correct, rel, rel[vidx].mean(1), ths, score="entropy", fit=fit)


def _gate_split(gout: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    correct = gout[f"{split}_preds"] == gout[f"{split}_labels"]
    return gout[f"{split}_scores"][:-1], correct


def dgate_curve(gout: dict, gate_costs: Sequence[float], full: float, steps: int = 31) -> Curve:
    """d-gate thresholds tuned on validation for a ladder of ``steps`` validation accuracy
    targets, from the cheapest cascade's accuracy to the best reachable one: for each, the
    cheapest combination of the exact cascade search (``exits.cascade_grid``: gate i sees only
    what gates 1..i-1 passed on) that reaches it, as ``exits.tune_thresholds`` picks it; then
    every gate off (the last exit alone, the paper's "original"); evaluated on test.  (The
    paper's targets, the backbone's accuracy minus a margin, are points of this ladder.)"""
    vs, vc = _gate_split(gout, "val")
    ts, tc = _gate_split(gout, "test")
    points = grid_points(vs.shape[0])
    with threads(1):
        grids = [threshold_grid(s, points) for s in vs]
        grid = cascade_grid(vs, vc, gate_costs, grids)
        lo = cheapest_reaching(grid, grids, [-1.0])[0]["acc"]
        seen, ths, vcost = set(), [], []
        for tuned in cheapest_reaching(grid, grids, np.linspace(lo, float(grid["acc"].max()), steps).tolist()):
            key = tuple(tuned["thresholds"])
            if key in seen:
                continue
            seen.add(key)
            ths.append(list(tuned["thresholds"]) + [-math.inf])
            vcost.append(tuned["cost"] / full)
        if not all(math.isinf(v) for v in ths[-1][:-1]):  # and every gate off: the curve ends at the last exit
            ths.append([math.inf] * len(grids) + [-math.inf])
            vcost.append(float(gate_costs[-1]) / full)
        idx = torch.stack([cascade_exit(ts, t[:-1]) for t in ths])
    rel = torch.as_tensor(list(gate_costs), dtype=torch.float64) / full
    return _points_curve(idx, tc, rel, vcost, ths, score="max_logit", net="gates",
                         fit="gates: training split (hinge); thresholds: val (cascade search)")


def policy_curves(out: dict, costs: Sequence[float], gout: dict | None, gate_costs: Sequence[float] | None,
                  learned_result: dict | None, native: bool = False) -> dict:
    """Every policy's curve on one network's stored outputs (``out``: outputs.pt with per-exit
    logits; ``gout``: the d-gate run's outputs; ``learned_result``: a results dict with
    ``alphas`` and ``thresholds``).  Every threshold is fitted on the validation split."""
    full = float(costs[-1])
    rel = torch.as_tensor(list(costs), dtype=torch.float64) / full
    correct = out["test_logits"].argmax(-1) == out["test_labels"]
    k, n = correct.shape
    curves = {p: budget_curve(out, costs, p) for p in ("confidence", "entropy", "max_logit", "margin")}
    if learned_result is not None:
        curves["learned"] = learned_curve(out, costs, learned_result, native)
    if gout is not None:
        curves["dgates"] = dgate_curve(gout, gate_costs, full)
        curves["oracle_gates"] = Oracle(_gate_split(gout, "test")[1],
                                        torch.as_tensor(list(gate_costs), dtype=torch.float64) / full)
    curves["oracle"] = Oracle(correct, rel)
    last = torch.full((1, n), k - 1, dtype=torch.long)
    curves["none"] = _points_curve(last, correct, rel, [1.0], [[-math.inf] * k], fit="nothing to fit")
    return {p: curves[p] for p in POLICIES if p in curves}


# ---------------------------------------------------------------------------- spreads


def bootstrap_weights(n: int, n_boot: int = N_BOOT, seed: int = 0) -> torch.Tensor:
    """Resampling counts of the paired bootstrap over test samples: n_boot x n, rows sum to n."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)
    return torch.zeros(n_boot, n).scatter_add_(1, idx, torch.ones(n_boot, n))


def _halfwidth(samples: torch.Tensor) -> float:
    ok = samples[~samples.isnan()]
    if ok.numel() < 0.9 * samples.numel():
        return math.nan
    lo, hi = torch.quantile(ok, torch.tensor([0.025, 0.975], dtype=ok.dtype))
    return float(hi - lo) / 2


@dataclass
class Matched:
    """Accuracy of every policy at the matched costs: per seed (point estimates) and, at one
    seed, per bootstrap resample (paired: the same resamples for every policy).

    The spreads are the one rule of :func:`repro.exits.gap_with_spread` (a paired bootstrap over
    the test samples at one seed, the same 1000 resamples as ``bootstrap_ci``; the t-interval of
    per-seed values at N >= 2 seeds) applied to an accuracy *at a matched cost*: each resample
    re-evaluates the curve's costs too and interpolates again, which a per-sample correctness
    vector cannot express (tested equal to ``gap_with_spread`` where nothing is interpolated)."""
    est: dict   # policy -> seeds x len(FRACTIONS)
    boot: dict  # policy -> seeds x len(FRACTIONS) x B (the same resamples for every seed and policy)
    arms: dict = None  # policy -> the run names behind it (outlying seeds)
    n: int = 0         # test images

    def value(self, p: str, j: int) -> tuple[float, float]:
        v = self.est[p][:, j]
        if v.isnan().any():
            return math.nan, math.nan
        if v.numel() > 1:
            return mean_and_spread(v.tolist())
        return float(v[0]), _halfwidth(self.boot[p][0, j])

    def gap(self, a: str, b: str, j: int):
        """The gap of policy ``a`` over ``b`` at matched cost j (a :class:`repro.stats.Gap`, which
        unpacks as (gap, half-width)) by the core's rule (docs/statistics.md): the seed part from the
        per-seed gaps, the test-image part that the seeds share from the paired bootstrap (a matched
        cost re-interpolates each resample, which per-image scores cannot express).  With V1 the mean
        over seeds of each seed's bootstrap variance of its gap and VS that of the seed-averaged gap,
        VS = (s_b + s_i / S) / n and V1 = (s_b + s_i) / n, so the shared part s_b / n is
        VS - (V1 - VS) / (S - 1).  At one seed: the bootstrap over test images (no verdict)."""
        from repro import stats

        d = self.est[a][:, j] - self.est[b][:, j]
        arms = None if self.arms is None else (tuple(self.arms.get(a, ())), tuple(self.arms.get(b, ())))
        if d.isnan().any():
            return stats.one_seed(math.nan, math.nan)
        bd = self.boot[a][:, j] - self.boot[b][:, j]  # seeds x B
        if d.numel() == 1:
            return replace(stats.one_seed(float(d[0]), _halfwidth(bd[0])), arms=arms)
        ok = ~bd.isnan().any(0)
        if ok.sum() < 0.9 * bd.shape[1]:  # too many resamples fall outside a curve: the seeds alone
            return replace(stats.seeds_evidence(d.tolist()), arms=arms)
        bd = bd[:, ok]
        s = d.numel()
        v1 = float(bd.var(1).mean())
        vs = float(bd.mean(0).var())
        shared = max(vs - (v1 - vs) / (s - 1), 0.0)
        return stats.Gap(float(d.mean()), s, tuple(map(float, d)), "images", self.n, float(d.var()), shared, arms)


def matched(per_seed: list[dict], xs: Sequence[float] = FRACTIONS, arms: dict | None = None) -> Matched:
    est, boot = {}, {}
    n = per_seed[0]["none"].n
    ones = torch.ones(1, n)
    W = bootstrap_weights(n)  # the same resamples for every seed and policy: paired
    for p in per_seed[0]:
        est[p] = torch.stack([curves[p].at(xs, ones)[:, 0] for curves in per_seed])
        boot[p] = torch.stack([curves[p].at(xs, W) for curves in per_seed])
    return Matched(est, boot, arms, n)


# ---------------------------------------------------------------------------- timing


def time_interleaved(fns: dict, x: torch.Tensor, batch: int, device, warmup: int, repeats: int, seed: int = 0
                     ) -> dict:
    """Median wall-clock seconds of every ``fns[name](chunk)`` over ``x`` in chunks of ``batch``,
    timed in rounds: each round calls every function once, in a new seeded random order, so
    that a change in the machine's load falls on all of them alike (as ``repro bench`` times)."""
    import random

    chunks = list(x.split(batch))

    def over(fn):
        def all_chunks():
            with torch.no_grad():
                for c in chunks:
                    fn(c)
        return all_chunks

    calls = {k: over(fn) for k, fn in fns.items()}
    order = list(calls)
    rng = random.Random(seed)
    for _ in range(warmup):
        for k in order:
            calls[k]()
    times = {k: [] for k in order}
    for _ in range(repeats):
        rng.shuffle(order)
        for k in order:
            times[k].append(time_call(calls[k], device, 0, 1))
    return {k: float(np.median(v)) for k, v in times.items()}


def time_policies(nets: dict, x: torch.Tensor, curves: dict, scale: str, device) -> dict:
    """Wall-clock speed-up of real early exit over the full network (every exit's head computed),
    at batch 1 and batched, for every deployable policy at the timed matched costs; the timed
    thresholds are the curve point whose *validation* cost is nearest the matched cost.  The
    full network and every timed threshold set are timed in interleaved rounds.
    Returns {(policy, fraction): {"b1", "batched", "flops", "point"}}."""
    n1, nb, bs, fractions, warmup, repeats = TIMING[scale]
    full_net = nets["backbone"]
    fns = {"full": lambda c: full_net.forward_until(c, full_net.num_exits - 1)}
    chosen = {}
    for p in REAL:
        if p not in curves:
            continue
        cv = curves[p]
        for f in fractions:
            j = int(np.argmin(np.abs(np.asarray(cv.val_cost) - f)))
            chosen[(p, f)] = (p, j)
            if (p, j) not in fns:
                net, t = nets[cv.net], cv.thresholds[j]
                fns[(p, j)] = lambda c, net=net, t=t, s=cv.score: early_exit(net, c, t, s)  # noqa: E731
    with threads(1 if device.type == "cpu" else None):
        b1 = time_interleaved(fns, x[:n1], 1, device, warmup, repeats)
        batched = time_interleaved(fns, x[:nb], bs, device, warmup, repeats)
    out = {}
    for (p, f), (q, j) in chosen.items():
        out[(p, f)] = {"b1": b1["full"] / b1[(q, j)], "batched": batched["full"] / batched[(q, j)],
                       "flops": 1.0 / float(curves[q].cost[j].double().mean()), "point": j}
    return out


def _nets(rr_backbone, rr_gates, device) -> dict:
    cfg = rr_backbone.cfg
    backbone = load_backbone(cfg, rr_backbone, device)
    fast = inference_net(backbone)  # BatchNorm folded, channels_last: both paths run this copy
    gated = gated_net(fast)
    rr_gates.load_into(gate_layers(gated), "gates", map_location=device)
    return {"backbone": fast, "gates": gated.to(device).eval()}


# ---------------------------------------------------------------------------- the artifact


def _pct(f: float) -> str:
    return f"{round(100 * f)}pct"


def _analyse(key: str, request, runs, settings, device) -> dict:
    """One backbone: every policy's curves per seed, the matched costs, and the timing."""
    native = BACKBONES[key].native_thresholds
    rb, rg, rt = runs[key], runs[f"{key}/gates"], runs[f"{key}/thresholds"]
    per_seed = [policy_curves(b.outputs, b.results["costs"], g.outputs, g.results["costs"], t.results, native)
                for b, g, t in zip(rb, rg, rt)]
    n1, nb = TIMING[request.scale][:2]
    x = first_test_images(rb[0].cfg, settings, max(n1, nb), device)
    return {"key": key, "cfg": rb[0].cfg, "per_seed": per_seed, "matched": matched(per_seed),
            "timing": time_policies(_nets(rb[0], rg[0], device), x, per_seed[0], request.scale, device),
            "full": float(rb[0].results["costs"][-1]), "convention": rb[0].results["cost_convention"],
            "gate_run": rg[0].cfg, "threshold_run": rt[0].cfg}


def policy_runs(key: str, policy: str) -> tuple[str, ...]:
    """The runs (the exits artifact's names) behind a policy on backbone ``key``: its outlying seeds
    are shown on the claims that compare it (the study has no paper: a claim compares two policies)."""
    extra = {"dgates": (f"{key}/gates",), "oracle_gates": (f"{key}/gates",), "learned": (f"{key}/thresholds",)}
    return (key, *extra.get(policy, ()))


def _ranking(a: dict, smoke: bool) -> tuple[list[str], list[Claim]]:
    """Per matched cost: the deployable policies ordered by accuracy, '>' only where the paired
    gap to the next one exceeds its spread, and a claim per neighbouring pair."""
    m, lines, claims = a["matched"], [], []
    name = BACKBONES[a["key"]].short
    for j, f in enumerate(FRACTIONS[:-1]):
        at = f"{name}, {100 * f:.0f} % cost"
        vals = [(p, m.value(p, j)[0]) for p in REAL if p in m.est]
        vals = sorted(((p, v) for p, v in vals if not math.isnan(v)), key=lambda t: -t[1])
        if len(vals) < 2:
            lines.append(f"{at}: fewer than two policies reach this cost")
            continue
        text = LABELS[vals[0][0]]
        for (p, _), (q, _) in zip(vals, vals[1:]):
            ev = m.gap(p, q, j)
            gap, sp = ev
            text += (" > " if not smoke and abs(gap) > sp else " ≈ ") + LABELS[q]  # NaN spread: ≈
            claims.append(Claim(f"{at}: {LABELS[p]} minus {LABELS[q]} (points)",
                                replace(ev, arms=(policy_runs(a["key"], p), policy_runs(a["key"], q)))))
        lines.append(f"ranking, {name} at {100 * f:.0f} % of the full cost: {text}"
                     + (" (smoke scale: no ranking)" if smoke else ""))
    return lines, claims


def curve_points(a: dict) -> pd.DataFrame:
    """Every point of every policy's test curve, averaged over seeds (``acc_std``: their standard
    deviation, with several); the oracles are bounds, drawn densely from their first exit's cost."""
    per_seed, rows = a["per_seed"], []
    seeds = len(per_seed)
    for p in POLICIES:
        if p not in per_seed[0]:
            continue
        if isinstance(per_seed[0][p], Oracle):
            xs = np.linspace(min(s[p].c0 for s in per_seed), 1.0, 121).tolist()
            accs = torch.stack([s[p].at(xs, torch.ones(1, s[p].n))[:, 0] for s in per_seed])
            costs = torch.tensor(xs, dtype=torch.float64)[None].expand(seeds, -1)
        else:
            pairs = [s[p].summary(torch.ones(1, s[p].n)) for s in per_seed]
            accs = torch.stack([acc[:, 0] for acc, _ in pairs])
            costs = torch.stack([cost[:, 0] for _, cost in pairs])
        acc, cost = accs.mean(0), costs.mean(0)
        err = accs.std(0) if seeds > 1 else None
        rows += [{"backbone": a["key"], "policy": p, "label": LABELS[p], "point": i,
                  "rel_cost_pct": float(100 * cost[i]), "cost_m": float(cost[i]) * a["full"] / 1e6,
                  "acc": float(acc[i]), "acc_std": float(err[i]) if err is not None else math.nan}
                 for i in range(len(cost))]
    return pd.DataFrame(rows)


def _figure(a: dict) -> Figure:
    """Accuracy vs relative cost, one line per policy (drawn from its data), the matched costs in grey."""
    data = curve_points(a)
    style = {"oracle": dict(color="k", ls="--", lw=1.2), "oracle_gates": dict(color="0.45", ls=":", lw=1.2)}

    def draw():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9.6, 5.2))
        for p, d in data.groupby("policy", sort=False):
            d = d.sort_values("rel_cost_pct", kind="stable")
            x, y, e = d["rel_cost_pct"].to_numpy(), d["acc"].to_numpy(), d["acc_std"].to_numpy()
            if p == "none":
                ax.plot(x, y, "k*", ms=11, label=LABELS[p])
                continue
            ax.plot(x, y, **style.get(p, dict(marker="o", ms=2.5, lw=1.2)), label=LABELS[p])
            if not np.isnan(e).all():
                ax.fill_between(x, y - e, y + e, alpha=0.18)
        for f in FRACTIONS[:-1]:
            ax.axvline(100 * f, color="0.8", lw=0.8, zorder=0)
        ax.set_xlabel(f"average cost per image (% of the full network: {a['full'] / 1e6:.3g} M, "
                      f"{a['convention']} counter)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)
        return fig

    notes = ["every threshold fitted on the held-out validation split; test only evaluates",
             "band: the spread over seeds" if len(a["per_seed"]) > 1
             else "one seed: no band (the table has bootstrap spreads)",
             "grey lines: the matched costs of the table (25/50/75 %)",
             "the d-gates predict with their own linear classifiers: the dotted oracle (over the cascade's exits) "
             "bounds them, the dashed one (the network's own exits) bounds every other policy"]
    return Figure(f"Every exit policy on {BACKBONES[a['key']].label}: accuracy vs cost", a["cfg"].dataset,
                  model_name(a["cfg"]), CONVENTIONS[a["convention"]], draw=draw, data=data, notes=notes, name=a["key"])


def build_exits(request, runs, settings) -> list:
    """The matched-cost table (top-1 at 25/50/75/100 % of each network's cost, real speed-ups)
    and one accuracy-vs-cost figure per backbone."""
    device = D.resolve_device(settings.device)
    analyses = [_analyse(k, request, runs, settings, device) for k in BACKBONES]
    n1, nb, bs, timed, warmup, repeats = TIMING[request.scale]
    rows = []
    for a in analyses:
        m = a["matched"]
        for p in (p for p in POLICIES if p in m.est):
            rec = {"policy": f"{a['key']}: {LABELS[p]}", "fit": a["per_seed"][0][p].fit}
            for j, f in enumerate(FRACTIONS):
                rec[f"acc_{_pct(f)}"], rec[f"acc_{_pct(f)} ±"] = m.value(p, j)
            for f in timed:
                t = a["timing"].get((p, f), {})
                for col, k in (("speedup_b1", "b1"), ("speedup_batched", "batched"), ("flops_speedup", "flops")):
                    rec[f"{col}_{_pct(f)}"] = t.get(k, math.nan)
            rows.append(rec)
    notes = ["the study has no reference numbers: every column is ours"]
    notes += [f"{a['key']}: {BACKBONES[a['key']].label}; run {a['cfg'].paper}/{a['cfg'].dirname}; "
              f"full cost {a['full'] / 1e6:.4g} M ({a['convention']} counter); d-gates "
              f"{PAPER_NAME}/{a['gate_run'].dirname}; learned thresholds from "
              f"{a['threshold_run'].paper}/{a['threshold_run'].dirname}" for a in analyses]
    notes += [
        "acc_X: test top-1 (%) at X % of the full network's cost (every exit's head computed), by linear "
        "interpolation along the policy's test curve; empty outside the curve's cost range",
        ("±: 95 % t-interval over seeds" if request.seeds > 1 else
         "±: half-width of the 95 % paired bootstrap interval over test samples (1000 resamples, the same "
         "for every policy; thresholds stay as fitted)"),
        "d-gates read each early exit's pooled feature: MSDNet's head_features output (its classifier's input; "
        "IMTA's ISC embedding is not a gate input), the GlanceNet's dense-block output under global average "
        "pooling; their exits are the gates' own predictions, so the d-gate cascade has its own oracle",
        "learned thresholds: the GlanceNet's were learned in training (eq. 4); the MSDNets were not trained with "
        "them, so eq. 4 is run on the frozen network's validation outputs",
        f"speedup_*: wall-clock time of the full network / real early exit (repro.exits.early_exit, BatchNorm "
        f"folded, {device}, one thread on a CPU, median of {repeats} after {warmup} "
        f"warm-up, timed in interleaved rounds with the full network, seed 0's model), batch 1 over {n1} and batch "
        f"{bs} over {nb} test images, with the "
        f"thresholds of the curve point whose validation cost is nearest the matched cost; flops_speedup_*: "
        "1 / that point's test cost",
    ]
    claims = []
    for a in analyses:
        lines, cs = _ranking(a, request.scale == "smoke")
        notes, claims = notes + lines, claims + cs
    datasets = sorted({a["cfg"].dataset for a in analyses})
    dataset = datasets[0] if len(datasets) == 1 else ", ".join(f"{a['cfg'].dataset} ({a['key']})" for a in analyses)
    model = "; ".join(f"{a['key']}: {model_name(a['cfg'])}" for a in analyses)
    nets = {c: ", ".join(BACKBONES[a["key"]].short for a in analyses if a["convention"] == c)
            for c in dict.fromkeys(a["convention"] for a in analyses)}
    cost = "relative to each network's full cost; " + "; ".join(f"{n}: {CONVENTIONS[c]}" for c, n in nets.items())
    # frame=: the table's rows are (backbone, policy) with a text column (fit) and the study has
    # no reference numbers, so no paper columns are set beside it
    table = Table("Every exit policy at matched costs: top-1 (%) and real speed-up", dataset, model, cost,
                  frame=pd.DataFrame(rows), notes=notes, claims=claims)
    return [table, *(_figure(a) for a in analyses)]


PAPER = Paper(
    name=PAPER_NAME,
    title=("Study: every exit policy (MSDNet/IMTA, GlanceNets, d-gates, max logit, margin, oracle) "
           "on the same backbones"),
    artifacts={"exits": Artifact("exits", "Every exit policy on MSDNet, MSDNet+IMTA and GlanceNet: accuracy vs cost "
                                 "figures and a matched-cost table with real speed-ups", exits_runs, build_exits,
                                 kind="table", baselines=("msdnet", "glancenet"))},
    trainers={"gates": train_gates, "thresholds": train_thresholds},
)
