"""What users pass in, checked and converted once at the public entry points: eps, images, labels, channels, models.

Inner code trusts what these return. uint8 pixels mean v/255 everywhere
(:func:`unit_float`); float pixels must lie in [0, 1]. torch is imported only
by the functions that return tensors, so the torch-free core can use the rest.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple

import numpy as np

from .pixels import is_torch_tensor

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from .discretize import Discretize

__all__ = ["check_eps", "unit_float", "as_images", "as_float_nchw", "as_labels", "check_channels", "split_defended"]


def check_eps(eps: Any) -> float:
    """``eps`` as a float: a finite real number >= 0 (NumPy and torch scalars included, bool not)."""
    value = eps.item() if getattr(eps, "ndim", None) == 0 and hasattr(eps, "item") else eps
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(value)


def unit_float(data: Any) -> Any:
    """Pixel data as floats on the [0, 1] scale: uint8 (NumPy or torch, any device) becomes float32 v/255;
    anything else is returned as it is."""
    if is_torch_tensor(data):
        import torch

        return data.float() / 255 if data.dtype == torch.uint8 else data
    if data.dtype == np.uint8:
        out = data.astype(np.float32)
        out /= np.float32(255)
        return out
    return data


def as_images(x: Any, name: str = "x", *, min_ndim: int = 2, dtype: Any = None) -> Tensor:
    """A batch of images as a float tensor in [0, 1], on the device it came on (NumPy becomes a CPU tensor).

    uint8 is read as v/255; float input keeps its dtype unless ``dtype`` is
    given (converted before the checks). ``min_ndim`` is 2 for any batch of
    feature vectors, 3 for NCHW-like images (batch, channel, pixel axes).
    Raises ValueError for other dtypes, too few axes, NaN/inf or values
    outside [0, 1].
    """
    import torch

    if not isinstance(x, torch.Tensor):
        x = torch.from_numpy(np.ascontiguousarray(x))
    in_range = x.dtype == torch.uint8  # v/255 is: no pass over the data to check it
    if in_range:
        x = unit_float(x)
    elif not x.is_floating_point():
        raise ValueError(f"{name} must be float images in [0, 1] or uint8, got dtype {x.dtype}")
    if dtype is not None:
        x = x.to(dtype)
    if x.ndim < min_ndim:
        wanted = "a batch axis and at least one feature axis" if min_ndim <= 2 else "NCHW images (N, C, H, W)"
        raise ValueError(f"{name} must be {wanted}, got shape {tuple(x.shape)}")
    if x.numel() and not in_range:
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            # Both spellings of the interval: callers' messages have used each.
            raise ValueError(f"{name} must lie in [0, 1] (the pixel scale [0,1]; uint8 is read as v/255), "
                             f"got values in [{low:g}, {high:g}]")
    return x


def as_float_nchw(images: np.ndarray) -> np.ndarray:
    """Turn uint8 images (N, H, W, C), the data sets' layout, into a contiguous float32 (N, C, H, W) array in [0, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    return unit_float(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def as_labels(y: Any, count: int, name: str = "y") -> Tensor:
    """``count`` non-negative integer class labels as an int64 tensor (on the device they came on)."""
    import torch

    if not isinstance(y, torch.Tensor):
        y = torch.from_numpy(np.ascontiguousarray(y))
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != count:
        raise ValueError(f"{name} must have shape ({count},) to match x ({count} labels), got {tuple(y.shape)}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} holds a negative class label")
    return y.to(torch.int64)


def check_channels(codebook: Any, image_shape: Sequence[int], *, codebook_name: str = "the codebook",
                   images_name: str = "images") -> None:
    """Refuse a codebook that fits no image of shape ``image_shape`` (C, ...): its codes need C channels, or one.

    A one-channel codebook discretizes every value alone, whatever the
    images' channels (as :meth:`pixdisc.Codebook.transform` does).
    """
    channels, code_channels = int(image_shape[0]), codebook.n_channels
    if code_channels in (1, channels):
        return
    fitting = "a one-channel codebook" if channels == 1 else f"a codebook with {channels} channels or one channel"
    raise ValueError(f"{images_name} of shape {tuple(image_shape)} have {channels} "
                     f"channel{'s' if channels != 1 else ''} but {codebook_name} has {code_channels}-channel codes; "
                     f"use {fitting}")


def split_defended(model: nn.Module, required_by: Optional[str] = None) -> Tuple[Optional[Discretize], nn.Module]:
    """(Discretize module, classifier) of a defended model ``nn.Sequential(Discretize(codebook), net...)``.

    Any other model gives ``(None, model)``, or a ValueError naming
    ``required_by`` (what needs the defense) when that is given.
    """
    from torch import nn

    from .discretize import Discretize

    if isinstance(model, nn.Sequential) and len(model) > 0 and isinstance(model[0], Discretize):
        if len(model) == 1:
            raise ValueError("nn.Sequential(Discretize(codebook)) has no network after the discretizer")
        return model[0], (model[1:] if len(model) > 2 else model[1])
    if required_by is not None:
        raise ValueError(f"{required_by} needs a defended model nn.Sequential(Discretize(codebook), net)")
    return None, model
