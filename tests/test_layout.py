"""Layout of the outputs (issue 29 items 2-3): figures carry their claims' verdicts, a readable footer
and no overlapping or clipped text; tables put a short summary above the table and the provenance
below it, with no line over 200 characters, column names by their unit and titles that name the
paper's dataset."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from repro import render
from repro.render import (MAX_LINE, Claim, Figure, Meta, Series, Table, building, checking_layout, label_paper_datasets,
                          model_names, read_header, text_problems, write_outputs)
from repro.runner import Request
from repro.stats import gap_evidence

from conftest import run_smoke


class _Settings:
    def __init__(self, root):
        self.tables_dir, self.figures_dir = root / "tables", root / "figures"


def _gap(shift: float, seeds: int = 3, n: int = 400, seed: int = 0):
    """Synthetic per-image evidence: arm a right on ~60 % + shift of the images, b on ~60 %."""
    rng = np.random.default_rng(seed)
    a = (rng.random((seeds, n)) < 0.6 + shift).astype(float)
    b = (rng.random((seeds, n)) < 0.6).astype(float)
    return gap_evidence(a, b, arms=("a", "b"))


def _claims():
    return [Claim("big gain of a over b (headline)", _gap(0.25), 25.0, headline=True),
            Claim("no gain of a over b", _gap(0.0, seed=1), 30.0),
            Claim("gain the paper claims large", _gap(0.0, seed=2), 1.0),
            Claim("FLOPs cut (a count)", 30.0, 20.0)]


def _figure(claims=(), legend="best", paper_axes=None, model="msdnet_cifar_5exit {'nChannels': 4, 'growthRate': 2}"):
    ours = [Series(f"ours, arm {i}", [1.0, 2.0, 3.0], [50.0 + i, 55.0 + i, 57.0 + i], [1.0, 1.0, 1.0]) for i in range(3)]
    paper = [Series(render.paper_label("cifar100", "MSDNet"), [50.0, 100.0], [70.0, 74.0], kind="paper")]
    return Figure("Budgeted batch, MSDNet vs IMTA (CIFAR-100)", "fashion-mnist", model,
                  "MMACs, MSDNet's counter: conv multiply-adds without bias + linear weights and bias", ours,
                  "average cost (MMACs)", "top-1 (%)", pd.DataFrame({"a": [1]}), paper=paper, paper_axes=paper_axes,
                  paper_title="paper, CIFAR-100: top-1 per exit", legend=legend, claims=list(claims))


def _write(out, tmp_path, scale="quick", seeds=3, artifact="fig4"):
    with checking_layout() as found, building(Request(scale=scale, seeds=seeds), training="the first 512 images; "
                                                                                     "epochs: phase1 1"):
        paths = write_outputs(out, "imta", artifact, Request(scale=scale, seeds=seeds), _Settings(tmp_path))
    return paths, found


# ---------------------------------------------------------------------------- figures


def _fig_texts(monkeypatch):
    """Keep the figures save_figure closes, to inspect their artists."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(render, "_ON_SAVE", [lambda fig, meta: kept.append(fig)])
    return kept, plt


@pytest.mark.parametrize("legend,paper_axes", [("best", None), ("right", ("cost (the paper's)", "top-1 on CIFAR-100")),
                                               ("below", ("x", "y"))])
def test_the_verdict_box_counts_the_claims_and_names_the_headline(tmp_path, monkeypatch, legend, paper_axes):
    kept, _ = _fig_texts(monkeypatch)
    with building(Request(scale="quick", seeds=3), training="the first 512 images; epochs: phase1 1"):
        write_outputs(_figure(_claims(), legend, paper_axes), "imta", "fig4", Request(scale="quick", seeds=3),
                      _Settings(tmp_path))
    (fig,) = kept
    box = next(t for t in fig.texts if getattr(t, "_repro_role", "") == "verdicts").get_text().replace("\n  ", " ")
    first = box.splitlines()[0]
    assert first.startswith("claims: ") and "4" not in first.split(":")[0]
    counts = dict((w, int(n)) for n, w in re.findall(r"(\d+) ([a-z ]+?)(?:,|$| \()", first.removeprefix("claims: ")))
    assert sum(counts.values()) == 4, first
    assert counts.get("reproduced") == 2, first  # the big gain and the FLOPs count
    assert "big gain of a over b (headline): reproduced" in box
    assert text_problems(fig) == [], text_problems(fig)


