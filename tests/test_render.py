"""The core's honest-label rules, for every paper by construction (repro.render)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

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
    assert "no verdict" in line and "reproduced" not in line and "beyond" not in line


def test_the_verdict_is_reproduced_contradicted_or_unresolved_by_the_papers_sign_and_the_spread():
    with building(Request(scale="quick", seeds=3)):
        assert claim("x", 5.0, 0.5, 1.2) == "x: ours +5.00 ± 0.50; paper +1.20 (reproduced: the paper's sign, beyond the spread)"
        assert claim("x", -5.0, 0.5, 1.2).endswith("(contradicted: the opposite sign, beyond the spread)")
        assert claim("x", 0.5, 0.5, 1.2).endswith("(unresolved: within the spread)")  # |gap| <= spread
        assert claim("x", -0.6, 0.5, -1.2).endswith("(reproduced: the paper's sign, beyond the spread)")
        # a direction without a number: the sign decides; no direction at all: no verdict word
        assert claim("x", -0.6, 0.5, None, sign=+1).endswith("(contradicted: the opposite sign, beyond the spread)")
        assert claim("x", -0.6, 0.5, None, sign=-1) == "x: ours -0.60 ± 0.50 (reproduced: the paper's sign, beyond the spread)"
        assert claim("x", -0.6, 0.5, None).endswith("(beyond the spread; the paper states no direction)")
        assert claim("x", 1.0, math.nan, 1.2).endswith("(no spread available: no verdict)")
    with building(Request(scale="quick", seeds=1)):  # one seed: the spread is over test images only, and says so
        assert claim("x", 5.0, 0.5, 1.2).endswith(
            "(reproduced: the paper's sign, beyond the spread, at 1 seed: the spread is over test images, not seeds)")
        assert "unresolved: within the spread, at 1 seed" in claim("x", 0.3, 0.5, 1.2)


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


# ---------------------------------------------------------------------------- figures


def _figure_header(path) -> list[str]:
    return [line[2:].rstrip("\n") for line in open(path) if line.startswith("# axes")]


def test_the_papers_points_get_a_panel_of_their_own_and_the_csv_names_every_axis(tmp_path):
    from repro.render import Series, paper_label, write_figure

    ours = [Series("ours", [1.0, 2.0, 3.0], [10.0, 12.0, 13.0], [1.0, 1.0, 1.0])]
    paper = [Series(paper_label("cifar100", "MSDNet"), [50.0, 100.0], [70.0, 74.0], kind="paper")]
    assert paper[0].label == "paper, CIFAR-100: MSDNet"
    data = pd.DataFrame({"source": ["ours", "paper"], "method": ["ours", paper[0].label]})
    with building(Request(scale="smoke")):
        write_figure(ours, _meta(), tmp_path, "cost (MMACs, MSDNet's counter)", "top-1 (%)", data=data, paper=paper,
                     paper_axes=("cost (MMACs, the paper's)", "top-1 (%) on CIFAR-100"), paper_title="paper panel")
    axes = _figure_header(tmp_path / "imta_fig2.csv")
    assert len(axes) == 2 and "x = cost (MMACs, MSDNet's counter)" in axes[0] and "legend: ours" in axes[0]
    assert axes[1].startswith("axes 2 (paper panel)") and "legend: paper, CIFAR-100: MSDNet" in axes[1]
    assert read_table_csv(tmp_path / "imta_fig2.csv")["method"].tolist() == ["ours", "paper, CIFAR-100: MSDNet"]
    with building(Request(scale="smoke")):  # without paper_axes: on our axes
        write_figure(ours, _meta(), tmp_path, "x", "y", data=data, paper=paper)
    assert len(_figure_header(tmp_path / "imta_fig2.csv")) == 1


def test_a_curve_collapsed_to_one_point_says_so_on_the_plot(tmp_path):
    from repro.render import Series, write_figure

    flat = [Series("gates", [0.9, 0.9, 0.9], [24.8, 24.8, 24.8], [3.0, 3.0, 3.0]), Series("b", [1.0, 2.0], [1.0, 2.0])]
    with building(Request(scale="smoke")):
        write_figure(flat, _meta(), tmp_path, "x", "y", data=pd.DataFrame({"a": [1]}),
                     collapsed="all thresholds give the same cost at this scale ({labels})")
    (axes,) = _figure_header(tmp_path / "imta_fig2.csv")
    assert "(all thresholds give the same cost at this scale (gates))" in axes


def test_title_and_footer_fit_a_narrow_and_a_wide_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repro.render import _renderer, save_figure

    meta = _meta()
    meta.notes = []
    meta.flops = "MMACs, MSDNet's counter: " + "CONV MULTIPLY-ADDS WITHOUT BIAS + LINEAR WEIGHTS, WM " * 6  # wide
    meta.title = "Budgeted batch, MSDNet vs IMTA, GE + ISC + OFA, MMACs WITH MSDNET'S COUNTER (CIFAR-100)"
    for size in ((3.2, 3.0), (5.2, 5.0), (22.0, 4.0)):
        fig, ax = plt.subplots(figsize=size)
        ax.plot([0, 1], [0, 1])
        with building(Request(scale="smoke")):
            save_figure(fig, meta, tmp_path)
        renderer = _renderer(fig)
        width = fig.get_size_inches()[0] * fig.dpi
        for text in [fig._suptitle, *fig.texts]:
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= width, (size, text.get_text()[:40], box.x1, width)
        assert fig.texts[-1].get_window_extent(renderer).y1 < ax.get_window_extent(renderer).y0  # under the axes


def test_point_labels_do_not_overlap(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repro.render import _renderer, label_points, save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    xs, ys = [0.69, 0.70, 0.81, 0.82, 0.25, 0.48, 1.2, 1.3], [10.9] * 8  # the smoke fig1: one accuracy for all
    ax.scatter(xs, ys)
    label_points(ax, xs, ys, ["SBN-XS", "MV3-Large 1.0x", "SBN-S", "MV3-Large 1.25x", "MV3-Small", "MV3-L 0.75x",
                              "SBN-M", "SBN-L"])
    with building(Request(scale="smoke")):
        save_figure(fig, _meta(), tmp_path)
    renderer = _renderer(fig)
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 8
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_a_budgeted_sweep_gets_its_band_by_the_one_spread_rule():
    import pytest
    import torch

    from repro.exits import budgeted_sweep, mean_and_spread
    from repro.render import sweep_spread

    runs = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        val, test = torch.randn(3, 200, 10, generator=g), torch.randn(3, 200, 10, generator=g)
        yv, yt = torch.randint(0, 10, (200,), generator=g), torch.randint(0, 10, (200,), generator=g)
        runs.append((budgeted_sweep(val, yv, test, yt, [1.0, 2.0, 3.0]), (test, yt)))
    acc, spread, what = sweep_spread([runs[0][0]], [runs[0][1]], "confidence")
    assert acc == runs[0][0]["acc"].tolist() and "bootstrap" in what
    assert all(3 < s < 12 for s in spread)  # 200 samples at ~10 %: a half-width of about 4 points
    acc, spread, what = sweep_spread([r[0] for r in runs], [r[1] for r in runs], "confidence")
    want = [mean_and_spread([r[0]["acc"].iloc[b] for r in runs]) for b in range(len(acc))]
    assert acc == pytest.approx([m for m, _ in want]) and spread == pytest.approx([s for _, s in want])
    assert "t-interval" in what


def test_a_fixed_quantity_has_no_plus_minus_and_a_tiny_spread_is_not_shown_as_zero():
    from repro.render import to_display

    df = pd.DataFrame({"row": ["a", "b", "c"], "mflops": [1.64, 0.83, 0.9], "mflops ±": [0.0, 0.001, 0.2]})
    assert to_display(df)["mflops"].tolist() == ["1.64", "0.83 ± <0.01", "0.90 ± 0.20"]
    with building(Request(scale="quick")):
        assert claim("FLOPs cut", 49.25, 0.0, 30.18) == ("FLOPs cut: ours +49.25; paper +30.18 "
                                                         "(reproduced: a fixed quantity of the paper's sign)")
        assert claim("cost", 1.0, 0.001, None).startswith("cost: ours +1.00 ± <0.01")
        assert claim("same runs", 0.0, 0.0, 0.5) == "same runs: ours +0.00; paper +0.50 (unresolved: no difference)"
        with pytest.raises(ValueError):
            claim("x", 1.0, 0.1, None, sign=2)
    with building(Request(scale="smoke")):
        assert claim("FLOPs cut", 49.25, 0.0, 30.18).startswith("FLOPs cut: ours +49.25; paper +30.18 (smoke")


def test_markdown_rows_never_exceed_the_width_even_when_a_cell_is_wider_than_its_header():
    shown = pd.DataFrame({"row": ["a long row label " * 3], **{f"c{i}": ["x" * 30] for i in range(8)}})
    for table in markdown_groups(shown, width=120):
        assert max(map(len, table.splitlines())) <= 120


def test_the_header_says_how_much_the_runs_trained_on():
    from types import SimpleNamespace as NS

    from repro.render import training_note

    def cfg(kind, epochs, limit):
        return NS(kind=kind, train=NS(epochs=epochs), data=NS(train_limit=limit, val_size=5000), method={})

    assert training_note([cfg("phase1", 2, None), cfg("phase2", 1, None)]) == (
        "the training split less 5,000 held-out validation images; epochs: phase1 2, phase2 1")
    assert training_note([cfg("glancenet", 3, 27_500), cfg("densenet", 3, 27_500)]) == (
        "the first 27,500 images of the training split; epochs: glancenet 3, densenet 3")
    assert training_note([]) == ""
    # a run on a fifth of each epoch's batches (DCP's L1 fine-tuning at quick scale) trained 0.2 epochs
    l1 = NS(kind="l1", train=NS(epochs=1), data=NS(train_limit=27_500, val_size=5000), method={"batches_frac": 0.2})
    assert training_note([cfg("unpruned", 1, 27_500), l1]).endswith("epochs: unpruned 1, l1 0.2")
