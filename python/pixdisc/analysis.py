"""Section V analyses: fragmentation, ambiguous pixels, pixel histograms, neighbourhood sizes and the idealized model.

Numbers only: :mod:`pixdisc.report.analysis` draws the figures (its ``plot_*`` are reachable here too).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _native
from .candidates import candidate_counts
from .codebook import Codebook, DensityCodebook
from .inputs import check_eps
from .pixels import PixelView, as_pixels
from .statistics import empirical_cdf as fragmentation_cdf

__all__ = [
    "fragmentation",
    "fragmentation_cdf",
    "ambiguous_counts",
    "pixel_value_histogram",
    "neighbourhood_sizes",
    "eps_to_levels",
    "generate_ideal",
    "lemma1_experiment",
    "plot_fragmentation_cdf",
    "plot_pixel_histogram",
    "plot_neighbourhood_scatter",
    "plot_robustness_curves",
]

NORMS = ("linf", "l1", "l2")
LEVELS = 256
# Exact sampling in generate_ideal lists every integer offset inside the noise
# ball; beyond this many the lists stop being cheap.
_MAX_OFFSETS = 1 << 24


# --------------------------------------------------------------------------
# Fragmentation (Fig. 5) and ambiguous pixels


def _per_image_counts(x: Any, codebook: Codebook, eps: float, rule: str,
                      channel_axis: Optional[int]) -> np.ndarray:
    """|C(x_i)| as (n_images, d): the first axis indexes images, every other non-channel axis pixels."""
    if (x.ndim if hasattr(x, "ndim") else np.ndim(x)) == 0:
        raise ValueError("x needs a first axis that indexes images (got a single pixel)")
    counts = candidate_counts(x, codebook, eps, rule, channel_axis)
    return counts.reshape(counts.shape[0], int(np.prod(counts.shape[1:])))


def fragmentation(x: Any, codebook: Codebook, eps: float, channel_axis: Optional[int] = None,
                  rule: str = "auto") -> np.ndarray:
    """The paper's fragmentation measure ``(1/d) log_k prod_i |C(x_i)|`` per image (float64, one per entry of axis 0).

    ``d`` is the number of pixels of one image (channels excluded) and ``k``
    the number of codes. 0 means no pixel can change its code under an l_inf
    perturbation of size ``eps``; 1 means every pixel can reach every code.
    ``rule`` is the candidate rule of :func:`pixdisc.candidates.candidate_sets`:
    ``auto`` uses the exact reachable set for one channel (the set Section
    V-A defines) and the tight sound superset for colour. With one code the measure
    is 0 (nothing can change), not log_1's 0/0.
    """
    counts = _per_image_counts(x, codebook, eps, rule, channel_axis)
    n_images, d = counts.shape
    k = codebook.n_codes
    if k == 1 or d == 0:
        return np.zeros(n_images, np.float64)
    return np.log2(counts.astype(np.float64)).sum(axis=1) / (d * math.log2(k))


def ambiguous_counts(x: Any, codebook: Codebook, eps: float, channel_axis: Optional[int] = None,
                     rule: str = "auto") -> np.ndarray:
    """Number of pixels per image whose candidate set has more than one code (int64, one per entry of axis 0)."""
    counts = _per_image_counts(x, codebook, eps, rule, channel_axis)
    return (counts > 1).sum(axis=1).astype(np.int64)


# --------------------------------------------------------------------------
# Pixel-value histogram (Fig. 7) and neighbourhood sizes (Fig. 6)


def _cpu_view(x: Any, channel_axis: Optional[int]) -> PixelView:
    view = as_pixels(x, channel_axis)
    if view.is_cuda:
        view = as_pixels(x.detach().cpu(), channel_axis)
    return view


def pixel_value_histogram(x: Any, channel_axis: Optional[int] = None) -> np.ndarray:
    """How many pixels take each 8-bit level: int64 ``(256,)`` for gray data, ``(C, 256)`` per channel for colour.

    uint8 data is counted as is; float data in [0, 1] is binned to the nearest
    level ``round(v * 255)``. Channels are inferred as in
    :func:`pixdisc.pixel_histogram`. Plot it on a log scale as in Fig. 7 with
    :func:`pixdisc.report.plot_pixel_histogram`.
    """
    view = _cpu_view(x, channel_axis)
    data = np.asarray(view.data).reshape(view.outer, view.channels, view.inner)
    if data.dtype != np.uint8:
        if data.size and not (np.all(data >= 0) and np.all(data <= 1)):
            raise ValueError("float pixel values must lie in [0, 1] (found NaN or a value outside)")
        data = np.rint(data * np.float32(255)).astype(np.uint8)
    out = np.empty((view.channels, LEVELS), np.int64)
    for c in range(view.channels):
        out[c] = _native.histogram_gray_u8(np.ascontiguousarray(data[:, c, :]).reshape(-1))
    return out[0] if view.channels == 1 else out


def eps_to_levels(eps: float) -> int:
    """The l_inf radius in 8-bit levels that ``eps`` (pixel scale [0, 1]) allows: ``floor(eps * 255)``.

    Two 8-bit pixels p, q are within eps when ``|p - q| / 255 <= eps`` in every
    channel, i.e. ``|p - q| <= floor(eps * 255)``. A 1e-6 slack makes eps
    written as ``8 / 255`` count as 8 levels despite float rounding.
    """
    eps = check_eps(eps)
    if eps > 1:
        raise ValueError(f"eps is on the pixel scale [0, 1] (got {eps!r}); for e levels pass e / 255")
    return int(math.floor(eps * 255 + 1e-6))


def neighbourhood_sizes(x: Any, eps: float, channel_axis: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``|N_inf(p, eps)|`` for every distinct colour p of ``x``: the number of pixels of ``x`` within eps in l_inf.

    Returns ``(colours, sizes)``: ``colours`` float32 ``(n, C)`` exactly as
    :func:`pixdisc.pixel_histogram` returns them (lexicographic order), and
    ``sizes`` int64 ``(n,)`` (each colour counts itself and its repeats).
    ``x`` is 8-bit data: uint8, or floats on the 1/255 grid, gray or RGB
    (channels inferred as in :func:`pixdisc.pixel_histogram`). The counts come
    from a summed-area table over the dense 256^3 (or 256) count table, so
    every colour costs 8 (or 2) table reads whatever eps is. CUDA tensors are
    counted on their GPU; the results are NumPy arrays either way.
    """
    radius = eps_to_levels(eps)
    view = as_pixels(x, channel_axis)
    if view.channels not in (1, 3):
        raise ValueError(f"neighbourhood sizes need gray or RGB pixels, got {view.channels} channels")
    return _native.neighbourhood_sizes(view.data.reshape(-1), view.outer, view.channels, view.inner, radius)


