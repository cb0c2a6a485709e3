"""A float model as a graph of the operations quantrtl can build, traced with ``torch.fx``.

:func:`trace` turns a user ``nn.Module`` (``nn.Sequential`` or any module whose
``forward`` ``torch.fx`` can trace: residual ``x + f(x)``, ``torch.cat``, …) into a
:class:`FloatGraph`: nodes in topological order, each with named inputs, of the kinds in
:data:`KINDS`.  Everything else is rejected before any work, naming the node, its op and
what is supported.  Batch norms are folded into the conv/linear they follow; Flatten,
``view(n, -1)``, Identity and Dropout (the model is in eval mode) become aliases of their
input: a linear layer reads its input flattened in C, H, W order.

The :class:`FloatGraph` is itself an ``nn.Module`` that computes what the user's model
computes (checked on probe inputs by :func:`trace`); quantization
(:mod:`quantrtl.model.training.quantize`) mirrors it node by node.
"""
from __future__ import annotations

import copy
import operator
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from quantrtl.model.numbers import lut
from quantrtl.model.numbers.ops import op_names

__all__ = ["KINDS", "GraphNode", "FloatGraph", "trace", "apply", "fold_batch_norm", "pool_geometry", "SUPPORTED_TEXT",
           "UnsupportedLayerError", "INPUT", "LutActivation", "TORCH_FUNCTIONS"]

#: The node kinds of a graph: the artifact's ops (the op registry) and ``relu6``, which is
#: fused into its producer.
KINDS = tuple(op_names()) + ("relu6",)
#: The name every graph gives its input.
INPUT = "input"

SUPPORTED_TEXT = ("Conv2d (any stride, padding, groups; dilation 1, zero padding), Linear, ReLU, ReLU6 "
                  "(module, F.relu, torch.relu, clamp(0, 6)), MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1) "
                  "(or mean over H, W), BatchNorm after a conv/linear (folded), Flatten / torch.flatten / "
                  "view(n, -1), Identity, Dropout, residual add (+, torch.add), torch.cat(dim=1), "
                  "the product of two maps or of a map and its (C, 1, 1) gate (*, torch.mul; squeeze-and-excitation), "
                  "table activations (module, torch.* and F.* forms): " + ", ".join(lut.function_names()))


class UnsupportedLayerError(ValueError):
    """A module or operation that the quantizer, the artifact and the hardware cannot express."""


@dataclass
class GraphNode:
    """One operation: ``inputs`` are node names (or :data:`INPUT`); conv2d, linear,
    maxpool and avgpool nodes own their ``module``."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    module: nn.Module | None = None


class FloatGraph(nn.Module):
    """The float model as a graph; its modules are registered under their node names."""

    def __init__(self, nodes: list[GraphNode]):
        super().__init__()
        self.nodes = list(nodes)
        for n in self.nodes:
            if n.module is not None:
                self.add_module(n.name, n.module)

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    def consumers(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {INPUT: []}
        for n in self.nodes:
            users.setdefault(n.name, [])
            for i in n.inputs:
                users[i].append(n.name)
        return users

    def forward(self, x):
        vals = {INPUT: x}
        for n in self.nodes:
            vals[n.name] = apply(n, [vals[i] for i in n.inputs])
        return vals[self.output]


def apply(node: GraphNode, xs: list):
    """The float operation of ``node`` on its input tensors."""
    k = node.kind
    if k == "conv2d" or k in ("maxpool", "avgpool"):
        return node.module(xs[0])
    if k == "linear":
        return node.module(xs[0].flatten(1))
    if k == "relu":
        return torch.relu(xs[0])
    if k == "relu6":
        return torch.clamp(xs[0], 0.0, 6.0)
    if k == "gap":
        return xs[0].mean((2, 3), keepdim=True)
    if k == "add":
        return xs[0] + xs[1]
    if k == "mul":
        return xs[0] * xs[1]
    if k == "concat":
        return torch.cat(xs, 1)
    if k == "lut":
        return node.module(xs[0])
    raise AssertionError(k)


# ---- table activations ------------------------------------------------------------

#: The torch definition of every table function of :data:`quantrtl.model.numbers.lut.FUNCTIONS`
#: (the same function as its NumPy definition, on tensors).
TORCH_FUNCTIONS = {
    "sigmoid": lambda x: torch.sigmoid(x),
    "tanh": lambda x: torch.tanh(x),
    "hardswish": lambda x: F.hardswish(x),
    "hardsigmoid": lambda x, alpha, beta: torch.clamp(alpha * x + beta, 0.0, 1.0),
    "silu": lambda x: F.silu(x),
    "gelu": lambda x, approximate: F.gelu(x, approximate=approximate),
    "leakyrelu": lambda x, alpha: F.leaky_relu(x, alpha),
    "elu": lambda x, alpha: F.elu(x, alpha),
    "clamp": lambda x, lo, hi: torch.clamp(x, lo, hi),
}


class LutActivation(nn.Module):
    """A table activation's float function (``spec``: ``{"name": ..., params}``, as the
    artifact stores it), the graph node's module."""

    def __init__(self, spec: dict):
        super().__init__()
        why = lut.check_function(spec)
        if why:
            raise UnsupportedLayerError(why)
        self.spec = dict(spec)

    def forward(self, x):
        f = lut.function(self.spec["name"])
        params = {**f.params, **{k: v for k, v in self.spec.items() if k != "name"}}
        return TORCH_FUNCTIONS[f.name](x, **params)

    def extra_repr(self) -> str:
        return repr(self.spec)


