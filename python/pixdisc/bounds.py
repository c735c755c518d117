"""Sound bounds of ReLU classifiers over input boxes, interval (IBP) and CROWN, in pure torch, for certification."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

__all__ = [
    "SUPPORTED_LAYERS",
    "certified_by_bounds",
    "crown_bounds",
    "interval_bounds",
    "margin_lower_bound",
    "margin_matrix",
]

# Exact types only: a subclass may override forward() and then the bounds
# below would describe a different function than the one that runs.
SUPPORTED_LAYERS: Tuple[type, ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.Flatten,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Identity,
)
_NONLINEAR: Tuple[type, ...] = (nn.ReLU, nn.MaxPool2d)
# Affine layers that mix elements; interval arithmetic is exact through one of
# them (and any elementwise or reshaping layers) but not through two.
_MIXING: Tuple[type, ...] = (nn.Linear, nn.Conv2d, nn.AvgPool2d)
# Size of the largest coefficient tensor one backward chunk may build. A
# chunk allocates a few temporaries of this size; small chunks also stay in
# cache (on the IBP paper's MNIST CNN, 16 MiB was faster than 128 MiB).
_CHUNK_BYTES = 1 << 24
# Largest matrix built to apply a conv's adjoint to patches by one GEMM.
_PATCH_MATRIX_ELEMENTS = 1 << 22
# Patch-mode coefficients for conv nodes, and ReLU folded into the max-pool
# after it (both off only to cross-check in tests).
_USE_PATCHES = True
_FUSE_RELU_POOL = True

Bounds = Tuple[Tensor, Tensor]


# --------------------------------------------------------------------------- network walking


def _supported_names() -> str:
    return ", ".join(t.__name__ for t in SUPPORTED_LAYERS)


def _flatten_net(net: nn.Module) -> List[nn.Module]:
    """The network as a flat list of layers, nested Sequentials expanded; refuses what it cannot bound."""
    if net._forward_hooks or net._forward_pre_hooks:
        # A hook may rewrite inputs or outputs; the bounds would then
        # describe a different function than the one that runs.
        raise ValueError(f"{type(net).__name__} has forward hooks; remove them before bound propagation")
    if isinstance(net, nn.Sequential) and type(net).forward is nn.Sequential.forward:
        layers: List[nn.Module] = []
        for child in net:
            layers.extend(_flatten_net(child))
        return layers
    if type(net) in SUPPORTED_LAYERS:
        _check_layer(net)
        return [net]
    raise TypeError(
        f"bound propagation does not support layer {type(net).__name__}; it supports nn.Sequential "
        f"(nested, forward not overridden) of exactly these layer types: {_supported_names()}"
    )


def _check_layer(layer: nn.Module) -> None:
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        raise ValueError(f"Conv2d with padding_mode={layer.padding_mode!r} is not supported (only 'zeros')")
    if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
        raise ValueError("MaxPool2d with return_indices=True is not supported")
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        # Training-mode batch norm normalises by statistics of the batch
        # itself, which is not a fixed function of one input.
        if layer.training:
            raise ValueError(f"{type(layer).__name__} must be in eval mode for bound propagation (call net.eval())")
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(f"{type(layer).__name__} without running statistics uses batch statistics; not supported")


def _resolve_dtype(layers: List[nn.Module], lower: Tensor, dtype: Optional[torch.dtype]) -> torch.dtype:
    if dtype is None:
        for layer in layers:
            for tensor in list(layer.parameters()) + list(layer.buffers()):
                if tensor.is_floating_point():
                    dtype = tensor.dtype
                    break
            if dtype is not None:
                break
    if dtype is None:
        dtype = lower.dtype if lower.is_floating_point() else torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    return dtype


def _check_box(lower: Tensor, upper: Tensor, dtype: torch.dtype) -> Bounds:
    if not isinstance(lower, Tensor) or not isinstance(upper, Tensor):
        raise TypeError("lower and upper must be torch tensors")
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper must have the same shape, got {tuple(lower.shape)} and {tuple(upper.shape)}")
    if lower.dim() < 2:
        raise ValueError(f"lower/upper need a batch dimension (N, ...), got shape {tuple(lower.shape)}")
    upper = upper.to(lower.device)
    if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()):
        raise ValueError("lower and upper must be finite (and not NaN)")
    bad = lower > upper
    if bad.any():
        worst = (lower - upper).max().item()
        raise ValueError(f"lower > upper at {int(bad.sum())} element(s) (largest violation {worst:.3g})")
    return _round_outward(lower, dtype, down=True), _round_outward(upper, dtype, down=False)


def _round_outward(values: Tensor, dtype: torch.dtype, down: bool) -> Tensor:
    """Cast to ``dtype`` so that the box can only grow: a narrowing cast rounds to nearest, which could cut it."""
    cast = values.to(dtype)
    if not values.is_floating_point() or torch.finfo(values.dtype).bits <= torch.finfo(dtype).bits:
        return cast
    back = cast.to(values.dtype)
    if down:
        return torch.where(back > values, torch.nextafter(cast, torch.full_like(cast, float("-inf"))), cast)
    return torch.where(back < values, torch.nextafter(cast, torch.full_like(cast, float("inf"))), cast)


def _weight(layer: nn.Module, dtype: torch.dtype) -> Tensor:
    return layer.weight.to(dtype)


def _bias(layer: nn.Module, dtype: torch.dtype) -> Optional[Tensor]:
    return None if layer.bias is None else layer.bias.to(dtype)


def _bn_affine(layer: nn.Module, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Eval-mode batch norm as a per-channel scale and shift."""
    var = layer.running_var.to(dtype)
    mean = layer.running_mean.to(dtype)
    scale = torch.rsqrt(var + layer.eps)
    if layer.weight is not None:
        scale = scale * layer.weight.to(dtype)
    shift = -mean * scale
    if layer.bias is not None:
        shift = shift + layer.bias.to(dtype)
    return scale, shift


