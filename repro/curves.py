"""``repro curves <paper> <artifact>``: every run's training curves in one figure per artifact.

Each run folder's ``metrics.csv`` (one row per epoch of each phase, written by
:func:`repro.train.append_metrics`) is drawn in three panels: the training loss, the validation
top-1 (every ``val_*`` accuracy column a paper logs: ``val_acc``, ``val_acc_exitK``,
``val_acc_gateK``, ``val_top1`` ...; one line per exit, later exits darker) and the learning
rate, against the epoch counted over the run's phases in order.  A run's seeds share its colour.
The figure goes to ``<out-dir>/figures/<scale>/<paper>_<artifact>.curves.png`` (git-ignored: a
diagnostic, not a result); runs without a ``metrics.csv`` are listed in one line, and when none
has one the command ends with exit code 2.  ``--tensorboard DIR`` also writes the same scalars as
TensorBoard event files (the optional ``tensorboard`` extra).

Nothing is trained and no run is changed.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from repro.config import ConfigError

# A validation accuracy column: val_acc, val_acc_exit3, val_acc_gate2, val_top1, val_top1_exit4 ...
VAL_COLUMN = re.compile(r"^val_(acc|top1)(_[a-z]*\d+)?$")
LOSS_COLUMN = "train_loss"
LR_COLUMN = "lr"


def val_columns(columns: Sequence[str]) -> list[str]:
    """The validation accuracy columns of a metrics.csv, in exit order (``val_acc_exit2`` before
    ``val_acc_exit10``)."""
    def exit_number(column: str) -> int:
        suffix = VAL_COLUMN.match(column).group(2)
        return int(re.search(r"\d+", suffix).group()) if suffix else 0

    return sorted((c for c in columns if VAL_COLUMN.match(c)), key=lambda c: (exit_number(c), c))


def read_metrics(path: Path):
    """A run's metrics.csv as a DataFrame with an ``x`` column: the epoch counted over its phases in
    the order they trained (phase 1's epochs 1..E, then phase 2's E+1..)."""
    import pandas as pd

    df = pd.read_csv(path)
    if df.empty:
        return df
    df = df.reset_index(drop=True)
    df["x"] = range(1, len(df) + 1)
    return df


def _plan(paper: str, artifact: str, scale: str, seeds: int):
    """The artifact's runs (ancestors first) for ``seeds`` seeds at ``scale``, by their names."""
    from repro.artifacts import get_paper
    from repro.runner import Request, named_runs, plan, resolve

    request = Request(scale=scale, seeds=seeds)
    art = get_paper(paper).artifact(artifact)
    names = {r.key: n for n, c in named_runs(art, request).items() if c is not None for r in resolve(c, request)}
    return [(names.get(c.key, c.name), c) for c in plan(art, request)]


def collect(paper: str, artifact: str, scale: str, runs_dir: Path, seeds: int = 1):
    """([(name, label, run folder, metrics DataFrame)], [missing run folders]) for one artifact."""
    from repro.store import Run

    found, missing = [], []
    for name, cfg in _plan(paper, artifact, scale, seeds):
        run = Run(runs_dir, cfg)
        path = run.dir / "metrics.csv"
        folder = f"{cfg.paper}/{cfg.dirname}"
        if not path.is_file():
            missing.append(folder)
            continue
        try:
            df = read_metrics(path)
        except Exception as e:  # a torn or foreign file: listed, not fatal
            missing.append(f"{folder} (unreadable metrics.csv: {type(e).__name__})")
            continue
        if df.empty:
            missing.append(f"{folder} (empty metrics.csv)")
            continue
        state = "" if run.done else " (unfinished)"
        found.append((name, f"{name} seed {cfg.seed}{state}", folder, df))
    return found, missing


