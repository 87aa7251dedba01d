"""IMTA: Li et al., "Improved Techniques for Training Adaptive Deep Networks", ICCV 2019.

On an MSDNet with k exits (:mod:`repro.models.msdnet`), in two phases:

1. Gradient Equilibrium (GE), phase I: the loss is Σ_i CE_i; the coarsest-scale output of
   every block receives the *average* of the gradients of the losses at and after it.
2. Inline Subnetwork Collaboration (ISC), phase II: exit i ≥ 2 classifies its own feature
   together with Linear+BN+ReLU of exit i-1's logits (detached, as the paper says).
3. One-for-all distillation (OFA), phase II: L_i = (1-g)·CE_i + g·T²·KL(p_k^T ‖ p_i^T) for
   every exit but the last; the teacher is the phase-I net's last exit; T = 1, g = 0.1 and
   the 'mean' KL reduction of the authors' script (effective weight g·T²/C).
4. Phase II freezes the blocks and heads' convolutions and trains re-created classifiers.

Thresholds for budgeted batch classification are fitted on the held-out validation split,
never on test.  docs/papers/imta.md lists every choice and deviation.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from repro import api
from repro.api import (Artifact, Claim, ConfigError, Figure, Option, Options, Paper, RunConfig, Series, Table,
                       TrainSpec, model_name)
from repro.exits import (SCORES, accuracy_with_spread, budgeted_correct, budgeted_sweep, correct_at_cost,
                         correct_per_seed, gap_with_spread, outputs_per_seed, per_exit_val_eval, split_accuracies)
from repro.flops import CONVENTIONS, count_exits
from repro.models import msdnet
from repro.reference_data import paper_gap
from repro.render import dataset_name, legend_below, paper_label, sweep_spread
from repro.scales import CIFAR_SIZE, IMAGENET_SIZE, need_size, run_data
from repro.train import freeze_except

PAPER_NAME = "imta"
COST = "msdnet"  # Table 1's "Inference MADDs" are MSDNet's own counter

# ---------------------------------------------------------------------------- losses


def exits_ce(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """The unweighted sum of the exits' cross-entropies (MSDNet's loss, GE's loss)."""
    return sum(F.cross_entropy(z, y) for z in logits)


def ofa_loss(logits: list[torch.Tensor], y: torch.Tensor, T: float = 1.0, weight: float = 0.1,
             kl_reduction: str = "mean", teacher: torch.Tensor | None = None) -> torch.Tensor:
    """One-for-all distillation: every exit but the last learns from ``teacher``'s logits
    (default: the last exit's, detached); the last exit gets CE only.

    ``kl_reduction='mean'`` (default) is the authors' KLDivLoss(reduction='mean'): the KL
    summed over classes is averaged over batch *and* classes, i.e. divided by C as well;
    ``'batchmean'`` averages over the batch only (the per-sample KL of the paper's Eq. 8).
    """
    if kl_reduction not in ("mean", "batchmean"):
        raise ValueError(f"unknown kl_reduction {kl_reduction!r}")
    t = (logits[-1] if teacher is None else teacher).detach()
    target = F.softmax(t.float() / T, dim=1)
    total = F.cross_entropy(logits[-1], y)
    for z in logits[:-1]:
        kl = F.kl_div(F.log_softmax(z.float() / T, dim=1), target, reduction="batchmean")
        if kl_reduction == "mean":  # written out: torch warns its 'mean' may become 'batchmean'
            kl = kl / z.shape[1]
        total = total + (1 - weight) * F.cross_entropy(z, y) + weight * T * T * kl
    return total


class PhaseOneTeacher:
    """OFA's teacher as the authors' code has it: the phase-I network's last exit.

    A frozen copy of the last classifier, taken before phase II re-creates the final
    layers, applied to the last exit's pooled feature (frozen in phase II, so this is the
    phase-I exit exactly).  The feature is read by a forward hook on the last head during
    the model's own forward; call :meth:`logits` right after ``model(x)``.
    """

    def __init__(self, model: msdnet.MSDNet):
        self.classifier = copy.deepcopy(model.classifiers[-1]).eval().requires_grad_(False)
        self._feature: torch.Tensor | None = None
        self._hook = model.head_features[-1].register_forward_hook(self._keep)

    def _keep(self, module, args, out) -> None:
        self._feature = out

    def logits(self) -> torch.Tensor:
        if self._feature is None:
            raise RuntimeError("PhaseOneTeacher.logits() before a forward of the model")
        with torch.no_grad():
            out = self.classifier(self._feature.detach())
        self._feature = None
        return out

    def close(self) -> None:
        self._hook.remove()
        self._feature = None


