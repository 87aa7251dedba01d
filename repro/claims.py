"""``repro claims``: every claim of the outputs under a folder, from their ``.claims.csv`` files, as one
table (text, csv, json or md); ``--recompute`` redoes each claim's statistics from its evidence file
(``.evidence.npz``) with the current rule, without the run store and without retraining."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from repro.config import ConfigError

FORMATS = ("text", "csv", "json", "md")
COLUMNS = ["paper", "artifact", "claim", "headline", "seeds", "gap", "lo", "hi", "paper_value", "verdict",
           "detectable_gap", "seeds_needed"]


def claim_files(root: Path, scale: str) -> list[Path]:
    """The claims files under ``root``/tables/<scale> and ``root``/figures/<scale>, sorted."""
    return sorted(p for d in ("tables", "figures") for p in (Path(root) / d / scale).glob("*.claims.csv"))


def _split_stem(path: Path, papers: set[str]) -> tuple[str, str]:
    stem = path.name.removesuffix(".claims.csv")
    for p in sorted(papers, key=len, reverse=True):
        if stem.startswith(p + "_"):
            return p, stem[len(p) + 1:]
    head, _, rest = stem.partition("_")
    return head, rest


def collect(root: Path, scale: str = "quick", paper: str | None = None, recompute: bool = False) -> pd.DataFrame:
    """One row per claim of every claims file (``paper`` only, if given); with ``recompute``, gap,
    interval and verdict come from the evidence file by today's rule (the level and paper value the
    file recorded), and a column says whether anything changed."""
    from repro import manifest

    papers = set(manifest.load())
    if paper is not None and paper not in papers:
        raise ConfigError(f"unknown paper '{paper}'; choose one of: {', '.join(sorted(papers))}")
    rows = []
    for path in claim_files(root, scale):
        p, artifact = _split_stem(path, papers)
        if paper is not None and p != paper:
            continue
        df = _read_claims(path)
        evidence, npz = {}, path.with_name(path.name.removesuffix(".claims.csv") + ".evidence.npz")
        if recompute and npz.exists():
            from repro.stats import read_evidence

            try:
                evidence = read_evidence(npz)
            except Exception as e:  # any garbage: one line naming the file
                raise ConfigError(f"{npz}: not an evidence file ({type(e).__name__}: {str(e)[:80]}); render the "
                                  f"artifact again to rewrite it") from None
        for r in df.itertuples(index=False):
            row = {"paper": p, "artifact": artifact, "claim": r.claim, "headline": bool(r.headline),
                   "seeds": int(r.seeds), "gap": r.gap, "lo": r.lo, "hi": r.hi,
                   "paper_value": None if pd.isna(r.paper) else float(r.paper), "verdict": r.verdict,
                   "detectable_gap": None if pd.isna(r.detectable_gap) else float(r.detectable_gap),
                   "seeds_needed": None if pd.isna(r.seeds_needed) else int(r.seeds_needed)}
            if recompute:  # "changed": True/False where redone, None where there is nothing to redo from
                row["changed"] = None
                if r.claim in evidence and scale != "smoke":  # smoke scale: no verdicts to redo
                    row.update(_rejudge(evidence[r.claim], r))
            rows.append(row)
    if not rows:
        where = f"{Path(root) / 'tables' / scale} or {Path(root) / 'figures' / scale}"
        raise ConfigError(f"no claims files (*.claims.csv) in {where}" + (f" for {paper}" if paper else "")
                          + "; render an artifact first, or give --dir and --scale")
    return pd.DataFrame(rows)


def _read_claims(path: Path) -> pd.DataFrame:
    """A claims file, checked: its columns, and numbers where numbers go (one line naming the file
    otherwise)."""
    from repro.render import CLAIM_COLUMNS

    def bad(why: str):
        return ConfigError(f"{path}: {why}; render the artifact again to rewrite it")

    try:
        df = pd.read_csv(path, comment="#")
    except Exception as e:  # empty, binary, unparsable: one line
        raise bad(f"not a claims file ({type(e).__name__}: {str(e)[:80]})") from None
    missing = [c for c in CLAIM_COLUMNS if c not in df.columns]
    if missing:
        raise bad(f"no {', '.join(missing)} column(s)")
    for c in ("seeds", "gap"):
        v = pd.to_numeric(df[c], errors="coerce")
        if v.isna().any():
            raise bad(f"its {c} column holds {df[c][v.isna()].iloc[0]!r}, not a number")
    for c in ("lo", "hi", "level", "paper", "direction", "detectable_gap", "seeds_needed"):
        v = pd.to_numeric(df[c], errors="coerce")
        if (v.isna() & df[c].notna()).any():
            raise bad(f"its {c} column holds {df[c][v.isna() & df[c].notna()].iloc[0]!r}, not a number")
    return df


def _rejudge(ab, r) -> dict:
    from repro import stats

    g = stats.gap_evidence(*ab)
    paper = None if pd.isna(r.paper) else float(r.paper)
    sign = None if pd.isna(r.direction) else int(r.direction)
    v = stats.verdict(g, paper, sign, float(r.level))
    word = v.word or "no verdict"
    new = {"gap": round(g.gap, 6), "lo": round(v.lo, 6), "hi": round(v.hi, 6), "verdict": word,
           "detectable_gap": None if math.isnan(v.detectable) else round(v.detectable, 4),
           "seeds_needed": v.seeds_needed}
    old_word = r.verdict if isinstance(r.verdict, str) else "no verdict"
    # evidence of fractions is stored as float32: agreement to 1e-4 points is the same number
    new["changed"] = bool(word != old_word or abs(new["gap"] - r.gap) > 1e-4
                          or (not math.isnan(v.lo) and abs(new["lo"] - r.lo) > 1e-4))
    return new


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: choose one of: {', '.join(FORMATS)}")
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return json.dumps(df.astype(object).where(df.notna(), None).to_dict(orient="records"), indent=1)
    shown = df.copy()
    for c in ("gap", "lo", "hi", "paper_value", "detectable_gap"):
        shown[c] = shown[c].map(lambda x: "" if x is None or pd.isna(x) else f"{x:+.2f}")
    shown["headline"] = shown["headline"].map(lambda h: "*" if h else "")
    shown["seeds_needed"] = shown["seeds_needed"].map(lambda x: "" if x is None or pd.isna(x) else str(int(x)))
    if fmt == "md":
        return shown.to_markdown(index=False)
    counts = df["verdict"].value_counts()
    summary = ", ".join(f"{counts[w]} {w}" for w in counts.index)
    return shown.to_string(index=False) + f"\n{len(df)} claim(s): {summary}"
