"""What the exact stage concludes for one sample: a verdict, its evidence and the work it took."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np


@dataclass
class ExactOutcome:
    """What ``decide_milp`` concluded for one sample.

    ``status`` is ``"certified"`` (every z in S(x) is classified y),
    ``"counterexample"`` (``z_codes`` holds a member of S(x), checked with the
    real network, whose argmax is not y) or ``"unknown"`` (``reason`` says
    why). ``method`` names the strongest stage that was needed:
    ``"evaluation"`` (the nearest member itself is misclassified, or it is
    the only member),
    ``"bounds"`` (CROWN / exact-expression bounds proved every class),
    ``"lp-highs"`` (plus LP relaxations with verified dual bounds) or
    ``"milp-highs"`` (plus HiGHS branch and bound).
    """

    status: str
    z_codes: Optional[np.ndarray] = None  # int32 (P,): code index of every pixel, for a counterexample
    seconds: float = 0.0
    method: str = ""
    reason: str = ""
    margin_bound: float = math.nan  # proven lower bound of min_j F_y - F_j over S(x) (certified only)
    margin_at_z: float = math.nan  # F_y - max_{j != y} F_j at the counterexample, float32 network
    classes_solved: int = 0  # classes that needed HiGHS (LP or MILP)
    nodes: int = 0  # branch-and-bound nodes HiGHS reported, summed
    program: Dict[str, int] = field(default_factory=dict)  # sizes of the program
    details: List[Dict[str, Any]] = field(default_factory=list)  # one entry per class j examined
