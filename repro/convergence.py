"""The convergence test a protocol passes before its claims get a verdict (docs/calibration.md).

An artifact names its baselines (:attr:`repro.artifacts.Artifact.baselines`); at a scale that
tests convergence (:attr:`repro.scales.Scale.converge`: quick), each baseline's seed-0 run has a
*twin*, the same run trained for twice its epochs (the schedule keeps its shape).  The protocol is
converged when, for every baseline, the twin's validation top-1 differs from the run's by less than
:data:`MAX_CHANGE` points at every exit, and (on the scale's own dataset) the full network reaches
:data:`MIN_TOP1` on validation.  Validation only: test numbers and the claims never enter it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

MAX_CHANGE = 0.3   # points of validation top-1, at every exit, between E and 2E epochs
MIN_TOP1 = 90.0    # % validation top-1 of the full network on the scale's own dataset (Fashion-MNIST)


def twin(cfg):
    """``cfg`` trained for twice its epochs: the convergence test's run (same name, seed and data;
    only the epochs differ, so its folder is ``<name>-s0-<another hash>``).  It is exactly the seed-0
    run of the protocol with E doubled, which the rule turns to when the test fails: then it is
    reused, not trained again."""
    return replace(cfg, train=replace(cfg.train, epochs=2 * cfg.train.epochs))


def tested(artifact, request) -> bool:
    return bool(request.scale_preset.converge)


def twins(artifact, request) -> dict:
    """{baseline name: its twin} (seed 0, the request's overrides) where the scale tests convergence."""
    from repro.api import resolve
    from repro.runner import named_runs

    if not tested(artifact, request) or not artifact.baselines:
        return {}
    named = named_runs(artifact, request)
    unknown = [b for b in artifact.baselines if b not in named]
    if unknown:
        raise ValueError(f"{artifact.name}: baselines {unknown} are not among its runs {sorted(named)}")
    return {b: twin(resolve(named[b], replace(request, seeds=1))[0]) for b in artifact.baselines}


def exit_top1(run, out: dict | None = None) -> list[float] | None:
    """A finished run's validation top-1 (%) at every exit, from outputs.pt's ``val_logits``
    (exits x N x C, or N x C) or ``val_preds`` (exits x N, or N), or from ``out`` (its outputs,
    already loaded); None without either."""
    try:
        out = run.outputs() if out is None else out
        labels = out["val_labels"]
        if "val_logits" in out:
            preds = out["val_logits"].argmax(-1)
        else:
            preds = out["val_preds"]
    except Exception:  # no outputs, or none on validation
        return None
    if preds.dim() == 1:
        preds = preds.unsqueeze(0)
    return [float((p == labels).double().mean() * 100) for p in preds]


@dataclass(frozen=True)
class Check:
    """The test's outcome: ``reason`` is empty when converged, else why no verdict."""
    reason: str
    lines: tuple[str, ...]  # per baseline: E vs 2E top-1 at every exit

    @property
    def converged(self) -> bool:
        return not self.reason


def check(artifact, request, settings) -> Check | None:
    """The convergence test of an artifact's finished runs; None at a scale that does not test it."""
    from repro.api import resolve
    from repro.runner import named_runs
    from repro.store import Run

    if not tested(artifact, request):
        return None
    if not artifact.baselines:
        return Check("its protocol has no convergence test (over the compute budget the rule allows)", ())
    named = named_runs(artifact, request)
    reasons, lines = [], []
    own = request.dataset_for("") == request.scale_preset.dataset
    for name, tw in twins(artifact, request).items():
        base = resolve(named[name], replace(request, seeds=1))[0]
        a, b = exit_top1(Run(settings.runs_dir, base)), exit_top1(Run(settings.runs_dir, tw))
        if a is None or b is None:
            reasons.append(f"{name}: no validation outputs")
            continue
        change = [round(y - x, 6) for x, y in zip(a, b)]  # k/n percentages: no float noise at the 0.3 edge
        worst = max(range(len(change)), key=lambda i: abs(change[i]))
        e = base.train.epochs
        lines.append(f"{name} ({base.model}): validation top-1 at {e} → {2 * e} epochs: "
                     + ", ".join(f"{x:.1f}→{y:.1f}" for x, y in zip(a, b)))
        if abs(change[worst]) >= MAX_CHANGE:
            where = f" at exit {worst + 1}" if len(change) > 1 else ""
            reasons.append(f"{name} changes {change[worst]:+.2f} points{where} at {2 * e} epochs "
                           f"(the rule: under {MAX_CHANGE})")
        if own and a[-1] < MIN_TOP1:
            reasons.append(f"{name} reaches {a[-1]:.1f} % validation top-1 (the rule: at least {MIN_TOP1:g})")
    reason = "; ".join(reasons)
    return Check(f"baseline not converged: {reason}" if reason else "", tuple(lines))


__all__ = ["Check", "MAX_CHANGE", "MIN_TOP1", "check", "exit_top1", "twin", "twins"]