def make_step(method: dict, teacher: PhaseOneTeacher | None = None):
    if method.get("ofa"):
        T, g, red = method.get("T", 1.0), method.get("ofa_weight", 0.1), method.get("kl_reduction", "mean")
        if method.get("ofa_teacher", "phase1") == "phase1" and teacher is None:
            raise ValueError("OFA with ofa_teacher=phase1 needs the phase-I teacher")

        def step(model, x, y):
            logits = model(x)
            return ofa_loss(logits, y, T, g, red, teacher.logits() if teacher is not None else None), logits
    else:
        def step(model, x, y):
            logits = model(x)
            return exits_ce(logits, y), logits
    return step


# ---------------------------------------------------------------------------- runs

# `--set KEY=VALUE` keys of this paper (the first choice of each is the authors' code and the default).
OPTIONS = Options({
    "ofa_teacher": Option("OFA's teacher: phase1 (default, the authors' code: the frozen phase-I network's last exit) "
                          "or self (the current model's last exit, detached)", str, "phase1",
                          choices=("phase1", "self")),
    "kl_reduction": Option("OFA's KL: mean (default, the released script's KLDivLoss: also divided by the number of "
                           "classes) or batchmean (per-sample KL, C times stronger)", str, "mean",
                           choices=("mean", "batchmean")),
    "phase2_init": Option("phase II's final classifiers: fresh (default, the authors' code re-creates them) or phase1 "
                          "(start from phase I's)", str, "fresh", choices=("fresh", "phase1")),
})

# Reduced MSDNets for CPU scales: the same layout as the paper's configs, narrower.
MODEL_ARGS = {"paper": {}, "quick": {"nChannels": 8, "growthRate": 4, "head_channels": 32},
              "smoke": {"nChannels": 4, "growthRate": 2, "head_channels": 16}}


def _sgd(epochs: int, batch: int = 64, lr: float = 0.1, milestones: tuple = (0.5, 0.75)) -> TrainSpec:
    return TrainSpec(epochs=epochs, batch_size=batch, lr=lr, nesterov=True, weight_decay=1e-4, milestones=milestones)


# (phase I, phase II) per scale: the paper's CIFAR recipe (300 epochs, /10 at 150 and 225; then 180,
# /10 at 90 and 135; batch 64), its ImageNet one (90 + 90 epochs, batch 256, /10 at 30 and 60) and
# the CPU scales'.  Quick (docs/calibration.md, the convergence rule): all 55k training images,
# phase I 8 epochs and phase II 5 (the paper's 180/300), each a cosine decay from the paper's rate,
# and the run's convergence tested by a twin trained twice as long (repro.runner.convergence_twins).
RECIPES = {"paper": (_sgd(300), _sgd(180)),
           "paper-imagenet": (_sgd(90, 256, milestones=(1 / 3, 2 / 3)),) * 2,
           "quick": (replace(_sgd(8), schedule="cosine", milestones=()),
                     replace(_sgd(5), schedule="cosine", milestones=())),
           # the earlier budget-first protocol, kept for the artifacts whose MSDNets the convergence
           # rule cannot afford (table1, fig2, fig3, fig5): their headers say "not converged"
           "quick-budget": (_sgd(2, milestones=(0.5,)), _sgd(1, milestones=())),
           "smoke": (_sgd(1, lr=0.05, milestones=()), _sgd(1, lr=0.05, milestones=()))}
# The budget-first protocol's training-set sizes (the earlier rule halved them until an artifact fitted
# 30 minutes): half of Fashion-MNIST for the 5-exit net, and less for the costlier MSDNets and families.
ARTIFACT_TRAIN_LIMITS = {"table1": {"quick": 13_750}, "fig2": {"quick": 3_437},
                         "fig3": {"quick": 13_750}, "fig5": {"quick": 3_437}}


def phase_specs(scale: str, imagenet: bool = False, budget: bool = False) -> tuple[TrainSpec, TrainSpec]:
    """The (phase I, phase II) training recipes at ``scale`` (``imagenet``: the paper's ImageNet
    recipe, at paper scale only; ``budget``: the budget-first quick protocol)."""
    if budget and scale == "quick":
        return RECIPES["quick-budget"]
    return RECIPES["paper-imagenet" if imagenet and scale == "paper" else scale]


def phase2_method(request, isc: bool, ofa: bool) -> dict:
    """A phase-II run's method: ISC and/or OFA; the OFA keys only when OFA is on."""
    opts = OPTIONS.read(request)
    method = {"isc": isc, "isc_detach": True, "ofa": ofa, "phase2_init": opts.phase2_init}
    if ofa:  # T and g: the authors' released script (run_IMTA.sh)
        method.update(T=1.0, ofa_weight=0.1, kl_reduction=opts.kl_reduction, ofa_teacher=opts.ofa_teacher)
    return method


