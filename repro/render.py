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
MAX_LINE = 200      # characters of any line of an output (.md, .csv header, .tex): longer ones are wrapped
FOOTER_PT = 8.0     # the figure footer's font size: figures print at their own size (their PDF page)


@dataclass(frozen=True)
class BuildContext:
    """What the core knows about the request an artifact is built for."""
    scale: str
    seeds: int
    overrides: tuple[str, ...] = ()
    runs: int = 0                 # runs the artifact is built from
    wall_seconds: float = 0.0     # their training wall time in all (meta.json)
    threads: tuple[int, ...] = ()  # torch threads they trained with
    training: str = ""            # how much they trained on: images and epochs (:func:`training_note`)
    run_set: str = ""             # :func:`run_set_digest` of their seed-0 run folders
    level: float = 0.95           # the confidence level of the claims' intervals (lower per look under --seeds auto)
    auto: str = ""                # --seeds auto: how many seeds were trained and why it stopped
    outliers: tuple = ()          # (run name, seed, its validation top-1, the median of its siblings')
    convergence: object = None    # repro.convergence.Check (None: the scale does not test it)
    verdicts: list = field(default_factory=list, compare=False)  # (claim, Verdict, headline), as rendered

    @property
    def paper_setting(self) -> bool:
        """Our numbers come from the paper's setting: paper scale, and no override of the dataset,
        schedule, data size or learning rate (``--set`` choices keep it)."""
        return self.scale == "paper" and not any(not o.startswith("--set ") for o in self.overrides)


_CONTEXT: ContextVar[BuildContext | None] = ContextVar("repro_build_context", default=None)


@contextlib.contextmanager
def building(request, runs: int = 0, wall_seconds: float = 0.0, threads: Sequence[int] = (), training: str = "",
             run_set: str = "", level: float = 0.95, auto: str = "", outliers: Sequence = (), convergence=None):
    """Set the :class:`BuildContext` of ``request`` while an artifact builds; yields it (its
    ``verdicts`` fill as the claims are rendered)."""
    ctx = BuildContext(request.scale, request.seeds, tuple(request.overrides()), runs, wall_seconds,
                       tuple(sorted(set(threads))), training, run_set, level, auto, tuple(outliers), convergence)
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


def context() -> BuildContext | None:
    return _CONTEXT.get()


def run_set_digest(folders) -> str:
    """A short digest of run folders ("<paper>/<name>-s0-<hash>"), order-free: what an output's
    header records of the seed-0 runs it was built from, and what docs/gen.py compares with the
    artifact's runs in repro/papers/manifest.json to tell current outputs from earlier ones."""
    import hashlib

    return hashlib.sha1("\n".join(sorted(set(folders))).encode()).hexdigest()[:12]


def training_note(cfgs, sizes=None) -> str:
    """How much an artifact's runs trained on, for its header: the training images (a limit, or the
    whole training split less the held-out validation images) and the epochs of each kind of run.
    ``sizes`` (a callable of a run config: :func:`repro.data.split_sizes`) gives the images a run
    really trained on and held out, where they are not its limit and ``val_size`` (a folder dataset
    holds out at most a tenth of train/, and has fewer images than a limit may ask for); without
    it, the config's numbers.  A run that trains on a share of each epoch's batches declares it as
    ``method["batches_frac"]``; its epochs are counted as epochs x share (1 epoch on a fifth of the
    batches: 0.2)."""
    def size(c) -> str:
        trained, held = sizes(c) if sizes else (None, c.data.val_size)
        if c.data.train_limit:
            return f"the first {trained if trained is not None else c.data.train_limit:,} images of the training split"
        return f"the training split less {held:,} held-out validation images"

    sizes_ = sorted({size(c) for c in cfgs})
    epochs: dict[str, set[float]] = {}
    for c in cfgs:
        share = float(c.method.get("batches_frac", 1.0))
        epochs.setdefault(c.kind, set()).add(c.train.epochs * min(share, 1.0))
    per_kind = ", ".join(f"{k} {'/'.join(f'{x:g}' for x in sorted(e))}" for k, e in epochs.items())
    return f"{'; '.join(sizes_)}; epochs: {per_kind}" if cfgs else ""


_DATASET_NAMES = {"CIFAR-100": "cifar100", "CIFAR-10": "cifar10", "ImageNet": "imagenet",
                  "Fashion-MNIST": "fashion-mnist"}


