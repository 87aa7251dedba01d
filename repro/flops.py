"""Paper-agnostic cost counting, on top of fvcore's jit-traced counter.

Every number carries a *convention* (:data:`CONVENTIONS`), because matching a paper's
number means matching its counter: ``fvcore`` (one multiply-add = 1; BatchNorm and
adaptive pooling counted), ``msdnet`` (the MSDNet code's counter: conv multiply-adds,
linear weights + bias, one op per ReLU output, pooling elements, BatchNorm 0) and
``flops2x`` (2 x fvcore, for papers that call 2 x MACs "FLOPs").  Counts are raw, for one
sample, in eval mode.  A multi-exit net's exit i is counted on a forward that stops at
exit i, so its cost is cumulative.  docs/flops.md has the definitions and reference counts.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from math import prod
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn

with warnings.catch_warnings():
    # fvcore imports torch.jit.script-decorated code: a deprecation warning on new torch
    warnings.simplefilter("ignore")
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

from repro.models.base import MultiExitNet
from repro.nn import threads

CONVENTIONS: dict[str, str] = {
    "fvcore": "MMACs, fvcore: one multiply-add = 1, BatchNorm and adaptive pooling counted",
    "msdnet": ("MMACs, MSDNet's counter: conv multiply-adds without bias + linear weights and bias"
               " + one op per ReLU output element + pooling elements; BatchNorm 0"),
    "flops2x": "MFLOPs = 2 x fvcore multiply-adds",
}


@dataclass(frozen=True)
class Cost:
    """``macs``: cost in the convention's unit (raw count); ``params``: parameter count."""
    macs: float
    params: int
    convention: str = "fvcore"


# ---------------------------------------------------------------- op handles
def _numel_out(inputs: list[Any], outputs: list[Any]) -> float:
    shape = get_shape(outputs[0])
    return float(prod(shape)) if shape is not None else 0.0


def _numel_in(inputs: list[Any], outputs: list[Any]) -> float:
    shape = get_shape(inputs[0])
    return float(prod(shape)) if shape is not None else 0.0


def _pool_handle(inputs: list[Any], outputs: list[Any]) -> float:
    """aten::{max,avg}_pool2d(input, kernel_size, ...): output elements x kernel area."""
    k = inputs[1].toIValue()
    if k is None:  # a prim::ListConstruct of constants
        k = [v.toIValue() for v in inputs[1].node().inputs()]
    k = list(k) if isinstance(k, (list, tuple)) else [k]
    if len(k) == 1:
        k = k * 2
    return _numel_out(inputs, outputs) * prod(k)


def _linear_bias_handle(inputs: list[Any], outputs: list[Any]) -> float:
    """aten::linear(x, W, b): rows x (W elements + b elements)."""
    x, w = get_shape(inputs[0]), get_shape(inputs[1])
    rows = prod(x[:-1])
    bias = w[0] if get_shape(inputs[2]) is not None else 0
    return float(rows * (prod(w) + bias))


def _addmm_bias_handle(inputs: list[Any], outputs: list[Any]) -> float:
    """aten::addmm(b, x, W^T): rows x (W elements) + output elements (bias)."""
    x, wt = get_shape(inputs[1]), get_shape(inputs[2])
    return float(x[0] * x[1] * wt[1] + prod(get_shape(outputs[0])))


def _zero(inputs: list[Any], outputs: list[Any]) -> float:
    return 0.0


_MSDNET_HANDLES = {
    "aten::relu": _numel_out,
    "aten::relu_": _numel_out,
    "aten::max_pool2d": _pool_handle,
    "aten::avg_pool2d": _pool_handle,
    "aten::adaptive_avg_pool2d": _numel_in,
    "aten::linear": _linear_bias_handle,
    "aten::addmm": _addmm_bias_handle,
    # counted 0 (fused at inference); a handle returning 0, because
    # set_op_handle(name, None) does not override fvcore's default handle
    "aten::batch_norm": _zero,
}


def _analysis(model: nn.Module, inputs: tuple, convention: str) -> FlopCountAnalysis:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; one of {sorted(CONVENTIONS)}")
    fca = FlopCountAnalysis(model, inputs)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    if convention == "msdnet":
        fca.set_op_handle(**_MSDNET_HANDLES)
    return fca


