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


# ---------------------------------------------------------------------------- claims in the index (issue 26)


def _gen():
    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


class _Committed:
    """docs/gen.py's view of the last commit, given as {path: text}."""

    def __init__(self, files: dict):
        self.files, self.git = files, True

    def has(self, path: str) -> bool:
        return path in self.files

    def text(self, path: str) -> str:
        return self.files[path]


def _claims_csv() -> str:
    """A claims file as repro.render writes it: five claims at 3 seeds, one per verdict, the first a headline."""
    from repro.render import building, claim, claims_frame
    from repro.runner import Request
    from repro.stats import seeds_evidence

    five, zero = seeds_evidence([4.5, 5.0, 5.5]), seeds_evidence([-0.5, 0.5, 0.0])
    with building(Request(scale="quick", seeds=3)) as ctx:
        claim("gain at E-1", five, 1.2, headline=True)  # [+3.76, +6.24]: reproduced, larger than the paper's
        claim("gain at E-2", five, -1.2)                # contradicted
        claim("gain at E-3", zero, 3.0)                 # [-1.24, +1.24]: smaller than claimed
        claim("gain at E-4", zero, 1.0)                 # inconclusive, 5 seeds for the paper's 1.00
        claim("FLOPs cut", 49.25, 30.18)                # a fixed quantity: reproduced
        frame = claims_frame(ctx.verdicts)
    return "# imta table2: a heading\n# seeds: 3 seeds (...)\n" + frame.to_csv(index=False)


def _files(with_claims: bool) -> dict:
    md_new = ("# imta table2: Top-1\n\n- seeds: 3 seeds (claims: ...)\n- wall time: 1.0 min\n"
              "- gain at E-1: ours +5.00 [+3.76, +6.24]; paper +1.20 (reproduced, larger than the paper's)\n\n| row |\n|---|\n")
    md_old = ("# imta fig4: Budgeted batch\n\n- seeds: 1 seed (± is the 95 % bootstrap interval)\n"
              "- first gap: ours +0.20 ± 1.01; paper +1.81 (reproduced: the paper's sign, beyond the spread)\n"
              "- second gap: ours −0.50 ± 0.10 (contradicted: the opposite sign, beyond the spread, at 1 seed: the "
              "spread is over test images, not seeds)\n"
              "- third gap: ours +0.10 ± <0.01; paper +0.50 (unresolved: within the spread)\n\n| row |\n|---|\n")
    files = {"tables/quick/imta_table2.md": md_new if with_claims else md_old.replace("imta fig4", "imta table2"),
             "tables/quick/imta_table2.csv": "", "tables/quick/imta_fig4.md": md_old}
    if with_claims:
        files["tables/quick/imta_table2.claims.csv"] = _claims_csv()
        files["tables/quick/imta_table2.evidence.npz"] = ""
    return files


MAN = {"imta": {"artifacts": [["table2", "", "table"], ["fig4", "", "figure"], ["fig7", "", "figure"]]}}


def test_the_index_counts_every_claims_verdict_from_the_claims_files():
    gen = _gen()
    block = gen.index_block(MAN, _Committed(_files(True)))
    lines = block.splitlines()
    counts = next(line for line in lines if line.startswith("**`imta`**: "))
    assert counts == ("**`imta`**: reproduced 2 · contradicted 1 · smaller than claimed 1 · inconclusive 1 · "
                      "no verdict 0 · old rule (before the verdicts of issue 26): not re-judged: 3")  # fig4's three
    rows = [line for line in lines if line.startswith("| `table2` |")]
    assert rows == [
        "| `table2` | **gain at E-1** | +5.00 [+3.76, +6.24] | +1.20 | 3 | reproduced (larger than the paper's) |",
        "| `table2` | gain at E-2 | +5.00 [+3.76, +6.24] | -1.20 | 3 | contradicted |",
        "| `table2` | gain at E-3 | +0.00 [-1.24, +1.24] | +3.00 | 3 | smaller than claimed (the interval holds 0 and "
        "excludes the paper's gap) |",
        "| `table2` | gain at E-4 | +0.00 [-1.24, +1.24] | +1.00 | 3 | inconclusive (detectable gap 1.55 at 80% power; "
        "the paper's 1.00 needs about 5 seeds) |",
        "| `table2` | FLOPs cut | +49.25 (a fixed quantity) | +30.18 | — | reproduced (a fixed quantity (a count, not a "
        "measurement)) |"]
    summary = next(line for line in lines if line.startswith("| [`imta table2`]"))
    assert "| 2 reproduced, 1 contradicted, 1 smaller than claimed, 1 inconclusive |" in summary
    assert "imta_table2.claims.csv" in summary and "imta_table2.evidence.npz" in summary
    assert "Not committed yet (1): `imta fig7`." in block