def label_paper_datasets(title: str, ours: str) -> str:
    """Mark every dataset a title names that is not ``ours`` as the paper's: "(CIFAR-10)" becomes
    "(paper: CIFAR-10)" when we trained on Fashion-MNIST, "with d-gates on ImageNet: top-1" becomes
    "with d-gates (paper: ImageNet): top-1", and a name elsewhere "paper: CIFAR-10"."""
    pattern = "|".join(re.escape(n) for n in sorted(_DATASET_NAMES, key=len, reverse=True))

    def relabel(m: re.Match) -> str:
        name = m.group("name")
        if _DATASET_NAMES[name] == ours:
            return m.group(0)
        return f" (paper: {name})" if m.group("prep") else f"paper: {name}"

    return re.sub(rf"(?P<prep> (?:on|in|for) )?(?<!paper: )(?<![\w-])(?P<name>{pattern})(?![\w-])", relabel, title)


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
    model: str = ""  # the model(s) the numbers come from
    reference: bool = True  # the paper has published numbers to compare with (a reference CSV)
    verdicts: list = field(default_factory=list)  # the claims as rendered (name, evidence, paper, sign, Verdict, headline, line)

    def heading(self) -> str:
        """``<paper> <artifact>: <title> — ours: <dataset>, <scale> scale``."""
        scale = (context().scale if context() else self.scale.split(" ")[0])
        return (f"{self.paper} {self.artifact}: {label_paper_datasets(self.title, self.dataset)} "
                f"— ours: {self.dataset}, {scale} scale")

    def lines(self) -> list[str]:
        from repro.stats import MIN_SEEDS

        ctx = context()
        seeds = f"{self.seeds} seed{'s' if self.seeds > 1 else ''}"
        level = f"{100 * ctx.level:.4g} %" if ctx is not None else "95 %"
        spread = ("cells: mean ± half-width of the 95 % t-interval over seeds; claims: the mean gap over seeds "
                  f"and its {level} interval counting the seeds and the test images they share" if self.seeds > 1
                  else "± is the 95 % bootstrap interval over test samples (half-width)")
        if self.seeds < MIN_SEEDS:
            spread += (f"; the seed-to-seed spread is {'unknown' if self.seeds == 1 else 'barely known'}, so no claim "
                       f"gets a verdict below {MIN_SEEDS} seeds (--seeds {MIN_SEEDS}, or --seeds auto), except a fixed "
                       f"count such as a FLOPs cut, judged as it is")
        if ctx is not None and ctx.auto:
            spread += f"; {ctx.auto}"
        outlying = ["outlying seeds (shown, not dropped; claims that use them give the verdict without them too): "
                    + "; ".join(f"{name} seed {seed}: validation top-1 {val:.2f} % against its siblings' median "
                                f"{med:.2f} %" for name, seed, val, med in ctx.outliers)] if ctx and ctx.outliers else []
        overrides = ", ".join(ctx.overrides) if ctx and ctx.overrides else "none"
        setting = ("no paper numbers: the comparison is among our own runs" if not self.reference else
                   "the paper's setting: Δ = ours − paper" if ctx is None or ctx.paper_setting else
                   "not the paper's setting: the paper's numbers are shown for reference, no Δ")
        wall = ([f"wall time: {ctx.wall_seconds / 60:.1f} min of training over {ctx.runs} run(s) "
                 f"({'/'.join(map(str, ctx.threads)) or '?'} torch thread(s))"] if ctx and ctx.runs else [])
        model = [f"model: {self.model}"] if self.model else []
        training = [f"training: {ctx.training}"] if ctx and ctx.training else []
        training += [f"run set: {ctx.run_set} (digest of the seed-0 run folders)"] if ctx and ctx.run_set else []
        training += convergence_lines(ctx)
        return [f"scale: {self.scale}", f"dataset: {self.dataset}", *model, f"seeds: {seeds} ({spread})",
                f"overrides: {overrides}", f"comparison: {setting}", f"cost: {self.flops}",
                f"commit: {git_commit()}", *wall, *training, *outlying, *self.notes]

    def header_lines(self) -> list[str]:
        return [self.heading(), *self.lines()]

    def seeds_short(self) -> str:
        ctx = context()
        n = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        return n + (f" ({ctx.auto})" if ctx is not None and ctx.auto else "")

    def summary_lines(self) -> list[str]:
        """What a table's .md says above the table (at most a few short lines): the dataset, scale
        and seeds, whether the paper's numbers are comparable, and the claims' verdicts."""
        scale = context().scale if context() else self.scale.split(" ")[0]
        setting = ("our own runs only (the paper prints no numbers to compare)" if not self.reference else
                   "the paper's setting: Δ = ours − paper" if context() is None or context().paper_setting else
                   "not the paper's setting: the paper's numbers for reference, no Δ")
        first = f"**Ours:** {dataset_name(self.dataset)}, {scale} scale, {self.seeds_short()} · {setting}"
        box = verdict_box(self, headlines=2)
        lines = [first] + ([f"**Claims:** {box[0]}"] + [f"**Headline:** {h}" for h in box[1:]] if box else [])
        lines = [shorten_line(line, MAX_LINE - 1) for line in lines]
        return [line + "\\" for line in lines[:-1]] + lines[-1:]  # one line each (a Markdown hard break)

    def footer_lines(self) -> list[str]:
        """A figure's footer: the provenance a reader needs beside the plot, short (the data CSV
        beside it holds every header line): scale, dataset, network (no argument dicts), seeds,
        training, cost convention, overrides, commit."""
        ctx = context()
        scale = ctx.scale if ctx else self.scale.split(" ")[0]
        overrides = ", ".join(ctx.overrides) if ctx and ctx.overrides else "none"
        parts = [f"{scale} scale", f"dataset: {self.dataset}"]
        parts += [f"model: {model_names(self.model)}"] if self.model else []
        parts += [f"seeds: {self.seeds_short()}"]
        parts += [f"training: {ctx.training}"] if ctx and ctx.training else []
        conv = convergence_lines(ctx)
        parts += [conv[0]] if conv else []
        parts += [f"cost: {self.flops}", f"overrides: {overrides}", f"commit: {git_commit()}"]
        return parts


def convergence_lines(ctx) -> list[str]:
    """The header's convergence lines: the test's outcome (docs/calibration.md), then its numbers."""
    c = ctx.convergence if ctx is not None else None
    if c is None:
        return []
    head = ("convergence: passed (every baseline's validation top-1 moves less than 0.3 points at every exit "
            "when trained twice as long): claims get verdicts" if c.converged else
            f"convergence: {c.reason}: no verdicts")
    return [head, *(f"convergence test: {line}" for line in c.lines)]


def model_names(model: str) -> str:
    """``model`` less its argument dicts: ``msdnet_cifar_5exit {'nChannels': 4, ...}`` ->
    ``msdnet_cifar_5exit``."""
    prev = None
    while prev != model:
        prev, model = model, re.sub(r"\s*\{[^{}]*\}", "", model)
    return re.sub(r"\s+([;,)])", r"\1", re.sub(r"[ \t]+", " ", model)).strip()


def shorten_line(text: str, width: int = MAX_LINE) -> str:
    """``text`` cut to ``width`` characters at a word, with an ellipsis."""
    return text if len(text) <= width else textwrap.shorten(text, width, placeholder=" …")


def wrap_line(text: str, width: int = MAX_LINE, first: str = "", rest: str = "  ") -> list[str]:
    """``first + text`` as lines of at most ``width`` characters, broken at spaces; continuation
    lines start with ``rest`` (a Markdown list item's indent; ``#   `` in a CSV header).  A word
    longer than a line is broken too."""
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False,
                         drop_whitespace=True) or [first.rstrip()]


def join_wrapped(lines: Sequence[str], rest: str = "  ") -> list[str]:
    """:func:`wrap_line` undone: a line starting with ``rest`` continues the one before."""
    out: list[str] = []
    for line in lines:
        if out and line.startswith(rest) and line.strip():
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


def read_header(path) -> list[str]:
    """The header lines of an output file: a .csv's ``# `` lines, an .md's ``- `` items (above or
    below its tables), wrapped lines joined back."""
    text = Path(path).read_text()
    if str(path).endswith(".md"):
        items = [ln for ln in join_wrapped(text.splitlines()) if ln.startswith("- ")]
        return [ln[2:] for ln in items]
    head = [ln[1:] for ln in text.splitlines() if ln.startswith("#")]
    return [ln[1:] if ln.startswith(" ") else ln for ln in join_wrapped(head, "   ")]


def csv_head(lines: Sequence[str]) -> str:
    """``lines`` as a CSV's ``# `` header, each wrapped to :data:`MAX_LINE` characters."""
    return "".join(f"{w}\n" for line in lines for w in wrap_line(line, MAX_LINE, "# ", "#   "))


def _verdict_words(rendered) -> list[tuple[str, str, bool, object]]:
    """(name, verdict word or "", headline, evidence) of each rendered claim."""
    from repro import stats

    out = []
    for name, g, paper, sign, v, headline, _line in rendered:
        if v is None:
            ctx = context()
            g2 = g if isinstance(g, stats.Gap) else stats.fixed(float(g))
            v = stats.verdict(g2, paper, sign, ctx.level if ctx else stats.LEVEL)
        out.append((name, v.word, bool(headline), g))
    return out


