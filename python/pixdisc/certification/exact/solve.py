"""Solving the program class by class: its own bounds, LP relaxations with recomputed dual bounds, HiGHS's MILP."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from torch import Tensor

from .outcome import ExactOutcome
from .program import Program
from .validate import Problem

# First MILP pass stops once the dual bound is within this relative gap of the
# incumbent: enough to prove a large margin positive without closing the gap.
_FIRST_GAP = 0.5


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """HiGHS 1.12 writes a debug line to the process's stdout that no option turns off; keep it out of
    the caller's output (e.g. ``pixdisc certify --json``) by pointing file descriptor 1 at /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def safe_lp_bound(c: np.ndarray, A_ub: sp.csr_array, b_ub: np.ndarray, A_eq: sp.csr_array, b_eq: np.ndarray,
                  lb: np.ndarray, ub: np.ndarray, y_ub: np.ndarray, y_eq: np.ndarray) -> float:
    """A lower bound of ``min c.x`` over the LP from any multipliers (Neumaier-Shcherbina), whoever computed them.

    For every x with ``A_ub x <= b_ub``, ``A_eq x = b_eq``, ``lb <= x <= ub``
    and any ``y_ub <= 0``: ``c.x >= y_ub.b_ub + y_eq.b_eq + sum_j min(r_j lb_j,
    r_j ub_j)`` with ``r = c - A_ub^T y_ub - A_eq^T y_eq``. A wrong solver
    answer can only make it weak, never wrong.
    """
    y_ub = np.minimum(np.nan_to_num(y_ub), 0.0)
    y_eq = np.nan_to_num(y_eq)
    r = c - A_ub.T @ y_ub - A_eq.T @ y_eq
    terms = np.concatenate([y_ub * b_ub, y_eq * b_eq, np.minimum(r * lb, r * ub)])
    if not np.isfinite(terms).all():
        return -math.inf
    # Allowance for the rounding of this float64 sum (and of r).
    slack = 8 * (len(terms) + A_ub.nnz + A_eq.nnz) * np.finfo(np.float64).eps * float(np.abs(terms).sum() + 1.0)
    return float(terms.sum() - slack)


@dataclass
class _Matrices:
    """The program in SciPy's terms, with one constant column (fixed at 1) that carries the objective's offset,
    so that HiGHS's objective, bounds and relative gap are the margins themselves."""

    A_s: sp.csr_array  # every row, with the constant column
    row_lb: np.ndarray
    row_ub: np.ndarray
    A_ub: sp.csr_array  # the same rows split for linprog: <= rows and equalities
    b_ub: np.ndarray
    A_eq: sp.csr_array
    b_eq: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integrality: np.ndarray
    sizes: Dict[str, int]


def _matrices(prog: Program) -> Optional[_Matrices]:
    """The program's matrices; None when the witness violates a row (then the program does not contain S(x))."""
    integer = np.asarray(prog.integer)
    A = prog.matrix()
    A_s = sp.csr_array(sp.hstack([A, sp.csr_array((A.shape[0], 1))]))
    row_lb, row_ub = np.concatenate(prog.row_lb), np.concatenate(prog.row_ub)
    lb, ub = np.append(np.asarray(prog.lb), 1.0), np.append(np.asarray(prog.ub), 1.0)
    x0 = np.asarray(prog.x0)
    finite_ub = np.where(np.isfinite(row_ub), np.abs(row_ub), 0.0)
    activity, slack = A @ x0, 1e-7 * (1.0 + abs(A) @ np.abs(x0) + finite_ub)
    if ((activity < row_lb - slack) | (activity > row_ub + slack)).any():
        return None
    is_eq = np.isfinite(row_lb) & (row_lb == row_ub)
    if (~is_eq & np.isfinite(row_lb)).any():
        raise AssertionError("decide_milp builds only <= rows and equalities")
    sizes = {"input_binaries": prog.n_input, "variables": len(prog.lb), "binaries": int(integer.sum()),
             "rows": prog.n_rows, "nonzeros": int(A.nnz)}
    return _Matrices(A_s, row_lb, row_ub, A_s[np.flatnonzero(~is_eq)], row_ub[~is_eq], A_s[np.flatnonzero(is_eq)],
                     row_ub[is_eq], lb, ub, np.append(integer, 0), sizes)