def _lut(name: str, **params):
    return "lut", LutActivation({"name": name, **params})


#: Parameter-free table functions by module class and by function.
_LUT_MODULES = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardswish: "hardswish", nn.SiLU: "silu"}
_LUT_FUNCS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
              F.hardswish: "hardswish", F.silu: "silu", F.hardsigmoid: "hardsigmoid"}
_LUT_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh"}


# ---- tracing ----------------------------------------------------------------------

_RELU_FUNCS = {torch.relu, F.relu, torch.relu_}
_ADD_FUNCS = {operator.add, torch.add}
_MUL_FUNCS = {operator.mul, torch.mul}
_FLATTEN_FUNCS = {torch.flatten}
_CAT_FUNCS = {torch.cat, torch.concat} if hasattr(torch, "concat") else {torch.cat}


def _node_name(node) -> str:
    """A module call is named by the module's path (``layer1.0.conv1`` → ``layer1_0_conv1``),
    anything else by torch.fx's name for it (``add``, ``add_1``, ``cat``)."""
    return re.sub(r"\W", "_", node.target if node.op == "call_module" else node.name)


def _reject(node, what: str, why: str = "") -> UnsupportedLayerError:
    return UnsupportedLayerError(f"node {_node_name(node)!r} ({what}) is not supported{': ' + why if why else ''}; "
                                 f"supported: {SUPPORTED_TEXT}")


def _pair(v) -> tuple[int, int]:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def pool_geometry(m: nn.Module) -> dict:
    """A MaxPool2d/AvgPool2d's ``kernel``, ``stride`` (the kernel when None) and ``padding``
    as pairs, the artifact's geometry fields."""
    return {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride if m.stride is not None else m.kernel_size),
            "padding": _pair(m.padding)}