def ablation_runs(request, exits: int = 5, imagenet: bool = False, paper_dataset: str = "cifar100",
                  model: str | None = None, args: dict | None = None, tag: str = "",
                  train_limits: dict[str, int] | None = None) -> dict[str, RunConfig]:
    """The five rows of Tables 2/3: {row key: run}.  ``model``/``args`` pick another MSDNet
    (a member of a figure's family); ``tag`` goes into the run names; ``train_limits`` is the
    artifact's calibrated training-set size per scale (``ARTIFACT_TRAIN_LIMITS``)."""
    scale = request.scale
    dataset = request.dataset_for("imagenet" if imagenet else paper_dataset)
    if model is None:
        model = "msdnet_imagenet" if imagenet and scale == "paper" else f"msdnet_cifar_{exits}exit"
    args = {**MODEL_ARGS[scale], **(args or {})}
    data = run_data(request, dataset, IMAGENET_SIZE if imagenet else CIFAR_SIZE, train_limits)
    # the ImageNet MSDNet's pooling plan needs 224 px, the CIFAR one's exactly 32
    need_size(PAPER_NAME, model, data, dataset, IMAGENET_SIZE if model == "msdnet_imagenet" else CIFAR_SIZE)
    p1, p2 = phase_specs(scale, imagenet, budget=bool(train_limits))
    stem = f"{model}{tag}"
    base = RunConfig(paper=PAPER_NAME, name=f"{stem}-phase1", kind="phase1", dataset=dataset, model=model,
                     model_args=args, method={"ge": False}, train=p1, data=data)
    ge = replace(base, name=f"{stem}-ge-phase1", method={"ge": True})

    def phase2(parent: RunConfig, isc: bool, ofa: bool, tag: str) -> RunConfig:
        return replace(parent, name=f"{stem}-{tag}-phase2", kind="phase2", method=phase2_method(request, isc, ofa),
                       train=p2, parent=parent)

    return {"baseline": base, "ge": ge, "isc": phase2(base, True, False, "isc"),
            "ofa": phase2(base, False, True, "ofa"), "ge+isc+ofa": phase2(ge, True, True, "ge-isc-ofa")}


def build_model(cfg: RunConfig, info) -> msdnet.MSDNet:
    """The untrained MSDNet of a phase-I or phase-II run (what its ``model.pt`` loads into)."""
    m = cfg.method
    return api.build_model(cfg, info, gradient_equilibrium=bool(m.get("ge")), isc=bool(m.get("isc")),
                           isc_detach=m.get("isc_detach", True))


def exit_sizes(model: msdnet.MSDNet, info) -> dict:
    """Cumulative cost (MSDNet's counter) and params at every exit of ``model``."""
    costs = count_exits(model.eval(), (1, info.in_channels, info.image_size, info.image_size), convention=COST)
    return {"costs": costs["cost"].tolist(), "params": costs["params"].tolist(), "cost_convention": COST}


def _finish(ctx, model, info) -> dict:
    ctx.save_model(model)
    out = ctx.collect_outputs(model)
    return {**split_accuracies(out), **exit_sizes(model, info)}


def train_phase1(ctx) -> dict:
    data = ctx.data()
    model = ctx.to_device(build_model(ctx.cfg, data.info))
    ctx.fit(model, make_step(ctx.cfg.method), "phase1", eval_fn=per_exit_val_eval(data))
    return _finish(ctx, model, data.info)


def prepare_phase2(model: msdnet.MSDNet, parent_state: dict, method: dict
                   ) -> tuple[list[nn.Parameter], PhaseOneTeacher | None]:
    """Phase II's starting point: phase I's weights, OFA's phase-I teacher taken from them,
    the final classifiers re-created (``phase2_init='fresh'``, the authors' code), and all
    but the final layers frozen.  Returns (trainable parameters, teacher or None)."""
    missing, unexpected = model.load_state_dict(parent_state, strict=False)
    assert not unexpected and all(k.startswith("isc_") for k in missing), (missing, unexpected)
    model.gradient_equilibrium = False  # phase II trains only final layers: nothing to rescale
    teacher = None
    if method.get("ofa") and method.get("ofa_teacher", "phase1") == "phase1":
        teacher = PhaseOneTeacher(model)  # before the final layers are re-created
    init = method.get("phase2_init", "fresh")
    if init == "fresh":
        model.reset_final_layers()
    elif init != "phase1":
        raise ValueError(f"unknown phase2_init {init!r}")
    trainable = model.final_layer_parameters()
    freeze_except(model, trainable)
    return trainable, teacher


