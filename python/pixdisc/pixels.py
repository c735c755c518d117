"""Pixel arrays: dtype and shape checks, the channel axis, and the layout the kernels take.

Every native kernel sees a contiguous array viewed as ``(outer, C, inner)``:
channel-last data is ``(n_pixels, C, 1)`` and NCHW is ``(N, C, H*W)``, so
neither layout is copied. Arrays may be NumPy arrays or torch tensors (CPU, or
CUDA when the CUDA module is built); results come back as the same kind on the
same device.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from . import _native
from ._files import numpy_load_error

__all__ = ["PixelView", "as_pixels", "pixel_histogram", "histogram_of", "is_torch_tensor", "load_pixel_file"]

_FLOAT_KINDS = ("float16", "float32", "float64", "bfloat16")


def is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass(frozen=True)
class PixelView:
    """A validated pixel array plus how to read it as (outer, channels, inner)."""

    data: Any  # contiguous np.ndarray (float32/uint8), or a CUDA torch tensor
    shape: Tuple[int, ...]
    axis: Optional[int]  # channel axis in `shape`, None when every element is a pixel
    outer: int
    channels: int
    inner: int
    is_torch: bool
    device: Any = None  # torch.device for torch inputs

    @property
    def is_cuda(self) -> bool:
        return self.is_torch and self.device.type == "cuda"

    @property
    def n_pixels(self) -> int:
        return self.outer * self.inner

    @property
    def index_shape(self) -> Tuple[int, ...]:
        """Shape of a per-pixel result: the input shape without its channel axis."""
        if self.axis is None:
            return self.shape
        return self.shape[: self.axis] + self.shape[self.axis + 1 :]

    def wrap(self, array: Any) -> Any:
        """Return a NumPy result as the caller's kind (torch stays torch, on its device)."""
        if self.is_torch and isinstance(array, np.ndarray):
            import torch

            return torch.from_numpy(array).to(self.device)
        return array


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def _shape_text(shape: Tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _normalize(x: Any) -> Tuple[Any, bool, Any]:
    """Contiguous float32/uint8 data (NumPy, or a torch CUDA tensor)."""
    if is_torch_tensor(x):
        import torch

        name = _dtype_name(x)
        if x.dtype != torch.uint8 and name not in _FLOAT_KINDS:
            raise ValueError(
                f"pixel data must be uint8 (0..255) or floating point in [0, 1], got torch dtype {name} "
                f"with shape {_shape_text(tuple(x.shape))}"
            )
        t = x.detach()
        if t.dtype != torch.uint8 and t.dtype != torch.float32:
            t = t.to(torch.float32)
        t = t.contiguous()
        if t.device.type == "cuda":
            return t, True, t.device
        if t.device.type != "cpu":
            raise ValueError(f"unsupported tensor device {t.device}; use CPU or CUDA tensors")
        return t.numpy(), True, t.device
    a = np.asarray(x)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a), False, None
    if a.dtype.kind == "f":
        return np.ascontiguousarray(a, dtype=np.float32), False, None
    raise ValueError(
        f"pixel data must be uint8 (0..255) or floating point in [0, 1], got dtype {a.dtype} "
        f"with shape {_shape_text(a.shape)}"
    )


def as_pixels(x: Any, channel_axis: Optional[int] = None, channels: Optional[int] = None) -> PixelView:
    """Validate ``x`` and describe it as pixels.

    ``channel_axis`` defaults to the last axis for NumPy and axis 1 for torch.
    With ``channels=None`` (fitting) the channel count is inferred: a channel
    axis of size 1 or 3 gives C, anything else means one-channel data in which
    every element is a pixel (always so for 1-D arrays). With ``channels=1``
    any shape is accepted; with
    ``channels > 1`` the channel axis must have exactly that size. A channel
    axis of size 1 is the channel axis also for one channel, so that
    ``assign`` removes it ((N, 28, 28, 1) -> (N, 28, 28)) as it does for colour.
    """
    data, torch_input, device = _normalize(x)
    shape = tuple(int(s) for s in data.shape)
    if channel_axis is None:
        channel_axis = 1 if torch_input else -1
    ndim = len(shape)
    axis: Optional[int] = None
    if ndim > 0:
        if not -ndim <= int(channel_axis) < ndim:
            raise ValueError(f"channel_axis={channel_axis} is out of range for an array of shape {_shape_text(shape)}")
        axis = int(channel_axis) % ndim
    size_on_axis = shape[axis] if axis is not None else 1
    if channels is None:
        # A 1-D array is a list of gray pixels: it has no axis to spare for channels.
        channels = size_on_axis if size_on_axis in (1, 3) and ndim >= 2 else 1
    if channels == 1 and (axis is None or ndim < 2 or size_on_axis != 1):
        total = int(np.prod(shape)) if shape else 1
        return PixelView(data, shape, None, total, 1, 1, torch_input, device)
    if axis is None or size_on_axis != channels:
        raise ValueError(
            f"the codebook has {channels} channels but the input of shape {_shape_text(shape)} has "
            f"{size_on_axis if axis is not None else 'no'} entries on channel axis {channel_axis}; "
            "pass channel_axis= to say which axis holds the channels"
        )
    outer = int(np.prod(shape[:axis])) if axis > 0 else 1
    inner = int(np.prod(shape[axis + 1 :])) if axis + 1 < ndim else 1
    return PixelView(data, shape, axis, outer, channels, inner, torch_input, device)


def pixel_histogram(x: Any, channel_axis: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct pixel values of ``x`` and how often each occurs.

    Returns ``(values, counts)``: ``values`` is float32 ``(n, C)`` in
    lexicographic order (channel 0 most significant), ``counts`` int64 ``(n,)``.
    The channel count is inferred as in :func:`as_pixels`. uint8 data, and
    float data exactly on the 1/255 grid, is counted in dense tables; other
    floats are sorted. Float values must lie in [0, 1].
    """
    return histogram_of(as_pixels(x, channel_axis))


def histogram_of(view: PixelView) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`pixel_histogram` of an already validated view (CUDA data is counted on its GPU when it can be)."""
    values, counts, _ = _native.histogram(view.data.reshape(-1), view.outer, view.channels, view.inner)
    return values, counts


def load_pixel_file(path: Any) -> Any:
    """The array of a .npy file (or the arrays of a .npz), read without ever unpickling.

    A ``ValueError`` says what is wrong with the file and what to pass instead;
    a missing file raises ``FileNotFoundError``.
    """
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(numpy_load_error(path, exc)) from exc
