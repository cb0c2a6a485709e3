"""The op registry: one record per kind of artifact layer (no torch, no Amaranth).

An :class:`Op` says everything the stages need to know about one op, as
:class:`~quantrtl.model.numbers.families.Family` does for a quantizer family:

* what the artifact stores for it: how many inputs it reads, whether it has weights
  (``codes``, ``bias``, ``m0``, ``shift``, ``weight_scale`` and a weight format), which other
  integer arrays (``arrays``) and JSON attributes (``attributes``) it carries, whether it
  reads a window (``kernel``/``stride``/``padding``), which activations it may fuse;
* its rules: shape inference (``shape``) and the checks beyond the generic ones
  (``check``), used by the artifact's validator;
* its semantics and hardware, named as ``"module:attribute"`` strings resolved on first use
  (:meth:`Op.resolve`), since they live in layers above this one: ``golden`` (a function
  ``(layer, xs, acc_out) -> outputs`` of ``sim/golden.py``), ``engine`` (an Amaranth
  component class of ``hw/``, constructed as ``engine(layer, source_shapes=...)`` for ops
  without weights; weighted ops take the engine style's);
* the PyTorch and ONNX forms that import to it (``torch``, ``onnx``: documentation; the
  mapping code is the importers') and a one-line ``summary`` (the docs' op table).

The artifact reader/validator, the golden model, the engine lookup and the Verilog
description loop over :data:`BUILTIN` (and ops added with :func:`register`, such as the
toy op of ``tests/toy_op.py``).  Nothing registers itself by being imported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from quantrtl.model.numbers import lut
from quantrtl.util.registry import Registry, load_named

__all__ = ["Op", "Attribute", "BUILTIN", "register", "unregister", "ops", "op", "op_names", "op_of",
           "conv_out_size", "WEIGHT_ARRAYS", "REQUANT_ARRAYS"]

#: The arrays of a layer with weights.
WEIGHT_ARRAYS = ("codes", "bias", "m0", "shift", "weight_scale")
#: The arrays of a layer with requantization constants and no weights.
REQUANT_ARRAYS = ("m0", "shift")


def conv_out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


@dataclass(frozen=True)
class Attribute:
    """A JSON attribute of an op's layers: ``kind`` is ``int``, ``str`` or ``dict``; a layer
    read from an artifact older than ``since`` gets ``default``."""

    name: str
    kind: type
    default: Any = None
    since: int = 1


@dataclass(frozen=True)
class Op:
    """One kind of artifact layer (module docstring)."""

    name: str
    summary: str
    golden: str | Callable
    engine: str | type
    #: (fewest, most) inputs; ``None`` for no upper bound.
    inputs: tuple[int, int | None] = (1, 1)
    weights: bool = False
    #: Integer arrays besides the weights' (m0/shift of a requantizing op, a lut's table).
    arrays: tuple[str, ...] = ()
    window: bool = False
    #: Activations the layer may carry (stored in the JSON when not empty); "none" only otherwise.
    activations: tuple[str, ...] = ()
    #: The output quantization must equal the input's (the op moves codes, it does not compute).
    keeps_format: bool = False
    #: Reads its input flattened in C, H, W order (a vector op after a map).
    flattens: bool = False
    attributes: tuple[Attribute, ...] = ()
    #: (layer, in_shapes) -> out shape; None: the first input's shape.
    shape: Callable | None = None
    #: (layer, in_shapes, in_formats) -> message or None: checks beyond the generic ones.
    check: Callable | None = None
    #: (kw) -> {array: shape}: the shapes of ``arrays`` from the layer's JSON fields.
    array_shapes: Callable | None = None
    torch: tuple[str, ...] = ()
    onnx: tuple[str, ...] = ()
    #: ``(seed) -> (layer, in_shapes)``: a small random layer of the op (the registry-driven
    #: tests build the op from it); None for ops whose engine is the quantizer family's.
    example: str | Callable | None = None

    @property
    def joins(self) -> bool:
        """Reads more than one input (the golden model and the engines take a list)."""
        return self.inputs != (1, 1)

    @property
    def requantizes(self) -> bool:
        """Has requantization constants without weights (``m0``/``shift`` per input or one)."""
        return "m0" in self.arrays

    @property
    def all_arrays(self) -> tuple[str, ...]:
        return (WEIGHT_ARRAYS if self.weights else ()) + self.arrays

    def accepts(self, n: int) -> bool:
        lo, hi = self.inputs
        return lo <= n and (hi is None or n <= hi)

    def out_shape(self, layer, in_shapes: list[tuple]) -> tuple[int, ...]:
        return tuple(self.shape(layer, in_shapes)) if self.shape else tuple(in_shapes[0])

    def resolve(self, piece: str) -> Any:
        """The op's ``golden``, ``engine`` or ``example`` object (imported on first use when named)."""
        return load_named(getattr(self, piece), f"op {self.name!r}", piece)


