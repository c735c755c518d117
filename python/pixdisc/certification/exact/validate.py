"""The exact stage's door: inputs checked and converted once, the network traced to the bounds' graph or refused."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...bounds import Graph, build_graph


def refusal(net: nn.Module, what: str) -> NotImplementedError:
    """The one error for a network the program cannot encode: decide_milp raises nothing else for it."""
    return NotImplementedError(f"decide_milp cannot encode {type(net).__name__}: {what}")


@dataclass
class Problem:
    """One sample, checked: the network's graph, S(x) as candidate lists, and the witness z0 with its logits."""

    net: nn.Module
    graph: Graph  # the graph the bound tiers use (bounds.build_graph), which the program encodes
    device: torch.device
    dtype: torch.dtype  # the network's own, for evaluating members of S(x)
    codes: np.ndarray  # float32 (k, C)
    shape: Tuple[int, int, int]  # (C, H, W)
    base: np.ndarray  # float32 (C, P): the image, every pixel at a code
    positions: np.ndarray  # int64 (A,): the ambiguous pixels
    given: List[np.ndarray]  # int64: each pixel's candidates as given, nearest first
    cand: List[np.ndarray]  # int64: the same, sorted and distinct
    base_codes: np.ndarray  # int32 (P,): the code index of every pixel
    y: int
    z0: np.ndarray  # int32 (P,): the witness, a member of S(x) (each ambiguous pixel at its first candidate)
    logits0: np.ndarray  # float64 (K,): the network's logits at z0

    @property
    def num_classes(self) -> int:
        return int(self.logits0.shape[0])

    def evaluate(self, z: np.ndarray) -> np.ndarray:
        """The network's own logits (float64 copy) at the member z of S(x)."""
        image = torch.from_numpy(self.codes[z].T.reshape((1,) + self.shape).copy()).to(self.device, self.dtype)
        with torch.no_grad():
            return self.net(image)[0].double().cpu().numpy()

    def worst_margin(self, logits: np.ndarray) -> float:
        """``F_y - max_{j != y} F_j`` for these logits."""
        others = np.delete(logits, self.y)
        return float(logits[self.y] - others.max()) if len(others) else math.inf

    def box(self) -> Tuple[np.ndarray, np.ndarray]:
        """The box hull of S(x), float64 (C, P)."""
        lower, upper = self.base.astype(np.float64), self.base.astype(np.float64).copy()
        for p, a in zip(self.positions, self.cand):
            lower[:, p], upper[:, p] = self.codes[a].min(0), self.codes[a].max(0)
        return lower, upper


def _net_device_dtype(net: nn.Module) -> Tuple[torch.device, torch.dtype, torch.dtype]:
    """Where the network runs, its dtype, and the dtype the bounds trace it in (the same rule as theirs)."""
    for tensor in list(net.parameters()) + list(net.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype, tensor.dtype
    return torch.device("cpu"), torch.float32, torch.get_default_dtype()


def _graph(net: nn.Module, shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Graph:
    """The bounds' graph of ``net``; whatever it refuses, the program refuses, with the bounds' own words."""
    try:
        return build_graph(net, shape, dtype, device)
    except (TypeError, ValueError) as error:
        raise refusal(net, str(error)) from error


def validate(
    net: nn.Module,
    base_image: np.ndarray,
    positions: np.ndarray,
    candidates: Sequence[np.ndarray],
    codes: np.ndarray,
    y: int,
    base_codes: Optional[np.ndarray],
    image_shape: Optional[Sequence[int]],
) -> Problem:
    """``decide_milp``'s arguments checked and converted; raises ``ValueError`` for inconsistent inputs and
    ``NotImplementedError`` (``refusal``) for a network the bounds' graph does not take."""
    device, net_dtype, trace_dtype = _net_device_dtype(net)
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
    graph = _graph(net, shape, trace_dtype, device)
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
    z0 = base_codes.copy()
    z0[positions] = [int(a[0]) for a in given]
    problem = Problem(net, graph, device, net_dtype, codes, shape, base, positions, given, cand, base_codes, int(y),
                      z0, np.zeros(0))
    problem.logits0 = problem.evaluate(z0)
    if not 0 <= problem.y < problem.num_classes:
        raise ValueError(f"label {problem.y} out of range for {problem.num_classes} classes")
    return problem
