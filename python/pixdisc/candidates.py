"""Candidate sets C(x_i) of the certificate and the size of S(x) = prod_i C(x_i) (SPEC §3).

For a pixel x_i with nearest code c*, every code an l_inf perturbation of size
eps can make the nearest one lies in C(x_i). A perturbed value is any float32
x' in [0, 1] with ``fabs(float64(x') - float64(x_i)) <= eps`` (the distance
test used throughout pixdisc). Two rules:

- ``sound`` (any metric, any number of channels):
  ``C(x_i) = {c : dist(x_i, c) <= dist(x_i, c*) + 2 delta}``, where delta is
  how far eps moves a pixel in the codebook's metric (eps for linf, C*eps for
  l1, sqrt(C)*eps for l2). Note ``<=``: the paper's ``<`` is unsound on ties.
  Its test is widened by 1e-6 to cover float32 rounding, so it stays sound
  but may hold codes that no input reaches.
- ``exact`` (one channel): exactly the codes that the native nearest-code
  kernel (float32 distances, ties to the lowest index) assigns to some x' of
  the ball — no slack. Why this is computable: the float32s of the ball are
  one run ``[lo32, hi32]``; in one dimension the nearest code's value is a
  non-decreasing function of x' (float rounding of ``|x' - c|`` is monotone),
  and each code value's preimage is an interval of floats containing the
  value. So C(x_i) is the set of distinct code values between the values of
  ``nearest(lo32)`` and ``nearest(hi32)`` (the lowest index of each value, the
  only one the kernel ever picks). A misclassified z in S(x) is then a real
  adversarial example. The float64 distance test can accept a float that
  exceeds eps by at most half an ulp of eps (never reject one within it), so
  the rule errs on the sound side for certification. (One fallback: for l2
  with two distinct code values closer than 2^-60, squared float distances
  can underflow to ties and the monotonicity fails; such codebooks get the
  sound rule.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import _native
from .codebook import Codebook
from .pixels import PixelView, as_pixels

__all__ = ["CandidateSets", "candidate_sets", "candidate_counts", "log2_set_size", "box_hull", "RULES", "resolve_rule"]

RULES = ("auto", "sound", "exact")


def resolve_rule(rule: str, codebook: Codebook) -> str:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "auto":
        return "exact" if codebook.n_channels == 1 else "sound"
    if rule == "exact" and codebook.n_channels != 1:
        raise ValueError("the exact candidate rule needs a one-channel codebook; use rule='sound'")
    return rule


@dataclass(frozen=True)
class CandidateSets:
    """Per-pixel candidate sets in CSR form (pixels in C order of the index shape).

    Pixel p's codes are ``members[offsets[p]:offsets[p+1]]``, its nearest code
    first, then the others by ascending index.
    """

    nearest: np.ndarray  # int32 (n_pixels,)
    offsets: np.ndarray  # int64 (n_pixels + 1,)
    members: np.ndarray  # int32
    shape: tuple  # the per-pixel (index) shape
    rule: str

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int32).reshape(self.shape)

    def of(self, pixel: int) -> np.ndarray:
        return self.members[self.offsets[pixel] : self.offsets[pixel + 1]]


def _float_view(x: Any, codebook: Codebook, channel_axis: Optional[int]) -> PixelView:
    view = as_pixels(x, channel_axis, channels=codebook.n_channels)
    data = view.data
    if data.dtype == np.uint8 or str(data.dtype) == "torch.uint8":  # uint8 means v/255, on either device
        data = data.float() / 255 if view.is_cuda else data.astype(np.float32) / np.float32(255)
    return PixelView(data, view.shape, view.axis, view.outer, view.channels, view.inner, view.is_torch, view.device)


def _native_sets(x: Any, codebook: Codebook, eps: float, rule: str, channel_axis: Optional[int], counts_only: bool):
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    rule = resolve_rule(rule, codebook)
    view = _float_view(x, codebook, channel_axis)
    nearest, offsets, members = _native.candidate_sets(
        codebook._nearest_index(), view.data.reshape(-1), view.outer, view.channels, view.inner,
        float(eps), 1 if rule == "exact" else 0, counts_only)
    return view, rule, nearest, offsets, members


def candidate_sets(x: Any, codebook: Codebook, eps: float, rule: str = "auto",
                   channel_axis: Optional[int] = None) -> CandidateSets:
    """The candidate set of every pixel of ``x`` (NumPy or torch; uint8 means v/255)."""
    view, rule, nearest, offsets, members = _native_sets(x, codebook, eps, rule, channel_axis, False)
    return CandidateSets(nearest, offsets, members, view.index_shape, rule)


def candidate_counts(x: Any, codebook: Codebook, eps: float, rule: str = "auto",
                     channel_axis: Optional[int] = None) -> np.ndarray:
    """``|C(x_i)|`` for every pixel (int32, the input's shape without its channel axis)."""
    view, _, _, offsets, _ = _native_sets(x, codebook, eps, rule, channel_axis, True)
    return np.diff(offsets).astype(np.int32).reshape(view.index_shape)


def log2_set_size(x: Any, codebook: Codebook, eps: float, rule: str = "auto",
                  channel_axis: Optional[int] = None) -> np.ndarray:
    """``log2 |S(x)|`` for every entry of the first axis (float64; |S(x)| overflows any integer)."""
    counts = candidate_counts(x, codebook, eps, rule, channel_axis)
    if counts.ndim == 0:
        return np.log2(counts.astype(np.float64))
    return np.log2(counts.reshape(counts.shape[0], -1).astype(np.float64)).sum(axis=1)


def box_hull(x: Any, codebook: Codebook, eps: float, rule: str = "auto",
             channel_axis: Optional[int] = None):
    """Per-element bounds ``(lower, upper)`` of the box hull of S(x), in x's shape (float32 NumPy).

    Every z in S(x) — hence every discretized perturbation of x — lies in the
    box; bound propagation over it is what certification and certified
    training need.
    """
    view, rule, nearest, offsets, members = _native_sets(x, codebook, eps, rule, channel_axis, False)
    values = codebook.codes_[members]  # (m, C)
    starts = offsets[:-1]
    if len(starts) == 0:
        empty = np.zeros(view.shape, np.float32)
        return empty, empty.copy()
    lower = np.minimum.reduceat(values, starts, axis=0)  # (pixels, C); every set is non-empty
    upper = np.maximum.reduceat(values, starts, axis=0)

    def to_layout(a: np.ndarray) -> np.ndarray:
        if view.axis is None:
            return a.reshape(view.shape).astype(np.float32)
        return np.moveaxis(a.reshape(*view.index_shape, view.channels), -1, view.axis).astype(np.float32)

    return to_layout(lower), to_layout(upper)
