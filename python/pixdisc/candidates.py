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
- ``tight`` (any number of channels; what ``auto`` picks for several): the
  sound set less every code that is provably nearest nowhere on the box B of
  float32 values within eps (per channel, the ends of the one-channel ball).
  Provably means with a slack tau = 1e-5 in the kernel's distance units
  (squared for l2) that covers float32 rounding of distances (C <= 4, values
  in [0, 1]: under 2.2e-6 per distance), so a code the kernel can pick is
  never dropped. Two stages:

  1. (native, any metric) j is dropped when one code i beats it on all of B:
     ``min_{p in B} q(p, c_j) - q(p, c_i) > tau``, a minimum computed exactly
     per pair (l2: linear in p; l1: separable; linf: a 1-D problem per
     channel). Never looser than ``sound`` (i = c* gives the triangle
     inequality).
  2. (l2, several channels) the Voronoi cell of j meets B iff the linear
     system ``2 p.(c_i - c_j) <= |c_i|^2 - |c_j|^2 + tau`` (all i of the set)
     has a solution p in B. HiGHS solves ``min t`` over ``A p - b <= t``;
     j is dropped only when the dual multipliers lambda >= 0 it returns
     verify, in float64 with a margin of 1e-9 far above its rounding, that
     ``min_{p in B} lambda.(A p - b) > 0`` (Farkas: then no p in B satisfies
     the system). The solver's accuracy affects tightness only, never
     soundness.

  For linf and l1 stage 1 is the rule: the exact reachable set is a union of
  polyhedra (one per channel that attains the max), left for later.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

from . import _native
from .codebook import Codebook
from .inputs import check_eps, unit_float
from .pixels import PixelView, as_pixels

__all__ = ["CandidateSets", "candidate_sets", "candidate_counts", "log2_set_size", "box_hull", "RULES", "resolve_rule"]

RULES = ("auto", "sound", "exact", "tight")
_RULE_CODES = {"sound": 0, "exact": 1, "tight": 2}

# The tight rule's slack (kernel distance units; kTightSlack in candidates.hpp)
# and the margin a Farkas certificate must clear before a code is dropped.
_TIGHT_SLACK = 1e-5
_CERTIFICATE_MARGIN = 1e-9
_LP_BLOCKS = 2000  # (pixel, code) feasibility problems per HiGHS call


def resolve_rule(rule: str, codebook: Codebook) -> str:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "auto":
        return "exact" if codebook.n_channels == 1 else "tight"
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


def _native_sets(x: Any, codebook: Codebook, eps: float, rule: str, channel_axis: Optional[int], counts_only: bool):
    eps = check_eps(eps)
    rule = resolve_rule(rule, codebook)
    view = as_pixels(x, channel_axis, channels=codebook.n_channels)
    view = replace(view, data=unit_float(view.data))
    lp = rule == "tight" and codebook.metric == "l2" and codebook.n_channels > 1
    nearest, offsets, members = _native.candidate_sets(
        codebook.nearest_index(), view.data.reshape(-1), view.outer, view.channels, view.inner,
        eps, _RULE_CODES[rule], counts_only and not lp)
    if lp:
        pixels = _pixel_rows(view)
        offsets, members = _voronoi_lp(pixels, codebook.codes_, eps, offsets, members)
    return view, rule, nearest, offsets, members


def _pixel_rows(view: PixelView) -> np.ndarray:
    """The pixels of a float view as host rows (n_pixels, C), in the CSR's pixel order."""
    data = view.data
    if view.is_torch:
        data = data.detach().cpu().numpy()
    data = np.asarray(data, np.float32).reshape(view.outer, view.channels, view.inner)
    return np.ascontiguousarray(data.transpose(0, 2, 1).reshape(-1, view.channels))


def _voronoi_lp(pixels: np.ndarray, codes: np.ndarray, eps: float, offsets: np.ndarray,
                members: np.ndarray) -> tuple:
    """Stage 2 of the tight rule for l2: drop the codes whose Voronoi cell provably misses the box."""
    from scipy import sparse
    from scipy.optimize import linprog

    counts = np.diff(offsets)
    # The box holds every float32 u with fabs(double(u) - double(x)) <= eps (the
    # double test errs by at most 2^-53): widen by 1e-12, clip to [0, 1].
    x64 = pixels.astype(np.float64)
    lower, upper = np.maximum(x64 - eps - 1e-12, 0.0), np.minimum(x64 + eps + 1e-12, 1.0)
    codes64 = codes.astype(np.float64)
    norms = (codes64 * codes64).sum(axis=1)
    channels = codes.shape[1]
    # One block per (pixel, non-nearest candidate j): rows are the other codes of the set.
    blocks = [(p, offsets[p] + r) for p in np.flatnonzero(counts > 1) for r in range(1, counts[p])]
    keep = np.ones(len(members), bool)
    for start in range(0, len(blocks), _LP_BLOCKS):
        chunk = blocks[start : start + _LP_BLOCKS]
        rows, cols, vals, rhs, owner = [], [], [], [], []
        for b, (p, slot) in enumerate(chunk):
            j = members[slot]
            others = np.delete(members[offsets[p] : offsets[p + 1]], slot - offsets[p])
            a = 2.0 * (codes64[others] - codes64[j])  # (m, C)
            first = len(rhs)
            for r in range(len(others)):
                rows.extend([first + r] * (channels + 1))
                cols.extend(range(b * (channels + 1), (b + 1) * (channels + 1)))
                vals.extend(list(a[r]) + [-1.0])
            rhs.extend(norms[others] - norms[j] + _TIGHT_SLACK)
            owner.extend([b] * len(others))
        n_var = len(chunk) * (channels + 1)
        a_ub = sparse.csr_matrix((vals, (rows, cols)), shape=(len(rhs), n_var))
        cost = np.zeros(n_var)
        cost[channels :: channels + 1] = 1.0
        bounds = []
        for p, _ in chunk:
            bounds.extend(zip(lower[p], upper[p]))
            bounds.append((-10.0, None))
        try:
            res = linprog(cost, A_ub=a_ub, b_ub=np.array(rhs), bounds=bounds, method="highs")
        except ValueError:
            continue  # keep every code of the chunk: sound
        if res.status != 0 or res.ineqlin is None:
            continue
        lam = np.maximum(-np.asarray(res.ineqlin.marginals, np.float64), 0.0)
        owner_arr = np.asarray(owner)
        # Verify each block's certificate: g = A^T lambda, min over the box of g.p - lambda.b > margin.
        weighted = a_ub.multiply(lam[:, None]).tocsc()
        g = np.asarray(weighted.sum(axis=0)).reshape(len(chunk), channels + 1)[:, :channels]
        lam_b = np.bincount(owner_arr, weights=lam * np.array(rhs), minlength=len(chunk))
        box_lo = np.stack([lower[p] for p, _ in chunk])
        box_hi = np.stack([upper[p] for p, _ in chunk])
        least = np.minimum(g * box_lo, g * box_hi).sum(axis=1) - lam_b
        for b in np.flatnonzero(least > _CERTIFICATE_MARGIN):
            keep[chunk[b][1]] = False
    new_counts = np.bincount(np.repeat(np.arange(len(counts)), counts)[keep], minlength=len(counts))
    new_offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(new_counts, out=new_offsets[1:])
    return new_offsets, members[keep].astype(np.int32)


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
