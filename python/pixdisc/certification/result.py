"""What certification returns: the per-sample budget, records and the run's result."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import numpy as np

from ..statistics import certified_fraction_bounds

OUTCOMES = ("certified", "failed", "unable")
MODES = ("bab", "paper")
BOUNDS = ("crown", "ibp")


@dataclass(frozen=True)
class Budget:
    """Per-sample effort for ``mode="bab"``: branch-and-bound nodes and wall seconds."""

    nodes: int = 2000
    seconds: float = 20.0
    leaf_log2: float = 10.0  # enumerate nodes with log2|S| at most this (<= 1024 images)
    # Exact final stage for samples the nodes/seconds leave open: a mixed-integer
    # program over S(x) (pixdisc.exact, SciPy's HiGHS) with this many seconds; 0 = off.
    exact_seconds: float = 0.0


@dataclass
class CertifyResult:
    """Per-sample outcomes plus everything needed to report them.

    ``outcome[i]`` is ``"certified"``, ``"failed"`` or ``"unable"``.
    ``"failed"`` always comes with a real input ``counterexample[i]``, x' with
    ``||x' - x||_inf <= eps`` and ``F(T(x')) != y``, built and checked
    (``verified[i]`` is True). ``z_codes[i]`` holds the code index of every
    pixel of the misclassified z in S(x) it realizes; a misclassified z that
    no input could be found to realize (possible with the sound rule of
    several channels) makes the sample ``"unable"``, with its ``z_codes`` kept
    for inspection, ``verified[i]`` False and ``reason[i]`` saying which
    pixel's code no input was found to reach.
    """

    outcome: np.ndarray
    log2_size: np.ndarray
    n_ambiguous: np.ndarray
    nodes: np.ndarray
    seconds: np.ndarray
    verified: np.ndarray
    z_codes: Dict[int, np.ndarray]
    counterexample: Dict[int, np.ndarray]
    config: Dict[str, Any]
    delta: float
    wall_seconds: float = 0.0
    method: Optional[np.ndarray] = None  # per sample: what decided it ("" when unable)
    reason: Optional[np.ndarray] = None  # per sample: why it is unable ("" otherwise)

    def __len__(self) -> int:
        return len(self.outcome)

    def counts(self) -> Dict[str, int]:
        return {o: int((self.outcome == o).sum()) for o in OUTCOMES}

    def summary(self) -> Dict[str, Any]:
        m = len(self)
        counts = self.counts()
        out: Dict[str, Any] = {"n": m, **counts, "verified_attacks": int(self.verified.sum()),
                               "delta": self.delta, "wall_seconds": self.wall_seconds, **self.config}
        if m:
            out.update({f"{k}_rate": v / m for k, v in counts.items()})
            bounds = certified_fraction_bounds(counts["certified"], m, self.delta)
            out.update({"s_hat": bounds["s_hat"], "lower_hoeffding": bounds["hoeffding"],
                        "lower_clopper_pearson": bounds["clopper_pearson"],
                        "lower_paper_formula": bounds["paper_formula"]})
        if self.method is not None:
            decided = [str(method) for method in self.method if method]
            out["decided_by"] = {name: decided.count(name) for name in sorted(set(decided))}
        return out


# ----------------------------------------------------------------------------------- one sample



@dataclass
class _Record:
    index: int
    outcome: str
    log2_size: float
    n_ambiguous: int
    nodes: int = 0
    seconds: float = 0.0
    verified: bool = False
    z_codes: Optional[np.ndarray] = None
    counterexample: Optional[np.ndarray] = None
    method: str = ""  # what decided it: bounds, branch-and-bound, enumeration, milp-highs, counterexample
    # Why an "unable" sample stayed open: the budget that ran out, the b it exceeded, or the
    # misclassified member of S(x) no verified input realizes (pixel and code). Plain text, so the
    # checkpoint line stays JSON; records written before it existed read back as "".
    reason: str = ""

    def to_json(self) -> Dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("z_codes", "counterexample")}
        d["z_codes"] = None if self.z_codes is None else _encode(self.z_codes.astype(np.int32))
        d["counterexample"] = None if self.counterexample is None else _encode(self.counterexample.astype(np.float32))
        return d

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "_Record":
        d = dict(d)
        z, ce = d.pop("z_codes", None), d.pop("counterexample", None)
        rec = _Record(**d)
        rec.z_codes = None if z is None else _decode(z, np.int32)
        rec.counterexample = None if ce is None else _decode(ce, np.float32)
        return rec


def _encode(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _decode(s: str, dtype: Any) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).copy()
