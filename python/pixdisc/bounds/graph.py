"""The network as a topologically ordered list of operations: nested Sequentials directly, anything else by torch.fx."""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

# Exact types only: a subclass may override forward() and then the bounds
# would describe a different function than the one that runs.
SUPPORTED_LAYERS: Tuple[type, ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.Flatten,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Identity,
)
# What a traced forward() may do besides calling those layers.
SUPPORTED_OPERATIONS = (
    "x + y of two tensors (residual add), torch.cat along a non-batch dim, flatten/view/reshape keeping the "
    "batch dim, F.relu/torch.relu/.relu(), F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d and "
    "nn.AdaptiveAvgPool2d with output sizes dividing the input, .contiguous()"
)
_NONLINEAR: Tuple[type, ...] = (nn.ReLU, nn.MaxPool2d)


@dataclass(frozen=True)
class Op:
    """One operation; value ``v`` of the graph is the output of ``ops[v]`` (value 0 is the input)."""

    kind: str  # "input", "layer" (a module of SUPPORTED_LAYERS), "add", "cat", "reshape"
    inputs: Tuple[int, ...] = ()
    module: Optional[nn.Module] = None
    dim: int = 1  # cat: dimension, counting the batch axis
    shape: Tuple[int, ...] = ()  # reshape: the per-sample shape

    @property
    def nonlinear(self) -> bool:
        return self.kind == "layer" and isinstance(self.module, _NONLINEAR)


class Graph:
    """Ops in topological order, the last one the output; every op feeds the output."""

    def __init__(self, ops: List[Op]) -> None:
        self.ops = ops
        self.consumers: List[List[int]] = [[] for _ in ops]
        for value, op in enumerate(ops):
            for source in op.inputs:
                self.consumers[source].append(value)

    def modules(self) -> List[nn.Module]:
        return [op.module for op in self.ops if op.module is not None]


def _supported_names() -> str:
    return ", ".join(t.__name__ for t in SUPPORTED_LAYERS)


def _unsupported(net: nn.Module, what: str, where: str) -> TypeError:
    return TypeError(
        f"bound propagation of {type(net).__name__} does not support {what}{where}; it supports nn.Sequential "
        f"(nested) of exactly these layer types: {_supported_names()}, and models traced by torch.fx "
        f"that call those layers and do only these: {SUPPORTED_OPERATIONS}"
    )


def _check_layer(layer: nn.Module) -> None:
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        raise ValueError(f"Conv2d with padding_mode={layer.padding_mode!r} is not supported (only 'zeros')")
    if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
        raise ValueError("MaxPool2d with return_indices=True is not supported")
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        # Training-mode batch norm normalises by statistics of the batch
        # itself, which is not a fixed function of one input.
        if layer.training:
            raise ValueError(f"{type(layer).__name__} must be in eval mode for bound propagation (call net.eval())")
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(f"{type(layer).__name__} without running statistics uses batch statistics; not supported")


def _check_hooks(net: nn.Module) -> None:
    for module in net.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            # A hook may rewrite inputs or outputs; the bounds would then
            # describe a different function than the one that runs.
            raise ValueError(f"{type(module).__name__} has forward hooks; remove them before bound propagation")


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _chain(net: nn.Module) -> Optional[List[nn.Module]]:
    """The layers of a nested plain Sequential of supported layers, or None when it needs tracing."""
    if _plain_sequential(net):
        layers: List[nn.Module] = []
        for child in net:
            inner = _chain(child)
            if inner is None:
                return None
            layers.extend(inner)
        return layers
    return [net] if type(net) in SUPPORTED_LAYERS else None


def _flatten_net(net: nn.Module) -> List[nn.Module]:
    """The layers of a (nested) Sequential network in order; refuses anything else."""
    _check_hooks(net)
    layers = _chain(net)
    if layers is None:
        raise _unsupported(net, " as a layer list (it is not a nested nn.Sequential of supported layers)", "")
    for layer in layers:
        _check_layer(layer)
    return layers


