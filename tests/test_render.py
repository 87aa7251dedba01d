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
    from repro.stats import seeds_evidence

    with building(Request(scale="smoke", seeds=3)) as ctx:  # a clear gap at 3 seeds: still no verdict at smoke
        line = claim("GE+ISC+OFA - MSDNet at E-1", seeds_evidence([4.5, 5.0, 5.5]), 1.2)
    assert line == "GE+ISC+OFA - MSDNet at E-1: ours +5.00; paper +1.20 (smoke scale: a pipeline check, no verdict)"
    assert ctx.verdicts[-1][4].word == ""  # and none is recorded for the claims file or --seeds auto


def test_the_verdict_is_reproduced_contradicted_smaller_or_inconclusive_by_the_interval_and_the_papers_gap():
    """Per-seed values 4.5, 5, 5.5: mean 5, s^2 = 0.25, the 95 % t-interval over 3 seeds 5 ± 4.3027 x
    sqrt(0.25 / 3) = [3.7579, 6.2421]; -0.5, 0.5, 0: [-1.2421, +1.2421], detectable gap (4.3027 +
    1.0607) x 0.2887 = 1.548 at 80 % power, and a gap of 1.00 detectable from 5 seeds ((2.7764 +
    0.9410) x sqrt(0.25 / 5) = 0.831; at 4: (3.1824 + 0.9785) x 0.25 = 1.040)."""
    from repro.stats import seeds_evidence

    five, zero, neg = seeds_evidence([4.5, 5.0, 5.5]), seeds_evidence([-0.5, 0.5, 0.0]), seeds_evidence([-0.6, -0.5, -0.7])
    with building(Request(scale="quick", seeds=3)) as ctx:
        assert claim("x", five, 1.2) == "x: ours +5.00 [+3.76, +6.24]; paper +1.20 (reproduced, larger than the paper's)"
        assert claim("x", five, 5.2).endswith("(reproduced, consistent with the paper's)")
        assert claim("x", five, 7.0).endswith("(reproduced, smaller than the paper's)")
        assert claim("x", five, -1.2) == "x: ours +5.00 [+3.76, +6.24]; paper -1.20 (contradicted)"
        assert claim("x", zero, 3.0) == ("x: ours +0.00 [-1.24, +1.24]; paper +3.00 (smaller than claimed, the interval "
                                         "holds 0 and excludes the paper's gap)")
        assert claim("x", zero, 1.0) == ("x: ours +0.00 [-1.24, +1.24]; paper +1.00 (inconclusive, detectable gap 1.55 "
                                         "at 80% power; the paper's 1.00 needs about 5 seeds)")
        # a direction without a number: the sign decides; no direction at all: "differs", not a verdict on the paper
        assert claim("x", neg, None, sign=+1) == "x: ours -0.60 [-0.85, -0.35] (contradicted)"
        assert claim("x", neg, None, sign=-1) == "x: ours -0.60 [-0.85, -0.35] (reproduced)"
        assert claim("x", neg, None).endswith("(differs)")
        # one value and no per-image data: nothing to judge by
        assert claim("x", seeds_evidence([1.0]), 1.2) == ("x: ours +1.00; paper +1.20 (one seed and no per-image data: "
                                                         "no spread, no verdict)")
    words = [v.word for *_, v, _headline, _line in ctx.verdicts]
    assert words == ["reproduced"] * 3 + ["contradicted", "smaller than claimed", "inconclusive", "contradicted",
                                          "reproduced", "differs", ""]
    assert ctx.verdicts[5][4].seeds_needed == 5 and ctx.verdicts[5][4].detectable == pytest.approx(1.5483, abs=1e-4)
    assert ctx.verdicts[0][4].lo == pytest.approx(5 - 4.302653 * math.sqrt(0.25 / 3), abs=1e-5)


def test_below_three_seeds_a_claim_shows_its_spread_but_gets_no_verdict():
    from repro.stats import one_seed

    with building(Request(scale="quick", seeds=1)) as ctx:  # one seed: the spread is over test images only, and says so
        line = claim("x", one_seed(5.0, 0.5), 1.2)
    assert line == "x: ours +5.00 ± 0.50 (test images only); paper +1.20 (no verdict)"
    assert ctx.verdicts[-1][4].word == "" and not ctx.verdicts[-1][4].settled