@pytest.mark.parametrize("scale,seeds,why", [("smoke", 3, "smoke scale"), ("quick", 1, "1 seed, a verdict needs 3")])
def test_no_verdicts_says_why(tmp_path, monkeypatch, scale, seeds, why):
    kept, _ = _fig_texts(monkeypatch)
    claims = [Claim("gain", _gap(0.2, seeds=seeds), 20.0, headline=True)]
    with building(Request(scale=scale, seeds=seeds)):
        write_outputs(_figure(claims), "imta", "fig4", Request(scale=scale, seeds=seeds), _Settings(tmp_path))
    (fig,) = kept
    box = next(t for t in fig.texts if getattr(t, "_repro_role", "") == "verdicts").get_text().replace("\n  ", " ")
    assert box.startswith("no verdicts: ") and why in box, box


def test_the_footer_is_readable_names_the_network_only_and_says_training_and_seeds(tmp_path, monkeypatch):
    kept, _ = _fig_texts(monkeypatch)
    with building(Request(scale="quick", seeds=3), training="the first 512 images of the training split; epochs: phase1 1"):
        write_outputs(_figure(_claims()), "imta", "fig4", Request(scale="quick", seeds=3), _Settings(tmp_path))
    (fig,) = kept
    footer = next(t for t in fig.texts if getattr(t, "_repro_role", "") == "footer")
    text = footer.get_text().replace("\n", " ")
    # the figure prints at its own size (its PDF page): the font size in points is its printed size
    assert footer.get_fontsize() >= 8
    assert "{" not in text and "msdnet_cifar_5exit" in text
    assert "training: the first 512 images of the training split; epochs: phase1 1" in text
    assert "seeds: 3 seeds" in text
    # the data CSV keeps the full header, the model dict included, in lines of at most 200 characters
    csv = (tmp_path / "figures" / "imta_fig4.csv").read_text()
    assert max(map(len, csv.splitlines())) <= MAX_LINE
    assert any("'nChannels': 4" in h for h in read_header(tmp_path / "figures" / "imta_fig4.csv"))
    assert model_names("a {'x': {'y': 1}, 'z': [1, 2]}; b {'w': 2}") == "a; b"


def test_the_overlap_check_finds_overlapping_and_clipped_texts():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    fig.tight_layout()
    assert text_problems(fig) == []
    ax.text(0.5, 0.5, "one label")
    ax.text(0.5, 0.5, "another label")
    fig.text(0.9, 0.5, "a note that runs off the right edge of the canvas")
    problems = text_problems(fig)
    assert any("overlaps" in p and "one label" in p and "another label" in p for p in problems), problems
    assert any("leaves the canvas" in p and "runs off" in p for p in problems), problems
    plt.close(fig)


# every kind of figure the papers draw, at smoke scale, from real smoke runs (once per module)
SMOKE_FIGURES = {"imta": ["fig4", "fig6", "fig7"], "dgate": ["fig4", "fig5", "fig7"], "glancenet": ["alpha", "tradeoff"],
                 "dcp": ["fig-ratio", "fig-channels"], "biasloss": ["fig1"]}


@pytest.fixture(scope="module")
def smoke_layout(tmp_path_factory):
    found: dict[str, list[str]] = {}
    with checking_layout() as seen:
        for paper, artifacts in SMOKE_FIGURES.items():
            run_smoke(tmp_path_factory, paper, artifacts)
        found.update(seen)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("paper", list(SMOKE_FIGURES))
def test_no_text_of_a_smoke_figure_overlaps_another_or_leaves_the_canvas(smoke_layout, paper):
    mine = {k: v for k, v in smoke_layout.items() if k.startswith(paper + "_")}
    assert len(mine) >= len(SMOKE_FIGURES[paper]), sorted(smoke_layout)
    assert {k: v for k, v in mine.items() if v} == {}


# ---------------------------------------------------------------------------- tables


def _table(claims=(), column_names=None):
    ours = [{"row": r, "column": c, "value": v, "spread": 0.5}
            for r, v in (("baseline", 80.0), ("ge+isc+ofa", 81.0)) for c in ("E-1", "mflops")]
    ref = pd.DataFrame([{"row": "baseline", "column": "E-1", "value": 60.0},
                        {"row": "baseline", "column": "mflops", "value": 276.0}])
    return Table("Top-1 (%) at every exit, ablation of GE / ISC / OFA (CIFAR-100)", "fashion-mnist",
                 "msdnet_cifar_5exit {'nChannels': 4, 'growthRate': 2, 'head_channels': 16}",
                 "MMACs, MSDNet's counter: " + "conv multiply-adds without bias + linear weights and bias, " * 5,
                 ours, reference=ref, claims=list(claims), column_names=column_names,
                 notes=["a very long note " * 30])


