"""The claims files beside every output (issue 26): ``<paper>_<artifact>.claims.csv`` (one row per
claim: per-seed gaps, interval, verdict) and ``.evidence.npz`` (each arm's per-image scores per seed),
from which the CSV's numbers can be redone; no verdict below 3 seeds; outlying seeds named in the
header with the verdict without them; ``--seeds auto`` at smoke scale stops at the first look.

Built from synthetic runs (biasloss table3: five paired top-1 gaps, outputs only), no training."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from repro import stats
from repro.api import Request, Runs, Settings, resolve
from repro.render import CLAIM_COLUMNS, read_header
from repro.runner import build_and_write, named_runs
from repro.store import Run

PAPER, ARTIFACT = "biasloss", "table3"
WORDS = {"reproduced", "contradicted", "smaller than claimed", "inconclusive", "no verdict"}


def _logits(labels: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """1 x N x 10 logits that pick the label where ``right``, the next class elsewhere."""
    pred = torch.where(right, labels, (labels + 1) % 10)
    return F.one_hot(pred, 10).float()[None] * 5


class _Run:
    """A finished run as a build reads it: test (and validation) logits and labels."""

    def __init__(self, outputs: dict):
        self.outputs, self.results = outputs, {}


def _synthetic(seeds: int, n: int = 300, seed: int = 0) -> dict[str, list[_Run]]:
    """Per named run of biasloss table3, ``seeds`` runs on the same ``n`` test images: bias-loss runs
    right on ~80 % of them, CE runs on ~65 %, each seed drawn afresh."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    named = named_runs(_artifact(), Request(scale="quick", seeds=seeds))
    return {k: [_Run({"test_logits": _logits(y, torch.rand(n, generator=g) < (0.8 if k.endswith("/bias") else 0.65)),
                      "test_labels": y}) for _ in range(seeds)] for k in named}


def _artifact():
    from repro.artifacts import get_paper

    return get_paper(PAPER).artifact(ARTIFACT)


def _build(tmp_path, seeds: int, given=None) -> dict[str, object]:
    request = Request(scale="quick", seeds=seeds)
    given = given or _synthetic(seeds)
    named = named_runs(_artifact(), request)
    paths = build_and_write(PAPER, ARTIFACT, request, Runs.fixed(given, named, request),
                            Settings(runs_dir=tmp_path / "runs", out_dir=tmp_path, log=lambda m: None))
    return {p.name: p for p in paths}


