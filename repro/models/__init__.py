"""Model families, one file each (timm style): plain nn.Modules plus named factories, and one
registry that finds a factory by name.

- :mod:`.base`: the multi-exit interface; :mod:`.staged`: backbones cut into stages, exits
  and channel-mask slots between them;
- :mod:`.msdnet` (IMTA), :mod:`.densenet` (GlanceNets, decision gates), :mod:`.resnet`
  (decision gates, DCP), :mod:`.vgg` and :mod:`.resnet50_dcp` (DCP), :mod:`.compact` and
  :mod:`.skipblocknet` (bias loss).

A factory is registered with ``@register_model`` (or ``register_model(name)(fn)``) in its
family's file; ``create_model(name, **kwargs)`` builds it, a run config's ``model`` is such a
name.  Their sizes are in docs/flops.md, their use in the papers' pages under docs/papers/.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

# every module of this package is a family (a new family is one new file); base and staged hold
# the shared pieces and register nothing, importing them is harmless
_FAMILIES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))
_REGISTRY: dict[str, Callable] = {}
_LOADED = False


def register_model(fn_or_name=None, fn: Callable | None = None):
    """Register a model factory under its function name (``@register_model``), under a given
    name (``@register_model("name")``), or directly (``register_model("name", factory)``)."""
    if callable(fn_or_name):
        return register_model(fn_or_name.__name__, fn_or_name)
    name = fn_or_name

    def add(f: Callable) -> Callable:
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = f
        return f
    return add(fn) if fn is not None else add


def _load() -> None:
    global _LOADED
    if not _LOADED:
        for fam in _FAMILIES:
            importlib.import_module(f"repro.models.{fam}")
        _LOADED = True


def list_models() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def model_factory(name: str) -> Callable:
    from repro.config import ConfigError

    _load()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs):
    """The model ``name`` built with ``kwargs`` (its registered factory's arguments)."""
    return model_factory(name)(**kwargs)
