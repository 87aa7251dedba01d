"""The packaged reference CSVs: well-formed, unique keys, and faithful to the papers.

Besides spot values, the consistency checks below re-derive numbers the papers
print twice (a table cell and a sentence, or a ratio of two cells); they catch
transcription slips without opening the paper.
"""

from __future__ import annotations

import math
from importlib import resources

import pandas as pd
import pytest

from repro.reference_data import (
    COLUMNS,
    KEY,
    available,
    load_reference,
    reference_table,
    reference_value,
)

UNITS = {"%", "M", "MMACs", "GFLOPs", "ms", "x", "-"}


def _papers_with_numbers() -> tuple[str, ...]:
    """Every registered paper that prints numbers to compare with (the study has none)."""
    from repro.artifacts import papers

    return tuple(sorted(p for p in papers() if p != "study"))


PAPERS = _papers_with_numbers()


@pytest.fixture(scope="module", params=PAPERS)
def paper_df(request):
    return request.param, load_reference(request.param)


def test_every_packaged_csv_is_a_known_paper():
    assert available() == sorted(PAPERS)


def test_exact_columns_and_no_comment_lines(paper_df):
    paper, df = paper_df
    assert tuple(df.columns) == COLUMNS
    assert len(df) > 0
    text = resources.files("repro").joinpath("reference", f"{paper}.csv").read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert not any(line.lstrip().startswith("#") for line in text.splitlines())


def test_unique_keys(paper_df):
    _, df = paper_df
    dup = df[df.duplicated(list(KEY), keep=False)]
    assert dup.empty, dup


def test_values_numeric_and_fields_filled(paper_df):
    _, df = paper_df
    assert df["value"].dtype == float
    assert df["value"].map(math.isfinite).all()
    for col in ("artifact", "row", "column", "unit", "source"):
        assert (df[col].str.strip() != "").all(), col
        assert (df[col] == df[col].str.strip()).all(), col
    assert set(df["unit"]) <= UNITS
    # row keys are lower-case and carry no spaces
    assert (df["row"] == df["row"].str.lower()).all()
    assert not df["row"].str.contains(" ").any()
    assert not df["column"].str.contains(" ").any()


def test_unknown_paper_names_valid_choices():
    with pytest.raises(ValueError) as exc:
        load_reference("resnet")
    for p in PAPERS:
        assert p in str(exc.value)


def test_reference_value_missing_is_none():
    df = load_reference("imta")
    assert reference_value(df, "table2", "ge+isc+ofa", "E-9") is None
    assert reference_value(df, "nope", "baseline", "E-1") is None


@pytest.mark.parametrize(
    "paper,artifact,row,column,expected",
    [
        ("imta", "table2", "ge+isc+ofa", "E-5", 73.45),
        ("imta", "table2", "baseline", "E-1", 60.09),
        ("imta", "table3", "isc", "E-2", 66.2),
        ("imta", "table1", "msdnet", "exit1_top1", 64.1),
        ("imta", "table1", "imta", "exit7_top1", 75.96),
        ("imta", "table1", "imta", "exit7_madds_m", 137.3),
        ("imta", "table1", "msdnet", "exit3_params_m", 1.11),
        ("glancenet", "table1", "densenet", "mflops", 276),
        ("glancenet", "table1", "glancenet", "top1", 92.36),
        ("glancenet", "hem", "hem", "speedup", 1.69),
        ("glancenet", "hem", "no-hem", "top1", 89.12),
        ("biasloss", "table1", "skipblocknet-m", "mflops", 246),
        ("biasloss", "table1", "skipblocknet-xs", "params_m", 2.3),
        ("biasloss", "table2", "skipblocknet-m", "pixel4_ms", 27),
        ("biasloss", "table3", "skipblocknet-m/ce", "top1", 75.5),
        ("biasloss", "table4", "shufflenetv2-0.5x/bias", "top1", 71.0),
        ("biasloss", "table4", "densenet-k12", "params_m", 7),
        ("biasloss", "table5", "inceptionv3/ce", "layer20_max", 9.3),
        ("dgate", "table1", "original", "gflops", 5.02),
        ("dgate", "table1", "dg(1.0,1.8,1.5)", "speedup_pct", 43.31),
        ("dgate", "table2", "original", "time_ms", 18.86),
        ("dgate", "table2", "dg(1.1,1.7,1.0)", "flops_reduction_pct", 38.97),
        ("dgate", "imagenet", "dgate", "gflops", 14.1),
        ("dcp", "table1", "vgg16", "top1", 93.50),
        ("dcp", "table1", "vgg16", "flops_reduction_pct", 73.3),
        ("dcp", "table1", "resnet32", "flops_reduction_pct", 50.2),
        ("dcp", "imagenet", "resnet50", "top5", 92.05),
    ],
)
def test_spot_values(paper, artifact, row, column, expected):
    df = load_reference(paper)
    assert reference_value(df, artifact, row, column) == pytest.approx(expected)


