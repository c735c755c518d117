"""Sound bounds of ReLU classifiers over input boxes, interval (IBP) and CROWN, in pure torch, for certification.

The network is a nested ``nn.Sequential`` of ``SUPPORTED_LAYERS`` or any
model whose forward() torch.fx can trace into those layers plus residual
additions, concatenation, reshapes and functional ReLU/pooling
(``SUPPORTED_OPERATIONS``). Modules: ``graph`` (the network as ops),
``interval`` (boxes and interval steps), ``relax`` (ReLU/max-pool
relaxations), ``states`` (dense and patch coefficients, backward steps),
``crown`` (the propagator over the graph, alpha-CROWN included), ``tiers``
(the tiers escalated box by box), ``meter`` (work and deadline of a bound
computation), ``tunables`` (chunk size, slope optimisation).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import tunables
from .crown import _Propagator
from .graph import SUPPORTED_LAYERS, SUPPORTED_OPERATIONS, Graph, Op, build_graph
from .graph import _flatten_net  # the layer list of a Sequential, for tests
from .meter import BudgetExhausted, Meter
from .tiers import TIERS, Escalation, check_tier, escalate, margin_matrix

_TEST_HOOKS = (_flatten_net,)  # private names tests reach through the package

__all__ = [
    "SUPPORTED_LAYERS",
    "SUPPORTED_OPERATIONS",
    "TIERS",
    "BudgetExhausted",
    "Escalation",
    "Graph",
    "Meter",
    "Op",
    "build_graph",
    "certified_by_bounds",
    "crown_bounds",
    "escalate",
    "interval_bounds",
    "margin_lower_bound",
    "margin_matrix",
    "tunables",
    "value_bounds",
]


def interval_bounds(
    net: nn.Module, lower: Tensor, upper: Tensor, C: Optional[Tensor] = None, *, dtype: Optional[torch.dtype] = None
) -> Tuple[Tensor, Tensor]:
    """Interval bound propagation (IBP, Gowal et al. 2018) of ``net`` over ``lower <= x <= upper``.

    ``net`` is an ``nn.Sequential`` (nested allowed) of the layer types in
    ``SUPPORTED_LAYERS``, or a model that torch.fx traces into those layers
    and ``SUPPORTED_OPERATIONS`` (residual adds, ``torch.cat``, reshapes,
    functional ReLU and pooling); ``lower``/``upper`` are batched like the
    network's input. Without ``C`` it returns per-output bounds shaped like the output.
    With ``C`` of shape (N, S, num_outputs) (or (S, num_outputs) for all
    samples) it returns (N, S) bounds of ``C @ output``: intervals up to the
    last ReLU/MaxPool, then the exact range of the affine tail composed with
    ``C``, which is tighter than bounding logits first (and tighter than
    folding ``C`` into the last Linear only).

    Computed in ``dtype`` (default: the network's parameter dtype) and
    differentiable with respect to the parameters, for interval bound
    training. Sound in exact arithmetic; floating-point rounding can move a
    bound by a few ulps, so certify in float64 when margins are tiny.
    """
    prop = _Propagator(net, lower, upper, dtype)
    if C is None:
        return prop.ibp_nodes()[-1]
    A = prop.spec(C)
    value = prop.tail_lower(prop.ibp_nodes(), torch.cat([A, -A], 1))
    specs = A.shape[1]
    return value[:, :specs], -value[:, specs:]


def crown_bounds(
    net: nn.Module,
    lower: Tensor,
    upper: Tensor,
    C: Optional[Tensor] = None,
    *,
    intersect_ibp: bool = True,
    intermediate: str = "crown",
    dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Tensor]:
    """CROWN bounds (Zhang et al. 2018) of ``net`` or of ``C @ net`` over ``lower <= x <= upper``.

    A backward linear relaxation: ReLU is bounded above by the chord and
    below by ``a z`` with the adaptive ``a`` (1 if ``u >= -l`` else 0);
    max-pooling below by its element with the largest lower bound and above
    by that element plus a constant or by a constant (whichever is tighter
    on average). The pre-activation bounds these need are themselves CROWN
    bounds, layer by layer (``intermediate="crown"``), computed only for
    elements whose relaxation is not already exact and intersected with
    interval bounds; ``intermediate="ibp"`` uses interval bounds instead
    (CROWN-IBP, cheap enough for training). With ``intersect_ibp`` the
    result is also intersected with the interval bounds of
    ``interval_bounds``, so it is never looser than IBP.

    Shapes, ``C`` and ``dtype`` as in ``interval_bounds``; the same caveat on
    floating-point rounding applies. Conv layers are handled in patch form
    (each neuron's receptive field only) and the work is chunked so that a
    chunk's largest coefficient tensor stays near ``tunables.CHUNK_BYTES``. Over a
    traced graph the backward pass visits values in reverse topological
    order: a value read by several ops (a residual block's input) sums their
    shares, kept in patch form when the branches' windows nest, and a
    ``torch.cat`` splits its share among its inputs.
    Differentiable with respect to the parameters; wrap calls in
    ``torch.no_grad()`` when no gradient is needed, or autograd keeps every
    chunk alive.
    """
    prop = _Propagator(net, lower, upper, dtype)
    A = prop.spec(C)
    specs = A.shape[1]
    value = prop.crown_lower(torch.cat([A, -A], 1), intermediate, intersect_ibp)
    out_lower, out_upper = value[:, :specs], -value[:, specs:]
    if C is None:
        shape = (prop.batch,) + tuple(prop.shapes[-1])
        out_lower, out_upper = out_lower.reshape(shape), out_upper.reshape(shape)
        if intersect_ibp:
            # Also the plain layer-by-layer intervals that interval_bounds
            # returns, so "never looser" holds to the last bit.
            ibp_lower, ibp_upper = prop.ibp_nodes()[-1]
            out_lower, out_upper = torch.maximum(out_lower, ibp_lower), torch.minimum(out_upper, ibp_upper)
    return out_lower, out_upper


def value_bounds(
    net: nn.Module,
    lower: Tensor,
    upper: Tensor,
    *,
    intermediate: str = "crown",
    dtype: Optional[torch.dtype] = None,
) -> Tuple[Graph, List[Tuple[Tensor, Tensor]]]:
    """The graph of ``net`` (``build_graph``) and bounds of every value in it over ``lower <= x <= upper``.

    Value ``v`` is the output of ``graph.ops[v]`` (0 the input, the last the
    output); its bounds are shaped (N, *per-sample shape). With
    ``intermediate="crown"`` they are the ones ``crown_bounds`` builds its
    relaxations on: intervals, tightened by CROWN at the inputs of ReLUs and
    max-pools where that can help; ``"ibp"`` gives the interval pass alone.
    ``dtype`` and the floating-point caveat as in ``interval_bounds``.
    """
    prop = _Propagator(net, lower, upper, dtype)
    if intermediate == "ibp":
        return prop.graph, list(prop.ibp_nodes())
    if intermediate != "crown":
        raise ValueError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")
    nodes, _ = prop.crown_nodes("crown")
    return prop.graph, list(nodes)


def margin_lower_bound(
    net: nn.Module,
    lower: Tensor,
    upper: Tensor,
    y: Tensor,
    method: str = "crown",
    *,
    intersect_ibp: bool = True,
    intermediate: str = "crown",
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Lower bounds (N, K) of ``logit_y - logit_j`` over the box, for every class j.

    The margins are bounded directly (a specification matrix pushed through
    the network), not as differences of separate logit bounds. The entry
    ``j == y`` is exactly 0 (the true margin of y over itself), so the
    result can be fed to a cross-entropy loss as negated worst-case logits.
    ``method`` is a tier of ``TIERS``: ``"ibp"``, ``"crown-ibp"`` (CROWN of
    the output over interval intermediate bounds, the same as ``"crown"``
    with ``intermediate="ibp"``), ``"crown"`` or ``"alpha-crown"``
    (``"crown"``, then optimised slopes; not differentiable). The keyword
    options are those of ``crown_bounds`` (``dtype`` alone for the others).
    """
    check_tier(method, "method")
    if method == "crown-ibp":
        method, intermediate = "crown", "ibp"
    prop = _Propagator(net, lower, upper, dtype)
    y = torch.as_tensor(y, device=prop.lower.device)
    if y.shape != (prop.batch,):
        raise ValueError(f"y must have shape ({prop.batch},), got {tuple(y.shape)}")
    A = prop.spec(margin_matrix(y, prop.num_outputs(), dtype=prop.dtype))
    if method == "ibp":
        value = prop.tail_lower(prop.ibp_nodes(), A)
    elif method == "crown":
        value = prop.crown_lower(A, intermediate, intersect_ibp)
    else:
        with torch.no_grad():
            value = prop.alpha_lower(A, prop.crown_lower(A, "crown", True))
    # Exactly 0 already (a zero row); pinned so that no rounding can differ.
    return value.scatter(1, y.unsqueeze(1), 0.0)


def certified_by_bounds(
    net: nn.Module,
    lower: Tensor,
    upper: Tensor,
    y: Tensor,
    method: str = "crown",
    *,
    intersect_ibp: bool = True,
    intermediate: str = "crown",
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Boolean (N,): True where the bounds prove ``argmax net(x) == y`` for every x in the box.

    Needs every margin bound for j != y strictly positive (a tie is not a
    proof, whatever the tie-break). Runs without autograd. Pass
    ``dtype=torch.float64`` when the decision must not hinge on float32
    rounding.
    """
    with torch.no_grad():
        margins = margin_lower_bound(
            net, lower, upper, y, method, intersect_ibp=intersect_ibp, intermediate=intermediate, dtype=dtype
        )
        y = torch.as_tensor(y, device=margins.device)
        margins = margins.scatter(1, y.unsqueeze(1), float("inf"))
        return (margins > 0).all(1)
