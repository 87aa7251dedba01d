"""Compare two output trees of ``repro`` cell by cell: did a change move any number?

    python tools/compare_outputs.py OLD_DIR NEW_DIR [--scale smoke] [--ignore-columns REGEX]

Reads every ``tables/<scale>/*.csv`` and ``figures/<scale>/*.csv`` (``*.claims.csv`` included)
under both directories (every scale found, or ``--scale``), and prints each file that is only on
one side, each header line that differs, and each data cell that differs, as
``file: row, column: old -> new``.  Exit status 0 when nothing differs, 1 otherwise.

Left out, as they change from one run to the next without any number changing:

- header lines (``# key: ...``) naming the commit, the wall time, a date or the run-set digest,
  or quoting a measured time (``... ms``, ``img/s``);
- columns of real-time measurements (``time_ms``, dgate's ``speedup_pct``, ``*_ms``, ``img_per_s``,
  the study's wall-clock ``speedup_b1_*`` / ``speedup_batched_*``; FLOPs-derived speed-ups are
  compared), with their ``±`` and ``paper`` columns; ``--ignore-columns`` replaces the pattern;
- rows of a claims file about a measured time (``--ignore-claims``).

Cells are compared as the text written (so 0.1 and 0.10000000000000001 differ), unless
``--rtol`` is given.  Only the standard library and pandas.
"""
from __future__ import annotations

import argparse
import io
import math
import re
import sys
from pathlib import Path

import pandas as pd

HEADER_IGNORED = re.compile(r"^#\s*(commit|wall time|run set|date|written|generated)\b"  # the run's circumstances
                            r"|latency: ours|[+-]?\d[\d.]* ?ms\b|img/s|images/s",  # a measured time quoted
                            re.I)
# measured, not computed: times, throughputs, wall-clock speed-ups (dgate's speedup_pct is one of
# time; glancenet's plain "speedup" is FLOPs-derived and is compared, as are flops_speedup_*)
TIMING_COLUMNS = r"time_ms|_ms$|^ms_|img_per_s|images_per_s|latency|^wall_|^speedup_pct$|^speedup_(b1|batched)"
TIMING_CLAIMS = r"wall[- ]clock|latency|measured time|time per image"


def _split(path: Path) -> tuple[list[str], str]:
    """(header lines, the CSV body) of an output CSV: the header is its leading ``#`` lines,
    continuation lines (``#   ...``) joined to the line they continue."""
    header: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        line = lines[i].rstrip("\n")
        if re.match(r"^#\s{2,}", line) and header:
            header[-1] += " " + line.lstrip("# ").strip()
        else:
            header.append(line)
        i += 1
    return header, "".join(lines[i:])


def _base(column: str) -> str:
    return re.sub(r" (±|paper)$", "", str(column))


def _same(a: str, b: str, rtol: float) -> bool:
    if a == b:
        return True
    if rtol <= 0:
        return False
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(x) and math.isnan(y):
        return True
    return math.isclose(x, y, rel_tol=rtol, abs_tol=0.0)


def compare_file(old: Path, new: Path, name: str, ignore_columns: re.Pattern, ignore_claims: re.Pattern,
                 rtol: float) -> list[str]:
    """The differences between two versions of one output CSV, one line each."""
    out: list[str] = []
    (h_old, b_old), (h_new, b_new) = _split(old), _split(new)
    h_old = [h for h in h_old if not HEADER_IGNORED.search(h)]
    h_new = [h for h in h_new if not HEADER_IGNORED.search(h)]
    for a, b in zip(h_old, h_new):
        if a != b:
            out.append(f"{name}: header: {a!r} -> {b!r}")
    if len(h_old) != len(h_new):
        out.append(f"{name}: header has {len(h_old)} lines -> {len(h_new)}")
    if not b_old.strip() and not b_new.strip():
        return out
    try:
        d_old = pd.read_csv(io.StringIO(b_old), dtype=str, keep_default_na=False)
        d_new = pd.read_csv(io.StringIO(b_new), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as e:
        return out + [f"{name}: not readable as CSV ({e})"]
    if list(d_old.columns) != list(d_new.columns):
        gone = [c for c in d_old.columns if c not in d_new.columns]
        added = [c for c in d_new.columns if c not in d_old.columns]
        out.append(f"{name}: columns differ (only old: {gone}; only new: {added})")
    columns = [c for c in d_old.columns if c in d_new.columns and not ignore_columns.search(_base(c))]
    if name.endswith(".claims.csv") and "claim" in d_old.columns and "claim" in d_new.columns:
        d_old = d_old[~d_old["claim"].str.contains(ignore_claims)].reset_index(drop=True)
        d_new = d_new[~d_new["claim"].str.contains(ignore_claims)].reset_index(drop=True)
    if len(d_old) != len(d_new):
        out.append(f"{name}: {len(d_old)} rows -> {len(d_new)}")
    key = d_old.columns[0]
    for i in range(min(len(d_old), len(d_new))):
        label = f"row {i + 1} ({key}={d_old.at[i, key]!s:.60})"
        for c in columns:
            a, b = d_old.at[i, c], d_new.at[i, c]
            if not _same(a, b, rtol):
                out.append(f"{name}: {label}, {c}: {a} -> {b}")
    return out


def output_files(root: Path, scale: str | None) -> dict[str, Path]:
    """Every output CSV under ``root``, by its path relative to ``root``."""
    found: dict[str, Path] = {}
    for kind in ("tables", "figures"):
        base = root / kind
        if not base.is_dir():
            continue
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            if scale and d.name != scale:
                continue
            for f in sorted(d.glob("*.csv")):
                found[str(f.relative_to(root))] = f
    return found


def compare(old: Path, new: Path, scale: str | None = None, ignore_columns: str = TIMING_COLUMNS,
            ignore_claims: str = TIMING_CLAIMS, rtol: float = 0.0) -> tuple[list[str], int]:
    """(every difference, the number of files compared)."""
    a, b = output_files(old, scale), output_files(new, scale)
    diffs = [f"{n}: only in {old}" for n in sorted(set(a) - set(b))]
    diffs += [f"{n}: only in {new}" for n in sorted(set(b) - set(a))]
    cols, claims = re.compile(ignore_columns), re.compile(ignore_claims, re.I)
    both = sorted(set(a) & set(b))
    for n in both:
        diffs += compare_file(a[n], b[n], n, cols, claims, rtol)
    return diffs, len(both)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--scale", help="only tables/<scale>/ and figures/<scale>/ (default: every scale found)")
    ap.add_argument("--ignore-columns", default=TIMING_COLUMNS,
                    help="regex of the column names (without ' ±' / ' paper') left out (default: timing columns)")
    ap.add_argument("--ignore-claims", default=TIMING_CLAIMS,
                    help="regex of the claims (claims files) left out (default: measured times)")
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance of numeric cells (default: exact text)")
    args = ap.parse_args(argv)
    for d in (args.old, args.new):
        if not d.is_dir():
            ap.error(f"{d}: no such directory")
    diffs, n = compare(args.old, args.new, args.scale, args.ignore_columns, args.ignore_claims, args.rtol)
    for line in diffs:
        print(line)
    print(f"{n} file(s) compared: {'no difference' if not diffs else f'{len(diffs)} difference(s)'}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