@dataclass
class _Search:
    """What the classes have established so far; the stages add to it, class by class."""

    problem: Problem
    prog: Program
    mats: _Matrices
    tolerance: float
    started: float
    deadline: float
    details: List[Dict[str, Any]] = field(default_factory=list)
    proven: List[float] = field(default_factory=list)
    hard: List[Tuple[int, Dict[str, Any], np.ndarray]] = field(default_factory=list)  # left for branch and bound
    reasons: List[str] = field(default_factory=list)
    used: set = field(default_factory=set)
    solved: int = 0
    nodes: int = 0

    def finish(self, status: str, **kw: Any) -> ExactOutcome:
        return ExactOutcome(status, seconds=time.monotonic() - self.started, classes_solved=self.solved,
                            nodes=self.nodes, program=self.mats.sizes, details=self.details, **kw)

    def member(self, x: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """The member of S(x) a (possibly fractional) solution points at: argmax of each pixel's binaries."""
        if x is None:
            return None
        problem = self.problem
        z = problem.z0.copy()
        groups = [(p, a) for p, a in zip(problem.positions, problem.cand) if len(a) > 1]
        for (p, a), start in zip(groups, self.prog.group_starts):
            z[p] = a[int(np.argmax(x[start : start + len(a)]))]
        return z

    def try_member(self, z: Optional[np.ndarray], entry: Dict[str, Any], key: str,
                   method: str) -> Optional[ExactOutcome]:
        """A counterexample when the network itself misclassifies z."""
        if z is None:
            return None
        y = self.problem.y
        logits = self.problem.evaluate(z)
        entry[key] = float(logits[y] - logits[entry["class"]])
        if int(np.argmax(logits)) != y:
            return self.finish("counterexample", z_codes=z, method=method,
                               margin_at_z=self.problem.worst_margin(logits))
        return None

    def relaxation(self, j: int, entry: Dict[str, Any], objective: np.ndarray) -> Optional[ExactOutcome]:
        """(2) The LP relaxation, with a dual bound recomputed here from HiGHS's multipliers; what it does not
        prove goes on to branch and bound."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.reasons.append(f"class {j}: time limit reached")
            return None
        m = self.mats
        self.solved += 1
        self.used.add("lp-highs")
        entry["how"] = "lp"
        t0 = time.monotonic()
        try:
            lp = linprog(objective, A_ub=m.A_ub, b_ub=m.b_ub, A_eq=m.A_eq, b_eq=m.b_eq,
                         bounds=np.stack([m.lb, m.ub], 1), method="highs",
                         options={"presolve": False, "time_limit": remaining})
        except Exception as error:  # noqa: BLE001 - a failed LP only skips this stage
            lp = None
            entry["lp_error"] = f"{type(error).__name__}: {error}"
        entry["lp_seconds"] = time.monotonic() - t0
        if lp is not None:
            entry["lp_status"] = int(lp.status)
        if lp is not None and lp.status == 0:
            bound = safe_lp_bound(objective, m.A_ub, m.b_ub, m.A_eq, m.b_eq, m.lb, m.ub, lp.ineqlin.marginals,
                                  lp.eqlin.marginals)
            entry.update(lp_objective=float(lp.fun), bound=max(bound, entry["bound"]))
            if bound >= self.tolerance:
                self.proven.append(bound)
                return None
            found = self.try_member(self.member(lp.x), entry, "margin_at_lp_rounding", "lp-highs")
            if found is not None:
                return found
        self.hard.append((j, entry, objective))
        return None

    def branch_and_bound(self, j: int, entry: Dict[str, Any], objective: np.ndarray,
                         share_end: float) -> Optional[ExactOutcome]:
        """(3) HiGHS branch and bound until ``share_end``: first to a loose relative gap (enough for a clear
        margin), then to optimality. j counts as safe only on an optimal status with a dual bound above the
        tolerance; why it is not safe goes to ``reasons``."""
        m = self.mats
        self.used.add("milp-highs")
        entry["how"] = "milp"
        verdict = ""
        for gap in (_FIRST_GAP, 0.0):
            remaining = share_end - time.monotonic()
            if remaining <= 0:
                break
            t0 = time.monotonic()
            try:
                with _stdout_silenced():
                    res = milp(objective, integrality=m.integrality, bounds=Bounds(m.lb, m.ub),
                               constraints=LinearConstraint(m.A_s, m.row_lb, m.row_ub),
                               options={"presolve": False, "time_limit": remaining, "mip_rel_gap": gap,
                                        "disp": False})
            except Exception as error:  # noqa: BLE001 - any solver failure leaves the class undecided
                entry["milp_error"] = f"{type(error).__name__}: {error}"
                verdict = f"class {j}: HiGHS raised {type(error).__name__}"
                break
            count = int(getattr(res, "mip_node_count", 0) or 0)
            self.nodes += count
            dual = getattr(res, "mip_dual_bound", None)
            entry.update(status=int(res.status), message=str(res.message), gap=gap, nodes=entry.get("nodes", 0) + count,
                         objective=None if res.fun is None else float(res.fun),
                         milp_seconds=entry.get("milp_seconds", 0.0) + time.monotonic() - t0)
            if res.status == 0 and dual is not None and np.isfinite(dual):
                entry["bound"] = max(entry["bound"], float(dual))
                if dual >= self.tolerance:
                    self.proven.append(float(dual))
                    verdict = "proven"
                    break
            found = self.try_member(self.member(res.x), entry, "margin_at_z", "milp-highs")
            if found is not None:
                return found
            if res.status == 0 and gap > 0:
                continue  # a small margin: close the gap completely
            if res.status == 0:
                verdict = f"class {j}: optimum {res.fun:.3g} is below the tolerance, yet its z is classified y"
            elif res.status == 2:
                verdict = f"class {j}: HiGHS reported infeasible, which proves nothing (S(x) is never empty)"
            elif res.status == 1:
                verdict = f"class {j}: HiGHS stopped at its time limit"
            else:
                verdict = f"class {j}: HiGHS status {res.status} ({res.message})"
            break
        if verdict != "proven":
            self.reasons.append(verdict or f"class {j}: time limit reached")
        return None


def solve(problem: Problem, prog: Program, MT: Tensor, c: Tensor, crown_margins: Optional[np.ndarray],
          tolerance: float, started: float, deadline: float) -> ExactOutcome:
    """Bound ``F_y - F_j`` below for each class j, most dangerous first, by (1) the program's own bounds (and
    CROWN's ``crown_margins``), (2) LP relaxations, (3) branch and bound; any solution is rounded to a member
    of S(x) and checked with the network. ``MT``, ``c``: the logits as an expression over the program."""
    mats = _matrices(prog)
    if mats is None:
        return ExactOutcome("unknown", seconds=time.monotonic() - started,
                            reason="the witness violates the program's rows")
    search = _Search(problem, prog, mats, tolerance, started, deadline)
    y, logits0 = problem.y, problem.logits0
    others = [j for j in range(problem.num_classes) if j != y]
    spec = (MT[:, [y]] - MT[:, others]).numpy()
    spec_c = (c[y] - c[others]).numpy()
    spec_lo, _ = prog.expr_bounds(torch.from_numpy(spec), torch.from_numpy(spec_c))
    if crown_margins is not None:
        spec_lo = np.maximum(spec_lo, crown_margins[others])
    # Most dangerous first: smallest margin at the witness.
    order = sorted(range(len(others)), key=lambda i: (logits0[y] - logits0[others[i]], spec_lo[i]))
    # Cheap stages for every class first, so that a counterexample an LP points
    # at is found before the budget goes into one hard branch and bound.
    for i in order:
        j = others[i]
        entry: Dict[str, Any] = {"class": j, "how": "bounds", "bound": float(spec_lo[i])}
        search.details.append(entry)
        if spec_lo[i] >= tolerance:
            search.proven.append(float(spec_lo[i]))
            continue
        objective = np.zeros(len(prog.lb) + 1)
        np.add.at(objective, prog.expr_cols, spec[:, i])
        objective[-1] = spec_c[i]
        found = search.relaxation(j, entry, objective)
        if found is not None:
            return found
    # Each class left gets an even share of the time that remains.
    hard = search.hard
    for position, (j, entry, objective) in enumerate(hard):
        share_end = time.monotonic() + (deadline - time.monotonic()) / (len(hard) - position)
        found = search.branch_and_bound(j, entry, objective, share_end)
        if found is not None:
            return found
    if len(search.proven) == len(others) and not search.reasons:
        used = search.used
        method = "milp-highs" if "milp-highs" in used else "lp-highs" if used else "bounds"
        return search.finish("certified", method=method, margin_bound=float(min(search.proven)))
    return search.finish("unknown", reason="; ".join(search.reasons) or "time limit reached")