def train_phase2(ctx) -> dict:
    data = ctx.data()
    model = ctx.to_device(build_model(ctx.cfg, data.info))
    trainable, teacher = prepare_phase2(model, ctx.parent_state(), ctx.cfg.method)
    ctx.fit(model, make_step(ctx.cfg.method, teacher), "phase2", params=trainable)
    if teacher is not None:
        teacher.close()
    return _finish(ctx, model, data.info)


# ---------------------------------------------------------------------------- artifacts

# The ablation's rows (the keys of ablation_runs) in the tables' order, with their labels: a new row is
# one entry in ablation_runs, one label here and its paper numbers in repro/reference/imta.csv.
LABELS = {"baseline": "MSDNet (no GE/ISC/OFA)", "ge": "GE", "isc": "ISC", "ofa": "OFA", "ge+isc+ofa": "GE+ISC+OFA"}
ROWS = list(LABELS)
COST_LABEL = "average cost per image (MMACs, MSDNet's counter)"


def table2_runs(request):
    return ablation_runs(request)


def table3_runs(request):
    return ablation_runs(request, imagenet=True)


def shares_table2_runs(request) -> bool:
    """Whether table3 trains nothing of its own under ``request``: its runs are table2's (smaller
    scales, or a --dataset that is not ImageNet), so it sets table2's runs beside ImageNet numbers."""
    try:
        mine, t2 = table3_runs(request), table2_runs(request)
    except ConfigError:
        return False
    return {k: c.key for k, c in mine.items()} == {k: c.key for k, c in t2.items()}


def _ablation_table(artifact: str):
    """Tables 2 and 3: top-1 at every exit of the five ablation rows; the claim is the gain of
    GE+ISC+OFA over MSDNet at each exit (a paired gap, :func:`repro.exits.gap_with_spread`)."""
    def build(request, runs, settings):
        cols = [f"E-{i + 1}" for i in range(5)]
        ours = []
        for key in ROWS:
            mean, spread = accuracy_with_spread(outputs_per_seed(runs[key]))
            ours += [{"row": key, "column": c, "value": v, "spread": s} for c, v, s in zip(cols, mean, spread)]
        shared = artifact == "table3" and shares_table2_runs(request)
        which = " (table2's runs, beside the paper's ImageNet gain)" if shared else ""
        # a table3 on table2's runs repeats table2's claims: its own headline only with its own (ImageNet) runs
        claims = [Claim(f"gain of GE+ISC+OFA over MSDNet at {c}{which}",
                        gap_with_spread(correct_per_seed(runs["ge+isc+ofa"], k), correct_per_seed(runs["baseline"], k),
                                        arms=("ge+isc+ofa", "baseline")),
                        paper_gap(PAPER_NAME, artifact, "ge+isc+ofa", "baseline", c), headline=not shared)
                  for k, c in enumerate(cols)]
        base = runs.config("baseline")
        notes = ([f"the same runs as imta table2 ({base.dataset} at this scale), set beside the paper's ImageNet "
                  "Table 3: its claims repeat table2's evidence"] if shared else [])
        return Table(f"Top-1 (%) at every exit, ablation of GE / ISC / OFA ({'ImageNet' if artifact == 'table3' else 'CIFAR-100'})", base.dataset, model_name(base),
                     CONVENTIONS[COST], ours, ROWS, cols, LABELS, notes=notes, claims=claims)
    return build


def table1_runs(request):
    r = ablation_runs(request, exits=7, train_limits=ARTIFACT_TRAIN_LIMITS["table1"])
    return {"msdnet": r["baseline"], "imta": r["ge+isc+ofa"]}


