"""The benchmarks cannot rot: ``python -m benchmarks --quick`` runs every item end to end (about
a minute or two on 2 cores), and every item's networks build (seconds).  No timings are asserted."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.harness import ITEMS

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_network_builds():
    """What broke `make bench` once (a renamed import in item 4) fails here in seconds."""
    from benchmarks import item4_early_exit, item7_quick

    assert [n for n, *_ in item4_early_exit.early_exit_models()]
    nets = item7_quick.quick_networks()
    assert {"IMTA", "GlanceNets", "d-gates", "bias loss", "DCP"} <= {n.paper for n in nets}


@pytest.mark.slow
def test_benchmarks_quick_runs_every_item(tmp_path):
    out = tmp_path / "results.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(out)
    assert set(df["item"].astype(str)) == set(ITEMS)
    assert df["quick"].all() and df["cpu"].notna().all()