def _channel_view(vector: Tensor, ndim: int) -> Tensor:
    """Reshape a per-channel vector to broadcast against an (N, C, ...) tensor of ``ndim`` dims."""
    return vector.reshape((-1,) + (1,) * (ndim - 2))


def _conv_pads(layer: nn.Conv2d) -> Tuple[int, int, int, int]:
    """Zero rows/columns the conv adds (top, bottom, left, right)."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return 0, 0, 0, 0
        # 'same' (stride 1): ATen pads dilation*(k-1) in total, the smaller half first.
        (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
        total_h, total_w = dh * (kh - 1), dw * (kw - 1)
        return total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2
    return layer.padding[0], layer.padding[0], layer.padding[1], layer.padding[1]


def _conv_pad_lo(layer: nn.Conv2d) -> Tuple[int, int]:
    top, _, left, _ = _conv_pads(layer)
    return top, left


def _conv(x: Tensor, layer: nn.Conv2d, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The layer's convolution with explicit padding (asymmetric 'same' padding padded by hand, silently)."""
    top, bottom, left, right = _conv_pads(layer)
    if top != bottom or left != right:
        x = F.pad(x, (left, right, top, bottom))
        top = left = 0
    return F.conv2d(x, weight, bias, layer.stride, (top, left), layer.dilation, layer.groups)


# --------------------------------------------------------------------------- interval steps