def test_reference_table_wide():
    wide = reference_table(load_reference("imta"), "table2")
    assert list(wide.index) == ["baseline", "ge", "isc", "ofa", "ge+isc+ofa"]
    assert list(wide.columns) == ["E-1", "E-2", "E-3", "E-4", "E-5"]
    assert wide.loc["ge+isc+ofa", "E-5"] == pytest.approx(73.45)


# --- consistency with the papers' own text ----------------------------------


def test_imta_table1_cumulative_costs_shared_and_increasing():
    t = reference_table(load_reference("imta"), "table1")
    for metric in ("params_m", "madds_m"):
        cols = [f"exit{i}_{metric}" for i in range(1, 8)]
        ms, ours = t.loc["msdnet", cols], t.loc["imta", cols]
        assert list(ms) == list(ours)  # same backbone, same costs
        assert all(a < b for a, b in zip(ms, ms[1:]))


def test_imta_ablation_rows_match_sec_4_3_text():
    t = reference_table(load_reference("imta"), "table2")
    # "exit 5 (E-5) improves by more than 1.4%" with ISC (line 1 vs line 3)
    assert t.loc["isc", "E-5"] - t.loc["baseline", "E-5"] > 1.4
    # full model beats the baseline by > 1 % at stages two to four
    for e in ("E-2", "E-3", "E-4"):
        assert t.loc["ge+isc+ofa", e] - t.loc["baseline", e] > 1.0


def test_biasloss_gains_match_text():
    df = load_reference("biasloss")
    t3 = reference_table(df, "table3")["top1"]
    assert t3["mobilenetv3-large-1.0x/bias"] - t3["mobilenetv3-large-1.0x/ce"] == pytest.approx(0.5)
    assert t3["skipblocknet-m/ce"] - t3["mobilenetv3-large-1.0x/ce"] == pytest.approx(0.3)
    assert t3["skipblocknet-m/bias"] - t3["skipblocknet-m/ce"] == pytest.approx(0.7)
    t4 = reference_table(df, "table4")["top1"]
    for model, gain in (("shufflenetv2-0.5x", 1.5), ("squeezenet", 1.0), ("mobilenetv2-0.75x", 0.6)):
        assert t4[f"{model}/bias"] - t4[f"{model}/ce"] == pytest.approx(gain)


@pytest.mark.parametrize("artifact", ["table1", "table2"])
def test_dgate_ratios_follow_from_cells(artifact):
    t = reference_table(load_reference("dgate"), artifact)
    g0, t0 = t.loc["original", "gflops"], t.loc["original", "time_ms"]
    for row in t.index.drop("original"):
        fr = 100 * (1 - t.loc[row, "gflops"] / g0)
        sp = 100 * (1 - t.loc[row, "time_ms"] / t0)
        assert fr == pytest.approx(t.loc[row, "flops_reduction_pct"], abs=0.02)
        assert sp == pytest.approx(t.loc[row, "speedup_pct"], abs=0.02)


def test_dgate_text_claims():
    df = load_reference("dgate")
    v = lambda a, r, c: reference_value(df, a, r, c)  # noqa: E731
    # "reduced by 1090 MFLOPs" (ResNet-101) and "by 460 MFLOPs" (DenseNet-201)
    assert v("table1", "original", "gflops") - v("table1", "dg(2.4,2.4,1.5)", "gflops") == pytest.approx(1.09)
    assert v("table2", "original", "gflops") - v("table2", "dg(3.5,3.5,2.5)", "gflops") == pytest.approx(0.46)
    # ImageNet: 1.5 GFLOPs saved, 9.6 % reduction
    base, dg = v("imagenet", "resnet-101", "gflops"), v("imagenet", "dgate", "gflops")
    assert base - dg == pytest.approx(v("imagenet", "dgate", "gflops_saved"))
    assert 100 * (1 - dg / base) == pytest.approx(v("imagenet", "dgate", "flops_reduction_pct"), abs=0.05)


def test_glancenet_speedup_matches_reduction():
    df = load_reference("glancenet")
    red = reference_value(df, "table1", "glancenet", "flops_reduction_pct")
    sp = reference_value(df, "table1", "glancenet", "speedup")
    # 30.18 % fewer FLOPs <-> 1.43x; the printed 186/276 MFLOPs is 32.6 % (see README)
    assert 1 / (1 - red / 100) == pytest.approx(sp, abs=0.005)
