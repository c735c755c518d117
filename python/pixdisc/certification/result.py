"""What certification returns: the per-sample budget, records and the run's result."""

from __future__ import annotations

import base64
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import numpy as np

from ..statistics import certified_fraction_bounds
from ..attacks.sx import SearchBudget

OUTCOMES = ("certified", "failed", "unable")
MODES = ("bab", "paper")
# Bound tiers of bab mode, cheapest first (pixdisc.bounds.TIERS): each image escalates up to the chosen one.
BOUNDS = ("ibp", "crown-ibp", "crown", "alpha-crown")


@dataclass(frozen=True)
class Budget:
    """Per-image effort for ``mode="bab"``; it covers all of an image's work, root bounds included.

    ``nodes``: branch-and-bound nodes. ``seconds``: wall clock, or None for
    none. ``work``: bound passes, enumeration and gradients counted in forward
    passes of the network on one image (``pixdisc.bounds.meter``), or None for
    no limit; it is counted from shapes, not from the clock, so a budget with
    ``seconds=None`` gives the same outcomes on any machine load and worker
    count (published numbers use one). At least one of ``seconds`` and
    ``work`` must be set: nothing else stops a root bound on a large network.
    Batched root tiers (IBP, CROWN-IBP on a whole chunk) charge every image of
    the chunk an even share.
    """

    nodes: int = 2000
    seconds: Optional[float] = 20.0
    work: Optional[float] = None
    leaf_log2: float = 10.0  # enumerate nodes with log2|S| at most this (<= 1024 images)
    # Exact final stage for samples the budget leaves open: a mixed-integer program over S(x)
    # (pixdisc.certification.exact, SciPy's HiGHS) with this many seconds of HiGHS's clock, capped by the image's
    # seconds left; 0 = off. Wall-clock limited even under a work budget: leave it off for published numbers.
    exact_seconds: float = 0.0
    # The S(x) search (pixdisc.attacks.sx, fixed seed) on the images the batched root bounds leave open,
    # before their own bounds and branching: a misclassified member it finds, checked through T and F on a
    # real input, decides "failed" at once. It may spend a quarter of the image's budget; None: off.
    search: Optional[SearchBudget] = SearchBudget()

    def __post_init__(self) -> None:
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, (int, np.integer)) or self.nodes < 0:
            raise ValueError(f"Budget.nodes must be an integer >= 0 (0: root bounds only), got {self.nodes!r}")
        for name in ("seconds", "work"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float, np.number)) and 0 < value < math.inf):
                raise ValueError(f"Budget.{name} must be a positive number or None, got {value!r}")
        if self.seconds is None and self.work is None:
            raise ValueError("Budget needs seconds or work (or both): with neither, nothing stops the root bounds "
                             "of a large network; for outcomes that do not depend on the clock give "
                             "Budget(seconds=None, work=...)")
        if self.search is not None and not isinstance(self.search, SearchBudget):
            raise ValueError(f"Budget.search must be a pixdisc.sx_attack.SearchBudget or None, got {self.search!r}")
        if not self.exact_seconds >= 0:
            raise ValueError(f"Budget.exact_seconds must be >= 0, got {self.exact_seconds!r}")


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
    tier: Optional[np.ndarray] = None  # per sample: the last bound tier its root box needed ("" if none ran)
    work: Optional[np.ndarray] = None  # per sample: work spent, in forward passes of the network (Budget.work)

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
        if self.tier is not None:
            reached = [str(tier) for tier in self.tier if tier]
            out["root_tier"] = {name: reached.count(name) for name in sorted(set(reached))}
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
    # The last bound tier that ran on the image's root box ("" when none did: decided before bounds).
    tier: str = ""
    work: float = 0.0  # bound passes, enumeration and gradients, in forward passes (Budget.work's unit)

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
