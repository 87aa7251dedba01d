"""GlanceNets: Sun & Pang, "GlanceNets - efficient convolutional neural networks with
adaptive hard example mining", Sci China Inf Sci 61(10) 109101, 2018.

A CIFAR DenseNet with a bypass classifier (BN-ReLU-GAP-FC) after each dense block but the
last (:class:`repro.models.densenet.GlanceDenseNet`), trained jointly with

- the hard example weight (eq. 1), from the earlier bypasses' detached predictions:
  w_i = σ(Σ_{j<i} [wrong_j](1 - p_j[y]) / Σ_{j<i} [right_j] p_j[y] - 1) + 1/2, in [0.769, 1.5];
- learned entropy thresholds (eq. 4): J_T,i = (1-α)(max right entropy - H_T,i)²
  + α(min wrong entropy - H_T,i)², entropies detached, so one network serves every α.

A sample leaves at the first bypass whose entropy is at most its threshold.  No code was
released: every open choice is ours, listed with its reason in docs/papers/glancenet.md.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from repro import distributed as D
from repro.api import (Artifact, Claim, ConfigError, Figure, Option, Options, Paper, RunConfig, Series, Table,
                       TrainSpec, build_model, ce_step, first_test_images)
from repro.data import dataset_info
from repro.exits import (SCORES, budgeted_sweep, early_exit, exit_index, gap_with_spread, mean_and_spread,
                         per_exit_val_eval, split_accuracies, time_call)
from repro.flops import CONVENTIONS, count_exits, count_model
from repro.models import create_model
from repro.reference_data import paper_gap, paper_value
from repro.render import dataset_name, legend_below, paper_label, sweep_spread
from repro.scales import CIFAR_SIZE, run_data

PAPER_NAME = "glancenet"
COST = "fvcore"  # the paper's "MFLOPs" are multiply-adds; fvcore: 1 MAC = 1, BN counted
ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # the alpha sweep 0.1 .. 1.0

# ---------------------------------------------------------------------------- the method


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Prediction entropy in nats (eq. 3) of softmax(logits), over the last dimension."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def hem_weights(logits: Sequence[torch.Tensor], y: torch.Tensor, last: bool = True) -> torch.Tensor:
    """Hard example weights (eq. 1): exits x batch, row 0 all ones.

    Earlier predictions are constants (computed without gradient).  ``last=False``
    gives the backbone's own (last) classifier weight 1 as well.
    """
    with torch.no_grad():
        probs = torch.stack([z.detach().float().softmax(-1) for z in logits])  # K x B x C
        p_y = probs.gather(2, y.view(1, -1, 1).expand(probs.shape[0], -1, 1)).squeeze(2)  # K x B
        right = probs.argmax(-1) == y
        num = torch.where(right, torch.zeros_like(p_y), 1 - p_y)  # I_ic[y^T (1 - p_j)]
        den = torch.where(right, p_y, torch.zeros_like(p_y))      # I_c[y^T p_j]
        # sums over the exits before i: an exclusive cumulative sum
        num_before = num.cumsum(0) - num
        den_before = den.cumsum(0) - den
        ratio = num_before / torch.where(den_before > 0, den_before, torch.ones_like(den_before))
        w = torch.where(den_before > 0, torch.sigmoid(ratio - 1), torch.ones_like(ratio)) + 0.5
        w[0] = 1.0
        if not last:
            w[-1] = 1.0
    return w


def hem_loss(logits: Sequence[torch.Tensor], y: torch.Tensor, hem: bool = True, last: bool = True) -> torch.Tensor:
    """Sum over classifiers of mean_batch(w_i * CE_i) (eq. 2); ``hem=False``: plain sum of CEs."""
    if not hem:
        return sum(F.cross_entropy(z, y) for z in logits)
    w = hem_weights(logits, y, last)
    return sum((wi * F.cross_entropy(z, y, reduction="none")).mean() for wi, z in zip(w, logits))


def entropy_targets(bypass_logits: Sequence[torch.Tensor], y: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per bypass: max entropy among right predictions, min among wrong ones, and whether each exists.

    All detached; absent values are 0 (and masked by the flags).
    """
    with torch.no_grad():
        ent = torch.stack([entropy(z.detach()) for z in bypass_logits])  # K' x B
        right = torch.stack([z.detach().argmax(-1) == y for z in bypass_logits])
        has_r, has_w = right.any(1), (~right).any(1)
        max_r = torch.where(right, ent, torch.full_like(ent, -math.inf)).amax(1)
        min_w = torch.where(~right, ent, torch.full_like(ent, math.inf)).amin(1)
        max_r = torch.where(has_r, max_r, torch.zeros_like(max_r))
        min_w = torch.where(has_w, min_w, torch.zeros_like(min_w))
    return max_r, min_w, has_r, has_w


