"""Map members of S(x) back to real inputs: per pixel, which candidate codes a float32 input within eps reaches, and how.

The discretizer T acts on every pixel alone, so a member z of S(x) is
realized by a real input x' exactly when every pixel's code is: if pixel i's
code z_i is the nearest code of some float32 value v_i with
``|v_i - x_i| <= eps`` (per channel, v_i in [0, 1]), then x' = (v_i)_i lies in
the eps-ball and T(x') = z. This module finds such a v_i for every candidate
code of every pixel and keeps only the codes it verified with the native
nearest-code kernel, so a search over the returned options can only find
members that a real input realizes.

One channel: the nearest code's value is a non-decreasing function of the
input value (float rounding of |v - c| is monotone), and each code's preimage
is an interval of floats around its own value; so a code is reachable iff the
float32 of the ball closest to it maps to it. That probe is exact: the options
are exactly the reachable codes, ties on 8-bit boundaries included (the lowest
index wins, as in T). Several channels: the probe is the point of the box
closest to the code (coordinate-wise), then the box corner towards it and
random points of the box; codes that no probe reaches are left out (the
search is then weaker, never wrong).

"Within eps" is decided in exact arithmetic: ``|v - x| <= eps`` for the real
numbers that the float32 v, the float32 x and the float64 eps stand for.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .candidates import candidate_sets
from .codebook import Codebook

__all__ = ["PixelOptions", "pixel_options", "within_eps", "ball_ends"]


def within_eps(value: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """``|value - x| <= eps`` elementwise, exactly, for float32 ``value`` and ``x`` and a float ``eps``."""
    value = np.asarray(value, np.float32)
    x = np.asarray(x, np.float32)
    distance = np.abs(value.astype(np.float64) - x.astype(np.float64))
    inside = distance <= eps
    # The float64 difference of two float32s in [0, 1] is exact unless their
    # exponents differ a lot; rounding can only flip the answer right at eps.
    unsure = np.abs(distance - eps) <= 1e-12 * max(1.0, eps)
    if unsure.any():
        bound = Fraction(float(eps))
        flat_inside = inside.reshape(-1)
        flat_value, flat_x = value.reshape(-1), x.reshape(-1)
        for i in np.flatnonzero(unsure.reshape(-1)):
            flat_inside[i] = abs(Fraction(float(flat_value[i])) - Fraction(float(flat_x[i]))) <= bound
        inside = flat_inside.reshape(inside.shape)
    return inside


def ball_ends(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest and largest float32 in ``[0, 1]`` within ``eps`` of each float32 of ``x``."""
    x = np.asarray(x, np.float32)
    x64 = x.astype(np.float64)
    ends = []
    for start, inward, outward, limit in ((np.maximum(x64 - eps, 0.0), 1.0, 0.0, 0.0),
                                           (np.minimum(x64 + eps, 1.0), 0.0, 1.0, 1.0)):
        end = start.astype(np.float32)
        inward32, outward32 = np.float32(inward), np.float32(outward)
        # Rounding to float32 moves at most half an ulp: a few steps settle it.
        while True:
            outside = ~within_eps(end, x, eps)
            if not outside.any():
                break
            end = np.where(outside, np.nextafter(end, inward32), end)
        while True:
            further = np.nextafter(end, outward32)
            can = (end != np.float32(limit)) & within_eps(further, x, eps)
            if not can.any():
                break
            end = np.where(can, further, end)
        ends.append(end)
    return ends[0], ends[1]


# Further probes for codes the closest point of the box misses (several
# channels only): the box corner towards the code, two points between it and
# the closest point, then seeded random points of the box.
_RANDOM_PROBES = 12


def _more_probes(codebook: Codebook, members: np.ndarray, target: np.ndarray, pixel: np.ndarray,
                 lower: np.ndarray, upper: np.ndarray, probe: np.ndarray, reached: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for attempt in range(3 + _RANDOM_PROBES):
        missing = np.flatnonzero(~reached)
        if not len(missing):
            return
        lo, hi = lower[missing], upper[missing]
        closest = np.clip(target[missing], lo, hi)
        corner = np.where(target[missing] >= pixel[missing], hi, lo)
        if attempt < 3:
            weight = (1.0, 2 / 3, 1 / 3)[attempt]
            candidate = weight * corner.astype(np.float64) + (1 - weight) * closest
        else:
            candidate = rng.uniform(lo.astype(np.float64), hi.astype(np.float64))
        # Every float32 between the ends of the ball is inside it.
        candidate = np.clip(candidate.astype(np.float32), lo, hi)
        ok = np.asarray(codebook.assign(candidate, channel_axis=-1)).reshape(-1) == members[missing]
        probe[missing[ok]] = candidate[ok]
        reached[missing[ok]] = True


@dataclass(frozen=True)
class PixelOptions:
    """The reachable codes of every pixel of a batch of images, in CSR form over pixels.

    Pixel p of image b is ``b * pixels + p``. Its options are
    ``codes[offsets[q]:offsets[q+1]]`` (the nearest code of x first) and
    ``values[offsets[q]:offsets[q+1]]`` the float32 input values (C,) that
    realize them (x's own pixel for the nearest code).
    """

    nearest: np.ndarray  # int32 (N*P,)
    offsets: np.ndarray  # int64 (N*P + 1,)
    codes: np.ndarray  # int32 (m,)
    values: np.ndarray  # float32 (m, C)
    pixels: int
    dropped: int  # candidate codes of the certificate's rule that no probe realized

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def pixel_options(x: np.ndarray, codebook: Codebook, eps: float) -> PixelOptions:
    """Reachable codes and realizing values for NCHW float32 images ``x`` in [0, 1]."""
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim < 3:
        raise ValueError(f"x must be NCHW images, got shape {x.shape}")
    n, channels = x.shape[0], x.shape[1]
    pixels = int(np.prod(x.shape[2:]))
    sets = candidate_sets(x, codebook, eps, channel_axis=1)
    counts = np.diff(sets.offsets)
    # Pixel values as (N*P, C).
    pixel_values = x.reshape(n, channels, pixels).transpose(0, 2, 1).reshape(-1, channels)
    owner = np.repeat(np.arange(counts.shape[0]), counts)
    is_nearest = np.zeros(sets.members.shape[0], bool)
    is_nearest[sets.offsets[:-1]] = True
    lower, upper = ball_ends(pixel_values, eps)
    target = codebook.codes_[sets.members]  # (m, C)
    probe = np.clip(target, lower[owner], upper[owner]).astype(np.float32)
    probe[is_nearest] = pixel_values[owner[is_nearest]]
    reached = np.asarray(codebook.assign(probe, channel_axis=-1)).reshape(-1) == sets.members
    reached |= is_nearest
    if channels > 1:
        _more_probes(codebook, sets.members, target, pixel_values[owner], lower[owner], upper[owner], probe, reached)
    kept = np.zeros(counts.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(owner[reached], minlength=counts.shape[0]), out=kept[1:])
    return PixelOptions(
        nearest=sets.nearest,
        offsets=kept,
        codes=sets.members[reached].astype(np.int32),
        values=probe[reached],
        pixels=pixels,
        dropped=int((~reached).sum()),
    )
