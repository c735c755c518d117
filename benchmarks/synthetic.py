"""Synthetic benchmark data of real data-set sizes (no data set can be downloaded here).

CIFAR-like colour images are smooth blends of a few colours drawn near the
grey axis, plus sensor-like noise; the noise level is tuned so the 51M pixels
hold about 4 million distinct colours, the order of magnitude real CIFAR-10
has. MNIST-like gray images are mostly 0 with bright strokes.
"""

from __future__ import annotations

import numpy as np


def cifar_like(n_images: int = 50_000, seed: int = 0, noise: float = 3.0) -> np.ndarray:
    """uint8 (n_images, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_images, 32, 32, 3), np.uint8)
    ramp = (np.arange(32, dtype=np.float32) + 0.5) / 32
    for start in range(0, n_images, 5000):
        m = min(5000, n_images - start)
        luma = rng.uniform(0, 255, size=(m, 3, 1)).astype(np.float32)
        colours = np.clip(luma + rng.normal(0, 35, size=(m, 3, 3)), 0, 255).astype(np.float32)
        # Bilinear blend of three colours across the image.
        wy = ramp[None, :, None, None]
        wx = ramp[None, None, :, None]
        c0, c1, c2 = (colours[:, i][:, None, None, :] for i in range(3))
        img = c0 * (1 - wy) * (1 - wx) + c1 * wy + c2 * (1 - wy) * wx
        img += rng.normal(0, noise, size=img.shape).astype(np.float32)
        out[start : start + m] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def mnist_like(n_images: int = 60_000, seed: int = 0) -> np.ndarray:
    """uint8 (n_images, 28, 28): ~80% zeros, bright strokes, a few mid values."""
    rng = np.random.default_rng(seed)
    u = rng.random((n_images, 28, 28), dtype=np.float32)
    img = np.zeros((n_images, 28, 28), np.uint8)
    stroke = u > 0.8
    img[stroke] = rng.integers(200, 256, size=int(stroke.sum()), dtype=np.uint8)
    edge = (u > 0.75) & ~stroke
    img[edge] = rng.integers(1, 200, size=int(edge.sum()), dtype=np.uint8)
    return img