def test_a_claims_interval_counts_the_seeds_and_the_test_images_they_share():
    """Arm a scores [1,1,0,0], [1,1,1,0], [1,0,0,0] on 4 images over 3 seeds, arm b 0 everywhere:
    per-seed gaps 50, 75, 25 (s^2 = 625, seed part 625 / 3); image means 100, 66.7, 33.3, 0 give
    MS_image = 50000 / 9, the residual MS_residual = 12500 / 9, the image part (MS_image -
    MS_residual) / 12 = 3125 / 9; the half-width sqrt(4.3027^2 x 625 / 3 + 1.96^2 x 3125 / 9) = 72.05,
    wider than the plain t-interval over seeds (62.10)."""
    import numpy as np

    from repro.stats import gap_evidence

    g = gap_evidence(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]), np.zeros((3, 4)))
    assert g.gap == 50.0 and g.var_seed == pytest.approx(625.0) and g.var_image == pytest.approx(3125 / 9)
    assert g.halfwidth() == pytest.approx(72.0464, abs=1e-3) and 4.302653 * math.sqrt(625 / 3) == pytest.approx(62.10, abs=0.01)
    # detectable at 80 % power: sqrt((4.3027 + 1.0607)^2 x 625 / 3 + (1.96 + 0.8416)^2 x 3125 / 9) = 93.37; at 4
    # seeds sqrt((3.1824 + 0.9785)^2 x 625 / 4 + 2.8016^2 x 3125 / 9) = 73.69 <= 80: the paper's 80 needs 4 seeds
    with building(Request(scale="quick", seeds=3)):
        assert claim("x", g, 80.0) == ("x: ours +50.00 [-22.05, +122.05]; paper +80.00 (inconclusive, detectable gap "
                                       "93.37 at 80% power; the paper's 80.00 needs about 4 seeds)")


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
    import numpy as np

    from repro.render import to_display
    from repro.stats import gap_evidence, seeds_evidence

    df = pd.DataFrame({"row": ["a", "b", "c"], "mflops": [1.64, 0.83, 0.9], "mflops ±": [0.0, 0.001, 0.2]})
    assert to_display(df)["mflops"].tolist() == ["1.64", "0.83 ± <0.01", "0.90 ± 0.20"]
    with building(Request(scale="quick", seeds=3)) as ctx:
        # a number as evidence is a fixed quantity (a FLOPs count): no interval, judged by its sign
        assert claim("FLOPs cut", 49.25, 30.18) == "FLOPs cut: ours +49.25 (a fixed quantity); paper +30.18 (reproduced)"
        assert claim("FLOPs cut", -3.0, 30.18) == "FLOPs cut: ours -3.00 (a fixed quantity); paper +30.18 (contradicted)"
        assert claim("cost", 1.0, None) == "cost: ours +1.00 (a fixed quantity) (no direction claimed)"
        assert ctx.verdicts[0][4].detail.startswith("a fixed quantity") and ctx.verdicts[2][4].word == ""
        # an interval bound near 0 gets the decimals that keep it off 0: [+0.003, ...], never "[+0.00, ...]"
        # (per-seed 0.598, 1, 1.402: s = 0.402, half-width 4.302653 x 0.402 / sqrt(3) = 0.99862, lo = +0.00138)
        line = claim("tiny", seeds_evidence([0.598, 1.0, 1.402]), 3.0)
        assert line == "tiny: ours +1.000 [+0.001, +1.999]; paper +3.00 (reproduced, smaller than the paper's)"
        # two runs right on exactly the same images: a zero gap with a zero interval, short of the paper's
        x = np.array([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1]])
        assert claim("same runs", gap_evidence(x, x), 0.5) == ("same runs: ours +0.00 [+0.00, +0.00]; paper +0.50 "
                                                               "(smaller than claimed, the interval holds 0 and "
                                                               "excludes the paper's gap)")
        with pytest.raises(ValueError):
            claim("x", 1.0, None, sign=2)


def test_a_fixed_quantity_at_smoke_scale_gets_no_verdict_either():
    with building(Request(scale="smoke")) as ctx:
        line = claim("FLOPs cut", 49.25, 30.18)
    assert ctx.verdicts[-1][4].word == ""  # what the claims file and --seeds auto read
    assert "reproduced" not in line and "smoke" in line  # what the header shows must say the same


def test_a_two_seed_claim_does_not_say_its_spread_is_over_test_images_only():
    from repro.stats import seeds_evidence

    with building(Request(scale="quick", seeds=2)):
        line = claim("x", seeds_evidence([1.0, 2.0]), 1.2)  # 1.5 ± 12.706 x 0.7071 / sqrt(2) = ± 6.35: over seeds
    assert line.startswith("x: ours +1.50 ± 6.35") and line.endswith("(no verdict)")
    assert "no seed spread" not in line and "test images only" not in line


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
