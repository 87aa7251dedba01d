"""Record how long ``make all-tables`` and ``make all-figures`` take at quick scale, from a run store.

    python docs/suite_time.py --runs-dir runs --conditions "two runs at a time on 2 cores, load 1.7-2.5"

Each target trains the seed-0 quick runs of its artifacts (repro/papers/manifest.json); a run two
artifacts share is trained once, so it is counted once.  The time of a target is the sum of its
runs' measured training seconds (``meta.json`` of each finished run), which is what the target
takes run after run on one process; runs not in the store are listed, never estimated.  The
record is written to docs/suite-time.json, and ``python docs/gen.py`` shows it under the
results index (docs/results.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "suite-time.json"
TARGETS = {"all-tables": "table", "all-figures": "figure"}


def target_runs(manifest: dict, kind: str, scale: str = "quick") -> list[str]:
    """The distinct runs (manifest order) the artifacts of ``kind`` need at ``scale``, seed 0."""
    runs: dict[str, None] = {}
    for entry in manifest.values():
        for name, _description, art_kind in entry["artifacts"]:
            if art_kind == kind:
                runs.update(dict.fromkeys(entry["runs"][name][scale]))
    return list(runs)


def suite_time(manifest: dict, store: Path, conditions: str) -> dict:
    out = {"conditions": conditions, "targets": {}}
    for target, kind in TARGETS.items():
        runs = target_runs(manifest, kind)
        seconds, threads, missing = 0.0, set(), []
        for run in runs:
            meta, done = store / run / "meta.json", store / run / "results.json"
            if not (meta.is_file() and done.is_file()):
                missing.append(run)
                continue
            m = json.loads(meta.read_text())
            seconds += float(m["seconds"])
            threads.add(int(m.get("threads", 0)))
        out["targets"][target] = {"runs": len(runs), "trained": len(runs) - len(missing),
                                  "minutes": round(seconds / 60, 1), "threads": sorted(threads),
                                  "missing": missing}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python docs/suite_time.py", description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs", help="the run store (default: runs/)")
    ap.add_argument("--conditions", required=True,
                    help="how the runs were trained: processes at a time, cores, load average")
    args = ap.parse_args(argv)
    if not args.runs_dir.is_dir():
        print(f"error: no run store at {args.runs_dir}; pass --runs-dir DIR", file=sys.stderr)
        return 2
    manifest = json.loads((ROOT / "repro" / "papers" / "manifest.json").read_text())
    record = suite_time(manifest, args.runs_dir, args.conditions)
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    for target, t in record["targets"].items():
        print(f"{target}: {t['trained']}/{t['runs']} runs trained, {t['minutes']} min")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
