"""Plain NumPy reference implementations that the native kernels are tested against."""

from __future__ import annotations

import numpy as np

METRICS = ("linf", "l1", "l2")


def pixel_distances(pixels: np.ndarray, codes: np.ndarray, metric: str) -> np.ndarray:
    """float32 distances (squared for l2) with the kernels' exact operation order."""
    pixels = np.asarray(pixels, dtype=np.float32)
    codes = np.asarray(codes, dtype=np.float32)
    diff = np.abs(pixels[:, None, :] - codes[None, :, :])  # (n, k, C) float32
    acc = np.zeros(diff.shape[:2], dtype=np.float32)
    for c in range(diff.shape[2]):
        d = diff[:, :, c]
        if metric == "linf":
            acc = np.maximum(acc, d)
        elif metric == "l1":
            acc = acc + d
        else:
            acc = acc + d * d
    return acc


def nearest(pixels: np.ndarray, codes: np.ndarray, metric: str) -> np.ndarray:
    """Index of the nearest code; np.argmin takes the first minimum = lowest index."""
    if len(pixels) == 0:
        return np.zeros(0, dtype=np.int64)
    return pixel_distances(pixels, codes, metric).argmin(axis=1)


def to_unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)


def histogram(pixels: np.ndarray):
    """Distinct rows in lexicographic order with counts."""
    values, counts = np.unique(np.asarray(pixels, dtype=np.float32), axis=0, return_counts=True)
    return values, counts.astype(np.int64)


def value_distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances between rows of a and one point b (squared for l2)."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if metric == "linf":
        return d.max(axis=-1)
    if metric == "l1":
        return d.sum(axis=-1)
    return (d * d).sum(axis=-1)


def density_codebook(values, counts, k, r, metric="linf", kernel="identity", bandwidth=None):
    """Algorithm 1 exactly as written: densities recomputed from scratch each round."""
    values = np.asarray(values, dtype=np.float32)
    counts = np.asarray(counts, dtype=np.float64)
    remaining = np.ones(len(values), dtype=bool)
    tolerance = 1e-6  # distances within 1e-6 of r count as <= r (float32 images of k/255)
    sq = (lambda v: (v + tolerance) ** 2) if metric == "l2" else (lambda v: v + tolerance)
    codes = []
    for _ in range(k):
        if not remaining.any():
            break
        if kernel == "identity":
            density = counts.copy()
        else:
            support = bandwidth if kernel == "box" else 4 * bandwidth
            density = np.zeros(len(values))
            for i in np.flatnonzero(remaining):
                d = value_distance(values, values[i], metric)
                near = remaining & (d <= sq(support))
                if kernel == "box":
                    w = np.ones(len(values))
                else:
                    d2 = d if metric == "l2" else d * d
                    w = np.exp(-d2 / (2 * bandwidth**2))
                density[i] = (w[near] * counts[near]).sum()
        density[~remaining] = -np.inf
        best = int(np.argmax(density))  # first maximum = smallest value
        codes.append(values[best])
        remaining &= ~(value_distance(values, values[best], metric) <= sq(r))
    return np.array(codes, dtype=np.float32).reshape(-1, values.shape[1])


def medoid_cost(values, counts, medoids, metric):
    d = np.stack([value_distance(values, m, metric) for m in medoids], axis=1)
    if metric == "l2":
        d = np.sqrt(d)
    return float((d.min(axis=1) * counts).sum())
