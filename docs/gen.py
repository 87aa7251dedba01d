"""Write the generated blocks of the docs pages; ``--check`` says whether they are up to date.

    python docs/gen.py            # rewrite every generated block
    python docs/gen.py --check    # exit 1, naming each stale block, if any would change

A generated block is the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in a
page under docs/; everything outside the markers is written by hand and left alone.

- ``keys`` (docs/papers/<paper>.md): the paper's ``--set`` keys, from ``repro.manifest.build()``;
- ``runs`` (docs/papers/<paper>.md): per artifact, the runs it needs at quick and paper scale
  (kind, epochs, dataset), from the artifact's own run list (``repro.runner.plan``);
- ``results`` (docs/papers/<paper>.md): the committed quick-scale outputs of every artifact
  (tables/quick/<paper>_<artifact>.md, figures/quick/<paper>_<artifact>.png and .csv);
- ``index`` (docs/results.md): one row per committed quick-scale artifact, then per paper the
  counts of its claims' verdicts and every claim (ours with its interval, the paper's, seeds,
  verdict), read from the outputs' ``.claims.csv`` (repro.render.write_claims); an output without
  one was rendered under the old rule, before the verdicts of issue 26: its claims are listed from
  its header, not re-judged and with no verdict word;
- ``claims`` (docs/claims.md): per paper, every headline claim of its headline artifacts (the
  manifest's ``headline``) with the paper's gap, ours with its interval, the seeds, the detectable
  gap, the verdict and the protocol's convergence test, from the committed ``.claims.csv`` and
  header; an artifact not yet rendered on the converged protocol says so;
- ``suite`` (docs/results.md): the training time of ``make all-tables`` / ``make all-figures`` at
  quick scale, from the committed docs/suite-time.json (docs/suite_time.py);
- ``bench`` (docs/performance.md): the figures of the committed bench/results.csv.

Results are read from the last commit (``git show HEAD:<path>``), not from the working tree,
so a local ``repro imta table2`` (which writes tables/quick/) does not make the docs stale:
commit new results, then run this script and commit the pages it changed.  Outside a git
checkout the files on disk are read instead.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- (?P<name>[a-z-]+):begin -->\n)(?P<body>.*?)(<!-- (?P=name):end -->)", re.S)
# A claim line of a table's header (repro.render.claim):
#   "<what>: ours +0.20 ± 1.01; paper +1.81 (unresolved: within the spread)"
CLAIM = re.compile(r"^(?P<what>.+?): ours (?P<ours>[-+−]?[\d.]+(?: ± <?[\d.na]+)?)"
                   r"(?:; paper (?P<paper>[-+−]?[\d.]+))? \((?P<verdict>[^()]*)\)$")
QUICK_DIRS = ("tables/quick", "figures/quick")
OLD_RULE = "old rule (before the verdicts of issue 26): not re-judged"
VERDICTS = ("reproduced", "contradicted", "smaller than claimed", "inconclusive", "no verdict")
SUITE_TIME = "docs/suite-time.json"  # written by docs/suite_time.py from a run store


# --------------------------------------------------------------------------- committed files

def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


class Committed:
    """The files of the last commit under the given folders (or, outside git, those on disk)."""

    def __init__(self, folders=(*QUICK_DIRS, "bench", SUITE_TIME)):
        listed = _git("ls-tree", "-r", "--name-only", "HEAD", "--", *folders)
        self.git = listed is not None
        if self.git:
            self.paths = set(listed.split())
        else:
            self.paths = {p.relative_to(ROOT).as_posix() for f in folders
                          for p in ((ROOT / f).iterdir() if (ROOT / f).is_dir() else [ROOT / f]) if p.is_file()}

    def has(self, path: str) -> bool:
        return path in self.paths

    def text(self, path: str) -> str:
        if self.git:
            out = _git("show", f"HEAD:{path}")
            if out is not None:
                return out
        return (ROOT / path).read_text()


def header_and_tables(md: str) -> tuple[str, list[str], str]:
    """A table file's heading, its header lines (the "- " lines, above its tables or in the
    <details> block below them; a line wrapped onto "  " lines joined back) and the rest (its
    summary lines and tables)."""
    lines = md.rstrip("\n").splitlines()
    heading = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else ""
    header, body, details, item = [], [], False, False
    for line in lines[1 if heading else 0:]:
        if line.startswith("<details>") or line.startswith("</details>"):
            details = not line.startswith("</")
        elif line.startswith("- "):
            header.append(line[2:])
        elif item and line.startswith("  ") and line.strip():
            header[-1] += " " + line.strip()
            continue
        elif not details:
            body.append(line)
        item = line.startswith("- ")
    return heading, header, "\n".join(body).strip()


def csv_header(text: str) -> tuple[str, list[str]]:
    """A figure CSV's heading and header lines (its leading "# " lines; a line wrapped onto "#   "
    lines joined back)."""
    head: list[str] = []
    for line in text.splitlines():
        if line.startswith("#   ") and head:
            head[-1] += " " + line[1:].strip()
        elif line.startswith("# "):
            head.append(line[2:])
    return (head[0], head[1:]) if head else ("", [])


def artifact_outputs(c: Committed, paper: str, artifact: str) -> dict:
    """What is committed for one artifact: table files, figure files, heading and header lines."""
    stem = f"{paper}_{artifact}"
    tables = [f"tables/quick/{stem}{s}" for s in (".md", ".csv", ".tex") if c.has(f"tables/quick/{stem}{s}")]
    figures = [f"figures/quick/{stem}{s}" for s in (".png", ".pdf", ".csv") if c.has(f"figures/quick/{stem}{s}")]
    claims = next((f"{d}/{stem}{s}" for d in QUICK_DIRS for s in (".claims.csv",) if c.has(f"{d}/{stem}{s}")), None)
    evidence = [f"{d}/{stem}.evidence.npz" for d in QUICK_DIRS if c.has(f"{d}/{stem}.evidence.npz")]
    out = {"tables": tables, "figures": figures, "heading": "", "header": [], "body": "",
           "claims": claims, "evidence": evidence}
    if f"tables/quick/{stem}.md" in tables:
        out["heading"], out["header"], out["body"] = header_and_tables(c.text(f"tables/quick/{stem}.md"))
    elif f"figures/quick/{stem}.csv" in figures:
        out["heading"], out["header"] = csv_header(c.text(f"figures/quick/{stem}.csv"))
    return out


def _line(header: list[str], key: str) -> str:
    return next((h[len(key) + 2:] for h in header if h.startswith(f"{key}: ")), "")


def _claims(header: list[str]) -> list[re.Match]:
    return [m for m in map(CLAIM.match, header) if m]


def _float(x: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def read_claims(text: str) -> list[dict]:
    """The rows of a ``.claims.csv`` (its "# " header lines skipped): claim, headline, kind, seeds,
    gap, lo, hi, paper, verdict, detail and line, the numbers as floats (NaN where empty)."""
    rows = csv.DictReader(io.StringIO("".join(line for line in text.splitlines(keepends=True)
                                              if not line.startswith("#"))))
    out = []
    for r in rows:
        out.append({**r, "headline": r.get("headline", "").strip().lower() == "true",
                    "seeds": int(_float(r.get("seeds")) if not math.isnan(_float(r.get("seeds"))) else 0),
                    **{k: _float(r.get(k)) for k in ("gap", "lo", "hi", "paper")},
                    "verdict": (r.get("verdict") or "no verdict").strip()})
    return out


def _digits(values: list[float], anchors: list[float]) -> int:
    """The fewest decimals (2..4) at which no value reads as one of the anchors it differs from (as
    repro.stats prints a claim: "[+0.00, ...]" never stands for an interval that excludes 0)."""
    for d in (2, 3, 4):
        if all(round(v, d) != round(x, d) for v in values for x in anchors if v != x and not math.isnan(v)):
            return d
    return 4


def ours_text(r: dict) -> str:
    """A claim's ours: the gap and its interval, "+1.20 [+0.30, +2.10]"; a fixed quantity or a gap
    without a spread: the gap alone."""
    gap, lo, hi = r["gap"], r["lo"], r["hi"]
    if math.isnan(gap):
        return "—"
    if r.get("kind") == "fixed":
        return f"{gap:+.2f} (a fixed quantity)"
    if math.isnan(lo) or math.isnan(hi):
        return f"{gap:+.2f} (no spread)"
    p = r["paper"]
    d = _digits([lo, hi, gap], [0.0] + ([] if math.isnan(p) else [abs(p), -abs(p)]))
    return f"{gap:+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]"


def verdict_text(r: dict) -> str:
    """The verdict word with its detail, as the claim line gives them ("no verdict: 1 seed" below 3)."""
    word, detail = r["verdict"], (r.get("detail") or "").strip()
    if word == "no verdict":
        if r.get("kind") != "fixed" and 0 < r["seeds"] < 3:
            return f"no verdict ({r['seeds']} seed{'s' if r['seeds'] > 1 else ''}: below 3)"
        return f"no verdict ({detail})" if detail else "no verdict"
    return f"{word} ({detail})" if detail else word


def artifact_claims(o: dict, c: Committed) -> tuple[list[dict], bool]:
    """An artifact's claims and whether they follow the new rule: the rows of its ``.claims.csv``, or
    (an output rendered before issue 26's verdicts, without one) its header's claim lines, each
    marked as not re-judged, with no verdict word."""
    if o.get("claims"):
        return read_claims(c.text(o["claims"])), True
    seeds = _line(o["header"], "seeds").split(" ")[0]
    old = []
    for m in _claims(o["header"]):
        old.append({"claim": m["what"], "ours": m["ours"].replace("−", "-"), "paper": _float(
            (m["paper"] or "").replace("−", "-")), "seeds": int(seeds) if seeds.isdigit() else 0,
            "verdict": OLD_RULE, "headline": False})
    return old, False


# --------------------------------------------------------------------------- the blocks

def _registry() -> dict:
    """The papers' names, titles, artifacts and ``--set`` keys (``repro.manifest.build()``)."""
    try:
        from repro.manifest import build
    except ImportError:  # a checkout without the manifest module: the same data from the registry
        from repro.artifacts import Option, papers

        return {p.name: {"title": p.title,
                         "artifacts": [[a.name, a.description, a.output_kind] for a in p.artifacts.values()],
                         "options": {k: (o.describe() if isinstance(o, Option) else str(o))
                                     for k, o in p.options.items()}}
                for p in papers().values()}
    return build()


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a literal | escaped, no line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def keys_block(paper: str, man: dict) -> str:
    options = man[paper]["options"]
    if not options:
        return f"`repro {paper}` takes no `--set` keys.\n"
    rows = ["| key | type, default, valid values: meaning |", "|---|---|"]
    rows += [f"| `{k}` | {_cell(v)} |" for k, v in options.items()]
    return (f"Generated from the registry (`repro {paper} --help` lists the same): "
            f"`--set KEY=VALUE`, repeatable.\n\n" + "\n".join(rows) + "\n")


def _runs_cell(cfgs) -> str:
    if not cfgs:
        return "—"
    kinds = Counter((c.kind, c.train.epochs) for c in cfgs)
    sets = ", ".join(dict.fromkeys(c.dataset for c in cfgs))
    parts = " + ".join(f"{n} {kind} × {ep} ep" for (kind, ep), n in kinds.items())
    return f"{len(cfgs)}: {parts} ({sets})"


def runs_block(paper: str) -> str:
    from repro.artifacts import get_paper
    from repro.runner import Request, plan

    p = get_paper(paper)
    rows = ["| artifact | quick scale | paper scale |", "|---|---|---|"]
    for a in p.artifacts.values():
        rows.append(f"| `{a.name}` | {_runs_cell(plan(a, Request(scale='quick')))} "
                    f"| {_runs_cell(plan(a, Request(scale='paper')))} |")
    return ("Runs per artifact, one seed (`--seeds N` multiplies them), as `repro " + paper +
            " <artifact> --dry-run` lists them: how many, their kinds × epochs, and the dataset. "
            "Artifacts share runs, so a run listed twice trains once.\n\n" + "\n".join(rows) + "\n")


def current_training(paper: str, name: str) -> str:
    """The ``training:`` header line today's code would write for the artifact at quick scale."""
    from repro.artifacts import get_paper
    from repro.render import training_note
    from repro.runner import Request, plan

    return training_note(plan(get_paper(paper).artifact(name), Request(scale="quick")))


def protocol(paper: str, name: str, header: list[str]) -> str:
    """Whether committed outputs were made under today's quick protocol: "current" when the run-set
    digest in their header (repro.render.run_set_digest of the seed-0 run folders) is that of the
    artifact's quick runs in repro/papers/manifest.json today, else "earlier" (outputs from before
    headers recorded it count as earlier).  Needs no git history."""
    from repro.render import run_set_digest

    man = json.loads((ROOT / "repro" / "papers" / "manifest.json").read_text())
    today = run_set_digest(man[paper]["runs"][name]["quick"])
    return "current" if _line(header, "run set").split(" ")[0] == today else "earlier"


def stale(paper: str, name: str, header: list[str]) -> bool:
    return protocol(paper, name, header) == "earlier"


def _links(paths: list[str], up: str) -> str:
    return " · ".join(f"[{Path(p).name}]({up}{p})" for p in paths)


def results_block(paper: str, man: dict, c: Committed) -> str:
    out = []
    for name, _description, kind in man[paper]["artifacts"]:
        o = artifact_outputs(c, paper, name)
        out.append(f"### `{name}`\n")
        if not o["tables"] and not o["figures"]:
            out.append(f"not yet committed: run `repro {paper} {name}`\n")
            continue
        out.append(_links(_files(o), "../../") + "\n")
        if stale(paper, name, o["header"]):
            out.append(f"**Made under an earlier quick protocol** (today's trains on {current_training(paper, name)}): "
                       f"`repro {paper} {name}` re-runs it.\n")
        if f"figures/quick/{paper}_{name}.png" in o["figures"]:
            out.append(f"![{paper} {name}](../../figures/quick/{paper}_{name}.png)\n")
        if o["heading"]:
            out.append(f"**{o['heading']}**\n")
        if o["header"]:
            out.append("\n".join(f"- {h}" for h in (o["header"] if o["claims"] else map(_old_rule, o["header"])))
                       + "\n")
        if o["body"]:
            out.append(o["body"] + "\n")
    return "\n".join(out)


def _files(o: dict) -> list[str]:
    """An artifact's committed files to link: tables, figures, then its claims and evidence files."""
    return o["tables"] + o["figures"] + ([o["claims"]] if o.get("claims") else []) + o.get("evidence", [])


def _old_rule(line: str) -> str:
    """A header line of an output rendered before issue 26's verdicts: a claim line keeps its numbers
    and loses its verdict (not re-judged); any other line is kept."""
    m = CLAIM.match(line)
    if not m:
        return line
    paper = f"; paper {m['paper']}" if m["paper"] else ""
    return f"{m['what']}: ours {m['ours']}{paper} ({OLD_RULE})"


def doc_page(paper: str, artifact: str) -> Path | None:
    """The page that documents an artifact: its paper's docs/papers/<paper>.md, else a page of its
    own, docs/<paper>-<artifact>.md (a cross-paper study); None when there is neither."""
    for page in (DOCS / "papers" / f"{paper}.md", DOCS / f"{paper}-{artifact}.md"):
        if page.exists():
            return page
    return None


def _count_text(counts: Counter, old: int) -> str:
    words = [*VERDICTS, *sorted(w for w in counts if w not in VERDICTS)]
    text = " · ".join(f"{w} {counts[w]}" for w in words)
    return text + (f" · {OLD_RULE}: {old}" if old else "")


def index_block(man: dict, c: Committed) -> str:
    rows = ["| artifact | claims | seeds | wall time | protocol | files |", "|---|---|---|---|---|---|"]
    missing, sections = [], []
    for paper, entry in man.items():
        counts, old, lines = Counter(), 0, []
        for name, _description, _kind in entry["artifacts"]:
            o = artifact_outputs(c, paper, name)
            if not o["tables"] and not o["figures"]:
                missing.append(f"`{paper} {name}`")
                continue
            claims, judged = artifact_claims(o, c)
            seeds = _line(o["header"], "seeds").split(" (")[0] or "—"
            wall = _line(o["header"], "wall time") or "—"
            label = f"`{paper} {name}`"
            doc = doc_page(paper, name)
            page = f"[{label}]({doc.relative_to(DOCS).as_posix()})" if doc else label
            state = protocol(paper, name, o["header"])
            here = Counter(r["verdict"] for r in claims) if judged else Counter()
            summary = ("—" if not claims else ", ".join(f"{n} {w}" for w, n in here.items()) if judged else
                       f"{len(claims)}: {OLD_RULE}")
            cells = [page, summary, seeds, wall, "**earlier**: re-run to refresh" if state == "earlier" else state,
                     _links(_files(o), "../")]
            rows.append("| " + " | ".join(map(_cell, cells)) + " |")
            counts += here
            old += 0 if judged else len(claims)
            for r in claims:
                ours = ours_text(r) if judged else r["ours"]
                paper_value = "—" if math.isnan(r["paper"]) else f"{r['paper']:+.2f}"
                seeds_cell = str(r["seeds"]) if r["seeds"] else "—"
                what = ("**" + r["claim"] + "**") if r["headline"] else r["claim"]
                lines.append("| " + " | ".join(map(_cell, [f"`{name}`", what, ours, paper_value, seeds_cell,
                                                           verdict_text(r) if judged else OLD_RULE])) + " |")
        if lines:
            sections.append(f"**`{paper}`**: {_count_text(counts, old)}\n\n"
                            "| artifact | claim | ours [95 % interval] | paper | seeds | verdict |\n"
                            "|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    if len(rows) == 2:
        return "No quick-scale result is committed yet.\n"
    tail = (f"\nNot committed yet ({len(missing)}): {', '.join(missing)}.\n" if missing else "")
    claims_part = ("\n### Claims\n\nPer paper, the counts of its claims' verdicts and every claim (a headline claim "
                   "in bold): ours with its interval, the paper's value, the seeds and the verdict, from the outputs' "
                   "`.claims.csv`. Outputs rendered before the verdicts of issue 26 have no claims file: their claims "
                   "are listed as the header gives them, " + OLD_RULE + ", with no verdict.\n\n" + "\n".join(sections)
                   if sections else "")
    return "\n".join(rows) + "\n" + tail + claims_part


def _convergence(header: list[str]) -> str:
    """The header's convergence outcome, short: passed / not converged / not tested / "" (none)."""
    line = _line(header, "convergence")
    if not line:
        return ""
    if line.startswith("passed"):
        return "passed"
    return "not tested" if "no convergence test" in line else "not converged"


def claims_block(man: dict, c: Committed) -> str:
    """docs/claims.md: every headline claim of every paper, with its evidence and verdict."""
    out = []
    for paper, entry in man.items():
        heads = entry.get("headline", [])
        if not heads:
            continue
        rows = ["| artifact | claim | paper | ours [95 % interval] | seeds | detectable gap | verdict | convergence |",
                "|---|---|---|---|---|---|---|---|"]
        for name in heads:
            o = artifact_outputs(c, paper, name)
            label = f"`{paper} {name}`"
            conv = _convergence(o["header"])
            claims, judged = artifact_claims(o, c) if (o["tables"] or o["figures"]) else ([], False)
            if not judged or not conv:
                rows.append("| " + " | ".join(map(_cell, [label, "not rendered on the converged protocol yet "
                                                          "(`make headline`)", "", "", "", "", "", ""])) + " |")
                continue
            for r in (x for x in claims if x["headline"]):
                det = _float(r.get("detectable_gap"))
                rows.append("| " + " | ".join(map(_cell, [
                    label, r["claim"], "—" if math.isnan(r["paper"]) else f"{r['paper']:+.2f}", ours_text(r),
                    str(r["seeds"] or "—"), "—" if math.isnan(det) else f"{det:.2f}", verdict_text(r), conv])) + " |")
        out.append(f"### {entry['title']} (`{paper}`)\n\n" + "\n".join(rows) + "\n")
    return "\n".join(out)


def suite_block(c: Committed) -> str:
    if not c.has(SUITE_TIME):
        return f"No {SUITE_TIME} is committed yet: run `python docs/suite_time.py`.\n"
    record = json.loads(c.text(SUITE_TIME))
    rows = ["| target | runs (seed 0) | trained | training time | torch threads per run |", "|---|---|---|---|---|"]
    for target, t in record["targets"].items():
        done = f"{t['trained']} of {t['runs']}"
        time = f"{t['minutes']:.1f} min" + ("" if not t["missing"] else f" for the {t['trained']} trained")
        rows.append("| " + " | ".join([f"`make {target}`", str(t["runs"]), done, time,
                                       ", ".join(map(str, t["threads"])) or "—"]) + " |")
    missing = sorted({r for t in record["targets"].values() for r in t["missing"]})
    tail = (f"\nNot trained when this was recorded ({len(missing)}): {', '.join(f'`{r}`' for r in missing)}.\n"
            if missing else "")
    return (f"Conditions: {record['conditions']}.\n\n" + "\n".join(rows) + "\n" + tail)


def _value(v: str, unit: str) -> str:
    try:
        x = float(v)
    except ValueError:
        return v
    s = f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"
    return s + ("" if not unit else unit if unit in ("x", "%") else f" {unit}")


def bench_block(c: Committed) -> str:
    if not c.has("bench/results.csv"):
        return "No bench/results.csv is committed yet: run `make bench`.\n"
    rows = list(csv.DictReader(io.StringIO(c.text("bench/results.csv"))))
    if not rows:
        return "bench/results.csv is empty.\n"
    m = rows[0]
    sizes = "`--quick` sizes" if m.get("quick") == "True" else "full sizes"
    head = (f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores ({m.get('logical_cpus', '?')} logical), "
            f"{m.get('threads', '?')} torch threads, torch {m.get('torch', '?')}, device {m.get('device', '?')}, "
            f"1-minute load average {m.get('load_avg_1min', '?')} at the start; {sizes}.\n")
    table = ["| # | figure | value | target | result | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        passed = {"True": "pass", "False": "**FAIL**"}.get(r.get("passed", ""), "")
        value = _value(r["value"], r.get("unit", "")) if r.get("value") else ""
        cells = [r["item"], r["figure"], value, r.get("target", ""), passed, r.get("note", "")]
        table.append("| " + " | ".join(map(_cell, cells)) + " |")
    return head + "\n" + "\n".join(table) + "\n"


# --------------------------------------------------------------------------- pages

def render(page: Path, text: str, man: dict, c: Committed) -> str:
    def body(m: re.Match) -> str:
        name = m["name"]
        paper = page.stem if page.parent.name == "papers" else None
        if name in ("keys", "runs", "results") and paper not in man:
            raise SystemExit(f"{page}: block '{name}' needs a paper page docs/papers/<paper>.md of a known paper")
        if name == "keys":
            return keys_block(paper, man)
        if name == "runs":
            return runs_block(paper)
        if name == "results":
            return results_block(paper, man, c)
        if name == "index":
            return index_block(man, c)
        if name == "bench":
            return bench_block(c)
        if name == "suite":
            return suite_block(c)
        if name == "claims":
            return claims_block(man, c)
        raise SystemExit(f"{page}: unknown generated block '{name}'")

    fenced = _fenced(text)
    return BLOCK.sub(lambda m: m.group(0) if _inside(m.start(), fenced) else m.group(1) + body(m) + m.group(4),
                     text)


def _fenced(text: str) -> list[tuple[int, int]]:
    """The character ranges of the page's fenced code blocks (markers shown there are examples)."""
    spans, start, pos = [], None, 0
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            if start is None:
                start = pos
            else:
                spans.append((start, pos + len(line)))
                start = None
        pos += len(line)
    return spans


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(a <= pos < b for a, b in spans)


def blocks(text: str) -> list[re.Match]:
    """The generated blocks of a page, outside its code blocks."""
    fenced = _fenced(text)
    return [m for m in BLOCK.finditer(text) if not _inside(m.start(), fenced)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python docs/gen.py", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    args = ap.parse_args(argv)
    os.environ.setdefault("REPRO_THREADS", "1")
    sys.path.insert(0, str(ROOT))
    man, c = _registry(), Committed()
    stale = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        new = render(page, text, man, c)
        if new == text:
            continue
        rel = page.relative_to(ROOT)
        names = [m["name"] for m, n in zip(blocks(text), blocks(new)) if m.group(0) != n.group(0)]
        if args.check:
            stale.append(f"{rel}: {', '.join(names)}")
        else:
            page.write_text(new)
            print(f"wrote {rel} ({', '.join(names)})")
    for paper, entry in man.items():
        undocumented = [name for name, *_ in entry["artifacts"] if doc_page(paper, name) is None]
        if undocumented:
            print(f"note: {paper} {', '.join(undocumented)}: no page docs/papers/{paper}.md "
                  f"(or docs/{paper}-<artifact>.md)", file=sys.stderr)
    if stale:
        print("generated blocks out of date (run: python docs/gen.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    if args.check:
        print("docs: every generated block is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
