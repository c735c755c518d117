"""Exact final stage of certification: decide ``F(z) = y`` for every z in S(x) by mixed-integer programs (HiGHS)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from torch import Tensor, nn
from torch.nn import functional as F

from .bounds import SUPPORTED_LAYERS

__all__ = ["ExactOutcome", "decide_milp"]

# The layers bound propagation encodes, exact types only (a subclass may override
# forward(), and the program would then describe a different function).
_SUPPORTED: Tuple[type, ...] = SUPPORTED_LAYERS
# Every pre-activation bound is widened by this much before it becomes a big-M
# constant, so that float error in the bounds can never cut off a real z.
_WIDEN_REL = 1e-5
_WIDEN_ABS = 1e-6
# The program's own float64 logits at the witness z must match the network's
# (float32) logits this closely, or the encoding is not trusted.
_WITNESS_REL = 1e-4
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


class _Untrusted(Exception):
    """The program failed an internal consistency check; the sample is left undecided."""


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


# --------------------------------------------------------------------------- network walking


def _layers(net: nn.Module) -> List[nn.Module]:
    """The network as a flat list of layers (nested plain Sequentials expanded); refuses what it cannot encode."""
    if net._forward_hooks or net._forward_pre_hooks:
        raise NotImplementedError(
            f"decide_milp: {type(net).__name__} has forward hooks; they could change the function"
        )
    if isinstance(net, nn.Sequential) and type(net).forward is nn.Sequential.forward:
        out: List[nn.Module] = []
        for child in net:
            out.extend(_layers(child))
        return out
    if type(net) not in _SUPPORTED:
        names = ", ".join(t.__name__ for t in _SUPPORTED)
        raise NotImplementedError(
            f"decide_milp cannot encode layer {type(net).__name__}; it supports nn.Sequential "
            f"(nested, forward not overridden) of exactly these layer types: {names}"
        )
    if isinstance(net, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if net.training or net.running_mean is None or net.running_var is None:
            raise NotImplementedError(
                f"decide_milp: {type(net).__name__} must be in eval mode with running statistics (call net.eval())"
            )
    if isinstance(net, nn.MaxPool2d) and (net.return_indices or net.ceil_mode):
        raise NotImplementedError("decide_milp: MaxPool2d with return_indices or ceil_mode is not supported")
    return [net]


def _f64(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().to("cpu", torch.float64)


def _affine(layer: nn.Module, x: Tensor, with_bias: bool) -> Tensor:
    """The layer in float64 on a batch; without bias it is the linear part, applied to coefficient columns."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, _f64(layer.weight), _f64(layer.bias) if with_bias else None)
    if isinstance(layer, nn.Conv2d):
        # _conv_forward applies the layer's own padding mode, so the encoding cannot drift from forward().
        return layer._conv_forward(x, _f64(layer.weight), _f64(layer.bias) if with_bias else None)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = torch.rsqrt(_f64(layer.running_var) + layer.eps)
        if layer.weight is not None:
            scale = scale * _f64(layer.weight)
        view = (-1,) + (1,) * (x.dim() - 2)
        out = x * scale.reshape(view)
        if with_bias:
            shift = -_f64(layer.running_mean) * scale
            if layer.bias is not None:
                shift = shift + _f64(layer.bias)
            out = out + shift.reshape(view)
        return out
    # AvgPool2d, Flatten, Identity: linear maps without a constant term.
    return layer(x)


# --------------------------------------------------------------------------- the program


