"""CIFAR-10 from its binary or python batches."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .core import Dataset, DatasetNotFoundError, PathLike, _require_dir
from .formats import _restricted_load

_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

_CIFAR10_HELP = (
    "Download cifar-10-binary.tar.gz (or cifar-10-python.tar.gz) from "
    "https://www.cs.toronto.edu/~kriz/cifar.html, extract it with `tar xzf` into a directory "
    "(it creates cifar-10-batches-bin/ or cifar-10-batches-py/) and pass that directory as --data-dir."
)
_CIFAR10_TRAIN = tuple(f"data_batch_{index}" for index in range(1, 6))
_CIFAR10_TEST = "test_batch"
_CIFAR10_PIXELS = 3 * 32 * 32


def _read_cifar10_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _restricted_load(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, got {type(batch).__name__}")
    # Python-2 pickles give bytes keys; be lenient with str keys from re-pickled copies.
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: missing the 'data' or 'labels' entry (keys: {sorted(map(repr, batch))})")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR10_PIXELS:
        raise ValueError(f"{path}: 'data' must be uint8 (N, {_CIFAR10_PIXELS}), got {data.dtype} {data.shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: 'labels' is not a list of integers") from error
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    return _cifar_chw_to_hwc(data), labels


def _read_cifar10_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    record = 1 + _CIFAR10_PIXELS
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise ValueError(
            f"{path}: size {raw.size} bytes is not a positive multiple of the {record}-byte CIFAR-10 record"
        )
    records = raw.reshape(-1, record)
    return _cifar_chw_to_hwc(records[:, 1:]), records[:, 0].astype(np.int64)


def _cifar_chw_to_hwc(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def load_cifar10(data_dir: PathLike) -> Dataset:
    """CIFAR-10 (50,000 train / 10,000 test) from the binary or the python batches.

    ``data_dir`` may be the batches folder itself or its parent holding
    ``cifar-10-batches-bin/`` or ``cifar-10-batches-py/``; binary is used when
    both are present (it needs no unpickling). Python batches go through a
    restricted unpickler that only rebuilds NumPy uint8 arrays and plain containers.
    """
    root = _require_dir(data_dir, "cifar10", _CIFAR10_HELP)
    candidates = [root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"]
    layouts: tuple[tuple[str, Callable[[Path], tuple[np.ndarray, np.ndarray]]], ...] = (
        (".bin", _read_cifar10_binary_batch),
        ("", _read_cifar10_python_batch),
    )
    for directory in candidates:
        for suffix, reader in layouts:
            names = [name + suffix for name in (*_CIFAR10_TRAIN, _CIFAR10_TEST)]
            if all((directory / name).is_file() for name in names):
                parts = [reader(directory / name) for name in names]
                for (_, labels), name in zip(parts, names):
                    if labels.size and (labels.min() < 0 or labels.max() >= 10):
                        raise ValueError(f"{directory / name}: label out of range 0..9")
                return Dataset(
                    x_train=np.concatenate([images for images, _ in parts[:-1]]),
                    y_train=np.concatenate([labels for _, labels in parts[:-1]]),
                    x_test=parts[-1][0], y_test=parts[-1][1],
                    name="cifar10", num_classes=10, classes=_CIFAR10_CLASSES,
                )
    archives = [root / name for name in ("cifar-10-binary.tar.gz", "cifar-10-python.tar.gz") if (root / name).is_file()]
    hint = f" Found {archives[0]}: extract it first (tar xzf {archives[0].name})." if archives else ""
    raise DatasetNotFoundError(
        "Could not find the CIFAR-10 batches (data_batch_1..5 and test_batch, "
        f"with .bin for the binary version).{hint} {_CIFAR10_HELP}",
        searched=candidates,
    )
