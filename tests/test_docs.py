"""The docs stay true: the README's quick-start commands parse, and docs/gen.py's blocks are current."""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from repro.cli import main

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    """Every ``repro …`` line of the fenced code blocks in the README's "Quick start" section."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Quick start' section"
    commands, fenced = [], False
    for line in m.group(1).splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        line = line.strip().removeprefix("$ ")
        if fenced and line.startswith("repro "):
            commands.append(line)
    return commands


def test_the_quick_start_shows_commands():
    commands = quick_start_commands()
    assert {"repro list", "repro imta table2 --dry-run", "repro imta table2"} <= {
        " ".join(shlex.split(c, comments=True)) for c in commands}, commands


@pytest.mark.parametrize("command", quick_start_commands())
def test_quick_start_command_parses(command, tmp_path, capsys):
    argv = shlex.split(command, comments=True)[1:]
    argv += ["--runs-dir", str(tmp_path / "runs")]
    if argv[0] != "list":
        argv += ["--out-dir", str(tmp_path)] + ([] if "--dry-run" in argv else ["--dry-run"])
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    err = capsys.readouterr().err
    assert code == 0, f"repro {' '.join(argv)} exited {code}: {err}"
    assert not (tmp_path / "runs").exists() or argv[0] == "list"  # a dry run trains nothing


def test_generated_docs_are_up_to_date(capsys):
    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    code = gen.main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_the_index_calls_outputs_stale_when_the_manifest_at_their_commit_listed_other_runs(monkeypatch):
    """docs/gen.py's "protocol" column: outputs are current only while the artifact's quick runs in
    repro/papers/manifest.json at the commit their header names are today's."""
    import json

    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    today = json.loads((ROOT / "repro" / "papers" / "manifest.json").read_text())
    old = json.loads(json.dumps(today))
    old["dgate"]["runs"]["fig4"]["quick"] = ["dgate/resnet101-backbone-s0-0000000000"]
    shown = {"abc1234": json.dumps(today), "def5678": json.dumps(old)}
    monkeypatch.setattr(gen, "_git", lambda *a: shown.get(a[1].split(":")[0]) if a[0] == "show" else None)
    assert not gen.stale("dgate", "fig4", ["commit: abc1234"])
    assert gen.stale("dgate", "fig4", ["commit: def5678"])
    assert not gen.stale("dgate", "table1", ["commit: def5678"])  # its runs did not change
    # a dirty or unreachable commit (a shallow clone): the header's training line decides, else unknown
    assert gen.protocol("dgate", "fig4", ["commit: def5678+dirty"]) == "unknown"
    assert gen.protocol("dgate", "fig4", ["commit: 0badc0de"]) == "unknown"
    line = "training: " + gen.current_training("dgate", "fig4")
    assert gen.protocol("dgate", "fig4", ["commit: 0badc0de", line]) == "current"
    assert gen.protocol("dgate", "fig4", ["commit: 0badc0de", "training: 10 images; epochs: backbone 1"]) == "earlier"
    assert gen.CLAIM.match("gap: ours +1.00 ± <0.01; paper +0.50 (reproduced: the paper's sign, beyond the spread)")