def verdict_box(meta: Meta, headlines: int = 3, width: int = 110) -> list[str]:
    """The claims' verdicts in a few short lines (a figure's verdict box, a table's summary): the
    counts ("claims: 3 reproduced, 1 inconclusive"), or "no verdicts: <why>" at smoke scale or
    below MIN_SEEDS seeds; then up to ``headlines`` headline claims with their verdicts.  [] for an
    output without claims."""
    from repro.stats import MIN_SEEDS

    if not meta.verdicts:
        return []
    words = _verdict_words(meta.verdicts)
    n = len(words)
    ctx = context()
    scale = ctx.scale if ctx is not None else meta.scale.split(" ")[0]
    claims = f"{n} claim{'s' if n != 1 else ''}"
    if scale == "smoke":
        return [f"no verdicts: smoke scale, a pipeline check ({claims} not judged)"]
    counts: dict[str, int] = {}
    for _, w, _, _ in words:
        counts[w or "no verdict"] = counts.get(w or "no verdict", 0) + 1
    few = meta.seeds < MIN_SEEDS
    conv = ctx.convergence if ctx is not None else None
    if counts.get("no verdict") == n and conv is not None and not conv.converged and not few:
        why = "not converged" if "converged" in conv.reason else "convergence not tested"
        return [f"no verdicts: {why} (docs/calibration.md); {claims} not judged"]
    if counts.get("no verdict") == n:
        why = (f"{meta.seeds} seed{'s' if meta.seeds != 1 else ''}, a verdict needs {MIN_SEEDS} (--seeds "
               f"{MIN_SEEDS} or --seeds auto)" if few else "no spread or no direction to judge")
        return [f"no verdicts: {why}; {claims} not judged"]
    order = ["reproduced", "smaller than claimed", "contradicted", "inconclusive", "differs", "no verdict"]
    parts = [f"{counts[w]} {w}" for w in sorted(counts, key=lambda w: order.index(w) if w in order else 99)]
    lines = ["claims: " + ", ".join(parts) + (f" (below {MIN_SEEDS} seeds only fixed counts are judged)"
                                              if few and "no verdict" in counts else "")]
    heads = [(name, w) for name, w, h, _ in words if h]
    for name, w in heads[:headlines]:
        word = w or "no verdict"
        lines.append(textwrap.shorten(name, max(20, width - len(word) - 4), placeholder=" …") + f": {word}")
    if len(heads) > headlines:
        lines.append(f"… {len(heads) - headlines} more headline claims in the .claims.csv")
    return lines


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


def _pm(s: object, digits: int) -> str:
    """`` ± spread`` for display: none for a missing spread or one of exactly 0 (a fixed quantity,
    such as a FLOPs count, has no ±), ``± <0.01`` for one that rounds to zero."""
    if not isinstance(s, float) or math.isnan(s) or s == 0:
        return ""
    tiny = 0.5 * 10 ** -digits
    return f" ± <{10 ** -digits:.{digits}f}" if abs(s) < tiny else f" ± {_fmt(s, digits)}"


def to_display(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Merge ``x`` and ``x ±`` columns into "value ± spread" strings for Markdown/LaTeX."""
    shown = {}
    for c in df.columns:
        if str(c).endswith(" ±"):
            continue
        if f"{c} ±" in df.columns:
            shown[c] = [_fmt(v, digits) + (_pm(s, digits) if _fmt(v, digits) else "") for v, s in zip(df[c], df[f"{c} ±"])]
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
        if groups and max(map(len, shown[[first, *trial]].to_markdown(index=False).splitlines())) <= width:
            groups[-1] = trial
        else:
            groups.append([c])
    return [shown[[first, *g]].to_markdown(index=False) for g in groups] or [shown.to_markdown(index=False)]


def _wrap_source(text: str, width: int = MAX_LINE) -> str:
    """LaTeX source with no line over ``width`` characters: a long line is broken at spaces (a
    newline inside a paragraph or a tabular row is a space to TeX)."""
    out = []
    for line in text.split("\n"):
        out += wrap_line(line, width, "", "  ") if len(line) > width else [line]
    return "\n".join(out)


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
    return _wrap_source("\n".join(lines))


def table_markdown(shown: pd.DataFrame, meta: Meta) -> str:
    """A table's .md: the title and a few short lines (ours: dataset, scale, seeds; the claims'
    verdicts) above the table, every header line (``- key: value``, wrapped under
    :data:`MAX_LINE` characters) in a ``<details>`` block below it."""
    md = [f"# {shorten_line(meta.heading(), MAX_LINE - 2)}", "", *meta.summary_lines()]
    for table in markdown_groups(shown):
        md += ["", table]
    md += ["", "<details><summary>Provenance, notes and every claim</summary>", ""]
    md += [w for line in meta.lines() for w in wrap_line(line, MAX_LINE, "- ", "  ")]
    md += ["", "</details>"]
    return "\n".join(md) + "\n"


def write_table(df: pd.DataFrame, meta: Meta, out_dir: Path, digits: int = 2) -> list[Path]:
    """Write tables/<paper>_<artifact>.{md,csv,tex}; returns the paths."""
    out_dir = Path(out_dir)
    stem = out_dir / f"{meta.paper}_{meta.artifact}"
    df = without_delta(df)
    shown = to_display(df, digits)
    atomic_write_text(stem.with_suffix(".md"), table_markdown(shown, meta))
    write_csv(df, meta, stem.with_suffix(".csv"))
    atomic_write_text(stem.with_suffix(".tex"), _latex(shown, meta.heading(), meta.lines()))
    return [stem.with_suffix(s) for s in (".md", ".csv", ".tex")]


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode())


def write_csv(df: pd.DataFrame, meta: Meta, path: Path) -> Path:
    """``df`` as CSV under ``#`` lines of the header (read back with :func:`read_table_csv`; the
    lines with :func:`read_header`)."""
    head = csv_head(meta.header_lines())
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
    kind: str = "line"  # line | points | paper | vline (a cost without an accuracy: a vertical line at x[0])
    color: str | None = None  # None: the next colour of the axes' cycle


def dataset_name(dataset: str) -> str:
    """A dataset's printed name: ``cifar100`` -> ``CIFAR-100`` (other keys as they are)."""
    return {key: name for name, key in _DATASET_NAMES.items()}.get(dataset, dataset)


