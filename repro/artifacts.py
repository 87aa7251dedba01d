"""Papers, artifacts and the registry that finds them.

A paper module in ``repro/papers/`` defines ``PAPER = Paper(...)``: its artifacts
(each a list of runs plus a function that turns their results into tables and
figures) and its trainers (one function per kind of run).  The core imports every
module in that package, so adding a paper means adding one module and one
reference CSV; nothing in the core names a paper.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from repro.config import ConfigError, RunConfig

if TYPE_CHECKING:
    from repro.runner import Request, Results, RunContext, Settings


@dataclass(frozen=True)
class Artifact:
    name: str
    description: str
    runs: Callable[[Request], list[RunConfig]]
    build: Callable[[Request, Results, Settings], list[Path]]
    kind: str = ""  # "table" or "figure"; by default a name starting with "fig" is a figure

    @property
    def output_kind(self) -> str:
        return self.kind or ("figure" if self.name.startswith("fig") else "table")


@dataclass
class Paper:
    name: str
    title: str
    artifacts: dict[str, Artifact]
    trainers: dict[str, Callable[[RunContext], dict]] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)  # `--set KEY=VALUE` keys -> one-line help

    def check_options(self, options) -> None:
        for key, _ in options:
            if key not in self.options:
                valid = ", ".join(self.options) or "none"
                raise ConfigError(f"unknown option '--set {key}=...' for {self.name}; valid keys: {valid}")

    def artifact(self, name: str) -> Artifact:
        if name not in self.artifacts:
            raise ConfigError(f"unknown artifact '{name}' for {self.name}; choose one of: "
                              f"{', '.join(self.artifacts)}, all")
        return self.artifacts[name]


_REGISTRY: dict[str, Paper] | None = None


def papers() -> dict[str, Paper]:
    global _REGISTRY
    if _REGISTRY is None:
        import repro.papers as pkg

        found = {}
        for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if mod.name.startswith("_"):
                continue
            module = importlib.import_module(f"repro.papers.{mod.name}")
            paper = getattr(module, "PAPER", None)
            if isinstance(paper, Paper):
                found[paper.name] = paper
        _REGISTRY = found
    return _REGISTRY


def get_paper(name: str) -> Paper:
    reg = papers()
    if name not in reg:
        raise ConfigError(f"unknown paper '{name}'; choose one of: {', '.join(reg)}")
    return reg[name]


def trainer(cfg: RunConfig) -> Callable[[RunContext], dict]:
    paper = get_paper(cfg.paper)
    if cfg.kind not in paper.trainers:
        raise ConfigError(f"paper {cfg.paper} has no run kind '{cfg.kind}'; choose one of: {', '.join(paper.trainers)}")
    return paper.trainers[cfg.kind]
