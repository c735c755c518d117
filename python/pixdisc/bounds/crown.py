"""Interval and CROWN bounds over a graph of operations: one forward interval pass, backward linear passes."""

from __future__ import annotations

import functools
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from . import tunables
from .graph import Graph, Op, build_graph
from .interval import Bounds, _check_box, _ibp_op, _ibp_step, _resolve_dtype
from .meter import Meter
from .relax import _disjoint_windows, _fuse_relu, _needs_refinement, _relaxation, _ReluRelax, _PoolRelax
from .states import (
    _add_states,
    _back_affine_dense,
    _back_patches,
    _back_pool_dense,
    _back_relu_dense,
    _Dense,
    _gather_patches,
    _Patches,
    _patchable,
    _reshape_state,
    _split_state,
    _State,
    _to_dense,
)

# Affine layers that mix elements; interval arithmetic is exact through one of
# them (and any elementwise or reshaping layers) but not through two.
_MIXING: Tuple[type, ...] = (nn.Linear, nn.Conv2d, nn.AvgPool2d)


def _mixes(op: Op) -> bool:
    # A sum of two branches is not exact in intervals either (x + Wx).
    return op.kind == "add" or (op.kind == "layer" and type(op.module) in _MIXING)


def _size(state: _State) -> int:
    return state.coef.shape[0] * state.coef[0, 0].numel()