def build_graph(net: nn.Module, sample_shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Graph:
    """The graph of ``net`` for inputs of per-sample shape ``sample_shape``; refuses, by name, what it cannot bound.

    Traced once per model, input shape, dtype and device, then reused (a
    trace of a ResNet-18 costs more than its interval bounds): the graph
    holds the model's own modules, so new parameter values are seen; a model
    whose modules, train/eval modes or hooks changed is traced again.
    """
    key = (tuple(sample_shape), dtype, str(device), _structure(net))
    graphs = _TRACED.setdefault(net, {})
    graph = graphs.get(key)
    if graph is None:
        graph = _build(net, sample_shape, dtype, device)
        graphs.clear()  # one entry per model: an old structure is never asked for again
        graphs[key] = graph
    return graph


# Traced graphs per model; weak, so a model that goes away takes its graph with it.
_TRACED: "weakref.WeakKeyDictionary[nn.Module, Dict[Any, Graph]]" = weakref.WeakKeyDictionary()


def _structure(net: nn.Module) -> Tuple[Any, ...]:
    """What a trace depends on besides the input shape: which modules sit where, their modes and hooks."""
    return tuple(
        (name, id(m), m.training, len(m._forward_hooks) + len(m._forward_pre_hooks)) for name, m in net.named_modules()
    )


def _build(net: nn.Module, sample_shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Graph:
    _check_hooks(net)
    if _chain(net) is not None:
        layers = _flatten_net(net)
        return Graph([Op("input")] + [Op("layer", (v,), layer) for v, layer in enumerate(layers)])
    return _Converter(net, sample_shape, dtype, device).run()


# --------------------------------------------------------------------------- torch.fx


class _Tracer(fx.Tracer):
    """Stops at torch.nn's own layers (and subclasses of supported ones, refused by name); traces the rest."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return isinstance(m, SUPPORTED_LAYERS) or type(m).__module__.startswith("torch.nn")


def _user_frame(node: fx.Node) -> str:
    """' at file:line' of the model code that made the node, when the trace recorded it."""
    frames = [line.strip() for line in (node.stack_trace or "").splitlines() if line.strip().startswith("File ")]
    frames = [f for f in frames if "/torch/" not in f]
    return f" ({frames[-1]})" if frames else ""


_RELU = {F.relu, torch.relu}
_ADD = {operator.add, operator.iadd, torch.add}
_CAT = {torch.cat, torch.concat}
_FLATTEN = {torch.flatten}
_MAX_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _adaptive_as_avgpool(output_size: Any, in_hw: Tuple[int, int]) -> Optional[nn.AvgPool2d]:
    """Adaptive average pooling as the plain AvgPool2d it equals when the output divides the input."""
    sizes = _pair(output_size)
    out = tuple(in_hw[i] if sizes[i] is None else int(sizes[i]) for i in range(2))
    if any(o <= 0 or h % o for h, o in zip(in_hw, out)):
        return None
    kernel = (in_hw[0] // out[0], in_hw[1] // out[1])
    return nn.AvgPool2d(kernel, kernel)


class _Converter:
    """Runs the fx graph once on an example input: tensors become graph values, shapes become constants."""

    def __init__(self, net: nn.Module, sample_shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device):
        self.net = net
        # Two samples, so that an op mixing the batch (view(-1, ...)) shows.
        self.example = torch.zeros((2,) + tuple(sample_shape), dtype=dtype, device=device)
        self.ops: List[Op] = [Op("input")]
        self.value: Dict[fx.Node, int] = {}  # tensor nodes -> graph values
        self.concrete: Dict[fx.Node, Any] = {}  # every node -> its value on the example

    def fail(self, what: str, node: fx.Node) -> TypeError:
        return _unsupported(self.net, what, f" (fx node {node.name}){_user_frame(node)}")

    def run(self) -> Graph:
        tracer = _Tracer()
        tracer.record_stack_traces = True
        try:
            traced = tracer.trace(self.net)
        except Exception as error:  # noqa: BLE001 - any tracing failure means the model cannot be bounded
            raise TypeError(
                f"bound propagation of {type(self.net).__name__} needs a torch.fx trace of its forward(), "
                f"which failed ({type(error).__name__}: {error}); use an nn.Sequential or trace-friendly forward()"
            ) from error
        output: Optional[int] = None
        with torch.no_grad():
            for node in traced.nodes:
                if node.op == "output":
                    result = node.args[0]
                    if not isinstance(result, fx.Node) or result not in self.value:
                        raise self.fail("an output that is not a single tensor", node)
                    output = self.value[result]
                else:
                    self.visit(node)
        assert output is not None
        return self.prune(output)

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if self.value:
                raise self.fail(f"a second input argument {node.target!r}", node)
            self.value[node], self.concrete[node] = 0, self.example
            return
        if node.op == "get_attr":
            raise self.fail(f"using the parameter or buffer {node.target!r} directly", node)
        args = fx.node.map_arg(node.args, lambda n: self.concrete[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.concrete[n])
        tensor_inputs = [n for n in node.all_input_nodes if n in self.value]
        if not tensor_inputs or _shape_query(node):
            # Shapes and sizes: constants for this input shape, computed here.
            self.concrete[node] = self.execute(node, args, kwargs)
            return
        op = self.convert(node, args, kwargs)
        self.concrete[node] = out = self.execute(node, args, kwargs)
        if not isinstance(out, Tensor) or out.shape[0] != self.example.shape[0]:
            raise self.fail("an operation that does not keep the batch dimension", node)
        if op is None:  # no-op (contiguous)
            self.value[node] = self.value[tensor_inputs[0]]
            return
        self.ops.append(op)
        self.value[node] = len(self.ops) - 1

    def execute(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        if node.op == "call_module":
            return self.net.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def tensor(self, node: fx.Node, arg: Any) -> int:
        """The graph value of a node argument; anything else (a constant tensor, a number) is refused."""
        if isinstance(arg, fx.Node) and arg in self.value:
            return self.value[arg]
        raise self.fail(f"{_describe(node)} with a constant operand {type(arg).__name__}", node)

    def only_user(self, node: fx.Node, source: fx.Node) -> None:
        if len(source.users) > 1:
            raise self.fail(f"in-place {_describe(node)} on a tensor that is also used elsewhere", node)

    def convert(self, node: fx.Node, args: Any, kwargs: Any) -> Optional[Op]:
        target, raw = node.target, node.args
        source = raw[0] if raw else None
        if node.op == "call_module":
            module = self.net.get_submodule(str(target))
            where = f"layer {type(module).__name__} at {target!r}"
            if isinstance(module, nn.AdaptiveAvgPool2d):
                module = _adaptive_as_avgpool(module.output_size, tuple(args[0].shape[-2:]))
                if module is None:
                    raise self.fail(f"{where} with an output size that does not divide the input", node)
            elif type(module) not in SUPPORTED_LAYERS:
                raise self.fail(where, node)
            elif isinstance(module, nn.ReLU) and module.inplace:
                self.only_user(node, source)
            _check_layer(module)
            return Op("layer", (self.tensor(node, source),), module)
        name = target if node.op == "call_method" else getattr(target, "__name__", str(target))
        if node.op == "call_method" and name == "contiguous":
            return None
        if target in _RELU or (node.op == "call_method" and name in ("relu", "relu_")):
            if kwargs.get("inplace") or name == "relu_":
                self.only_user(node, source)
            return Op("layer", (self.tensor(node, source),), nn.ReLU())
        if target in _ADD or (node.op == "call_method" and name in ("add", "add_", "__add__")):
            if len(raw) != 2 or kwargs.get("alpha", 1) != 1:
                raise self.fail("an add with other than two tensors and alpha=1", node)
            if target is operator.iadd or name == "add_":
                self.only_user(node, source)
            first, second = self.tensor(node, raw[0]), self.tensor(node, raw[1])
            if args[0].shape != args[1].shape:
                raise self.fail("an add that broadcasts (shapes differ)", node)
            return Op("add", (first, second))
        if target in _CAT:
            tensors = raw[0] if raw else kwargs.get("tensors")
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            ndim = args[0][0].dim()
            dim = dim + ndim if dim < 0 else dim
            if dim == 0:
                raise self.fail("torch.cat along the batch dimension", node)
            return Op("cat", tuple(self.tensor(node, t) for t in tensors), dim=dim)
        reshape = target in _FLATTEN or (node.op == "call_method" and name in ("flatten", "view", "reshape"))
        if reshape:
            out = self.execute(node, args, kwargs)
            return Op("reshape", (self.tensor(node, source),), shape=tuple(out.shape[1:]))
        if target is F.max_pool2d or target is F.avg_pool2d:
            names = _MAX_POOL_ARGS if target is F.max_pool2d else _AVG_POOL_ARGS
            options = dict(zip(names, args[1:]), **kwargs)
            module = nn.MaxPool2d(**options) if target is F.max_pool2d else nn.AvgPool2d(**options)
            _check_layer(module)
            return Op("layer", (self.tensor(node, source),), module)
        if target is F.adaptive_avg_pool2d:
            size = args[1] if len(args) > 1 else kwargs.get("output_size")
            module = _adaptive_as_avgpool(size, tuple(args[0].shape[-2:]))
            if module is None:
                raise self.fail("adaptive_avg_pool2d with an output size that does not divide the input", node)
            return Op("layer", (self.tensor(node, source),), module)
        raise self.fail(_describe(node), node)

    def prune(self, output: int) -> Graph:
        """Only the ops the output depends on, renumbered in order (so the output is the last value)."""
        live = {output}
        for value in range(output, 0, -1):
            if value in live:
                live.update(self.ops[value].inputs)
        live.add(0)
        keep = sorted(live)
        number = {old: new for new, old in enumerate(keep)}
        ops = []
        for old in keep:
            op = self.ops[old]
            ops.append(Op(op.kind, tuple(number[i] for i in op.inputs), op.module, op.dim, op.shape))
        return Graph(ops)


def _shape_query(node: fx.Node) -> bool:
    """x.size(), x.dim(), x.shape, x.ndim: fixed by the input shape, not by its values."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim")


def _describe(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"the tensor method .{node.target}()"
    name = getattr(node.target, "__name__", str(node.target))
    module = getattr(node.target, "__module__", None) or ""
    return f"the function {module + '.' if module else ''}{name}"
