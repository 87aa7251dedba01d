"""Small generic ops shared by the models."""
from __future__ import annotations

import torch


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
