"""``decide_milp``: one sample decided exactly, as validate, bound, encode and solve."""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ...bounds import margin_lower_bound, value_bounds
from .encode import Untrusted, ValueBounds, encode
from .outcome import ExactOutcome
from .solve import solve
from .validate import Problem, validate

# The program's own float64 logits at the witness z must match the network's
# (float32) logits this closely, or the encoding is not trusted.
_WITNESS_REL = 1e-4


def _box_tensors(problem: Problem, lower: np.ndarray, upper: np.ndarray) -> Any:
    shape = (1,) + problem.shape
    return (torch.from_numpy(lower.reshape(shape)).to(problem.device),
            torch.from_numpy(upper.reshape(shape)).to(problem.device))


def crown_margins(problem: Problem, lower: np.ndarray, upper: np.ndarray) -> Optional[np.ndarray]:
    """CROWN lower bounds (float64) of every margin F_y - F_j over the box hull of S(x); None where unavailable."""
    try:
        lo_t, hi_t = _box_tensors(problem, lower, upper)
        y = torch.tensor([problem.y], device=problem.device)
        with torch.no_grad():
            margins = margin_lower_bound(problem.net, lo_t, hi_t, y, dtype=torch.float64)
        return margins[0].cpu().numpy()
    except Exception:  # noqa: BLE001 - only a shortcut; the program decides without it
        return None


def crown_value_bounds(problem: Problem, lower: np.ndarray, upper: np.ndarray) -> Optional[ValueBounds]:
    """CROWN bounds (float64, flat) of every value of the problem's graph over the box hull of S(x); None
    where unavailable."""
    try:
        lo_t, hi_t = _box_tensors(problem, lower, upper)
        with torch.no_grad():
            graph, nodes = value_bounds(problem.net, lo_t, hi_t, dtype=torch.float64)
        if graph is not problem.graph:  # traced again meanwhile: its values need not be numbered alike
            return None
        return [(lo.reshape(-1).cpu().numpy(), hi.reshape(-1).cpu().numpy()) for lo, hi in nodes]
    except Exception:  # noqa: BLE001 - CROWN only tightens; the expression bounds alone are sound
        return None


def decide_milp(
    net: nn.Module,
    base_image: np.ndarray,
    positions: np.ndarray,
    candidates: Sequence[np.ndarray],
    codes: np.ndarray,
    y: int,
    *,
    time_limit: float = 30.0,
    margin_tolerance: float = 1e-4,
    base_codes: Optional[np.ndarray] = None,
    image_shape: Optional[Sequence[int]] = None,
) -> ExactOutcome:
    """Decide whether ``argmax net(z) == y`` for every z in S(x), exactly, class by class.

    ``base_image`` is the image with every pixel at a code, (C, H, W), or
    (C, P) / (C*P,) channel-major as the certification engine builds it (then
    give ``image_shape`` = (C, H, W); a square image is inferred).
    ``positions`` (A,) are the ambiguous pixels (indices into H*W),
    ``candidates[i]`` the code indices allowed at ``positions[i]`` (nearest
    first), ``codes`` (k, C). Fixed pixels keep their value in
    ``base_image``; ``base_codes`` (P,) names their code indices (recovered
    by exact match when omitted) for the returned ``z_codes``.

    The network is the graph the bound tiers trace (``bounds.build_graph``:
    a nested ``nn.Sequential`` of ``bounds.SUPPORTED_LAYERS``, or a model
    torch.fx traces into them plus residual adds, ``torch.cat``, reshapes
    and functional ReLU / pooling). It is encoded with one binary per
    (pixel, candidate), affine ops composed into expressions, and big-M
    ReLUs / max-pools whose bounds are the tighter of CROWN over the box
    hull and the exact range of each neuron's expression, widened outward.
    For each class j, most dangerous first, ``F_y - F_j`` is bounded below
    by (1) those bounds, (2) the LP relaxation, with a dual bound recomputed
    here from HiGHS's multipliers, (3) HiGHS branch and bound with presolve
    off, where j counts as safe only when HiGHS reports optimality with
    ``mip_dual_bound >= margin_tolerance``. Any solution HiGHS returns is
    rounded to a member of S(x) and counts as a counterexample only if the
    network itself misclassifies it. A program reported infeasible proves
    nothing (S(x) is never empty): ``"unknown"``. ``time_limit`` (seconds)
    covers the sample.

    Raises ``NotImplementedError`` (one message, naming what) for a network
    the bounds' graph refuses or the program cannot reproduce, and
    ``ValueError`` for inconsistent inputs.
    """
    started = time.monotonic()
    deadline = started + float(time_limit)
    problem = validate(net, base_image, positions, candidates, codes, y, base_codes, image_shape)

    def outcome(status: str, **kw: Any) -> ExactOutcome:
        return ExactOutcome(status, seconds=time.monotonic() - started, **kw)

    y, logits0 = problem.y, problem.logits0
    if int(np.argmax(logits0)) != y:
        return outcome("counterexample", z_codes=problem.z0, method="evaluation",
                       margin_at_z=problem.worst_margin(logits0))
    if all(len(a) == 1 for a in problem.cand):
        # S(x) = {z0}, which the network itself just classified.
        return outcome("certified", method="evaluation", margin_bound=problem.worst_margin(logits0))
    # CROWN over the box hull of S(x): bounds for the program, and often a proof on its own.
    lower, upper = problem.box()
    margins = crown_margins(problem, lower, upper)
    if margins is not None:
        rest = np.delete(margins, y)
        if len(rest) and rest.min() >= margin_tolerance:
            return outcome("certified", method="bounds", margin_bound=float(rest.min()),
                           details=[{"class": j, "how": "bounds", "bound": float(margins[j])}
                                    for j in range(problem.num_classes) if j != y])
    try:
        built = encode(problem, crown_value_bounds(problem, lower, upper), deadline)
    except Untrusted as error:
        return outcome("unknown", reason=str(error))
    if built is None:
        return outcome("unknown", reason="time limit reached while building the program")
    prog, MT, c = built
    if c.shape[0] != problem.num_classes:
        raise ValueError(f"the program has {c.shape[0]} outputs but the network {problem.num_classes}")
    # Guard: the program's float64 logits at the witness must be the network's.
    program_logits = prog.value(MT, c)
    if np.abs(program_logits - logits0).max() > _WITNESS_REL * (1.0 + np.abs(logits0).max()):
        return outcome("unknown", reason="the program's logits at the witness differ from the network's")
    return solve(problem, prog, MT, c, margins, margin_tolerance, started, deadline)