def _ibp_step(layer: nn.Module, lower: Tensor, upper: Tensor, dtype: torch.dtype) -> Bounds:
    """Interval image of one layer. Affine layers use centre/radius form, exact for a single affine map."""
    if isinstance(layer, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)):
        mid = (upper + lower) / 2
        rad = (upper - lower) / 2
        if isinstance(layer, nn.Linear):
            weight = _weight(layer, dtype)
            out_mid = F.linear(mid, weight, _bias(layer, dtype))
            out_rad = F.linear(rad, weight.abs())
        elif isinstance(layer, nn.Conv2d):
            weight = _weight(layer, dtype)
            out_mid = _conv(mid, layer, weight, _bias(layer, dtype))
            out_rad = _conv(rad, layer, weight.abs(), None)
        else:
            scale, shift = _bn_affine(layer, dtype)
            scale, shift = _channel_view(scale, mid.dim()), _channel_view(shift, mid.dim())
            out_mid = mid * scale + shift
            out_rad = rad * scale.abs()
        return out_mid - out_rad, out_mid + out_rad
    if isinstance(layer, nn.ReLU):
        return lower.clamp(min=0), upper.clamp(min=0)
    # Max/average pooling are monotone (non-negative weights), Flatten and
    # Identity are reshapes: the image of the endpoints bounds the image.
    out_lower, out_upper = layer(lower), layer(upper)
    if isinstance(layer, nn.Flatten) and out_lower.shape[0] != lower.shape[0]:
        raise ValueError("Flatten must keep the batch dimension (start_dim >= 1)")
    return out_lower, out_upper


# --------------------------------------------------------------------------- relaxations


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


# --------------------------------------------------------------------------- linear bound states


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
    out = positive * relax.lower_slope.unsqueeze(1)
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


# --------------------------------------------------------------------------- the propagator