# ---- the built-in ops' rules ----------------------------------------------------

def _window_shape(layer, in_shapes):
    c, h, w = in_shapes[0]
    oc = layer.codes.shape[0] if layer.op == "conv2d" else c
    return (oc,) + tuple(conv_out_size(n, k, s, p) for n, k, s, p in zip((h, w), layer.kernel, layer.stride, layer.padding))


def _weight_array_shapes(kw):
    cout, groups = kw["out_shape"][0], kw.get("groups", 1)
    if kw["op"] == "conv2d":
        if groups < 1 or kw["in_shape"][0] % groups:
            return f"groups {groups} does not divide the {kw['in_shape'][0]} input channels"
        codes = (cout, kw["in_shape"][0] // groups, *kw["kernel"])
    else:
        codes = (cout, math.prod(kw["in_shape"]))
    return {"codes": codes, **{k: (cout,) for k in WEIGHT_ARRAYS if k != "codes"}}


def _per_input(kw):
    n = len(kw.get("inputs", ()))
    return {"m0": (n,), "shift": (n,)}


def _one_constant(kw):
    return {"m0": (1,), "shift": (1,)}


def _pool_check(layer, in_shapes, in_fmts):
    if any(2 * p > k for p, k in zip(layer.padding, layer.kernel)):
        return f"{layer.op} padding {layer.padding} must be at most half the kernel {layer.kernel}"
    return None


def _gap_check(layer, in_shapes, in_fmts):
    if tuple(layer.kernel) != tuple(layer.in_shape[1:]) or any(layer.padding):
        return f"gap's kernel {layer.kernel} must be the whole map {tuple(layer.in_shape[1:])}, unpadded"
    return None


def _add_check(layer, in_shapes, in_fmts):
    if in_shapes[1] != in_shapes[0]:
        return f"add of shapes {in_shapes[0]} and {in_shapes[1]}"
    return None


def _concat_check(layer, in_shapes, in_fmts):
    if any(len(s) != 3 or s[1:] != in_shapes[0][1:] for s in in_shapes):
        return f"concat needs (C, H, W) inputs of one H, W, got {in_shapes}"
    return None


def _concat_shape(layer, in_shapes):
    return (sum(s[0] for s in in_shapes),) + tuple(in_shapes[0][1:])


def _mul_check(layer, in_shapes, in_fmts):
    a, b = (tuple(s) for s in in_shapes)
    gate = len(a) == 3 and b == (a[0], 1, 1)
    if b != a and not gate:
        return f"mul of shapes {a} and {b}: the second must equal the first or be its (C, 1, 1) channel gate"
    return None


def _lut_array_shapes(kw):
    return {"table": (1 << kw["input"].bits,)}


def _lut_check(layer, in_shapes, in_fmts):
    why = lut.check_function(layer.function)
    if why:
        return why
    if layer.input.binary or layer.output.binary or layer.input.bits not in lut.INPUT_BITS:
        return (f"a table activation maps affine {lut.INPUT_BITS.start}..{lut.INPUT_BITS.stop - 1}-bit codes "
                f"(input {layer.input.bits}-bit {layer.input.encoding}, output {layer.output.encoding})")
    t = layer.table
    if t is None or getattr(t, "shape", None) != (1 << layer.input.bits,) or t.dtype.kind not in "iu":
        return f"table must be {1 << layer.input.bits} integers (one per input code)"
    if t.size and (t.min() < layer.output.qmin or t.max() > layer.output.qmax):
        return f"table values must lie in the output's [{layer.output.qmin}, {layer.output.qmax}]"
    return None


_G = "quantrtl.sim.golden:"
_EX = "quantrtl.model.numbers.op_examples:"
_WINDOW = (Attribute("kernel", tuple), Attribute("stride", tuple), Attribute("padding", tuple))

#: The built-in ops, in the order the docs list them.
BUILTIN: tuple[Op, ...] = (
    Op("conv2d", "2-D convolution (any stride, padding, groups; dilation 1), weights in a quantizer format",
       _G + "conv2d_layer", "quantrtl.hw.layer:ConvEngine", weights=True, window=True,
       activations=("none", "relu", "sign"), attributes=(Attribute("groups", int, 1, since=2),),
       shape=_window_shape, array_shapes=_weight_array_shapes, torch=("nn.Conv2d",), onnx=("Conv",)),
    Op("linear", "fully connected layer (reads its input flattened in C, H, W order)", _G + "linear_layer",
       "quantrtl.hw.layer:ConvEngine", weights=True, activations=("none", "relu", "sign"), flattens=True,
       shape=lambda layer, s: (layer.codes.shape[0],), array_shapes=_weight_array_shapes,
       torch=("nn.Linear",), onnx=("Gemm", "MatMul")),
    Op("maxpool", "max pooling (padding below every code)", _G + "maxpool_layer", "quantrtl.hw.layer:PoolEngine",
       window=True, keeps_format=True, shape=_window_shape, check=_pool_check, torch=("nn.MaxPool2d",),
       onnx=("MaxPool",),
       example=_EX + "maxpool"),
    Op("relu", "ReLU not fused into its producer: max(q, Z)", _G + "relu_layer", "quantrtl.hw.layer:ReluEngine",
       keeps_format=True, torch=("nn.ReLU", "F.relu", "torch.relu", "clamp(0)"), onnx=("Relu",),
       example=_EX + "relu"),
    Op("avgpool", "average pooling (padded zeros counted), one requantization", _G + "avgpool_layer",
       "quantrtl.hw.layer:PoolEngine", window=True, arrays=REQUANT_ARRAYS, shape=_window_shape, check=_pool_check,
       array_shapes=_one_constant, torch=("nn.AvgPool2d",), onnx=("AveragePool",),
       example=_EX + "avgpool"),
    Op("gap", "global average pooling (the kernel is the whole map)", _G + "avgpool_layer",
       "quantrtl.hw.layer:PoolEngine", window=True, arrays=REQUANT_ARRAYS, shape=_window_shape, check=_gap_check,
       array_shapes=_one_constant, torch=("nn.AdaptiveAvgPool2d(1)", "mean over H, W"), onnx=("GlobalAveragePool",),
       example=_EX + "gap"),
    Op("add", "residual addition of two maps, each input requantized, optional fused ReLU", _G + "add_layer",
       "quantrtl.hw.join:JoinEngine", inputs=(2, 2), arrays=REQUANT_ARRAYS, activations=("none", "relu"),
       check=_add_check, array_shapes=_per_input, torch=("+", "torch.add"), onnx=("Add",),
       example=_EX + "add"),
    Op("concat", "channel concatenation, each input requantized to the output", _G + "concat_layer",
       "quantrtl.hw.join:JoinEngine", inputs=(2, None), arrays=REQUANT_ARRAYS, shape=_concat_shape,
       check=_concat_check, array_shapes=_per_input, torch=("torch.cat(dim=1)",), onnx=("Concat",),
       example=_EX + "concat"),
    Op("mul", "product of two maps, or of a map and a (C, 1, 1) per-channel gate (squeeze-and-excitation), "
       "one requantization", _G + "mul_layer", "quantrtl.hw.join:JoinEngine", inputs=(2, 2), arrays=REQUANT_ARRAYS,
       check=_mul_check, array_shapes=_one_constant, torch=("*", "torch.mul"), onnx=("Mul",), example=_EX + "mul"),
    Op("lut", "elementwise function as a 2^bits-entry table: " + ", ".join(lut.function_names()),
       _G + "lut_layer", "quantrtl.hw.lut:LutEngine", arrays=("table",),
       attributes=(Attribute("function", dict),), check=_lut_check, array_shapes=_lut_array_shapes,
       torch=tuple(t for f in lut.FUNCTIONS for t in f.torch), onnx=tuple(o for f in lut.FUNCTIONS for o in f.onnx),
       example=_EX + "lut"),
)

_REGISTRY: Registry[Op] = Registry("op", BUILTIN)


def register(o: Op) -> Op:
    """Add ``o`` (a plug-in, or a test's toy op); its name must be new."""
    return _REGISTRY.register(o)


def unregister(name: str) -> None:
    _REGISTRY.unregister(name)


def ops() -> list[Op]:
    return _REGISTRY.records()


def op_names() -> list[str]:
    return _REGISTRY.names()


def op(name: str) -> Op:
    return _REGISTRY.get(name)


def op_of(layer) -> Op:
    """The record of ``layer.op``."""
    return op(layer.op)