def paper_label(dataset: str, what: str = "") -> str:
    """The label of the paper's numbers in a figure: ``paper, CIFAR-100`` (``: <what>`` after it);
    ``dataset`` is the paper's dataset, a key (``cifar100``) or a printed name."""
    return f"paper, {dataset_name(dataset)}" + (f": {what}" if what else "")


def plot_series(ax, series: Sequence[Series], logx: bool = False) -> list[str]:
    """Draw ``series`` on ``ax``: a line with its band (``yerr``; NaN entries leave a gap), our
    points with error bars, the paper's points as stars (dashed through several), a cost alone as a
    dotted vertical line (``vline``).  Returns the labels of the lines that collapse to one
    point (every x and y equal)."""
    collapsed = []
    for s in series:
        kw = {"color": s.color} if s.color else {}
        if s.kind == "line":
            (line,) = ax.plot(s.x, s.y, "-o", ms=3, label=s.label, **kw)
            err = [math.nan if e is None else float(e) for e in s.yerr] if s.yerr is not None else []
            if any(not math.isnan(e) for e in err):
                ax.fill_between(s.x, [a - e for a, e in zip(s.y, err)], [a + e for a, e in zip(s.y, err)],
                                alpha=0.2, color=line.get_color(), lw=0)
            if len(s.x) > 1 and len(set(zip(s.x, s.y))) == 1:
                collapsed.append(s.label)
                if err and not math.isnan(err[0]):  # a band of zero width: its spread as an error bar
                    ax.errorbar(s.x[:1], s.y[:1], yerr=err[:1], fmt="none", capsize=3, color=line.get_color())
        elif s.kind == "points":
            ax.errorbar(s.x, s.y, yerr=s.yerr, fmt="o", capsize=3, label=s.label, **kw)
        elif s.kind == "vline":
            ax.axvline(s.x[0], ls=":", lw=1.2, label=s.label, **({"color": "0.3"} | kw))
        elif len(s.x) == 1:
            ax.plot(s.x, s.y, "*", ms=11, label=s.label, **({"color": "k"} | kw))
        else:
            ax.plot(s.x, s.y, "--*", ms=8, lw=1, label=s.label, **kw)
    if logx:
        ax.set_xscale("log")
    return collapsed


def place_legend(ax, where: str = "best", fontsize: float = 7) -> None:
    """A legend that does not cover the curves: ``best`` (matplotlib's least-covering spot inside
    the axes), ``right`` (outside, right of the axes) or ``below`` (outside, under the x label)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if where == "right":  # labels wrapped: a long one must not push the panels off the figure
        ax.legend(handles, [textwrap.fill(t, 30) for t in labels], fontsize=fontsize, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), framealpha=0.8)
    elif where == "below":
        legend_below(ax, handles, labels, fontsize=fontsize, ncol=2, framealpha=0.8)
    else:  # labels wrapped to the panel's width (less the handles)
        chars = max(24, int(ax.get_position().width * ax.figure.get_size_inches()[0] * 72 / (0.6 * fontsize)) - 12)
        ax.legend(handles, [textwrap.fill(t, chars) for t in labels], fontsize=fontsize, loc="best", framealpha=0.8)


def legend_below(ax, handles, labels, fontsize: float = 7, **kw):
    """A legend centred under the axes, below its tick labels and x label (whatever their size:
    the gap is set again just before the final layout, :func:`save_figure`)."""
    legend = ax.legend(handles, labels, fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, 0), **kw)

    def pad() -> None:
        fig = ax.figure
        below_px = ax.bbox.y0 - ax.xaxis.get_tightbbox(_renderer(fig)).y0
        legend.borderaxespad = (max(below_px, 0) * 72 / fig.dpi + 4) / fontsize

    pad()
    _before_layout(ax.figure).append(pad)
    return legend


def _before_layout(fig) -> list:
    """Callbacks :func:`save_figure` runs just before the final layout."""
    if not hasattr(fig, "_repro_before_layout"):
        fig._repro_before_layout = []
    return fig._repro_before_layout


def note_on_axes(ax, text: str) -> None:
    """A note the reader must see (a curve collapsed to one point, a paper curve not
    transcribed): in the axes' title slot, above the data, so it never covers a curve."""
    old = ax.get_title()
    width = max(30, int(ax.get_position().width * ax.figure.get_size_inches()[0] * 15))
    ax.set_title(textwrap.fill(text if not old else f"{old}\n{text}", width), fontsize=7.5, color="darkred")


def label_points(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], fontsize: float = 6) -> None:
    """Label points so that no two labels overlap (adjustText-like, by hand): each label takes the
    first of a ring of offsets around its point, nearest first, whose box overlaps no label placed
    so far and no other point; a label set away from its point gets a thin leader line.  Placed
    again after the final layout (:func:`save_figure`), when the axes have their final size."""
    pts = [(float(x), float(y), str(t)) for x, y, t in zip(xs, ys, labels)]
    made: list = []

    def place() -> None:
        from matplotlib.transforms import Bbox

        for a in made:
            a.remove()
        made.clear()
        fig = ax.figure
        renderer = _renderer(fig)
        scale = fig.dpi / 72  # points -> pixels
        disp = ax.transData.transform([(x, y) for x, y, _ in pts]) if pts else []
        taken = [Bbox.from_extents(px - 3 * scale, py - 3 * scale, px + 3 * scale, py + 3 * scale) for px, py in disp]
        rings = [(dx * r, dy * r) for r in (1, 2.2, 3.6, 5.2)
                 for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.4), (0, -1.4), (1.5, 0), (-1.5, 0))]
        for i, ((px, py), (x, y, text)) in enumerate(zip(disp, pts)):
            probe = ax.text(0, 0, text, fontsize=fontsize)
            ext = probe.get_window_extent(renderer)
            probe.remove()
            w, h = ext.width, ext.height
            best = None
            for inside in (True, False):  # inside the axes if it can be
                for dx, dy in rings:
                    ox, oy = dx * 4 * scale, dy * 4 * scale  # 4 pt steps
                    x0 = px + ox if dx > 0 else (px + ox - w if dx < 0 else px - w / 2)
                    y0 = py + oy if dy > 0 else (py + oy - h if dy < 0 else py - h / 2)
                    box = Bbox.from_bounds(x0, y0, w, h)
                    if inside and not (ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1
                                       and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1):
                        continue
                    if not any(box.overlaps(b) for j, b in enumerate(taken) if j != i):
                        best = (x0, y0, box, abs(dx) + abs(dy) > 2)
                        break
                if best is not None:
                    break
            if best is None:  # crowded everywhere: the nearest spot
                dx, dy = rings[0]
                best = (px + 4 * scale, py + 4 * scale, Bbox.from_bounds(px + 4 * scale, py + 4 * scale, w, h), False)
            x0, y0, box, far = best
            taken.append(box)
            tx, ty = ax.transData.inverted().transform((x0, y0))
            arrow = {"arrowstyle": "-", "lw": 0.4, "color": "0.5", "shrinkA": 0, "shrinkB": 2} if far else None
            made.append(ax.annotate(text, (x, y), xytext=(tx, ty), textcoords="data", fontsize=fontsize,
                                    ha="left", va="bottom", arrowprops=arrow, annotation_clip=False))

    place()
    _after_layout(ax.figure).append(place)


