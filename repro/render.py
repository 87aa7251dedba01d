"""Tables (Markdown, CSV, LaTeX) and figures (PNG, PDF) with the paper's numbers beside ours.

Every output carries a header that names the scale, dataset, seeds, overrides, FLOPs
convention and commit, so a number is never read without its context.  The rules that
keep an output honest live here, once, and hold for every paper by construction: the
title names the dataset and scale that produced the numbers (a dataset of the paper's we
did not use reads ``paper: CIFAR-10``); a Δ to the paper is shown only in the paper's
setting; a claimed gain gets a verdict (:func:`claim`) only when the gap exceeds its
spread, and none at smoke scale; every file is written atomically.  The runner sets the
:func:`building` context (the request) while an artifact builds.  README.md explains the
header lines.
"""
from __future__ import annotations

import contextlib
import io
import math
import re
import subprocess
import textwrap
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from repro.reference_data import load_reference
from repro.store import atomic_write_bytes

MAX_MD_WIDTH = 200  # characters of a Markdown table row; wider tables are split into column groups


@dataclass(frozen=True)
class BuildContext:
    """What the core knows about the request an artifact is built for."""
    scale: str
    seeds: int
    overrides: tuple[str, ...] = ()

    @property
    def paper_setting(self) -> bool:
        """Our numbers come from the paper's setting: paper scale, and no override of the dataset,
        schedule, data size or learning rate (``--set`` choices keep it)."""
        return self.scale == "paper" and not any(not o.startswith("--set ") for o in self.overrides)


_CONTEXT: ContextVar[BuildContext | None] = ContextVar("repro_build_context", default=None)


@contextlib.contextmanager
def building(request):
    """Set the :class:`BuildContext` of ``request`` while an artifact builds."""
    token = _CONTEXT.set(BuildContext(request.scale, request.seeds, tuple(request.overrides())))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def context() -> BuildContext | None:
    return _CONTEXT.get()


_DATASET_NAMES = {"CIFAR-100": "cifar100", "CIFAR-10": "cifar10", "ImageNet": "imagenet",
                  "Fashion-MNIST": "fashion-mnist"}


def label_paper_datasets(title: str, ours: str) -> str:
    """Mark every dataset a title names that is not ``ours`` as the paper's: "(CIFAR-10)" becomes
    "(paper: CIFAR-10)" when we trained on Fashion-MNIST."""
    pattern = "|".join(re.escape(n) for n in sorted(_DATASET_NAMES, key=len, reverse=True))

    def relabel(m: re.Match) -> str:
        name = m.group(0)
        return name if _DATASET_NAMES[name] == ours else f"paper: {name}"

    return re.sub(rf"(?<!paper: )(?<![\w-])({pattern})(?![\w-])", relabel, title)


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

    def heading(self) -> str:
        """``<paper> <artifact>: <title> — ours: <dataset>, <scale> scale``."""
        scale = (context().scale if context() else self.scale.split(" ")[0])
        return (f"{self.paper} {self.artifact}: {label_paper_datasets(self.title, self.dataset)} "
                f"— ours: {self.dataset}, {scale} scale")

    def lines(self) -> list[str]:
        seeds = f"{self.seeds} seed{'s' if self.seeds > 1 else ''}"
        spread = ("mean ± std over seeds" if self.seeds > 1
                  else "± is the 95 % bootstrap interval over test samples (half-width)")
        ctx = context()
        overrides = ", ".join(ctx.overrides) if ctx and ctx.overrides else "none"
        setting = ("the paper's setting: Δ = ours − paper" if ctx is None or ctx.paper_setting else
                   "not the paper's setting: the paper's numbers are shown for reference, no Δ")
        return [f"scale: {self.scale}", f"dataset: {self.dataset}", f"seeds: {seeds} ({spread})",
                f"overrides: {overrides}", f"comparison: {setting}", f"cost: {self.flops}",
                f"commit: {git_commit()}", *self.notes]

    def header_lines(self) -> list[str]:
        return [self.heading(), *self.lines()]


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