class _Propagator:
    """One network and one input box; computes interval and CROWN bounds of linear specs of the output.

    Values are numbered as the graph's ops: ``nodes[v]`` bounds value ``v``
    (0 the input, the last the output). For a Sequential network value ``i``
    is the input of layer ``i``.
    """

    def __init__(
        self, net: nn.Module, lower: Tensor, upper: Tensor, dtype: Optional[torch.dtype], meter: Optional[Meter] = None
    ) -> None:
        if not isinstance(lower, Tensor) or not isinstance(upper, Tensor):
            raise TypeError("lower and upper must be torch tensors")
        params = [t for t in list(net.parameters()) + list(net.buffers()) if t.is_floating_point()]
        trace_dtype = params[0].dtype if params else torch.get_default_dtype()
        self.graph: Graph = build_graph(net, tuple(lower.shape[1:]), trace_dtype, lower.device)
        self.dtype = _resolve_dtype(self.graph.modules(), lower, dtype)
        self.lower, self.upper = _check_box(lower, upper, self.dtype)
        self.batch = self.lower.shape[0]
        self.meter = meter
        self.phase = "bounds"  # what is being computed, for the message when the meter runs out
        self._ibp_nodes: Optional[List[Bounds]] = None
        # Intermediate bounds and relaxations per method ("ibp", "crown"), reused by later tiers.
        self._crown: Dict[str, Tuple[List[Bounds], Dict[object, object]]] = {}

    def select(self, rows: Tensor) -> "_Propagator":
        """The same network over the boxes ``rows`` (a boolean mask or indices), keeping what was computed."""
        other = object.__new__(_Propagator)
        other.__dict__.update(self.__dict__)
        other.lower, other.upper = self.lower[rows], self.upper[rows]
        other.batch = other.lower.shape[0]
        other._ibp_nodes = None if self._ibp_nodes is None else [(lo[rows], hi[rows]) for lo, hi in self._ibp_nodes]
        other._crown = {
            key: ([(lo[rows], hi[rows]) for lo, hi in nodes], {k: _select_relax(r, rows) for k, r in relax.items()})
            for key, (nodes, relax) in self._crown.items()
        }
        return other

    # -- work accounting

    @functools.cached_property
    def unit(self) -> int:
        """Activations of one forward pass on one image: the meter's unit of work."""
        return max(1, sum(int(shape.numel()) for shape in self.shapes[1:]))

    def charge_interval_pass(self) -> None:
        # Two bounds per activation: the work of two forward passes per box.
        self._charge(2 * self.unit * self.batch, " (interval pass)")

    def _charge(self, elements: int, where: str = "") -> None:
        if self.meter is not None:
            self.meter.charge(elements / self.unit, f"{self.phase}{where}")

    # -- interval pass

    def ibp_nodes(self) -> List[Bounds]:
        """Interval bounds of every value (the input, each op's output)."""
        if self._ibp_nodes is None:
            nodes: List[Optional[Bounds]] = [(self.lower, self.upper)]
            for op in self.graph.ops[1:]:
                nodes.append(_ibp_op(op, nodes, self.dtype))
            self._ibp_nodes = nodes  # type: ignore[assignment]
            self.charge_interval_pass()
        return self._ibp_nodes  # type: ignore[return-value]

    @property
    def shapes(self) -> List[torch.Size]:
        return [node[0].shape[1:] for node in self.ibp_nodes()]

    def num_outputs(self) -> int:
        return int(self.shapes[-1].numel())

    def spec(self, C: Optional[Tensor]) -> Tensor:
        """The specification as coefficients (n, S, *output_shape); identity when C is None."""
        out_shape = self.shapes[-1]
        outputs = self.num_outputs()
        if C is None:
            eye = torch.eye(outputs, dtype=self.dtype, device=self.lower.device)
            return eye.reshape((1, outputs) + tuple(out_shape))
        if not isinstance(C, Tensor):
            raise TypeError("C must be a torch tensor of shape (N, S, num_outputs) or (S, num_outputs)")
        if C.dim() == 2:
            C = C.unsqueeze(0)
        if C.dim() != 3 or C.shape[-1] != outputs or C.shape[0] not in (1, self.batch):
            raise ValueError(
                f"C must have shape (N={self.batch}, S, num_outputs={outputs}) or (S, {outputs}), got {tuple(C.shape)}"
            )
        C = C.to(device=self.lower.device, dtype=self.dtype)
        if not torch.isfinite(C).all():
            raise ValueError("C must be finite")
        return C.reshape(C.shape[:2] + tuple(out_shape))

    def tail_stops(self) -> FrozenSet[int]:
        """Where the affine tail before the output starts: the input and every nonlinear op's output."""
        return frozenset([0] + [v for v, op in enumerate(self.graph.ops) if op.nonlinear])

    # -- linear bounds

    def _concretize(self, state: _State, bounds: Bounds) -> Tensor:
        """Exact minimum (n, S) of ``state . x`` over the box ``bounds``."""
        lower, upper = bounds
        if isinstance(state, _Patches):
            coef = state.coef
            if coef.shape[-2] * coef.shape[-1] >= state.height * state.width:
                state = _to_dense(state)
        if isinstance(state, _Patches):
            coef = state.coef
            box_lower, box_upper = _gather_patches(torch.cat([lower, upper], 1), state).chunk(2, dim=2)
            value = (coef.clamp(min=0) * box_lower).sum((2, 3, 4))
            return value + (coef.clamp(max=0) * box_upper).sum((2, 3, 4))
        # Each coefficient meets the end of the interval that lowers it.
        coef = state.coef.flatten(2)
        value = (coef.clamp(min=0) @ lower.flatten(1).unsqueeze(-1)).squeeze(-1)
        return value + (coef.clamp(max=0) @ upper.flatten(1).unsqueeze(-1)).squeeze(-1)

    def _back_layer(
        self, value: int, state: _State, stops: FrozenSet[int], relax: Dict[object, object]
    ) -> Tuple[int, _State, Optional[Tensor]]:
        """One layer op backward: (the value the bound now sits on, the new state, its constant term)."""
        op = self.graph.ops[value]
        layer, source = op.module, op.inputs[0]
        in_shape = self.shapes[source]
        if isinstance(state, _Patches):
            ph, pw = state.coef.shape[-2:]
            # A patch as large as the node saves nothing; go dense.
            if not _patchable(layer, in_shape) or ph * pw >= state.height * state.width:
                state = _to_dense(state)
        fused = relax.get(("fused", value))
        # A max-pool with its ReLU folded in takes both ops at once.
        skip = tunables.FUSE_RELU_POOL and fused is not None and source not in stops
        layer_relax = fused if skip else relax.get(value)
        if skip:
            source = self.graph.ops[source].inputs[0]
        if isinstance(state, _Patches):
            return (source,) + _back_patches(layer, layer_relax, state, in_shape, self.dtype)
        if isinstance(layer_relax, _ReluRelax):
            coef, term = _back_relu_dense(layer_relax, state.coef)
        elif isinstance(layer_relax, _PoolRelax):
            coef, term = _back_pool_dense(layer_relax, state.coef, in_shape)
        else:
            coef, term = _back_affine_dense(layer, state.coef, in_shape, self.dtype)
        return source, _Dense(coef), term

    def _lower(
        self, state: _State, node: int, stops: FrozenSet[int], nodes: List[Bounds], relax: Dict[object, object]
    ) -> Tuple[Tensor, int]:
        """Lower bound (N, S) of ``state . x_node``, backward until every path meets a value in ``stops``.

        Values are visited in reverse topological order, so a value read by
        several ops has collected all their shares before it is passed on.
        Each share that reaches a stop is bounded over ``nodes`` there. Also
        returns the largest number of coefficients one spec needed (summed
        over the batch), for chunking.
        """
        specs = state.coef.shape[1]
        peak = _size(state)
        total: Union[Tensor, float] = 0.0
        concrete: Union[Tensor, float] = 0.0
        pending: Dict[int, _State] = {node: state}
        while pending:
            value = max(pending)
            state = pending.pop(value)
            if value in stops or value == 0:
                concrete = concrete + self._concretize(state, nodes[value])
                continue
            op = self.graph.ops[value]
            if op.kind == "layer":
                source, state, term = self._back_layer(value, state, stops, relax)
                shares = [(source, state)]
                if term is not None:
                    total = total + term
            elif op.kind == "add":
                shares = [(source, state) for source in op.inputs]
            elif op.kind == "cat":
                sizes = tuple(int(self.shapes[source][op.dim - 1]) for source in op.inputs)
                shares = list(zip(op.inputs, _split_state(state, op.dim, sizes)))
            else:
                shares = [(op.inputs[0], _reshape_state(state, self.shapes[op.inputs[0]]))]
            for source, share in shares:
                if source in pending:
                    share = _add_states(pending[source], share)
                pending[source] = share
                peak = max(peak, _size(share))
                self._charge(share.coef.numel(), f", backward through op {value} of {len(self.graph.ops) - 1}")
        value = concrete + total
        return value.expand(self.batch, specs), peak

    def _chunked(
        self,
        make: Callable[[int, int], _State],
        units: int,
        node: int,
        stops: FrozenSet[int],
        nodes: List[Bounds],
        relax: Dict[object, object],
    ) -> List[Tensor]:
        """Run ``_lower`` on ``make(a, b)`` for consecutive unit ranges sized to the memory budget."""
        budget = max(1, tunables.CHUNK_BYTES * 8 // torch.finfo(self.dtype).bits)
        results: List[Tensor] = []
        start, step = 0, 1  # a one-unit probe measures the cost per unit
        while start < units:
            stop_unit = min(units, start + step)
            state = make(start, stop_unit)
            value, per_spec = self._lower(state, node, stops, nodes, relax)
            results.append(value)
            if start == 0:
                specs_per_unit = max(1, state.coef.shape[1] // (stop_unit - start))
                step = max(1, budget // (per_spec * specs_per_unit))
            start = stop_unit
        return results

    def spec_lower(
        self, A: Tensor, node: int, stops: FrozenSet[int], nodes: List[Bounds], relax: Dict[object, object]
    ) -> Tensor:
        if A.shape[1] == 0 or self.batch == 0:
            return A.new_zeros(self.batch, A.shape[1])
        parts = self._chunked(lambda a, b: _Dense(A[:, a:b]), A.shape[1], node, stops, nodes, relax)
        return torch.cat(parts, 1)

    def tail_lower(self, nodes: List[Bounds], A: Tensor) -> Tensor:
        """Exact lower bound of the affine tail over the interval bounds at its start."""
        return self.spec_lower(A, len(self.graph.ops) - 1, self.tail_stops(), nodes, {})

    # -- CROWN intermediate bounds

    def crown_nodes(self, intermediate: str) -> Tuple[List[Bounds], Dict[object, object]]:
        """Bounds of every value, refined by CROWN where that can help, and the relaxations (computed once)."""
        if intermediate not in self._crown:
            self._crown[intermediate] = self._crown_nodes(intermediate)
        return self._crown[intermediate]

    def _crown_nodes(self, intermediate: str) -> Tuple[List[Bounds], Dict[object, object]]:
        ops = self.graph.ops
        # Over interval intermediate bounds the forward values are exactly the interval pass's.
        ibp = self.ibp_nodes() if intermediate == "ibp" else None
        nodes: List[Optional[Bounds]] = [(self.lower, self.upper)]
        relax: Dict[object, object] = {}
        # Per value: mixing ops since the last nonlinear op on the longest
        # path, and whether any nonlinear op comes before it.
        mixing, seen_nonlinear = [0], [False]
        refined = set()
        for value, op in enumerate(ops[1:], 1):
            if op.nonlinear:
                layer, source = op.module, op.inputs[0]
                lower, upper = nodes[source]
                out = ibp[value] if ibp is not None else _ibp_step(layer, lower, upper, self.dtype)
                # Interval bounds are already exact after a single affine map
                # of the input box; after a nonlinear op, elementwise steps
                # cannot beat the intervals either. Only a mixing op after a
                # relaxation (or two from the input) gains.
                gains = mixing[source] >= (1 if seen_nonlinear[source] else 2)
                if intermediate == "crown" and gains and source not in refined:
                    estimate = _relaxation(layer, lower, upper, out[0].shape)
                    need = _needs_refinement(layer, estimate, lower, upper)
                    self.phase = f"CROWN bounds of the input of op {value} of {len(ops) - 1}"
                    lower, upper = self._refine(source, lower, upper, need, nodes, relax)
                    nodes[source] = (lower, upper)
                    refined.add(source)
                    out = _ibp_step(layer, lower, upper, self.dtype)
                relax[value] = _relaxation(layer, lower, upper, out[0].shape)
                below = relax.get(source)
                if (
                    isinstance(layer, nn.MaxPool2d)
                    and isinstance(below, _ReluRelax)
                    and _disjoint_windows(layer)
                    and len(self.graph.consumers[source]) == 1
                ):
                    relax[("fused", value)] = _fuse_relu(relax[value], below)
                mixing.append(0)
                seen_nonlinear.append(True)
            else:
                out = ibp[value] if ibp is not None else _ibp_op(op, nodes, self.dtype)
                mixing.append(max(mixing[i] for i in op.inputs) + _mixes(op))
                seen_nonlinear.append(any(seen_nonlinear[i] for i in op.inputs))
            nodes.append(out)
        if ibp is None:
            self._charge(2 * self.unit * self.batch, " (interval pass)")
        return nodes, relax  # type: ignore[return-value]

    def _patchable_value(self, value: int) -> bool:
        """Whether a bound on ``value`` can start as patches (it is (C, H, W) and its op passes patches on)."""
        shape = self.shapes[value]
        if not tunables.USE_PATCHES or len(shape) != 3:
            return False
        op = self.graph.ops[value]
        if op.kind == "layer":
            return _patchable(op.module, self.shapes[op.inputs[0]])
        return op.kind == "add" or (op.kind == "cat" and op.dim == 1)

    def _refine(
        self, node: int, lower: Tensor, upper: Tensor, need: Tensor, nodes: List[Bounds], relax: Dict[object, object]
    ) -> Bounds:
        """CROWN bounds of the needed elements of value ``node``, intersected with the intervals.

        Each sample gets its own list of elements (padded to the longest
        with elements it does not need, whose bounds are just as sound), so
        one image with many unstable neurons does not make the others pay.
        """
        flat_need = need.flatten(1)
        counts = flat_need.sum(1)
        widest = int(counts.max()) if counts.numel() else 0
        if widest == 0:
            return lower, upper
        # Needed elements first, each sample in ascending element order.
        order = torch.argsort((~flat_need).to(torch.int8), dim=1, stable=True)[:, :widest]
        shape = self.shapes[node]
        patches = self._patchable_value(node)
        device = self.lower.device

        def make(a: int, b: int) -> _State:
            chunk = order[:, a:b]
            count = chunk.shape[1]
            # Each element twice: +e (its lower bound) and -e (minus its upper).
            both = torch.cat([chunk, chunk], 1)
            sign = torch.ones(1, 2 * count, dtype=self.dtype, device=device)
            sign[:, count:] = -1
            if patches:
                channels, height, width = (int(size) for size in shape)
                coef = torch.zeros(self.batch, 2 * count, channels, dtype=self.dtype, device=device)
                channel = (both // (height * width)).unsqueeze(2)
                coef = coef.scatter(2, channel, sign.expand(self.batch, -1).unsqueeze(2))
                return _Patches(coef[..., None, None], (both // width) % height, both % width, height, width)
            coef = torch.zeros(self.batch, 2 * count, shape.numel(), dtype=self.dtype, device=device)
            coef = coef.scatter(2, both.unsqueeze(2), sign.expand(self.batch, -1).unsqueeze(2))
            return _Dense(coef.reshape((self.batch, 2 * count) + tuple(shape)))

        parts = self._chunked(make, widest, node, frozenset([0]), nodes, relax)
        lows = torch.cat([part[:, : part.shape[1] // 2] for part in parts], 1)
        highs = torch.cat([-part[:, part.shape[1] // 2 :] for part in parts], 1)
        flat_lower, flat_upper = lower.flatten(1), upper.flatten(1)
        # Both bounds are sound, so their intersection is.
        flat_lower = flat_lower.scatter(1, order, torch.maximum(flat_lower.gather(1, order), lows))
        flat_upper = flat_upper.scatter(1, order, torch.minimum(flat_upper.gather(1, order), highs))
        return flat_lower.reshape(lower.shape), flat_upper.reshape(upper.shape)

    def crown_lower(self, A: Tensor, intermediate: str, intersect_ibp: bool) -> Tensor:
        if intermediate not in ("crown", "ibp"):
            raise ValueError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")
        if self.batch == 0:
            return A.new_zeros(0, A.shape[1])
        nodes, relax = self.crown_nodes(intermediate)
        self.phase = "CROWN bounds of the output" + (" over interval bounds" if intermediate == "ibp" else "")
        value = self.spec_lower(A, len(self.graph.ops) - 1, frozenset([0]), nodes, relax)
        if intersect_ibp:
            # Plain interval bounds, and interval bounds restarted from the
            # CROWN-tightened values before the affine tail: all sound, so
            # the largest lower bound is sound and never looser than IBP.
            value = torch.maximum(value, self.tail_lower(self.ibp_nodes(), A))
            value = torch.maximum(value, self.tail_lower(nodes, A))
        return value

    # -- alpha-CROWN

    def alpha_lower(self, A: Tensor, start: Tensor, proven: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
        """alpha-CROWN (Xu et al. 2021): CROWN of the output with the lower ReLU slopes optimised by gradient.

        Every slope in [0, 1] gives a sound lower line, so every step's bound
        is sound and the best per spec is kept, starting from ``start`` (the
        bound of the tier before, (N, S)). Slopes are free per box, spec and
        neuron, as in auto_LiRPA's optimised bounds of the output; the
        intermediate bounds are the CROWN tier's. ``proven(best)`` (N,) stops
        the boxes it marks. The output pass runs densely with every ReLU
        unfused, since each spec carries its own slopes.
        """
        best = start.clone()
        if self.batch == 0 or A.shape[1] == 0:
            return best
        nodes, relax = self.crown_nodes("crown")
        slopes: Dict[object, Tensor] = {}
        plain: Dict[object, object] = {}
        for key, r in relax.items():
            if not isinstance(key, int):
                continue  # fused ReLU + max-pool: the ReLU goes back on its own below
            plain[key] = r
            if isinstance(r, _ReluRelax):
                lower, upper = nodes[self.graph.ops[key].inputs[0]]
                unstable = (lower < 0) & (upper > 0)
                if bool(unstable.any()):
                    slopes[key] = r.lower_slope.unsqueeze(1).expand((-1, A.shape[1]) + tuple(r.lower_slope.shape[1:]))
        if not slopes:
            return best
        masks = {key: ((nodes[self.graph.ops[key].inputs[0]][0] < 0) & (nodes[self.graph.ops[key].inputs[0]][1] > 0))
                 for key in slopes}
        params = {key: value.clone().requires_grad_(True) for key, value in slopes.items()}
        optimizer = torch.optim.Adam(list(params.values()), lr=tunables.ALPHA_LR)
        out, stops = len(self.graph.ops) - 1, frozenset([0])
        self.phase = "alpha-CROWN bounds of the output"
        for _ in range(tunables.ALPHA_STEPS):
            if proven is not None and bool(proven(best).all()):
                break
            with torch.enable_grad():
                current = dict(plain)
                for key, alpha in params.items():
                    r = plain[key]
                    assert isinstance(r, _ReluRelax)
                    lower_slope = torch.where(masks[key].unsqueeze(1), alpha.clamp(0, 1), r.lower_slope.unsqueeze(1))
                    current[key] = _ReluRelax(lower_slope, r.upper_slope, r.upper_icpt)
                value, _ = self._lower(_Dense(A), out, stops, nodes, current)
                best = torch.maximum(best, value.detach())
                optimizer.zero_grad(set_to_none=True)
                (-value.sum()).backward(inputs=list(params.values()))
            # The gradient pass costs about as much as the bound pass.
            self._charge(sum(int(p.numel()) for p in params.values()), " (slope gradients)")
            optimizer.step()
            with torch.no_grad():
                for alpha in params.values():
                    alpha.clamp_(0, 1)
        return best


def _select_relax(relax: object, rows: Tensor) -> object:
    """A relaxation restricted to the boxes ``rows``; every field is per box."""
    if isinstance(relax, _ReluRelax):
        return _ReluRelax(relax.lower_slope[rows], relax.upper_slope[rows], relax.upper_icpt[rows])
    assert isinstance(relax, _PoolRelax)
    pos = None if relax.pos_slope is None else relax.pos_slope[rows]
    return _PoolRelax(relax.index[rows], relax.local[rows], pos, relax.neg_slope[rows], relax.neg_icpt[rows],
                      relax.loose[rows])