def sweep_spread(sweeps: Sequence[pd.DataFrame], tests: Sequence[tuple], score) -> tuple[list[float], list[float], str]:
    """Accuracy (%) along a budgeted sweep (:func:`repro.exits.budgeted_sweep`, one per seed) and its
    band, by the one spread rule: one seed, the half-width of the 95 % bootstrap interval over test
    samples at every budget; several, the half-width of the 95 % t-interval over seeds.  ``tests``:
    one (test logits exits x N x C, test labels) per seed.  Returns (mean, spread, what the spread is)."""
    import torch

    from repro.exits import SCORES, bootstrap_ci, exit_index_batch, mean_and_spread

    fn = SCORES[score] if isinstance(score, str) else score
    accs = [s["acc"].tolist() for s in sweeps]
    if len(sweeps) > 1:
        pairs = [mean_and_spread(col) for col in zip(*accs)]
        return [m for m, _ in pairs], [e for _, e in pairs], "half-width of the 95 % t-interval over seeds"
    (logits, labels), sweep = tests[0], sweeps[0]
    idx = exit_index_batch(fn(logits), torch.tensor(sweep["thresholds"].tolist(), dtype=torch.float64))
    correct = logits.argmax(-1).gather(0, idx) == labels  # budgets x N: right where each sample exits
    spread = [(hi - lo) / 2 for lo, hi in map(bootstrap_ci, correct)]
    return accs[0], spread, "half-width of the 95 % bootstrap interval over test samples (one seed)"


