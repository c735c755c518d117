"""The program from the bounds' graph: S(x) as one-hot binaries, then each op's form over the expressions, in order."""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .program import Program, maxpool, relu, widen
from .validate import Problem, refusal

Expression = Tuple[Tensor, Tensor, Tuple[int, ...]]  # (MT, c, per-sample shape): the value is MT.T @ v + c
ValueBounds = List[Tuple[np.ndarray, np.ndarray]]  # flat float64 bounds of every value of the graph


class Untrusted(Exception):
    """The program failed an internal consistency check; the sample is left undecided."""


def _f64(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().to("cpu", torch.float64)


def _affine(layer: nn.Module, x: Tensor, with_bias: bool) -> Tensor:
    """The layer in float64 on a batch; without bias it is the linear part, applied to coefficient columns."""
    if isinstance(layer, nn.Linear):
        return torch.nn.functional.linear(x, _f64(layer.weight), _f64(layer.bias) if with_bias else None)
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


def _input(problem: Problem) -> Tuple[Program, Expression]:
    """Constants at fixed pixels (and at single-candidate pixels), one-hot binaries elsewhere."""
    channels, pixels = problem.base.shape
    codes, z0 = problem.codes, problem.z0
    groups = [(p, a) for p, a in zip(problem.positions, problem.cand) if len(a) > 1]
    const = problem.base.astype(np.float64).copy()
    for p, a in zip(problem.positions, problem.cand):
        if len(a) == 1:
            const[:, p] = codes[a[0]]
    prog = Program([a for _, a in groups], [int(np.flatnonzero(a == z0[p])[0]) for p, a in groups])
    MT = torch.zeros(prog.n_input, channels * pixels, dtype=torch.float64)
    col = 0
    for p, a in groups:
        const[:, p] = 0.0
        for j in a:
            MT[col, np.arange(channels) * pixels + p] = torch.from_numpy(codes[j].astype(np.float64))
            col += 1
    return prog, (MT, torch.from_numpy(const.reshape(-1)), problem.shape)


def _nonlinear(problem: Problem, prog: Program, value: int, layer: nn.Module, source: Expression,
               bounds: Optional[Tuple[np.ndarray, np.ndarray]]) -> Expression:
    """ReLU or max-pool over the expression's range (intersected with the bounds' own), widened outward."""
    MT, c, shape = source
    lo, hi = prog.expr_bounds(MT, c)
    if bounds is not None:
        # Both bounds are sound, so their intersection is.
        lo, hi = np.maximum(lo, bounds[0]), np.minimum(hi, bounds[1])
    lo, hi = widen(lo, hi)
    a0 = prog.value(MT, c)
    if (lo > hi).any() or (a0 < lo).any() or (a0 > hi).any():
        # A sound bound always contains the witness.
        raise Untrusted(f"bounds at op {value} ({type(layer).__name__}) exclude the witness")
    if isinstance(layer, nn.ReLU):
        MT, c = relu(prog, MT, c, lo, hi)
        return MT, c, shape
    if len(shape) not in (2, 3):
        raise refusal(problem.net, f"MaxPool2d at op {value} on values of shape {shape} (needs (C, H, W))")
    planes = shape if len(shape) == 3 else (1,) + shape  # (H, W) per sample: one plane
    try:
        MT, c, out = maxpool(prog, layer, planes, MT, c, lo, hi)
    except ValueError as error:
        raise refusal(problem.net, f"op {value}: {error}") from error
    return MT, c, out if len(shape) == 3 else out[1:]


def _linear(problem: Problem, value: int, layer: nn.Module, source: Expression) -> Expression:
    MT, c, shape = source
    c_out = _affine(layer, c.reshape((1,) + shape), True)
    if c_out.shape[0] != 1:
        raise refusal(problem.net, f"op {value} ({type(layer).__name__}) does not keep the batch dimension")
    if MT.shape[0]:
        MT_out = _affine(layer, MT.reshape((MT.shape[0],) + shape), False)
    else:
        MT_out = torch.zeros((0,) + tuple(c_out.shape[1:]), dtype=torch.float64)
    out_shape = tuple(c_out.shape[1:])
    return MT_out.reshape(MT_out.shape[0], -1).contiguous(), c_out.reshape(-1).contiguous(), out_shape


def _cat(sources: List[Expression], dim: int) -> Expression:
    """torch.cat along ``dim`` (counting the batch axis): the coefficient columns are laid out as the values."""
    MT = torch.cat([m.reshape((m.shape[0],) + s) for m, _, s in sources], dim)
    c = torch.cat([v.reshape((1,) + s) for _, v, s in sources], dim)
    return MT.reshape(MT.shape[0], -1), c.reshape(-1), tuple(c.shape[1:])


def encode(problem: Problem, bounds: Optional[ValueBounds],
           deadline: float) -> Optional[Tuple[Program, Tensor, Tensor]]:
    """The program and the logits as an expression over its variables; None when out of time.

    Walks ``problem.graph`` (the graph the bound tiers use) in its order;
    ``bounds[v]``, when given, bounds value ``v`` over the box hull of S(x).
    Raises ``Untrusted`` when a bound excludes the witness.
    """
    graph = problem.graph
    prog, start = _input(problem)
    values: Dict[int, Expression] = {0: start}
    readers = [len(consumers) for consumers in graph.consumers]  # reads left, so a value is freed after its last
    for value, op in enumerate(graph.ops[1:], 1):
        if time.monotonic() > deadline:
            return None
        # Expressions made before later variables were added get zero coefficients on them.
        sources = [(prog.pad(values[v][0]),) + values[v][1:] for v in op.inputs]
        if op.kind == "layer" and op.nonlinear:
            out = _nonlinear(problem, prog, value, op.module, sources[0],
                             None if bounds is None else bounds[op.inputs[0]])
        elif op.kind == "layer":
            out = _linear(problem, value, op.module, sources[0])
        elif op.kind == "add":
            (MT_a, c_a, shape), (MT_b, c_b, _) = sources
            out = MT_a + MT_b, c_a + c_b, shape
        elif op.kind == "cat":
            out = _cat(sources, op.dim)
        else:  # reshape: the flat (C-order) layout of the values does not change
            out = sources[0][0], sources[0][1], tuple(op.shape)
        values[value] = out
        for v in op.inputs:
            readers[v] -= 1
            if readers[v] == 0:
                del values[v]
    MT, c, _ = values[len(graph.ops) - 1]
    return prog, prog.pad(MT), c
