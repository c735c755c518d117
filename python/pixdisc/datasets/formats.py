"""Readers of the container formats the sources ship in: IDX files and (restricted) pickles.

Both refuse malformed or hostile input with an error naming the file.
"""

from __future__ import annotations

import gzip
import math
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .core import PathLike

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
