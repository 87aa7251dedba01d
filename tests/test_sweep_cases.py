"""The cases of issue 25's hostile sweep (bench/sweep-issue25.md) that ended in a traceback, silently
wrong output or a messy message, each a row: one `error:` line, exit 2, nothing trained."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_fmnist

ROOT = Path(__file__).resolve().parents[1]


def _repro(args: list[str], tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "repro", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "REPRO_THREADS": "1", "REPRO_JOBS": "1", **(env or {})})


def _one_line(p: subprocess.CompletedProcess, *words: str, code: int = 2) -> None:
    err = p.stderr.strip()
    assert p.returncode == code, p.stderr
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, err


SMOKE = ["--scale", "smoke"]


@pytest.mark.parametrize("env, words", [
    ({"REPRO_THREADS": "99999"}, ["REPRO_THREADS='99999'", "1 to 1024"]),
    ({"REPRO_THREADS": "two"}, ["REPRO_THREADS='two'"]),
    ({"REPRO_JOBS": "banana"}, ["REPRO_JOBS='banana'", "or auto"]),
], ids=["threads-huge", "threads-word", "jobs-word"])
def test_environment_numbers_are_checked_first(env, words, tmp_path):
    _one_line(_repro(["imta", "fig7", *SMOKE, "--runs-dir", str(tmp_path / "runs")], tmp_path, env), *words)
    assert not (tmp_path / "runs").exists()


@needs_fmnist
def test_a_last_batch_of_one_image_is_refused_before_training(tmp_path):
    p = _repro(["imta", "fig7", *SMOKE, "--batch-size", "3", "--train-limit", "4", "--runs-dir", str(tmp_path / "runs")],
               tmp_path)
    _one_line(p, "end on a batch of one", "--train-limit or --batch-size")
    assert not (tmp_path / "runs").exists()
    dry = _repro(["imta", "fig7", *SMOKE, "--batch-size", "3", "--train-limit", "4", "--dry-run"], tmp_path)
    _one_line(dry, "end on a batch of one")


@needs_fmnist
def test_a_file_where_the_run_store_needs_a_folder(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "imta").write_text("not a folder")
    _one_line(_repro(["imta", "fig7", *SMOKE, "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path)],
                     tmp_path), "is a file where a folder is needed", "--runs-dir")


def test_a_folder_given_as_a_checkpoint(tmp_path):
    _one_line(_repro(["dgate", "table1", *SMOKE, "--set", f"backbone_checkpoint={tmp_path}"], tmp_path),
              "is a folder, not a checkpoint file")


def test_a_huge_grid_reads_as_a_number(tmp_path):
    p = _repro(["dgate", "table1", *SMOKE, "--set", "grid_points=99999999999999999999999"], tmp_path)
    _one_line(p, "above its bound 200")
    assert "e+" in p.stderr and len(p.stderr) < 300  # 1e+69 combinations, not seventy digits


# --------------------------------------------------------------------------- repro claims on broken files


def _claims_dir(tmp_path: Path, text: str | bytes) -> Path:
    d = tmp_path / "tables" / "quick"
    d.mkdir(parents=True)
    f = d / "imta_table2.claims.csv"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return f


GOOD = ("claim,headline,kind,seeds,per_seed_gaps,gap,lo,hi,level,paper,direction,verdict,detail,detectable_gap,"
        "seeds_needed,line\n"
        "x,True,images,3,1;2;3,2.0,0.5,3.5,0.95,1.0,1,reproduced,,1.0,,x\n")


@pytest.mark.parametrize("content, words", [
    ("", ["not a claims file"]),
    (bytes(range(256)) * 8, ["claims.csv: "]),
    ("claim,gap\nx,1\n", ["no headline"]),
    (GOOD.replace(",3,1;2;3,", ",abc,1;2;3,"), ["seeds column holds 'abc'"]),
    (GOOD.replace(",2.0,0.5,", ",nan,0.5,"), ["gap column holds"]),
], ids=["empty", "binary", "columns", "seeds-word", "gap-nan"])
def test_a_broken_claims_file_is_one_line(content, words, tmp_path):
    f = _claims_dir(tmp_path, content)
    _one_line(_repro(["claims", "--dir", str(tmp_path)], tmp_path), str(f), *words)


@pytest.mark.parametrize("evidence", ["garbage", "huge-count"])
def test_a_broken_evidence_file_is_one_line(evidence, tmp_path):
    f = _claims_dir(tmp_path, GOOD)
    npz = f.with_name("imta_table2.evidence.npz")
    if evidence == "garbage":
        npz.write_bytes(b"PK\x03\x04 not a zip at all")
    else:  # a packed array that claims 10^12 images: refused, not allocated
        from repro import stats

        good = stats.evidence_bytes([("x", stats.gap_evidence(np.ones((3, 16)), np.zeros((3, 16))))])
        npz.write_bytes(good)
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
        for k in arrays:
            if k.endswith(".n"):
                arrays[k] = np.int64(10 ** 12)
        np.savez(npz.with_suffix(""), **{k.removesuffix(".npy"): v for k, v in arrays.items()})
    _one_line(_repro(["claims", "--dir", str(tmp_path), "--recompute"], tmp_path), str(npz), "not an evidence file")


def test_recompute_without_an_evidence_file_says_nothing_was_redone(tmp_path):
    _claims_dir(tmp_path, GOOD)
    p = _repro(["claims", "--dir", str(tmp_path), "--recompute", "--format", "csv"], tmp_path)
    assert p.returncode == 0, p.stderr
    header, row = p.stdout.strip().splitlines()[:2]
    assert header.endswith(",changed") and row.endswith(",")  # empty: not redone, not "False"


@pytest.mark.parametrize("content, words", [("garbage", "not a loadable checkpoint"), ("list", "not a state dict")])
def test_a_checkpoint_that_is_not_a_state_dict_is_refused_before_any_run_folder(content, words, tmp_path):
    import torch

    ckpt = tmp_path / "backbone.pt"
    if content == "garbage":
        ckpt.write_bytes(bytes(range(200)))
    else:
        torch.save({"model": [1, 2, 3]}, ckpt)
    p = _repro(["dgate", "table1", *SMOKE, "--set", f"backbone_checkpoint={ckpt}", "--runs-dir", str(tmp_path / "runs")],
               tmp_path)
    _one_line(p, words)
    assert not (tmp_path / "runs").exists()