def _total(model: nn.Module, inputs: tuple, convention: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = float(_analysis(model, inputs, convention).total())
    return 2.0 * total if convention == "flops2x" else total


def _input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    shape = tuple(input_shape)
    if len(shape) != 4:  # a per-sample shape: add the batch dimension
        shape = (1,) + shape
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros(shape, device=device, dtype=dtype)


class _EvalNoGrad:
    """Eval mode, no_grad and one intra-op thread while counting (restored after).

    Counting traces batch-1 forwards: Python-bound, nothing to gain from
    threads, and on a busy machine two OpenMP threads fighting for two cores
    made it ~15x slower.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.one_thread = threads(1)
        self.one_thread.__enter__()
        self.model.eval()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)
        self.one_thread.__exit__(*exc)


def count_model(model: nn.Module, input_shape: Sequence[int], convention: str = "fvcore") -> Cost:
    """Cost of one forward of a single-output net on one sample of ``input_shape``
    (per-sample shape such as (C, H, W), or a 4-d shape with the batch of 1);
    params = all the model's parameters."""
    macs, _ = count_by_module(model, input_shape, convention)
    params = sum(p.numel() for p in model.parameters())
    return Cost(macs=macs, params=params, convention=convention)


def count_by_module(model: nn.Module, input_shape: Sequence[int],
                    convention: str = "fvcore") -> tuple[float, dict[str, float]]:
    """:func:`count_model`'s cost and the same count split by module: ``{qualified name:
    cost of the ops inside that module}`` (``""``: the whole net), fvcore's ``by_module``
    in ``convention``'s unit."""
    x = _input(model, input_shape)
    with _EvalNoGrad(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fca = _analysis(model, (x,), convention)
        total, by_module = float(fca.total()), fca.by_module()
    if convention == "flops2x":
        total, by_module = 2.0 * total, {k: 2 * v for k, v in by_module.items()}
    return total, dict(by_module)


def _tensors(state: Any) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (list, tuple)):
        return [t for s in state for t in _tensors(s)]
    return []


class _UntilExit(nn.Module):
    """``net.forward_until(x, last_exit)`` that also returns the state after
    stage ``last_exit``.

    The jit trace that fvcore counts drops every op whose result reaches no
    output; returning only the logits would drop, e.g., the finer scales an
    MSDNet block computes for later blocks.  A forward that stops at exit i has
    computed them, so they are part of exit i's cost (as in MSDNet's counter).
    The loop is MultiExitNet.forward_until's, written out to keep the state.
    """

    def __init__(self, net: MultiExitNet, last_exit: int):
        super().__init__()
        self.net = net
        self.last_exit = last_exit

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs: list[torch.Tensor] = []
        state, prev = x, None
        for i in range(self.last_exit + 1):
            state = self.net.stage(i, state)
            prev = self.net.head(i, state, prev)
            outs.append(prev)
        return tuple(outs) + tuple(_tensors(state))


def _called_params(net: nn.Module, fn) -> int:
    """Parameters of the modules called while running ``fn()`` (each parameter once);
    the root's own parameters are always included."""
    called: list[nn.Module] = []
    seen: set[int] = set()

    def hook(mod, args, out):
        if id(mod) not in seen:
            seen.add(id(mod))
            called.append(mod)

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    params: dict[int, int] = {id(p): p.numel() for p in net.parameters(recurse=False)}
    for m in called:
        for p in m.parameters(recurse=False):
            params[id(p)] = p.numel()
    return int(sum(params.values()))


def count_exits(net: MultiExitNet, input_shape: Sequence[int],
                convention: str = "fvcore") -> pd.DataFrame:
    """Cumulative cost and params at each exit of a multi-exit net.

    Columns: ``exit`` (1-based), ``cost`` (raw count in ``convention``'s unit,
    of a forward that stops at that exit), ``params`` (parameters of the
    modules that forward calls: stages 0..i and heads 0..i).
    """
    x = _input(net, input_shape)
    rows = []
    with _EvalNoGrad(net):
        for i in range(net.num_exits):
            wrapper = _UntilExit(net, i)
            cost = _total(wrapper, (x,), convention)
            params = _called_params(net, lambda: wrapper(x))
            rows.append({"exit": i + 1, "cost": cost, "params": params})
    return pd.DataFrame(rows, columns=["exit", "cost", "params"])