class ThresholdBank(nn.Module):
    """Learnable entropy thresholds H_T: one row per alpha, one column per bypass (eq. 4)."""

    def __init__(self, alphas: Sequence[float], num_bypasses: int, num_classes: int, norm: str = "sq",
                 init: float | None = None):
        super().__init__()
        if norm not in ("sq", "abs"):
            raise ConfigError(f"unknown threshold norm '{norm}'; choose one of: sq, abs")
        self.norm = norm
        self.register_buffer("alphas", torch.tensor([float(a) for a in alphas]))
        init = 0.5 * math.log(num_classes) if init is None else float(init)
        self.H = nn.Parameter(torch.full((len(alphas), num_bypasses), init))

    def loss(self, bypass_logits: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Sum over alphas and bypasses of J_T,i for this batch."""
        max_r, min_w, has_r, has_w = entropy_targets(bypass_logits, y)
        a = self.alphas[:, None]
        H = self.H.float()
        d_r, d_w = max_r[None] - H, min_w[None] - H
        dist = (lambda d: d * d) if self.norm == "sq" else torch.abs
        j = (1 - a) * has_r[None] * dist(d_r) + a * has_w[None] * dist(d_w)
        return j.sum()

    def thresholds(self, alpha: float) -> list[float]:
        i = int((self.alphas - alpha).abs().argmin())
        if abs(float(self.alphas[i]) - alpha) > 1e-6:
            raise KeyError(f"alpha {alpha} is not in the bank {self.alphas.tolist()}")
        return self.H[i].detach().float().tolist()


class GlanceTraining(nn.Module):
    """The GlanceNet and its threshold learners, trained together: ``forward(x, y) -> (loss, logits)``."""

    def __init__(self, net: nn.Module, bank: ThresholdBank, hem: bool = True, hem_last: bool = True):
        super().__init__()
        self.net, self.bank, self.hem, self.hem_last = net, bank, hem, hem_last

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        logits = self.net(x)
        loss = hem_loss(logits, y, self.hem, self.hem_last) + self.bank.loss(logits[:-1], y)
        return loss, logits


def glance_exit_index(logits: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """The paper's rule on stored logits (exits x N x C): the first bypass whose entropy is below
    its threshold, else the last classifier.  Written directly, to check the shared evaluator."""
    ent = entropy(logits[:-1])  # K-1 x N
    below = ent < torch.tensor(list(thresholds), dtype=ent.dtype)[:, None]
    below = torch.cat([below, torch.ones_like(below[:1])])
    return below.to(torch.uint8).argmax(0)


def score_thresholds(H: Sequence[float]) -> list[float]:
    """Learned entropy thresholds as thresholds on the shared evaluator's "entropy" score (-entropy)."""
    return [-float(h) for h in H]


# ---------------------------------------------------------------------------- runs


def _sgd(epochs: int, milestones: tuple) -> TrainSpec:
    return TrainSpec(epochs=epochs, batch_size=64, lr=0.1, nesterov=True, weight_decay=1e-4, milestones=milestones)


# Paper scale: Huang et al.'s CIFAR recipe (the letter states none): SGD Nesterov 0.9,
# wd 1e-4, batch 64, lr 0.1 / 10 at 50 % and 75 % of 300 epochs.
# The DenseNet's depth and growth per scale (--set depth/growth override them; bottleneck: the option's default)
MODEL_ARGS = {"paper": dict(depth=40, growth=12), "quick": dict(depth=10, growth=12), "smoke": dict(depth=7, growth=4)}
# Quick: the convergence rule's protocol (docs/calibration.md): all 55k images, 10 epochs of cosine
# decay from the paper's rate, channels_last (1.4x faster on the CPU, bench item 7).
RECIPES = {"paper": _sgd(300, (0.5, 0.75)),
           "quick": replace(_sgd(10, ()), schedule="cosine", memory_format="channels_last"),
           "smoke": _sgd(1, ())}
# real early-exit timing: images timed one at a time, images timed in batches, that batch size
TIMING = {"paper": (500, 10000, 500), "quick": (200, 2000, 250), "smoke": (24, 256, 128)}


def _block_list(raw: str) -> tuple[int, ...]:
    blocks = tuple(sorted({int(v) for v in raw.split(",") if v.strip()}))
    if not blocks:
        raise ValueError("no block given")
    return blocks


_block_list.__name__ = "comma-separated block indices"

OPTIONS = Options({
    "alpha": Option("alpha of table1; the threshold bank always holds 0.1..1.0 as well", float, 0.9, low=0, high=1),
    "hem_alpha": Option("alpha of the hem table", float, 0.5, low=0, high=1),
    "bypass_after": Option("dense blocks (0-based) followed by a bypass; the last block (2) feeds the backbone's "
                           "own classifier", _block_list, "0,1", low=0, high=1),
    "depth": Option("DenseNet depth L, L = 3n + 4 (default: 40 at paper scale, 10 quick, 7 smoke)", int, low=7, high=250),
    "growth": Option("DenseNet growth rate k (default: 12 paper and quick, 4 smoke)", int, low=1, high=64),
    "bottleneck": Option("DenseNet-BC (bottleneck layers, compression 0.5) instead of the plain DenseNet",
                         bool, False),
    "tnorm": Option("threshold loss distance: squared or absolute (the letter's ||.||_2 of a scalar)", str, "sq",
                    choices=("sq", "abs")),
    "hem_last": Option("apply the hard example weight to the backbone's own classifier too", bool, True),
})


def _alpha(request, key: str) -> float:
    """The alpha of table1 (``alpha``) or of the hem table (``hem_alpha``)."""
    return round(OPTIONS.read(request)[key], 4)


def _arch(request) -> dict:
    """The DenseNet and its bypasses: the options given, else the scale's (MODEL_ARGS)."""
    opts, base = OPTIONS.read(request), MODEL_ARGS[request.scale]
    depth, growth, bottleneck = (opts.given("depth", base["depth"]), opts.given("growth", base["growth"]),
                                 opts.bottleneck)
    try:
        create_model("densenet_cifar", depth=depth, growth=growth, bottleneck=bottleneck)  # validates depth
    except ValueError as e:
        raise ConfigError(f"--set depth={depth}: {e}") from None
    return {"depth": depth, "growth": growth, "bottleneck": bottleneck, "bypass_after": list(opts.bypass_after)}


def glance_runs(request) -> dict[str, RunConfig]:
    """{"densenet", "hem", "no-hem"}: the three trainings every artifact draws from."""
    scale = request.scale
    dataset = request.dataset_for("cifar10")
    data = run_data(request, dataset, CIFAR_SIZE)  # any size: the DenseNet pools adaptively
    arch = _arch(request)
    alphas = sorted(set(ALPHAS) | {_alpha(request, "alpha"), _alpha(request, "hem_alpha")})
    opts = OPTIONS.read(request)
    tnorm, hem_last = opts.tnorm, opts.hem_last
    backbone = {k: arch[k] for k in ("depth", "growth", "bottleneck")}
    base = RunConfig(paper=PAPER_NAME, name="densenet", kind="densenet", dataset=dataset, model="densenet_cifar",
                     model_args=backbone, method={}, train=RECIPES[scale], data=data)
    method = {"hem": True, "hem_last": hem_last, "alphas": alphas, "tnorm": tnorm, "threshold_init": "ln(C)/2",
              "empty_batch": "drop the missing half of J_T"}
    hem = RunConfig(paper=PAPER_NAME, name="glancenet-hem", kind="glancenet", dataset=dataset,
                    model="glance_densenet", model_args=arch, method=method, train=RECIPES[scale], data=data)
    nohem = replace(hem, name="glancenet-nohem", method={**method, "hem": False, "hem_last": False})
    return {"densenet": base, "hem": hem, "no-hem": nohem}


def _val_eval(data, unwrap: Callable[[nn.Module], nn.Module], bank_alphas: Sequence[float] = ()):
    """Every exit's validation top-1 and the learned thresholds at ``bank_alphas`` after each epoch."""
    exits = per_exit_val_eval(data, unwrap)

    def evaluate(model) -> dict:
        row = exits(model)
        bank = getattr(D.unwrap(model), "bank", None)
        for alpha in bank_alphas:
            for i, h in enumerate(bank.thresholds(alpha)):
                row[f"H_a{alpha:g}_b{i + 1}"] = h
        return row
    return evaluate


def train_densenet(ctx) -> dict:
    data = ctx.data()
    info = data.info
    model = ctx.to_device(build_model(ctx.cfg, info))
    ctx.fit(model, ce_step, "train", eval_fn=per_exit_val_eval(data))
    ctx.save_model(model)
    out = ctx.collect_outputs(model)
    cost = count_model(model.eval(), (info.in_channels, info.image_size, info.image_size), convention=COST)
    return {**split_accuracies(out), "cost": cost.macs, "params": cost.params, "cost_convention": COST}


def train_glancenet(ctx) -> dict:
    data = ctx.data()
    info = data.info
    m = ctx.cfg.method
    net = build_model(ctx.cfg, info)
    bank = ThresholdBank(m["alphas"], net.num_exits - 1, info.num_classes, norm=m["tnorm"])
    trainer = ctx.to_device(GlanceTraining(net, bank, hem=m["hem"], hem_last=m["hem_last"]))
    shown = [a for a in (OPTIONS["hem_alpha"].default, OPTIONS["alpha"].default)
             if any(abs(a - b) < 1e-9 for b in m["alphas"])]
    ctx.fit(trainer, lambda mod, x, y: mod(x, y), "train", eval_fn=_val_eval(data, lambda t: t.net, shown))
    net = trainer.net
    ctx.save_model(net)
    ctx.save_model(trainer.bank, "thresholds")
    out = ctx.collect_outputs(net)
    shape = (info.in_channels, info.image_size, info.image_size)
    costs = count_exits(net.eval(), shape, convention=COST)
    backbone = count_model(net.backbone, shape, convention=COST)
    return {**split_accuracies(out), "alphas": list(m["alphas"]), "thresholds": [trainer.bank.thresholds(a) for a in m["alphas"]],
            "costs": costs["cost"].tolist(), "params": costs["params"].tolist(),
            "backbone_cost": backbone.macs, "backbone_params": backbone.params, "cost_convention": COST}


# ---------------------------------------------------------------------------- evaluation


def learned(result: dict, alpha: float) -> list[float]:
    """The learned entropy thresholds of ``alpha`` stored in a run's results."""
    alphas, bank = result["alphas"], result["thresholds"]
    if not (isinstance(bank, list) and len(bank) == len(alphas)
            and all(isinstance(h, list) and all(isinstance(v, (int, float)) for v in h) for h in bank)):
        why = f"its thresholds are not one list of numbers per alpha ({len(alphas)} alphas)"
        raise result.bad(why) if hasattr(result, "bad") else ValueError(why)
    for a, h in zip(alphas, bank):
        if abs(a - alpha) < 1e-6:
            return h
    raise KeyError(f"alpha {alpha} was not trained; the bank holds {result['alphas']}")


def policy(logits: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float], costs: Sequence[float],
           score: str = "entropy") -> dict[str, torch.Tensor]:
    """Per-sample outcome of exit thresholds on stored logits (shared evaluator's exit rule):
    exit index, right or wrong, cost paid."""
    t = torch.tensor(list(thresholds) + [-math.inf], dtype=torch.float64)
    idx = exit_index(SCORES[score](logits), t)
    n = labels.numel()
    pred = logits.argmax(-1)[idx, torch.arange(n)]
    return {"exit": idx, "correct": (pred == labels).double(),
            "cost": torch.as_tensor(costs, dtype=torch.float64)[idx]}


