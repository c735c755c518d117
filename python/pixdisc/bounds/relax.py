"""Linear relaxations of the nonlinear layers (ReLU, max-pool) from bounds of their inputs."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair



@dataclass
class _ReluRelax:
    """Per element: lower line ``lower_slope * z``, upper line ``upper_slope * z + upper_icpt``."""

    lower_slope: Tensor
    upper_slope: Tensor
    upper_icpt: Tensor

    @functools.cached_property
    def stacked(self) -> Tensor:
        """The three maps along channels, (N, 3C, H, W), for a single patch gather."""
        return torch.cat([self.lower_slope, self.upper_slope, self.upper_icpt], 1)


@dataclass
class _PoolRelax:
    """Per window, a lower bound of ``w * max`` as a linear function of the chosen element ``z_j``.

    Plain max-pooling: ``z_j <= max <= t z_j + c``, so ``w * max >= w+ z_j +
    w- (t z_j + c)``. After fusing the ReLU below (``_fuse_relu``) ``z_j``
    is that ReLU's input and the slopes also carry its relaxation. In
    general: ``w * out >= (w+ pos_slope + w- neg_slope) z_j + w- neg_icpt``.
    """

    index: Tensor  # (N, C, Ho*Wo) flat input index (h*W + w) of z_j
    local: Tensor  # (N, C, Ho, Wo) position of z_j inside its window (row-major over the kernel)
    pos_slope: Optional[Tensor]  # (N, C, Ho, Wo); None means 1
    neg_slope: Tensor  # (N, C, Ho, Wo)
    neg_icpt: Tensor  # (N, C, Ho, Wo)
    loose: Tensor  # (N, C, Ho*Wo) True where no element dominates the window

    def pos(self) -> Tensor:
        return torch.ones_like(self.neg_slope) if self.pos_slope is None else self.pos_slope

    @functools.cached_property
    def stacked(self) -> Tensor:
        """local and the three maps along channels, (N, 4C, Ho, Wo); kernel positions are exact in floats."""
        return torch.cat([self.local.to(self.neg_slope.dtype), self.pos(), self.neg_slope, self.neg_icpt], 1)


def _fuse_relu(pool: _PoolRelax, relu: _ReluRelax) -> _PoolRelax:
    """Fold the ReLU feeding a max-pool with disjoint windows into the pool's relaxation.

    max and relu commute with nothing lost here: each ReLU output feeds one
    window at most, so relaxing it per window equals relaxing it once, and
    the backward pass skips a full-resolution ReLU step.
    """
    shape = pool.local.shape

    def at_choice(values: Tensor) -> Tensor:
        return values.flatten(2).gather(2, pool.index).reshape(shape)

    # w * max >= c1 z_j + w- c with c1 = w+ + w- t, whose sign is that of w
    # (t >= 0); then c1 relu(y_j) >= c1+ ls y_j + c1- (us y_j + ui).
    pos_slope = at_choice(relu.lower_slope)
    if pool.pos_slope is not None:
        pos_slope = pos_slope * pool.pos_slope
    neg_slope = pool.neg_slope * at_choice(relu.upper_slope)
    neg_icpt = pool.neg_icpt + pool.neg_slope * at_choice(relu.upper_icpt)
    return _PoolRelax(pool.index, pool.local, pos_slope, neg_slope, neg_icpt, pool.loose)


def _disjoint_windows(layer: nn.MaxPool2d) -> bool:
    (kh, kw), (sh, sw), _, (dh, dw) = _pool_geometry(layer)
    return sh >= (kh - 1) * dh + 1 and sw >= (kw - 1) * dw + 1


def _relu_relax(lower: Tensor, upper: Tensor) -> _ReluRelax:
    # For l < 0 < u: relu(z) <= u (z - l) / (u - l) (the chord, sound since
    # relu is convex) and relu(z) >= a z for any a in [0, 1]; CROWN's adaptive
    # choice a = 1 if u >= -l else 0 minimises the area between the lines.
    unstable = (lower < 0) & (upper > 0)
    active = (lower >= 0).to(lower.dtype)
    # where() keeps gradients finite: the division only runs where u > l.
    width = torch.where(unstable, upper - lower, torch.ones_like(lower))
    upper_slope = torch.where(unstable, upper / width, active)
    upper_icpt = torch.where(unstable, -upper_slope * lower, torch.zeros_like(lower))
    lower_slope = torch.where(unstable, (upper >= -lower).to(lower.dtype), active)
    return _ReluRelax(lower_slope, upper_slope, upper_icpt)


def _pool_geometry(layer: nn.MaxPool2d) -> Tuple[Tuple[int, int], ...]:
    kernel = _pair(layer.kernel_size)
    stride = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
    return kernel, stride, _pair(layer.padding), _pair(layer.dilation)


def _pool_windows(layer: nn.MaxPool2d, in_hw: Tuple[int, int], out_hw: Tuple[int, int], device: torch.device) -> Tensor:
    """(Ho*Wo, kh*kw) flat input index of every window element; -1 for padding or past the edge."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pool_geometry(layer)
    (height, width), (out_h, out_w) = in_hw, out_hw
    rows = torch.arange(out_h, device=device)[:, None] * sh - ph + torch.arange(kh, device=device)[None, :] * dh
    cols = torch.arange(out_w, device=device)[:, None] * sw - pw + torch.arange(kw, device=device)[None, :] * dw
    ok_rows = (rows >= 0) & (rows < height)
    ok_cols = (cols >= 0) & (cols < width)
    flat = rows[:, None, :, None] * width + cols[None, :, None, :]
    valid = ok_rows[:, None, :, None] & ok_cols[None, :, None, :]
    return torch.where(valid, flat, torch.full_like(flat, -1)).reshape(out_h * out_w, kh * kw)


