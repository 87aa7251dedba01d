"""Item 1: budgeted-batch threshold fitting + test evaluation (39 budgets, 5,000 validation and
10,000 test samples, 7 exits, 100 classes, synthetic outputs): :func:`repro.exits.budgeted_sweep`
against :func:`reference_sweep`, a per-sample loop in the style of the authors' dynamic
evaluation; both must give the same thresholds, exits, accuracies and costs.  Target >= 100x."""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import torch

from benchmarks.harness import TARGETS, Figure, Sizes, alternate
from repro.nn import threads
from repro.timing import timed

# IMTA Table 1 cumulative costs (MSDNet counter, ANCHORS.md): the costs item 1 averages.
TABLE1_COSTS = [6.86e6, 14.35e6, 27.29e6, 48.45e6, 76.43e6, 108.85e6, 137.28e6]


def synthetic_outputs(num_exits: int, n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits exits x n x classes whose later exits are more often right and surer."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    z = torch.randn(num_exits, n, classes, generator=g)
    signal = torch.linspace(1.0, 4.0, num_exits)[:, None] * torch.rand(num_exits, n, generator=g) * 2
    z[:, torch.arange(n), y] += signal
    return z, y


def reference_sweep(val_logits: torch.Tensor, val_labels: torch.Tensor, test_logits: torch.Tensor,
                    test_labels: torch.Tensor, costs: Sequence[float], budgets: Sequence[int]) -> list[dict]:
    """Budgeted batch classification one sample at a time: the baseline of item 1.

    The protocol of ANCHORS.md, written the way the authors' dynamic evaluation is: scores
    and predictions as tensors, then Python loops over samples reading one element at a
    time.  For exit k, walk the validation samples in descending confidence, counting those
    no earlier exit took; the threshold is the confidence of the floor(n p_k)-th (nobody
    exits if there are too few); then every sample exits at the first exit whose confidence
    reaches its threshold.  (Predictions are the logits' argmax, as in ours; the authors take
    the argmax of the softmax, which can differ only on ties the softmax rounding creates.)
    """
    from repro.exits import budget_distributions

    num_exits, n = val_logits.shape[:2]
    vconf = val_logits.softmax(2).max(2).values
    tconf = test_logits.softmax(2).max(2).values
    vpred, tpred = val_logits.argmax(2), test_logits.argmax(2)
    order = vconf.sort(dim=1, descending=True).indices

    def evaluate(conf, pred, labels, T):
        m = labels.shape[0]
        counts, hits = [0] * num_exits, 0
        for i in range(m):
            for k in range(num_exits):
                if conf[k][i].item() >= T[k]:
                    if int(labels[i].item()) == int(pred[k][i].item()):
                        hits += 1
                    counts[k] += 1
                    break
        cost = sum(counts[k] * costs[k] for k in range(num_exits)) / m
        return {"acc": hits / m * 100, "cost": cost, "fractions": [c / m for c in counts]}

    rows = []
    for budget, p in zip(budgets, budget_distributions(num_exits, budgets)):
        T = torch.full((num_exits,), math.inf, dtype=torch.float64)
        filtered = torch.zeros(n)
        for k in range(num_exits - 1):
            want, count = math.floor(n * float(p[k])), 0
            for i in range(n):
                j = order[k][i]
                if filtered[j] == 0:
                    count += 1
                    if count == want:
                        T[k] = vconf[k][j].item()
                        break
            filtered.add_(vconf[k].double().ge(T[k]).to(filtered.dtype))
        T[num_exits - 1] = -math.inf
        v, r = evaluate(vconf, vpred, val_labels, T), evaluate(tconf, tpred, test_labels, T)
        rows.append({"budget": budget, "thresholds": T.tolist(), "val_acc": v["acc"], "val_cost": v["cost"],
                     "val_fractions": v["fractions"], "acc": r["acc"], "cost": r["cost"],
                     "fractions": r["fractions"]})
    return rows


def compare_sweeps(ours: pd.DataFrame, ref: list[dict]) -> str:
    """Raise if the two sweeps differ; return how exactly they agree."""
    if len(ours) != len(ref):
        raise AssertionError(f"item 1: {len(ours)} budgets vs {len(ref)} in the reference")
    exact = True
    for row, r in zip(ours.to_dict("records"), ref):
        for key in ("thresholds", "val_fractions", "fractions", "val_acc", "acc"):
            if row[key] != r[key]:
                raise AssertionError(f"item 1, budget {r['budget']}: {key} differ: {row[key]} vs {r[key]}")
        for key in ("val_cost", "cost"):
            if row[key] != r[key]:
                exact = False
                if not math.isclose(row[key], r[key], rel_tol=1e-12):
                    raise AssertionError(f"item 1, budget {r['budget']}: {key} differ: {row[key]} vs {r[key]}")
    return ("thresholds, exit fractions, accuracies and costs identical" if exact else
            "thresholds, exit fractions and accuracies identical; costs to 1e-12 (summation order)")


def run(sz: Sizes, log) -> list[Figure]:
    from repro.exits import budgeted_sweep

    num_exits, classes = 7, 100
    vz, vy = synthetic_outputs(num_exits, sz.sweep_val, classes, 0)
    tz, ty = synthetic_outputs(num_exits, sz.sweep_test, classes, 1)
    budgets = list(range(1, sz.sweep_budgets + 1))
    cpu = torch.device("cpu")
    with threads(1):
        log(f"  1. reference loop ({len(budgets)} budgets, {sz.sweep_val} val / {sz.sweep_test} test) ...")
        ref_holder: list = []
        t_ref = timed(lambda: ref_holder.append(reference_sweep(vz, vy, tz, ty, TABLE1_COSTS, budgets)), cpu,
                      clock="cpu")
        ours = budgeted_sweep(vz, vy, tz, ty, TABLE1_COSTS, budgets=budgets)
        agree = compare_sweeps(ours, ref_holder[0])
        t_ours = alternate({"ours": lambda: budgeted_sweep(vz, vy, tz, ty, TABLE1_COSTS, budgets=budgets)},
                           cpu, sz.sweep_repeats, clock="cpu")["ours"]
    size = (f"{len(budgets)} budgets, {sz.sweep_val} val / {sz.sweep_test} test, 7 exits, 100 classes, "
            f"1 thread, CPU time")
    return [Figure("1", "budgeted sweep: per-sample reference loop", t_ref, "s", note=size),
            Figure("1", "budgeted sweep: ours (repro.exits.budgeted_sweep)", t_ours * 1000, "ms", note=agree),
            Figure("1", "budgeted sweep: speed-up over the reference", t_ref / t_ours, "x",
                   f">= {TARGETS['sweep']:.0f}x", t_ref / t_ours >= TARGETS["sweep"])]
