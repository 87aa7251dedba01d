"""Tables (Markdown, CSV, LaTeX) and figures (PNG, PDF) with the paper's numbers beside ours.

Every output carries a header that names the scale, dataset, seeds, FLOPs
convention and commit, so a number is never read without its context.
"""
from __future__ import annotations

import math
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from repro.reference_data import load_reference


@dataclass
class Meta:
    paper: str
    artifact: str
    title: str
    scale: str
    dataset: str
    seeds: int
    flops: str
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        seeds = f"{self.seeds} seed{'s' if self.seeds > 1 else ''}"
        spread = ("mean ± std over seeds" if self.seeds > 1
                  else "± is the 95 % bootstrap interval over test samples (half-width)")
        return [f"scale: {self.scale}", f"dataset: {self.dataset}", f"seeds: {seeds} ({spread})",
                f"cost: {self.flops}", f"commit: {git_commit()}", *self.notes]


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def beside_paper(ours: pd.DataFrame, paper: str, artifact: str, rows: Sequence[str] | None = None,
                 columns: Sequence[str] | None = None, labels: dict[str, str] | None = None,
                 reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Wide table: for every column key, ``<col>`` (ours), ``<col> ±``, ``<col> paper``, ``<col> Δ``.

    ``ours`` is long: row, column, value and optionally spread. Paper numbers come from
    the reference CSV only; a cell the paper does not give stays empty.
    """
    ref = load_reference(paper) if reference is None else reference
    ref = ref[ref["artifact"] == artifact] if "artifact" in ref else ref
    rows = list(rows) if rows is not None else list(dict.fromkeys(ours["row"]))
    columns = list(columns) if columns is not None else list(dict.fromkeys(ours["column"]))
    out = []
    for r in rows:
        rec: dict[str, object] = {"row": (labels or {}).get(r, r)}
        for c in columns:
            mine = ours[(ours["row"] == r) & (ours["column"] == c)]
            theirs = ref[(ref["row"] == r) & (ref["column"] == c)]
            v = float(mine["value"].iloc[0]) if len(mine) else math.nan
            s = float(mine["spread"].iloc[0]) if len(mine) and "spread" in mine else math.nan
            p = float(theirs["value"].iloc[0]) if len(theirs) else math.nan
            rec[c], rec[f"{c} ±"], rec[f"{c} paper"], rec[f"{c} Δ"] = v, s, p, v - p
        out.append(rec)
    return pd.DataFrame(out)


def _fmt(v: object, digits: int) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def to_display(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Merge ``x`` and ``x ±`` columns into "value ± spread" strings for Markdown/LaTeX."""
    shown = {}
    for c in df.columns:
        if str(c).endswith(" ±"):
            continue
        if f"{c} ±" in df.columns:
            shown[c] = [(_fmt(v, digits) + (f" ± {_fmt(s, digits)}" if isinstance(s, float) and not math.isnan(s)
                                              else "")) for v, s in zip(df[c], df[f"{c} ±"])]
        else:
            shown[c] = [_fmt(v, digits) for v in df[c]]
    return pd.DataFrame(shown)


def _latex(df: pd.DataFrame, caption: str) -> str:
    esc = lambda s: (str(s).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%")  # noqa: E731
                     .replace("_", "\\_").replace("#", "\\#").replace("±", "$\\pm$").replace("Δ", "$\\Delta$"))
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{esc(caption)}}}",
             "\\begin{tabular}{" + "l" + "r" * (len(df.columns) - 1) + "}", "\\hline",
             " & ".join(esc(c) for c in df.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(esc(v) for v in row) + " \\\\" for row in df.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def write_table(df: pd.DataFrame, meta: Meta, out_dir: Path, digits: int = 2) -> list[Path]:
    """Write tables/<paper>_<artifact>.{md,csv,tex}; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{meta.paper}_{meta.artifact}"
    shown = to_display(df, digits)
    md = [f"# {meta.paper} {meta.artifact}: {meta.title}", ""] + [f"- {line}" for line in meta.lines()]
    md += ["", shown.to_markdown(index=False), ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    csv = "".join(f"# {line}\n" for line in [f"{meta.paper} {meta.artifact}: {meta.title}", *meta.lines()])
    stem.with_suffix(".csv").write_text(csv + df.to_csv(index=False))
    caption = f"{meta.title} ({'; '.join(meta.lines())})"
    stem.with_suffix(".tex").write_text(_latex(shown, caption))
    return [stem.with_suffix(s) for s in (".md", ".csv", ".tex")]


def read_table_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


# --------------------------------------------------------------------------- figures


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    yerr: Sequence[float] | None = None
    kind: str = "line"  # line | points | paper


def claim(name: str, ours: float, spread: float, paper: float | None) -> str:
    """A one-line verdict on a paper's claimed gain: reproduced only when the gap exceeds its spread."""
    p = "" if paper is None or math.isnan(paper) else f"; paper {paper:+.2f}"
    if math.isnan(spread):
        verdict = "no spread available"
    elif abs(ours) <= spread:
        verdict = "within the spread: not resolved at this scale"
    elif paper is not None and not math.isnan(paper) and (ours > 0) != (paper > 0):
        verdict = "opposite sign to the paper"
    else:
        verdict = "same sign as the paper, beyond the spread" if paper is not None else "beyond the spread"
    return f"{name}: ours {ours:+.2f} ± {spread:.2f}{p} ({verdict})"


def save_figure(fig, meta: Meta, out_dir: Path, dpi: int = 150) -> list[Path]:
    """Save a finished matplotlib figure as figures/<paper>_<artifact>.{png,pdf} and close it."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{meta.paper}_{meta.artifact}"
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=dpi)
    plt.close(fig)
    return paths


def write_figure(series: Sequence[Series], meta: Meta, out_dir: Path, xlabel: str, ylabel: str,
                 logx: bool = False, data: pd.DataFrame | None = None) -> list[Path]:
    """Write figures/<paper>_<artifact>.{png,pdf}: curves, our points and the paper's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for s in series:
        if s.kind == "line":
            ax.plot(s.x, s.y, "-o", ms=3, label=s.label)
            if s.yerr is not None:
                ax.fill_between(s.x, [a - e for a, e in zip(s.y, s.yerr)], [a + e for a, e in zip(s.y, s.yerr)],
                                alpha=0.2)
        elif s.kind == "points":
            ax.errorbar(s.x, s.y, yerr=s.yerr, fmt="o", capsize=3, label=s.label)
        else:
            ax.plot(s.x, s.y, "k*", ms=10, label=s.label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(f"{meta.paper} {meta.artifact}: {meta.title}", 70), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    footer = textwrap.fill(" | ".join(meta.lines()[:5]), 150)
    fig.text(0.01, 0.005, footer, fontsize=5.5, color="0.35", va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.018 * footer.count("\n") + 0.02, 1, 1))
    paths = save_figure(fig, meta, out_dir)
    stem = out_dir / f"{meta.paper}_{meta.artifact}"
    if data is not None:
        head = "".join(f"# {line}\n" for line in [f"{meta.paper} {meta.artifact}: {meta.title}", *meta.lines()])
        stem.with_suffix(".csv").write_text(head + data.to_csv(index=False))
        paths.append(stem.with_suffix(".csv"))
    return paths