def _renderer(fig):
    """The figure's Agg renderer (a figure made without pyplot gets an Agg canvas)."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def _after_layout(fig) -> list:
    """Callbacks :func:`save_figure` runs once the figure has its final layout."""
    if not hasattr(fig, "_repro_after_layout"):
        fig._repro_after_layout = []
    return fig._repro_after_layout


def drawn_texts(fig) -> list[tuple[str, object]]:
    """Every text a reader sees on ``fig`` after a draw, as (a short name, its window extent):
    the figure's texts (title, verdict box, footer), and per visible axes its titles, axis labels,
    the tick labels it draws, offset texts, annotations and texts, and its legend (as one box)."""
    renderer = _renderer(fig)
    fig.draw_without_rendering()
    out: list[tuple[str, object]] = []

    def add(name: str, t) -> None:
        if t is not None and t.get_visible() and str(t.get_text()).strip():
            out.append((f"{name} {str(t.get_text()).strip()[:40]!r}", t.get_window_extent(renderer)))

    for t in dict.fromkeys([fig._suptitle, fig._supxlabel, fig._supylabel, *fig.texts]):  # the suptitle is a text too
        add(getattr(t, "_repro_role", "title" if t is fig._suptitle else "figure text"), t)
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison and not ax.texts:
            continue
        where = f"axes {i + 1}"
        for t in (ax.title, ax._left_title, ax._right_title):
            add(f"{where} title", t)
        for axis, xy in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            if not ax.axison or not axis.get_visible():
                continue
            add(f"{where} {xy} label", axis.label)
            add(f"{where} {xy} offset", axis.offsetText)
            for tick in axis._update_ticks():
                add(f"{where} {xy} tick", tick.label1)
                add(f"{where} {xy} tick", tick.label2)
        for t in ax.texts:
            add(f"{where} text", t)
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            out.append((f"{where} legend", legend.get_window_extent(renderer)))
    for legend in fig.legends:
        out.append(("figure legend", legend.get_window_extent(renderer)))
    return out


def text_problems(fig, tolerance: float = 1.0) -> list[str]:
    """The texts of ``fig`` (:func:`drawn_texts`) that overlap another or leave the canvas, one
    line each; [] for a clean figure.  Boxes are shrunk by ``tolerance`` pixels (texts that touch
    are not overlapping)."""
    from matplotlib.transforms import Bbox

    width, height = fig.get_size_inches() * fig.dpi
    items = [(n, Bbox.from_extents(b.x0 + tolerance, b.y0 + tolerance, b.x1 - tolerance, b.y1 - tolerance))
             for n, b in drawn_texts(fig) if b.width > 0 and b.height > 0]
    problems = [f"{n} leaves the canvas ({b.x0:.0f}..{b.x1:.0f} x {b.y0:.0f}..{b.y1:.0f} of {width:.0f} x {height:.0f} px)"
                for n, b in items if b.x0 < 0 or b.y0 < 0 or b.x1 > width or b.y1 > height]
    for i, (a, ba) in enumerate(items):
        for b, bb in items[i + 1:]:
            if ba.overlaps(bb):
                problems.append(f"{a} overlaps {b}")
    return problems


_ON_SAVE: list = []  # callables (figure, meta) run by save_figure once the figure is laid out


@contextlib.contextmanager
def checking_layout():
    """While it is open, every figure :func:`save_figure` writes is checked by :func:`text_problems`:
    yields a dict, ``<paper>_<artifact>`` -> its problems."""
    found: dict[str, list[str]] = {}

    def check(fig, meta) -> None:
        found[f"{meta.paper}_{meta.artifact}"] = text_problems(fig)

    _ON_SAVE.append(check)
    try:
        yield found
    finally:
        _ON_SAVE.remove(check)


def axes_lines(fig) -> list[str]:
    """What every panel of ``fig`` plots, for the data CSV's header: ``axes <n> (<title>): x = ...;
    y = ...; legend: a | b`` (colour bars and twin axes included)."""
    flat = lambda t: " ".join(str(t).split())  # noqa: E731
    out = []
    for i, ax in enumerate(fig.get_axes()):
        x, y = flat(ax.get_xlabel()), flat(ax.get_ylabel())
        if not (x or y):
            continue
        title = flat(ax.get_title())
        legend = ax.get_legend()
        names = " | ".join(flat(t.get_text()) for t in legend.get_texts()) if legend is not None else ""
        out.append(f"axes {i + 1}" + (f" ({title})" if title else "") + f": x = {x or '-'}; y = {y or '-'}"
                   + (f"; legend: {names}" if names else ""))
    return out


def claim(name: str, evidence, paper: float | None = None, sign: int | None = None, headline: bool = False) -> str:
    """A claim's one line (:func:`repro.stats.claim_line`): ours with its interval, the paper's
    value, and the verdict (reproduced / contradicted / smaller than claimed / inconclusive, with
    the magnitude against the paper or the detectable gap and the seeds the paper's gap needs); no
    verdict below 3 seeds or at smoke scale.  An outlying seed of a run the claim compares (the
    build context's ``outliers``) is named, with the verdict without it.  The verdict is recorded
    in the build context (what ``--seeds auto`` and the claims files read)."""
    from repro import stats

    if sign not in (None, 1, -1):
        raise ValueError(f"a claim's sign is +1, -1 or None, got {sign!r}")
    g = evidence if isinstance(evidence, stats.Gap) else stats.fixed(float(evidence))
    ctx = context()
    level = ctx.level if ctx is not None else stats.LEVEL
    scale = ctx.scale if ctx is not None else ""
    line, v = stats.claim_line(name, g, paper, sign, level, scale)
    if scale == "smoke":  # a pipeline check: no verdict, whatever the numbers
        v = stats.Verdict("", v.lo, v.hi, v.level, "smoke scale", v.detectable)
    why = ""
    if (scale != "smoke" and ctx is not None and ctx.convergence is not None and not ctx.convergence.converged
            and g.kind != "fixed"):
        # an unconverged protocol: no verdict, whatever its numbers (docs/calibration.md)
        why = "not converged" if "converged" in ctx.convergence.reason else "convergence not tested"
        v = stats.Verdict("", v.lo, v.hi, v.level, why, v.detectable)
        line = _without_verdict(line) + f" (no verdict: {why})"
    if ctx is not None and scale != "smoke":
        drop = sorted({s for run, s, *_ in ctx.outliers if g.arms and any(run in side for side in g.arms)})
        if drop:
            alt = stats.without_seeds(g, drop)
            seeds = ", ".join(map(str, drop))
            if alt is None:
                line += f"; uses outlying seed {seeds}"
            else:
                alt_line, _ = stats.claim_line("", alt, paper, sign, level, scale)
                if why:  # the protocol withholds that verdict too
                    alt_line = _without_verdict(alt_line) + f" (no verdict: {why})"
                line += f"; uses outlying seed {seeds} (without it, {alt.seeds} seeds:{alt_line[1:]})"
    if ctx is not None:
        ctx.verdicts.append((name, g, paper, sign, v, headline, line))
    return line


def _without_verdict(line: str) -> str:
    """A claim line without its last parenthesised verdict (kept: ours, the interval, the paper's)."""
    cut = line.rfind(" (")
    return line[:cut] if cut > 0 and line.endswith(")") else line


def _fit_lines(artist, lines: Sequence[str], chars: int, max_px: float, renderer) -> str:
    """:func:`_fit_text` for several lines: each wrapped on its own, at one width."""
    while True:
        wrapped = "\n".join(textwrap.fill(line, max(chars, 20), subsequent_indent="  ") for line in lines)
        artist.set_text(wrapped)
        width = artist.get_window_extent(renderer).width
        if width <= max_px or chars <= 20:
            return wrapped
        chars = min(chars - 1, int(chars * max_px / width))


def _fit_text(artist, text: str, chars: int, max_px: float, renderer) -> str:
    """Wrap ``text`` at ``chars`` characters, narrower until the drawn ``artist`` fits ``max_px``."""
    while True:
        wrapped = textwrap.fill(text, max(chars, 20))
        artist.set_text(wrapped)
        width = artist.get_window_extent(renderer).width
        if width <= max_px or chars <= 20:
            return wrapped
        chars = min(chars - 1, int(chars * max_px / width))


def save_figure(fig, meta: Meta, out_dir: Path, dpi: int = 150, data: pd.DataFrame | None = None,
                titled: bool = True) -> list[Path]:
    """Finish and save a matplotlib figure as figures/<paper>_<artifact>.{png,pdf} (and ``data``
    as .csv, its header naming what every panel's axes count), atomically, and close it.  With
    ``titled`` the core writes the title (naming the dataset and scale used) and a footer of the
    header lines, both wrapped until they fit the figure's width whatever its size."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{meta.paper}_{meta.artifact}"
    for first in _before_layout(fig):
        first()
    if titled:
        width_in, height_in = fig.get_size_inches()
        renderer = _renderer(fig)
        width_px = width_in * fig.dpi
        pad = 0.04 * fig.dpi  # 0.04 in between the stacked texts
        title = fig.suptitle("", fontsize=9, y=1 - 0.04 / height_in, va="top")
        _fit_text(title, meta.heading(), int(width_in * 13), 0.96 * width_px, renderer)
        top_px = title.get_window_extent(renderer).y0 - pad
        box = verdict_box(meta)
        if box:  # the claims' verdicts under the title, in a box of their own
            settled = any(w in box[0] for w in ("reproduced", "contradicted", "smaller than claimed"))
            verdicts = fig.text(0.5, top_px / (height_in * fig.dpi), "", fontsize=7.5, ha="center", va="top",
                                color="0.1", bbox={"boxstyle": "round,pad=0.3", "fc": "#eef4ee" if settled else "#f4f4f4",
                                                   "ec": "0.6", "lw": 0.6})
            verdicts._repro_role = "verdicts"
            _fit_lines(verdicts, box, int(width_in * 16), 0.94 * width_px, renderer)
            top_px = verdicts.get_window_extent(renderer).y0 - 3 * pad
        footer = fig.text(0.01, 0.005, "", fontsize=FOOTER_PT, color="0.3", va="bottom")
        footer._repro_role = "footer"
        _fit_text(footer, " | ".join(meta.footer_lines()), int(width_in * 15), 0.97 * width_px, renderer)
        bottom = (footer.get_window_extent(renderer).height / fig.dpi + 0.06) / height_in
        title.set_in_layout(False)  # the rect leaves room for the title and the verdicts already
        fig.tight_layout(rect=(0, bottom, 1, top_px / (height_in * fig.dpi)))
        title.set_in_layout(True)
    for again in _after_layout(fig):
        again()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        buf = io.BytesIO()
        fig.savefig(buf, dpi=dpi, format=p.suffix[1:])
        atomic_write_bytes(p, buf.getvalue())
    axes = axes_lines(fig)
    for check in _ON_SAVE:
        check(fig, meta)
    plt.close(fig)
    if data is not None:
        csv = stem.with_suffix(".csv")
        head = csv_head([*meta.header_lines(), *axes])
        atomic_write_text(csv, head + data.to_csv(index=False))
        paths.append(csv)
    return paths


def write_figure(series: Sequence[Series], meta: Meta, out_dir: Path, xlabel: str, ylabel: str,
                 logx: bool = False, data: pd.DataFrame | None = None, *, paper: Sequence[Series] = (),
                 paper_axes: tuple[str, str] | None = None, paper_title: str = "", legend: str = "best",
                 note: str = "", integer_x: bool = False, title: str = "", paper_sharex: bool = False,
                 collapsed: str = "{labels}: one point (every setting gives the same cost and accuracy "
                                  "at this scale)") -> list[Path]:
    """Write figures/<paper>_<artifact>.{png,pdf}: our curves (with their bands) and points, and
    the paper's (``paper``): on our axes, or with ``paper_axes`` (x label, y label) in a panel of
    their own, right of ours, when the paper counts in other units or on another dataset
    (``paper_sharex``: its x axis is ours, when only the y values are of another kind).
    ``legend``: see :func:`place_legend`; ``note`` and a line collapsed to one point
    (``collapsed``, with ``{labels}`` and ``{n}`` filled in) are written above the data
    (:func:`note_on_axes`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    own = bool(paper) and paper_axes is not None
    wide = 6.4 + (1.9 if legend == "right" else 0)
    if own:
        fig, (ax, pax) = plt.subplots(1, 2, figsize=(wide + 4.2, 4.6), sharex=paper_sharex,
                                      gridspec_kw={"width_ratios": [wide - 1.2, 3.4]})
    else:
        fig, ax = plt.subplots(figsize=(wide, 4.6))
    gone = plot_series(ax, [*series, *(() if own else paper)], logx)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if integer_x:  # epochs and the like: whole-number ticks, at every value when there are few
        xs = sorted({int(round(float(x))) for s in series for x in s.x})
        if 0 < len(xs) <= 12:
            ax.set_xticks(xs)
            ax.set_xlim(xs[0] - 0.5, xs[-1] + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title, fontsize=9)
    if gone:
        note_on_axes(ax, collapsed.format(labels=", ".join(gone), n=len(gone)))
    if note:
        note_on_axes(ax, note)
    place_legend(ax, legend)
    if own:
        plot_series(pax, paper)
        pax.margins(0.12)  # a lone star off the frame
        if paper_sharex:
            pax.tick_params(labelbottom=True)
        pax.set_xlabel(paper_axes[0])
        pax.set_ylabel(paper_axes[1])
        chars = int(3.4 * 72 / (0.55 * 9))  # the panel's width, 9 pt
        pax.set_title(textwrap.fill(paper_title or "the paper's numbers (own axes: other units or dataset)", chars),
                      fontsize=9)
        pax.grid(alpha=0.3)
        place_legend(pax, "best", fontsize=6.5)
    return save_figure(fig, meta, out_dir, data=data)


# --------------------------------------------------------------------------- what a build returns


@dataclass
class Claim:
    """A gain the paper claims and ours measured: ``evidence`` is a :class:`repro.stats.Gap` (a gap
    between two of our arms with its per-image evidence: :func:`repro.exits.gap_with_spread`; one
    value per seed: :func:`repro.stats.seeds_evidence`) or a number (a fixed quantity, e.g. a FLOPs
    count); the core renders it as one verdict line (:func:`claim`).  ``headline``: one of the
    paper's central claims (``--seeds auto`` adds seeds until every headline claim is settled)."""
    name: str
    evidence: object
    paper: float | None = None  # the paper's gap, from its reference CSV; None: the paper gives none
    sign: int | None = None      # +1/-1: the direction the paper claims where it prints no number
    headline: bool = False

    @property
    def ours(self) -> float:
        return float(getattr(self.evidence, "gap", self.evidence))

    def line(self) -> str:
        return claim(self.name, self.evidence, self.paper, self.sign, self.headline)


@dataclass
class Table:
    """A table as data; the core adds the header, the paper's numbers, Δ where allowed, the claims'
    verdicts, and writes .md/.csv/.tex (:func:`write_outputs`).

    ``ours`` is long (row, column, value and optionally spread); the core sets the paper's numbers
    beside it from ``repro/reference/<paper>.csv`` at (``reference`` or the artifact's name, row,
    column), or from ``reference`` itself when it is a long DataFrame (a paper table keyed
    otherwise).  ``frame`` is a finished wide table instead (no paper columns are added).
    """
    title: str                       # what it shows; a paper dataset named here is relabelled "paper: ..."
    dataset: str                     # the dataset our numbers come from
    model: str                       # the model(s) they come from
    cost: str                        # the cost convention (FLOPs counter) of every cost column
    ours: pd.DataFrame | Sequence[dict] | None = None
    rows: Sequence[str] | None = None
    columns: Sequence[str] | None = None
    labels: dict[str, str] | None = None
    reference: str | pd.DataFrame | bool | None = None  # False: the paper prints nothing to set beside ours
    frame: pd.DataFrame | None = None
    notes: Sequence[str] = ()
    claims: Sequence[Claim] = ()
    digits: int = 2
    name: str = ""                   # several tables of one artifact: <paper>_<artifact>_<name>
    column_names: dict[str, str] | None = None  # a column key -> its name in the outputs (a cost by its unit: "mmacs")


@dataclass
class Figure:
    """A figure as data: our ``series`` (with their bands) and the paper's (``paper``), which the
    core draws (:func:`write_figure`), or ``draw``, a function returning a matplotlib figure of the
    build's own making; either way the core titles it, adds the footer and writes .png/.pdf and
    ``data`` as .csv."""
    title: str
    dataset: str
    model: str
    cost: str
    series: Sequence[Series] = ()
    xlabel: str = ""
    ylabel: str = ""
    data: pd.DataFrame | None = None
    paper: Sequence[Series] = ()
    paper_axes: tuple[str, str] | None = None
    paper_title: str = ""
    paper_sharex: bool = False
    legend: str = "best"
    note: str = ""
    integer_x: bool = False
    logx: bool = False
    panel_title: str = ""
    collapsed: str = ""              # the note for curves collapsed to one point ({labels}, {n}); "" the core's
    draw: object = None              # Callable[[], matplotlib.figure.Figure]
    dpi: int = 150
    notes: Sequence[str] = ()
    claims: Sequence[Claim] = ()
    name: str = ""


SCALE_NOTES = {"paper": "paper scale",
               "quick": "quick scale (small models, a few epochs on a CPU: not the paper's setting)",
               "smoke": "smoke scale (a few hundred images, 1 epoch: a pipeline check, the numbers mean nothing)"}


def scale_note(scale: str) -> str:
    """The header's scale line; at paper scale with an override that changes numbers it says so."""
    ctx = context()
    if scale == "paper" and ctx is not None and not ctx.paper_setting:
        return "paper scale, with overrides (not the paper's setting)"
    note = SCALE_NOTES.get(scale, f"{scale} scale")
    epochs = [o.split()[1] for o in (ctx.overrides if ctx is not None else ()) if o.startswith("--epochs ")]
    if epochs:  # the scale's own schedule is not what trained: say what did
        note = note.replace("1 epoch", f"{epochs[0]} epoch{'s' * (epochs[0] != '1')} (--epochs)")
        note = note.replace("a few epochs", f"{epochs[0]} epoch{'s' * (epochs[0] != '1')} (--epochs)")
    return note


def meta_for(out: Table | Figure, paper: str, artifact: str, scale: str, seeds: int) -> Meta:
    """The header of a build's output: the core's lines (scale, seeds, overrides, commit, ...) and
    the output's own (dataset, model, cost, notes, claim verdicts)."""
    name = f"{artifact}_{out.name}" if out.name else artifact
    notes = [*out.notes, *(c.line() for c in out.claims)]
    from repro.reference_data import available

    return Meta(paper, name, out.title, scale_note(scale), out.dataset, seeds, out.cost, notes, model=out.model,
                reference=paper in available())


def write_outputs(built, paper: str, artifact: str, request, settings) -> list[Path]:
    """Write what an artifact's build returned (a :class:`Table` or :class:`Figure`, or a list of
    them) under ``settings.tables_dir`` / ``settings.figures_dir``; returns the paths written."""
    items = built if isinstance(built, (list, tuple)) else [built]
    paths: list[Path] = []
    for out in items:
        if not isinstance(out, (Table, Figure)):
            raise TypeError(f"{paper} {artifact}: a build returns Table or Figure objects, got {type(out).__name__}")
        ctx = context()
        before = len(ctx.verdicts) if ctx is not None else 0
        meta = meta_for(out, paper, artifact, request.scale, request.seeds)
        rendered = ctx.verdicts[before:] if ctx is not None else [
            (c.name, c.evidence, c.paper, c.sign, None, c.headline, c.line()) for c in out.claims]
        meta.verdicts = list(rendered)
        if out.claims:
            out_dir = settings.tables_dir if isinstance(out, Table) else settings.figures_dir
            paths += write_claims(rendered, meta, Path(out_dir))
        if isinstance(out, Table):
            if out.frame is not None:
                df = out.frame
            else:
                from repro.reference_data import available

                ours = out.ours if isinstance(out.ours, pd.DataFrame) else pd.DataFrame(list(out.ours or []))
                none = out.reference is False or (out.reference is None and paper not in available())
                ref = (pd.DataFrame(columns=["row", "column", "value"]) if none else
                       out.reference if isinstance(out.reference, pd.DataFrame) else None)
                key = out.reference if isinstance(out.reference, str) and out.reference else artifact
                df = beside_paper(ours, paper, key, out.rows, out.columns, out.labels, reference=ref)
                # a column the paper gives no number for (in any row) gets no paper or Δ column
                empty = {c for c in out.columns or dict.fromkeys(ours["column"])
                         if none or df[f"{c} paper"].isna().all()}
                df = df[[c for c in df.columns if not any(str(c) in (f"{e} paper", f"{e} Δ") for e in empty)]]
            if out.column_names:
                df = df.rename(columns=lambda c: rename_column(str(c), out.column_names))
            paths += write_table(df, meta, settings.tables_dir, digits=out.digits)
        elif isinstance(out, Figure):
            if out.draw is not None:
                paths += save_figure(out.draw(), meta, settings.figures_dir, dpi=out.dpi, data=out.data)
            else:
                paths += write_figure(out.series, meta, settings.figures_dir, out.xlabel, out.ylabel, out.logx,
                                      out.data, paper=out.paper, paper_axes=out.paper_axes,
                                      paper_title=out.paper_title, legend=out.legend, note=out.note,
                                      integer_x=out.integer_x, title=out.panel_title, paper_sharex=out.paper_sharex,
                                      **({"collapsed": out.collapsed} if out.collapsed else {}))
    return paths


def rename_column(column: str, names: dict[str, str]) -> str:
    """A wide table's column under its output name: ``mflops``, ``mflops ±``, ``mflops paper`` and
    ``mflops Δ`` become ``mmacs``, ... with ``{"mflops": "mmacs"}``."""
    for key, name in names.items():
        for suffix in ("", " ±", " paper", " Δ"):
            if column == key + suffix:
                return name + suffix
    return column


# --------------------------------------------------------------------------- the claims' files

CLAIM_COLUMNS = ["claim", "headline", "kind", "seeds", "per_seed_gaps", "gap", "lo", "hi", "level", "paper",
                 "direction", "verdict", "detail", "detectable_gap", "seeds_needed", "line"]


def claims_frame(rendered) -> pd.DataFrame:
    """One row per claim as rendered (name, evidence, paper, sign, verdict, headline, line): what
    ``<paper>_<artifact>.claims.csv`` holds and ``repro claims`` reads."""
    from repro import stats

    rows = []
    for name, g, paper, sign, v, headline, line in rendered:
        g = g if isinstance(g, stats.Gap) else stats.fixed(float(g))
        ctx = context()
        v = v or stats.verdict(g, paper, sign, ctx.level if ctx else stats.LEVEL)
        has_p = paper is not None and not (isinstance(paper, float) and math.isnan(paper))
        rows.append({"claim": name, "headline": bool(headline), "kind": g.kind, "seeds": g.seeds,
                     "per_seed_gaps": ";".join(f"{x:.4f}" for x in g.per_seed), "gap": round(g.gap, 6),
                     "lo": round(v.lo, 6), "hi": round(v.hi, 6), "level": v.level,
                     "paper": round(float(paper), 6) if has_p else None,
                     "direction": (1 if paper > 0 else -1) if has_p and paper != 0 else sign,
                     "verdict": v.word or "no verdict", "detail": v.detail,
                     "detectable_gap": None if math.isnan(v.detectable) else round(v.detectable, 4),
                     "seeds_needed": v.seeds_needed, "line": line})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def write_claims(rendered, meta: Meta, out_dir: Path) -> list[Path]:
    """``<paper>_<artifact>.claims.csv`` (every claim with its per-seed gaps, interval, verdict and
    detectable gap, under the output's header) and, where a claim has per-image evidence,
    ``<paper>_<artifact>.evidence.npz`` (each arm's per-test-image scores per seed: packed bits, about
    1.3 kB per run and exit), from which anyone can redo the statistics (``repro claims --recompute``)."""
    from repro import stats

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{meta.paper}_{meta.artifact}"
    csv = stem.with_name(stem.name + ".claims.csv")
    head = csv_head(meta.header_lines())
    atomic_write_text(csv, head + claims_frame(rendered).to_csv(index=False))
    paths = [csv]
    with_evidence = [(name, g) for name, g, *_ in rendered if isinstance(g, stats.Gap) and g.a is not None]
    if with_evidence:
        npz = stem.with_name(stem.name + ".evidence.npz")
        atomic_write_bytes(npz, stats.evidence_bytes(with_evidence))
        paths.append(npz)
    return paths