def full_outcome(logits: torch.Tensor, labels: torch.Tensor, cost: float, exit_no: int = -1) -> dict:
    """Every sample classified by one exit (no early exit)."""
    correct = (logits[exit_no].argmax(-1) == labels).double()
    return {"exit": torch.full_like(labels, logits.shape[0] - 1 if exit_no < 0 else exit_no), "correct": correct,
            "cost": torch.full_like(correct, float(cost))}


Stat = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def stat_spread(per_seed: Sequence[dict[str, torch.Tensor]], stat: Stat, n_boot: int = 1000, seed: int = 0
                ) -> tuple[float, float]:
    """A statistic of per-sample outcomes (reduced over the last dimension) and its spread, by the
    core's rule (:func:`repro.exits.gap_with_spread`) carried over to statistics that are not a mean
    of per-sample values (average cost, FLOPs reduction, speed-up = baseline cost / average cost).

    Several seeds: the mean and its 95 % t-interval over seeds (mean_and_spread).  One seed: the
    value and the half-width of the 95 % percentile bootstrap interval over test samples (paired:
    the same resampled samples for every tensor in the dict), the resampling of bootstrap_ci.
    """
    values = [float(stat(d)) for d in per_seed]
    if len(values) > 1:
        return mean_and_spread(values)
    d = per_seed[0]
    n = next(iter(d.values())).shape[-1]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)
    boot = stat({k: v[idx] for k, v in d.items()}).double()
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return values[0], float(hi - lo) / 2