def test_outputs_without_a_claims_file_are_listed_under_the_old_rule_with_no_verdict_word():
    gen = _gen()
    block = gen.index_block(MAN, _Committed(_files(False)))
    old = [line for line in block.splitlines() if line.startswith("| `fig4` |")]
    # every claim, not only the first, each with its numbers and no verdict
    assert len([line for line in block.splitlines() if line.startswith("| `table2` |")]) == 3
    assert old == [
        "| `fig4` | first gap | +0.20 ± 1.01 | +1.81 | 1 | old rule (before the verdicts of issue 26): not re-judged |",
        "| `fig4` | second gap | -0.50 ± 0.10 | — | 1 | old rule (before the verdicts of issue 26): not re-judged |",
        "| `fig4` | third gap | +0.10 ± <0.01 | +0.50 | 1 | old rule (before the verdicts of issue 26): not re-judged |"]
    listed = "\n".join(line for line in block.splitlines() if not line.startswith("**`imta`**: "))  # less the counts
    for word in ("reproduced", "contradicted", "unresolved", "beyond the spread", "inconclusive"):
        assert word not in listed, word
    assert "reproduced 0 · contradicted 0 · smaller than claimed 0 · inconclusive 0 · no verdict 0 · old rule (before " \
           "the verdicts of issue 26): not re-judged: 6" in block
    # the paper page's results section: the old header's claim lines keep their numbers, lose their verdicts
    page = gen.results_block("imta", MAN, _Committed(_files(False)))
    assert "- first gap: ours +0.20 ± 1.01; paper +1.81 (old rule (before the verdicts of issue 26): not re-judged)" \
        in page
    assert "- seeds: 1 seed (± is the 95 % bootstrap interval)" in page  # other header lines as they are
    assert "reproduced" not in page and "contradicted" not in page


def test_a_claims_files_rows_are_read_back_with_their_numbers():
    gen = _gen()
    rows = gen.read_claims(_claims_csv())
    assert [r["claim"] for r in rows] == ["gain at E-1", "gain at E-2", "gain at E-3", "gain at E-4", "FLOPs cut"]
    assert rows[0]["headline"] and not rows[1]["headline"] and rows[0]["seeds"] == 3
    assert rows[0]["lo"] == pytest.approx(5 - 4.302653 * (0.25 / 3) ** 0.5, abs=1e-5)
    assert gen.ours_text({**rows[0], "lo": 0.001, "hi": 1.9, "gap": 1.0, "paper": 3.0}) == "+1.000 [+0.001, +1.900]"
    one = {**rows[3], "verdict": "no verdict", "seeds": 1, "kind": "images"}
    assert gen.verdict_text(one) == "no verdict (1 seed: below 3)"


def test_the_claims_page_lists_headline_claims_with_their_evidence_and_convergence():
    gen = _gen()
    man = {"imta": {"title": "IMTA", "headline": ["table2", "fig4"], "artifacts": MAN["imta"]["artifacts"]}}
    files = _files(True)
    conv = "- convergence: passed (every baseline's validation top-1 moves less than 0.3 points ...): claims get verdicts\n"
    files["tables/quick/imta_table2.md"] = files["tables/quick/imta_table2.md"].replace("- wall time", conv + "- wall time")
    block = gen.claims_block(man, _Committed(files))
    rows = [line for line in block.splitlines() if line.startswith("| `imta")]
    # only the headline claim of table2, with the paper's gap, ours, seeds, detectable gap, verdict, convergence
    assert rows[0] == ("| `imta table2` | gain at E-1 | +1.20 | +5.00 [+3.76, +6.24] | 3 | 1.55 | reproduced (larger "
                       "than the paper's) | passed |")
    # fig4 was rendered before the converged protocols (no claims file, no convergence line): said so
    assert rows[1].startswith("| `imta fig4` | not rendered on the converged protocol yet")
    assert len(rows) == 2
    # an unconverged header reads "not converged"
    files["tables/quick/imta_table2.md"] = files["tables/quick/imta_table2.md"].replace(
        conv, "- convergence: baseline not converged: baseline changes +0.50 points at exit 1: no verdicts\n")
    assert "| not converged |" in gen.claims_block(man, _Committed(files))