def draw(found, title: str, path: Path) -> Path:
    """The three panels (training loss, validation top-1 per exit, learning rate) of ``found``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for name, _, _, _ in found))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colour = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    loss_ax, val_ax, lr_ax = axes
    has_val = False
    labelled = set()
    for name, _, _, df in found:
        c = colour[name]
        kw = dict(color=c, lw=1.2, ms=3, marker="o")
        if LOSS_COLUMN in df:
            loss_ax.plot(df["x"], df[LOSS_COLUMN], label=None if name in labelled else name, **kw)
            labelled.add(name)
        if LR_COLUMN in df:
            lr_ax.plot(df["x"], df[LR_COLUMN], **kw)
        cols = val_columns(df.columns)
        for i, col in enumerate(cols):
            ys = df[col]
            if ys.notna().any():
                has_val = True
                val_ax.plot(df["x"], ys, color=c, lw=1.0, ms=2.5, marker="o",
                            alpha=0.35 + 0.65 * (i + 1) / len(cols))
        # phase boundaries: a dotted line where the phase changes
        if "phase" in df:
            changes = [x for x, (a, b) in zip(df["x"][1:], zip(df["phase"][:-1], df["phase"][1:])) if a != b]
            for x in changes:
                for ax in axes:
                    ax.axvline(x - 0.5, color=c, ls=":", lw=0.6)
    loss_ax.set_title("training loss", fontsize=9)
    val_ax.set_title("validation top-1 (%), one line per exit (later exits darker)", fontsize=9)
    lr_ax.set_title("learning rate", fontsize=9)
    if not has_val:
        val_ax.text(0.5, 0.5, "no validation accuracy logged\nby these runs", ha="center", va="center",
                    transform=val_ax.transAxes, fontsize=8, color="0.4")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (over the run's phases in order)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    handles, labels = loss_ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    rows = (len(labels) + 3) // 4 if handles else 0
    fig.tight_layout(rect=(0, min(0.45, 0.05 * rows + 0.02), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def summary(label: str, df) -> str:
    """One line per run: the training loss from first to last epoch and the last validation top-1
    (last exit), with 'still falling' when the last epoch lowered the loss by more than 5 %."""
    parts = [label]
    if LOSS_COLUMN in df and df[LOSS_COLUMN].notna().any():
        loss = df[LOSS_COLUMN].dropna()
        trend = ""
        if len(loss) > 1 and loss.iloc[-1] < 0.95 * loss.iloc[-2]:
            trend = ", still falling"
        parts.append(f"train loss {loss.iloc[0]:.3g} -> {loss.iloc[-1]:.3g}{trend}")
    cols = [c for c in val_columns(df.columns) if df[c].notna().any()]
    if cols:
        parts.append(f"val top-1 {df[cols[-1]].dropna().iloc[-1]:.1f} % ({cols[-1]})")
    parts.append(f"{len(df)} epoch(s)")
    return "  " + "; ".join(parts)


def write_tensorboard(found, paper: str, log_dir: Path) -> list[Path]:
    """The same scalars as TensorBoard event files: ``<log_dir>/<paper>/<run folder>/``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'repro[tensorboard]'") from None
    out = []
    for _, _, folder, df in found:
        d = Path(log_dir) / folder
        with SummaryWriter(log_dir=str(d)) as w:
            for _, row in df.iterrows():
                step = int(row["x"])
                for col in [LOSS_COLUMN, LR_COLUMN, "train_acc", *val_columns(df.columns)]:
                    if col in row and row[col] == row[col]:  # not NaN
                        w.add_scalar(col, float(row[col]), step)
        out.append(d)
    return out


def check_tensorboard() -> None:
    """The optional extra is there (before any figure is drawn): one line when it is not."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'repro[tensorboard]'") from None


def run(paper: str, artifacts: Sequence[str], scale: str, runs_dir: Path, out_dir: Path, seeds: int = 1,
        tensorboard: Path | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """Draw every artifact's curves; returns the paths written.  ConfigError when no run of any of
    them has a metrics.csv (exit code 2)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if tensorboard is not None:
        check_tensorboard()
    written, any_found = [], False
    for art in artifacts:
        found, missing = collect(paper, art, scale, Path(runs_dir), seeds)
        if missing:
            log(f"{paper} {art}: {len(missing)} run(s) without metrics.csv in {runs_dir}: {', '.join(missing)}")
        if not found:
            continue
        any_found = True
        path = Path(out_dir) / "figures" / scale / f"{paper}_{art}.curves.png"
        title = (f"{paper} {art}: training curves of {len(found)} run(s), {scale} scale"
                 f"{f' ({len(missing)} missing)' if missing else ''}")
        written.append(draw(found, title, path))
        print(f"{paper} {art}: {len(found)} run(s)")
        for _, label, _, df in found:
            print(summary(label, df))
        if tensorboard is not None:
            written += write_tensorboard(found, paper, tensorboard)
    if not any_found:
        what = artifacts[0] if len(artifacts) == 1 else "all"
        raise ConfigError(f"no run of {paper} {what} at {scale} scale has a metrics.csv in {runs_dir}; train them "
                          f"first (repro {paper} {what} --scale {scale}), or give the --runs-dir they are in")
    for p in written:
        log(f"wrote {p}")
    return written
