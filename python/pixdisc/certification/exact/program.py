"""The mixed-integer program: variables, rows, and the big-M forms of ReLU and max-pooling over its expressions."""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

# Every pre-activation bound is widened by this much before it becomes a big-M
# constant, so that float error in the bounds can never cut off a real z.
_WIDEN_REL = 1e-5
_WIDEN_ABS = 1e-6


class Program:
    """Variables and linear rows; every value of the graph is an affine expression ``MT.T @ v + c``.

    ``v`` are the "expression variables": the input binaries and the outputs
    of unstable ReLUs / undecided max-pools. Affine ops are composed into
    the expressions (no variables, no rows), so the program only holds the
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

    def pad(self, MT: Tensor) -> Tensor:
        """An expression made before the latest variables were added, over all of them (zero coefficients)."""
        missing = len(self.expr_cols) - MT.shape[0]
        return MT if missing == 0 else torch.cat([MT, MT.new_zeros(missing, MT.shape[1])])

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


def widen(lo: np.ndarray, hi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return lo - (_WIDEN_REL * np.abs(lo) + _WIDEN_ABS), hi + (_WIDEN_REL * np.abs(hi) + _WIDEN_ABS)


def relu(prog: Program, MT: Tensor, c: Tensor, lo: np.ndarray, hi: np.ndarray) -> Tuple[Tensor, Tensor]:
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


def pool_windows(layer: nn.MaxPool2d, shape: Tuple[int, ...]) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """(L, window) flat input index of every output location of one channel, -1 for padding; (C, H, W) out.

    Raises ``ValueError`` when the windows do not reproduce the layer's own pooling of an index plane.
    """
    _, height, width = shape
    index = torch.arange(1, height * width + 1, dtype=torch.float64).reshape(1, 1, height, width)
    out_shape = tuple(layer(torch.zeros((1,) + tuple(shape), dtype=torch.float64)).shape[1:])
    out_h, out_w = out_shape[1], out_shape[2]
    (kh, kw), (sh, sw) = _pair(layer.kernel_size), _pair(layer.stride)
    (ph, pw), (dh, dw) = _pair(layer.padding), _pair(layer.dilation)
    # Zeros mark padding (after the +1 shift); one stride more at the bottom and right holds the last windows
    # that ceil_mode adds, and the grid is then cut to the layer's own output size.
    padded = F.pad(index, (pw, pw + sw, ph, ph + sh))
    cols = F.unfold(padded, (kh, kw), (dh, dw), 0, (sh, sw))[0].T
    grid_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    grid_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    if grid_h < out_h or grid_w < out_w:
        raise ValueError(f"cannot map the windows of {layer}")
    windows = cols.reshape(grid_h, grid_w, -1)[:out_h, :out_w].reshape(out_h * out_w, -1).numpy().astype(np.int64)
    # The largest and smallest index in each window must be what the layer itself picks from the plane
    # (it pads with -inf): a window set that is off by a row or a column fails this.
    largest = windows.max(1).astype(np.float64)
    smallest = np.where(windows > 0, windows, np.iinfo(np.int64).max).min(1).astype(np.float64)
    with torch.no_grad():
        expect_max = layer(index).reshape(-1).numpy()
        expect_min = -layer(-index).reshape(-1).numpy()
    if not (np.array_equal(largest, expect_max) and np.array_equal(smallest, expect_min)):
        raise ValueError(f"cannot map the windows of {layer}")
    return windows - 1, out_shape


def maxpool(prog: Program, layer: nn.MaxPool2d, shape: Tuple[int, ...], MT: Tensor, c: Tensor, lo: np.ndarray,
            hi: np.ndarray) -> Tuple[Tensor, Tensor, Tuple[int, ...]]:
    """Max over each window: the winner's expression when one input dominates, else m with one binary per contender."""
    windows, out_shape = pool_windows(layer, shape)
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