def build_table1(request, runs, settings):
    import pandas as pd

    from repro.reference_data import load_reference

    (mb, sb), (mf, sf) = (accuracy_with_spread(outputs_per_seed(runs[k])) for k in ("msdnet", "imta"))
    # params_m / madds_m: the network the paper's columns describe, MSDNet (the baseline run);
    # imta_params_m / imta_madds_m: the IMTA model, whose ISC modules add to both.
    res, res_isc = runs["msdnet"][0].results, runs["imta"][0].results
    ours = []
    for i in range(len(mb)):
        r = f"exit{i + 1}"
        ours += [{"row": r, "column": "params_m", "value": res["params"][i] / 1e6},
                 {"row": r, "column": "madds_m", "value": res["costs"][i] / 1e6},
                 {"row": r, "column": "msdnet_top1", "value": mb[i], "spread": sb[i]},
                 {"row": r, "column": "imta_params_m", "value": res_isc["params"][i] / 1e6},
                 {"row": r, "column": "imta_madds_m", "value": res_isc["costs"][i] / 1e6},
                 {"row": r, "column": "imta_top1", "value": mf[i], "spread": sf[i]}]
    # the paper's Table 1 is keyed (row msdnet|imta, column exitK_metric): read it as (exitK, column)
    ref = load_reference(PAPER_NAME)
    ref = ref[(ref["artifact"] == "table1") & ref["row"].isin(["msdnet", "imta"])]
    remap = []
    for _, x in ref.iterrows():
        exit_no, metric = x["column"].split("_", 1)
        prefix = "" if x["row"] == "msdnet" else "imta_"
        col = f"{prefix}{metric}" if metric in ("params_m", "madds_m") else f"{x['row']}_top1"
        remap.append({"row": exit_no, "column": col, "value": x["value"]})
    base = runs.config("msdnet")
    notes = ["params_m, madds_m: MSDNet (the baseline run), the network the paper's columns describe; "
             "imta_params_m, imta_madds_m: the GE+ISC+OFA model, ISC modules included (the paper prints "
             "MSDNet's numbers for its rows too)"]
    return Table("Per-exit params (M), inference MADDs (M) and top-1 (%), MSDNet vs IMTA (CIFAR-100)", base.dataset,
                 model_name(base), CONVENTIONS[COST], ours, [f"exit{i + 1}" for i in range(len(mb))],
                 ["params_m", "madds_m", "msdnet_top1", "imta_params_m", "imta_madds_m", "imta_top1"],
                 reference=pd.DataFrame(remap), notes=notes)


def _curves(runs, names: dict[str, str], colors: dict[str, str] | None = None) -> tuple[list[Series], pd.DataFrame]:
    """One budgeted-batch curve per run ({run name: label}), with its band
    (:func:`repro.render.sweep_spread`: the bootstrap half-width at one seed, the 95 % t-interval
    over seeds otherwise)."""
    series, frames = [], []
    for name, label in names.items():
        sweeps, tests = [], []
        for r in runs[name]:
            o = r.outputs
            sweeps.append(budgeted_sweep(o["val_logits"], o["val_labels"], o["test_logits"], o["test_labels"],
                                         r.results["costs"], "confidence"))
            tests.append((o["test_logits"], o["test_labels"]))
        acc, spread, what = sweep_spread(sweeps, tests, "confidence")
        cost = torch.tensor([s["cost"].tolist() for s in sweeps]).mean(0) / 1e6
        series.append(Series(label, cost.tolist(), acc, spread, color=(colors or {}).get(label)))
        frames.append(pd.DataFrame({"source": "ours", "method": label, "budget": sweeps[0]["budget"],
                                    "cost_m": cost.numpy(), "acc": acc, "acc_spread": spread, "spread": what,
                                    "seeds": len(sweeps)}))
    return series, pd.concat(frames, ignore_index=True)


# The paper's numbers beside each figure (repro/reference/imta.csv): Table 1 gives MSDNet's and
# IMTA's individual exits with their cost (CIFAR-100, 7 exits); Tables 2 and 3 the ablation's
# top-1 per exit, without costs (CIFAR-100 and ImageNet, 5 exits).  Fig. 2 (CIFAR-10) has none.
PAPER_POINTS = {"fig3": ("table1", "cifar100"), "fig4": ("table2", "cifar100"), "fig5": ("table3", "imagenet")}
ROW_COLORS = {"baseline": "tab:blue", "ge": "tab:orange", "isc": "tab:green", "ofa": "tab:purple",
              "ge+isc+ofa": "tab:red"}


def _paper_points(artifact: str, rows: dict[str, str]) -> tuple[list[Series], pd.DataFrame, tuple[str, str], str]:
    """The paper's points for a budgeted-batch figure: (series, data rows, (x label, y label),
    panel title); ``rows``: {reference row: label}.  No points: empty series."""
    from repro.reference_data import load_reference, reference_value

    if artifact not in PAPER_POINTS:
        return [], pd.DataFrame(), ("", ""), ""
    table, dataset = PAPER_POINTS[artifact]
    ref = load_reference(PAPER_NAME)
    series, recs = [], []
    for row, label in rows.items():
        key = {"baseline": "msdnet", "ge+isc+ofa": "imta"}.get(row, row) if table == "table1" else row
        xs, ys = [], []
        for k in range(1, 8 if table == "table1" else 6):
            if table == "table1":
                x, y = (reference_value(ref, table, key, f"exit{k}_{c}") for c in ("madds_m", "top1"))
            else:
                x, y = float(k), reference_value(ref, table, key, f"E-{k}")
            if x is None or y is None:
                continue
            xs.append(x)
            ys.append(y)
            recs.append({"source": "paper", "method": paper_label(dataset, label), "exit": k,
                         "cost_m": x if table == "table1" else math.nan, "acc": y, "reference": f"{table}/{key}"})
        if xs:
            series.append(Series(paper_label(dataset, label), xs, ys, kind="paper", color=ROW_COLORS.get(row)))
    if table == "table1":
        axes = ("cost of the exit (MMACs, MSDNet's counter)", f"top-1 (%) on {dataset_name(dataset)}")
        title = f"{paper_label(dataset)}: Table 1, individual exits of the 7-exit MSDNet"
    else:
        axes = ("exit (E-1 … E-5; the paper prints no cost)", f"top-1 (%) on {dataset_name(dataset)}")
        title = f"{paper_label(dataset)}: top-1 per exit ({table.replace('table', 'Table ')})"
    return series, pd.DataFrame(recs), axes, title


