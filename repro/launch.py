"""How runs get trained: here, one after another (default); later also in parallel or on Slurm."""
from __future__ import annotations

from typing import Callable, Sequence

from repro.config import ConfigError, RunConfig

LAUNCHERS = ("local", "submitit")


def make_launcher(name: str, *, jobs: int = 1, wait: bool = True, **cluster) -> Callable | None:
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher '{name}'; choose one of: {', '.join(LAUNCHERS)}")
    if name == "local" and jobs == 1:
        return None
    raise ConfigError(f"launcher '{name}' with --jobs {jobs} is not available yet; use --launcher local --jobs 1")
