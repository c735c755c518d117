"""Interval arithmetic: the input box, floating-point care, affine layer parameters and the interval image of each op."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

if TYPE_CHECKING:  # pragma: no cover
    from .graph import Op

Bounds = Tuple[Tensor, Tensor]


def _resolve_dtype(layers: Iterable[nn.Module], lower: Tensor, dtype: Optional[torch.dtype]) -> torch.dtype:
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



def _ibp_op(op: "Op", nodes: List[Optional[Bounds]], dtype: torch.dtype) -> Bounds:
    """Interval image of one graph operation from the bounds of its inputs."""
    if op.kind == "layer":
        return _ibp_step(op.module, *nodes[op.inputs[0]], dtype)
    if op.kind == "add":
        (lo_a, hi_a), (lo_b, hi_b) = nodes[op.inputs[0]], nodes[op.inputs[1]]
        return lo_a + lo_b, hi_a + hi_b
    if op.kind == "cat":
        parts = [nodes[i] for i in op.inputs]
        return torch.cat([p[0] for p in parts], op.dim), torch.cat([p[1] for p in parts], op.dim)
    assert op.kind == "reshape", op.kind
    lower, upper = nodes[op.inputs[0]]
    shape = (lower.shape[0],) + op.shape
    return lower.reshape(shape), upper.reshape(shape)
