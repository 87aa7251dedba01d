"""The smoke run store the suite shares with `make smoke` (REPRO_SMOKE_RUNS, tests/conftest.py):
a fixture copies the finished runs it plans from it, adds the runs it trained back, and never
changes a run the shared store holds. Synthetic run folders: nothing trains here."""
from __future__ import annotations

import json

from conftest import SMOKE_RUNS_ENV, seed_smoke_runs, share_smoke_runs, smoke_request
from repro.artifacts import get_paper
from repro.runner import plan
from repro.store import Run

PAPER, ARTIFACT = "imta", "table2"


def _runs(root):
    return [Run(root, c) for c in plan(get_paper(PAPER).artifact(ARTIFACT), smoke_request())]


def _finish(run: Run, text: str = "{}") -> None:
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "config.json").write_text(json.dumps(run.cfg.to_dict()))
    run.results_path.write_text(text)


def test_without_the_variable_nothing_is_copied_or_added(tmp_path, monkeypatch):
    monkeypatch.delenv(SMOKE_RUNS_ENV, raising=False)
    mine = _runs(tmp_path / "mine")
    _finish(mine[0])
    assert seed_smoke_runs(tmp_path / "mine", PAPER, ARTIFACT) == 0
    assert share_smoke_runs(tmp_path / "mine") == 0


def test_finished_runs_are_copied_in_and_new_ones_added_back_never_over_the_shared_ones(tmp_path, monkeypatch):
    shared_root, mine_root = tmp_path / "shared", tmp_path / "mine"
    monkeypatch.setenv(SMOKE_RUNS_ENV, str(shared_root))
    shared, mine = _runs(shared_root), _runs(mine_root)
    assert len(shared) >= 3
    _finish(shared[0], '{"from": "shared"}')
    shared[1].dir.mkdir(parents=True)  # a partial run (no results.json): not copied
    (shared[1].dir / "lock").write_text("")
    (shared_root / "imta" / "unplanned-s0-0123456789").mkdir(parents=True)  # another artifact's: not copied
    (shared_root / "imta" / "unplanned-s0-0123456789" / "results.json").write_text("{}")

    assert seed_smoke_runs(mine_root, PAPER, ARTIFACT) == 1
    assert mine[0].results_path.read_text() == '{"from": "shared"}' and not mine[1].dir.exists()
    assert sorted(p.name for p in (mine_root / "imta").iterdir()) == [mine[0].dir.name]
    assert seed_smoke_runs(mine_root, PAPER, ARTIFACT) == 0  # what is there stays as it is

    # the test trains the rest, and changes the copy it was given
    for run in mine[1:]:
        _finish(run, '{"from": "mine"}')
    mine[0].results_path.write_text('{"changed": "by a test"}')
    assert share_smoke_runs(mine_root) == len(mine) - 2  # not the partial one's place, not the copied one
    assert shared[0].results_path.read_text() == '{"from": "shared"}'
    assert not shared[1].done and (shared[1].dir / "lock").exists()
    for run in shared[2:]:
        assert run.results_path.read_text() == '{"from": "mine"}'
    assert not [p for p in (shared_root / "imta").iterdir() if p.name.startswith(".")]  # no temporaries left
    assert share_smoke_runs(mine_root) == 0


def test_a_store_is_not_copied_into_itself(tmp_path, monkeypatch):
    monkeypatch.setenv(SMOKE_RUNS_ENV, str(tmp_path))
    _finish(_runs(tmp_path)[0])
    assert seed_smoke_runs(tmp_path, PAPER, ARTIFACT) == 0 and share_smoke_runs(tmp_path) == 0
