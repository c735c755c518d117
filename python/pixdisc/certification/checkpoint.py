"""The append-only JSON-lines checkpoint of a certification run, and the fingerprints that guard it."""

from __future__ import annotations

import hashlib
import json
import os
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
        complete = raw[: raw.rfind(b"\n") + 1]  # a killed writer may leave half a line
        try:
            lines = complete.decode("utf-8").splitlines()
            first = json.loads(lines[0])
        except (IndexError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.path} is not a pixdisc certification checkpoint (not JSON lines written by "
                             "certify; use another file or delete it)") from exc
        if first.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path} is not a pixdisc certification checkpoint")
        for key, value in header.items():
            if first.get(key) != value:
                raise ValueError(f"{self.path} was written for a different run: {key} is {first.get(key)!r} there, "
                                 f"{value!r} now; use another checkpoint file")
        for line in lines[1:]:
            rec = _Record.from_json(json.loads(line))
            self.done[rec.index] = rec
        if len(complete) != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))

    def append(self, records: Iterable[Dict[str, Any]]) -> None:
        with open(self.path, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------------------- driver
