"""Progress of long work: the epoch bar on a terminal (ETA from the first batches, restarted each
epoch, spinners while evaluating and collecting outputs) and whole lines only when output is
redirected."""
from __future__ import annotations

import io
import sys

import pytest
import torch
from torch import nn

from repro import train
from repro.config import DataSpec, TrainSpec
from repro.data import load_data
from repro.train import _Display, _Progress, busy, fit, tracked


class _Clock:
    def __init__(self):
        self.t = 0.0

    def perf_counter(self) -> float:
        return self.t


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal (rich then draws on it)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    """Call it in the test (pytest puts its own sys.stderr back before the test body runs)."""
    fake = _Terminal()

    def install() -> _Terminal:
        monkeypatch.setattr(sys, "stderr", fake)
        monkeypatch.setattr(_Progress, "REDRAW_SECONDS", 0.0)  # every batch redraws: the test sees each one
        return fake
    yield install
    assert _Display.bar is None and _Display.tasks == 0  # everything it drew is gone


def _tiny(batch_size: int = 20):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    data = load_data("synthetic", DataSpec(val_size=200), batch_size=batch_size, seed=0)  # 1000 train images
    spec = TrainSpec(epochs=2, batch_size=batch_size, lr=0.05, milestones=())
    return model, data, spec


def _fit(model, step, data, spec, tmp_path, **kw):
    lines: list[str] = []
    fit(model, step, data.train, spec, ckpt_path=tmp_path / "ck.pt", phase="p", device=torch.device("cpu"),
        seed=0, log=lines.append, **kw)
    return lines


def _ce(m, x, y):
    out = m(x)
    return nn.functional.cross_entropy(out, y), out


def test_the_eta_comes_from_the_first_batches_and_restarts_each_epoch(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(train, "time", clock)
    p = _Progress("p", 100, lambda s: None, epochs=2)
    p.epoch_start(0)
    assert p.eta() is None  # nothing run yet
    clock.t = 5.0  # the first batch took 5 s (warm-up) ...
    p.batch(1)
    assert p.eta() == pytest.approx(5.0 * 99)  # ... the only figure there is
    clock.t = 7.0  # ... then 1 s per batch
    p.batch(3)
    assert p.eta() == pytest.approx(1.0 * 97)  # the warm-up batch is left out
    clock.t = 100.0
    p.epoch_start(1)  # a new epoch: count and timing start again
    assert p.eta() is None
    clock.t = 101.5
    p.batch(1)
    assert p.eta() == pytest.approx(1.5 * 99)
    p.close()


def test_with_output_redirected_a_fit_writes_one_line_per_epoch_and_no_carriage_return(tmp_path, capfd):
    assert not sys.stderr.isatty()
    model, data, spec = _tiny()
    evals = []
    lines = _fit(model, _ce, data, spec, tmp_path, eval_fn=lambda m: evals.append(1) or {"val_acc": 1.0})
    assert len(lines) == 2 and len(evals) == 2
    assert lines[0].startswith("phase=p epoch=1/2 ") and "phase_eta=" in lines[0]
    assert lines[1].startswith("phase=p epoch=2/2 ") and "phase_eta=" not in lines[1]  # nothing left
    assert all("\n" not in line and "\r" not in line for line in lines)
    with busy("collecting"):  # spinners draw nothing either
        list(tracked(data.val, "outputs: validation"))
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # rich wrote nothing: no bar, no '\r', no escape codes
    assert _Display.bar is None


def test_on_a_terminal_the_bar_moves_every_batch_and_restarts_each_epoch(tmp_path, terminal):
    tty = terminal()
    model, data, spec = _tiny()
    n = len(data.train)
    assert n == 50 > train.CHECK_EVERY
    seen = []  # (epoch title, batches shown as done, ETA shown) when each batch starts

    def step(m, x, y):
        (task,) = [t for t in _Display.bar.tasks if t.description.startswith("p ")]
        seen.append((task.description, int(task.completed), task.fields["eta"]))
        return _ce(m, x, y)

    def evaluate(m):
        spinners = [t.description for t in _Display.bar.tasks]
        assert spinners == ["p 1/2", "p 1/2: evaluating"] or spinners == ["p 2/2", "p 2/2: evaluating"]
        return {}

    lines = _fit(model, step, data, spec, tmp_path, eval_fn=evaluate)
    assert len(lines) == 2
    first, second = seen[:n], seen[n:]
    assert [s[1] for s in first] == list(range(n)) == [s[1] for s in second]  # from batch 1 on, reset at 2
    assert {s[0] for s in first} == {"p 1/2"} and {s[0] for s in second} == {"p 2/2"}
    assert first[0][2] == second[0][2] == "ETA -:--:--"  # not 0:00:00 at an epoch's start
    assert all(s[2].startswith("ETA ") and s[2] != "ETA -:--:--" for s in first[1:] + second[1:])
    assert "\r" in tty.getvalue() or "\x1b" in tty.getvalue()  # rich drew on the terminal


def test_on_a_terminal_collecting_outputs_shows_a_bar_over_its_batches(terminal):
    terminal()
    data = load_data("synthetic", DataSpec(val_size=200), batch_size=20, seed=0)
    shown = []
    for _ in tracked(data.val, "outputs: validation"):
        (task,) = _Display.bar.tasks
        shown.append((task.description, task.total, int(task.completed)))
    assert shown == [("outputs: validation", 1, 0)]  # 200 images at the evaluation batch of 500
    with busy("evaluating"):
        (task,) = _Display.bar.tasks
        assert task.description == "evaluating" and task.total is None  # a pulsing bar, elapsed time
    assert _Display.bar is None
