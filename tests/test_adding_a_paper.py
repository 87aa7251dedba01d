"""docs/adding-a-paper.md's module, run as written: a sixth paper is one module (and its CSV)."""
from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch

from repro.api import Request, Runs, Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "adding-a-paper.md"


def _example() -> types.ModuleType:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    module = types.ModuleType("labelsmooth_example")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


class _Run:
    def __init__(self, correct: torch.Tensor):
        labels = torch.zeros(len(correct), dtype=torch.long)
        logits = torch.zeros(1, len(correct), 10)
        logits[0, :, 0] = correct.float() * 2 - 1  # class 0 (right) where correct, else another class wins
        logits[0, :, 1] = 0.0
        self.outputs = {"test_logits": logits, "test_labels": labels}
        self.results = {}


def test_the_example_module_declares_named_runs_from_its_recipe_tables():
    ls = _example()
    runs = ls.table1_runs(Request(scale="quick"))
    assert list(runs) == ["ce", "ls"] and runs["ls"].method == {"eps": 0.1}
    assert runs["ce"].train == ls.RECIPES["quick"] and runs["ce"].model_args == {"depth": 20, "width": 8}
    assert list(ls.fig1_runs(Request(scale="paper"))) == ["eps=0", "eps=0.05", "eps=0.1", "eps=0.2"]
    assert len(DOC.read_text().split("```python\n")[1].split("```")[0].splitlines()) < 150


def _build_example(tmp_path):
    """The example's table1 and fig1 built from synthetic runs (400 test images, ls right on ~70 %, ce on
    ~60 %, independently): the written paths, the table's Markdown and the per-image differences ls - ce."""
    from repro import artifacts
    from repro.runner import build_and_write

    ls = _example()
    request = Request(scale="quick")
    g = torch.Generator().manual_seed(0)
    fake = lambda p: [_Run(torch.rand(400, generator=g) < p)]  # noqa: E731
    reg = artifacts.papers()
    reg[ls.PAPER_NAME] = ls.PAPER
    try:
        given = {"ce": fake(0.6), "ls": fake(0.7)}
        table_runs = Runs.fixed(given, ls.table1_runs(request), request)
        paths = build_and_write("labelsmooth", "table1", request, table_runs, Settings(out_dir=tmp_path))
        fig_runs = Runs.fixed({n: fake(0.5) for n in ls.fig1_runs(request)}, ls.fig1_runs(request), request)
        paths += build_and_write("labelsmooth", "fig1", request, fig_runs, Settings(out_dir=tmp_path))
    finally:
        del reg[ls.PAPER_NAME]
    right = {k: (r[0].outputs["test_logits"][0].argmax(-1) == 0).double() for k, r in given.items()}
    md = (tmp_path / "tables" / "quick" / "labelsmooth_table1.md").read_text()
    return paths, md, (right["ls"] - right["ce"]) * 100


def test_the_example_builds_a_table_and_a_figure_the_core_writes(tmp_path):
    paths, md, _ = _build_example(tmp_path)
    names = sorted(p.name for p in paths)
    assert {"labelsmooth_fig1.csv", "labelsmooth_fig1.pdf", "labelsmooth_fig1.png", "labelsmooth_table1.csv",
            "labelsmooth_table1.md", "labelsmooth_table1.tex", "labelsmooth_table1.claims.csv"} <= set(names)
    assert not any(n.startswith("labelsmooth_fig1.") and "claims" in n for n in names)  # fig1 claims nothing
    assert md.startswith("# labelsmooth table1: Top-1 (%) with and without label smoothing (paper: CIFAR-10) — "
                         "ours: fashion-mnist, quick scale")
    assert "- gain of label smoothing over CE: ours +" in md and "no claim gets a verdict below 3 seeds" in md
    assert "| label smoothing |" in md and " paper" not in md.split("\n\n")[-1]  # no reference CSV: no paper column


def test_the_examples_claim_is_a_paired_gap_with_its_evidence(tmp_path):
    paths, md, d = _build_example(tmp_path)
    # one seed: the gap of the per-image differences and z x their standard error, no paper number, no verdict
    half = 1.959964 * float(d.std()) / 20  # sqrt(400)
    assert f"- gain of label smoothing over CE: ours {float(d.mean()):+.2f} ± {half:.2f} (test images only) " \
           "(no verdict)" in md
    assert "labelsmooth_table1.evidence.npz" in {p.name for p in paths}
