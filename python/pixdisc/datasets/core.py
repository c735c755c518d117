"""The type every loader returns, its error, and the folder checks the file-based loaders share."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike[str]]

# MNIST, its 5k subset and scikit-learn's digits all label digits 0..9.
_DIGIT_NAMES = tuple(str(digit) for digit in range(10))


class DatasetNotFoundError(FileNotFoundError):
    """The data set's files are not where we looked; the message says where we looked and how to get them."""

    def __init__(self, message: str, searched: Sequence[PathLike] = ()) -> None:
        self.searched = tuple(str(path) for path in searched)
        if self.searched:
            message += "\nLooked in:\n" + "\n".join(f"  {path}" for path in self.searched)
        super().__init__(message)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of images (uint8, NHWC) with int64 labels.

    ``eq=False`` because elementwise array comparison has no single truth value.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"x_{split}")
            labels = getattr(self, f"y_{split}")
            if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(
                    f"{self.name}: x_{split} must be a uint8 array (N, H, W, C), "
                    f"got {getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}"
                )
            if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
                raise ValueError(
                    f"{self.name}: y_{split} must be an int64 array (N,), "
                    f"got {getattr(labels, 'dtype', type(labels))} {getattr(labels, 'shape', '')}"
                )
            if len(images) != len(labels):
                raise ValueError(f"{self.name}: {len(images)} {split} images but {len(labels)} labels")
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"{self.name}: {split} labels must lie in [0, {self.num_classes}), "
                    f"got [{labels.min()}, {labels.max()}]"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"{self.name}: train images {self.x_train.shape[1:]} and test images "
                f"{self.x_test.shape[1:]} differ in shape"
            )
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes")

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's shape (H, W, C)."""
        height, width, channels = self.x_test.shape[1:]
        return (height, width, channels)


def _require_dir(data_dir: PathLike | None, name: str, how_to_get: str) -> Path:
    """``data_dir`` as a path; None fails with the message that says how to get the files."""
    if data_dir is None:
        raise DatasetNotFoundError(f"{name} needs a data directory (--data-dir). {how_to_get}")
    return Path(data_dir).expanduser()


def _first_existing(paths: Iterable[Path]) -> Path | None:
    """The first of ``paths`` that is a file: sources spell their file names several ways."""
    for path in paths:
        if path.is_file():
            return path
    return None