def _budget_figure_out(request, artifact: str, title: str, cfg: RunConfig, series, data, rows: dict[str, str],
                       notes, claims=(), models: Sequence[RunConfig] = ()) -> Figure:
    """Our curves, and the paper's points: on our axes in the paper's own setting (same dataset and
    cost counter), else in a panel of their own.  ``models``: every network the curves come from
    (a family's members), named in the header; default ``cfg``'s."""
    paper, pdata, axes, ptitle = _paper_points(artifact, rows)
    same = bool(paper) and PAPER_POINTS[artifact][0] == "table1" and request.scale == "paper" \
        and cfg.dataset == PAPER_POINTS[artifact][1]
    note = "" if paper else "the paper's curves: not transcribed (figure only; repro/reference/README.md)"
    return Figure(title, cfg.dataset, "; ".join(model_name(c) for c in (models or [cfg])), CONVENTIONS[COST], series, COST_LABEL,
                  f"test top-1 (%) on {dataset_name(cfg.dataset)}", pd.concat([data, pdata], ignore_index=True),
                  paper=paper, paper_axes=None if same else axes, paper_title=ptitle, legend="right", note=note,
                  notes=notes, claims=claims)


# The MSDNet families of Figures 2, 3 and 5 (Section 4.1: CIFAR-10 {6, 8} exits, depths {21, 36};
# CIFAR-100 {4, 5, 6, 8} exits, depths {10, 15, 21, 36}: the lin_grow config with nBlocks exits;
# Section 4.2 and the authors' ImageNet configs: 5 blocks, step = base = 4, 6, 7).  Quick scale
# trains the family's two smallest members at quick width; smoke two tiny ones of the same
# kind (it only checks the pipeline).  CIFAR entries are exit counts, ImageNet ones steps.
FAMILIES = {
    "fig2": {"paper": (6, 8), "quick": (6, 8), "smoke": (2, 3)},
    "fig3": {"paper": (4, 5, 6, 8), "quick": (4, 5), "smoke": (2, 3)},
    "fig5": {"paper": (4, 6, 7), "quick": (4, 6), "smoke": (1, 2)},
}


def family_members(request, artifact: str, paper_dataset: str = "cifar100", imagenet: bool = False
                   ) -> list[tuple[str, dict[str, RunConfig]]]:
    """(member label, its ablation runs) for every MSDNet of a budgeted-batch figure's family."""
    sizes = FAMILIES[artifact][request.scale]
    limits = ARTIFACT_TRAIN_LIMITS.get(artifact)
    out = []
    for n in sizes:
        if imagenet:  # 5 blocks, stepmode even, base = step
            if request.scale == "paper":
                model, args = "msdnet_imagenet", ({} if n == 4 else {"step": n, "base": n})
            else:  # CIFAR-sized images: the CIFAR stem and 3 scales, same block layout
                model, args = "msdnet_cifar", {"nBlocks": 5, "stepmode": "even", "step": n, "base": n}
            # step 4 at paper scale is Table 3's network: the same runs
            tag = "" if (request.scale == "paper" and n == 4) else f"-step{n}"
            runs = ablation_runs(request, imagenet=True, model=model, args=args, tag=tag, train_limits=limits)
            label = f"step {n}"
        else:
            runs = ablation_runs(request, exits=n, paper_dataset=paper_dataset, train_limits=limits)
            label = f"{n} exits, depth {n * (n + 1) // 2}"
        out.append((label, runs))
    return out