def acc_stat(d): return d["correct"].mean(-1) * 100  # noqa: E704
def cost_stat(d): return d["cost"].mean(-1) / 1e6  # noqa: E704


def cost_stats(base_cost: float) -> dict[str, Stat]:
    """The table columns of an exit policy's outcomes, against the DenseNet's cost ``base_cost``."""
    return {"top1": acc_stat, "mflops": cost_stat,
            "flops_reduction_pct": lambda d: 100 * (1 - d["cost"].mean(-1) / base_cost),
            "speedup": lambda d: base_cost / d["cost"].mean(-1)}


def cells(row: str, outs: Sequence[dict], stats: dict[str, Stat]) -> list[dict]:
    """Long table rows {row, column, value, spread} of ``stats`` on one policy's outcomes."""
    return [{"row": row, "column": c, **dict(zip(("value", "spread"), stat_spread(outs, f)))}
            for c, f in stats.items()]


def exit_shares(row: str, outs: Sequence[dict], k_exits: int) -> list[dict]:
    """% of the test samples leaving at each classifier."""
    return cells(row, outs, {f"exit{k + 1}_pct": (lambda d, k=k: (d["exit"] == k).double().mean(-1) * 100)
                             for k in range(k_exits)})


def speedup_gap(a: Sequence[dict], b: Sequence[dict], base_cost: float):
    """Speed-up (from FLOPs) of policy ``a`` minus policy ``b``, paired over the same test samples."""
    pairs = [{"a": x["cost"], "b": y["cost"]} for x, y in zip(a, b)]
    return stat_evidence(pairs, lambda d: base_cost / d["a"].mean(-1) - base_cost / d["b"].mean(-1))


def stat_evidence(per_seed: Sequence[dict[str, torch.Tensor]], stat: Stat):
    """A claim's evidence for a statistic that is not a mean of per-image values (a speed-up): one
    value per seed and its t-interval over seeds (:func:`repro.stats.seeds_evidence`); at one seed,
    the paired bootstrap over test images of :func:`stat_spread`, shown without a verdict."""
    from repro import stats as S

    if len(per_seed) > 1:
        return S.seeds_evidence([float(stat(d)) for d in per_seed])
    return S.one_seed(*stat_spread(per_seed, stat), images=next(iter(per_seed[0].values())).shape[-1])


def reduction_evidence(outs: Sequence[dict], base_cost: float, arms=None):
    """The FLOPs reduction (%) of a policy against the backbone's cost, as per-image evidence: each test
    image's saving 1 - cost / base against nothing, so that the core's rule counts the seeds and the
    test images (the mean of the savings is the reduction); ``arms``: the runs behind both sides."""
    return gap_with_spread([1 - o["cost"].double() / base_cost for o in outs],
                           [torch.zeros_like(o["cost"], dtype=torch.float64) for o in outs], arms=arms)


def _right(outs: Sequence[dict]) -> list[torch.Tensor]:
    return [o["correct"] for o in outs]


def _test_io(rr) -> tuple[torch.Tensor, torch.Tensor]:
    return rr.outputs["test_logits"], rr.outputs["test_labels"]


def _val_io(rr) -> tuple[torch.Tensor, torch.Tensor]:
    return rr.outputs["val_logits"], rr.outputs["val_labels"]


def outcomes(rrs, alpha: float, split: str = "test") -> list[dict]:
    """Per seed, the outcome of the learned thresholds of ``alpha`` on the ``split`` logits."""
    return [policy(*(_test_io if split == "test" else _val_io)(rr), score_thresholds(learned(rr.results, alpha)),
                   rr.results["costs"]) for rr in rrs]


def searched_at_cost(rr, target_val_cost: float) -> tuple[list[float], dict]:
    """Entropy thresholds searched on validation (the shared budgeted sweep), at the budget whose
    validation cost is closest to ``target_val_cost``; returns the thresholds and its sweep row."""
    vl, vy = _val_io(rr)
    tl, ty = _test_io(rr)
    sweep = budgeted_sweep(vl, vy, tl, ty, rr.results["costs"], "entropy")
    row = sweep.iloc[int((sweep["val_cost"] - target_val_cost).abs().argmin())]
    return list(row["thresholds"][:-1]), row.to_dict()


# ---------------------------------------------------------------------------- wall clock


def load_glancenet(rr, device: torch.device) -> nn.Module:
    # the class count of the trained model (ImageNet below 224 px: its tree's, not 1000)
    info = replace(dataset_info(rr.cfg.dataset, rr.cfg.data.image_size),
                   num_classes=int(rr.outputs["test_logits"].shape[-1]))
    net = build_model(rr.cfg, info)
    rr.load_into(net, map_location=device)
    return net.to(device).eval()


@torch.no_grad()
def wall_speedup(net, x: torch.Tensor, thresholds: Sequence[float] | None, batch_size: int,
                 warmup: int = 1, repeats: int = 3) -> float:
    """Wall-clock time of the bare backbone (the DenseNet) over that of real early exit
    (``thresholds`` on the entropy score; None: every sample through every classifier)."""
    device = x.device
    chunks = list(x.split(batch_size))
    backbone = net.backbone.eval()
    net.eval()

    def base():
        for c in chunks:
            backbone(c)

    def glance():
        for c in chunks:
            if thresholds is None:
                net(c)
            else:
                early_exit(net, c, thresholds, "entropy")

    t_base = time_call(base, device, warmup, repeats)
    t_glance = time_call(glance, device, warmup, repeats)
    return t_base / t_glance


