"""Figures of the Section V analyses (:mod:`pixdisc.analysis` computes their numbers): the fragmentation CDF
(Fig. 5), neighbourhood sizes (Fig. 6), the pixel histogram (Fig. 7) and robustness against eps (Figs. 1-4).

Each draws with matplotlib's Agg backend, writes a PNG atomically and returns its path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .._files import PathLike
from ..statistics import empirical_cdf
from .figure import png_figure

__all__ = ["plot_fragmentation_cdf", "plot_pixel_histogram", "plot_neighbourhood_scatter", "plot_robustness_curves"]


def plot_fragmentation_cdf(values: Union[Any, Mapping[str, Any]], path: PathLike,
                           title: Optional[str] = None) -> Path:
    """Fig. 5: the CDF of the fragmentation measure; ``values`` is one array or ``{label: array}``."""
    series = dict(values) if isinstance(values, Mapping) else {"": values}
    with png_figure(path, (5.5, 4), title) as (_, axes):
        for label, v in series.items():
            xs, fraction = empirical_cdf(v)
            axes.step(xs, fraction, where="post", label=label or None)
        axes.set_xlabel("(1/d) log_k prod_i |C(x_i)|")
        axes.set_ylabel("fraction of images")
        axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
        if any(series):
            axes.legend(fontsize=8)
    return Path(path)


def plot_pixel_histogram(counts: Any, path: PathLike, title: Optional[str] = None) -> Path:
    """Fig. 7: pixel counts per 8-bit level on a log scale; ``counts`` as
    :func:`pixdisc.analysis.pixel_value_histogram` returns."""
    c = np.asarray(counts, dtype=np.float64)
    rows = c[None, :] if c.ndim == 1 else c
    if rows.ndim != 2:
        raise ValueError(f"counts must be (levels,) or (C, levels), got shape {c.shape}")
    with png_figure(path, (6, 4), title) as (_, axes):
        colours = ["0.3"] if rows.shape[0] == 1 else ["tab:red", "tab:green", "tab:blue", "0.3"]
        for i, row in enumerate(rows):
            label = None if rows.shape[0] == 1 else f"channel {i}"
            # Steps, not bars: empty levels must not draw log(0).
            axes.step(np.arange(row.size), np.where(row > 0, row, np.nan), where="mid",
                      color=colours[i % len(colours)], label=label)
        axes.set_yscale("log")
        axes.set_xlabel("pixel value (level)")
        axes.set_ylabel("number of pixels")
        if rows.shape[0] > 1:
            axes.legend(fontsize=8)
    return Path(path)


def plot_neighbourhood_scatter(colours: Any, sizes: Any, path: PathLike, sample: Optional[int] = 40_000,
                               log_scale: bool = False, seed: int = 0, title: Optional[str] = None) -> Path:
    """Fig. 6: distinct RGB colours in 3-D, coloured by neighbourhood size.

    The colour scale is ``size / max size`` (Fig. 6a) or, with ``log_scale``,
    ``log size / log max size`` (Fig. 6b), normalised over all colours given,
    not just the plotted sample of ``sample`` colours (None plots all).
    """
    points = np.asarray(colours, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64).reshape(-1)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] != n.size:
        raise ValueError(f"colours must be (n, 3) and sizes (n,), got {points.shape} and {n.shape}")
    peak = n.max() if n.size else 1.0
    if log_scale:
        scale = np.log(np.maximum(n, 1)) / math.log(peak) if peak > 1 else np.zeros_like(n)
    else:
        scale = n / peak if peak > 0 else np.zeros_like(n)
    if sample is not None and n.size > sample:
        pick = np.random.default_rng(seed).choice(n.size, size=int(sample), replace=False)
        points, scale = points[pick], scale[pick]
    # No tight_layout: it cannot place 3-D axes with a colour bar.
    with png_figure(path, (6, 5), title, projection="3d", tight_layout=False) as (figure, axes):
        drawn = axes.scatter(points[:, 0], points[:, 1], points[:, 2], c=scale, cmap="viridis", vmin=0, vmax=1,
                             s=1, depthshade=False)
        axes.set_xlabel("R")
        axes.set_ylabel("G")
        axes.set_zlabel("B")
        figure.colorbar(drawn, ax=axes, shrink=0.7, pad=0.12,
                        label="log |N| / log max |N|" if log_scale else "|N| / max |N|")
    return Path(path)


def plot_robustness_curves(eps: Sequence[float], curves: Mapping[str, Sequence[float]], path: PathLike,
                           title: Optional[str] = None, ylabel: str = "robust accuracy (%)") -> Path:
    """Figs. 1-4: accuracy against eps, one line per setting; ``curves`` maps a label to fractions in [0, 1]."""
    xs = np.asarray(eps, dtype=np.float64)
    for label, values in curves.items():
        if np.shape(values) != xs.shape:
            raise ValueError(f"curve {label!r} has {np.size(values)} values for {xs.size} eps")
    with png_figure(path, (6, 4.5), title) as (_, axes):
        for label, values in curves.items():
            axes.plot(xs, 100 * np.asarray(values, dtype=np.float64), marker="o", label=label)
        axes.set_xlabel("eps (l_inf, pixel scale [0,1])")
        axes.set_ylabel(ylabel)
        axes.set_ylim(-2, 102)
        axes.grid(alpha=0.3)
        if curves:
            axes.legend(fontsize=8)
    return Path(path)