# --------------------------------------------------------------------------
# The idealized generative model of Section V and Lemma 1


def _norm_of(offsets: np.ndarray, norm: str) -> np.ndarray:
    a = np.abs(offsets.astype(np.float64))
    if norm == "linf":
        return a.max(axis=1)
    if norm == "l1":
        return a.sum(axis=1)
    return np.sqrt((a * a).sum(axis=1))


def _grid_codes(codes: Any, levels: int) -> np.ndarray:
    """Codes as integer levels (k, C); they must lie on the grid of ``levels`` values."""
    arr = np.asarray(codes)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float64) / 255
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"codes must be a non-empty (k, C) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError("codes must be values in [0, 1]")
    grid = arr * (levels - 1)
    q = np.rint(grid)
    if np.abs(grid - q).max() > 1e-3:
        raise ValueError(f"codes must lie on the grid of {levels} levels (multiples of 1/{levels - 1})")
    return q.astype(np.int64)


def _separation(grid_codes: np.ndarray, norm: str) -> float:
    """Smallest distance between two codes, in levels (inf for one code)."""
    k = grid_codes.shape[0]
    if k < 2:
        return math.inf
    diff = grid_codes[:, None, :] - grid_codes[None, :, :]
    dist = _norm_of(diff.reshape(k * k, -1), norm).reshape(k, k)
    dist[np.arange(k), np.arange(k)] = np.inf
    return float(dist.min())