class _Propagator:
    """One network and one input box; computes interval and CROWN bounds of linear specs of the output."""

    def __init__(self, net: nn.Module, lower: Tensor, upper: Tensor, dtype: Optional[torch.dtype]) -> None:
        self.layers = _flatten_net(net)
        self.dtype = _resolve_dtype(self.layers, lower, dtype)
        self.lower, self.upper = _check_box(lower, upper, self.dtype)
        self.batch = self.lower.shape[0]
        self._ibp_nodes: Optional[List[Bounds]] = None

    # -- interval pass

    def ibp_nodes(self) -> List[Bounds]:
        """Interval bounds of the input of every layer and of the output (len = layers + 1)."""
        if self._ibp_nodes is None:
            nodes = [(self.lower, self.upper)]
            for layer in self.layers:
                nodes.append(_ibp_step(layer, *nodes[-1], self.dtype))
            self._ibp_nodes = nodes
        return self._ibp_nodes

    @property
    def shapes(self) -> List[torch.Size]:
        return [node[0].shape[1:] for node in self.ibp_nodes()]

    def num_outputs(self) -> int:
        return int(self.shapes[-1].numel())

    def spec(self, C: Optional[Tensor]) -> Tensor:
        """The specification as coefficients (n, S, *output_shape); identity when C is None."""
        out_shape = self.shapes[-1]
        outputs = self.num_outputs()
        if C is None:
            eye = torch.eye(outputs, dtype=self.dtype, device=self.lower.device)
            return eye.reshape((1, outputs) + tuple(out_shape))
        if not isinstance(C, Tensor):
            raise TypeError("C must be a torch tensor of shape (N, S, num_outputs) or (S, num_outputs)")
        if C.dim() == 2:
            C = C.unsqueeze(0)
        if C.dim() != 3 or C.shape[-1] != outputs or C.shape[0] not in (1, self.batch):
            raise ValueError(
                f"C must have shape (N={self.batch}, S, num_outputs={outputs}) or (S, {outputs}), got {tuple(C.shape)}"
            )
        C = C.to(device=self.lower.device, dtype=self.dtype)
        if not torch.isfinite(C).all():
            raise ValueError("C must be finite")
        return C.reshape(C.shape[:2] + tuple(out_shape))

    def tail_start(self) -> int:
        """Index of the first layer of the affine tail that follows the last nonlinear layer."""
        start = 0
        for index, layer in enumerate(self.layers):
            if isinstance(layer, _NONLINEAR):
                start = index + 1
        return start

    # -- linear bounds

    def _lower(
        self, state: _State, node: int, stop: int, nodes: List[Bounds], relax: Dict[object, object]
    ) -> Tuple[Tensor, int]:
        """Lower bound (N, S) of ``state . x_node`` over ``nodes[stop]``, backward through layers stop..node-1.

        Also returns the largest number of coefficients one spec needed
        (summed over the batch), for chunking.
        """
        shapes = self.shapes
        specs = state.coef.shape[1]
        peak = state.coef.shape[0] * state.coef[0, 0].numel()
        total: Union[Tensor, float] = 0.0
        index = node - 1
        while index >= stop:
            layer = self.layers[index]
            in_shape = shapes[index]
            if isinstance(state, _Patches):
                ph, pw = state.coef.shape[-2:]
                # A patch as large as the node saves nothing; go dense.
                if not _patchable(layer, in_shape) or ph * pw >= state.height * state.width:
                    state = _to_dense(state)
            fused = relax.get(("fused", index))
            # A max-pool with its ReLU folded in takes both layers at once.
            skip = _FUSE_RELU_POOL and fused is not None and index - 1 >= stop
            layer_relax = fused if skip else relax.get(index)
            index -= 2 if skip else 1
            if isinstance(state, _Patches):
                state, term = _back_patches(layer, layer_relax, state, in_shape, self.dtype)
            elif isinstance(layer_relax, _ReluRelax):
                coef, term = _back_relu_dense(layer_relax, state.coef)
                state = _Dense(coef)
            elif isinstance(layer_relax, _PoolRelax):
                coef, term = _back_pool_dense(layer_relax, state.coef, in_shape)
                state = _Dense(coef)
            else:
                coef, term = _back_affine_dense(layer, state.coef, in_shape, self.dtype)
                state = _Dense(coef)
            if term is not None:
                total = total + term
            peak = max(peak, state.coef.shape[0] * state.coef[0, 0].numel())
        lower, upper = nodes[stop]
        if isinstance(state, _Patches):
            coef = state.coef
            if coef.shape[-2] * coef.shape[-1] >= state.height * state.width:
                state = _to_dense(state)
        if isinstance(state, _Patches):
            coef = state.coef
            box_lower, box_upper = _gather_patches(torch.cat([lower, upper], 1), state).chunk(2, dim=2)
            value = (coef.clamp(min=0) * box_lower).sum((2, 3, 4))
            value = value + (coef.clamp(max=0) * box_upper).sum((2, 3, 4))
        else:
            # Exact minimum of a linear function over the box: each
            # coefficient meets the end of the interval that lowers it.
            coef = state.coef.flatten(2)
            value = (coef.clamp(min=0) @ lower.flatten(1).unsqueeze(-1)).squeeze(-1)
            value = value + (coef.clamp(max=0) @ upper.flatten(1).unsqueeze(-1)).squeeze(-1)
        value = value + total
        return value.expand(self.batch, specs), peak

    def _chunked(
        self,
        make: Callable[[int, int], _State],
        units: int,
        node: int,
        stop: int,
        nodes: List[Bounds],
        relax: Dict[object, object],
    ) -> List[Tensor]:
        """Run ``_lower`` on ``make(a, b)`` for consecutive unit ranges sized to the memory budget."""
        budget = max(1, _CHUNK_BYTES * 8 // torch.finfo(self.dtype).bits)
        results: List[Tensor] = []
        start, step = 0, 1  # a one-unit probe measures the cost per unit
        while start < units:
            stop_unit = min(units, start + step)
            state = make(start, stop_unit)
            value, per_spec = self._lower(state, node, stop, nodes, relax)
            results.append(value)
            if start == 0:
                specs_per_unit = max(1, state.coef.shape[1] // (stop_unit - start))
                step = max(1, budget // (per_spec * specs_per_unit))
            start = stop_unit
        return results

    def spec_lower(self, A: Tensor, node: int, stop: int, nodes: List[Bounds], relax: Dict[object, object]) -> Tensor:
        if A.shape[1] == 0 or self.batch == 0:
            return A.new_zeros(self.batch, A.shape[1])
        parts = self._chunked(lambda a, b: _Dense(A[:, a:b]), A.shape[1], node, stop, nodes, relax)
        return torch.cat(parts, 1)

    def tail_lower(self, nodes: List[Bounds], A: Tensor) -> Tensor:
        """Exact lower bound of the affine tail over the interval bounds at its start."""
        return self.spec_lower(A, len(self.layers), self.tail_start(), nodes, {})

    # -- CROWN intermediate bounds

    def crown_nodes(self, intermediate: str) -> Tuple[List[Bounds], Dict[object, object]]:
        """Bounds of every layer input, refined by CROWN where that can help, and the relaxations."""
        nodes: List[Bounds] = [(self.lower, self.upper)]
        relax: Dict[object, object] = {}
        mixing, seen_nonlinear = 0, False
        for index, layer in enumerate(self.layers):
            lower, upper = nodes[index]
            if isinstance(layer, _NONLINEAR):
                out = _ibp_step(layer, lower, upper, self.dtype)
                # Interval bounds are already exact after a single affine map
                # of the input box; after a nonlinear layer, elementwise
                # steps cannot beat the intervals either. Only a mixing
                # layer after a relaxation (or two from the input) gains.
                if intermediate == "crown" and mixing >= (1 if seen_nonlinear else 2):
                    estimate = _relaxation(layer, lower, upper, out[0].shape)
                    need = _needs_refinement(layer, estimate, lower, upper)
                    lower, upper = self._refine(index, lower, upper, need, nodes, relax)
                    nodes[index] = (lower, upper)
                    out = _ibp_step(layer, lower, upper, self.dtype)
                relax[index] = _relaxation(layer, lower, upper, out[0].shape)
                below = relax.get(index - 1)
                if isinstance(layer, nn.MaxPool2d) and isinstance(below, _ReluRelax) and _disjoint_windows(layer):
                    relax[("fused", index)] = _fuse_relu(relax[index], below)
                seen_nonlinear, mixing = True, 0
            else:
                mixing += type(layer) in _MIXING
                out = _ibp_step(layer, lower, upper, self.dtype)
            nodes.append(out)
        return nodes, relax

    def _refine(
        self, node: int, lower: Tensor, upper: Tensor, need: Tensor, nodes: List[Bounds], relax: Dict[object, object]
    ) -> Bounds:
        """CROWN bounds of the needed elements of node ``node``, intersected with the intervals.

        Each sample gets its own list of elements (padded to the longest
        with elements it does not need, whose bounds are just as sound), so
        one image with many unstable neurons does not make the others pay.
        """
        flat_need = need.flatten(1)
        counts = flat_need.sum(1)
        widest = int(counts.max()) if counts.numel() else 0
        if widest == 0:
            return lower, upper
        # Needed elements first, each sample in ascending element order.
        order = torch.argsort((~flat_need).to(torch.int8), dim=1, stable=True)[:, :widest]
        shape = self.shapes[node]
        patches = _USE_PATCHES and len(shape) == 3 and _patchable(self.layers[node - 1], self.shapes[node - 1])
        device = self.lower.device

        def make(a: int, b: int) -> _State:
            chunk = order[:, a:b]
            count = chunk.shape[1]
            # Each element twice: +e (its lower bound) and -e (minus its upper).
            both = torch.cat([chunk, chunk], 1)
            sign = torch.ones(1, 2 * count, dtype=self.dtype, device=device)
            sign[:, count:] = -1
            if patches:
                channels, height, width = (int(size) for size in shape)
                coef = torch.zeros(self.batch, 2 * count, channels, dtype=self.dtype, device=device)
                channel = (both // (height * width)).unsqueeze(2)
                coef = coef.scatter(2, channel, sign.expand(self.batch, -1).unsqueeze(2))
                return _Patches(coef[..., None, None], (both // width) % height, both % width, height, width)
            coef = torch.zeros(self.batch, 2 * count, shape.numel(), dtype=self.dtype, device=device)
            coef = coef.scatter(2, both.unsqueeze(2), sign.expand(self.batch, -1).unsqueeze(2))
            return _Dense(coef.reshape((self.batch, 2 * count) + tuple(shape)))

        parts = self._chunked(make, widest, node, 0, nodes, relax)
        lows = torch.cat([part[:, : part.shape[1] // 2] for part in parts], 1)
        highs = torch.cat([-part[:, part.shape[1] // 2 :] for part in parts], 1)
        flat_lower, flat_upper = lower.flatten(1), upper.flatten(1)
        # Both bounds are sound, so their intersection is.
        flat_lower = flat_lower.scatter(1, order, torch.maximum(flat_lower.gather(1, order), lows))
        flat_upper = flat_upper.scatter(1, order, torch.minimum(flat_upper.gather(1, order), highs))
        return flat_lower.reshape(lower.shape), flat_upper.reshape(upper.shape)

    def crown_lower(self, A: Tensor, intermediate: str, intersect_ibp: bool) -> Tensor:
        if intermediate not in ("crown", "ibp"):
            raise ValueError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")
        if self.batch == 0:
            return A.new_zeros(0, A.shape[1])
        nodes, relax = self.crown_nodes(intermediate)
        value = self.spec_lower(A, len(self.layers), 0, nodes, relax)
        if intersect_ibp:
            # Plain interval bounds, and interval bounds restarted from the
            # CROWN-tightened node before the affine tail: all sound, so the
            # largest lower bound is sound and never looser than IBP.
            value = torch.maximum(value, self.tail_lower(self.ibp_nodes(), A))
            value = torch.maximum(value, self.tail_lower(nodes, A))
        return value


# --------------------------------------------------------------------------- public API


def interval_bounds(
    net: nn.Module, lower: Tensor, upper: Tensor, C: Optional[Tensor] = None, *, dtype: Optional[torch.dtype] = None
) -> Tuple[Tensor, Tensor]:
    """Interval bound propagation (IBP, Gowal et al. 2018) of ``net`` over ``lower <= x <= upper``.

    ``net`` is an ``nn.Sequential`` (nested allowed) of the layer types in
    ``SUPPORTED_LAYERS``; ``lower``/``upper`` are batched like the network's
    input. Without ``C`` it returns per-output bounds shaped like the output.
    With ``C`` of shape (N, S, num_outputs) (or (S, num_outputs) for all
    samples) it returns (N, S) bounds of ``C @ output``: intervals up to the
    last ReLU/MaxPool, then the exact range of the affine tail composed with
    ``C``, which is tighter than bounding logits first (and tighter than
    folding ``C`` into the last Linear only).

    Computed in ``dtype`` (default: the network's parameter dtype) and
    differentiable with respect to the parameters, for interval bound
    training. Sound in exact arithmetic; floating-point rounding can move a
    bound by a few ulps, so certify in float64 when margins are tiny.
    """
    prop = _Propagator(net, lower, upper, dtype)
    if C is None:
        return prop.ibp_nodes()[-1]
    A = prop.spec(C)
    value = prop.tail_lower(prop.ibp_nodes(), torch.cat([A, -A], 1))
    specs = A.shape[1]
    return value[:, :specs], -value[:, specs:]


def crown_bounds(
    net: nn.Module,
    lower: Tensor,
    upper: Tensor,
    C: Optional[Tensor] = None,
    *,
    intersect_ibp: bool = True,
    intermediate: str = "crown",
    dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Tensor]:
    """CROWN bounds (Zhang et al. 2018) of ``net`` or of ``C @ net`` over ``lower <= x <= upper``.

    A backward linear relaxation: ReLU is bounded above by the chord and
    below by ``a z`` with the adaptive ``a`` (1 if ``u >= -l`` else 0);
    max-pooling below by its element with the largest lower bound and above
    by that element plus a constant or by a constant (whichever is tighter
    on average). The pre-activation bounds these need are themselves CROWN
    bounds, layer by layer (``intermediate="crown"``), computed only for
    elements whose relaxation is not already exact and intersected with
    interval bounds; ``intermediate="ibp"`` uses interval bounds instead
    (CROWN-IBP, cheap enough for training). With ``intersect_ibp`` the
    result is also intersected with the interval bounds of
    ``interval_bounds``, so it is never looser than IBP.

    Shapes, ``C`` and ``dtype`` as in ``interval_bounds``; the same caveat on
    floating-point rounding applies. Conv layers are handled in patch form
    (each neuron's receptive field only) and the work is chunked so that a
    chunk's largest coefficient tensor stays near ``_CHUNK_BYTES``.
    Differentiable with respect to the parameters; wrap calls in
    ``torch.no_grad()`` when no gradient is needed, or autograd keeps every
    chunk alive.
    """
    prop = _Propagator(net, lower, upper, dtype)
    A = prop.spec(C)
    specs = A.shape[1]
    value = prop.crown_lower(torch.cat([A, -A], 1), intermediate, intersect_ibp)
    out_lower, out_upper = value[:, :specs], -value[:, specs:]
    if C is None:
        shape = (prop.batch,) + tuple(prop.shapes[-1])
        out_lower, out_upper = out_lower.reshape(shape), out_upper.reshape(shape)
        if intersect_ibp:
            # Also the plain layer-by-layer intervals that interval_bounds
            # returns, so "never looser" holds to the last bit.
            ibp_lower, ibp_upper = prop.ibp_nodes()[-1]
            out_lower, out_upper = torch.maximum(out_lower, ibp_lower), torch.minimum(out_upper, ibp_upper)
    return out_lower, out_upper


def margin_matrix(y: Tensor, num_classes: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Specification (N, K, K) whose row j is ``e_y - e_j``: ``C @ logits`` are the margins ``logit_y - logit_j``."""
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must be a 1-d integer tensor of labels, got dtype {y.dtype} and shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def margin_lower_bound(
    net: nn.Module,
    lower: Tensor,
    upper: Tensor,
    y: Tensor,
    method: str = "crown",
    *,
    intersect_ibp: bool = True,
    intermediate: str = "crown",
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Lower bounds (N, K) of ``logit_y - logit_j`` over the box, for every class j.

    The margins are bounded directly (a specification matrix pushed through
    the network), not as differences of separate logit bounds. The entry
    ``j == y`` is exactly 0 (the true margin of y over itself), so the
    result can be fed to a cross-entropy loss as negated worst-case logits.
    ``method`` is ``"crown"`` or ``"ibp"``; the keyword options are those of
    ``crown_bounds`` (ignored for IBP except ``dtype``).
    """
    if method not in ("crown", "ibp"):
        raise ValueError(f"method must be 'crown' or 'ibp', got {method!r}")
    prop = _Propagator(net, lower, upper, dtype)
    y = torch.as_tensor(y, device=prop.lower.device)
    if y.shape != (prop.batch,):
        raise ValueError(f"y must have shape ({prop.batch},), got {tuple(y.shape)}")
    A = prop.spec(margin_matrix(y, prop.num_outputs(), dtype=prop.dtype))
    if method == "ibp":
        value = prop.tail_lower(prop.ibp_nodes(), A)
    else:
        value = prop.crown_lower(A, intermediate, intersect_ibp)
    # Exactly 0 already (a zero row); pinned so that no rounding can differ.
    return value.scatter(1, y.unsqueeze(1), 0.0)


def certified_by_bounds(
    net: nn.Module,
    lower: Tensor,
    upper: Tensor,
    y: Tensor,
    method: str = "crown",
    *,
    intersect_ibp: bool = True,
    intermediate: str = "crown",
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Boolean (N,): True where the bounds prove ``argmax net(x) == y`` for every x in the box.

    Needs every margin bound for j != y strictly positive (a tie is not a
    proof, whatever the tie-break). Runs without autograd. Pass
    ``dtype=torch.float64`` when the decision must not hinge on float32
    rounding.
    """
    with torch.no_grad():
        margins = margin_lower_bound(
            net, lower, upper, y, method, intersect_ibp=intersect_ibp, intermediate=intermediate, dtype=dtype
        )
        y = torch.as_tensor(y, device=margins.device)
        margins = margins.scatter(1, y.unsqueeze(1), float("inf"))
        return (margins > 0).all(1)