def test_a_table_has_a_short_summary_above_and_the_provenance_below(tmp_path):
    paths, _ = _write(_table(_claims()), tmp_path, artifact="table2")
    md = (tmp_path / "tables" / "imta_table2.md").read_text()
    lines = md.splitlines()
    first_row = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert first_row <= 8, "\n".join(lines[:first_row + 1])
    above = "\n".join(lines[:first_row])
    assert "fashion-mnist" in above.lower() or "Fashion-MNIST" in above
    assert "quick scale" in above and "3 seeds" in above and "**Claims:** " in above and "2 reproduced" in above
    assert "big gain of a over b (headline): reproduced" in above
    below = "\n".join(lines[first_row:])
    assert "<details>" in below and "- commit: " in below and "- seeds: 3 seeds" in below
    header = read_header(tmp_path / "tables" / "imta_table2.md")
    assert any(h.startswith("big gain of a over b (headline): ours ") for h in header)  # a claim line, joined back
    assert any(h.startswith("wall time") or h.startswith("commit: ") for h in header)
    for p in paths:
        if p.suffix in (".md", ".csv", ".tex"):
            text = p.read_text()
            lines = text.splitlines() if p.suffix != ".csv" else [ln for ln in text.splitlines() if ln.startswith("#")]
            assert max(map(len, lines)) <= MAX_LINE, (p.name, max(lines, key=len))
    # the CSV keeps its full header, its table readable
    assert render.read_table_csv(tmp_path / "tables" / "imta_table2.csv")["E-1 paper"].tolist()[0] == 60.0


def test_docs_gen_reads_the_new_layout(tmp_path):
    import importlib.util
    from pathlib import Path

    _write(_table(_claims()), tmp_path, artifact="table2")
    spec = importlib.util.spec_from_file_location("docs_gen", Path(__file__).resolve().parent.parent / "docs" / "gen.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    heading, header, body = gen.header_and_tables((tmp_path / "tables" / "imta_table2.md").read_text())
    assert heading.startswith("imta table2: ") and body.count("| row") >= 1 and "<details>" not in body
    assert gen._line(header, "commit") and gen._line(header, "seeds").startswith("3 seeds")
    assert sum(h.startswith(("big gain", "no gain", "gain the paper", "FLOPs cut")) for h in header) == 4, header
    _, csv_lines = gen.csv_header((tmp_path / "tables" / "imta_table2.csv").read_text())
    assert csv_lines == header


def test_a_cost_column_is_named_by_its_unit(tmp_path):
    _write(_table(column_names={"mflops": "mmacs"}), tmp_path, artifact="table1")
    df = render.read_table_csv(tmp_path / "tables" / "imta_table1.csv")
    assert "mmacs" in df.columns and "mmacs paper" in df.columns and not any("mflops" in c for c in df.columns)
    # glancenet's table: the cost columns hold fvcore multiply-adds (MMACs), and are named so
    from repro.papers import glancenet

    assert "MMACs" in glancenet.CONVENTIONS[glancenet.COST]
    import inspect

    assert 'column_names={"mflops": "mmacs"}' in inspect.getsource(glancenet._table)


def test_titles_name_the_papers_dataset_and_read_well():
    assert (label_paper_datasets("ResNet-101 with d-gates on ImageNet: top-1 and average GFLOPs", "fashion-mnist")
            == "ResNet-101 with d-gates (paper: ImageNet): top-1 and average GFLOPs")
    assert label_paper_datasets("Top-1 (%) at every exit (CIFAR-100)", "fashion-mnist") == \
        "Top-1 (%) at every exit (paper: CIFAR-100)"
    assert label_paper_datasets("Top-1 (%) at every exit (CIFAR-100)", "cifar100") == "Top-1 (%) at every exit (CIFAR-100)"
    # every table set beside the paper's numbers names the paper's dataset in its title
    import inspect

    from repro.papers import biasloss, dcp, dgate, glancenet, imta

    names = "CIFAR-100|CIFAR-10|ImageNet"
    for mod, fn in ((imta, imta._ablation_table), (dgate, dgate), (glancenet, glancenet), (dcp, dcp), (biasloss, biasloss)):
        src = inspect.getsource(fn)
        for title in re.findall(r'(?:Table|_table|_chain_table)\(\s*f?"([^"]+ [^"]+)"', src):
            if "latency" in title or "variance" in title or "Every exit policy" in title:
                continue  # tables the paper gives on its own terms (phones, per-layer variance) or our study
            assert re.search(names, title) or "{" in title, (mod.__name__, title)
