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
    from repro.render import building

    table = _table(claims=[Claim("gain at E-1", 2.0, 0.5, 0.69)])
    for scale, verdict in (("quick", "reproduced: the paper's sign, beyond the spread, at 1 seed: the spread is over "
                                     "test images, not seeds"),
                           ("smoke", "smoke scale: a pipeline check, no verdict")):
        request = Request(scale=scale)
        with building(request):
            (md, *_), = [write_outputs(table, "imta", "table2", request, _settings(tmp_path, scale))]
        assert f"- gain at E-1: ours +2.00 ± 0.50; paper +0.69 ({verdict})" in md.read_text()


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


def test_gap_spread_one_seed_is_the_paired_bootstrap_of_the_per_sample_difference():
    a = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1, 0, 1] * 10, dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 1, 0, 0, 1, 0, 1] * 10, dtype=torch.bool)
    gap, spread = gap_with_spread([a], [b])
    assert gap == pytest.approx(20.0)  # 7/10 - 5/10
    lo, hi = bootstrap_ci(a.double() - b.double())
    assert spread == pytest.approx((hi - lo) / 2) and 0 < spread < 20
    # pairing matters: the same accuracies, unpaired independent half-widths would be wider
    la, ha = bootstrap_ci(a)
    lb, hb = bootstrap_ci(b)
    assert spread < math.hypot((ha - la) / 2, (hb - lb) / 2)


def test_gap_spread_over_seeds_is_the_t_interval_of_the_per_seed_gaps():
    ones, zeros = torch.ones(10, dtype=torch.bool), torch.zeros(10, dtype=torch.bool)
    half = torch.tensor([1] * 5 + [0] * 5, dtype=torch.bool)
    gap, spread = gap_with_spread([ones, half], [half, half])  # per-seed gaps 50 and 0
    assert gap == pytest.approx(25.0)
    assert spread == pytest.approx(12.706 * math.sqrt(((50 - 25) ** 2 + (0 - 25) ** 2) / 1) / math.sqrt(2))
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