def without_delta(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` less its Δ columns unless the build is in the paper's setting (see the module doc)."""
    ctx = context()
    if ctx is None or ctx.paper_setting:
        return df
    return df[[c for c in df.columns if not str(c).endswith(" Δ") and str(c) != "Δ"]]


def markdown_groups(shown: pd.DataFrame, width: int = MAX_MD_WIDTH) -> list[str]:
    """The table as one or more Markdown tables whose rows are at most ``width`` characters:
    the first column is repeated in each, the other columns are split in order."""
    first, rest = shown.columns[0], list(shown.columns[1:])
    groups: list[list] = []
    for c in rest:
        trial = (groups[-1] if groups else []) + [c]
        if groups and len(shown[[first, *trial]].to_markdown(index=False).splitlines()[0]) <= width:
            groups[-1] = trial
        else:
            groups.append([c])
    return [shown[[first, *g]].to_markdown(index=False) for g in groups] or [shown.to_markdown(index=False)]


def _latex(df: pd.DataFrame, caption: str, notes: Sequence[str] = ()) -> str:
    esc = lambda s: (str(s).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%")  # noqa: E731
                     .replace("_", "\\_").replace("#", "\\#").replace("±", "$\\pm$").replace("Δ", "$\\Delta$"))
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{esc(caption)}}}",
             "\\begin{tabular}{" + "l" + "r" * (len(df.columns) - 1) + "}", "\\hline",
             " & ".join(esc(c) for c in df.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(esc(v) for v in row) + " \\\\" for row in df.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}"]
    lines += ["\\par\\footnotesize " + esc(n) for n in notes]
    lines += ["\\end{table}", ""]
    return "\n".join(lines)


def write_table(df: pd.DataFrame, meta: Meta, out_dir: Path, digits: int = 2) -> list[Path]:
    """Write tables/<paper>_<artifact>.{md,csv,tex}; returns the paths."""
    out_dir = Path(out_dir)
    stem = out_dir / f"{meta.paper}_{meta.artifact}"
    df = without_delta(df)
    shown = to_display(df, digits)
    md = [f"# {meta.heading()}", ""] + [f"- {line}" for line in meta.lines()]
    for table in markdown_groups(shown):
        md += ["", table]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    write_csv(df, meta, stem.with_suffix(".csv"))
    atomic_write_text(stem.with_suffix(".tex"), _latex(shown, meta.heading(), meta.lines()))
    return [stem.with_suffix(s) for s in (".md", ".csv", ".tex")]


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode())


def write_csv(df: pd.DataFrame, meta: Meta, path: Path) -> Path:
    """``df`` as CSV under ``#`` lines of the header (read back with :func:`read_table_csv`)."""
    head = "".join(f"# {line}\n" for line in meta.header_lines())
    atomic_write_text(path, head + df.to_csv(index=False))
    return Path(path)


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
    ctx = context()
    if ctx is not None and ctx.scale == "smoke":
        verdict = "smoke scale: a pipeline check, no verdict"
    elif math.isnan(spread):
        verdict = "no spread available"
    elif abs(ours) <= spread:
        verdict = "within the spread: not resolved at this scale"
    elif paper is not None and not math.isnan(paper) and (ours > 0) != (paper > 0):
        verdict = "opposite sign to the paper"
    else:
        verdict = "same sign as the paper, beyond the spread" if paper is not None else "beyond the spread"
    return f"{name}: ours {ours:+.2f} ± {spread:.2f}{p} ({verdict})"


def save_figure(fig, meta: Meta, out_dir: Path, dpi: int = 150, data: pd.DataFrame | None = None,
                titled: bool = True) -> list[Path]:
    """Finish and save a matplotlib figure as figures/<paper>_<artifact>.{png,pdf} (and ``data``
    as .csv), atomically, and close it.  With ``titled`` the core writes the title (naming the
    dataset and scale used) and a footer of the header lines wrapped to the figure's width."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    stem = out_dir / f"{meta.paper}_{meta.artifact}"
    if titled:
        width_in = fig.get_size_inches()[0]
        fig.suptitle(textwrap.fill(meta.heading(), int(width_in * 13)), fontsize=9)
        footer = textwrap.fill(" | ".join(meta.lines()[:7]), int(width_in * 24))
        fig.text(0.01, 0.005, footer, fontsize=5.5, color="0.35", va="bottom")
        top = 1 - 0.035 * (1 + meta.heading().count("\n") + len(meta.heading()) // int(width_in * 13))
        fig.tight_layout(rect=(0, 0.02 + 0.018 * (footer.count("\n") + 1), 1, max(top, 0.8)))
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        buf = io.BytesIO()
        fig.savefig(buf, dpi=dpi, format=p.suffix[1:])
        atomic_write_bytes(p, buf.getvalue())
    plt.close(fig)
    if data is not None:
        paths.append(write_csv(data, meta, stem.with_suffix(".csv")))
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
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    return save_figure(fig, meta, out_dir, data=data)
