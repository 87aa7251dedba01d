"""Small generic ops shared by the models, and the intra-op thread count of a block.

- :func:`threads`: run a block with n torch intra-op threads, restoring the count after;
- :func:`grad_rescale`: the identity in the forward pass whose backward multiplies the
  gradient by a constant, y = x and dL/dx = scale · dL/dy (IMTA's Gradient Equilibrium
  is built from it: docs/papers/imta.md).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: leave the count as it is);
    the previous count is restored after, also when the block raises.

    The one place that sets the thread count for a block: cost counting and the sweep run
    in one thread (Python-bound batch-1 traces and small tensors gain nothing from threads,
    and on a shared machine two OpenMP threads waiting on each other made them 15-20x
    slower), CPU latency timings too, and a launched job with its share of the cores."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _GradRescale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def grad_rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; the backward pass multiplies the gradient by ``scale``."""
    if scale == 1.0:
        return x
    return _GradRescale.apply(x, float(scale))
