"""Data loading: MNIST, Fashion-MNIST, digits, CIFAR-10, GTSRB and ImageNet-dev as uint8 NHWC arrays.

Layout: ``core`` (the ``Dataset`` type, its error),
``registry`` (``DATASETS``, ``load_dataset``), ``cache`` (decoded embedded
data, in memory and on disk), ``formats`` (IDX and restricted-pickle readers),
``splits`` (the seeded stratified split), and one module per source:
``embedded`` (MNIST-5k, digits), ``mnist`` (MNIST, Fashion-MNIST),
``cifar10``, ``gtsrb``, ``imagenet_dev``. ``as_float_nchw`` (uint8 NHWC to
the models' float NCHW) lives with the other input conversions in
:mod:`pixdisc.inputs`.
"""

from ..inputs import as_float_nchw
from .cache import cache_dir
from .cifar10 import load_cifar10
from .core import Dataset, DatasetNotFoundError, PathLike
from .embedded import load_digits, load_mnist5k
from .formats import read_idx
from .gtsrb import load_gtsrb
from .imagenet_dev import load_imagenet_dev
from .mnist import FASHION_MNIST_DIR, load_fashion_mnist, load_mnist
from .registry import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetNotFoundError",
    "FASHION_MNIST_DIR",
    "as_float_nchw",
    "cache_dir",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_gtsrb",
    "load_imagenet_dev",
    "load_mnist",
    "load_mnist5k",
    "read_idx",
]
