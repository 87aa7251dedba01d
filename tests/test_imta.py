"""IMTA: the losses by hand, phase II freezing, and `repro imta table2 --scale smoke` end to end."""
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import smoke_cli
from repro.papers.imta import exits_ce, ofa_loss
from repro.runner import Request

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_ofa_loss_by_hand():
    s = torch.tensor([[2.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([1])
    T, g = 2.0, 0.25
    p_t = torch.softmax(t / T, 1)[0]
    p_s = torch.softmax(s / T, 1)[0]
    kl = float((p_t * (p_t / p_s).log()).sum())
    ce_s = -math.log(math.exp(0) / (math.exp(2) + 1))
    ce_t = -math.log(math.e / (1 + math.e))
    want = ce_t + (1 - g) * ce_s + g * T * T * kl
    assert float(ofa_loss([s, t], y, T, g, "batchmean")) == pytest.approx(want, rel=1e-6)
    # the authors' KLDivLoss(reduction='mean') also divides by the number of classes
    want_mean = ce_t + (1 - g) * ce_s + g * T * T * kl / 2
    assert float(ofa_loss([s, t], y, T, g, "mean")) == pytest.approx(want_mean, rel=1e-6)


def test_ofa_loss_defaults_are_the_released_script():
    """T 1, g 0.1, KLDivLoss(reduction='mean'): the distillation weight is g / C per sample-KL."""
    torch.manual_seed(0)
    B, C = 3, 100
    s, t = torch.randn(B, C), torch.randn(B, C)
    y = torch.tensor([0, 5, 7])
    p_t = torch.softmax(t.double(), 1)
    kl_per_sample = (p_t * (p_t.log() - torch.log_softmax(s.double(), 1))).sum(1)
    ce = lambda z: float(-torch.log_softmax(z.double(), 1)[torch.arange(B), y].mean())  # noqa: E731
    want = ce(t) + 0.9 * ce(s) + 0.1 * float(kl_per_sample.mean()) / C  # sum over B*C elements / (B*C)
    assert float(ofa_loss([s, t], y)) == pytest.approx(want, rel=1e-5)
    # non-vacuous: batchmean makes the term C times stronger
    strong = ce(t) + 0.9 * ce(s) + 0.1 * float(kl_per_sample.mean())
    assert float(ofa_loss([s, t], y, kl_reduction="batchmean")) == pytest.approx(strong, rel=1e-5)
    assert abs(strong - want) > 1e-3
    # an explicit teacher replaces the last exit as the target
    u = torch.randn(B, C)
    p_u = torch.softmax(u.double(), 1)
    kl_u = (p_u * (p_u.log() - torch.log_softmax(s.double(), 1))).sum(1).mean()
    assert float(ofa_loss([s, t], y, teacher=u)) == pytest.approx(ce(t) + 0.9 * ce(s) + 0.1 * float(kl_u) / C,
                                                                  rel=1e-5)


def test_runs_default_to_the_released_ofa_configuration():
    from repro.papers.imta import ablation_runs

    for scale in ("paper", "smoke"):
        m = ablation_runs(Request(scale=scale))["ge+isc+ofa"].method
        assert (m["T"], m["ofa_weight"], m["kl_reduction"], m["ofa_teacher"], m["phase2_init"]) == \
            (1.0, 0.1, "mean", "phase1", "fresh")
    opts = (("kl_reduction", "batchmean"), ("ofa_teacher", "self"), ("phase2_init", "phase1"))
    m = ablation_runs(Request(scale="smoke", options=opts))["ofa"].method
    assert (m["kl_reduction"], m["ofa_teacher"], m["phase2_init"]) == ("batchmean", "self", "phase1")
    assert "ofa_teacher" not in ablation_runs(Request(scale="smoke"))["isc"].method  # no OFA, no OFA keys


def test_ofa_teacher_gets_no_gradient_from_distillation():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    y = torch.randint(0, 5, (4,))
    ofa_loss([s, t], y, 3.0, 0.9).backward()
    t2 = t.detach().clone().requires_grad_()
    F.cross_entropy(t2, y).backward()
    assert torch.allclose(t.grad, t2.grad)  # only the last exit's own CE reaches it


def test_exits_ce_is_the_unweighted_sum():
    z = [torch.randn(3, 4) for _ in range(3)]
    y = torch.tensor([0, 1, 2])
    assert float(exits_ce(z, y)) == pytest.approx(sum(float(F.cross_entropy(a, y)) for a in z))


def test_phase2_trains_only_final_layers_and_keeps_bn_statistics():
    from repro.models.msdnet import msdnet_cifar_5exit
    from repro.train import freeze_except

    m = msdnet_cifar_5exit(num_classes=10, in_channels=1, nChannels=4, growthRate=2, head_channels=8, isc=True)
    trainable = m.final_layer_parameters()
    freeze_except(m, trainable)
    m.train()
    bn = next(mod for mod in m.blocks.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    out = m(torch.randn(6, 1, 32, 32))
    sum(o.sum() for o in out).backward()
    assert torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in m.blocks.parameters())
    assert all(p.grad is not None for p in m.isc_classifiers.parameters())


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_table2_smoke_end_to_end(tmp_path):
    smoke_cli("imta", "table2", tmp_path / "runs", tmp_path)  # $REPRO_SMOKE_RUNS' runs copied in
    md = (tmp_path / "tables" / "smoke" / "imta_table2.md").read_text()
    assert "scale: smoke" in md and "dataset: fashion-mnist" in md and "MSDNet's counter" in md
    df = pd.read_csv(tmp_path / "tables" / "smoke" / "imta_table2.csv", comment="#")
    assert list(df["row"]) == ["MSDNet (no GE/ISC/OFA)", "GE", "ISC", "OFA", "GE+ISC+OFA"]
    for k in range(1, 6):
        assert df[f"E-{k}"].between(0, 100).all()
        assert df[f"E-{k} paper"].notna().all()
        assert f"E-{k} Δ" not in df.columns  # smoke scale is not the paper's setting: no Δ
    assert df.loc[4, "E-5 paper"] == 73.45
    runs = sorted(p.name for p in (tmp_path / "runs" / "imta").iterdir())
    assert len(runs) == 5
    for r in runs:
        d = tmp_path / "runs" / "imta" / r
        assert all((d / f).exists() for f in ("config.json", "results.json", "outputs.pt", "split.pt", "metrics.csv"))
    # asking again trains nothing: results are reused
    mtimes = {r: (tmp_path / "runs" / "imta" / r / "results.json").stat().st_mtime for r in runs}
    smoke_cli("imta", "fig4", tmp_path / "runs", tmp_path)
    assert mtimes == {r: (tmp_path / "runs" / "imta" / r / "results.json").stat().st_mtime for r in runs}
    fig = pd.read_csv(tmp_path / "figures" / "smoke" / "imta_fig4.csv", comment="#")
    ours = fig[fig["source"] == "ours"]
    assert set(ours["method"]) == {"MSDNet (no GE/ISC/OFA)", "GE", "ISC", "OFA", "GE+ISC+OFA"}
    assert (ours["acc_spread"] > 0).all()  # the band: bootstrap half-width at one seed
    assert set(fig.loc[fig["source"] == "paper", "method"]) == {f"paper, CIFAR-100: {k}" for k in
                                                                 ("MSDNet (no GE/ISC/OFA)", "GE", "ISC", "OFA",
                                                                  "GE+ISC+OFA")}
    assert (tmp_path / "figures" / "smoke" / "imta_fig4.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["nopaper", "x"], "unknown paper 'nopaper'; choose one of:"),
    (["imta", "table9"], "unknown artifact 'table9' for imta; choose one of: table1"),
    (["imta", "table2", "--scale", "huge"], "unknown scale 'huge'; choose one of: smoke, quick, paper"),
    (["imta", "table2", "--dataset", "mnist"], "unknown dataset 'mnist'; choose one of: cifar10"),
    (["imta", "table2", "--epochs", "-3"], "--epochs must be a positive integer, got -3"),
    (["imta", "table2", "--seeds", "0"], "--seeds must be a positive integer"),
    (["imta", "table2", "--launcher", "pbs", "--dry-run"], "unknown launcher 'pbs'; choose one of: local, submitit"),
    (["imta", "table2", "--set", "x=1"], "unknown option '--set x=...' for imta"),
    (["imta", "table2", "--epochs", "many"], "Invalid value for '--epochs'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    from repro.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv + ["--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err


def test_missing_data_is_one_line(capsys, tmp_path, monkeypatch):
    from repro.cli import main

    with pytest.raises(SystemExit) as e:
        main(["imta", "table2", "--scale", "smoke", "--dataset", "imagenet", "--data-root", str(tmp_path),
              "--runs-dir", str(tmp_path / "r"), "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("error: dataset 'imagenet' not found")


# ---------------------------------------------------------------------------- phase II's start


def _phase1_and_phase2(isc: bool, ofa: bool, options=()):
    """A tiny trained-looking phase-I model and a phase-II model prepared from its weights."""
    from repro.data import dataset_info
    from repro.papers import imta

    runs = imta.ablation_runs(Request(scale="smoke", options=options), exits=3)
    key = {(True, True): "ge+isc+ofa", (True, False): "isc", (False, True): "ofa"}[(isc, ofa)]
    cfg2 = runs[key]
    info = dataset_info("fashion-mnist")
    torch.manual_seed(0)
    m1 = imta.build_model(cfg2.parent, info)
    with torch.no_grad():  # phase-I weights unlike any fresh init, BN statistics away from 0/1
        for p in m1.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for mod in m1.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.8, 1.2)
    m1.eval()
    m2 = imta.build_model(cfg2, info)
    trainable, teacher = imta.prepare_phase2(m2, m1.state_dict(), cfg2.method)
    return imta, cfg2, m1, m2, trainable, teacher


@pytest.mark.parametrize("isc", [True, False])
def test_ofa_teacher_is_the_phase1_last_exit_at_step0(isc):
    imta, cfg2, m1, m2, trainable, teacher = _phase1_and_phase2(isc, True)
    assert teacher is not None
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    with torch.no_grad():
        ref = m1(x)[-1]
    m2.train()  # as in fit: the frozen parts stay in eval mode
    step = imta.make_step(cfg2.method, teacher)
    loss, logits = step(m2, x, y)
    # the teacher the step used is phase I's last exit, on the same (frozen) features
    with torch.no_grad():
        m2(x)
    t = teacher.logits()
    assert torch.allclose(t, ref, atol=1e-5) and torch.equal(t.argmax(1), ref.argmax(1))
    want = ofa_loss(logits, y, 1.0, 0.1, "mean", teacher=ref).detach()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    # non-vacuous: the model's own (re-created) last exit is a different teacher
    assert not torch.allclose(logits[-1], ref, atol=1e-3)
    assert float(loss.detach()) != pytest.approx(float(ofa_loss(logits, y, 1.0, 0.1, "mean").detach()), rel=1e-6)
    teacher.close()


def test_ofa_teacher_self_is_the_old_behaviour():
    imta, cfg2, m1, m2, trainable, teacher = _phase1_and_phase2(True, True, (("ofa_teacher", "self"),))
    assert teacher is None and cfg2.method["ofa_teacher"] == "self"
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    loss, logits = imta.make_step(cfg2.method)(m2, x, y)
    assert float(loss.detach()) == pytest.approx(float(ofa_loss(logits, y, 1.0, 0.1, "mean").detach()), rel=1e-6)


@pytest.mark.parametrize("isc,ofa", [(True, True), (True, False), (False, True)])
def test_phase2_recreates_the_final_classifiers(isc, ofa):
    imta, cfg2, m1, m2, trainable, teacher = _phase1_and_phase2(isc, ofa)
    assert cfg2.method["phase2_init"] == "fresh"
    s1 = m1.state_dict()
    final = {id(p) for p in trainable}
    named = dict(m2.named_parameters())
    for name, p in named.items():
        if id(p) in final and name in s1:  # a final layer that existed in phase I: re-created
            assert not torch.equal(p.detach(), s1[name]), name
        elif id(p) not in final:  # everything frozen is phase I's
            assert torch.equal(p.detach(), s1[name]), name
    # Linear biases start at 0, like phase I's initialisation
    assert torch.equal(m2.classifiers[0].bias.detach(), torch.zeros_like(m2.classifiers[0].bias))
    # the option keeps phase I's classifiers (the ISC modules are new either way)
    imta, cfg2, m1, m2, trainable, teacher = _phase1_and_phase2(isc, ofa, (("phase2_init", "phase1"),))
    s1 = m1.state_dict()
    for name, p in m2.named_parameters():
        if name in s1:
            assert torch.equal(p.detach(), s1[name]), name


# ---------------------------------------------------------------------------- what the artifacts use


class _FakeRun:
    def __init__(self, results, outputs):
        self.results, self.outputs = results, outputs


def test_table1_sizes_are_msdnets_at_paper_scale():
    """Table 1's params/MADDs columns describe MSDNet (the baseline run), not the ISC model."""
    from repro.data import dataset_info
    from repro.papers import imta
    from repro.runner import Settings
    from repro.render import read_table_csv

    request = Request(scale="paper")
    info = dataset_info("cifar100")
    from repro.api import Runs
    from repro.runner import build_and_write

    named = imta.table1_runs(request)
    base, full = named["msdnet"], named["imta"]
    assert base.method == {"ge": False} and full.method["isc"]
    given = {}
    for i, (name, cfg) in enumerate(named.items()):
        torch.manual_seed(i)
        outputs = {"test_logits": torch.randn(7, 50, 100), "test_labels": torch.randint(0, 100, (50,))}
        given[name] = [_FakeRun(imta.exit_sizes(imta.build_model(cfg, info), info), outputs)]

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        build_and_write("imta", "table1", request, Runs.fixed(given, named, request), Settings(out_dir=Path(d)))
        df = read_table_csv(Path(d) / "tables" / "paper" / "imta_table1.csv")
    assert (df["params_m Δ"].abs() / df["params_m paper"] <= 0.03).all(), df[["params_m", "params_m paper"]]
    assert (df["madds_m Δ"].abs() / df["madds_m paper"] <= 0.01).all(), df[["madds_m", "madds_m paper"]]
    # the ISC overhead has its own columns: more params from exit 2 on
    assert (df["imta_params_m"].iloc[1:] > df["params_m"].iloc[1:] * 1.03).all()
    assert df["imta_params_m"].iloc[0] == df["params_m"].iloc[0]


def _depth(cfg):
    from repro.papers import imta

    from repro.models import create_model

    net_cfg = create_model(cfg.model, num_classes=10, **cfg.model_args).cfg
    return net_cfg, sum(net_cfg.block_layers())


@pytest.mark.parametrize("artifact,dataset,want", [
    ("fig2", "cifar10", [(6, 21), (8, 36)]),
    ("fig3", "cifar100", [(4, 10), (5, 15), (6, 21), (8, 36)]),
])
def test_cifar_budget_figures_train_the_papers_family(artifact, dataset, want):
    from repro.papers import imta

    runs = list(imta.PAPER.artifacts[artifact].runs(Request(scale="paper")).values())
    base = [r for r in runs if r.kind == "phase1"]
    full = [r for r in runs if r.kind == "phase2"]
    assert all(r.method == {"ge": False} for r in base) and all(r.parent.method == {"ge": True} for r in full)
    assert all(r.method["isc"] and r.method["ofa"] for r in full) and {r.dataset for r in runs} == {dataset}
    got = []
    for r in base:
        c, depth = _depth(r)
        assert (c.stepmode, c.base, c.step, c.nScales, c.nChannels, c.growthRate) == ("lin_grow", 1, 1, 3, 16, 6)
        got.append((c.nBlocks, depth))
    assert got == want
    assert [_depth(r.parent)[1] for r in full] == [d for _, d in want]
    # reduced scales: two members, each a baseline and an IMTA curve
    for scale in ("quick", "smoke"):
        assert len(imta.PAPER.artifacts[artifact].runs(Request(scale=scale))) == 4


def _fake_family_results(named, seeds=1, n=120, classes=10):
    """Stored outputs of the runs ``named`` ({name: config}) as finished runs would have them (random
    logits, MSDNet-like costs)."""
    from repro.api import Runs
    from repro.papers import imta

    results = {}
    for i, (name, cfg) in enumerate(named.items()):
        exits = int(cfg.model.split("_")[-1].removesuffix("exit")) if cfg.model.endswith("exit") else 5
        runs = []
        for seed in range(seeds):
            g = torch.Generator().manual_seed(100 * i + seed)
            out = {f"{split}_{what}": (torch.randn(exits, n, classes, generator=g) if what == "logits"
                                       else torch.randint(0, classes, (n,), generator=g))
                   for split in ("val", "test") for what in ("logits", "labels")}
            runs.append(_FakeRun({"costs": [1e6 * (k + 1) for k in range(exits)], "cost_convention": imta.COST}, out))
        results[name] = runs
    return Runs.fixed(results, named)


def _figure_csv(path):
    axes = [line[2:].strip() for line in open(path) if line.startswith("# axes")]
    return pd.read_csv(path, comment="#"), axes


@pytest.mark.parametrize("seeds", [1, 3])
def test_budget_figures_draw_their_band_and_the_papers_points(tmp_path, seeds):
    """fig3: a band on every curve (bootstrap at one seed, t-interval over seeds), Table 1's exits as
    "paper, CIFAR-100" in a panel of their own, axes that name the unit and the counter, and a
    header that names every member's network, not only the first."""
    from repro.papers import imta
    from repro.reference_data import load_reference, reference_value
    from repro.runner import Settings, build_and_write

    request = Request(scale="smoke", seeds=seeds)
    art = imta.PAPER.artifacts["fig3"]
    results = _fake_family_results(art.runs(request), seeds)
    build_and_write("imta", "fig3", request, results, Settings(out_dir=tmp_path))
    df, axes = _figure_csv(next(tmp_path.rglob("imta_fig3.csv")))
    ours = df[df["source"] == "ours"]
    assert (ours["acc_spread"] > 0).all() and ours["spread"].str.contains(
        "t-interval" if seeds > 1 else "bootstrap").all()
    paper = df[df["source"] == "paper"]
    assert set(paper["method"]) == {"paper, CIFAR-100: MSDNet", "paper, CIFAR-100: IMTA"} and len(paper) == 14
    ref = load_reference("imta")
    assert paper["acc"].tolist()[-1] == reference_value(ref, "table1", "imta", "exit7_top1")
    assert "x = average cost per image (MMACs, MSDNet's counter)" in axes[0]
    assert axes[1].startswith("axes 2 (paper, CIFAR-100") and "MMACs" in axes[1]
    model = next(line for line in open(next(tmp_path.rglob("imta_fig3.csv"))) if line.startswith("# model:"))
    members = [c.model for c in (art.runs(request)[f"{m}/baseline"] for m in ("2 exits, depth 3", "3 exits, depth 6"))]
    assert members == ["msdnet_cifar_2exit", "msdnet_cifar_3exit"], members
    assert all(m in model for m in members) and model.count("msdnet_cifar_") == 2, model


def test_fig4_legend_is_outside_the_curves_and_fig6_ticks_whole_epochs(tmp_path):
    import matplotlib.pyplot as plt

    from repro.papers import imta
    from repro.runner import Settings, build_and_write

    request = Request(scale="smoke")
    results = _fake_family_results(imta.fig4_runs(request))
    figs = []
    real = plt.subplots
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt, "subplots", lambda *a, **k: figs.append(real(*a, **k)) or figs[-1])
        build_and_write("imta", "fig4", request, results, Settings(out_dir=tmp_path))
    fig, (ax, pax) = figs[-1]
    ours = ax.get_legend().get_window_extent()
    assert ours.x0 >= ax.get_window_extent().x1  # right of the axes, over no curve
    _, axes = _figure_csv(next(tmp_path.rglob("imta_fig4.csv")))
    assert "paper, CIFAR-100: top-1 per exit (Table 2)" in axes[1]


def test_imagenet_budget_figure_trains_steps_4_6_7():
    from repro.models import create_model
    from repro.papers import imta

    runs = list(imta.PAPER.artifacts["fig5"].runs(Request(scale="paper")).values())
    base = [r for r in runs if r.kind == "phase1"]
    assert {r.dataset for r in runs} == {"imagenet"} and all(r.model == "msdnet_imagenet" for r in runs)
    got = []
    for r in base:
        c = create_model(r.model, num_classes=10, **r.model_args).cfg
        assert (c.nBlocks, c.stepmode, c.nScales, c.stem) == (5, "even", 4, "imagenet")
        got.append((c.step, c.base))
    assert got == [(4, 4), (6, 6), (7, 7)]
    # step 4 is Table 3's network: the runs are shared
    assert base[0] == imta.ablation_runs(Request(scale="paper"), imagenet=True)["baseline"]
    assert len(imta.PAPER.artifacts["fig5"].runs(Request(scale="smoke"))) == 4


def test_the_quick_scale_trains_on_all_the_data_unless_overridden():
    """docs/calibration.md (converge first): the 5-exit runs on all 55k images, phase I 8 cosine epochs,
    phase II 5; the convergence twin of the MSDNet baseline 16."""
    from repro.api import Request
    from repro.artifacts import get_paper
    from repro.runner import plan

    art = get_paper("imta").artifact("table2")
    cfgs = plan(art, Request(scale="quick"))
    assert {c.data.train_limit for c in cfgs} == {None}
    assert {(c.kind, c.train.epochs, c.train.schedule) for c in cfgs} == {
        ("phase1", 8, "cosine"), ("phase2", 5, "cosine"), ("phase1", 16, "cosine")}
    assert [c.name for c in cfgs if c.train.epochs == 16] == ["msdnet_cifar_5exit-phase1"]
    assert {c.data.train_limit for c in plan(art, Request(scale="quick", train_limit=3000))} == {3000}
    assert {c.data.train_limit for c in plan(art, Request(scale="smoke"))} == {512}


def test_the_costlier_artifacts_keep_the_budget_first_protocol_and_the_override_still_wins():
    """docs/papers/imta.md: table1 (7 exits) and fig3 (4 + 5 exits) on 13,750 images, fig2 (6 + 8
    exits) and fig5 (steps 4 + 6) on 3,437, 2 + 1 epochs (the earlier rule: no convergence test);
    table2/fig4 train on all the data, so fig3's 5-exit member is its own run, not table2's; smoke
    and --train-limit are untouched."""
    from repro.api import Request
    from repro.artifacts import get_paper
    from repro.runner import plan

    paper = get_paper("imta")
    want = {"table1": 13_750, "fig2": 3_437, "fig3": 13_750, "fig5": 3_437, "fig4": None, "table2": None}
    for name, limit in want.items():
        art = paper.artifact(name)
        assert {c.data.train_limit for c in plan(art, Request(scale="quick"))} == {limit}, name
        assert {c.data.train_limit for c in plan(art, Request(scale="quick", train_limit=3000))} == {3000}, name
        assert {c.data.train_limit for c in plan(art, Request(scale="smoke"))} == {512}, name
    fig3 = {c.dirname for c in plan(paper.artifact("fig3"), Request(scale="quick"))}
    assert not fig3 & {c.dirname for c in plan(paper.artifact("table2"), Request(scale="quick"))}


def test_the_budget_claim_is_the_gap_between_the_two_interpolated_curves_at_equal_cost():
    """figs 2-5: the claimed gain at a fraction of the full cost is curve a minus curve b, each
    budgeted-batch test curve linearly interpolated at that cost, averaged over seeds; a right
    everywhere at 3 seeds: reproduced (the paper's direction, no number); at one seed: no verdict."""
    import numpy as np

    from repro.exits import budgeted_sweep
    from repro.papers import imta
    from repro.render import building

    g = torch.Generator().manual_seed(3)
    n, classes, costs = 400, 4, [1e6, 2e6, 4e6]
    def fake(test_logits, labels, val):
        return _FakeRun({"costs": costs}, {"val_logits": val[0], "val_labels": val[1], "test_logits": test_logits,
                                           "test_labels": labels})
    y = torch.randint(0, classes, (n,), generator=g)
    val = (torch.randn(3, n, classes, generator=g), torch.randint(0, classes, (n,), generator=g))
    seeds = []
    for _ in range(3):
        noisy = torch.randn(3, n, classes, generator=g)
        # the same scores with the top logit moved to the label: the same exits and costs, every exit right
        top, at_y = noisy.argmax(-1, keepdim=True), y[None, :, None].expand(3, n, 1)
        perfect = noisy.clone().scatter_(-1, at_y, noisy.gather(-1, top)).scatter_(-1, top, noisy.gather(-1, at_y))
        seeds.append((perfect, noisy))
    runs = {"a": [fake(p, y, val) for p, _ in seeds], "b": [fake(q, y, val) for _, q in seeds]}
    with building(Request(scale="quick", seeds=3)):
        claims, outside = imta.budget_claims(runs, "a", "b", "a minus b", fractions=(0.4, 0.5, 0.1))
        lines = [c.line() for c in claims]
    assert outside == ["a minus b at 10 % of the full network's cost: outside a curve's range"]
    assert len(claims) == 2
    for c, f, line in zip(claims, (0.4, 0.5), lines):
        want = []
        for perfect, noisy in seeds:
            curves = [budgeted_sweep(*val, t, y, costs, "confidence").sort_values("cost", kind="stable")
                      for t in (perfect, noisy)]
            want.append(np.interp(f * 4e6, curves[0]["cost"], curves[0]["acc"])
                        - np.interp(f * 4e6, curves[1]["cost"], curves[1]["acc"]))
        assert c.ours == pytest.approx(np.mean(want)) and c.evidence.seeds == 3 and c.sign == +1
        assert c.evidence.per_seed == pytest.approx(want)
        assert c.evidence.a.shape == (3, n) and (c.evidence.a == 1).all()  # a: right on every image at every cost
        lo, hi = c.evidence.interval()
        assert 0 < lo < c.ours < hi
        assert line.startswith(f"budgeted-batch top-1 of a minus b at {100 * f:.0f} % of the full network's cost "
                               f"(interpolated): ours {c.ours:+.2f} [") and line.endswith("] (reproduced)")
    with building(Request(scale="quick")):  # one seed: the test images' spread, no verdict
        claims, _ = imta.budget_claims({k: v[:1] for k, v in runs.items()}, "a", "b", "a minus b", fractions=(0.5,))
        assert claims[0].line().endswith("(test images only) (no verdict)")
