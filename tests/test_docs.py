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


def test_the_index_calls_outputs_current_only_when_their_run_set_is_todays():
    """docs/gen.py's "protocol" column: the header's run-set digest against the artifact's quick runs
    in repro/papers/manifest.json today; a header without one (older outputs) counts as earlier."""
    import json

    from repro.render import run_set_digest

    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    runs = json.loads((ROOT / "repro" / "papers" / "manifest.json").read_text())["dgate"]["runs"]["fig4"]["quick"]
    today = f"run set: {run_set_digest(reversed(runs))} (digest of the seed-0 run folders)"  # order-free
    assert gen.protocol("dgate", "fig4", ["commit: abc1234", today]) == "current"
    assert gen.protocol("dgate", "table1", [today]) == "earlier"  # another artifact's runs
    assert gen.protocol("dgate", "fig4", [f"run set: {run_set_digest(runs[:-1])}"]) == "earlier"
    assert gen.protocol("dgate", "fig4", ["commit: abc1234"]) == "earlier"
    assert gen.CLAIM.match("gap: ours +1.00 ± <0.01; paper +0.50 (reproduced: the paper's sign, beyond the spread)")


def test_suite_time_counts_a_shared_run_once_and_lists_untrained_ones(tmp_path):
    """docs/suite_time.py: a target's time is the sum of its distinct runs' measured seconds; a run
    two artifacts of the target share is counted once, and a run without results.json is missing."""
    import json

    spec = importlib.util.spec_from_file_location("suite_time", ROOT / "docs" / "suite_time.py")
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    manifest = {"p": {"artifacts": [["t1", "", "table"], ["t2", "", "table"], ["f1", "", "figure"]],
                      "runs": {"t1": {"quick": ["p/a", "p/b"]}, "t2": {"quick": ["p/b", "p/c"]},
                               "f1": {"quick": ["p/a"]}}}}
    for run, secs in (("p/a", 60.0), ("p/b", 120.0), ("p/c", 30.0)):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "meta.json").write_text(json.dumps({"seconds": secs, "threads": 1}))
        if run != "p/c":
            (tmp_path / run / "results.json").write_text("{}")
    got = st.suite_time(manifest, tmp_path, "test")["targets"]
    assert got["all-tables"] == {"runs": 3, "trained": 2, "minutes": 3.0, "threads": [1], "missing": ["p/c"]}
    assert got["all-figures"] == {"runs": 1, "trained": 1, "minutes": 1.0, "threads": [1], "missing": []}


def test_the_index_links_each_artifact_to_its_paper_page_or_a_study_page_of_its_own():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.doc_page("imta", "table2") == ROOT / "docs" / "papers" / "imta.md"
    assert gen.doc_page("study", "exits") == ROOT / "docs" / "study-exits.md"
    assert gen.doc_page("study", "nothing") is None and gen.doc_page("nopaper", "table1") is None
