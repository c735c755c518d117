"""Linear bound states (dense or conv patches) and one backward step of each layer over them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from .interval import _bias, _bn_affine, _channel_view, _conv_pad_lo, _weight
from .relax import _PoolRelax, _ReluRelax, _pool_geometry

# Largest matrix built to apply a conv's adjoint to patches by one GEMM.
_PATCH_MATRIX_ELEMENTS = 1 << 22



@dataclass
class _Dense:
    """Coefficients ``A`` (n, S, *node_shape); n == 1 while they are shared by the whole batch."""

    coef: Tensor


@dataclass
class _Patches:
    """Coefficients that are zero outside a (ph, pw) window per spec, placed at (oy, ox) of a (C, H, W) node.

    This is CROWN's standard saving for conv layers: a neuron of a conv
    layer depends on a small receptive field only, so its coefficients are
    kept as that window instead of a full image. Entries outside the node
    (padding) are kept at zero.
    """

    coef: Tensor  # (n, S, C, ph, pw)
    oy: Tensor  # (n_off, S) long, n_off == 1 when all samples share the placement
    ox: Tensor  # (n_off, S) long
    height: int
    width: int


_State = Union[_Dense, _Patches]


def _patch_index(state: _Patches) -> Tuple[Tensor, Tuple[int, int, int, int]]:
    """Flat index (n_off, S, ph*pw) of each patch element into the node padded by (top, bottom, left, right)."""
    ph, pw = state.coef.shape[-2:]
    oy, ox = state.oy, state.ox
    top = max(0, -int(oy.min()))
    bottom = max(0, int(oy.max()) + ph - state.height)
    left = max(0, -int(ox.min()))
    right = max(0, int(ox.max()) + pw - state.width)
    padded_w = state.width + left + right
    rows = (oy + top)[..., None] + torch.arange(ph, device=oy.device)
    cols = (ox + left)[..., None] + torch.arange(pw, device=ox.device)
    index = (rows[..., :, None] * padded_w + cols[..., None, :]).reshape(oy.shape + (ph * pw,))
    return index, (top, bottom, left, right)


def _gather_patches(maps: Tensor, state: _Patches) -> Tensor:
    """Values of per-sample maps (N, C, H, W) under every patch: (N, S, C, ph, pw), zero off the node."""
    ph, pw = state.coef.shape[-2:]
    index, (top, bottom, left, right) = _patch_index(state)
    padded = F.pad(maps, (left, right, top, bottom)).flatten(2)
    n, channels = maps.shape[:2]
    specs = index.shape[1]
    if index.shape[0] == 1:
        taken = padded.index_select(2, index.reshape(-1))
    else:
        taken = padded.gather(2, index.reshape(n, 1, -1).expand(n, channels, -1))
    return taken.reshape(n, channels, specs, ph, pw).transpose(1, 2)


def _mask_patches(state: _Patches) -> _Patches:
    ph, pw = state.coef.shape[-2:]
    rows = state.oy[..., None] + torch.arange(ph, device=state.oy.device)
    cols = state.ox[..., None] + torch.arange(pw, device=state.ox.device)
    inside = ((rows >= 0) & (rows < state.height))[..., :, None] & ((cols >= 0) & (cols < state.width))[..., None, :]
    if bool(inside.all()):
        return state
    coef = state.coef * inside.unsqueeze(2).to(state.coef.dtype)
    return _Patches(coef, state.oy, state.ox, state.height, state.width)


def _to_dense(state: _State) -> _Dense:
    if isinstance(state, _Dense):
        return state
    n, specs, channels, ph, pw = state.coef.shape
    index, (top, bottom, left, right) = _patch_index(state)
    n = max(n, index.shape[0])
    padded_h, padded_w = state.height + top + bottom, state.width + left + right
    dense = state.coef.new_zeros(n, specs, channels, padded_h * padded_w)
    coef = state.coef.reshape(-1, specs, channels, ph * pw).expand(n, -1, -1, -1)
    dense = dense.scatter_add(-1, index.unsqueeze(2).expand(n, specs, channels, -1), coef)
    dense = dense.reshape(n, specs, channels, padded_h, padded_w)
    return _Dense(dense[..., top : top + state.height, left : left + state.width])


def _simple_avgpool(layer: nn.Module) -> bool:
    """An AvgPool2d that is a plain depthwise conv with uniform weights (patches can go through it)."""
    return (
        isinstance(layer, nn.AvgPool2d)
        and not layer.ceil_mode
        and (layer.count_include_pad or _pair(layer.padding) == (0, 0))
    )


def _patchable(layer: nn.Module, in_shape: torch.Size) -> bool:
    if len(in_shape) != 3:
        return False
    return isinstance(layer, (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d, nn.Identity)) or _simple_avgpool(layer)


# --------------------------------------------------------------------------- backward steps


def _conv_adjoint(coef: Tensor, layer: nn.Conv2d, weight: Tensor, in_hw: Tuple[int, int]) -> Tensor:
    """Adjoint of the conv (no bias) applied to (B, Cout, Ho, Wo): (B, Cin, H, W)."""
    out = F.conv_transpose2d(coef, weight, None, layer.stride, 0, 0, layer.groups, layer.dilation)
    # Without padding the transpose covers the padded input from its first
    # row; rows the conv never read (stride leftovers) get zeros, then the
    # padding is cropped away. This also handles asymmetric 'same' padding.
    top, left = _conv_pad_lo(layer)
    height, width = in_hw
    short_h = top + height - out.shape[-2]
    short_w = left + width - out.shape[-1]
    if short_h > 0 or short_w > 0:
        out = F.pad(out, (0, max(short_w, 0), 0, max(short_h, 0)))
    return out[..., top : top + height, left : left + width]


def _back_affine_dense(
    layer: nn.Module, coef: Tensor, in_shape: torch.Size, dtype: torch.dtype
) -> Tuple[Tensor, Optional[Tensor]]:
    n, specs = coef.shape[:2]
    if isinstance(layer, nn.Linear):
        weight, bias = _weight(layer, dtype), _bias(layer, dtype)
        term = None
        if bias is not None:
            term = coef @ bias
            term = term.flatten(2).sum(-1) if term.dim() > 2 else term
        return coef @ weight, term
    if isinstance(layer, nn.Conv2d):
        weight, bias = _weight(layer, dtype), _bias(layer, dtype)
        out = _conv_adjoint(coef.reshape((n * specs,) + coef.shape[2:]), layer, weight, tuple(in_shape[-2:]))
        term = None if bias is None else coef.sum((3, 4)) @ bias
        return out.reshape((n, specs) + tuple(in_shape)), term
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale, shift = _bn_affine(layer, dtype)
        channel_sums = coef.reshape(n, specs, scale.shape[0], -1).sum(-1)
        return coef * _channel_view(scale, coef.dim() - 1), channel_sums @ shift
    if isinstance(layer, nn.AvgPool2d):
        flat = coef.reshape((n * specs,) + coef.shape[2:])
        shape_only = flat.new_zeros(()).expand((n * specs,) + tuple(in_shape))
        out = torch.ops.aten.avg_pool2d_backward(
            flat,
            shape_only,
            list(_pair(layer.kernel_size)),
            list(_pair(layer.stride if layer.stride is not None else layer.kernel_size)),
            list(_pair(layer.padding)),
            layer.ceil_mode,
            layer.count_include_pad,
            layer.divisor_override,
        )
        return out.reshape((n, specs) + tuple(in_shape)), None
    if isinstance(layer, nn.Flatten):
        return coef.reshape((n, specs) + tuple(in_shape)), None
    if isinstance(layer, nn.Identity):
        return coef, None
    raise AssertionError(f"no affine backward for {type(layer).__name__}")  # pragma: no cover


def _back_relu_dense(relax: _ReluRelax, coef: Tensor) -> Tuple[Tensor, Tensor]:
    # Lower bound of coef . relu(z): positive coefficients take the lower
    # line, negative ones the upper line.
    positive, negative = coef.clamp(min=0), coef.clamp(max=0)
    # alpha-CROWN's slopes are per spec already (N, S, ...); CROWN's are per box.
    lower_slope = relax.lower_slope if relax.lower_slope.dim() == coef.dim() else relax.lower_slope.unsqueeze(1)
    out = positive * lower_slope
    out = out.addcmul_(negative, relax.upper_slope.unsqueeze(1))  # in place: one pass less
    term = (negative.flatten(2) @ relax.upper_icpt.flatten(1).unsqueeze(-1)).squeeze(-1)
    return out, term


def _back_pool_dense(relax: _PoolRelax, coef: Tensor, in_shape: torch.Size) -> Tuple[Tensor, Tensor]:
    n_batch, channels, windows = relax.index.shape
    specs = coef.shape[1]
    flat = coef.reshape(coef.shape[0], specs, channels, windows)
    pos_slope = relax.pos().reshape(n_batch, 1, channels, windows)
    neg_slope = relax.neg_slope.reshape(n_batch, 1, channels, windows)
    icpt = relax.neg_icpt.reshape(n_batch, 1, channels, windows)
    negative = flat.clamp(max=0)
    weights = (flat.clamp(min=0) * pos_slope).addcmul_(negative, neg_slope).expand(n_batch, specs, channels, windows)
    term = (negative * icpt).sum((2, 3))
    height, width = in_shape[-2:]
    out = flat.new_zeros(n_batch, specs, channels, height * width)
    out = out.scatter_add(-1, relax.index.unsqueeze(1).expand(n_batch, specs, channels, windows), weights)
    return out.reshape((n_batch, specs) + tuple(in_shape)), term


def _back_patches(
    layer: nn.Module, relax: object, state: _Patches, in_shape: torch.Size, dtype: torch.dtype
) -> Tuple[_Patches, Optional[Tensor]]:
    coef = state.coef
    n, specs, channels, ph, pw = coef.shape
    in_h, in_w = int(in_shape[-2]), int(in_shape[-1])
    if isinstance(layer, (nn.Conv2d, nn.AvgPool2d)):
        if isinstance(layer, nn.Conv2d):
            weight, bias = _weight(layer, dtype), _bias(layer, dtype)
            stride, groups, dilation = _pair(layer.stride), layer.groups, _pair(layer.dilation)
            top, left = _conv_pad_lo(layer)
        else:
            kh, kw = _pair(layer.kernel_size)
            divisor = layer.divisor_override or kh * kw
            weight = coef.new_full((channels, 1, kh, kw), 1.0 / divisor)
            bias, groups, dilation = None, channels, (1, 1)
            stride = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
            top, left = _pair(layer.padding)
        args = (None, stride, 0, 0, groups, dilation)
        basis_size = channels * ph * pw
        out_h = (ph - 1) * stride[0] + (weight.shape[-2] - 1) * dilation[0] + 1
        out_w = (pw - 1) * stride[1] + (weight.shape[-1] - 1) * dilation[1] + 1
        out_size = weight.shape[1] * groups * out_h * out_w
        if basis_size * out_size <= _PATCH_MATRIX_ELEMENTS:
            # Every patch goes through the same small linear map; one GEMM
            # with its matrix is far faster on CPU than conv_transpose2d on
            # a huge batch of tiny images.
            basis = torch.eye(basis_size, dtype=coef.dtype, device=coef.device).reshape(basis_size, channels, ph, pw)
            matrix = F.conv_transpose2d(basis, weight, *args).reshape(basis_size, out_size)
            out = (coef.reshape(n, specs, basis_size) @ matrix).reshape(n, specs, -1, out_h, out_w)
        else:
            out = F.conv_transpose2d(coef.reshape(n * specs, channels, ph, pw), weight, *args)
            out = out.reshape((n, specs) + out.shape[1:])
        term = None if bias is None else coef.sum((3, 4)) @ bias
        moved = _Patches(out, state.oy * stride[0] - top, state.ox * stride[1] - left, in_h, in_w)
        return _mask_patches(moved), term
    if isinstance(layer, nn.BatchNorm2d):
        scale, shift = _bn_affine(layer, dtype)
        term = coef.sum((3, 4)) @ shift
        return _Patches(coef * scale[:, None, None], state.oy, state.ox, in_h, in_w), term
    if isinstance(layer, nn.Identity):
        return state, None
    if isinstance(layer, nn.ReLU):
        assert isinstance(relax, _ReluRelax)
        # One gather for the three maps: the gather is the costly part.
        lower_slope, upper_slope, upper_icpt = _gather_patches(relax.stacked, state).chunk(3, dim=2)
        positive, negative = coef.clamp(min=0), coef.clamp(max=0)
        out = (positive * lower_slope).addcmul_(negative, upper_slope)
        term = (negative * upper_icpt).sum((2, 3, 4))
        return _Patches(out, state.oy, state.ox, in_h, in_w), term
    assert isinstance(layer, nn.MaxPool2d) and isinstance(relax, _PoolRelax)
    (kh, kw), (sh, sw), (pad_h, pad_w), (dh, dw) = _pool_geometry(layer)
    local, pos_slope, neg_slope, icpt = _gather_patches(relax.stacked, state).chunk(4, dim=2)
    local = local.to(torch.long)
    negative = coef.clamp(max=0)
    weights = (coef.clamp(min=0) * pos_slope).addcmul_(negative, neg_slope)
    term = (negative * icpt).sum((2, 3, 4))
    out_h, out_w = (ph - 1) * sh + (kh - 1) * dh + 1, (pw - 1) * sw + (kw - 1) * dw + 1
    rows = torch.arange(ph, device=coef.device)[:, None] * sh + (local // kw) * dh
    cols = torch.arange(pw, device=coef.device)[None, :] * sw + (local % kw) * dw
    target = (rows * out_w + cols).flatten(3)
    n_out = weights.shape[0]
    out = coef.new_zeros(n_out, specs, channels, out_h * out_w)
    out = out.scatter_add(-1, target.expand(n_out, -1, -1, -1), weights.flatten(3))
    out = out.reshape(n_out, specs, channels, out_h, out_w)
    return _Patches(out, state.oy * sh - pad_h, state.ox * sw - pad_w, in_h, in_w), term



# --------------------------------------------------------------------------- graph joins and splits


def _add_states(a: _State, b: _State) -> _State:
    """Sum of two linear bounds on the same node (a node read by several operations gets each one's share).

    Patches whose placements differ by the same offset for every spec (the
    two branches of a residual block) become one patch covering both;
    anything else is added densely.
    """
    if isinstance(a, _Patches) and isinstance(b, _Patches):
        dy, dx = b.oy - a.oy, b.ox - a.ox
        if bool((dy == dy.flatten()[0]).all()) and bool((dx == dx.flatten()[0]).all()):
            dy0, dx0 = int(dy.flatten()[0]), int(dx.flatten()[0])
            (ah, aw), (bh, bw) = a.coef.shape[-2:], b.coef.shape[-2:]
            top, left = min(0, dy0), min(0, dx0)
            height, width = max(ah, dy0 + bh) - top, max(aw, dx0 + bw) - left
            if height * width < a.height * a.width:
                # Each part padded with zeros to the common window; both were
                # zero off the node already, so the sum is too.
                coef_a = F.pad(a.coef, (-left, width - aw + left, -top, height - ah + top))
                coef_b = F.pad(b.coef, (dx0 - left, width - bw - dx0 + left, dy0 - top, height - bh - dy0 + top))
                return _Patches(coef_a + coef_b, torch.minimum(a.oy, b.oy), torch.minimum(a.ox, b.ox), a.height, a.width)
    return _Dense(_to_dense(a).coef + _to_dense(b).coef)


def _split_state(state: _State, dim: int, sizes: Tuple[int, ...]) -> Tuple[_State, ...]:
    """The shares of the inputs of ``torch.cat(inputs, dim)`` (dim counted with the batch axis)."""
    if isinstance(state, _Patches) and dim == 1:
        # Channels of a patch are channels of the node: split them, keep the placement.
        return tuple(_Patches(part, state.oy, state.ox, state.height, state.width)
                     for part in state.coef.split(list(sizes), dim=2))
    coef = _to_dense(state).coef
    # Coefficients are (n, S, *node_shape): the node's dim d is the coefficients' d + 1.
    return tuple(_Dense(part) for part in coef.split(list(sizes), dim=dim + 1))


def _reshape_state(state: _State, in_shape: torch.Size) -> _Dense:
    coef = _to_dense(state).coef
    return _Dense(coef.reshape(coef.shape[:2] + tuple(in_shape)))