def _pool_relax(layer: nn.MaxPool2d, lower: Tensor, upper: Tensor, out_hw: Tuple[int, int]) -> _PoolRelax:
    n, channels, height, width = lower.shape
    table = _pool_windows(layer, (height, width), out_hw, lower.device)
    valid = table >= 0
    safe = table.clamp(min=0)
    neg_inf = float("-inf")
    win_lower = torch.where(valid, lower.flatten(2)[..., safe], neg_inf)  # (N, C, P, kk)
    win_upper = torch.where(valid, upper.flatten(2)[..., safe], neg_inf)
    # Lower line: max(z) >= z_j for every j; the j with the largest lower
    # bound gives the highest line. Padding never wins (-inf).
    choice = win_lower.argmax(-1, keepdim=True)
    lower_j = win_lower.gather(-1, choice)
    upper_j = win_upper.gather(-1, choice)
    upper_others = win_upper.scatter(-1, choice, neg_inf).amax(-1, keepdim=True)
    # Upper: max(z) <= max(z_j, m) <= z_j + max(0, m - l_j) with
    # m = max_{i != j} u_i, or the constant max_i u_i. Both are sound; keep
    # the one with the smaller mean over z_j in [l_j, u_j]. A window whose
    # chosen element dominates (l_j >= m) gets the exact max = z_j.
    gap = (upper_others - lower_j).clamp(min=0)
    top = win_upper.amax(-1, keepdim=True)
    use_line = (lower_j + upper_j) / 2 + gap <= top
    slope = use_line.to(lower.dtype)
    icpt = torch.where(use_line, gap, top)
    out_h, out_w = out_hw
    index = safe.expand(n, channels, -1, -1).gather(-1, choice).squeeze(-1)
    return _PoolRelax(
        index=index,
        local=choice.reshape(n, channels, out_h, out_w),
        pos_slope=None,
        neg_slope=slope.reshape(n, channels, out_h, out_w),
        neg_icpt=icpt.reshape(n, channels, out_h, out_w),
        loose=(upper_others > lower_j).squeeze(-1),
    )


def _relaxation(layer: nn.Module, lower: Tensor, upper: Tensor, out_shape: torch.Size) -> Union[_ReluRelax, _PoolRelax]:
    if isinstance(layer, nn.ReLU):
        return _relu_relax(lower, upper)
    return _pool_relax(layer, lower, upper, (out_shape[-2], out_shape[-1]))


def _needs_refinement(
    layer: nn.Module, relax: Union[_ReluRelax, _PoolRelax, None], lower: Tensor, upper: Tensor
) -> Tensor:
    """Elements (N, ...) whose relaxation is not already exact, so tighter bounds could help."""
    if isinstance(layer, nn.ReLU):
        return (lower < 0) & (upper > 0)
    assert isinstance(relax, _PoolRelax)
    n, channels, height, width = lower.shape
    out_h, out_w = relax.local.shape[-2:]
    table = _pool_windows(layer, (height, width), (out_h, out_w), lower.device)
    members = (relax.loose[..., None] & (table >= 0)).to(lower.dtype)
    marks = torch.zeros(n, channels, height * width, dtype=lower.dtype, device=lower.device)
    marks = marks.scatter_add(-1, table.clamp(min=0).reshape(-1).expand(n, channels, -1), members.flatten(2))
    return (marks > 0).reshape(lower.shape)