def timing_note(settings, request) -> str:
    n1, nb, bs = TIMING[request.scale]
    dev = D.resolve_device(settings.device)
    return (f"wall-clock speed-ups: DenseNet backbone vs real early exit (later stages skipped for exited "
            f"samples), median of 3 after warm-up, on {dev} ({torch.get_num_threads()} CPU threads), "
            f"batch 1 over {n1} test images and batch {bs} over {nb}; measured when this table was built")


# ---------------------------------------------------------------------------- artifacts


def _paper(artifact: str, row: str, column: str) -> float | None:
    return paper_value(PAPER_NAME, artifact, row, column)


def _model(cfg: RunConfig) -> str:
    a = cfg.model_args
    return (f"DenseNet{'-BC' if a['bottleneck'] else ''} L={a['depth']} k={a['growth']}, "
            f"bypasses after dense blocks {', '.join(str(b + 1) for b in a['bypass_after'])}")


def _method_note(cfg: RunConfig) -> str:
    m = cfg.method
    return (f"thresholds: eq. 4 with {'squared' if m['tnorm'] == 'sq' else 'absolute'} distances; "
            f"hard example weight on the last classifier: {'yes' if m['hem_last'] else 'no'}")


def _table(title: str, cfg: RunConfig, ours: list[dict], labels: dict, columns: list[str], notes, claims) -> Table:
    return Table(title, cfg.dataset, _model(cfg), CONVENTIONS[COST], ours, list(labels), columns, labels,
                 notes=[_method_note(cfg), *notes], claims=claims, column_names={"mflops": "mmacs"})


def _thresholds(h: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in h)


def table1_runs(request):
    r = glance_runs(request)
    return {"densenet": r["densenet"], "hem": r["hem"]}


def build_table1(request, runs, settings):
    """DenseNet against GlanceNet at table1's alpha, three ways: the learned thresholds, no early
    exit, and entropy thresholds searched on validation at the learned ones' validation cost."""
    alpha = _alpha(request, "alpha")
    dense_rr, glance_rr = runs["densenet"], runs["hem"]
    base_cost = dense_rr[0].results["cost"]
    assert abs(glance_rr[0].results["backbone_cost"] - base_cost) < 1e-6 * base_cost, "backbones differ"
    k_exits = len(glance_rr[0].results["costs"])

    learn, learn_val = outcomes(glance_rr, alpha), outcomes(glance_rr, alpha, "val")
    search = [searched_at_cost(rr, float(v["cost"].mean())) for rr, v in zip(glance_rr, learn_val)]
    policies = {"densenet": [full_outcome(*_test_io(rr), rr.results["cost"], 0) for rr in dense_rr],
                "glancenet-full": [full_outcome(*_test_io(rr), rr.results["costs"][-1]) for rr in glance_rr],
                "glancenet": learn,
                "glancenet-valsearch": [policy(*_test_io(rr), t, rr.results["costs"])
                                        for rr, (t, _) in zip(glance_rr, search)]}
    timed = {"glancenet-full": None, "glancenet": score_thresholds(learned(glance_rr[0].results, alpha)),
             "glancenet-valsearch": search[0][0]}  # seed 0's thresholds, timed by real early exit
    device = D.resolve_device(settings.device)
    net = load_glancenet(glance_rr[0], device)
    n1, nb, bs = TIMING[request.scale]
    x = first_test_images(glance_rr[0].cfg, settings, max(n1, nb), device)
    stats = cost_stats(base_cost)
    ours = []
    for key, outs in policies.items():
        wall = (1.0, 1.0) if key == "densenet" else (wall_speedup(net, x[:n1], timed[key], 1),
                                                     wall_speedup(net, x[:nb], timed[key], bs))
        ours += [*cells(key, outs, stats), {"row": key, "column": "wall_speedup_b1", "value": wall[0]},
                 {"row": key, "column": "wall_speedup_batched", "value": wall[1]},
                 *(exit_shares(key, outs, k_exits) if key != "densenet" else [])]

    paper_speedup = _paper("table1", "glancenet", "speedup")
    claims = [Claim(f"top-1 of GlanceNet (alpha={alpha:g}) minus DenseNet (points)",
                    gap_with_spread(_right(learn), _right(policies["densenet"]), arms=("hem", "densenet")),
                    paper_gap(PAPER_NAME, "table1", "glancenet", "densenet", "top1")),
              Claim("FLOPs reduction of GlanceNet vs DenseNet (%)",
                    reduction_evidence(learn, base_cost, arms=("hem", ())),
                    _paper("table1", "glancenet", "flops_reduction_pct"), headline=True),
              Claim("speed-up from FLOPs minus 1", stat_evidence(learn, lambda d: stats["speedup"](d) - 1),
                    None if paper_speedup is None else paper_speedup - 1),
              Claim("top-1 of learned minus validation-searched thresholds at the same validation cost (points)",
                    gap_with_spread(_right(learn), _right(policies["glancenet-valsearch"]), arms=("hem", "hem")),
                    None)]
    (t0, row0), d_mf, g_mf = search[0], _paper("table1", "densenet", "mflops"), _paper("table1", "glancenet", "mflops")
    notes = [f"learned entropy thresholds (alpha={alpha:g}, seed 0): "
             f"{_thresholds(learned(glance_rr[0].results, alpha))}; searched on validation (seed 0): "
             f"{_thresholds([-t for t in t0])} (validation cost {float(learn_val[0]['cost'].mean()) / 1e6:.3f} "
             f"vs {row0['val_cost'] / 1e6:.3f} MMACs, budget {int(row0['budget'])})",
             f"the paper prints {d_mf:g} -> {g_mf:g} MFLOPs as "
             f"'{_paper('table1', 'glancenet', 'flops_reduction_pct'):g} % reduced, {paper_speedup:g}x'; "
             f"{g_mf:g}/{d_mf:g} is {100 * (1 - g_mf / d_mf):.1f} %, {d_mf / g_mf:.2f}x (repro/reference/README.md)",
             "paper 'speedup' is FLOPs-derived in table1; ours in 'speedup' too; wall-clock columns beside",
             timing_note(settings, request)]
    labels = {"densenet": "DenseNet (baseline)", "glancenet-full": "GlanceNet, no early exit",
              "glancenet": f"GlanceNet, learned thresholds (alpha={alpha:g})",
              "glancenet-valsearch": "GlanceNet, thresholds searched on val at the same val cost"}
    cols = [*stats, "wall_speedup_b1", "wall_speedup_batched", *[f"exit{k + 1}_pct" for k in range(k_exits)]]
    return _table("DenseNet vs GlanceNet: top-1 (%), average cost and speed-up (CIFAR-10)", runs.config("hem"), ours, labels,
                  cols, notes, claims)