class _Program:
    """Variables, linear rows, and the current layer as an affine expression ``MT.T @ v + c``.

    ``v`` are the "expression variables": the input binaries and the outputs
    of unstable ReLUs / undecided max-pools. Affine layers are composed into
    the expression (no variables, no rows), so the program only holds the
    neurons S(x) can actually move. ``x0`` / ``v0`` carry a witness, the
    exact encoding of one member z0 of S(x), checked against every bound.
    """

    def __init__(self, groups: List[np.ndarray], chosen: List[int]) -> None:
        self.lb: List[float] = []
        self.ub: List[float] = []
        self.integer: List[int] = []
        self.x0: List[float] = []
        self.rows: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (row, col, value), global indices
        self.row_lb: List[np.ndarray] = []
        self.row_ub: List[np.ndarray] = []
        self.n_rows = 0
        self.group_starts: List[int] = []
        for g, pick in zip(groups, chosen):
            self.group_starts.append(len(self.lb))
            self.add_vars(len(g), 0.0, 1.0, 1, np.arange(len(g)) == pick)
        self.n_input = len(self.lb)
        # Exactly one candidate per ambiguous pixel.
        for start, g in zip(self.group_starts, groups):
            self.add_rows(np.zeros(len(g), np.int64), start + np.arange(len(g)), np.ones(len(g)), [1.0], [1.0])
        self.expr_cols = np.arange(self.n_input, dtype=np.int64)  # global index of each expression column
        self.v0 = np.asarray(self.x0, np.float64)

    def add_vars(self, count: int, lb: Any, ub: Any, integer: int, x0: Any) -> np.ndarray:
        first = len(self.lb)
        for store, value in ((self.lb, lb), (self.ub, ub), (self.x0, x0)):
            store.extend(np.broadcast_to(np.asarray(value, np.float64), (count,)).tolist())
        self.integer.extend([integer] * count)
        return np.arange(first, first + count, dtype=np.int64)

    def add_rows(self, row: np.ndarray, col: np.ndarray, val: np.ndarray, lb: Sequence[float],
                 ub: Sequence[float]) -> None:
        """Rows ``lb <= sum val * x[col] <= ub``; ``row`` counts from 0 within this call."""
        keep = val != 0
        self.rows.append((row[keep] + self.n_rows, col[keep], val[keep]))
        self.row_lb.append(np.asarray(lb, np.float64))
        self.row_ub.append(np.asarray(ub, np.float64))
        self.n_rows += len(lb)

    def add_expr_vars(self, cols: np.ndarray) -> None:
        self.expr_cols = np.concatenate([self.expr_cols, cols])
        self.v0 = np.concatenate([self.v0, np.asarray(self.x0)[cols]])

    def value(self, MT: Tensor, c: Tensor) -> np.ndarray:
        """The expression at the witness."""
        return self.v0 @ MT.numpy() + c.numpy()

    def expr_bounds(self, MT: Tensor, c: Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """Range of ``MT.T @ v + c`` over the variables' bounds, each pixel's one-hot group taken exactly."""
        M = MT.numpy()
        lo, hi = c.numpy().copy(), c.numpy().copy()
        if self.n_input:
            starts = np.asarray(self.group_starts)
            lo += np.minimum.reduceat(M[: self.n_input], starts, axis=0).sum(0)
            hi += np.maximum.reduceat(M[: self.n_input], starts, axis=0).sum(0)
        rest = M[self.n_input :]
        if rest.shape[0]:
            cols = self.expr_cols[self.n_input :]
            vlb, vub = np.asarray(self.lb)[cols], np.asarray(self.ub)[cols]
            pos, neg = np.clip(rest, 0, None), np.clip(rest, None, 0)
            lo += vlb @ pos + vub @ neg
            hi += vub @ pos + vlb @ neg
        return lo, hi

    def matrix(self) -> sp.csr_array:
        rows = np.concatenate([r for r, _, _ in self.rows])
        cols = np.concatenate([c for _, c, _ in self.rows])
        vals = np.concatenate([v for _, _, v in self.rows])
        return sp.csr_array(sp.coo_array((vals, (rows, cols)), shape=(self.n_rows, len(self.lb))))


def _widen(lo: np.ndarray, hi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return lo - (_WIDEN_REL * np.abs(lo) + _WIDEN_ABS), hi + (_WIDEN_REL * np.abs(hi) + _WIDEN_ABS)


def _relu(prog: _Program, MT: Tensor, c: Tensor, lo: np.ndarray, hi: np.ndarray) -> Tuple[Tensor, Tensor]:
    """Big-M ReLU: stable neurons dropped or passed through; unstable ones get (a, y, d), one equality, three rows."""
    moving = (MT != 0).any(0).numpy()
    c_np = c.numpy()
    inactive = moving & (hi <= 0)
    active = moving & (lo >= 0)
    unstable = np.flatnonzero(moving & ~inactive & ~active)
    MT = MT.clone()
    c = c.clone()
    MT[:, torch.from_numpy(inactive)] = 0.0
    c[torch.from_numpy(inactive)] = 0.0
    fixed = ~moving  # exact constants: the ReLU is applied exactly, no bound needed
    c[torch.from_numpy(fixed)] = torch.from_numpy(np.maximum(c_np[fixed], 0.0))
    q = len(unstable)
    if q == 0:
        return MT, c
    l, u, cu = lo[unstable], hi[unstable], c_np[unstable]
    a0 = prog.value(MT[:, torch.from_numpy(unstable)], c[torch.from_numpy(unstable)])
    # The pre-activation gets its own variable (one dense row), so the three big-M rows stay sparse.
    a = prog.add_vars(q, l, u, 0, a0)
    y = prog.add_vars(q, 0.0, u, 0, np.maximum(a0, 0.0))
    d = prog.add_vars(q, 0.0, 1.0, 1, (a0 > 0).astype(np.float64))
    coef = MT[:, torch.from_numpy(unstable)].numpy()  # (E, q): a_t = coef[:, t] . v + cu[t]
    e_idx, t_idx = np.nonzero(coef)
    t = np.arange(q)
    inf = np.full(q, np.inf)
    # a = coef . v + c:       coef.v - a = -c
    prog.add_rows(np.concatenate([t_idx, t]), np.concatenate([prog.expr_cols[e_idx], a]),
                  np.concatenate([coef[e_idx, t_idx], -np.ones(q)]), -cu, -cu)
    ones = np.ones(q)
    # y >= a:                 a - y <= 0
    prog.add_rows(np.concatenate([t, t]), np.concatenate([a, y]), np.concatenate([ones, -ones]), -inf, np.zeros(q))
    # y <= a - l (1 - d):     y - a - l d <= -l
    prog.add_rows(np.concatenate([t, t, t]), np.concatenate([y, a, d]), np.concatenate([ones, -ones, -l]), -inf, -l)
    # y <= u d
    prog.add_rows(np.concatenate([t, t]), np.concatenate([y, d]), np.concatenate([ones, -u]), -inf, np.zeros(q))
    # The unstable neurons now read their own variables.
    MT[:, torch.from_numpy(unstable)] = 0.0
    c[torch.from_numpy(unstable)] = 0.0
    extra = torch.zeros(q, MT.shape[1], dtype=MT.dtype)
    extra[torch.arange(q), torch.from_numpy(unstable)] = 1.0
    prog.add_expr_vars(y)
    return torch.cat([MT, extra]), c


def _pool_windows(layer: nn.MaxPool2d, shape: Tuple[int, ...]) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """(L, window) flat input index of every output location of one channel, -1 for padding."""
    _, height, width = shape
    index = torch.arange(1, height * width + 1, dtype=torch.float64).reshape(1, 1, height, width)
    # unfold pads with 0, which after the +1 shift marks padding.
    cols = F.unfold(index, layer.kernel_size, layer.dilation, layer.padding, layer.stride)[0]
    out_shape = tuple(layer(torch.zeros((1,) + tuple(shape), dtype=torch.float64)).shape[1:])
    if cols.shape[1] != out_shape[1] * out_shape[2]:
        raise NotImplementedError(f"decide_milp: cannot map the windows of {layer}")
    return cols.T.numpy().astype(np.int64) - 1, out_shape


def _maxpool(prog: _Program, layer: nn.MaxPool2d, shape: Tuple[int, ...], MT: Tensor, c: Tensor, lo: np.ndarray,
             hi: np.ndarray) -> Tuple[Tensor, Tensor, Tuple[int, ...]]:
    """Max over each window: the winner's expression when one input dominates, else m with one binary per contender."""
    windows, out_shape = _pool_windows(layer, shape)
    channels, plane = shape[0], shape[1] * shape[2]
    n_out = channels * windows.shape[0]
    moving = (MT != 0).any(0).numpy()
    M, c_np = MT.numpy(), c.numpy()
    a0 = prog.value(MT, c)
    pick = np.zeros(n_out, np.int64)  # input copied to the output, or -1 for a constant / new variable
    new_c = np.zeros(n_out)
    contests: List[Tuple[int, np.ndarray]] = []
    for ch in range(channels):
        for o, win in enumerate(windows):
            inputs = ch * plane + win[win >= 0]
            out = ch * windows.shape[0] + o
            if not moving[inputs].any():
                pick[out], new_c[out] = -1, c_np[inputs].max()
                continue
            best_low = lo[inputs].max()
            contenders = inputs[hi[inputs] >= best_low]
            if len(contenders) == 1:
                pick[out] = contenders[0]
            else:
                pick[out] = -1
                contests.append((out, contenders))
    copied = pick >= 0
    new_MT = torch.zeros(MT.shape[0], n_out, dtype=MT.dtype)
    new_MT[:, torch.from_numpy(np.flatnonzero(copied))] = MT[:, torch.from_numpy(pick[copied])]
    new_c[copied] = c_np[pick[copied]]
    if contests:
        q = len(contests)
        m_lb = np.array([lo[k].max() for _, k in contests])
        m_ub = np.array([hi[k].max() for _, k in contests])
        m = prog.add_vars(q, m_lb, m_ub, 0, [a0[k].max() for _, k in contests])
        for t, (out, k) in enumerate(contests):
            n = len(k)
            d = prog.add_vars(n, 0.0, 1.0, 1, np.arange(n) == int(np.argmax(a0[k])))
            coef = M[:, k]  # (E, n): a_i = coef[:, i] . v + c_i
            e_idx, i_idx = np.nonzero(coef)
            a_cols, a_vals = prog.expr_cols[e_idx], coef[e_idx, i_idx]
            big = m_ub[t] - lo[k]
            # m >= a_i:                     a_i.v - m <= -c_i
            prog.add_rows(np.concatenate([i_idx, np.arange(n)]), np.concatenate([a_cols, np.full(n, m[t])]),
                          np.concatenate([a_vals, -np.ones(n)]), np.full(n, -np.inf), -c_np[k])
            # m <= a_i + (U - l_i)(1 - d_i): m - a_i.v + (U - l_i) d_i <= c_i + U - l_i
            prog.add_rows(np.concatenate([i_idx, np.arange(n), np.arange(n)]),
                          np.concatenate([a_cols, np.full(n, m[t]), d]),
                          np.concatenate([-a_vals, np.ones(n), big]), np.full(n, -np.inf), c_np[k] + big)
            prog.add_rows(np.zeros(n, np.int64), d, np.ones(n), [1.0], [1.0])
        extra = torch.zeros(q, n_out, dtype=MT.dtype)
        extra[torch.arange(q), torch.tensor([out for out, _ in contests])] = 1.0
        new_MT = torch.cat([new_MT, extra])
        prog.add_expr_vars(m)
    return new_MT, torch.from_numpy(new_c), out_shape


def _crown_margins(net: nn.Module, lower: np.ndarray, upper: np.ndarray, shape: Tuple[int, ...], device: torch.device,
                   y: int) -> Optional[np.ndarray]:
    """CROWN lower bounds (float64) of every margin F_y - F_j over the box hull of S(x); None where unavailable."""
    try:
        from .bounds import margin_lower_bound

        lo_t = torch.from_numpy(lower.reshape((1,) + shape)).to(device)
        hi_t = torch.from_numpy(upper.reshape((1,) + shape)).to(device)
        with torch.no_grad():
            margins = margin_lower_bound(net, lo_t, hi_t, torch.tensor([y], device=device), dtype=torch.float64)
        return margins[0].cpu().numpy()
    except Exception:  # noqa: BLE001 - only a shortcut; the program decides without it
        return None


def _crown_nodes(net: nn.Module, layers: List[nn.Module], lower: np.ndarray, upper: np.ndarray,
                 shape: Tuple[int, ...], device: torch.device) -> Optional[List[Tuple[np.ndarray, np.ndarray]]]:
    """CROWN bounds (float64) of every layer's input over the box hull of S(x); None where unavailable."""
    try:
        from .bounds import _Propagator

        lo_t = torch.from_numpy(lower.reshape((1,) + shape)).to(device)
        hi_t = torch.from_numpy(upper.reshape((1,) + shape)).to(device)
        with torch.no_grad():
            prop = _Propagator(net, lo_t, hi_t, torch.float64)
            if len(prop.layers) != len(layers) or any(a is not b for a, b in zip(prop.layers, layers)):
                return None
            nodes, _ = prop.crown_nodes("crown")
        return [(lo.reshape(-1).cpu().numpy(), hi.reshape(-1).cpu().numpy()) for lo, hi in nodes]
    except Exception:  # noqa: BLE001 - CROWN only tightens; the expression bounds alone are sound
        return None


# --------------------------------------------------------------------------- solving


def _safe_lp_bound(c: np.ndarray, A_ub: sp.csr_array, b_ub: np.ndarray, A_eq: sp.csr_array, b_eq: np.ndarray,
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


def _net_device_dtype(net: nn.Module) -> Tuple[torch.device, torch.dtype]:
    for tensor in list(net.parameters()) + list(net.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


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
    (C, P) / (C*P,) channel-major as ``_Engine._image`` builds it (then give
    ``image_shape`` = (C, H, W); a square image is inferred). ``positions``
    (A,) are the ambiguous pixels (indices into H*W), ``candidates[i]`` the
    code indices allowed at ``positions[i]`` (nearest first), ``codes`` (k, C).
    Fixed pixels keep their value in ``base_image``; ``base_codes`` (P,) names
    their code indices (recovered by exact match when omitted) for the
    returned ``z_codes``.

    The network (an ``nn.Sequential`` of Linear, Conv2d, ReLU, Flatten,
    AvgPool2d, MaxPool2d, eval-mode BatchNorm, Identity) is encoded with one
    binary per (pixel, candidate) and big-M ReLUs / max-pools whose bounds
    are the tighter of CROWN over the box hull and the exact range of each
    neuron's expression, widened outward. For each class j, most dangerous
    first, ``F_y - F_j`` is bounded below by (1) those bounds, (2) the LP
    relaxation, with a dual bound recomputed here from HiGHS's multipliers,
    (3) HiGHS branch and bound with presolve off, where j counts as safe
    only when HiGHS reports optimality with ``mip_dual_bound >=
    margin_tolerance``. Any solution HiGHS returns is rounded to a member of
    S(x) and counts as a counterexample only if the float32 network
    misclassifies it. A program reported infeasible proves nothing (S(x) is
    never empty): ``"unknown"``. ``time_limit`` (seconds) covers the sample.

    Raises ``NotImplementedError`` naming the layer when the network holds a
    layer it cannot encode, and ``ValueError`` for inconsistent inputs.
    """
    started = time.monotonic()
    deadline = started + float(time_limit)
    layers = _layers(net)
    device, net_dtype = _net_device_dtype(net)

    codes = np.asarray(codes, np.float32)
    if codes.ndim == 1:
        codes = codes[:, None]
    k, channels = codes.shape
    base = np.asarray(base_image, np.float32)
    if image_shape is None:
        if base.ndim == 3:
            image_shape = base.shape
        else:
            pixels = base.size // channels
            side = math.isqrt(pixels)
            if side * side != pixels:
                raise ValueError(f"give image_shape for a flattened image of {pixels} pixels (not square)")
            image_shape = (channels, side, side)
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or shape[0] != channels or base.size != int(np.prod(shape)):
        raise ValueError(
            f"base_image of {base.size} values does not match image_shape {shape} with {channels} channels"
        )
    pixels = shape[1] * shape[2]
    base = base.reshape(channels, pixels)
    positions = np.asarray(positions, np.int64).reshape(-1)
    if len(candidates) != len(positions):
        raise ValueError(f"{len(positions)} positions but {len(candidates)} candidate lists")
    out_of_range = len(positions) and (positions.min() < 0 or positions.max() >= pixels)
    if len(np.unique(positions)) != len(positions) or out_of_range:
        raise ValueError("positions must be distinct pixel indices in [0, H*W)")
    given = [np.asarray(a, np.int64).reshape(-1) for a in candidates]
    cand = [np.unique(a) for a in given]
    if any(len(a) == 0 or a.min() < 0 or a.max() >= k for a in cand):
        raise ValueError(f"every candidate list must be non-empty code indices in [0, {k})")
    if base_codes is None:
        dist = ((base.T[:, None, :] - codes[None, :, :]) ** 2).sum(-1)
        base_codes = dist.argmin(1)
        fixed = np.ones(pixels, bool)
        fixed[positions] = False
        if (dist.min(1)[fixed] > 0).any():
            raise ValueError("base_image is not made of codes at its fixed pixels; pass base_codes")
    base_codes = np.asarray(base_codes, np.int32).reshape(-1).copy()
    if base_codes.shape != (pixels,):
        raise ValueError(f"base_codes must have {pixels} entries")
    y = int(y)

    def evaluate(z: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(codes[z].T.reshape((1,) + shape).copy()).to(device, net_dtype)
        with torch.no_grad():
            return net(image)[0].double().cpu().numpy()

    # The witness z0, a member of S(x): each ambiguous pixel at its first (nearest) candidate.
    z0 = base_codes.copy()
    z0[positions] = [int(a[0]) for a in given]
    logits0 = evaluate(z0)
    num_classes = logits0.shape[0]
    if not 0 <= y < num_classes:
        raise ValueError(f"label {y} out of range for {num_classes} classes")

    def worst_margin(logits: np.ndarray) -> float:
        others = np.delete(logits, y)
        return float(logits[y] - others.max()) if len(others) else math.inf

    def outcome(status: str, **kw: Any) -> ExactOutcome:
        return ExactOutcome(status, seconds=time.monotonic() - started, **kw)

    if int(np.argmax(logits0)) != y:
        return outcome("counterexample", z_codes=z0, method="evaluation", margin_at_z=worst_margin(logits0))
    if all(len(a) == 1 for a in cand):
        # S(x) = {z0}, which the network itself just classified.
        return outcome("certified", method="evaluation", margin_bound=worst_margin(logits0))
    # CROWN over the box hull of S(x): intermediate bounds for the program, and often a proof on its own.
    box_lo, box_hi = base.astype(np.float64), base.astype(np.float64).copy()
    for p, a in zip(positions, cand):
        box_lo[:, p], box_hi[:, p] = codes[a].min(0), codes[a].max(0)
    crown_margins = _crown_margins(net, box_lo, box_hi, shape, device, y)
    if crown_margins is not None:
        rest = np.delete(crown_margins, y)
        if len(rest) and rest.min() >= margin_tolerance:
            return outcome("certified", method="bounds", margin_bound=float(rest.min()),
                           details=[{"class": j, "how": "bounds", "bound": float(crown_margins[j])}
                                    for j in range(num_classes) if j != y])
    crown = _crown_nodes(net, layers, box_lo, box_hi, shape, device)
    try:
        built = _build(layers, base, codes, positions, cand, z0, shape, crown, deadline)
    except _Untrusted as error:
        return outcome("unknown", reason=str(error))
    if built is None:
        return outcome("unknown", reason="time limit reached while building the program")
    prog, MT, c = built
    if c.shape[0] != num_classes:
        raise ValueError(f"the program has {c.shape[0]} outputs but the network {num_classes}")
    # Guard: the program's float64 logits at the witness must be the network's.
    program_logits = prog.value(MT, c)
    if np.abs(program_logits - logits0).max() > _WITNESS_REL * (1.0 + np.abs(logits0).max()):
        return outcome("unknown", reason="the program's logits at the witness differ from the network's")

    integer = np.asarray(prog.integer)
    A = prog.matrix()
    # One constant column (fixed at 1) carries the objective's offset, so that
    # HiGHS's objective, bounds and relative gap are the margins themselves.
    A_s = sp.csr_array(sp.hstack([A, sp.csr_array((A.shape[0], 1))]))
    row_lb, row_ub = np.concatenate(prog.row_lb), np.concatenate(prog.row_ub)
    lb, ub = np.append(np.asarray(prog.lb), 1.0), np.append(np.asarray(prog.ub), 1.0)
    integrality = np.append(integer, 0)
    n_vars = len(prog.lb)
    # Guard: the witness must satisfy every row, or the program does not contain S(x).
    x0 = np.asarray(prog.x0)
    finite_ub = np.where(np.isfinite(row_ub), np.abs(row_ub), 0.0)
    activity, slack = A @ x0, 1e-7 * (1.0 + abs(A) @ np.abs(x0) + finite_ub)
    if ((activity < row_lb - slack) | (activity > row_ub + slack)).any():
        return outcome("unknown", reason="the witness violates the program's rows")
    is_eq = np.isfinite(row_lb) & (row_lb == row_ub)
    if (~is_eq & np.isfinite(row_lb)).any():
        raise AssertionError("decide_milp builds only <= rows and equalities")
    A_ub, A_eq = A_s[np.flatnonzero(~is_eq)], A_s[np.flatnonzero(is_eq)]
    b_ub, b_eq = row_ub[~is_eq], row_ub[is_eq]
    program = {"input_binaries": prog.n_input, "variables": len(prog.lb), "binaries": int(integer.sum()),
               "rows": prog.n_rows, "nonzeros": int(A.nnz)}

    others = [j for j in range(num_classes) if j != y]
    spec = (MT[:, [y]] - MT[:, others]).numpy()
    spec_c = (c[y] - c[others]).numpy()
    spec_lo, _ = prog.expr_bounds(torch.from_numpy(spec), torch.from_numpy(spec_c))
    if crown_margins is not None:
        spec_lo = np.maximum(spec_lo, crown_margins[others])
    # Most dangerous first: smallest margin at the witness.
    order = sorted(range(len(others)), key=lambda i: (logits0[y] - logits0[others[i]], spec_lo[i]))
    details: List[Dict[str, Any]] = []
    proven: List[float] = []
    used: set = set()
    solved = nodes = 0
    reasons: List[str] = []

    def finish(status: str, **kw: Any) -> ExactOutcome:
        return outcome(status, classes_solved=solved, nodes=nodes, program=program, details=details, **kw)

    def member(x: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """The member of S(x) a (possibly fractional) solution points at: argmax of each pixel's binaries."""
        if x is None:
            return None
        z = z0.copy()
        for (p, a), start in zip([(p, a) for p, a in zip(positions, cand) if len(a) > 1], prog.group_starts):
            z[p] = a[int(np.argmax(x[start : start + len(a)]))]
        return z

    def try_member(z: Optional[np.ndarray], entry: Dict[str, Any], key: str, method: str) -> Optional[ExactOutcome]:
        if z is None:
            return None
        logits = evaluate(z)
        entry[key] = float(logits[y] - logits[entry["class"]])
        if int(np.argmax(logits)) != y:
            return finish("counterexample", z_codes=z, method=method, margin_at_z=worst_margin(logits))
        return None

    # Cheap stages for every class first, so that a counterexample an LP points
    # at is found before the budget goes into one hard branch and bound.
    hard: List[Tuple[int, Dict[str, Any], np.ndarray]] = []
    for i in order:
        j = others[i]
        entry: Dict[str, Any] = {"class": j, "how": "bounds", "bound": float(spec_lo[i])}
        details.append(entry)
        if spec_lo[i] >= margin_tolerance:
            proven.append(float(spec_lo[i]))
            continue
        objective = np.zeros(n_vars + 1)
        np.add.at(objective, prog.expr_cols, spec[:, i])
        objective[-1] = spec_c[i]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reasons.append(f"class {j}: time limit reached")
            continue
        # (2) The LP relaxation, with a dual bound recomputed here from HiGHS's multipliers.
        solved += 1
        used.add("lp-highs")
        entry["how"] = "lp"
        t0 = time.monotonic()
        try:
            lp = linprog(objective, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=np.stack([lb, ub], 1),
                         method="highs", options={"presolve": False, "time_limit": remaining})
        except Exception as error:  # noqa: BLE001 - a failed LP only skips this stage
            lp = None
            entry["lp_error"] = f"{type(error).__name__}: {error}"
        entry["lp_seconds"] = time.monotonic() - t0
        if lp is not None:
            entry["lp_status"] = int(lp.status)
        if lp is not None and lp.status == 0:
            bound = _safe_lp_bound(objective, A_ub, b_ub, A_eq, b_eq, lb, ub, lp.ineqlin.marginals,
                                   lp.eqlin.marginals)
            entry.update(lp_objective=float(lp.fun), bound=max(bound, entry["bound"]))
            if bound >= margin_tolerance:
                proven.append(bound)
                continue
            found = try_member(member(lp.x), entry, "margin_at_lp_rounding", "lp-highs")
            if found is not None:
                return found
        hard.append((j, entry, objective))

    # (3) Branch and bound for what is left, each class getting an even share of the time that remains;
    # first to a loose relative gap (enough for a clear margin), then to optimality.
    for position, (j, entry, objective) in enumerate(hard):
        used.add("milp-highs")
        entry["how"] = "milp"
        share_end = time.monotonic() + (deadline - time.monotonic()) / (len(hard) - position)
        verdict = ""
        for gap in (_FIRST_GAP, 0.0):
            remaining = share_end - time.monotonic()
            if remaining <= 0:
                break
            t0 = time.monotonic()
            try:
                with _stdout_silenced():
                    res = milp(objective, integrality=integrality, bounds=Bounds(lb, ub),
                               constraints=LinearConstraint(A_s, row_lb, row_ub),
                               options={"presolve": False, "time_limit": remaining, "mip_rel_gap": gap,
                                        "disp": False})
            except Exception as error:  # noqa: BLE001 - any solver failure leaves the class undecided
                entry["milp_error"] = f"{type(error).__name__}: {error}"
                verdict = f"class {j}: HiGHS raised {type(error).__name__}"
                break
            count = int(getattr(res, "mip_node_count", 0) or 0)
            nodes += count
            dual = getattr(res, "mip_dual_bound", None)
            entry.update(status=int(res.status), message=str(res.message), gap=gap, nodes=entry.get("nodes", 0) + count,
                         objective=None if res.fun is None else float(res.fun),
                         milp_seconds=entry.get("milp_seconds", 0.0) + time.monotonic() - t0)
            if res.status == 0 and dual is not None and np.isfinite(dual):
                entry["bound"] = max(entry["bound"], float(dual))
                if dual >= margin_tolerance:
                    proven.append(float(dual))
                    verdict = "proven"
                    break
            found = try_member(member(res.x), entry, "margin_at_z", "milp-highs")
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
            reasons.append(verdict or f"class {j}: time limit reached")
    if len(proven) == len(others) and not reasons:
        method = "milp-highs" if "milp-highs" in used else "lp-highs" if used else "bounds"
        return finish("certified", method=method, margin_bound=float(min(proven)))
    return finish("unknown", reason="; ".join(reasons) or "time limit reached")


def _build(layers: List[nn.Module], base: np.ndarray, codes: np.ndarray, positions: np.ndarray, cand: List[np.ndarray],
           z0: np.ndarray, shape: Tuple[int, ...], crown: Optional[List[Tuple[np.ndarray, np.ndarray]]],
           deadline: float) -> Optional[Tuple[_Program, Tensor, Tensor]]:
    """The program and the logits as an expression over its variables; None when out of time."""
    channels, pixels = base.shape
    # Input: constants at fixed pixels (and at single-candidate pixels), one-hot binaries elsewhere.
    groups = [(p, a) for p, a in zip(positions, cand) if len(a) > 1]
    const = base.astype(np.float64).copy()
    for p, a in zip(positions, cand):
        if len(a) == 1:
            const[:, p] = codes[a[0]]
    prog = _Program([a for _, a in groups], [int(np.flatnonzero(a == z0[p])[0]) for p, a in groups])
    MT = torch.zeros(prog.n_input, channels * pixels, dtype=torch.float64)
    col = 0
    for p, a in groups:
        const[:, p] = 0.0
        for j in a:
            MT[col, np.arange(channels) * pixels + p] = torch.from_numpy(codes[j].astype(np.float64))
            col += 1
    c = torch.from_numpy(const.reshape(-1))

    current = shape
    for index, layer in enumerate(layers):
        if time.monotonic() > deadline:
            return None
        if isinstance(layer, (nn.ReLU, nn.MaxPool2d)):
            lo, hi = prog.expr_bounds(MT, c)
            if crown is not None:
                # Both bounds are sound, so their intersection is.
                lo, hi = np.maximum(lo, crown[index][0]), np.minimum(hi, crown[index][1])
            lo, hi = _widen(lo, hi)
            a0 = prog.value(MT, c)
            if (lo > hi).any() or (a0 < lo).any() or (a0 > hi).any():
                # A sound bound always contains the witness.
                raise _Untrusted(f"bounds at layer {index} ({type(layer).__name__}) exclude the witness")
            if isinstance(layer, nn.ReLU):
                MT, c = _relu(prog, MT, c, lo, hi)
            else:
                if len(current) != 3:
                    raise NotImplementedError("decide_milp: MaxPool2d needs (C, H, W) feature maps")
                MT, c, current = _maxpool(prog, layer, current, MT, c, lo, hi)
            continue
        c_out = _affine(layer, c.reshape((1,) + current), True)
        if c_out.shape[0] != 1:
            raise NotImplementedError(
                f"decide_milp: layer {index} ({type(layer).__name__}) does not keep the batch dimension"
            )
        if MT.shape[0]:
            MT_out = _affine(layer, MT.reshape((MT.shape[0],) + current), False)
        else:
            MT_out = torch.zeros((0,) + tuple(c_out.shape[1:]), dtype=torch.float64)
        current = tuple(c_out.shape[1:])
        MT, c = MT_out.reshape(MT_out.shape[0], -1).contiguous(), c_out.reshape(-1).contiguous()
    return prog, MT, c
