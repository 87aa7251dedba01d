"""Decision gates: Shafiee, Shafiee & Wong, "Dynamic Representations Toward Efficient
Inference on Deep Neural Networks by Decision Gates", CVPRW 2019.

On a trained, frozen backbone (ResNet-101 or DenseNet-201), a d-gate after stages 1-3:
global average pooling -> one linear layer, d = Wx + b, trained on all training data with
a multi-class hinge loss plus (λ/2)‖W‖² (one-vs-rest by default:
Σ_c max(0, 1 - y_c d_c), y_c = ±1).  A sample exits at the first gate with max d ≥ t_i,
predicting argmax d; the backbone's classifier takes the rest.  Thresholds are tuned on the
held-out validation split by an exact search of the cascade for a target accuracy, never
on test.  Costs are the paper's "FLOPs", 2 x fvcore multiply-adds, gate heads included.
docs/papers/dgate.md lists every choice the paper leaves open and ours.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from repro import distributed as D
from repro.api import (Artifact, Claim, ConfigError, Figure, Option, Options, Paper, RunConfig, Series, Table,
                       TrainSpec, build_model, ce_step, first_test_images, model_name)
from repro.data import FeatureBatches, TensorBatches, class_names, held_in_memory, run_info
from repro.exits import (bootstrap_ci, cascade_eval, cascade_exit, cascade_grid, collect_compact, correct_at_cost,
                         early_exit, features_of, gap_with_spread, mean_and_spread, rate_with_spread,
                         split_accuracies, threshold_grid, time_call, tune_thresholds)
from repro.flops import count_exits, count_model
from repro.models.resnet import from_torchvision_resnet
from repro.models.staged import GatedBackbone
from repro.nn import threads
from repro.reference_data import load_reference, paper_gap, paper_value
from repro.render import dataset_name, paper_label
from repro.scales import CIFAR_SIZE, IMAGENET_SIZE, run_data
from repro.store import load_checkpoint

PAPER_NAME = "dgate"
COST = "flops2x"  # the paper's "FLOPs (G)" are 2 x multiply-adds
GATES_AFTER = (0, 1, 2)  # after ResNet stages / DenseNet dense blocks 1, 2, 3 (0-based)
HINGES = ("ovr", "weston-watkins", "crammer-singer")

def _existing_file(raw: str) -> str:
    p = Path(raw).expanduser()
    if p.is_dir():
        raise ValueError(f"{raw} is a folder, not a checkpoint file")
    if not p.is_file():
        raise ValueError(f"no such file: {raw}")
    return raw


_existing_file.__name__ = "path of a file"


def _grid_cost(points: int) -> str:
    """What tuning three gates on ``points`` thresholds each holds: the exact search keeps about
    three float64 tensors of (points + 1)^3 combinations (cascade_grid)."""
    n = (points + 1) ** 3
    gb = 24 * n / 1e9
    count, size = (f"{n:,}", f"{gb:.1f}") if n < 10 ** 15 else (f"{n:.3g}", f"{gb:.3g}")
    return f"its exact search over 3 gates holds {count} combinations: about {size} GB"


OPTIONS = Options({
    "hinge": Option("multi-class hinge of the d-gates", str, "ovr", choices=HINGES),
    "l2": Option("lambda of the L2 penalty (lambda/2)*||W||^2 on the gate weights", float, 1e-4, low=0, high=100),
    "backbone_checkpoint": Option("a trained backbone state dict (ours, a GatedBackbone's, or torchvision's ResNet "
                                  "layout): skips backbone training; applies to every backbone the artifact uses",
                                  _existing_file),
    "features": Option("cached: pooled features computed once, un-augmented (default for in-memory datasets); "
                       "online: frozen backbone on every augmented batch (default for ImageNet)", str,
                       choices=("cached", "online")),
    "standardize": Option("train the gates on standardised features, folded back into W, b", bool, True),
    "tune": Option("grid: exact search of the cascade on the threshold grid; greedy: gate by gate", str, "grid",
                   choices=("grid", "greedy")),
    "grid_points": Option("candidate thresholds per gate for tuning (validation-score quantiles)", int, 40, low=2,
                          high=200, cost=_grid_cost),
    "time_batch": Option("batch size of the real early-exit timing (1: per-image latency, as the paper)", int, 1,
                         low=1, high=1024),
    "time_images": Option("test images timed (default 1000 paper, 256 quick, 32 smoke)", int, low=1, high=50_000),
})

# ---------------------------------------------------------------------------- losses


def hinge_ovr(d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One-vs-rest: Σ_c max(0, 1 - y_c d_c) with y_c = +1 for the true class, -1 otherwise; mean over samples."""
    sign = torch.full_like(d, -1.0).scatter(1, y[:, None], 1.0)
    return F.relu(1 - sign * d).sum(1).mean()


