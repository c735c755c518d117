"""MNIST and Fashion-MNIST from their IDX files (the same layout, a different folder and class names)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .core import _DIGIT_NAMES, Dataset, DatasetNotFoundError, PathLike, _first_existing, _require_dir
from .formats import read_idx

# Where Debian's `dataset-fashion-mnist` package puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def _idx_candidates(stem: str) -> list[str]:
    # Besides the canonical names, some unpackers write "train-images.idx3-ubyte".
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _find_idx_pair(directories: Sequence[Path], split: str, how_to_get: str) -> tuple[Path, Path]:
    images_stem, labels_stem = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
    for directory in directories:
        images = _first_existing(directory / name for name in _idx_candidates(images_stem))
        labels = _first_existing(directory / name for name in _idx_candidates(labels_stem))
        if images is not None and labels is not None:
            return images, labels
    raise DatasetNotFoundError(
        f"Could not find {images_stem}[.gz] and {labels_stem}[.gz]. {how_to_get}",
        searched=directories,
    )


def _load_idx_dataset(
    directories: Sequence[Path], name: str, classes: tuple[str, ...], how_to_get: str
) -> Dataset:
    arrays: dict[str, np.ndarray] = {}
    for split, key in (("train", "train"), ("t10k", "test")):
        images_path, labels_path = _find_idx_pair(directories, split, how_to_get)
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(f"{labels_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
        if labels.size and labels.max() >= len(classes):
            raise ValueError(f"{labels_path}: label {labels.max()} out of range for {len(classes)} classes")
        arrays[f"x_{key}"] = images[..., np.newaxis]
        arrays[f"y_{key}"] = labels.astype(np.int64)
    return Dataset(**arrays, name=name, num_classes=len(classes), classes=classes)


_MNIST_HELP = (
    "Put the four MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or not) in one directory and "
    "pass it as --data-dir; or use the embedded 'mnist5k' subset."
)


def load_mnist(data_dir: PathLike) -> Dataset:
    """Full MNIST (60,000 train / 10,000 test) from IDX files in ``data_dir``.

    Also looks in ``data_dir/MNIST/raw`` (torchvision's layout).
    """
    root = _require_dir(data_dir, "mnist", _MNIST_HELP)
    return _load_idx_dataset([root, root / "MNIST" / "raw"], "mnist", _DIGIT_NAMES, _MNIST_HELP)


_FASHION_HELP = (
    "Install the Debian package (apt-get install dataset-fashion-mnist, files in "
    f"{FASHION_MNIST_DIR}) or pass --data-dir with the Fashion-MNIST IDX files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz)."
)


def load_fashion_mnist(data_dir: PathLike | None = None) -> Dataset:
    """Fashion-MNIST (60,000 train / 10,000 test) from IDX files; default: the Debian package's directory.

    Also looks in ``data_dir/FashionMNIST/raw`` (torchvision's layout).
    """
    root = FASHION_MNIST_DIR if data_dir is None else Path(data_dir).expanduser()
    return _load_idx_dataset(
        [root, root / "FashionMNIST" / "raw"], "fashion_mnist", _FASHION_MNIST_CLASSES, _FASHION_HELP
    )