def generate_ideal(codes: Any, n_pixels: int, sigma: float, seed: Optional[int] = None,
                   probabilities: Optional[Sequence[float]] = None, max_norm: Optional[float] = None,
                   norm: str = "linf", levels: int = LEVELS) -> Tuple[np.ndarray, np.ndarray]:
    """Pixels from the idealized generative model of Section V: ``x = u + zeta``.

    ``u`` is a ground-truth code, drawn with ``probabilities`` (default 1/k
    each: the paper's marginal ``(1/d) sum_j Pr(u_j = c_i*) = 1/k``). Pixels
    and codes live on the discrete grid of ``levels`` values per channel (the
    paper's ``[K]^C``); ``codes`` are given in [0, 1] on that grid. The noise
    ``zeta`` takes integer values with ``u + zeta`` inside the grid (the paper:
    "zeta takes valid discrete values so that x is in [K]^3"; nothing is
    clipped) and ``||zeta|| <= max_norm`` (default ``Gamma / 8``, Gamma the
    smallest distance between two codes; the whole range for one code), and

        ``P(||zeta|| = t) = alpha exp(-t^2 / sigma^2)``

    over the norm values t that some valid zeta takes, alpha normalising.
    Given t, zeta is uniform over the valid offsets of norm t (the paper does
    not say how the direction is drawn; uniform is the unbiased choice). The
    norm is ``norm`` (default l_inf, the paper's metric for attacks and for
    Algorithm 1; the paper leaves it unnamed here). ``sigma`` and ``max_norm``
    are on the pixel scale [0, 1] like eps and r, i.e. t in levels divided by
    ``levels - 1``. Sampling is exact: every offset of the ball is listed and
    given its probability, per code (so codes at the grid's edge get the
    truncated distribution the model prescribes).

    Returns ``(pixels, labels)``: float32 ``(n_pixels, C)`` on the grid and
    the int64 index of each pixel's code.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 2 <= levels <= 65536:
        raise ValueError(f"levels must be an integer in [2, 65536], got {levels!r}")
    if isinstance(n_pixels, bool) or not isinstance(n_pixels, (int, np.integer)) or n_pixels < 0:
        raise ValueError(f"n_pixels must be an integer >= 0, got {n_pixels!r}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    grid = _grid_codes(codes, levels)
    k, channels = grid.shape
    scale = levels - 1
    if probabilities is None:
        p = np.full(k, 1.0 / k)
    else:
        p = np.asarray(probabilities, dtype=np.float64)
        if p.shape != (k,) or np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
            raise ValueError(f"probabilities must be {k} non-negative numbers with a positive sum")
        p = p / p.sum()
    if max_norm is None:
        gamma = _separation(grid, norm)
        bound = gamma / 8 if math.isfinite(gamma) else float(scale) * (channels if norm == "l1" else 1)
    else:
        if not np.isfinite(max_norm) or max_norm < 0:
            raise ValueError(f"max_norm must be a finite number >= 0, got {max_norm!r}")
        bound = float(max_norm) * scale
    t_max = int(math.floor(min(bound, scale) + 1e-9))  # no valid offset exceeds scale per channel
    side = 2 * t_max + 1
    if side ** channels > _MAX_OFFSETS:
        raise ValueError(f"a noise ball of radius {t_max} levels in {channels} channels has {side ** channels} "
                         f"offsets (more than {_MAX_OFFSETS}); pass a smaller max_norm")
    axes = [np.arange(-t_max, t_max + 1, dtype=np.int64)] * channels
    offsets = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, channels)
    norms = _norm_of(offsets, norm)
    keep = norms <= bound + 1e-9
    offsets, norms = offsets[keep], norms[keep]
    # Norm values as exact keys (l2 norms are square roots; round away float noise).
    norm_keys = np.round(norms, 9)
    sigma_levels = float(sigma) * scale

    rng = np.random.default_rng(seed)
    labels = rng.choice(k, size=int(n_pixels), p=p).astype(np.int64)
    pixels = np.empty((int(n_pixels), channels), np.int64)
    for i in range(k):
        members = np.flatnonzero(labels == i)
        if members.size == 0:
            continue
        point = grid[i] + offsets
        valid = np.all((point >= 0) & (point <= scale), axis=1)
        shell, shell_size = np.unique(norm_keys[valid], return_inverse=True, return_counts=True)[1:]
        t = norms[valid]
        # P(offset) = P(||zeta|| = t) / |valid shell of norm t|.
        weight = np.exp(-(t / sigma_levels) ** 2) / shell_size[shell]
        choice = rng.choice(int(valid.sum()), size=members.size, p=weight / weight.sum())
        pixels[members] = point[valid][choice]
    if levels == LEVELS:
        # The same float the histograms treat as on the 1/255 grid.
        return pixels.astype(np.float32) / np.float32(255), labels
    return (pixels / scale).astype(np.float32), labels


def lemma1_experiment(codes: Any, sigma: float, nu: float, sizes: Sequence[int], trials: int = 20,
                      seed: int = 0, probabilities: Optional[Sequence[float]] = None,
                      max_norm: Optional[float] = None, norm: str = "linf",
                      levels: int = LEVELS) -> Dict[str, Any]:
    """Lemma 1 by simulation: how often Algorithm 1 with ``r = 2 nu`` recovers every ground-truth code within nu.

    For each training-set size N in ``sizes`` and each of ``trials`` seeded
    trials, draw N pixels from :func:`generate_ideal`, fit
    ``DensityCodebook(k, r=2*nu, metric=norm)`` and count a success when every
    ground-truth code has a learned code within ``nu`` (in ``norm``, pixel
    scale). Returns a dict with ``sizes``, ``recovery_rate`` (float64, one per
    size), ``successes``, ``trials``, ``nu``, ``r``, the codes' separation
    ``gamma`` and whether the lemma's condition ``gamma > 16 nu`` holds.
    """
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials <= 0:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    if not np.isfinite(nu) or nu < 0:
        raise ValueError(f"nu must be a finite number >= 0, got {nu!r}")
    grid = _grid_codes(codes, levels)
    truth = grid.astype(np.float64) / (levels - 1)
    k = grid.shape[0]
    gamma = _separation(grid, norm) / (levels - 1)
    sizes_arr = np.asarray(list(sizes), dtype=np.int64)
    successes = np.zeros(sizes_arr.size, np.int64)
    streams = np.random.SeedSequence(seed).spawn(sizes_arr.size * trials)
    for s, n in enumerate(sizes_arr):
        for trial in range(trials):
            child = streams[s * trials + trial]
            pixels, _ = generate_ideal(codes, int(n), sigma, seed=int(child.generate_state(1)[0]),
                                       probabilities=probabilities, max_norm=max_norm, norm=norm, levels=levels)
            if n == 0:
                continue
            book = DensityCodebook(k, r=2 * nu, metric=norm).fit(pixels)
            learned = book.codes_.astype(np.float64)
            diff = truth[:, None, :] - learned[None, :, :]
            dist = _norm_of(diff.reshape(-1, truth.shape[1]), norm).reshape(k, -1)
            # 1e-6: codes are float32 copies of grid values.
            successes[s] += bool(np.all(dist.min(axis=1) <= nu + 1e-6))
    return {
        "sizes": sizes_arr,
        "recovery_rate": successes / trials,
        "successes": successes,
        "trials": int(trials),
        "nu": float(nu),
        "r": 2 * float(nu),
        "gamma": gamma,
        "condition_holds": bool(gamma > 16 * nu),
    }


# --------------------------------------------------------------------------
# The figures moved to pixdisc.report.analysis; their names stay here for code written against earlier releases,
# loaded on first use (PEP 562) so that computing never imports the rendering layer.
_PLOTS = ("plot_fragmentation_cdf", "plot_pixel_histogram", "plot_neighbourhood_scatter", "plot_robustness_curves")


def __getattr__(name: str) -> Any:
    if name in _PLOTS:
        from .report import analysis as figures

        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