def hem_runs(request):
    r = glance_runs(request)
    return {"no-hem": r["no-hem"], "hem": r["hem"]}


def build_hem(request, runs, settings):
    """The hem table's alpha with and without the hard example weight; the claim is HEM's gain
    in top-1 and speed-up, and the extra share of samples that leave at the first bypass."""
    alpha = _alpha(request, "hem_alpha")
    base_cost = runs["hem"][0].results["backbone_cost"]
    k_exits = len(runs["hem"][0].results["costs"])
    outs = {key: outcomes(runs[key], alpha) for key in ("no-hem", "hem")}
    stats = {c: f for c, f in cost_stats(base_cost).items() if c != "flops_reduction_pct"}
    device = D.resolve_device(settings.device)
    n1, nb, bs = TIMING[request.scale]
    x = first_test_images(runs["no-hem"][0].cfg, settings, nb, device)
    ours = []
    for key, o in outs.items():
        rr0 = runs[key][0]
        wb = wall_speedup(load_glancenet(rr0, device), x[:nb], score_thresholds(learned(rr0.results, alpha)), bs)
        last = [full_outcome(*_test_io(rr), rr.results["costs"][-1]) for rr in runs[key]]
        ours += [*cells(key, o, stats), *cells(key, last, {"top1_last_classifier": acc_stat}),
                 {"row": key, "column": "wall_speedup_batched", "value": wb}, *exit_shares(key, o, k_exits)]
    at_first = {key: [(d["exit"] == 0).double() for d in o] for key, o in outs.items()}
    extra = gap_with_spread(at_first["hem"], at_first["no-hem"], arms=("hem", "no-hem"))
    ours.append({"row": "hem", "column": "first_bypass_extra_pct", "value": extra.gap, "spread": extra.halfwidth()})

    claims = [Claim("top-1 with HEM minus without (points)",
                    gap_with_spread(_right(outs["hem"]), _right(outs["no-hem"]), arms=("hem", "no-hem")),
                    paper_gap(PAPER_NAME, "hem", "hem", "no-hem", "top1"), headline=True),
              Claim("speed-up with HEM minus without (FLOPs-derived)",
                    speedup_gap(outs["hem"], outs["no-hem"], base_cost),
                    paper_gap(PAPER_NAME, "hem", "hem", "no-hem", "speedup")),
              Claim("samples at the first bypass, with HEM minus without (points)", extra,
                    _paper("hem", "hem", "first_bypass_extra_pct"))]
    notes = ["learned thresholds (seed 0): " + "; ".join(f"{k}: {_thresholds(learned(runs[k][0].results, alpha))}"
                                                         for k in outs),
             "the paper's speed-ups here are from inference time on its GPU; 'speedup' is ours from FLOPs, "
             f"'wall_speedup_batched' ours from wall-clock; the paper's "
             f"'{_paper('hem', 'hem', 'first_bypass_extra_pct'):g} %' is read as percentage points",
             timing_note(settings, request)]
    labels = {"no-hem": f"GlanceNet without HEM (alpha={alpha:g})", "hem": f"GlanceNet with HEM (alpha={alpha:g})"}
    cols = ["top1", "top1_last_classifier", "mflops", "speedup", "wall_speedup_batched",
            *[f"exit{k + 1}_pct" for k in range(k_exits)], "first_bypass_extra_pct"]
    return _table("Hard example weight on/off: top-1 (%), speed-up, exits per bypass (%) (CIFAR-10)", runs.config("hem"),
                  ours, labels, cols, notes, claims)


def alpha_runs(request):
    return {"hem": glance_runs(request)["hem"]}


def alpha_frame(rrs) -> pd.DataFrame:
    """Per alpha of the bank: top-1, MMACs and speed-up of its learned thresholds, the thresholds
    themselves (mean over seeds) and the exit shares; ``<column>_spread`` beside each."""
    res0 = rrs[0].results
    stats = {c: f for c, f in cost_stats(res0["backbone_cost"]).items() if c != "flops_reduction_pct"}
    recs = []
    for alpha in res0["alphas"]:
        outs = outcomes(rrs, alpha)
        rec = {"alpha": alpha}
        for c, f in stats.items():
            rec[c], rec[f"{c}_spread"] = stat_spread(outs, f)
        H = np.array([learned(rr.results, alpha) for rr in rrs])  # seeds x bypasses
        for i in range(H.shape[1]):
            rec[f"H_bypass{i + 1}"], rec[f"H_bypass{i + 1}_spread"] = mean_and_spread(H[:, i])
        for k in range(len(res0["costs"])):
            rec[f"exit{k + 1}_pct"] = float(np.mean([(o["exit"] == k).double().mean() * 100 for o in outs]))
        recs.append(rec)
    return pd.DataFrame(recs)


def _trend(values: Sequence[float]) -> str:
    d = np.diff(np.asarray(values, dtype=float))
    return f"{int((d > 0).sum())} rises, {int((d < 0).sum())} falls, {int((d == 0).sum())} ties"


