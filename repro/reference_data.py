"""The papers' published numbers, as packaged CSVs under ``repro/reference/``.

One CSV per paper, long format, one number per line::

    artifact,row,column,value,unit,source

``artifact`` is the CLI artifact name (``table1``, ``hem``, ...), ``row`` and ``column``
are stable keys documented in ``repro/reference/README.md``, ``value`` is a plain number,
``unit`` says what the number counts and ``source`` where it is printed.  These numbers
feed the "paper" columns of the project's tables and nothing else.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd



def available() -> list[str]:
    """Papers that ship a reference CSV (adding a paper means adding its CSV)."""
    folder = resources.files("repro").joinpath("reference")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".csv"))

COLUMNS: tuple[str, ...] = ("artifact", "row", "column", "value", "unit", "source")
KEY: tuple[str, ...] = ("artifact", "row", "column")


def load_reference(paper: str) -> pd.DataFrame:
    """Load the published numbers of ``paper`` as a long DataFrame.

    Columns are exactly :data:`COLUMNS`; ``value`` is float, the rest are str.
    Raises ``ValueError`` naming the valid choices for an unknown paper.
    """
    if paper not in available():
        raise ValueError(
            f"unknown paper {paper!r}; valid choices: {', '.join(available())}"
        )
    resource = resources.files("repro").joinpath("reference", f"{paper}.csv")
    with resource.open("r", encoding="utf-8") as fh:
        df = pd.read_csv(
            fh,
            dtype={c: str for c in COLUMNS if c != "value"},
            keep_default_na=False,
        )
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)
    return df


def reference_value(
    df: pd.DataFrame, artifact: str, row: str, column: str
) -> float | None:
    """The paper's number at (artifact, row, column), or ``None`` if the paper
    gives none. Raises ``ValueError`` if the key is not unique."""
    hit = df.loc[
        (df["artifact"] == artifact) & (df["row"] == row) & (df["column"] == column),
        "value",
    ]
    if hit.empty:
        return None
    if len(hit) > 1:
        raise ValueError(
            f"duplicate reference key ({artifact!r}, {row!r}, {column!r})"
        )
    return float(hit.iloc[0])


def reference_table(df: pd.DataFrame, artifact: str) -> pd.DataFrame:
    """One artifact's numbers as a wide table: index = row keys, columns =
    column keys, in the CSV's order; missing cells are NaN."""
    sub = df[df["artifact"] == artifact]
    wide = sub.pivot(index="row", columns="column", values="value")
    rows = list(dict.fromkeys(sub["row"]))
    cols = list(dict.fromkeys(sub["column"]))
    return wide.reindex(index=rows, columns=cols)


def paper_value(paper: str, artifact: str, row: str, column: str) -> float | None:
    """The paper's number at (artifact, row, column) of its reference CSV, or None (also for a
    paper that ships no reference CSV yet)."""
    if paper not in available():
        return None
    return reference_value(load_reference(paper), artifact, row, column)


def paper_gap(paper: str, artifact: str, a: str, b: str, column: str) -> float | None:
    """The paper's gap a − b at ``column`` (for a :class:`~repro.render.Claim`), or None when
    the paper gives either number."""
    pa, pb = paper_value(paper, artifact, a, column), paper_value(paper, artifact, b, column)
    return None if pa is None or pb is None else pa - pb
