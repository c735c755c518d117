"""The append-only JSON-lines checkpoint of a certification run, and the fingerprints that guard it."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable

import numpy as np
from torch import nn

from .result import _Record

CHECKPOINT_FORMAT = "pixdisc-certify"
CHECKPOINT_VERSION = 1


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _model_fingerprint(net: nn.Module) -> str:
    return _fingerprint(*[t.detach().cpu().numpy() for t in net.state_dict().values()])


class _Checkpoint:
    """Append-only JSON lines: a header, then one record per finished sample."""

    def __init__(self, path: Path, header: Dict[str, Any]) -> None:
        self.path = path
        self.done: Dict[int, _Record] = {}
        if path.exists() and path.stat().st_size > 0:
            self._resume(header)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                f.write(json.dumps({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **header}) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def _resume(self, header: Dict[str, Any]) -> None:
        with open(self.path, "rb") as f:
            raw = f.read()
        complete = raw[: raw.rfind(b"\n") + 1]  # a run killed while appending leaves half a line, last
        lines = complete.split(b"\n")[:-1]
        start_over = f"delete {self.path} to start this run over, or pass another checkpoint file"
        try:
            first = _parse(lines[0]) if lines else None
        except ValueError:
            first = None
        if not isinstance(first, dict) or first.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path} is not a pixdisc certification checkpoint (its first line is not the "
                             f"header certify writes); {start_over}")
        for key, value in header.items():
            if first.get(key) != value:
                raise ValueError(f"{self.path} was written for a different run: {key} is {first.get(key)!r} there, "
                                 f"{value!r} now; pass another checkpoint file, or delete this one to start over")
        for number, line in enumerate(lines[1:], start=2):
            try:
                rec = _record(line, first.get("n"))
            except ValueError as exc:
                raise ValueError(f"{self.path}, line {number}, is not a record certify wrote: {exc}. Delete that "
                                 f"line (its sample is certified again), or {start_over}") from None
            self.done[rec.index] = rec
        if len(complete) != len(raw):
            print(f"pixdisc.certify: {self.path}: dropped its last line ({len(raw) - len(complete)} bytes without an "
                  "end of line), cut off by a run killed while writing it; that sample is certified again",
                  file=sys.stderr, flush=True)
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))

    def append(self, records: Iterable[Dict[str, Any]]) -> None:
        with open(self.path, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _parse(line: bytes) -> Any:
    """One checkpoint line as JSON (a ``ValueError`` for bytes that are not UTF-8 JSON)."""
    return json.loads(line.decode("utf-8"))


def _record(line: bytes, samples: Any) -> _Record:
    """One record line of a checkpoint, or a ``ValueError`` saying in words what is wrong with it."""
    try:
        fields = _parse(line)
    except ValueError:
        # Resuming drops a cut-off last line before it appends, so a cut-off line with lines after it was
        # left by a killed run and then appended to by something else (or the file was edited).
        raise ValueError("it is not JSON, probably a line cut off by a killed run with other lines written "
                         "after it") from None
    try:
        rec = _Record.from_json(fields)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"its fields are not a record's ({_first_line(exc)}; was the file edited?)") from None
    limit = samples if isinstance(samples, int) else float("inf")
    if isinstance(rec.index, bool) or not isinstance(rec.index, int) or not 0 <= rec.index < limit:
        raise ValueError(f"its sample index {rec.index!r} is not one of this run's (was the file edited?)")
    return rec


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --------------------------------------------------------------------------------------- driver