def build_alpha(request, runs, settings):
    """Top-1, speed-up and the learned thresholds against alpha; the paper's claim, alpha 0.1 vs
    1.0: thresholds fall, accuracy rises, speed falls."""
    cfg, rrs = runs.config("hem"), runs["hem"]
    df = alpha_frame(rrs)
    sweep = df[df["alpha"].isin(ALPHAS)]
    hcols = [c for c in df.columns if c.startswith("H_bypass") and not c.endswith("_spread")]
    lo_a, hi_a = outcomes(rrs, min(ALPHAS)), outcomes(rrs, max(ALPHAS))
    claims = [Claim("top-1 at alpha=1.0 minus alpha=0.1 (points; paper: larger alpha, higher accuracy)",
                    gap_with_spread(_right(hi_a), _right(lo_a), arms=("hem", "hem")), None, sign=+1),
              Claim("speed-up at alpha=1.0 minus alpha=0.1 (paper: larger alpha, slower)",
                    speedup_gap(hi_a, lo_a, rrs[0].results["backbone_cost"]), None, sign=-1)]
    notes = [_method_note(cfg), *[f"{c} along alpha 0.1 -> 1.0: {_trend(sweep[c])} (paper: falls)" for c in hcols],
             f"top-1 along alpha: {_trend(sweep['top1'])} (paper: rises); "
             f"speed-up: {_trend(sweep['speedup'])} (paper: falls)",
             "one network: alpha only moves the thresholds (detached entropies), all alphas learned side by side",
             "paper: no per-alpha sweep, only the trend, the suggested range (shaded) and the two alphas of "
             "table1 and hem (red stars, CIFAR-10, right axes)"]
    paper, lo, hi = _alpha_paper()
    table1_alpha = _alpha(request, "alpha")

    def draw():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
        err = lambda c: sweep[f"{c}_spread"] if request.seeds > 1 or not c.startswith("H_") else None  # noqa: E731
        axes[0].errorbar(sweep["alpha"], sweep["top1"], yerr=err("top1"), fmt="-o", capsize=3,
                         label=f"ours: {dataset_name(cfg.dataset)}, learned thresholds")
        axes[0].set_ylabel(f"test top-1 (%) on {dataset_name(cfg.dataset)}")
        axes[1].errorbar(sweep["alpha"], sweep["speedup"], yerr=err("speedup"), fmt="-o", capsize=3,
                         label=f"ours: {dataset_name(cfg.dataset)}")
        axes[1].set_ylabel("speed-up vs DenseNet (x, from MMACs)")
        for c in hcols:
            axes[2].errorbar(sweep["alpha"], sweep[c], yerr=err(c), fmt="-o", capsize=3,
                             label=c.replace("H_bypass", "bypass "))
        axes[2].set_ylabel("learned entropy threshold H_T (nats)")
        for ax, col, what in ((axes[0], "top1", "top-1 (%)"), (axes[1], "speedup", "speed-up (x)")):
            # the paper's CIFAR-10 numbers on an axis of their own (right, red): another dataset
            pts = paper.dropna(subset=[col])
            if len(pts):
                twin = ax.twinx()
                twin.plot(pts["alpha"], pts[col], "*", ms=11, color="tab:red", label=paper_label("cifar10", what))
                for _, p in pts.iterrows():
                    note = p["reference"].split("/")[0] + (f" ({p['note']})" if col == "speedup" else "")
                    left = p["alpha"] < 0.8
                    twin.annotate(note, (p["alpha"], p[col]), xytext=(7 if left else -7, -3),
                                  textcoords="offset points", fontsize=6.5, color="tab:red",
                                  ha="left" if left else "right")
                twin.set_ylabel(f"{paper_label('cifar10', what)} (stars)", color="tab:red")
                twin.tick_params(axis="y", colors="tab:red")
                span = float(pts[col].max() - pts[col].min()) or 1.0
                twin.set_ylim(float(pts[col].min()) - span, float(pts[col].max()) + span)
                lines, names = ax.get_legend_handles_labels()
                more, more_names = twin.get_legend_handles_labels()
                legend_below(ax, lines + more, names + more_names, fontsize=7, ncol=1)
        for ax in axes:
            if lo is not None and hi is not None:
                ax.axvspan(lo, hi, color="0.9", zorder=0)
            ax.axvline(table1_alpha, color="0.3", lw=0.8, ls="--")
            ax.set_xlabel("alpha (threshold loss, eq. 4)")
            ax.grid(alpha=0.3)
        keys = [Line2D([], [], color="0.3", lw=0.8, ls="--", label=f"alpha of table1 ({table1_alpha:g})")]
        if lo is not None and hi is not None:
            keys.insert(0, Patch(color="0.9", label=f"grey: the paper's suggested alpha range ({lo:g}-{hi:g})"))
        lines, names = axes[2].get_legend_handles_labels()
        legend_below(axes[2], lines + keys, names + [k.get_label() for k in keys], fontsize=7, ncol=1)
        return fig

    data = pd.concat([df.assign(source="ours"), paper.drop(columns="note").assign(source="paper")], ignore_index=True)
    return Figure("Top-1, speed-up (FLOPs) and learned thresholds against alpha", cfg.dataset, _model(cfg),
                  CONVENTIONS[COST], data=data, draw=draw, notes=notes, claims=claims)


def _alpha_paper() -> tuple[pd.DataFrame, float | None, float | None]:
    """The paper's numbers against alpha (repro/reference/glancenet.csv, CIFAR-10): top-1 and
    speed-up at the alpha of table1 and of hem, and the suggested range (lo, hi)."""
    recs = []
    for artifact, row, how in (("table1", "glancenet", "from FLOPs"), ("hem", "hem", "from time")):
        a = _paper("alpha", artifact, "alpha")
        if a is not None:
            recs.append({"alpha": a, "top1": _paper(artifact, row, "top1"), "speedup": _paper(artifact, row, "speedup"),
                         "reference": f"{artifact}/{row}", "note": how})
    lo, hi = (_paper("alpha", "suggested", c) for c in ("alpha_min", "alpha_max"))
    return pd.DataFrame(recs, columns=["alpha", "top1", "speedup", "reference", "note"]), lo, hi


