"""The one interface every multi-exit network implements.

A k-exit network is k *stages* and k *heads*: stage i maps the running state
(a tensor, or a list of tensors for multi-scale nets, batch dimension first) to
the next state, and head i maps that state to exit i's logits.  Heads get the
previous exit's logits too, for nets whose classifiers talk to each other
(IMTA's inline subnetwork collaboration); most ignore them.  Writing a net this way
gives three things for free: ``forward`` returns the logits of every exit;
``repro.flops`` counts the cumulative cost of exit i on a forward that really stops
there; ``repro.exits.early_exit`` stops computing for samples that have exited,
compacting the batch between stages (docs/adding-a-paper.md).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

State = Any  # torch.Tensor | list[torch.Tensor]


class MultiExitNet(nn.Module):
    num_exits: int

    def stage(self, i: int, state: State) -> State:
        raise NotImplementedError

    def head(self, i: int, state: State, prev_logits: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_until(x, self.num_exits - 1)

    def forward_until(self, x: torch.Tensor, last_exit: int) -> list[torch.Tensor]:
        """Logits of exits 0..last_exit, computing nothing after exit ``last_exit``."""
        outs: list[torch.Tensor] = []
        state, prev = x, None
        for i in range(last_exit + 1):
            state = self.stage(i, state)
            prev = self.head(i, state, prev)
            outs.append(prev)
        return outs


def select_rows(state: State, index: torch.Tensor) -> State:
    """Keep the samples ``index`` of a state (tensor or list of tensors)."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index)
    return [s.index_select(0, index) for s in state]