def hinge_weston_watkins(d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Weston-Watkins: Σ_{c≠y} max(0, 1 - d_y + d_c); mean over samples (MultiMarginLoss x C)."""
    dy = d.gather(1, y[:, None])
    return F.relu(1 - dy + d).scatter(1, y[:, None], 0.0).sum(1).mean()


def hinge_crammer_singer(d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Crammer-Singer: max(0, 1 - d_y + max_{c≠y} d_c); mean over samples."""
    dy = d.gather(1, y[:, None]).squeeze(1)
    other = d.scatter(1, y[:, None], float("-inf")).amax(1)
    return F.relu(1 - dy + other).mean()


GATE_LOSSES = {"ovr": hinge_ovr, "weston-watkins": hinge_weston_watkins, "crammer-singer": hinge_crammer_singer,
               "ce": F.cross_entropy}


# ---------------------------------------------------------------------------- models

# The backbones are registered models (repro.models: "resnet101", "resnet101_imagenet",
# "densenet201"); reduced look-alikes for CPU scales: same block types and stage layout, narrower
# and shallower (per scale, by family: "resnet101" sizes both ResNet-101s).
MODEL_ARGS = {"paper": {"resnet101": {}, "densenet201": {}},
              "quick": {"resnet101": {"width": 8, "blocks": [1, 1, 2, 1]},
                        "densenet201": {"growth": 8, "blocks": [1, 2, 8, 5], "init_features": 16}},
              "smoke": {"resnet101": {"width": 4, "blocks": [1, 1, 1, 1]},
                        "densenet201": {"growth": 4, "blocks": [1, 1, 1, 1], "init_features": 8}}}


build_backbone = build_model  # the untrained backbone of a run


def build_gated(cfg: RunConfig, info) -> GatedBackbone:
    return GatedBackbone(build_backbone(cfg, info), GATES_AFTER)


def load_backbone_state(backbone: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Load a backbone from our state dict, a checkpoint holding one under 'model', a
    GatedBackbone's state (keys 'backbone.*'), or torchvision's ResNet layout."""
    if isinstance(state.get("model"), dict):
        state = state["model"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if "conv1.weight" in state and "fc.weight" in state:
        state = from_torchvision_resnet(state)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as e:
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        raise ConfigError(f"{source} does not fit {type(backbone).__name__}: {' '.join(lines[:2])[:300]}") from None


_DIGESTS: dict[tuple, str] = {}


def _check_state_dict(p: Path, given: str) -> None:
    """The checkpoint loads (weights only) as a state dict of tensors, or holds one under "model" or
    "state_dict": checked when the run is planned, before any run folder is made."""
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, pickled code: one line
        raise ConfigError(f"--set backbone_checkpoint={given}: not a loadable checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:80] if str(e) else ''}); give a state dict saved by torch.save")
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise ConfigError(f"--set backbone_checkpoint={given}: holds a {type(obj).__name__}, not a state dict of "
                          f"tensors; give one saved by torch.save(model.state_dict(), path)")


def checkpoint_identity(path: str) -> tuple[str, str]:
    """Absolute path and sha256 prefix of a backbone checkpoint (part of the run's hash)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"--set backbone_checkpoint={path}: no such file")
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _check_state_dict(p, path)
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()[:16]
    return str(p), _DIGESTS[key]


# ---------------------------------------------------------------------------- gate training


class GateBank(nn.Module):
    """The linear layers of all gates, trained on (optionally standardised) pooled features.

    ``forward(feats)`` takes one pooled feature matrix per gate and returns the
    distances of every gate.  ``folded(i)`` gives gate i's (W, b) on raw pooled
    features: W' = W / σ, b' = b - W' μ.
    """

    def __init__(self, channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(c, num_classes) for c in channels)
        for i, (fc, c) in enumerate(zip(self.fcs, channels)):
            nn.init.zeros_(fc.weight)
            nn.init.zeros_(fc.bias)
            self.register_buffer(f"mean{i}", torch.zeros(c))
            self.register_buffer(f"std{i}", torch.ones(c))

    def set_stats(self, i: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        getattr(self, f"mean{i}").copy_(mean)
        getattr(self, f"std{i}").copy_(std.clamp_min(1e-6))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [fc((f - getattr(self, f"mean{i}")) / getattr(self, f"std{i}"))
                for i, (fc, f) in enumerate(zip(self.fcs, feats))]

    def weights(self) -> list[torch.Tensor]:
        return [fc.weight for fc in self.fcs]

    @torch.no_grad()
    def folded(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.fcs[i].weight / getattr(self, f"std{i}")[None, :]
        b = self.fcs[i].bias - w @ getattr(self, f"mean{i}")
        return w, b


def gate_step(loss: str, l2: float):
    """One step of every gate: Σ_gates [loss(d_i, y)] + (λ/2) Σ_gates ‖W_i‖²."""
    fn = GATE_LOSSES[loss]

    def step(bank, feats, y):
        outs = bank(feats)
        total = sum(fn(d.float(), y) for d in outs)
        if l2:
            total = total + 0.5 * l2 * sum((w.float() ** 2).sum() for w in D.unwrap(bank).weights())
        return total, outs
    return step


def _moments(feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(f.mean(0), f.std(0)) for f in feats]


def train_backbone(ctx) -> dict:
    cfg, data = ctx.cfg, ctx.data()
    info = data.info
    backbone = ctx.to_device(build_backbone(cfg, info))
    source = cfg.method.get("checkpoint")
    if source:
        load_backbone_state(backbone, load_checkpoint(Path(source), map_location=ctx.device), source)
        ctx.log(f"dgate: backbone loaded from {source} (not trained)")
    else:
        def evaluate(model) -> dict:
            o = collect_compact(D.unwrap(model), data.val)
            return {"val_acc": float((o["preds"][0] == data.val_labels).double().mean() * 100)}
        ctx.fit(backbone, ce_step, "backbone", eval_fn=evaluate)
    ctx.save_model(backbone)
    acc = split_accuracies(ctx.collect_compact_outputs(backbone))
    cost = count_model(D.unwrap(backbone), (info.in_channels, info.image_size, info.image_size), COST)
    return {"val_acc": acc["val_acc"][0], "test_acc": acc["test_acc"][0], "cost": cost.macs,
            "params": cost.params, "cost_convention": COST, "loaded_from": source}


def gate_costs(net: GatedBackbone, info) -> dict:
    """Cumulative exit costs, each gate head's own cost and the bare backbone's, in the paper's convention."""
    shape = (info.in_channels, info.image_size, info.image_size)
    exits = count_exits(net, shape, COST)
    with torch.no_grad():
        p = next(net.parameters())
        state = torch.zeros((1, *shape), device=p.device, dtype=p.dtype)
        heads = []
        for i, head in enumerate(net.heads):
            state = net.stage(i, state)
            heads.append(count_model(head, tuple(state.shape[1:]), COST).macs)
    bare = count_model(net.backbone, shape, COST)
    return {"costs": exits["cost"].tolist(), "params": exits["params"].tolist(), "head_costs": heads,
            "backbone_cost": bare.macs, "backbone_params": bare.params, "cost_convention": COST}


def subset_costs(res: dict, active: Sequence[int]) -> list[float]:
    """Cumulative costs of the exits of a network that has only the gates ``active`` (+ the final classifier).

    From the stored cumulative costs c_i (all gates present) and head costs h_i:
    backbone up to gate i = c_i - Σ_{j<=i} h_j; exit at gate i costs that plus the
    active heads up to i; the final exit costs the whole backbone plus all active heads.
    """
    c, h = res["costs"], res["head_costs"]
    k = len(h)
    base = [c[i] - sum(h[: i + 1]) for i in range(k)] + [c[k] - sum(h)]
    out = [base[i] + sum(h[j] for j in active if j <= i) for i in active]
    return out + [base[k] + sum(h[j] for j in active)]


def train_gates(ctx) -> dict:
    cfg, data = ctx.cfg, ctx.data()
    info, m = data.info, cfg.method
    net = ctx.to_device(build_gated(cfg, info))
    load_backbone_state(net.backbone, ctx.parent_state(), "the parent backbone run")
    net.freeze_backbone()
    net.eval()
    channels = [net.backbone.stage_channels[i] for i in GATES_AFTER]
    bank = ctx.to_device(GateBank(channels, info.num_classes))
    step = gate_step(m["loss"], float(m["l2"]))
    if m["features"] == "cached":
        if not isinstance(data.train, TensorBatches):
            raise ConfigError("--set features=cached needs an in-memory dataset; use features=online")
        plain = TensorBatches(data.train.x, data.train.y, 500, info=info)  # un-augmented, in order
        feats, y = features_of(net, plain)
        val_feats, _ = features_of(net, data.val)
        if m["standardize"]:
            for i, (mu, sd) in enumerate(_moments(feats)):
                bank.set_stats(i, mu, sd)
        val_y = data.val_labels.to(y.device)

        def evaluate(model) -> dict:
            with torch.no_grad():
                outs = D.unwrap(model)(val_feats)
            return {f"val_acc_gate{i + 1}": float((d.argmax(1) == val_y).double().mean() * 100)
                    for i, d in enumerate(outs)}
        ctx.fit(bank, step, "gates", batches=FeatureBatches(feats, y, cfg.train.batch_size, cfg.seed),
                eval_fn=evaluate)
    else:  # online: the frozen backbone runs on every (augmented) training batch
        if m["standardize"]:
            sums, n = None, 0
            for b, (x, _) in enumerate(data.train):
                f = net.pooled_features(x)
                s = [(t.double().sum(0), (t.double() ** 2).sum(0)) for t in f]
                sums = s if sums is None else [(a + c, b2 + d) for (a, b2), (c, d) in zip(sums, s)]
                n += x.shape[0]
                if n >= 20_000:
                    break
            n = float(D.all_reduce_sum(torch.tensor(float(n), device=ctx.device)))  # same stats on every rank
            for i, (s1, s2) in enumerate(sums):
                s1, s2 = D.all_reduce_sum(s1), D.all_reduce_sum(s2)
                mu = s1 / n
                bank.set_stats(i, mu.float(), (s2 / n - mu ** 2).clamp_min(0).sqrt().float())

        def online(model, x, y):
            return step(model, net.pooled_features(x), y)
        ctx.fit(bank, online, "gates")
    with torch.no_grad():
        for i, head in enumerate(net.heads):
            w, b = D.unwrap(bank).folded(i)
            head.fc.weight.copy_(w)
            head.fc.bias.copy_(b)
    ctx.save_model(net)
    return {**split_accuracies(ctx.collect_compact_outputs(net)), **gate_costs(D.unwrap(net), info)}


# ---------------------------------------------------------------------------- cascade evaluation


# ---------------------------------------------------------------------------- runs

# The backbones' recipes: He et al.'s ImageNet one (90 epochs, batch 256, lr 0.1 /10 at 30 and 60,
# wd 1e-4); on CIFAR, not in the paper, the usual recipe of Huang et al. (also fine for ResNet-101);
# a few cosine epochs on the CPU scales.
BACKBONE_RECIPES = {
    "paper": TrainSpec(epochs=300, batch_size=64, lr=0.1, nesterov=True, weight_decay=1e-4, milestones=(0.5, 0.75)),
    "paper-imagenet": TrainSpec(epochs=90, batch_size=256, lr=0.1, weight_decay=1e-4, milestones=(1 / 3, 2 / 3)),
    # quick: the convergence rule's protocol (docs/calibration.md): all 55k images, 20 cosine epochs
    # (doubled once by the rule: 10 failed its test), channels_last (1.8x faster on this ResNet, bench item 7)
    "quick": TrainSpec(epochs=20, batch_size=128, lr=0.1, nesterov=True, weight_decay=5e-4, schedule="cosine",
                       memory_format="channels_last"),
    "smoke": TrainSpec(epochs=1, batch_size=64, lr=0.05, nesterov=True, weight_decay=5e-4, schedule="cosine"),
}
# The gates' epochs ("paper-online": frozen backbone on every augmented ImageNet batch).
GATE_EPOCHS = {"paper": 30, "paper-online": 5, "quick": 15, "smoke": 3}


def gate_train_spec(scale: str, online: bool = False) -> TrainSpec:
    """The d-gates' training schedule at ``scale`` (also for gates trained on other frozen networks):
    a convex problem on fixed features, so SGD with momentum, cosine decay and no weight decay
    (the L2 penalty is in the loss, on W only)."""
    epochs = GATE_EPOCHS["paper-online" if online and scale == "paper" else scale]
    return TrainSpec(epochs=epochs, batch_size=256, lr=0.01, momentum=0.9, weight_decay=0.0, schedule="cosine",
                     memory_format="channels_last" if scale == "quick" else "contiguous")


def arch_runs(request, arch: str) -> dict[str, RunConfig]:
    """The backbone run and its two gate runs (hinge, CE) for ``arch`` in resnet101 | densenet201 | imagenet."""
    scale = request.scale
    dataset = request.dataset_for("imagenet" if arch == "imagenet" else "cifar10")
    data = run_data(request, dataset, IMAGENET_SIZE if arch == "imagenet" else CIFAR_SIZE)  # any size
    big = data.image_size >= 64  # the size the run reads, not the dataset's own
    if arch == "densenet201":
        model = "densenet201"
    else:
        model = "resnet101_imagenet" if big and scale == "paper" else "resnet101"
    args = dict(MODEL_ARGS[scale]["densenet201" if arch == "densenet201" else "resnet101"])
    bmethod: dict = {}
    opts = OPTIONS.read(request)
    ckpt = opts.backbone_checkpoint
    if ckpt:
        path, digest = checkpoint_identity(ckpt)
        bmethod = {"checkpoint": path, "checkpoint_sha256": digest}
    backbone = RunConfig(paper=PAPER_NAME, name=f"{model}-{'loaded' if ckpt else 'backbone'}", kind="backbone",
                         dataset=dataset, model=model, model_args=args, method=bmethod,
                         train=BACKBONE_RECIPES["paper-imagenet" if big and scale == "paper" else scale], data=data)
    in_memory = held_in_memory(dataset, data)  # as load_data will read it, at this size and split
    features = opts.given("features", "cached" if in_memory else "online")
    if features == "cached" and not in_memory:
        raise ConfigError(f"--set features=cached needs a dataset held in memory, but {dataset} at "
                          f"{data.image_size}x{data.image_size} is read through a DataLoader; use features=online")
    common = {"gates_after": list(GATES_AFTER), "l2": opts.l2, "standardize": opts.standardize, "features": features}
    hinge = opts.hinge
    gspec = gate_train_spec(scale, features == "online")
    mk = lambda tag, method: RunConfig(  # noqa: E731
        paper=PAPER_NAME, name=f"{model}-gates-{tag}", kind="gates", dataset=dataset, model=model, model_args=args,
        method=method, train=gspec, data=data, parent=backbone)
    return {"backbone": backbone, "hinge": mk(f"hinge-{hinge}", {"loss": hinge, **common}),
            "ce": mk("ce", {"loss": "ce", **common})}


def _arch_runs(arch: str, *names: str):
    """An artifact's runs: those ``names`` of :func:`arch_runs`."""
    def runs(request):
        r = arch_runs(request, arch)
        return {n: r[n] for n in names}
    return runs


# ---------------------------------------------------------------------------- shared artifact pieces


def cost_unit(request) -> tuple[str, float]:
    """The cost column: GFLOPs at paper scale (the paper's unit), MFLOPs for the reduced CPU-scale nets."""
    return ("gflops", 1e9) if request.scale == "paper" else ("mflops", 1e6)


def _cost(request) -> str:
    return (f"{cost_unit(request)[0][0].upper()}FLOPs = 2 x fvcore multiply-adds (the paper's \"FLOPs\"; "
            "fvcore counts BatchNorm and pooling too), gate heads included")


def _gate_note(cfg: RunConfig) -> str:
    m = cfg.method
    loss = "cross-entropy" if m["loss"] == "ce" else f"{m['loss']} hinge"
    return (f"gates: {loss}, L2 λ={m['l2']:g}, {m['features']} features"
            f"{', standardised while training' if m['standardize'] else ''}; "
            f"{cfg.train.epochs} epochs SGD batch {cfg.train.batch_size} lr {cfg.train.lr:g} cosine")


def _split(out: dict, split: str, score: str = "scores", gates: Sequence[int] = GATES_AFTER):
    """(gate scores gates x N, correct (gates+1) x N) of one split; the last row is the backbone's classifier."""
    idx = list(gates)  # gate j is exit j of the 3-gate network
    correct = out[f"{split}_preds"] == out[f"{split}_labels"]
    k = correct.shape[0] - 1
    return out[f"{split}_{score}"][idx], correct[idx + [k]]


def _paper_triples(artifact: str) -> tuple[list[str], dict[str, float]]:
    """The paper's threshold rows dg(t1,t2,t3) of a table, and each one's top-1 drop from the original."""
    ref = load_reference(PAPER_NAME)
    rows = [r for r in dict.fromkeys(ref[ref["artifact"] == artifact]["row"]) if r.startswith("dg(")]
    return rows, {r: paper_gap(PAPER_NAME, artifact, "original", r, "top1") for r in rows}


def parse_triple(row: str) -> list[float]:
    return [float(v) for v in row[row.index("(") + 1: row.index(")")].split(",")]


def _fmt_t(t: Sequence[float]) -> str:
    return "dg(" + ",".join("inf" if math.isinf(v) else f"{v:.2f}" for v in t) + ")"


def _load_gated(run_result, settings, device) -> GatedBackbone:
    cfg = run_result.cfg
    net = build_gated(cfg, run_info(cfg.dataset, cfg.data.image_size, settings.data_root))
    run_result.load_into(net)
    return net.to(device).eval()


def time_configs(net: GatedBackbone, x: torch.Tensor, configs: dict[str, Sequence[float]], batch_size: int,
                 device: torch.device, repeats: int = 3) -> dict[str, dict]:
    """Median wall-clock ms per image of the bare backbone ('original') and of real early exit per config."""
    chunks = list(x.split(batch_size))
    # per-image latency on a CPU: small batches gain nothing from intra-op threads, and on a
    # shared machine two OpenMP threads waiting on each other dominate the time
    with threads(1 if device.type == "cpu" else None):
        return _time_configs(net, chunks, x.shape[0], configs, device, repeats)


def _time_configs(net, chunks, n, configs, device, repeats) -> dict[str, dict]:
    def original():
        for c in chunks:
            net.backbone(c)

    with torch.no_grad():
        out = {"original": {"ms": 1000 * time_call(original, device, 1, repeats) / n}}
        for key, t in configs.items():
            def run(t=t):
                for c in chunks:
                    early_exit(net, c, list(t), "max_logit")
            ms = 1000 * time_call(run, device, 1, repeats) / n
            preds = torch.cat([early_exit(net, c, list(t), "max_logit")[0] for c in chunks])
            out[key] = {"ms": ms, "preds": preds.cpu()}
    return out


def _timed(request, settings, runs, rows: dict[str, list[dict]]) -> tuple[dict[str, dict], list[str]]:
    """Real early exit of seed 0's model at every row's thresholds, on the machine that builds the
    table: ms per image per row, and the notes saying how it was timed and that it agrees with the
    stored outputs."""
    device = D.resolve_device(settings.device)
    opts = OPTIONS.read(request)
    batch = opts.time_batch
    images = opts.given("time_images", {"paper": 1000, "quick": 256, "smoke": 32}[request.scale])
    r0 = runs[0]
    net = _load_gated(r0, settings, device)
    x = first_test_images(r0.cfg, settings, images, device)
    n = x.shape[0]
    timing = time_configs(net, x, {k: v[0]["thresholds"] for k, v in rows.items() if k != "original"}, batch, device)
    stored = r0.outputs
    agree = []
    for k, v in timing.items():
        if k != "original":
            e = cascade_exit(stored["test_scores"][:3, :n], rows[k][0]["thresholds"])
            agree.append(int((v["preds"] == stored["test_preds"][e, torch.arange(n)]).sum()))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu, 1 thread"
    return timing, [f"time: measured here ({where}), batch {batch}, first {n} test images, median of 3 after "
                    "1 warm-up; real early exit (later stages skipped for exited samples); seed 0's model",
                    f"real early exit agrees with the stored outputs on {min(agree)}/{n} timed images "
                    "(worst row; batch-size-dependent rounding can flip a borderline gate decision)"]


# ---------------------------------------------------------------------------- table1 / table2


def _reference_in(request, artifact: str) -> pd.DataFrame:
    """The paper's numbers of one artifact, GFLOPs columns converted to this scale's cost unit."""
    key, div = cost_unit(request)
    ref = load_reference(PAPER_NAME)
    ref = ref[ref["artifact"] == artifact].copy()
    g = ref["unit"] == "GFLOPs"
    ref.loc[g, "value"] = ref.loc[g, "value"] * 1e9 / div
    ref.loc[g, "column"] = ref.loc[g, "column"].str.replace("gflops", key)
    return ref[["row", "column", "value"]]


def table_columns(request) -> list[str]:
    return ["top1", "acc_drop", cost_unit(request)[0], "flops_reduction_pct", "time_ms", "speedup_pct",
            "t1", "t2", "t3", "exit1_pct", "exit2_pct", "exit3_pct"]


def _dg_rows(request, runs, margins: dict[str, float], fixed: dict[str, list[float]]):
    """Per row key: per-seed dicts of acc, cost, fractions, thresholds, correct; and the original's."""
    opts = OPTIONS.read(request)
    method, points = opts.tune, opts.grid_points
    rows: dict[str, list[dict]] = {}
    for r in runs:
        o, res = r.outputs, r.results
        costs = subset_costs(res, GATES_AFTER)
        ts, tc = _split(o, "test")
        vs, vc = _split(o, "val")
        orig = {"acc": float(tc[-1].double().mean() * 100), "cost": res["backbone_cost"],
                "correct": tc[-1], "thresholds": [math.inf] * 3, "fractions": [0.0, 0.0, 0.0, 100.0]}
        rows.setdefault("original", []).append(orig)
        val_orig = float(vc[-1].double().mean() * 100)
        for key, t in fixed.items():
            rows.setdefault(key, []).append({**cascade_eval(ts, tc, costs, t), "thresholds": list(t)})
        for key, margin in margins.items():
            tuned = tune_thresholds(vs, vc, costs, val_orig - margin, points, method)
            ev = cascade_eval(ts, tc, costs, tuned["thresholds"])
            rows.setdefault(key, []).append({**ev, "thresholds": tuned["thresholds"], "val_acc": tuned["acc"],
                                             "val_target": val_orig - margin})
    return rows


# the runs behind a gated row (the gates and the backbone they read) and behind the original (the
# backbone alone): what a claim names so that an outlying seed of either is shown
GATED_ARMS = (("hinge", "backbone"), ("backbone",))


def _vs_original(rows: dict[str, list[dict]], key: str, original: str = "original"):
    """The top-1 change of row ``key`` against the original, paired over the same test samples."""
    return gap_with_spread([s["correct"] for s in rows[key]], [s["correct"] for s in rows[original]],
                           arms=GATED_ARMS)


def saving_evidence(rows: dict[str, list[dict]], key: str, original: str = "original"):
    """The FLOPs saving (%) of row ``key`` against the original backbone, as per-image evidence: each
    test image's saving 1 - cost_i / the original's cost against nothing (zeros), so that the core's
    rule counts the seeds and the test images; the mean of the savings is the table's reduction."""
    a = [1 - s["sample_cost"].double() / float(o["cost"]) for s, o in zip(rows[key], rows[original])]
    return gap_with_spread(a, [torch.zeros_like(x) for x in a], arms=GATED_ARMS)


def _dg_table(artifact: str, arch_name: str):
    """Tables 1 and 2: the original backbone; the paper's threshold triples dg(t1,t2,t3); and per
    triple, thresholds tuned on validation for the same accuracy margin below the original.  Top-1,
    its change, average FLOPs, measured time per image, thresholds and exit fractions."""
    def build(request, runs, settings):
        cfg = runs.config("hinge")
        unit, div = cost_unit(request)
        paper_rows, margins = _paper_triples(artifact)
        tuned_keys = {f"tuned(-{margins[r]:.2f})": r for r in paper_rows}
        rows = _dg_rows(request, runs["hinge"], {k: margins[r] for k, r in tuned_keys.items()},
                        {r: parse_triple(r) for r in paper_rows})
        timing, time_notes = _timed(request, settings, runs["hinge"], rows)
        t_orig = timing["original"]["ms"]
        orig_cost = float(np.mean([s["cost"] for s in rows["original"]]))
        long, claims = [], []
        for key, seeds in rows.items():
            drop = (0.0, math.nan) if key == "original" else _vs_original(rows, key)
            gf, gf_s = mean_and_spread([s["cost"] / div for s in seeds])
            vals = {"top1": rate_with_spread([s["correct"] for s in seeds]), "acc_drop": drop, unit: (gf, gf_s),
                    "time_ms": (timing[key]["ms"], math.nan)}
            if key != "original":
                vals["flops_reduction_pct"] = (100 * (1 - gf * div / orig_cost), math.nan)
                vals["speedup_pct"] = (100 * (1 - timing[key]["ms"] / t_orig), math.nan)
                for i in range(3):
                    vals[f"t{i + 1}"] = mean_and_spread([s["thresholds"][i] for s in seeds])
                    vals[f"exit{i + 1}_pct"] = mean_and_spread([s["fractions"][i] for s in seeds])
            long += [{"row": key, "column": c, "value": v, "spread": s} for c, (v, s) in vals.items()]
            if key.startswith("dg("):  # the paper's thresholds on our gates: its accuracy change, no headline
                claims.append(Claim(f"top-1 change of {key} (the paper's thresholds) vs original (points)", drop,
                                    paper_gap(PAPER_NAME, artifact, key, "original", "top1")))
        # the paper's claim: the FLOPs saved at a given accuracy drop; ours at thresholds tuned on
        # validation for the paper's drop of each row, beside the paper's saving at that drop
        claims += [Claim(f"FLOPs saving of d-gates tuned on val for the paper's top-1 drop of "
                         f"{margins[src]:.2f} ({src}) vs original (%)", saving_evidence(rows, key),
                         paper_value(PAPER_NAME, artifact, src, "flops_reduction_pct"), headline=True)
                   for key, src in tuned_keys.items()]

        # the paper's numbers: its own rows, and for our tuned rows those of its row at the same margin
        scaled = _reference_in(request, artifact)
        ref_rows = []
        for key in ["original", *paper_rows, *tuned_keys]:
            src = tuned_keys.get(key, key)
            for c in ("top1", unit, "flops_reduction_pct", "time_ms", "speedup_pct"):
                v = scaled[(scaled["row"] == src) & (scaled["column"] == c)]["value"]
                if len(v):
                    ref_rows.append({"row": key, "column": c, "value": float(v.iloc[0])})
            if src.startswith("dg("):
                ref_rows.append({"row": key, "column": "acc_drop", "value": -margins[src]})
                if key in tuned_keys:
                    ref_rows += [{"row": key, "column": f"t{i + 1}", "value": v}
                                 for i, v in enumerate(parse_triple(src))]
        labels = {"original": "original (backbone alone)"}
        labels.update({r: f"{r}: the paper's thresholds" for r in paper_rows})
        for k in tuned_keys:
            labels[k] = f"tuned on val, target original − {margins[tuned_keys[k]]:.2f}: {_fmt_t(rows[k][0]['thresholds'])}"
        notes = [_gate_note(cfg),
                 "thresholds of the tuned rows: fitted on the held-out validation split for the target "
                 "(our backbone's validation top-1 minus the paper's accuracy margin of the row); "
                 f"tune={OPTIONS.read(request).tune}, {OPTIONS.read(request).grid_points} "
                 "quantile candidates per gate + inf",
                 "paper columns of a tuned row: the paper's row at the same accuracy margin; "
                 "acc_drop = top-1 minus the original's; exitN_pct = test samples leaving at gate N",
                 "claims: the paper's is the FLOPs saving at an accuracy drop, judged on the tuned rows (headline); "
                 "the top-1 change of the paper's threshold triples on our gates is shown without headline",
                 *time_notes]
        return Table(f"{arch_name} with d-gates: top-1, average {unit[0].upper()}FLOPs, time per image (CIFAR-10)", cfg.dataset,
                     model_name(cfg), _cost(request), long, ["original", *paper_rows, *tuned_keys], table_columns(request),
                     labels, reference=pd.DataFrame(ref_rows), notes=notes, claims=claims)
    return build


# ---------------------------------------------------------------------------- imagenet

IMAGENET_ROWS = ["resnet-101", "dgate", "dg(1.0,1.0,1.0)", "act", "sact", "blockdrop"]
IMAGENET_LABELS = {"resnet-101": "ResNet-101 (original)", "dgate": "d-gates tuned on val, no drop in top-1",
                   "dg(1.0,1.0,1.0)": "dg(1.0,1.0,1.0) (Figure 7's configuration)", "act": "ACT (paper only)",
                   "sact": "SACT (paper only)", "blockdrop": "BlockDrop (paper only)"}


def build_imagenet(request, runs, settings):
    """Sec. 3.4: ResNet-101 on ImageNet with d-gates tuned for no drop in top-1, beside the paper's
    quotes of ACT, SACT and BlockDrop."""
    cfg = runs.config("hinge")
    rows = _dg_rows(request, runs["hinge"], {"dgate": 0.0}, {"dg(1.0,1.0,1.0)": [1.0, 1.0, 1.0]})
    rows["resnet-101"] = rows.pop("original")
    unit, div = cost_unit(request)
    orig_cost = float(np.mean([s["cost"] for s in rows["resnet-101"]]))
    long = []
    for key, seeds in rows.items():
        acc, spread = rate_with_spread([s["correct"] for s in seeds])
        gf = float(np.mean([s["cost"] for s in seeds]))
        long += [{"row": key, "column": "top1", "value": acc, "spread": spread},
                 {"row": key, "column": unit, "value": gf / div}]
        if key != "resnet-101":
            long += [{"row": key, "column": "flops_reduction_pct", "value": 100 * (1 - gf / orig_cost)},
                     {"row": key, "column": f"{unit}_saved", "value": (orig_cost - gf) / div}]
    notes = [_gate_note(cfg),
             f"d-gates row: thresholds {_fmt_t(rows['dgate'][0]['thresholds'])} fitted on the held-out validation "
             "split for a target of the backbone's validation top-1 (no drop)",
             "the paper's ResNet-101 row is quoted from BlockDrop; ACT/SACT/BlockDrop are the paper's quotes only"]
    if request.scale != "paper":
        notes.insert(0, "smaller scales: the same runs as table1 (the scale's dataset), not ImageNet")
    claims = [Claim("top-1 change of d-gates vs ResNet-101", _vs_original(rows, "dgate", "resnet-101"),
                    paper_gap(PAPER_NAME, "imagenet", "dgate", "resnet-101", "top1")),
              Claim("FLOPs saving of d-gates tuned on val for no top-1 drop vs ResNet-101 (%)",
                    saving_evidence(rows, "dgate", "resnet-101"),
                    paper_value(PAPER_NAME, "imagenet", "dgate", "flops_reduction_pct"))]
    return Table("ResNet-101 with d-gates on ImageNet: top-1 and average GFLOPs", cfg.dataset, model_name(cfg),
                 _cost(request), long, IMAGENET_ROWS, ["top1", unit, "flops_reduction_pct", f"{unit}_saved"],
                 IMAGENET_LABELS, reference=_reference_in(request, "imagenet"), notes=notes, claims=claims)


# ---------------------------------------------------------------------------- fig4: hinge vs CE

FIG4_MARGINS = np.round(np.arange(0.0, 15.01, 0.5), 2)


def _curve(request, runs, score: str, active=(0, 1)) -> tuple[pd.DataFrame, list[tuple[np.ndarray, torch.Tensor]]]:
    """One point per accuracy target (the original's validation top-1 minus each of FIG4_MARGINS):
    thresholds tuned on validation, cost and top-1 on test.  Also, per seed, the points' costs and
    per-sample test correctness (points x N), to compare two curves on the same samples."""
    div = cost_unit(request)[1]
    opts = OPTIONS.read(request)
    method, points = opts.tune, opts.grid_points
    frames, per_seed = [], []
    for seed, r in enumerate(runs):
        o, res = r.outputs, r.results
        costs = subset_costs(res, active)
        vs, vc = _split(o, "val", score, active)
        ts, tc = _split(o, "test", score, active)
        grids = [threshold_grid(s, points) for s in vs]
        val_orig = float(vc[-1].double().mean() * 100)
        xs, oks = [], []
        for m in FIG4_MARGINS:
            tuned = tune_thresholds(vs, vc, costs, val_orig - m, points, method, grids)
            ev = cascade_eval(ts, tc, costs, tuned["thresholds"])
            lo, hi = bootstrap_ci(ev["correct"])
            frames.append({"seed": seed, "margin": float(m), "cost": ev["cost"] / div, "acc": ev["acc"],
                           "half_width": (hi - lo) / 2, "thresholds": [round(v, 4) for v in tuned["thresholds"]],
                           "orig_acc": float(tc[-1].double().mean() * 100), "orig_cost": res["backbone_cost"] / div})
            xs.append(ev["cost"] / div)
            oks.append(ev["correct"])
        per_seed.append((np.array(xs), torch.stack(oks)))
    return pd.DataFrame(frames), per_seed


def build_fig4(request, runs, settings):
    """Figure 4: accuracy vs FLOPs of two gates trained with the hinge loss (exit on max distance)
    and with cross-entropy (max softmax, max logit)."""
    hinge, ce = runs.config("hinge"), runs.config("ce")
    curves = {"d-gates, hinge loss (max distance)": _curve(request, runs["hinge"], "scores"),
              "gates, cross-entropy (max softmax)": _curve(request, runs["ce"], "conf"),
              "gates, cross-entropy (max logit)": _curve(request, runs["ce"], "scores")}
    series, frames = [], []
    for label, (df, _) in curves.items():
        g = df.groupby("margin", sort=True)
        mean = g[["cost", "acc", "half_width"]].mean()
        several = df["seed"].nunique() > 1  # the 95 % t-interval over seeds, else the bootstrap half-width
        err = g["acc"].agg(lambda v: mean_and_spread(list(v))[1]) if several else mean["half_width"]
        mean = mean.sort_values("cost")
        series.append(Series(label, mean["cost"].tolist(), mean["acc"].tolist(), err.loc[mean.index].tolist()))
        frames.append(df.assign(method=label, source="ours", band=df["margin"].map(err)))
    base, base_pts = curves["d-gates, hinge loss (max distance)"]
    orig = float(base["orig_cost"].mean())
    series.append(Series("original ResNet-101", [orig], [float(base["orig_acc"].mean())], kind="points"))
    paper, precs = _fig4_paper()
    notes = [_gate_note(hinge), _gate_note(ce),
             "two gates (after stages 1 and 2), as the paper's Figure 4; one point per accuracy target "
             "(original − 0 … 15 points), thresholds fitted on the held-out validation split, shown on test",
             "band: the 95 % t-interval over seeds, or (one seed) the 95 % bootstrap half-width over test samples",
             "paper: Table 1's d-gate points (three gates, hinge) and the original, on CIFAR-10; Figure 4's curves "
             "are not transcribed"]
    soft, soft_pts = curves["gates, cross-entropy (max softmax)"]
    lo = max(xs.min() for xs, _ in [*base_pts, *soft_pts])
    hi = min(xs.max() for xs, _ in [*base_pts, *soft_pts])
    claims = []
    for frac in (0.4, 0.6, 0.8):
        x = frac * orig
        if not lo <= x <= hi:
            notes.append(f"hinge vs CE at {100 * frac:.0f} % of the original's FLOPs: outside both curves' range")
            continue
        claims.append(Claim(f"top-1 of hinge gates minus CE gates (max softmax) at {100 * frac:.0f} % of the "
                            "original's FLOPs (interpolated)",
                            gap_with_spread(correct_at_cost(base_pts, x), correct_at_cost(soft_pts, x),
                                            arms=("hinge", "ce")),
                            sign=+1, headline=True))  # the paper: hinge-trained gates are the better ones at equal cost
    xlabel = f"average {'GFLOPs' if request.scale == 'paper' else 'MFLOPs'} per image (2 x multiply-adds, fvcore)"
    same = request.scale == "paper" and hinge.dataset == "cifar10"  # the paper's dataset and unit: one axis
    return Figure("Accuracy vs FLOPs: hinge-trained vs cross-entropy-trained gates", hinge.dataset, model_name(hinge),
                  _cost(request), series, xlabel, f"test top-1 (%) on {dataset_name(hinge.dataset)}",
                  pd.concat([*frames, pd.DataFrame(precs)], ignore_index=True), paper=paper,
                  paper_axes=None if same else ("GFLOPs per image (the paper's: 2 x multiply-adds)",
                                                f"top-1 (%) on {dataset_name('cifar10')}"),
                  paper_title=paper_label("cifar10", "ResNet-101 + d-gates, Table 1"), notes=notes, claims=claims)


def _fig4_paper() -> tuple[list[Series], list[dict]]:
    """The paper's accuracy-vs-FLOPs points beside Figure 4 (repro/reference/dgate.csv, Table 1:
    ResNet-101 on CIFAR-10, its d-gate triples and the original), in GFLOPs as printed."""
    value = lambda row, col: paper_value(PAPER_NAME, "table1", row, col)  # noqa: E731
    pts = sorted((value(r, "gflops"), value(r, "top1"), r) for r in _paper_triples("table1")[0])
    label = paper_label("cifar10", "d-gates dg(t1,t2,t3), three gates (Table 1)")
    orig = (value("original", "gflops"), value("original", "top1"))
    series = [Series(label, [p[0] for p in pts], [p[1] for p in pts], kind="paper", color="tab:blue"),
              Series(paper_label("cifar10", "original ResNet-101 (Table 1)"), [orig[0]], [orig[1]], kind="paper",
                     color="tab:red")]
    recs = [{"source": "paper", "method": label, "row": r, "gflops_paper": x, "acc": y} for x, y, r in pts]
    recs.append({"source": "paper", "method": series[1].label, "row": "original", "gflops_paper": orig[0],
                 "acc": orig[1]})
    return series, recs


# ---------------------------------------------------------------------------- fig5: (t1, t2) grid

FIG5_GRID = np.round(np.arange(-0.5, 3.0001, 0.1), 2)


def _heatmaps(panels: list[tuple[str, np.ndarray, str]], ticks: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.8))
    for ax, (name, z, cmap) in zip(np.atleast_1d(axes), panels):
        im = ax.imshow(z.T, origin="lower", cmap=cmap, aspect="auto",
                       extent=(ticks[0] - 0.05, ticks[-1] + 0.05, ticks[0] - 0.05, ticks[-1] + 0.05))
        cs = ax.contour(ticks, ticks, z.T, levels=6, colors="k", linewidths=0.5)
        ax.clabel(cs, fontsize=6, fmt="%.1f")
        ax.set_xlabel("t1 (d-gate 1 threshold)")
        ax.set_ylabel("t2 (d-gate 2 threshold)")
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax).set_label(name.split(") ", 1)[-1], fontsize=8)
    return fig


def build_fig5(request, runs, settings):
    """Figure 5: average FLOPs and test top-1 of two d-gates over a grid of fixed (t1, t2)."""
    cfg = runs.config("hinge")
    grid = torch.tensor(FIG5_GRID, dtype=torch.float64)
    accs, costs, origs, orig_costs = [], [], [], []
    for r in runs["hinge"]:
        o, res = r.outputs, r.results
        ts, tc = _split(o, "test", "scores", (0, 1))
        g = cascade_grid(ts, tc, subset_costs(res, (0, 1)), [grid, grid])
        accs.append(g["acc"])
        costs.append(g["cost"])
        origs.append(float(tc[-1].double().mean() * 100))
        orig_costs.append(res["backbone_cost"])
    acc = torch.stack(accs).mean(0).numpy()
    cost = torch.stack(costs).mean(0).numpy()
    orig, orig_cost = float(np.mean(origs)), float(np.mean(orig_costs))
    rel = 100 * cost / orig_cost
    t1, t2 = np.meshgrid(FIG5_GRID, FIG5_GRID, indexing="ij")
    unit, div = cost_unit(request)
    data = pd.DataFrame({"t1": t1.ravel(), "t2": t2.ravel(), unit: cost.ravel() / div,
                         "cost_pct_of_original": rel.ravel(), "acc": acc.ravel(), "acc_drop": acc.ravel() - orig})
    i0 = int(np.argmin(np.abs(FIG5_GRID)))
    notes = [_gate_note(cfg), "two gates (after stages 1 and 2) as the paper's Figure 5; test split, "
             "fixed thresholds (no fitting involved)",
             f"at (t1, t2) = (0, 0): {orig_cost / cost[i0, i0]:.2f}x fewer FLOPs than the original, "
             f"top-1 {acc[i0, i0] - orig:+.2f} points"]
    ok = acc >= orig - 0.1
    if ok.any():
        j = np.unravel_index(int(np.argmin(np.where(ok, cost, np.inf))), cost.shape)
        notes.append(f"cheapest grid point within 0.1 point of the original's top-1: (t1, t2) = "
                     f"({FIG5_GRID[j[0]]:.1f}, {FIG5_GRID[j[1]]:.1f}), FLOPs −{100 - rel[j]:.1f} %")
    panels = [("(a) average FLOPs, % of the original", rel, "viridis"), ("(b) test top-1 (%)", acc, "magma")]
    return Figure("Cost and accuracy over the (t1, t2) grid of two d-gates", cfg.dataset, model_name(cfg),
                  _cost(request), data=data, draw=lambda: _heatmaps(panels, FIG5_GRID), notes=notes)


# ---------------------------------------------------------------------------- fig7: per-class statistics

CLASS_NAMES = {
    "fashion-mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
    "cifar10": ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "synthetic": [str(i) for i in range(10)],
}


def build_fig7(request, runs, settings):
    """Figure 7: per class, the test samples each d-gate classifies correctly with distance >= 1,
    on its own and under the cascade dg(1,1,1)."""
    cfg = runs.config("hinge")
    info = run_info(cfg.dataset, cfg.data.image_size, settings.data_root)  # ImageNet below 224: its tree's classes
    C = info.num_classes
    indep, casc, totals = np.zeros((3, C)), np.zeros((3, C)), np.zeros(C)
    seeds = runs["hinge"]
    for r in seeds:
        o = r.outputs
        y, s, p = o["test_labels"], o["test_scores"], o["test_preds"]
        e = cascade_exit(s[:3], [1.0, 1.0, 1.0])
        totals += torch.bincount(y, minlength=C).numpy()
        for i in range(3):
            good = (p[i] == y) & (s[i] >= 1.0)
            indep[i] += torch.bincount(y[good], minlength=C).numpy()
            casc[i] += torch.bincount(y[good & (e == i)], minlength=C).numpy()
    n = len(seeds)
    indep, casc, totals = indep / n, casc / n, totals / n
    names = [str(c) for c in (CLASS_NAMES.get(cfg.dataset) or list(class_names(cfg.dataset) or range(C)))]
    data = pd.DataFrame([{"class": c, "name": names[c] if c < len(names) else str(c), "gate": i + 1,
                          "correct_distance_ge_1": indep[i, c], "exits_correct_dg111": casc[i, c],
                          "class_total": totals[c]} for i in range(3) for c in range(C)])

    def draw():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # 0.12 in a class up to 16 in (ImageNet's 1000 classes: bars without tick labels)
        fig, axes = plt.subplots(3, 1, figsize=(min(max(6.4, 0.12 * C), 16), 7.5), sharex=True)
        x = np.arange(C)
        for i, ax in enumerate(axes):
            ax.bar(x, indep[i], color="tab:blue", alpha=0.45, label="gate alone: correct, max d ≥ 1")
            ax.bar(x, casc[i], color="tab:blue", label="exits here correctly under dg(1,1,1)")
            ax.plot(x, totals, "k_", ms=8, label="test samples of the class")
            ax.set_ylabel(f"test samples (count)\nd-gate {i + 1}", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
        axes[0].legend(loc="lower center", bbox_to_anchor=(0.5, 1.02), ncol=3, fontsize=7)
        if C <= 20:
            axes[-1].set_xticks(x, names, rotation=30, fontsize=7)
        axes[-1].set_xlabel("class")
        return fig

    return Figure("Per class: test samples each d-gate classifies correctly with distance ≥ 1", cfg.dataset,
                  model_name(cfg), _cost(request), data=data, draw=draw,
                  notes=[_gate_note(cfg), "bars: each gate on its own (every test sample); dark: under the cascade "
                         "dg(1.0,1.0,1.0), the samples that actually exit there correctly", f"mean over {n} seed(s)"])


# ---------------------------------------------------------------------------- the paper

PAPER = Paper(
    name=PAPER_NAME,
    title=("Shafiee, Shafiee & Wong, Dynamic Representations Toward Efficient Inference on Deep Neural Networks "
           "by Decision Gates (CVPRW 2019)"),
    artifacts={a.name: a for a in [
        Artifact("table1", "ResNet-101 + d-gates on CIFAR-10: top-1, GFLOPs, time (paper and tuned thresholds)",
                 _arch_runs("resnet101", "backbone", "hinge"), _dg_table("table1", "ResNet-101"),
                 baselines=("backbone",), headline=True),
        Artifact("table2", "DenseNet-201 + d-gates on CIFAR-10: top-1, GFLOPs, time (paper and tuned thresholds)",
                 _arch_runs("densenet201", "backbone", "hinge"), _dg_table("table2", "DenseNet-201"),
                 baselines=("backbone",)),
        Artifact("fig4", "Accuracy vs FLOPs, hinge-trained vs cross-entropy-trained gates (ResNet-101)",
                 _arch_runs("resnet101", "hinge", "ce", "backbone"), build_fig4,
                 baselines=("backbone",), headline=True),
        Artifact("fig5", "FLOPs and accuracy over a (t1, t2) grid of two d-gates (ResNet-101)",
                 _arch_runs("resnet101", "hinge", "backbone"), build_fig5,
                 baselines=("backbone",)),
        Artifact("fig7", "Per class, test samples each d-gate classifies correctly with distance >= 1",
                 _arch_runs("imagenet", "hinge", "backbone"), build_fig7,
                 baselines=("backbone",)),
        Artifact("imagenet", "ResNet-101 + d-gates on ImageNet (smaller scales: table1's runs)",
                 _arch_runs("imagenet", "backbone", "hinge"), build_imagenet,
                 baselines=("backbone",)),
    ]},
    trainers={"backbone": train_backbone, "gates": train_gates},
    options=OPTIONS,
)