def tradeoff_runs(request):
    r = glance_runs(request)
    return {"densenet": r["densenet"], "hem": r["hem"]}


def build_tradeoff(request, runs, settings):
    """Accuracy against cost: the learned thresholds of every alpha, entropy thresholds searched on
    validation along the budgeted sweep, the DenseNet, and GlanceNet without early exit."""
    cfg, rrs = runs.config("hem"), runs["hem"]
    df = alpha_frame(rrs)
    sweeps = [budgeted_sweep(*_val_io(rr), *_test_io(rr), rr.results["costs"], "entropy") for rr in rrs]
    acc, acc_err, what = sweep_spread(sweeps, [_test_io(rr) for rr in rrs], "entropy")
    cost = np.array([s["cost"].to_numpy() for s in sweeps]).mean(0) / 1e6
    b_acc, b_s = stat_spread([full_outcome(*_test_io(rr), rr.results["cost"], 0) for rr in runs["densenet"]], acc_stat)
    b_cost = runs["densenet"][0].results["cost"] / 1e6
    f_acc, f_s = stat_spread([full_outcome(*_test_io(rr), rr.results["costs"][-1]) for rr in rrs], acc_stat)
    f_cost = rrs[0].results["costs"][-1] / 1e6
    series = [Series("thresholds searched on validation (budgeted sweep, entropy)", cost.tolist(), acc, acc_err),
              Series("learned thresholds (one point per alpha 0.1..1.0)", df["mflops"].tolist(), df["top1"].tolist(),
                     df["top1_spread"].tolist(), kind="points"),
              Series("DenseNet baseline", [b_cost], [b_acc], [b_s], kind="points"),
              Series("GlanceNet, no early exit", [f_cost], [f_acc], [f_s], kind="points")]
    paper, precs = _tradeoff_paper()
    data = pd.concat([
        pd.DataFrame({"method": "val-searched", "budget": sweeps[0]["budget"], "mflops": cost,
                      "top1": acc, "top1_spread": acc_err, "spread": what}),
        pd.DataFrame({"method": "learned", "alpha": df["alpha"], "mflops": df["mflops"], "top1": df["top1"],
                      "top1_spread": df["top1_spread"]}),
        pd.DataFrame({"method": ["densenet", "glancenet-no-exit"], "mflops": [b_cost, f_cost],
                      "top1": [b_acc, f_acc], "top1_spread": [b_s, f_s]}),
    ], ignore_index=True).assign(source="ours")
    data = pd.concat([data, pd.DataFrame(precs)], ignore_index=True)
    same = request.scale == "paper" and cfg.dataset == "cifar10"  # the paper's setting: one axis
    return Figure("Accuracy vs cost, learned vs val-searched thresholds", cfg.dataset, _model(cfg), CONVENTIONS[COST],
                  series, f"average cost per image (MMACs, {COST} counter)",
                  f"test top-1 (%) on {dataset_name(cfg.dataset)}", data=data, paper=paper,
                  paper_axes=None if same else ("MMACs per image (the paper's \"MFLOPs\")",
                                                f"top-1 (%) on {dataset_name('cifar10')}"),
                  paper_title=paper_label("cifar10", "results text"), legend="right",
                  notes=[_method_note(cfg), "validation-searched thresholds: repro.exits.budgeted_sweep on the "
                         "entropy score, fitted on the held-out validation split, applied to test; band: " + what])


def _tradeoff_paper() -> tuple[list[Series], list[dict]]:
    """The paper's accuracy-vs-cost numbers (repro/reference/glancenet.csv, CIFAR-10): GlanceNet at
    the alpha of table1, and DenseNet's cost (its top-1 is not printed: a vertical line)."""
    series, recs = [], []
    a = _paper("alpha", "table1", "alpha")
    g_cost, g_acc = (_paper("table1", "glancenet", c) for c in ("mflops", "top1"))
    if g_cost is not None and g_acc is not None:
        label = paper_label("cifar10", f"GlanceNet, alpha={a:g}" if a is not None else "GlanceNet")
        series.append(Series(label, [g_cost], [g_acc], kind="paper", color="tab:red"))
        recs.append({"method": label, "source": "paper", "alpha": a, "mflops": g_cost, "top1": g_acc})
    d_cost = _paper("table1", "densenet", "mflops")
    if d_cost is not None:
        label = paper_label("cifar10", f"DenseNet, {d_cost:g} MMACs (top-1 not printed)")
        series.append(Series(label, [d_cost], [math.nan], kind="vline", color="tab:green"))
        recs.append({"method": label, "source": "paper", "mflops": d_cost, "top1": math.nan})
    return series, recs


PAPER = Paper(
    name=PAPER_NAME,
    title="Sun & Pang, GlanceNets: efficient CNNs with adaptive hard example mining (Sci China Inf Sci 2018)",
    artifacts={a.name: a for a in [
        Artifact("table1", "DenseNet vs GlanceNet (alpha 0.9): top-1, MFLOPs, reduction, speed-up (FLOPs, wall clock)",
                 table1_runs, build_table1, kind="table", baselines=("densenet",),
                 headline=True),
        Artifact("hem", "alpha 0.5 with and without the hard example weight: top-1, speed-up, exits per bypass",
                 hem_runs, build_hem, kind="table", baselines=("no-hem",), headline=True),
        Artifact("alpha", "Top-1, speed-up and learned thresholds against alpha 0.1..1.0 (figure + CSV)",
                 alpha_runs, build_alpha, kind="figure", baselines=("hem",)),
        Artifact("tradeoff", "Accuracy vs cost: learned thresholds per alpha, validation-searched curve, DenseNet",
                 tradeoff_runs, build_tradeoff, kind="figure", baselines=("densenet",)),
    ]},
    trainers={"densenet": train_densenet, "glancenet": train_glancenet},
    options=OPTIONS,
)
