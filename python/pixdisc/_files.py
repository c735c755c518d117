"""Atomic file writes: a reader, or a run killed half way, never sees half a file."""

from __future__ import annotations

import codecs
import contextlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", durable: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; when the block succeeds it replaces ``path``.

    The file gets the permissions ``open()`` would give (0666 minus the
    umask), not ``mkstemp``'s 0600: reports, models and codebooks are meant to
    be shared. ``durable`` also fsyncs before the rename, for checkpoints that
    must survive a crash of the machine, not just of the process. On any
    error the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as stream:
            yield stream
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_write(path, "w") as stream:
        stream.write(text)
    return Path(path)


def numpy_load_reason(error: BaseException) -> str:
    """Why ``np.load(allow_pickle=False)`` could not read a file, in words, without numpy's advice to allow
    pickles (running a file's code is never the fix pixdisc suggests)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "allow_pickle" in text or "pickle" in text.lower():
        return ("it is not a .npy/.npz of numbers (it holds pickled objects, or random bytes that look like them), "
                "and pixdisc never unpickles files")
    return f"numpy could not read it ({text})"


def numpy_load_error(
    path: str | os.PathLike,
    error: BaseException,
    next_step: str = "pass a .npy/.npz file of plain numbers (written with numpy.save or numpy.savez)",
) -> str:
    """What went wrong reading ``path`` with ``np.load(allow_pickle=False)``, and what to do instead."""
    return f"{path} is not a plain NumPy array file: {numpy_load_reason(error)}; {next_step}"


def file_kind(path: PathLike) -> str:
    """What a file's first bytes say it is, for error messages: ``"empty"``, ``"npy"``, ``"npz"``, ``"zip"``,
    ``"pickle"``, ``"text"``, ``"binary"``, or ``"unreadable"`` when it cannot be opened."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(4096)
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "zip"
        return "npz" if names and all(name.endswith(".npy") for name in names) else "zip"
    if head.startswith(b"\x80"):
        return "pickle"
    if b"\0" not in head:
        try:
            text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # the cut may split a character
        except UnicodeDecodeError:
            return "binary"
        if all(character.isprintable() or character in "\t\n\r" for character in text):
            return "text"
    return "binary"
