"""The papers' names, artifacts and ``--set`` keys as plain data, for a command line that starts
without importing torch (``repro --help``, completion, name checks).

``repro/papers/manifest.json`` is generated from the registry (``python -m repro.manifest``);
``tests/test_cli.py`` fails when it no longer equals what the paper modules declare.
:func:`build` is also what ``docs/gen.py`` lists the ``--set`` keys of each paper's page
from (docs/adding-a-paper.md).
"""
from __future__ import annotations

import json
from pathlib import Path

PATH = Path(__file__).resolve().parent / "papers" / "manifest.json"


def build() -> dict:
    """The manifest from the live registry (imports every paper module)."""
    from repro.artifacts import papers

    return {p.name: {"title": p.title,
                     "artifacts": [[a.name, a.description, a.output_kind] for a in p.artifacts.values()],
                     "options": {k: o.describe() for k, o in p.options.items()},
                     "specs": {k: o.spec() for k, o in p.options.items()},
                     "headline": [a.name for a in p.artifacts.values() if a.headline],
                     "runs": {a.name: _planned(a) for a in p.artifacts.values()}}
            for p in papers().values()}


def _planned(artifact) -> dict[str, list[str]]:
    """``paper/dirname`` of every run the artifact needs at each scale (default request), for
    ``repro list``; a scale the artifact refuses without options is left out."""
    from repro.config import ConfigError
    from repro.runner import Request, plan
    from repro.scales import SCALES

    out = {}
    for s in SCALES:
        try:
            out[s] = [f"{c.paper}/{c.dirname}" for c in plan(artifact, Request(scale=s))]
        except ConfigError:
            pass
    return out


def load() -> dict:
    return json.loads(PATH.read_text())


def write() -> Path:
    PATH.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    return PATH


if __name__ == "__main__":
    print(f"wrote {write()}")
