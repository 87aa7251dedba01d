"""The core's honest-label rules, for every paper by construction (repro.render)."""
from __future__ import annotations

import math

import pandas as pd

from repro.render import Meta, building, claim, label_paper_datasets, markdown_groups, read_table_csv, write_table
from repro.runner import Request


def _meta(dataset="fashion-mnist") -> Meta:
    return Meta("imta", "fig2", "Budgeted batch, MSDNet vs IMTA (CIFAR-10)", "quick scale", dataset, 1, "MADDs")


def _table() -> pd.DataFrame:
    return pd.DataFrame({"row": ["a", "b"], "E-1": [50.0, 60.0], "E-1 ±": [1.0, 1.0], "E-1 paper": [70.0, 72.0],
                         "E-1 Δ": [-20.0, -12.0]})


def test_a_title_names_the_dataset_used_and_labels_the_papers_as_the_papers():
    with building(Request(scale="quick")):
        head = _meta().heading()
    assert "(paper: CIFAR-10)" in head and head.endswith("ours: fashion-mnist, quick scale")
    assert label_paper_datasets("on CIFAR-10 and ImageNet", "cifar10") == "on CIFAR-10 and paper: ImageNet"
    assert label_paper_datasets("CIFAR-100 top-1", "cifar10") == "paper: CIFAR-100 top-1"  # not CIFAR-10's prefix


def test_no_delta_outside_the_papers_setting(tmp_path):
    with building(Request(scale="quick")):
        write_table(_table(), _meta(), tmp_path)
    df = read_table_csv(tmp_path / "imta_fig2.csv")
    assert "E-1 paper" in df.columns and not any(c.endswith("Δ") for c in df.columns)
    assert "Δ" not in (tmp_path / "imta_fig2.md").read_text().split("- comparison")[1].split("\n", 1)[1]


def test_delta_in_the_papers_setting_but_not_with_a_data_override(tmp_path):
    with building(Request(scale="paper")):
        write_table(_table(), _meta("cifar10"), tmp_path)
    assert "E-1 Δ" in read_table_csv(tmp_path / "imta_fig2.csv").columns
    with building(Request(scale="paper", epochs=1, train_limit=256)):
        write_table(_table(), _meta("cifar10"), tmp_path)
    assert "E-1 Δ" not in read_table_csv(tmp_path / "imta_fig2.csv").columns


def test_overrides_appear_in_the_header_of_every_file(tmp_path):
    request = Request(scale="quick", epochs=3, train_limit=4000, options=(("ofa_teacher", "self"),))
    with building(request):
        paths = write_table(_table(), _meta(), tmp_path)
    for p in paths:
        assert "--epochs 3" in p.read_text() and "--train-limit 4000" in p.read_text(), p
        key = "ofa\\_teacher" if p.suffix == ".tex" else "ofa_teacher"  # LaTeX escapes the underscore
        assert f"--set {key}=self" in p.read_text(), p
    with building(Request(scale="quick")):
        write_table(_table(), _meta(), tmp_path)
    assert "overrides: none" in (tmp_path / "imta_fig2.md").read_text()


def test_a_smoke_claim_gets_no_verdict():
    with building(Request(scale="smoke")):
        line = claim("GE+ISC+OFA - MSDNet at E-1", 5.0, 0.5, 1.2)
    assert "no verdict" in line and "same sign" not in line and "beyond" not in line
    with building(Request(scale="quick")):
        assert "same sign as the paper, beyond the spread" in claim("x", 5.0, 0.5, 1.2)
        assert "not resolved" in claim("x", 0.3, 0.5, 1.2)
        assert "opposite sign" in claim("x", -5.0, 0.5, 1.2)
        assert "no spread" in claim("x", 1.0, math.nan, 1.2)


def test_wide_markdown_is_split_into_groups_of_at_most_200_characters(tmp_path):
    wide = pd.DataFrame({"row": ["GE+ISC+OFA"], **{f"column {i} with a long name": [f"{i}.00 ± 0.50"]
                                                    for i in range(30)}})
    groups = markdown_groups(wide)
    assert len(groups) > 1
    assert all(len(line) <= 200 for g in groups for line in g.splitlines())
    shown = [c.strip() for g in groups for c in g.splitlines()[0].strip("|").split("|")]
    assert shown.count("row") == len(groups) and len(shown) - len(groups) == 30  # every column once


def test_files_are_written_atomically_and_leave_no_temporaries(tmp_path):
    with building(Request(scale="quick")):
        write_table(_table(), _meta(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imta_fig2.csv", "imta_fig2.md", "imta_fig2.tex"]
    tex = (tmp_path / "imta_fig2.tex").read_text()
    caption = next(line for line in tex.splitlines() if line.startswith("\\caption"))
    assert len(caption) < 200 and "\\par" in tex  # a short caption; the header lines as notes below
