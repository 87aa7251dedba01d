"""The convergence test (repro.convergence, docs/calibration.md): twins, the rule, and what an
unconverged protocol does to its claims."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from repro import convergence, stats
from repro.api import Request, Settings, resolve
from repro.artifacts import Artifact, get_paper
from repro.config import ConfigError, DataSpec, RunConfig, TrainSpec
from repro.render import building, claim
from repro.runner import named_runs, plan
from repro.store import Run


def _cfg(**train) -> RunConfig:
    return RunConfig(paper="imta", name="base", kind="phase1", dataset="fashion-mnist", model="m", model_args={},
                     method={}, train=TrainSpec(epochs=4, **train), data=DataSpec())


def test_twin_doubles_epochs_only():
    c = _cfg(schedule="cosine", milestones=())
    t = convergence.twin(c)
    assert t.train.epochs == 8 and replace(t.train, epochs=4) == c.train
    assert t.seed == c.seed and t.data == c.data and t.key != c.key


def test_memory_format_is_identity_and_checked():
    assert _cfg().key == _cfg(memory_format="contiguous").key  # the default leaves old hashes alone
    assert _cfg(memory_format="channels_last").key != _cfg().key
    with pytest.raises(ConfigError, match="memory_format"):
        TrainSpec(memory_format="nhwc")


def _artifact(baselines=("a",)) -> Artifact:
    runs = {"a": _cfg(), "b": replace(_cfg(), name="other", method={"x": 1})}
    return Artifact("t", "test", lambda r: runs, lambda r, rs, s: None, baselines=baselines)


def test_twins_only_at_a_scale_that_tests_convergence():
    art = _artifact()
    quick = plan(art, Request(scale="quick", seeds=3))
    assert [(c.name, c.train.epochs, c.seed) for c in quick].count(("base", 8, 0)) == 1  # seed 0 only
    assert len(quick) == 2 * 3 + 1
    for scale in ("smoke", "paper"):
        assert all(c.train.epochs == 4 for c in plan(art, Request(scale=scale)))
    # the twin carries the request's overrides (here the epochs, then doubled)
    tw = convergence.twins(art, Request(scale="quick", epochs=3))["a"]
    assert tw.train.epochs == 6
    with pytest.raises(ValueError, match="baselines"):
        convergence.twins(_artifact(("nope",)), Request(scale="quick"))


def _write(runs_dir: Path, cfg: RunConfig, accs: list[float], n: int = 1000, classes: int = 10) -> None:
    """A finished run whose outputs give exactly ``accs`` (%) validation top-1 at its exits."""
    run = Run(runs_dir, cfg)
    run.dir.mkdir(parents=True, exist_ok=True)
    labels = torch.arange(n) % classes
    logits = torch.zeros(len(accs), n, classes)
    for e, acc in enumerate(accs):
        right = int(round(acc * n / 100))
        pred = labels.clone()
        pred[right:] = (labels[right:] + 1) % classes
        logits[e, torch.arange(n), pred] = 1.0
    torch.save({"val_logits": logits, "val_labels": labels, "test_logits": logits, "test_labels": labels},
               run.outputs_path)
    run.write_results({"val_acc": accs})


@pytest.mark.parametrize("base, twin, passed, why", [
    ([85.0, 91.0], [85.2, 91.1], True, ""),
    ([85.0, 91.0], [85.4, 91.1], False, "+0.40 points at exit 1"),   # an early exit still moving
    ([85.0, 91.0], [85.0, 90.7], False, "-0.30 points at exit 2"),   # 0.3 is not under 0.3
    ([80.0, 89.0], [80.1, 89.1], False, "89.0 % validation top-1"),  # flat but below 90 %
])
def test_check_applies_the_rule(tmp_path, base, twin, passed, why):
    art = _artifact()
    req = Request(scale="quick")
    cfg0 = resolve(named_runs(art, req)["a"], req)[0]
    _write(tmp_path, cfg0, base)
    _write(tmp_path, convergence.twins(art, req)["a"], twin)
    got = convergence.check(art, req, Settings(runs_dir=tmp_path))
    assert got.converged is passed
    assert why in got.reason
    assert got.lines and "→" in got.lines[0]


def test_no_test_without_baselines_and_none_at_smoke(tmp_path):
    got = convergence.check(_artifact(()), Request(scale="quick"), Settings(runs_dir=tmp_path))
    assert not got.converged and "no convergence test" in got.reason
    assert convergence.check(_artifact(), Request(scale="smoke"), Settings(runs_dir=tmp_path)) is None


def _claim_under(check) -> tuple[str, stats.Verdict]:
    g = stats.seeds_evidence([2.0, 2.1, 1.9, 2.05, 1.95])  # a clear gap: reproduced when converged
    with building(Request(scale="quick", seeds=5), convergence=check) as ctx:
        line = claim("gain", g, paper=1.0)
    return line, ctx.verdicts[0][4]


def test_an_unconverged_protocol_gets_no_verdict():
    line, v = _claim_under(convergence.Check("", ("a: ...",)))
    assert v.word == "reproduced"
    line, v = _claim_under(convergence.Check("baseline not converged: a changes +0.50 points", ()))
    assert v.word == "" and v.detail == "not converged"
    assert line.endswith("(no verdict: not converged)") and "reproduced" not in line
    line, v = _claim_under(convergence.Check("its protocol has no convergence test (over budget)", ()))
    assert v.detail == "convergence not tested"


def test_fixed_counts_keep_their_verdict_when_unconverged():
    with building(Request(scale="quick", seeds=5), convergence=convergence.Check("baseline not converged: x", ())) as ctx:
        claim("FLOPs cut", 36.0, paper=30.0)
    assert ctx.verdicts[0][4].word == "reproduced"


def test_every_quick_artifact_declares_its_test_or_says_it_has_none():
    """Every artifact of every paper names baselines among its runs, except those whose protocol the
    rule cannot afford (docs/calibration.md lists them: IMTA's table1, fig2, fig3, fig5, and the
    bias-loss latency-free nothing else)."""
    from repro.artifacts import papers

    untested = set()
    for p in papers().values():
        for a in p.artifacts.values():
            if not a.baselines:
                untested.add(f"{p.name} {a.name}")
                continue
            assert convergence.twins(a, Request(scale="quick"))  # names its runs
    assert untested == {"imta table1", "imta fig2", "imta fig3", "imta fig5"}


def test_headline_artifacts_are_declared():
    heads = {(p, a.name) for p in ("imta", "glancenet", "dgate", "biasloss", "dcp")
             for a in get_paper(p).artifacts.values() if a.headline}
    assert heads == {("imta", "table2"), ("imta", "fig4"), ("glancenet", "table1"), ("glancenet", "hem"),
                     ("dgate", "table1"), ("dgate", "fig4"), ("biasloss", "table4"), ("dcp", "table1")}


def test_runs_that_keep_only_predictions_are_read_too(tmp_path):
    """d-gate runs save ``val_preds`` (exits x N), not logits: the test and the outlier check read them."""
    from repro.runner import validation_top1

    cfg = _cfg()
    run = Run(tmp_path, cfg)
    run.dir.mkdir(parents=True)
    labels = torch.arange(100) % 10
    preds = torch.stack([torch.where(torch.arange(100) < k, labels, (labels + 1) % 10) for k in (70, 93)])
    torch.save({"val_preds": preds, "val_labels": labels, "test_preds": preds, "test_labels": labels},
               run.outputs_path)
    run.write_results({})
    assert convergence.exit_top1(run) == [70.0, 93.0]
    assert validation_top1(run) == (93.0, 10)


@pytest.mark.slow
def test_a_channels_last_run_is_its_own_run_and_resumes_bit_identical(tmp_path, monkeypatch):
    """The memory format is part of a run's identity (TrainSpec.memory_format): a channels_last
    d-gate backbone at smoke size trained twice gives the same bits, differs from the contiguous
    run, and a run interrupted after its first epoch and resumed ends bit-identical."""
    from conftest import FMNIST_FOUND, FMNIST_MISSING

    if FMNIST_FOUND is None:
        pytest.skip(FMNIST_MISSING)
    import repro.train as T
    from repro.runner import execute

    base = named_runs(get_paper("dgate").artifact("table1"), Request(scale="smoke"))["backbone"]
    cl = replace(base, train=replace(base.train, epochs=2, memory_format="channels_last"))
    nchw = replace(cl, train=replace(cl.train, memory_format="contiguous"))
    assert cl.key != nchw.key

    def train(root: Path, cfg: RunConfig) -> dict:
        s = Settings(runs_dir=root, log=lambda m: None)
        execute(cfg, s)
        return torch.load(Run(root, cfg).dir / "model.pt", weights_only=True)

    a, b, c = train(tmp_path / "a", cl), train(tmp_path / "b", cl), train(tmp_path / "c", nchw)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())

    real_fit = T.fit

    def stop_after_first(*args, **kw):
        def hook(epoch):
            if epoch == 1:
                raise KeyboardInterrupt
        return real_fit(*args, **{**kw, "on_epoch_end": hook})
    monkeypatch.setattr(T, "fit", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "d", cl)
    monkeypatch.setattr(T, "fit", real_fit)
    d = train(tmp_path / "d", cl)
    assert all(torch.equal(a[k], d[k]) for k in a)


def test_an_outlying_seeds_alternative_verdict_is_withheld_too_when_unconverged():
    """The line's "without it" verdict (an outlying seed left out) follows the same rule: no
    reproduced/contradicted on an unconverged protocol, anywhere in the line."""
    a = torch.tensor([[1.0] * 50 + [0.0] * 50] * 4)
    b = torch.tensor([[1.0] * 30 + [0.0] * 70] * 4)  # a clear gap of +20 points at every seed
    g = stats.gap_evidence(a, b, arms=(("x",), ("y",)))
    check = convergence.Check("baseline not converged: x changes +0.50 points", ())
    with building(Request(scale="quick", seeds=4), convergence=check, outliers=[("x", 1, 10.0, 80.0)]) as ctx:
        line = claim("gain", g, paper=5.0)
    assert "uses outlying seed 1 (without it, 3 seeds:" in line
    assert "reproduced" not in line and line.count("(no verdict: not converged)") == 2
    assert ctx.verdicts[0][4].word == ""
