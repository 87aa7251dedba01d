"""A finished run's files, checked where the core loads them (docs/run-store.md: corrupt files).

A file that parses but is not what repro writes (a key missing, another network's weights,
logits of the wrong shape, type or class count, NaN, labels out of range, a metrics.csv
without rows) would otherwise end in a traceback far from the file, or worse, in a table or
figure that looks fine.  Each check raises :class:`~repro.store.CorruptRun`: one line naming
the file and ``rm -r <the run's folder>``, after which the same command retrains that run
alone.  Called by :class:`repro.store.Run` (``results()``, ``outputs()``, ``metrics()``,
``load_into()``), which :class:`repro.api.RunResult` and the papers read through.
"""
from __future__ import annotations

import math

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from repro.store import Run

METRICS_COLUMNS = ("phase", "epoch", "train_loss", "train_acc")  # every row repro.train.fit writes has them


def _corrupt(run: "Run", path, why: str):
    from repro.store import CorruptRun

    return CorruptRun(run, path, why)


class CheckedDict(dict):
    """A run file's mapping whose missing key is the file's fault (a reader asks for what the
    run's trainer writes), named as such rather than a bare KeyError."""

    def __init__(self, data: dict, run: "Run", path):
        super().__init__(data)
        self._run, self._path = run, path

    def __getitem__(self, key):
        try:
            value = dict.__getitem__(self, key)
        except KeyError:
            raise _corrupt(self._run, self._path, f"it has no '{key}'") from None
        check = TYPED.get(key)
        if check is not None and not check(value):
            raise _corrupt(self._run, self._path, f"its '{key}' is {str(value)[:40]!r}, not {check.__doc__}")
        return value

    def bad(self, why: str):
        """The error for a value a reader found wrong (one line naming the file and its run's folder)."""
        return _corrupt(self._run, self._path, why)

    def __reduce__(self):  # pickles (and deep-copies) as the plain dict it holds
        return dict, (dict(self),)


def _numbers(x: Any) -> bool:
    """a list of numbers"""
    return isinstance(x, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)


def _number_lists(x: Any) -> bool:
    """a list of lists of numbers"""
    return isinstance(x, list) and all(_numbers(v) for v in x)


# keys several readers use, and the type they expect (the others are each paper's own)
TYPED = {"costs": _numbers, "alphas": _numbers}


def _nan_at(x: Any, where: str = "") -> str | None:
    """The first NaN in a JSON value (a key path), or None; infinities are legitimate (a threshold of
    -inf: the last exit takes every sample)."""
    if isinstance(x, float) and math.isnan(x):
        return where or "a value"
    if isinstance(x, dict):
        return next((w for k, v in x.items() if (w := _nan_at(v, f"{where}.{k}" if where else str(k)))), None)
    if isinstance(x, list):
        return next((w for i, v in enumerate(x) if (w := _nan_at(v, f"{where}[{i}]"))), None)
    return None


def results(run: "Run", data: Any) -> dict:
    if not isinstance(data, dict):
        raise _corrupt(run, run.results_path, f"a JSON {type(data).__name__}, not an object")
    bad = _nan_at(data)
    if bad:
        raise _corrupt(run, run.results_path, f"{bad} is NaN; repro never writes one")
    return CheckedDict(data, run, run.results_path)


def _classes(run: "Run") -> int | None:
    """The class count of the run's dataset where it is fixed (not a folder's or ImageNet's tree)."""
    from repro.data import DATASETS

    info = DATASETS.get(run.cfg.dataset)
    return info.num_classes if info is not None and run.cfg.dataset != "imagenet" else None


def _split_size(run: "Run", split: str) -> int | None:
    """The images of the run's validation split (its split.pt) where it saved one; the test split's
    size is not known here (None)."""
    if split != "val":
        return None
    try:
        saved = torch.load(run.dir / "split.pt", map_location="cpu", weights_only=True)
        return int(len(saved["val"]))
    except Exception:  # no split.pt (a run stored before it existed, or from elsewhere): unchecked
        return None