def _claims(path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


def test_a_three_seed_build_writes_claims_whose_numbers_the_evidence_file_redoes(tmp_path):
    files = _build(tmp_path, 3)
    stem = f"{PAPER}_{ARTIFACT}"
    assert {f"{stem}.claims.csv", f"{stem}.evidence.npz", f"{stem}.md", f"{stem}.csv", f"{stem}.tex"} <= set(files)
    df = _claims(files[f"{stem}.claims.csv"])
    assert list(df.columns) == CLAIM_COLUMNS and len(df) == 5
    assert set(df["verdict"]) <= WORDS and (df["seeds"] == 3).all() and (df["kind"] == "images").all()
    assert (df["level"] == 0.95).all()
    md = "".join(f"- {line}\n" for line in read_header(files[f"{stem}.md"]))
    for r in df.itertuples():  # every claim line of the header is the CSV's line, with its verdict word
        assert f"- {r.line}\n" in md and f"({r.verdict}" in r.line
    evidence = stats.read_evidence(files[f"{stem}.evidence.npz"])
    assert list(evidence) == df["claim"].tolist()
    for r in df.itertuples():
        a, b = evidence[r.claim]
        assert a.shape == b.shape == (3, 300) and set(np.unique(a)) <= {0.0, 1.0}  # 0/1 scores, seeds x images
        g = stats.gap_evidence(a, b)
        lo, hi = g.interval(r.level)
        assert (g.gap, lo, hi) == pytest.approx((r.gap, r.lo, r.hi), abs=1e-5)
        # the per-seed gaps by hand: each seed's accuracy difference in points
        assert [float(x) for x in r.per_seed_gaps.split(";")] == pytest.approx(
            list((a.mean(1) - b.mean(1)) * 100), abs=1e-4)
        v = stats.verdict(g, None if pd.isna(r.paper) else r.paper,
                          None if pd.isna(r.direction) else int(r.direction), r.level)
        assert v.word == r.verdict


def test_the_evidence_file_is_the_same_bytes_when_written_twice(tmp_path):
    given = _synthetic(3)
    one = _build(tmp_path / "one", 3, given)[f"{PAPER}_{ARTIFACT}.evidence.npz"].read_bytes()
    two = _build(tmp_path / "two", 3, given)[f"{PAPER}_{ARTIFACT}.evidence.npz"].read_bytes()
    again = _build(tmp_path / "one", 3, given)[f"{PAPER}_{ARTIFACT}.evidence.npz"].read_bytes()  # over the first
    assert one == two == again
    # and packed: 0/1 scores as bits, about 3 x 300 / 8 bytes per arm, not 8 bytes a score
    assert len(one) < 5 * 2 * 3 * 300


def test_one_seed_outputs_give_no_verdict_anywhere_and_say_why_once(tmp_path):
    files = _build(tmp_path, 1)
    stem = f"{PAPER}_{ARTIFACT}"
    for name in (f"{stem}.md", f"{stem}.csv", f"{stem}.tex", f"{stem}.claims.csv"):
        text = files[name].read_text()
        assert "reproduced" not in text and "contradicted" not in text, name
        assert "smaller than claimed" not in text and "inconclusive" not in text, name
    header = [f"- {line}" for line in read_header(files[f"{stem}.md"])]
    assert sum("no claim gets a verdict below 3 seeds" in line for line in header) == 1
    claim_lines = [line for line in header if ": ours " in line]
    assert len(claim_lines) == 5 and all(line.endswith("(test images only); paper " + line.split("; paper ")[1])
                                         for line in claim_lines)
    assert all(line.endswith("(no verdict)") for line in claim_lines)
    df = _claims(files[f"{stem}.claims.csv"])
    assert (df["verdict"] == "no verdict").all() and (df["seeds"] == 1).all()
    assert sum("no claim gets a verdict below 3 seeds" in line
               for line in files[f"{stem}.claims.csv"].read_text().splitlines() if line.startswith("# ")) == 1


# ---------------------------------------------------------------------------- outlying seeds


def _store(root, seeds: int, chance: tuple[str, int] | None, n: int = 300, n_val: int = 100) -> Settings:
    """A run store of finished biasloss table3 runs at quick scale (results.json, outputs.pt with test
    and validation logits): every run's validation top-1 exactly 95 % at every seed, but ``chance``'s
    (run name, seed) at 10 %, chance for 10 classes; the convergence test's twins of the baselines
    equal their seed-0 runs (a converged protocol)."""
    from repro.convergence import twins

    request = Request(scale="quick", seeds=seeds)
    g = torch.Generator().manual_seed(1)
    y, yv = torch.arange(n) % 10, torch.arange(n_val) % 10
    named = named_runs(_artifact(), request)
    by_twin = {name: [tw] for name, tw in twins(_artifact(), request).items()}
    for name, cfg in [*named.items(), *((n_ + "/twin", tw) for n_, (tw,) in by_twin.items())]:
        for c in (resolve(cfg, request) if not name.endswith("/twin") else [cfg]):
            run = Run(root / "runs", c)
            run.dir.mkdir(parents=True, exist_ok=True)
            val_right = torch.arange(n_val) < (10 if (name, c.seed) == chance else 95)
            test_right = torch.rand(n, generator=g) < (0.8 if name.endswith("/bias") else 0.65)
            torch.save({"test_logits": _logits(y, test_right), "test_labels": y,
                        "val_logits": _logits(yv, val_right), "val_labels": yv}, run.outputs_path)
            run.results_path.write_text(json.dumps({}))
    return Settings(runs_dir=root / "runs", out_dir=root, log=lambda m: None)


def test_an_outlying_seed_is_named_in_the_header_and_each_claim_using_it_gives_the_verdict_without_it(tmp_path):
    from repro.runner import outlying_seeds, run_artifact

    request = Request(scale="quick", seeds=4)
    settings = _store(tmp_path, 4, ("skipblocknet-m/bias", 2))
    named = named_runs(_artifact(), request)
    assert outlying_seeds(named, request, settings) == [("skipblocknet-m/bias", 2, 10.0, 95.0)]
    verdicts: list = []
    paths = run_artifact(PAPER, ARTIFACT, request, settings, verdicts=verdicts)
    header = read_header(next(p for p in paths if p.suffix == ".md"))
    outl = [line for line in header if line.startswith("outlying seeds")]
    assert len(outl) == 1 and "skipblocknet-m/bias seed 2: validation top-1 10.00 % against its siblings' median " \
                              "95.00 %" in outl[0] and "shown, not dropped" in outl[0]
    evidence = stats.read_evidence(next(p for p in paths if p.name.endswith(".evidence.npz")))
    df = _claims(next(p for p in paths if p.name.endswith(".claims.csv")))
    uses = {"bias loss on SkipblockNet-M", "both (SkipblockNet-M + bias - MobileNetV3-L + CE)"}  # its arm's claims
    assert set(df["claim"]) >= uses
    for r in df.itertuples():
        line = next(h for h in header if h.startswith(r.claim + ": ours "))
        assert r.seeds == 4 and line.startswith(r.line.split("; uses outlying")[0])  # the verdict over every seed first
        if r.claim not in uses:
            assert "outlying" not in line
            continue
        a, b = evidence[r.claim]
        alt = stats.gap_evidence(a[[0, 1, 3]], b[[0, 1, 3]])  # seed 2 (its pair too) left out, by hand
        alt_line, alt_v = stats.claim_line("", alt, r.paper)
        assert line.endswith(f"; uses outlying seed 2 (without it, 3 seeds:{alt_line[1:]})")
        assert alt_v.word in WORDS - {"no verdict"}  # 3 seeds remain: a verdict without it
    assert [v[0] for v in verdicts] == df["claim"].tolist()


def test_outliers_given_to_the_build_context_reach_a_fixed_runs_build(tmp_path):
    """A Runs.fixed build gets its outlying seeds only through repro.render.building; with 3 seeds,
    leaving one out leaves 2: the claim says so, with no verdict without it."""
    from repro.render import building, write_outputs

    request = Request(scale="quick", seeds=3)
    given = _synthetic(3, seed=5)
    settings = Settings(runs_dir=tmp_path / "runs", out_dir=tmp_path, scale="quick", log=lambda m: None)
    with building(request, outliers=[("mobilenetv3-large-1.05x/ce", 0, 11.0, 80.0)]) as ctx:
        built = _artifact().build(request, Runs.fixed(given, named_runs(_artifact(), request), request), settings)
        paths = write_outputs(built, PAPER, ARTIFACT, request, settings)
    md = "\n".join(read_header(next(p for p in paths if p.suffix == ".md")))
    assert "mobilenetv3-large-1.05x/ce seed 0: validation top-1 11.00 % against its siblings' median 80.00 %" in md
    lines = {v[0]: v[-1] for v in ctx.verdicts}
    wider = "skip blocks vs wider MobileNetV3 (SkipblockNet-M CE - MobileNetV3-L 1.05x CE)"
    assert "; uses outlying seed 0 (without it, 2 seeds: ours " in lines[wider] and lines[wider].endswith("(no verdict))")
    assert all("outlying" not in line for name, line in lines.items() if name != wider)


# ---------------------------------------------------------------------------- --seeds auto


def _smoke_store(root, seeds: int = 3) -> None:
    request = Request(scale="smoke", seeds=seeds)
    y = torch.arange(60) % 10
    for name, cfg in named_runs(_artifact(), request).items():
        for c in resolve(cfg, request):
            run = Run(root / "runs", c)
            run.dir.mkdir(parents=True, exist_ok=True)
            torch.save({"test_logits": _logits(y, torch.ones(60, dtype=torch.bool)), "test_labels": y},
                       run.outputs_path)
            run.results_path.write_text("{}")


def _cli(argv, capsys) -> tuple[int, str]:
    from repro.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err


@pytest.mark.parametrize("cap", [3, 5])
def test_seeds_auto_at_smoke_scale_stops_at_the_first_look_and_says_so(tmp_path, capsys, cap):
    """Smoke scale gives no verdicts, so more seeds cannot settle anything: --seeds auto renders at its
    first look (3 seeds, the runs already in the store) and trains no fourth seed, whatever the cap."""
    _smoke_store(tmp_path)
    code, err = _cli([PAPER, ARTIFACT, "--scale", "smoke", "--seeds", "auto", "--max-seeds", str(cap),
                      "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    looks = "3" if cap == 3 else "3, 5"
    assert f"--seeds auto: look 1 of {1 if cap == 3 else 2}, 3 seeds" in err and "look 2" not in err
    assert "stopped at 3 seeds: smoke scale gives no verdicts" in err
    seeds_line = "- " + next(line for line in read_header(tmp_path / "tables" / "smoke" / f"{PAPER}_{ARTIFACT}.md")
                             if line.startswith("seeds: "))
    assert seeds_line.startswith("- seeds: 3 seeds (") and f"--seeds auto: looks at {looks} seeds" in seeds_line
    assert "stopped at 3 seeds: smoke scale gives no verdicts" in seeds_line
    df = _claims(tmp_path / "tables" / "smoke" / f"{PAPER}_{ARTIFACT}.claims.csv")
    assert (df["verdict"] == "no verdict").all() and (df["seeds"] == 3).all()
    assert not any(p.name.endswith("-s3") or "-s3-" in p.name for p in (tmp_path / "runs" / PAPER).iterdir())


@pytest.mark.parametrize("args, message", [
    (["--seeds", "abc"], "--seeds 'abc': give a whole number of seeds (1 to 100) or auto"),
    (["--seeds", "auto", "--max-seeds", "2"], "--max-seeds must be 3 or more, got 2"),
])
def test_bad_seeds_options_are_one_line_errors(tmp_path, capsys, args, message):
    code, err = _cli([PAPER, ARTIFACT, "--scale", "smoke", *args, "--runs-dir", str(tmp_path / "runs"),
                      "--out-dir", str(tmp_path)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_no_verdict_below_three_seeds_is_the_rules_floor():
    assert stats.MIN_SEEDS == 3 and stats.looks(3) == (3,) and stats.looks(5) == (3, 5)
    assert stats.look_level(2) == pytest.approx(0.975) and not math.isnan(stats.look_level(1))
