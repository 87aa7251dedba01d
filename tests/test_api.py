"""The contract a paper module builds against (repro.api) and the core that writes what a build
returns (repro.render.write_outputs): named runs, Table/Figure data, one spread rule for gaps,
one model registry, ``--dry-run --show-config``."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

from repro.api import Claim, Figure, Request, Runs, Series, Settings, Table
from repro.config import ConfigError
from repro.exits import bootstrap_ci, gap_with_spread
from repro.render import read_table_csv, write_outputs
from repro.runner import named_runs


def _settings(tmp_path, scale="quick") -> Settings:
    return Settings(out_dir=tmp_path, scale=scale)


def _table(**kw) -> Table:
    ours = [{"row": "baseline", "column": "E-1", "value": 80.0, "spread": 1.0},
            {"row": "ge+isc+ofa", "column": "E-1", "value": 82.0, "spread": 1.0}]
    return Table("Top-1 (%) at every exit (CIFAR-100)", "fashion-mnist", "msdnet tiny", "MMACs", ours,
                 ["baseline", "ge+isc+ofa"], ["E-1"], **kw)


def test_a_table_gets_the_papers_numbers_from_its_reference_csv(tmp_path):
    from repro.reference_data import paper_value
    from repro.render import building

    request = Request(scale="quick")
    with building(request):
        paths = write_outputs(_table(), "imta", "table2", request, _settings(tmp_path))
    df = read_table_csv(tmp_path / "tables" / "quick" / "imta_table2.csv")
    assert df["E-1 paper"].tolist() == [paper_value("imta", "table2", "baseline", "E-1"),
                                        paper_value("imta", "table2", "ge+isc+ofa", "E-1")]
    assert not any(c.endswith("Δ") for c in df.columns)  # Fashion-MNIST is not the paper's setting
    md = paths[0].read_text()
    assert md.startswith("# imta table2: Top-1 (%) at every exit (paper: CIFAR-100) — ours: fashion-mnist, quick")
    assert "- model: msdnet tiny" in md and "- cost: MMACs" in md


def test_claims_are_rendered_with_their_verdict_and_none_at_smoke(tmp_path):
    """Per-seed gains 2, 2.5, 1.5: 2 ± 4.3027 x 0.5 / sqrt(3) = [+0.76, +3.24], above the paper's 0.69:
    reproduced at 3 seeds (quick), a pipeline check at smoke, shown but not judged at one seed."""
    from repro.render import building
    from repro.stats import one_seed, seeds_evidence

    three = _table(claims=[Claim("gain at E-1", seeds_evidence([2.0, 2.5, 1.5]), 0.69, headline=True)])
    one = _table(claims=[Claim("gain at E-1", one_seed(2.0, 0.5), 0.69)])
    for scale, seeds, table, line in (
            ("quick", 3, three, "gain at E-1: ours +2.00 [+0.76, +3.24]; paper +0.69 (reproduced, larger than the paper's)"),
            ("quick", 1, one, "gain at E-1: ours +2.00 ± 0.50 (test images only); paper +0.69 (no verdict)"),
            ("smoke", 3, three, "gain at E-1: ours +2.00; paper +0.69 (smoke scale: a pipeline check, no verdict)")):
        request = Request(scale=scale, seeds=seeds)
        with building(request):
            paths = write_outputs(table, "imta", "table2", request, _settings(tmp_path / f"{scale}{seeds}", scale))
        assert sorted(p.name for p in paths) == ["imta_table2.claims.csv", "imta_table2.csv", "imta_table2.md",
                                                 "imta_table2.tex"]  # no per-image evidence: no evidence file
        md = next(p for p in paths if p.suffix == ".md").read_text()
        assert f"- {line}" in md, md
        assert ("no claim gets a verdict below 3 seeds" in md) == (seeds < 3)
        claims = pd.read_csv(next(p for p in paths if p.name.endswith(".claims.csv")), comment="#")
        assert claims["line"].tolist() == [line]
        assert claims["verdict"].tolist() == ["reproduced" if (scale, seeds) == ("quick", 3) else "no verdict"]


def test_a_named_output_gets_its_own_file_stem_and_a_figure_its_png_pdf_csv(tmp_path):
    from repro.render import building

    fig = Figure("Accuracy vs cost", "fashion-mnist", "m", "MMACs", [Series("ours", [1, 2], [50, 60], [1, 1])],
                 "cost", "top-1", pd.DataFrame({"x": [1, 2]}), name="msdnet")
    request = Request(scale="smoke")
    with building(request):
        paths = write_outputs([fig, _table(name="wide")], "study", "exits", request, _settings(tmp_path, "smoke"))
    assert sorted(p.name for p in paths) == sorted(["study_exits_msdnet.png", "study_exits_msdnet.pdf",
                                                    "study_exits_msdnet.csv", "study_exits_wide.md",
                                                    "study_exits_wide.csv", "study_exits_wide.tex"])
    assert "# dataset: fashion-mnist" in (tmp_path / "figures" / "smoke" / "study_exits_msdnet.csv").read_text()


def test_a_build_returning_anything_else_is_refused(tmp_path):
    with pytest.raises(TypeError, match="returns Table or Figure"):
        write_outputs(["not a table"], "imta", "table2", Request(), _settings(tmp_path))


def test_gap_spread_one_seed_is_over_the_paired_per_sample_difference():
    """One seed: the half-width is z x the standard error of the per-sample differences (the test
    images only): 20 of 100 differences are 1, the rest 0, so 1.96 x 100 x sqrt(0.2 x 0.8 / 99) = 7.879."""
    a = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1, 0, 1] * 10, dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 1, 0, 0, 1, 0, 1] * 10, dtype=torch.bool)
    g = gap_with_spread([a], [b])
    gap, spread = g  # still unpacks as (gap, half-width) for the tables
    assert gap == pytest.approx(20.0) and g.seeds == 1  # 7/10 - 5/10
    assert spread == pytest.approx(1.959964 * 100 * math.sqrt(0.2 * 0.8 / 99), abs=1e-4)
    lo, hi = bootstrap_ci(a.double() - b.double())  # the bootstrap of the same differences agrees roughly
    assert abs(spread - (hi - lo) / 2) < 1.0
    # pairing matters: the same accuracies, unpaired independent half-widths would be wider
    la, ha = bootstrap_ci(a)
    lb, hb = bootstrap_ci(b)
    assert spread < math.hypot((ha - la) / 2, (hb - lb) / 2)


def test_gap_spread_over_seeds_counts_the_seeds_and_the_test_images_they_share():
    """Seed 0: a right on all 10, b on the first 5 (gap 50); seed 1: a and b agree (gap 0).  Per-seed
    gaps 50, 0: s^2 = 1250, the seed part 1250 / 2; the image means 0 (x5) and 50 (x5) leave MS_image =
    MS_residual = 12500 / 9, so no image part: the half-width is t(0.975, 1) x sqrt(625) = 12.7062 x 25.
    Three seeds with seed 2 = seed 0 add an image part: see tests/test_render.py."""
    ones, zeros = torch.ones(10, dtype=torch.bool), torch.zeros(10, dtype=torch.bool)
    half = torch.tensor([1] * 5 + [0] * 5, dtype=torch.bool)
    g = gap_with_spread([ones, half], [half, half], arms=("a", ["b1", "b2"]))  # per-seed gaps 50 and 0
    gap, spread = g
    assert gap == pytest.approx(25.0) and g.per_seed == (50.0, 0.0)
    assert g.var_image == 0.0 and spread == pytest.approx(12.7062 * 25, abs=0.01)
    assert g.arms == (("a",), ("b1", "b2"))  # each arm as the names of its runs, for outlying seeds
    assert g.a.shape == (2, 10) and g.b.shape == (2, 10)  # the evidence itself, for the evidence file
    with pytest.raises(ValueError, match="same seeds"):
        gap_with_spread([ones, half], [zeros])


def test_runs_are_looked_up_by_the_names_the_artifact_gave_them():
    from repro.papers import imta

    request = Request(scale="smoke")
    named = named_runs(imta.PAPER.artifacts["table2"], request)
    assert list(named) == ["baseline", "ge", "isc", "ofa", "ge+isc+ofa"]
    runs = Runs.fixed({"baseline": ["r0"]}, named, request)
    assert runs["baseline"] == ["r0"] and runs.config("isc") is named["isc"]
    with pytest.raises(KeyError, match="this artifact's runs are"):
        Runs(request, Settings(), named).config("nope")


def test_one_model_registry():
    from repro.models import create_model, list_models

    assert {"msdnet_cifar_5exit", "msdnet_imagenet"} <= set(list_models())
    net = create_model("msdnet_cifar_4exit", num_classes=10, in_channels=1, nChannels=4, growthRate=2,
                       head_channels=8)
    assert net.cfg.nBlocks == 4
    with pytest.raises(ConfigError, match="unknown model 'nope'; choose one of: .*msdnet_cifar_5exit"):
        create_model("nope")


def test_show_config_prints_every_planned_runs_resolved_config_as_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "repro", "imta", "fig7", "--scale", "smoke", "--epochs", "3",
                          "--dry-run", "--show-config", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)["imta fig7"]
    assert [r["name"] for r in got] == ["baseline", "isc"]
    assert all(r["state"] == "missing" and r["config"]["train"]["epochs"] == 3 for r in got)
    assert got[1]["config"]["parent"]["name"] == got[0]["config"]["name"]
    bad = subprocess.run([sys.executable, "-m", "repro", "imta", "fig7", "--scale", "smoke", "--show-config",
                          "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--show-config goes with --dry-run" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_column_the_paper_gives_nothing_for_gets_no_paper_column(tmp_path):
    from repro.render import building

    ours = [{"row": "baseline", "column": c, "value": 80.0} for c in ("E-1", "exit1_pct")]
    table = Table("t", "fashion-mnist", "m", "MMACs", ours, ["baseline"], ["E-1", "exit1_pct"])
    request = Request(scale="quick")
    with building(request):
        write_outputs(table, "imta", "table2", request, _settings(tmp_path))
    cols = list(read_table_csv(tmp_path / "tables" / "quick" / "imta_table2.csv").columns)
    assert "E-1 paper" in cols and "exit1_pct" in cols and "exit1_pct paper" not in cols


def test_rate_spread_is_the_bootstrap_at_one_seed_and_the_t_interval_over_seeds():
    from repro.exits import rate_with_spread

    c = torch.tensor([1, 0, 1, 1] * 25, dtype=torch.bool)
    lo, hi = bootstrap_ci(c)
    assert rate_with_spread([c]) == pytest.approx((75.0, (hi - lo) / 2))
    assert rate_with_spread([c, torch.ones(100, dtype=torch.bool)]) == pytest.approx((87.5, 12.706 * 12.5 * 2 ** 0.5 / 2 ** 0.5))


def test_no_paper_module_writes_files_or_imports_the_runner():
    """The core writes every file; a paper module returns data (and never imports the runner)."""
    import ast
    from pathlib import Path

    import repro.papers

    banned_calls = {"write_table", "write_figure", "save_figure", "write_csv", "write_text", "to_csv", "savefig",
                    "Meta", "atomic_write_text"}
    for path in sorted(Path(repro.papers.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "repro.runner", f"{path.name} imports repro.runner"
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                assert name not in banned_calls, f"{path.name}:{node.lineno} calls {name}"
