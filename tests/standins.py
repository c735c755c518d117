"""A stand-in defense shared by the attack and training tests (no native code, exact gradients)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _RoundStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return (x >= 0.5).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # noqa: D102
        return grad_output


class StandInDefense(nn.Module):
    """Stand-in for pixdisc.Discretize: codes {0, 1}, identity (straight-through) BPDA backward; counts calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.gradient_calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if x.requires_grad:
            self.gradient_calls += 1
        # The parameter, if a test registers one, takes part without changing the output.
        offset = 0.0 * self.frozen if hasattr(self, "frozen") else 0.0
        return _RoundStraightThrough.apply(x) + offset