def _arg(node, i: int, key: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _check_conv(node, m: nn.Conv2d) -> None:
    if tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise _reject(node, "Conv2d", f"needs dilation 1 and numeric zero padding (got dilation={tuple(m.dilation)}, "
                                      f"padding={m.padding!r}, padding_mode={m.padding_mode!r})")


def _module_kind(node, m: nn.Module):
    """(kind, module) for a call of module ``m``; kind ``alias`` passes its input on,
    ``bn`` is folded."""
    if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.numel() == 0:
        shape = "x".join(map(str, m.weight.shape))
        raise _reject(node, f"{type(m).__name__} with weights of shape {shape}", "a layer needs 1 or more inputs "
                                                                                 "and outputs")
    if isinstance(m, nn.Conv2d):
        _check_conv(node, m)
        return "conv2d", m
    if isinstance(m, nn.Linear):
        return "linear", m
    if isinstance(m, nn.ReLU6):
        return "relu6", None
    if isinstance(m, nn.ReLU):
        return "relu", None
    if type(m) in _LUT_MODULES:
        return _lut(_LUT_MODULES[type(m)])
    if isinstance(m, nn.Hardsigmoid):
        return _lut("hardsigmoid")
    if isinstance(m, nn.GELU):
        return _lut("gelu", approximate=m.approximate)
    if isinstance(m, nn.LeakyReLU):
        return _lut("leakyrelu", alpha=float(m.negative_slope))
    if isinstance(m, nn.ELU):
        return _lut("elu", alpha=float(m.alpha))
    if isinstance(m, nn.Hardtanh):
        return _lut("clamp", lo=float(m.min_val), hi=float(m.max_val))
    if isinstance(m, nn.MaxPool2d):
        if _pair(m.dilation) != (1, 1) or m.ceil_mode or m.return_indices:
            raise _reject(node, "MaxPool2d", "needs dilation 1, ceil_mode False, no indices")
        return "maxpool", m
    if isinstance(m, nn.AvgPool2d):
        if m.ceil_mode or m.divisor_override is not None or (not m.count_include_pad and any(_pair(m.padding))):
            raise _reject(node, "AvgPool2d", "needs ceil_mode False, no divisor_override, and padded zeros counted")
        return "avgpool", m
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if _pair(m.output_size) != (1, 1):
            raise _reject(node, f"AdaptiveAvgPool2d({m.output_size})", "only output size 1 (global average)")
        return "gap", None
    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return "bn", m
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise _reject(node, "Flatten", "only start_dim=1, end_dim=-1")
        return "alias", None
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return "alias", None
    raise _reject(node, type(m).__name__)


def _clamp_kind(node, what: str, lo_key: str = "min", hi_key: str = "max", defaults=(None, None)):
    """``clamp(0)`` is a ReLU, ``clamp(0, 6)`` a ReLU6 (fused into its producer where it
    can be); other bounds are a table activation and need both bounds."""
    lo, hi = _arg(node, 1, lo_key, defaults[0]), _arg(node, 2, hi_key, defaults[1])
    if lo == 0 and hi is None:
        return "relu"
    if lo == 0 and hi == 6:
        return "relu6"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or not lo < hi:
        raise _reject(node, f"{what}({lo}, {hi})", "a clamp needs constant bounds, lower below upper "
                                                   "(or clamp(0), a ReLU)")
    return _lut("clamp", lo=float(lo), hi=float(hi))


def _function_kind(node):
    t = node.target
    if t in _RELU_FUNCS:
        return "relu"
    if t is F.relu6:
        return "relu6"
    if t is torch.clamp:
        return _clamp_kind(node, "clamp")
    if t is F.hardtanh:
        return _clamp_kind(node, "hardtanh", "min_val", "max_val", (-1.0, 1.0))
    if t in _LUT_FUNCS:
        return _lut(_LUT_FUNCS[t])
    if t is F.gelu:
        return _lut("gelu", approximate=node.kwargs.get("approximate", "none"))
    if t is F.leaky_relu:
        return _lut("leakyrelu", alpha=float(_arg(node, 1, "negative_slope", 0.01)))
    if t is F.elu:
        return _lut("elu", alpha=float(_arg(node, 1, "alpha", 1.0)))
    if t in _ADD_FUNCS:
        if _arg(node, 2, "alpha", 1) != 1:
            raise _reject(node, "torch.add", "alpha must be 1")
        return "add"
    if t in _MUL_FUNCS:
        return "mul"
    if t in _FLATTEN_FUNCS:
        if _arg(node, 1, "start_dim", 0) != 1 or _arg(node, 2, "end_dim", -1) != -1:
            raise _reject(node, "torch.flatten", "only flatten(x, 1)")
        return "alias"
    if t in _CAT_FUNCS:
        if _arg(node, 1, "dim", 0) != 1:
            raise _reject(node, "torch.cat", "only dim=1 (channels)")
        return "concat"
    if t is F.adaptive_avg_pool2d:
        if _pair(_arg(node, 1, "output_size")) != (1, 1):
            raise _reject(node, "adaptive_avg_pool2d", "only output size 1 (global average)")
        return "gap"
    if t is torch.mean:
        return _mean_kind(node)
    raise _reject(node, f"function {getattr(t, '__name__', t)}")


def _mean_kind(node):
    dims = _arg(node, 1, "dim")
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    if sorted(d % 4 if isinstance(d, int) else d for d in dims) != [2, 3]:
        raise _reject(node, "mean", "only the mean over H and W (global average)")
    return "gap"


def _method_kind(node):
    t = node.target
    if t in ("relu", "relu_"):
        return "relu"
    if t == "clamp":
        return _clamp_kind(node, ".clamp")
    if t in _LUT_METHODS:
        return _lut(_LUT_METHODS[t])
    if t == "add":
        return "add"
    if t == "mul":
        return "mul"
    if t == "flatten":
        if _arg(node, 1, "start_dim", 0) != 1 or _arg(node, 2, "end_dim", -1) != -1:
            raise _reject(node, "flatten", "only flatten(1)")
        return "alias"
    if t in ("view", "reshape"):
        rest = node.args[1:]
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
            rest = tuple(rest[0])
        ok = len(rest) == 2 and rest[1] == -1 and (isinstance(rest[0], int) or (
            isinstance(rest[0], torch.fx.Node) and rest[0].op == "call_method" and rest[0].target == "size"
            and _arg(rest[0], 1, "dim") == 0))
        if not ok:
            raise _reject(node, f"{t}", "only view(n, -1) / reshape(n, -1) (a flatten)")
        return "alias"
    if t == "size":
        return "size"
    if t == "mean":
        return _mean_kind(node)
    raise _reject(node, f"method .{t}()")


def fold_batch_norm(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """``w' = w·γ/σ``, ``b' = (b − μ)·γ/σ + β`` (eval-mode statistics)."""
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        k = gamma / std
        folded = copy.deepcopy(conv)
        folded.weight = nn.Parameter(conv.weight * k.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded.bias = nn.Parameter((b - bn.running_mean) * k + beta)
    return folded


def trace(model: nn.Module, what: str = "the model") -> FloatGraph:
    """``model`` (in eval mode) as a :class:`FloatGraph`; raises
    :class:`UnsupportedLayerError` naming the first node it cannot express."""
    model.eval()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types (TraceError, TypeError, NotImplementedError, ...)
        msg = str(e).strip().splitlines()
        raise UnsupportedLayerError(f"{what}: torch.fx cannot trace its forward ({type(e).__name__}: "
                                    f"{(msg[0] if msg else '')[:200]}); quantrtl needs a forward without "
                                    "data-dependent control flow") from None
    gm.graph.eliminate_dead_code()
    nodes: list[GraphNode] = []
    by_name: dict[str, GraphNode] = {}
    alias: dict[str, str] = {}  # fx node name → the node (or INPUT) it stands for
    called: dict[str, str] = {}  # module target → the node that calls it (weights are not shared)
    output = None
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(f"{what}: forward must take exactly one input tensor, "
                                    f"takes {[p.name for p in placeholders]}")

    def src(a) -> str:
        if not isinstance(a, torch.fx.Node):
            raise UnsupportedLayerError(f"{what}: operand {a!r} is a constant; quantrtl's operations take tensors")
        return alias[a.name]

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            alias[node.name] = INPUT
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, torch.fx.Node):
                raise UnsupportedLayerError(f"{what}: forward must return one tensor")
            output = src(out)
            continue
        if node.op == "get_attr":
            raise _reject(node, f"parameter access {node.target}", "a forward may use tensors only through modules")
        module = None
        if node.op == "call_module":
            kind, module = _module_kind(node, gm.get_submodule(node.target))
            if module is not None and kind not in ("bn", "lut") and any(True for _ in module.parameters()):
                if node.target in called:  # (a module without parameters, a pooling, may be called again)
                    raise _reject(node, f"second call of module {node.target}",
                                  f"{called[node.target]!r} calls it already; shared weights are not supported")
                called[node.target] = node.name
        elif node.op == "call_function":
            kind = _function_kind(node)
        elif node.op == "call_method":
            kind = _method_kind(node)
        else:
            raise _reject(node, node.op)
        if isinstance(kind, tuple):  # a table activation: its function as the node's module
            kind, module = kind
        if kind == "size":
            alias[node.name] = "size"  # only for view(n, -1)
            continue
        if kind == "concat":
            parts = node.args[0] if node.args else node.kwargs.get("tensors")
            inputs = tuple(src(a) for a in parts)
        elif kind in ("add", "mul"):
            inputs = (src(node.args[0]), src(_arg(node, 1, "other")))
        else:
            inputs = (src(node.args[0]),)
        if "size" in inputs:
            raise _reject(node, "x.size()", "sizes are only for view(n, -1)")
        if kind == "alias":
            alias[node.name] = inputs[0]
            continue
        if kind == "bn":
            if module.running_var is None:
                raise _reject(node, f"{type(module).__name__}(track_running_stats=False)",
                              "a batch norm is folded with its running statistics; it needs track_running_stats=True")
            prev = by_name.get(inputs[0])
            if prev is None or prev.kind not in ("conv2d", "linear") or len(node.args[0].users) != 1:
                raise _reject(node, type(module).__name__, "a batch norm must directly follow a Conv2d or Linear "
                                                           "whose output nothing else reads (it is folded into it)")
            if prev.module.weight.shape[0] != module.num_features:
                raise UnsupportedLayerError(f"node {node.name!r}: {module.num_features} features after "
                                            f"{prev.name!r} with {prev.module.weight.shape[0]} outputs")
            prev.module = fold_batch_norm(prev.module, module)
            alias[node.name] = prev.name
            continue
        name = _node_name(node)
        if name == INPUT or name in by_name:
            name = f"{name}_{len(nodes)}"
        alias[node.name] = name
        g = GraphNode(name, kind, inputs, module)
        nodes.append(g)
        by_name[name] = g
    if not nodes:
        raise UnsupportedLayerError(f"{what}: no operation to quantize")
    if not any(n.kind in ("conv2d", "linear") for n in nodes):
        raise UnsupportedLayerError(f"{what}: has no Conv2d or Linear layer (nothing with weights to quantize)")
    if output != nodes[-1].name:
        raise UnsupportedLayerError(f"{what}: its output must be the last operation it computes "
                                    f"(returns {output!r}, last is {nodes[-1].name!r})")
    return FloatGraph(nodes).eval()
