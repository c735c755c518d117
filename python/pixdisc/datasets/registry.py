"""The data sets by name: the list the CLI offers and ``load_dataset``, which picks the loader."""

from __future__ import annotations

from typing import Callable

from ..profiles import dataset_key
from .cifar10 import _CIFAR10_HELP, load_cifar10
from .core import Dataset, PathLike, _require_dir
from .embedded import load_digits, load_mnist5k
from .gtsrb import _GTSRB_HELP, load_gtsrb
from .imagenet_dev import _IMAGENET_DEV_HELP, load_imagenet_dev
from .mnist import _MNIST_HELP, load_fashion_mnist, load_mnist

DATASETS: tuple[str, ...] = (
    "mnist5k",
    "mnist",
    "fashion_mnist",
    "digits",
    "cifar10",
    "gtsrb",
    "imagenet_dev",
)


def load_dataset(name: str = "mnist5k", data_dir: PathLike | None = None) -> Dataset:
    """Load a data set by name (one of ``DATASETS``; ``-`` and ``_`` are interchangeable).

    ``data_dir`` is ignored by the embedded ``mnist5k`` and ``digits``; it is
    required by ``mnist``, ``cifar10``, ``gtsrb`` and ``imagenet_dev``, and
    optional for ``fashion_mnist`` (default: the Debian package's directory).
    """
    key = dataset_key(name)
    if key == "mnist5k":
        return load_mnist5k()
    if key == "digits":
        return load_digits()
    if key == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    loaders: dict[str, Callable[[PathLike], Dataset]] = {
        "mnist": load_mnist,
        "cifar10": load_cifar10,
        "gtsrb": load_gtsrb,
        "imagenet_dev": load_imagenet_dev,
    }
    if key not in loaders:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    help_text = {
        "mnist": _MNIST_HELP, "cifar10": _CIFAR10_HELP,
        "gtsrb": _GTSRB_HELP, "imagenet_dev": _IMAGENET_DEV_HELP,
    }[key]
    return loaders[key](_require_dir(data_dir, key, help_text))