def _budget_figure(artifact: str, title: str, paper_dataset: str = "cifar100", imagenet: bool = False):
    """A budgeted-batch figure over the artifact's MSDNet family (``FAMILIES``): MSDNet and
    GE+ISC+OFA per member, runs named ``<member label>/<row>``."""
    methods = {"baseline": "MSDNet", "ge+isc+ofa": "IMTA (GE+ISC+OFA)"}

    def runs(request):
        return {f"{label}/{row}": m[row] for label, m in family_members(request, artifact, paper_dataset, imagenet)
                for row in methods}

    def build(request, runs, settings):
        series, frames, bases = [], [], []
        members = [label for label, _ in family_members(request, artifact, paper_dataset, imagenet)]
        shades = {"MSDNet": ("tab:blue", "navy", "deepskyblue", "slategray"),
                  "IMTA (GE+ISC+OFA)": ("tab:red", "darkred", "orange", "hotpink")}
        for i, label in enumerate(members):
            s, d = _curves(runs, {f"{label}/{row}": name for row, name in methods.items()},
                           {k: v[i % len(v)] for k, v in shades.items()})
            series += [replace(x, label=f"{x.label}, {label}") for x in s]
            base = runs.config(f"{label}/baseline")
            bases.append(base)
            frames.append(d.assign(member=label, model=base.model, model_args=str(base.model_args)))
        claims, outside = [], []
        for label in members:
            c, o = budget_claims(runs, f"{label}/ge+isc+ofa", f"{label}/baseline", f"IMTA minus MSDNet ({label})")
            claims, outside = claims + c, outside + o
        notes = ["thresholds fitted on the held-out validation split",
                 "one curve per family member and method: " + "; ".join(members),
                 "band: " + frames[0]["spread"].iloc[0], *outside]
        return _budget_figure_out(request, artifact, title, bases[0], series,
                                  pd.concat(frames, ignore_index=True), {"baseline": "MSDNet", "ge+isc+ofa": "IMTA"},
                                  notes, claims, bases)
    return Artifact(artifact, f"{title} (budgeted batch classification)", runs, build)


def fig4_runs(request):
    return ablation_runs(request)


def _budget_points(runs, name: str) -> list:
    """Per seed, the run's budgeted-batch test curve as (average cost per budget, budgets x samples
    correctness), for gaps at equal cost (:func:`repro.exits.correct_at_cost`)."""
    out = []
    for r in runs[name]:
        o = r.outputs
        sweep = budgeted_sweep(o["val_logits"], o["val_labels"], o["test_logits"], o["test_labels"],
                               r.results["costs"], "confidence")
        out.append(budgeted_correct(sweep, o["test_logits"], o["test_labels"], "confidence"))
    return out


def budget_claims(runs, a: str, b: str, what: str, fractions=(0.25, 0.5, 0.75), headline: bool = False
                  ) -> tuple[list[Claim], list[str]]:
    """The paper's claim of Figs. 2-5: ``a``'s budgeted-batch curve lies above ``b``'s.  Gaps at
    equal average cost (``fractions`` of the full network's), each curve interpolated per sample, so
    the gap is paired (:func:`repro.exits.gap_with_spread`); costs outside either curve are noted."""
    pa, pb = _budget_points(runs, a), _budget_points(runs, b)
    full = runs[b][0].results["costs"][-1]
    lo = max(float(xs.min()) for xs, _ in [*pa, *pb])
    hi = min(float(xs.max()) for xs, _ in [*pa, *pb])
    claims, notes = [], []
    for f in fractions:
        if not lo <= f * full <= hi:
            notes.append(f"{what} at {100 * f:.0f} % of the full network's cost: outside a curve's range")
            continue
        claims.append(Claim(f"budgeted-batch top-1 of {what} at {100 * f:.0f} % of the full network's cost "
                            "(interpolated)", gap_with_spread(correct_at_cost(pa, f * full), correct_at_cost(pb, f * full),
                                                              arms=(a, b)),
                            sign=+1, headline=headline))  # the paper: IMTA's curve lies above MSDNet's at every budget
    return claims, notes


def build_fig4(request, runs, settings):
    series, data = _curves(runs, LABELS, {LABELS[k]: c for k, c in ROW_COLORS.items()})
    claims, outside = budget_claims(runs, "ge+isc+ofa", "baseline", "GE+ISC+OFA minus MSDNet", headline=True)
    notes = ["thresholds fitted on the held-out validation split", "band: " + data["spread"].iloc[0], *outside]
    return _budget_figure_out(request, "fig4", "Ablation of GE / ISC / OFA, budgeted batch", runs.config("baseline"),
                              series, data, LABELS, notes, claims)


def fig6_runs(request):
    r = ablation_runs(request)
    return {"baseline": r["baseline"], "ge": r["ge"]}


