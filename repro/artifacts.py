"""Papers, artifacts and the registry that finds them.

A paper module in ``repro/papers/`` defines ``PAPER = Paper(...)``: its artifacts
(each a set of named runs plus a function that turns the finished runs into table and
figure data, which the core writes), its trainers (one function per kind of run) and its ``--set`` keys, each a
typed :class:`Option` (type, default, choices or range, declared once), which the paper reads back typed
with ``OPTIONS.read(request)`` (:class:`Options`).  The core
imports every module in that package, so adding a paper means adding one module and one
reference CSV; nothing in the core names a paper.  docs/adding-a-paper.md walks through
an example.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from repro.config import ConfigError, RunConfig

if TYPE_CHECKING:
    from repro.api import Request, RunContext, Runs, Settings
    from repro.render import Figure, Table


@dataclass(frozen=True)
class Artifact:
    """``runs(request)`` gives the artifact's runs by name (seed 0, no overrides); ``build(request,
    runs, settings)`` gets them back finished, by those names, and returns its Table/Figure data."""
    name: str
    description: str
    runs: Callable[[Request], dict[str, RunConfig]]
    build: Callable[[Request, Runs, Settings], Table | Figure | list[Table | Figure]]
    kind: str = ""  # "table" or "figure"; by default a name starting with "fig" is a figure
    # The runs (names in ``runs(request)``) whose convergence its verdicts rest on: at a scale that
    # tests convergence (quick), each is trained again for twice its epochs (seed 0), and without
    # that test passing the artifact's claims get no verdict (repro.convergence, docs/calibration.md).
    baselines: tuple[str, ...] = ()
    # it holds one of the paper's headline claims (docs/claims.md): `make headline` trains it
    # (`repro all --only headline`)
    headline: bool = False

    @property
    def output_kind(self) -> str:
        return self.kind or ("figure" if self.name.startswith("fig") else "table")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Option:
    """A paper's ``--set KEY=VALUE`` key: its type, valid values and meaning, declared once.

    ``type`` is ``str``, ``int``, ``float`` (finite only), ``bool`` or any parser that raises
    ValueError on a bad value; ``choices`` and the inclusive bounds ``low``/``high`` (or the
    exclusive ``above``/``below``) restrict it further.  ``default`` is what the help shows and what
    a paper reads when the key is not given (text is parsed like a given value: ``"0,1"`` of a
    list type); None: the paper computes it (per scale or architecture), :meth:`OptionValues.given`.
    A numeric key must have an upper bound (``high``, ``below`` or ``choices``:
    tests/test_bounds.py checks every paper's); ``cost(value)``, if given, says what a value
    above it would need (``"it needs about 24 GB"``) in the one-line error.
    """
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None
    cost: Callable[[Any], str] | None = None

    @property
    def type_name(self) -> str:
        return getattr(self.type, "__name__", "value").replace("parse_", "")

    def valid_range(self) -> str:
        if self.choices:
            return "one of: " + ", ".join(map(str, self.choices))
        lo = f"{self.low} <= " if self.low is not None else (f"{self.above} < " if self.above is not None else "")
        hi = f" <= {self.high}" if self.high is not None else (f" < {self.below}" if self.below is not None else "")
        return f"{lo}x{hi}" if lo or hi else ""

    def parse(self, key: str, raw: str) -> Any:
        want = self.valid_range()
        try:
            value = parse_bool(raw) if self.type is bool else self.type(raw)
        except (ValueError, TypeError) as e:
            hint = f" ({e})" if str(e) and self.type not in (int, float) else ""
            raise ConfigError(f"--set {key}={raw}: expected {self.type_name}{hint}"
                              f"{'; ' + want if want else ''}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--set {key}={raw}: expected a finite number{'; ' + want if want else ''}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"--set {key}={raw}: choose {want}")
        values = value if isinstance(value, (tuple, list)) else [value]
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            over = (self.high is not None and v > self.high) or (self.below is not None and v >= self.below)
            if over:
                where = (f"is above its bound {_num(self.high)}" if self.high is not None and v > self.high
                         else f"is not below its bound {_num(self.below)}")
                cost = f" ({self.cost(v)})" if self.cost is not None else ""
                raise ConfigError(f"--set {key}={raw} {where}{cost}; valid: {want}")
            if (self.low is not None and v < self.low) or (self.above is not None and v <= self.above):
                raise ConfigError(f"--set {key}={raw}: out of range; valid: {want}")
        return value

    def value(self, key: str, raw: str | None) -> Any:
        """What a paper reads: ``raw`` (the ``--set`` text) parsed and checked, else the default."""
        if raw is not None:
            return self.parse(key, raw)
        return self.parse(key, self.default) if isinstance(self.default, str) else self.default

    _PLAIN = {"str": str, "int": int, "float": float, "bool": bool}

    def spec(self) -> dict:
        """What :meth:`parse` checks, as plain data for the manifest (the CLI checks a ``--set`` value
        from it before importing torch); ``type`` None: a custom parser, checked by the paper only."""
        name = getattr(self.type, "__name__", "")
        return {"type": name if self.type in self._PLAIN.values() else None, "choices": list(self.choices),
                "low": self.low, "high": self.high, "above": self.above, "below": self.below,
                "cost": self.cost is not None}

    @classmethod
    def from_spec(cls, spec: dict) -> "Option":
        """An Option from :meth:`spec` (no help, no cost explanation)."""
        return cls("", type=cls._PLAIN[spec["type"]], choices=tuple(spec["choices"]), low=spec["low"],
                   high=spec["high"], above=spec["above"], below=spec["below"])

    def describe(self) -> str:
        default = "" if self.default is None else f", default {self.default}"
        want = self.valid_range()
        return f"{self.type_name}{default}{'; ' + want if want else ''}: {self.help}"


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class Options(dict):
    """A paper's ``--set`` keys, ``{key: Option}``, declared once; ``OPTIONS.read(request)`` gives
    their values under a request, typed and checked by their Options (:class:`OptionValues`), so a
    paper never restates a key's type, default, choices or range where it reads it."""

    def __init__(self, declared=(), **more):
        super().__init__(declared, **more)
        for key, opt in self.items():
            if not isinstance(opt, Option):
                raise TypeError(f"option {key!r} must be declared as an Option, not {type(opt).__name__}")

    def read(self, request: Request | None) -> OptionValues:
        """The values under ``request`` (None: no ``--set`` given, every key its default)."""
        return OptionValues(self, request.options if request is not None else ())


class OptionValues:
    """A paper's option values under one request.  ``values.key`` (or ``values["key"]``) is the
    ``--set key=...`` value parsed by the key's Option (a bad value raises its one-line
    ConfigError), else the Option's default; ``values.given("key", otherwise)`` is the parsed value,
    else ``otherwise``, for a key whose default the paper computes (per scale or architecture; its
    Option declares none).  Reading a key the paper did not declare is a KeyError."""
    __slots__ = ("_declared", "_raw")

    def __init__(self, declared: Options, options: tuple[tuple[str, str], ...] = ()):
        self._declared, self._raw = declared, dict(options)

    def _option(self, key: str) -> Option:
        if key not in self._declared:
            raise KeyError(f"no option {key!r} is declared; declared: {', '.join(self._declared) or 'none'}")
        return self._declared[key]

    def given(self, key: str, otherwise: Any = None) -> Any:
        """The value given for ``key``, else ``otherwise``: the paper's own default of a key that
        declares none (one computed per scale or architecture)."""
        opt = self._option(key)
        if otherwise is not None and opt.default is not None:
            raise TypeError(f"option {key!r} declares its default ({opt.default}): read it as values.{key}")
        raw = self._raw.get(key)
        return otherwise if raw is None else opt.parse(key, raw)

    def __getitem__(self, key: str) -> Any:
        return self._option(key).value(key, self._raw.get(key))

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key not in self._declared:
            raise AttributeError(f"no option {key!r} is declared; declared: {', '.join(self._declared) or 'none'}")
        return self[key]


@dataclass
class Paper:
    name: str
    title: str
    artifacts: dict[str, Artifact]
    trainers: dict[str, Callable[[RunContext], dict]] = field(default_factory=dict)
    options: Options = field(default_factory=Options)  # `--set KEY=VALUE` keys

    def __post_init__(self):
        if not isinstance(self.options, Options):
            self.options = Options(self.options)

    def check_options(self, options) -> None:
        """Every ``--set`` key known to this paper and its value valid (type, choices, range)."""
        for key, raw in options:
            if key not in self.options:
                valid = ", ".join(self.options) or "none"
                raise ConfigError(f"unknown option '--set {key}=...' for {self.name}; valid keys: {valid}")
            self.options[key].parse(key, raw)

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