def outputs(run: "Run", out: Any) -> dict:
    """Per split: labels a 1-d integer tensor; every ``*logits`` entry of the split a float tensor,
    exits x samples x classes (or samples x classes), as many samples as labels, the dataset's
    class count, finite; labels within the class count."""
    path = run.outputs_path
    if not isinstance(out, dict):
        raise _corrupt(run, path, f"a {type(out).__name__}, not a dict")
    classes = _classes(run)
    for split in ("val", "test"):
        labels = out.get(f"{split}_labels")
        keys = [k for k in out if k.endswith("logits") and split in k.split("_")]
        if labels is None and not keys:
            continue
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
            raise _corrupt(run, path, f"{split}_labels is not a 1-d tensor")
        if labels.numel() == 0:
            raise _corrupt(run, path, f"{split}_labels is empty: the {split} split holds no image")
        expected = _split_size(run, split)
        if expected is not None and labels.numel() != expected:
            raise _corrupt(run, path, f"{split}_labels has {labels.numel()} samples; the run's {split} split "
                                      f"holds {expected}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise _corrupt(run, path, f"{split}_labels is a {labels.dtype} tensor, not class indices")
        n_cls = classes
        for k in keys:
            logits = out[k]
            stack = logits if isinstance(logits, (list, tuple)) else [logits]
            for t in stack:  # what a reader would index first: the sample count
                if not isinstance(t, torch.Tensor) or t.shape[-2:-1] != labels.shape:
                    shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise _corrupt(run, path, f"{k} of shape {shape} do not match {labels.numel()} labels")
            if not isinstance(logits, torch.Tensor):
                raise _corrupt(run, path, f"{k} is a {type(logits).__name__}, not a tensor (exits x samples x "
                                          f"classes)")
            if logits.dim() not in (2, 3):
                raise _corrupt(run, path, f"{k} has {logits.dim()} dimensions, not exits x samples x classes")
            if not logits.dtype.is_floating_point:
                raise _corrupt(run, path, f"{k} is a {logits.dtype} tensor, not floating point")
            c = int(logits.shape[-1])
            if n_cls is not None and c != n_cls:
                what = f"{run.cfg.dataset} has {n_cls}" if classes is not None else f"other logits have {n_cls}"
                raise _corrupt(run, path, f"{k} has {c} classes; {what}")
            n_cls = c
            if not bool(torch.isfinite(logits).all()):
                bad = int((~torch.isfinite(logits)).sum())
                raise _corrupt(run, path, f"{k} holds {bad} non-finite value(s) (NaN or inf)")
        if labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or (n_cls is not None and hi >= n_cls):
                raise _corrupt(run, path, f"{split}_labels range over {lo}..{hi}, outside the "
                                          f"{n_cls if n_cls is not None else 'non-negative'} classes")
    return CheckedDict(out, run, path)


def metrics(run: "Run", df) -> Any:
    path = run.metrics_path
    missing = [c for c in METRICS_COLUMNS if c not in df.columns]
    if missing:
        raise _corrupt(run, path, f"no {', '.join(missing)} column{'s' * (len(missing) > 1)}")
    if not len(df):
        raise _corrupt(run, path, "no rows: not one epoch is recorded")
    epochs = df["epoch"]
    if epochs.isna().any() or not all(float(e).is_integer() and e >= 1 for e in epochs):
        raise _corrupt(run, path, "an epoch that is not a whole number from 1 on")
    return df


def load_into(run: "Run", module: torch.nn.Module, name: str = "model", map_location: Any = "cpu",
              strict: bool = True) -> torch.nn.Module:
    """Load the run's ``<name>.pt`` into ``module``; a file that does not fit it (another network's
    weights, other shapes) is named with the way forward."""
    from repro.store import CheckpointError, load_checkpoint

    path = run.dir / f"{name}.pt"
    if not path.exists():
        raise _corrupt(run, path, "missing")
    try:
        state = load_checkpoint(path, map_location=map_location)
    except CheckpointError as e:
        raise _corrupt(run, path, e.why) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _corrupt(run, path, f"not a state dict of tensors ({type(state).__name__})")
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        lines = [s.strip() for s in str(e).splitlines()[1:] if s.strip()]
        raise _corrupt(run, path, f"it does not fit {type(module).__name__}: "
                                  f"{' '.join(lines)[:200] or str(e)[:200]}") from None
    return module