def build_fig6(request, runs, settings):
    from repro.exits import mean_and_spread

    series, frames = [], []
    for label, name in {"MSDNet": "baseline", "MSDNet + GE": "ge"}.items():
        ms = [r.metrics() for r in runs[name]]
        cols = [c for c in ms[0].columns if c.startswith("val_acc_exit")]
        per_seed = [m[cols].mean(1).tolist() for m in ms]  # seeds x epochs
        pairs = [mean_and_spread(v) for v in zip(*per_seed)]
        mean, spread = [m for m, _ in pairs], [e for _, e in pairs]
        epochs = [int(e) for e in ms[0]["epoch"].tolist()]
        series.append(Series(label, epochs, mean, spread if len(ms) > 1 else None))
        frames.append(pd.DataFrame({"method": label, "epoch": epochs, "val_acc_mean_over_exits": mean,
                                    "val_acc_spread": spread, "seeds": len(ms)}))
    base = runs.config("baseline")
    epochs = frames[0]["epoch"]
    note = (f"{len(epochs)} epoch at this scale: one point per curve" if len(epochs) == 1 else "")
    return Figure("Validation accuracy (mean over exits) per epoch, with and without GE", base.dataset, model_name(base),
                  CONVENTIONS[COST], series, "epoch (phase I)", "validation top-1 (%), mean over exits",
                  pd.concat(frames, ignore_index=True), integer_x=True, note=note,
                  notes=["band: half-width of the 95 % t-interval over seeds (none for one seed)"])


def fig7_runs(request):
    r = ablation_runs(request)
    return {"baseline": r["baseline"], "isc": r["isc"]}


def build_fig7(request, runs, settings):
    frames = []
    for label, name in (("without ISC", "baseline"), ("with ISC", "isc")):
        o = runs[name][0].outputs
        conf = SCORES["confidence"](o["val_logits"][:2])
        ranks = conf.argsort(1).argsort(1).float() / (conf.shape[1] - 1)
        rho = float(torch.corrcoef(ranks)[0, 1])
        frames.append(pd.DataFrame({"method": label, "spearman_rho": rho, "sample": range(ranks.shape[1]),
                                    "rank_exit1": ranks[0].numpy(), "rank_exit2": ranks[1].numpy()}))
    data = pd.concat(frames, ignore_index=True)

    def draw():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.2, 5))
        for (label, d), color in zip(data.groupby("method", sort=False), ("tab:blue", "tab:red")):
            ax.scatter(d["rank_exit1"], d["rank_exit2"], s=2, alpha=0.3, c=color,
                       label=f"{label} (Spearman ρ = {d['spearman_rho'].iloc[0]:.3f})")
        ax.set_xlabel("confidence rank at exit 1 (0 = least, 1 = most confident)")
        ax.set_ylabel("confidence rank at exit 2 (validation samples)")
        legend_below(ax, *ax.get_legend_handles_labels(), fontsize=7, markerscale=4, ncol=1)
        return fig

    base = runs.config("baseline")
    return Figure("Confidence rank at exit 1 vs exit 2, with and without ISC", base.dataset, model_name(base),
                  CONVENTIONS[COST], data=data, draw=draw)


PAPER = Paper(
    name=PAPER_NAME,
    title="Li et al., Improved Techniques for Training Adaptive Deep Networks (ICCV 2019)",
    artifacts={a.name: a for a in [
        Artifact("table1", "Per-exit params, MADDs and top-1 of MSDNet vs IMTA (7 exits, CIFAR-100)",
                 table1_runs, build_table1),
        Artifact("table2", "Ablation GE / ISC / OFA x exits E-1..E-5 (CIFAR-100)", table2_runs,
                 _ablation_table("table2"), baselines=("baseline",), headline=True),
        Artifact("table3", "Ablation GE / ISC / OFA on ImageNet (smaller scales: table2's runs)",
                 table3_runs, _ablation_table("table3"),
                 baselines=("baseline",)),
        _budget_figure("fig2", "Budgeted batch, MSDNet vs IMTA (CIFAR-10)", "cifar10"),
        _budget_figure("fig3", "Budgeted batch, MSDNet vs IMTA (CIFAR-100)", "cifar100"),
        _budget_figure("fig5", "Budgeted batch, MSDNet vs IMTA (ImageNet)", "cifar100", imagenet=True),
        Artifact("fig4", "Ablation as budgeted-batch curves (CIFAR-100)", fig4_runs, build_fig4,
                 baselines=("baseline",), headline=True),
        Artifact("fig6", "Validation accuracy per epoch with and without GE", fig6_runs, build_fig6,
                 baselines=("baseline",)),
        Artifact("fig7", "Confidence rank at exit 1 vs exit 2, with and without ISC", fig7_runs, build_fig7,
                 baselines=("baseline",)),
    ]},
    trainers={"phase1": train_phase1, "phase2": train_phase2},
    options=OPTIONS,
)
