"""Models from the quantization ecosystem: QONNX / ONNX (Brevitas, QKeras via QONNX).

``--model model.onnx`` reads the file with ``onnx`` and ``qonnx`` (constants folded, shapes
inferred) and gives two things:

* :func:`keep_network`: the model's **own** quantization as an integer artifact
  (``--quantizer keep``): ``Quant`` nodes on weights become ``fixedN`` codes with their
  exact scales (``N`` = the bit width; ``N + 1`` when the range is not narrow, so the
  most negative code fits), ``BipolarQuant`` becomes ``binary``; ``Quant`` nodes on
  activations set the activation formats (a signed ``b``-bit code ``q`` is stored as
  ``q + 2^(b−1)`` with the zero point moved by the same amount: the same real values);
  a batch norm after a conv is folded into its per-channel weight scale (codes kept).
* :func:`float_graph`: the dequantized float model as a :class:`FloatGraph`, which any
  other quantizer re-quantizes as it does a PyTorch model.

Where the integer pipeline differs from QONNX's float execution (measured by the quantize flow): QONNX rounds half to even at each ``Quant`` after float
arithmetic; the artifact rounds half up once per requantization with a 31-bit multiplier
(docs/integer-semantics.md §3), and the bias is rounded to the accumulator's scale. A
value that lands exactly between two codes can differ by one code
(``quantrtl.flows.quantize.compare_with_qonnx`` measures it). A float output with no
``Quant`` after it (the logits) gets an 8-bit format calibrated on the data.

Supported ops: Quant (rounding ROUND; activations 2..8 bits, per-tensor scale, integer
zero point; weights signed, zero point 0, per-tensor or per-output-channel scale),
BipolarQuant (weights), Conv (groups, strides, symmetric pads, dilation 1), Gemm, MatMul
(+ Add of a bias), Relu, MaxPool, AveragePool, GlobalAveragePool, Add, Concat (channels),
Flatten, Reshape (to (N, −1)), BatchNormalization (after a Conv/Gemm), Identity, Dropout.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantrtl.model.numbers.artifact import INPUT, Layer, QuantizedNetwork, add_multipliers, expected_out_shape, \
    quantize_multiplier, validate
from quantrtl.model.numbers.families import parse_format
from quantrtl.model.numbers.formats import ActivationFormat, BinaryFormat, FormatError
from quantrtl.util.errors import first_line

__all__ = ["OnnxImportError", "OnnxModel", "load_onnx", "keep_network", "float_graph", "qonnx_execute",
           "SUPPORTED_OPS"]

SUPPORTED_OPS = ("Quant", "BipolarQuant", "Conv", "Gemm", "MatMul", "Relu", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "Add", "Concat", "Flatten", "Reshape", "BatchNormalization", "Identity",
                 "Dropout", "Mul", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Clip", "Gelu")
#: The ONNX ops of table activations (float models only): op → table function and its
#: parameters from the node's attributes (name, ONNX default).
_LUT_OPS = {"Sigmoid": ("sigmoid", {}), "Tanh": ("tanh", {}), "HardSwish": ("hardswish", {}),
            "HardSigmoid": ("hardsigmoid", {"alpha": ("alpha", 0.2), "beta": ("beta", 0.5)}),
            "LeakyRelu": ("leakyrelu", {"alpha": ("alpha", 0.01)}), "Elu": ("elu", {"alpha": ("alpha", 1.0)}),
            "Gelu": ("gelu", {"approximate": ("approximate", "none")})}


class OnnxImportError(ValueError):
    """A malformed ONNX file, or a node quantrtl cannot express (named)."""


@dataclass
class OnnxModel:
    """A loaded (constants folded, shapes inferred) QONNX/ONNX model."""

    path: Path
    wrapper: object  # qonnx ModelWrapper
    input_name: str
    input_shape: tuple  # (C, H, W) or (F,)
    output_name: str

    def init(self, name: str):
        return self.wrapper.get_initializer(name)

    @property
    def nodes(self):
        return list(self.wrapper.graph.node)


def load_onnx(path: str | Path) -> OnnxModel:
    """Read, check and clean an ONNX/QONNX file; every failure is an :class:`OnnxImportError`."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise OnnxImportError(f"--model {p}: file not found")
    try:
        proto = onnx.load(str(p))
        onnx.checker.check_model(proto)
    except Exception as e:  # onnx raises DecodeError, ValidationError, ...
        msg = str(e).strip().splitlines()
        raise OnnxImportError(f"--model {p}: not a valid ONNX model ({type(e).__name__}: "
                              f"{(msg[0] if msg else '')[:200]})") from None
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.infer_shapes import InferShapes

    try:
        wrapper = ModelWrapper(proto).transform(InferShapes()).transform(FoldConstants())
    except Exception as e:
        raise OnnxImportError(f"--model {p}: qonnx cannot clean it up ({type(e).__name__}: "
                              f"{str(e).strip()[:200]})") from None
    g = wrapper.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise OnnxImportError(f"--model {p}: needs one input and one output, has {len(inputs)} and {len(g.output)}")
    shape = tuple(int(d.dim_value) for d in inputs[0].type.tensor_type.shape.dim)
    if len(shape) not in (2, 4) or min(shape[1:], default=0) < 1:
        raise OnnxImportError(f"--model {p}: input {inputs[0].name!r} has shape {shape}; expected (N, C, H, W) or (N, F)")
    for n in g.node:
        if n.op_type not in SUPPORTED_OPS:
            raise OnnxImportError(f"node {n.name or n.op_type!r} ({n.op_type}) is not supported; supported: "
                                  + ", ".join(SUPPORTED_OPS))
    m = OnnxModel(p, wrapper, inputs[0].name, shape[1:], g.output[0].name)
    _check_structure(m, proto)
    return m


#: The default-domain opsets this import reads (onnx's own range; QONNX executes with onnxruntime).
MIN_OPSET = 7


def _check_structure(m: OnnxModel, proto) -> None:
    """What onnx's checker lets through and would fail later, deep in QONNX or in
    shape arithmetic: opsets, strides, pads, kernels, groups against the weights'
    shapes, and the Quant nodes' constants (finite, positive, of a fitting length)."""
    import onnx

    top = onnx.defs.onnx_opset_version()
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx") and not MIN_OPSET <= o.version <= top:
            raise OnnxImportError(f"--model {m.path}: opset {o.version} of the default domain; this import reads "
                                  f"opsets {MIN_OPSET}..{top} (onnx {onnx.__version__})")
    for node in m.nodes:
        op, a = node.op_type, _attrs(node)
        if op in ("Conv", "MaxPool", "AveragePool"):
            for key, lo in (("strides", 1), ("pads", 0), ("kernel_shape", 1), ("dilations", 1)):
                vals = list(a.get(key, []))
                if any(v < lo for v in vals):
                    raise OnnxImportError(f"node {_label(node)} ({op}): {key} {vals}: each must be {lo} or more")
        if op == "Conv":
            _check_conv(m, node, a)
        if op in ("Quant", "BipolarQuant"):
            _check_quant(m, node)


def _check_conv(m: OnnxModel, node, a: dict) -> None:
    w = m.init(node.input[1]) if len(node.input) > 1 else None
    producer = m.wrapper.find_producer(node.input[1]) if w is None and len(node.input) > 1 else None
    if producer is not None and producer.op_type in ("Quant", "BipolarQuant"):
        w = m.init(producer.input[0])  # a weight behind its Quant
    if w is None:
        return  # (the walk says that weights must be constants)
    w = np.asarray(w)
    group = int(a.get("group", 1))
    cin = m.wrapper.get_tensor_shape(node.input[0])
    if w.ndim != 4:
        raise OnnxImportError(f"node {_label(node)} (Conv): weights of shape {tuple(w.shape)}; expected (Cout, Cin/group, "
                              "kh, kw)")
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != tuple(w.shape[2:]):
        raise OnnxImportError(f"node {_label(node)} (Conv): kernel_shape {list(a['kernel_shape'])} does not match its "
                              f"weights' {list(w.shape[2:])}")
    if group < 1 or w.shape[0] % group or (cin and len(cin) == 4 and cin[1] != w.shape[1] * group):
        raise OnnxImportError(f"node {_label(node)} (Conv): group {group} does not fit {cin[1] if cin else '?'} input "
                              f"and {w.shape[0]} output channels (weights {tuple(w.shape)}: Cin = group x "
                              f"{w.shape[1]}, Cout a multiple of group)")


def _check_quant(m: OnnxModel, node) -> None:
    names = ("scale", "zero point", "bit width") if node.op_type == "Quant" else ("scale",)
    x = m.init(node.input[0])
    for i, what in enumerate(names, start=1):
        v = m.init(node.input[i]) if len(node.input) > i else None
        if v is None:
            continue  # (the walk says which must be constants)
        v = np.asarray(v, dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise OnnxImportError(f"node {_label(node)} ({node.op_type}): its {what} must be finite, got "
                                  f"{v.ravel()[:4].tolist()}")
        if what == "scale" and (np.any(v <= 0) or np.any(v < 1e-30) or np.any(v > 1e30)):
            raise OnnxImportError(f"node {_label(node)} ({node.op_type}): its scale must be in 1e-30..1e30, got "
                                  f"{v.ravel()[:4].tolist()}")
        if x is not None and v.size > 1:
            try:
                np.broadcast_shapes(np.shape(x), v.shape)
            except ValueError:
                raise OnnxImportError(f"node {_label(node)} ({node.op_type}): its {what} of shape {v.shape} does not "
                                      f"fit its tensor of shape {tuple(np.shape(x))} (per tensor, or one per output "
                                      "channel)") from None


# ---- node helpers -----------------------------------------------------------------

def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _lut_module(node, spec: dict):
    from quantrtl.model.training.graph import LutActivation, UnsupportedLayerError

    try:
        return LutActivation(spec)
    except UnsupportedLayerError as e:
        raise OnnxImportError(f"node {_label(node)} ({node.op_type}): {e}") from None


def _label(node) -> str:
    return repr(node.name or node.op_type)


def layer_name(node, taken: set) -> str:
    """A layer name from the ONNX node's name: the module path Brevitas gives it
    (``/layer1/conv/Conv`` → ``layer1_conv``), letters, digits and underscores only."""
    parts = [p for p in (node.name or node.op_type).split("/") if p]
    base = "_".join(parts[:-1]) if len(parts) > 1 else parts[0] if parts else node.op_type
    base = re.sub(r"\W", "_", base).strip("_")[:56] or node.op_type.lower()
    if base[0].isdigit():
        base = "n" + base
    name, i = base, 1
    while name in taken or name == INPUT:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


@dataclass
class _WeightQ:
    """A quantized weight initializer: integer values, per-output-channel scale, format."""

    values: np.ndarray
    scale: np.ndarray  # per output channel (axis 0 of ``values`` once oriented)
    fmt: object
    node: str


@dataclass
class _Pending:
    """A layer whose float output waits for its Quant (or a bias Add, a Relu, a BN)."""

    kind: str  # conv2d, linear, add, concat, avgpool, gap
    node: object
    inputs: list  # tensor names (quantized)
    weight: _WeightQ | None = None
    bias: np.ndarray | None = None
    relu: bool = False
    attrs: dict = field(default_factory=dict)
    #: An add's operand that is a conv/linear output without a Quant of its own (the
    #: residual block as Brevitas users write it): (its tensor, its pending layer).
    branch: tuple | None = None


def _scalar(m: OnnxModel, node, i: int, what: str) -> float:
    v = m.init(node.input[i])
    if v is None or np.asarray(v).size != 1 or not np.isfinite(np.asarray(v, dtype=np.float64)).all():
        raise OnnxImportError(f"node {_label(node)} (Quant): {what} must be a finite constant scalar")
    return float(np.asarray(v).ravel()[0])


def _act_format(m: OnnxModel, node) -> ActivationFormat:
    """An activation Quant's format, signed codes moved up by ``2^(b−1)``."""
    a = _attrs(node)
    mode = a.get("rounding_mode", b"ROUND")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    scale = _scalar(m, node, 1, "an activation scale (per tensor)")
    zp = _scalar(m, node, 2, "an activation zero point")
    bits = _scalar(m, node, 3, "the bit width")
    if bits != int(bits) or not 2 <= bits <= 8:
        raise OnnxImportError(f"node {_label(node)} (Quant): activations of {bits:g} bits are not supported "
                              "(the engines stream 2- to 8-bit codes)")
    if mode != "ROUND":
        raise OnnxImportError(f"node {_label(node)} (Quant): rounding mode {mode} is not supported; quantrtl "
                              "requantizes with round-half-up (docs/integer-semantics.md §3), which matches ROUND "
                              "up to ties")
    if zp != int(zp) or scale <= 0:
        raise OnnxImportError(f"node {_label(node)} (Quant): needs an integer zero point and a positive scale, "
                              f"got {zp!r}, {scale!r}")
    bits = int(bits)
    offset = (1 << (bits - 1)) if a.get("signed", 1) else 0
    try:
        return ActivationFormat(scale=scale, zero_point=int(zp) + offset, bits=bits)
    except FormatError as e:
        raise OnnxImportError(f"node {_label(node)} (Quant): {e}") from None


def _weight_q(m: OnnxModel, node, w: np.ndarray) -> _WeightQ:
    """A Quant/BipolarQuant on a weight initializer: integer values and per-channel scales."""
    if node.op_type == "BipolarQuant":
        scale = np.broadcast_to(np.asarray(m.init(node.input[1]), dtype=np.float64), w.shape)
        s = _per_channel_scale(node, scale)
        values = np.where(w >= 0, 1, -1).astype(np.int64)
        return _WeightQ(values, s, BinaryFormat(), node.name)
    a = _attrs(node)
    mode = a.get("rounding_mode", b"ROUND")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    scale = np.broadcast_to(np.asarray(m.init(node.input[1]), dtype=np.float64), w.shape)
    zp = np.asarray(m.init(node.input[2]), dtype=np.float64)
    bits = _scalar(m, node, 3, "the bit width")
    if not a.get("signed", 1) or np.any(zp != 0) or bits != int(bits) or not 2 <= bits <= 16 or mode != "ROUND":
        raise OnnxImportError(f"node {_label(node)} (Quant on weights): needs signed weights, zero point 0, "
                              f"2..16 bits and rounding ROUND (got signed={a.get('signed', 1)}, bits {bits:g}, "
                              f"rounding {mode})")
    bits = int(bits)
    narrow = bool(a.get("narrow", 0))
    lo, hi = -(1 << (bits - 1)) + (1 if narrow else 0), (1 << (bits - 1)) - 1
    values = np.clip(np.rint(w / scale), lo, hi).astype(np.int64)
    fmt_bits = bits if narrow else bits + 1  # fixedN has no -2^(N-1): one more bit holds it
    return _WeightQ(values, _per_channel_scale(node, scale), parse_format(f"fixed{fmt_bits}"), node.name)


def _per_channel_scale(node, scale: np.ndarray) -> np.ndarray:
    s = scale.reshape(scale.shape[0], -1)
    if not np.all(s == s[:, :1]) or np.any(s <= 0):
        raise OnnxImportError(f"node {_label(node)}: weight scales must be positive, per tensor or per output "
                              "channel")
    return s[:, 0].copy()


def _orient(weight: _WeightQ, transpose: bool) -> _WeightQ:
    if not transpose:
        return weight
    return _WeightQ(weight.values.T.copy(), weight.scale, weight.fmt, weight.node)


# ---- the walk ---------------------------------------------------------------------

@dataclass
class _Walk:
    """The ONNX graph as quantrtl operations: quantized tensors, pending layers, aliases."""

    m: OnnxModel
    q: dict = field(default_factory=dict)  # tensor -> (layer name or INPUT, format, shape)
    pending: dict = field(default_factory=dict)  # tensor -> _Pending
    weights: dict = field(default_factory=dict)  # tensor -> _WeightQ
    layers: list = field(default_factory=list)
    taken: set = field(default_factory=set)
    tensor_of: dict = field(default_factory=dict)  # layer name -> the ONNX tensor holding its output
    input_format: ActivationFormat | None = None


def _conv_attrs(node) -> dict:
    a = _attrs(node)
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or pads[:2] != pads[2:] or \
            list(a.get("dilations", [1, 1])) != [1, 1]:
        raise OnnxImportError(f"node {_label(node)} ({node.op_type}): needs symmetric explicit pads and dilation 1 "
                              f"(pads {pads}, dilations {a.get('dilations')})")
    return {"stride": tuple(a.get("strides", [1, 1])), "padding": tuple(pads[:2]), "groups": int(a.get("group", 1)),
            "kernel": tuple(a.get("kernel_shape", [1, 1]))}


def _pool_attrs(node) -> dict:
    a = _attrs(node)
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if a.get("ceil_mode", 0) or pads[:2] != pads[2:] or list(a.get("dilations", [1, 1])) != [1, 1] or \
            (node.op_type == "AveragePool" and any(pads) and not a.get("count_include_pad", 0)):
        raise OnnxImportError(f"node {_label(node)} ({node.op_type}): needs ceil_mode 0, symmetric pads, dilation 1 "
                              "and (with padding) count_include_pad 1")
    k = tuple(a["kernel_shape"])
    return {"kernel": k, "stride": tuple(a.get("strides", k)), "padding": tuple(pads[:2])}


def _walk(m: OnnxModel) -> _Walk:
    """Go through the nodes in order, building the integer layers (:func:`float_graph`
    dequantizes the same layers)."""
    w = _Walk(m)
    for node in m.nodes:
        op, ins, out = node.op_type, list(node.input), node.output[0] if node.output else None
        if op in ("Quant", "BipolarQuant") and m.init(ins[0]) is not None:
            w.weights[out] = _weight_q(m, node, np.asarray(m.init(ins[0]), dtype=np.float64))
        elif op in ("Quant", "BipolarQuant"):
            if op == "BipolarQuant":
                raise OnnxImportError(f"node {_label(node)} (BipolarQuant): binary activations are not supported "
                                      "in imported models")
            fmt = _act_format(m, node)
            src = ins[0]
            if src == m.input_name:
                w.input_format = fmt
                w.q[out] = (INPUT, fmt, m.input_shape)
                w.tensor_of[INPUT] = out
            elif src in w.pending:
                _finish(w, w.pending.pop(src), fmt, out)
            elif src in w.q and w.q[src][1] == fmt:
                w.q[out] = w.q[src]  # the same quantization again
            elif src in w.q:  # requantized to another format (a shared quantizer): a 1x1 average pooling
                shape = w.q[src][2]
                if len(shape) != 3:
                    raise OnnxImportError(f"node {_label(node)} (Quant): requantizes a flat tensor to another format; "
                                          "quantrtl requantizes feature maps (C, H, W) only")
                _finish(w, _Pending("avgpool", node, [src], attrs={"kernel": (1, 1), "stride": (1, 1),
                                                                  "padding": (0, 0)}), fmt, out)
            else:
                raise OnnxImportError(f"node {_label(node)} (Quant): its input {src!r} is not the model input or "
                                      "an operation's output")
        elif op in ("Conv", "Gemm", "MatMul"):
            x, wt = ins[0], ins[1]
            if x not in w.q:
                raise OnnxImportError(f"node {_label(node)} ({op}): its input must be quantized (a Quant node)")
            if wt not in w.weights:
                raise OnnxImportError(f"node {_label(node)} ({op}): its weights must be a constant behind a Quant "
                                      "or BipolarQuant node")
            a = _attrs(node)
            transpose = (op == "Gemm" and not a.get("transB", 0)) or op == "MatMul"
            if op == "Gemm" and (a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0)):
                raise OnnxImportError(f"node {_label(node)} (Gemm): needs alpha 1, beta 1, transA 0")
            bias = m.init(ins[2]) if len(ins) > 2 and ins[2] else None
            if len(ins) > 2 and ins[2] and bias is None:
                bias = _dequantized(w, ins[2], node)
            p = _Pending("conv2d" if op == "Conv" else "linear", node, [x], _orient(w.weights[wt], transpose),
                         None if bias is None else np.asarray(bias, dtype=np.float64).ravel(),
                         attrs=_conv_attrs(node) if op == "Conv" else {})
            w.pending[out] = p
        elif op == "Add" and any(i in w.pending for i in ins) and any(m.init(i) is not None for i in ins):
            p = w.pending.pop(next(i for i in ins if i in w.pending))  # a MatMul's bias
            b = np.asarray(m.init(next(i for i in ins if m.init(i) is not None)), dtype=np.float64).ravel()
            p.bias = b if p.bias is None else p.bias + b
            w.pending[out] = p
        elif op == "Add" and len(ins) == 2 and sum(i in w.q for i in ins) == 1 and any(
                i in w.pending and w.pending[i].kind in ("conv2d", "linear") and not w.pending[i].relu for i in ins):
            branch = next(i for i in ins if i in w.pending)  # relu(x + conv(x)): the conv's output has no Quant
            w.pending[out] = _Pending("add", node, ins, branch=(branch, w.pending.pop(branch)))
        elif op in ("Add", "Concat"):
            if not all(i in w.q for i in ins):
                raise OnnxImportError(f"node {_label(node)} ({op}): every input must be quantized (a Quant node "
                                      "after each branch)")
            if op == "Concat" and _attrs(node).get("axis") != 1:
                raise OnnxImportError(f"node {_label(node)} (Concat): only axis 1 (channels)")
            w.pending[out] = _Pending("add" if op == "Add" else "concat", node, ins)
        elif op == "Relu":
            if ins[0] in w.pending:
                p = w.pending.pop(ins[0])
                p.relu = True
                w.pending[out] = p
            elif ins[0] in w.q:
                src, fmt, shape = w.q[ins[0]]
                name = layer_name(node, w.taken)
                w.layers.append(Layer(name=name, op="relu", in_shape=shape, out_shape=shape, input=fmt, output=fmt,
                                      inputs=(src,)))
                w.tensor_of[name] = out
                w.q[out] = (name, fmt, shape)
            else:
                raise OnnxImportError(f"node {_label(node)} (Relu): its input is neither quantized nor a layer's")
        elif op == "BatchNormalization":
            if ins[0] not in w.pending or w.pending[ins[0]].kind not in ("conv2d", "linear") or w.pending[ins[0]].relu:
                raise OnnxImportError(f"node {_label(node)} (BatchNormalization): must directly follow a Conv or Gemm")
            p = w.pending.pop(ins[0])
            _fold_bn(m, node, p)
            w.pending[out] = p
        elif op in ("MaxPool", "AveragePool", "GlobalAveragePool"):
            if ins[0] not in w.q:
                raise OnnxImportError(f"node {_label(node)} ({op}): its input must be quantized")
            src, fmt, shape = w.q[ins[0]]
            if op == "MaxPool":
                a = _pool_attrs(node)
                name = layer_name(node, w.taken)
                layer = Layer(name=name, op="maxpool", in_shape=shape, out_shape=shape, input=fmt, output=fmt,
                              inputs=(src,), **a)
                layer.out_shape = expected_out_shape(layer)
                w.layers.append(layer)
                w.tensor_of[name] = out
                w.q[out] = (name, fmt, layer.out_shape)
            else:
                a = _pool_attrs(node) if op == "AveragePool" else {"kernel": shape[1:], "stride": shape[1:],
                                                                   "padding": (0, 0)}
                w.pending[out] = _Pending("avgpool" if op == "AveragePool" else "gap", node, [ins[0]], attrs=a)
        elif op in ("Flatten", "Reshape", "Identity", "Dropout"):
            if op == "Flatten" and _attrs(node).get("axis", 1) != 1:
                raise OnnxImportError(f"node {_label(node)} (Flatten): only axis 1")
            if op == "Reshape":
                target = m.init(ins[1])
                if target is None or list(np.asarray(target).ravel())[1:] != [-1]:
                    raise OnnxImportError(f"node {_label(node)} (Reshape): only to (N, -1) (a flatten)")
            if ins[0] in w.q:
                src, fmt, shape = w.q[ins[0]]
                w.q[out] = (src, fmt, shape if op in ("Identity", "Dropout") else (int(np.prod(shape)),))
            elif ins[0] in w.pending:
                w.pending[out] = w.pending.pop(ins[0])
            else:
                raise OnnxImportError(f"node {_label(node)} ({op}): its input is not an operation's output")
        else:  # load_onnx checked the op list
            raise OnnxImportError(f"node {_label(node)} ({op}) is not supported here")
    return w


def _dequantized(w: _Walk, tensor: str, node):
    if tensor in w.weights:  # a quantized bias: its real values
        q = w.weights[tensor]
        return q.values * q.scale.reshape((-1,) + (1,) * (q.values.ndim - 1))
    raise OnnxImportError(f"node {_label(node)}: its bias must be a constant")


def _fold_bn(m: OnnxModel, node, p: _Pending) -> None:
    """``γ·(y − μ)/σ + β`` after a conv: the per-channel factor ``γ/σ`` goes into the weight
    scale (its sign into the codes), the rest into the bias; the codes stay the model's."""
    gamma, beta, mean, var = (np.asarray(m.init(i), dtype=np.float64) for i in node.input[1:5])
    if any(v is None for v in (gamma, beta, mean, var)):
        raise OnnxImportError(f"node {_label(node)} (BatchNormalization): needs constant parameters")
    k = gamma / np.sqrt(var + _attrs(node).get("epsilon", 1e-5))
    wq = p.weight
    sign = np.where(k < 0, -1, 1).reshape((-1,) + (1,) * (wq.values.ndim - 1))
    p.weight = _WeightQ(wq.values * sign, wq.scale * np.abs(k), wq.fmt, wq.node)
    b = p.bias if p.bias is not None else np.zeros_like(mean)
    p.bias = (b - mean) * k + beta


#: Bits of the code an un-quantized conv/linear branch of an add is requantized to.
BRANCH_BITS = 16


def branch_format(skip: ActivationFormat, out: ActivationFormat, bits: int = BRANCH_BITS) -> ActivationFormat:
    """The format of a conv/linear output that an add sums with a quantized ``skip``
    before the Quant ``out`` (docs/integer-semantics.md §8): its range is exactly what can
    still change the add's output, [out_min − skip_max, out_max − skip_min] plus one output
    code each side (a branch value beyond it saturates the output either way), in ``bits``."""
    lo = out.dequantize(out.qmin) - skip.dequantize(skip.qmax) - out.scale
    hi = out.dequantize(out.qmax) - skip.dequantize(skip.qmin) + out.scale
    return ActivationFormat.from_range(float(lo), float(hi), bits=bits)


def _finish(w: _Walk, p: _Pending, fmt: ActivationFormat, tensor: str) -> None:
    """The pending layer with its output format: integer constants, appended in order."""
    if p.branch is not None:  # the add's un-quantized operand first, into its own wide code
        branch, layer = p.branch
        skip = w.q[next(i for i in p.inputs if i != branch)][1]
        _finish(w, layer, branch_format(skip, fmt), branch)
    name = layer_name(p.node, w.taken)
    srcs = [w.q[i] for i in p.inputs]
    (src, qin, shape) = srcs[0]
    activation = "relu" if p.relu else "none"
    if p.kind in ("conv2d", "linear"):
        wq = p.weight
        try:
            codes = wq.fmt.codes_of(wq.values)
        except FormatError as e:
            raise OnnxImportError(f"node {_label(p.node)}: {e}") from None
        acc_scale = wq.scale * qin.scale
        bias = np.zeros(len(acc_scale)) if p.bias is None else p.bias
        try:
            consts = [quantize_multiplier(float(s) / fmt.scale) for s in acc_scale]
        except ValueError as e:  # scales whose ratio no multiplier and shift express
            raise OnnxImportError(f"node {_label(p.node)}: {e} (input scale {qin.scale:g}, output scale "
                                  f"{fmt.scale:g})") from None
        common = dict(name=name, input=qin, output=fmt, activation=activation, format=wq.fmt, codes=codes,
                      bias=np.rint(bias / acc_scale).astype(np.int64),
                      m0=np.array([c[0] for c in consts], dtype=np.int64),
                      shift=np.array([c[1] for c in consts], dtype=np.int64),
                      weight_scale=np.asarray(wq.scale, dtype=np.float64), inputs=(src,))
        if p.kind == "conv2d":
            layer = Layer(op="conv2d", in_shape=shape, out_shape=shape, kernel=p.attrs["kernel"],
                          stride=p.attrs["stride"], padding=p.attrs["padding"], groups=p.attrs["groups"], **common)
        else:
            layer = Layer(op="linear", in_shape=(int(np.prod(shape)),), out_shape=(codes.shape[0],), **common)
    elif p.kind in ("add", "concat"):
        fmts = tuple(f for _, f, _ in srcs)
        consts = add_multipliers([f.scale for f in fmts], fmt.scale) if p.kind == "add" else \
            [quantize_multiplier(f.scale / fmt.scale) for f in fmts]
        layer = Layer(name=name, op=p.kind, in_shape=shape, out_shape=shape, input=qin, output=fmt,
                      activation=activation if p.kind == "add" else "none", inputs=tuple(s for s, _, _ in srcs),
                      input_formats=fmts, m0=np.array([c[0] for c in consts], dtype=np.int64),
                      shift=np.array([c[1] for c in consts], dtype=np.int64))
        if p.kind == "concat":
            layer.out_shape = (sum(s[0] for _, _, s in srcs),) + tuple(shape[1:])
    else:  # average pooling: its own output format
        k = p.attrs["kernel"]
        m0, n = quantize_multiplier(qin.scale / (fmt.scale * k[0] * k[1]))
        layer = Layer(name=name, op=p.kind, in_shape=shape, out_shape=shape, input=qin, output=fmt,
                      inputs=(src,), m0=np.array([m0]), shift=np.array([n]), **p.attrs)
        if p.relu:
            raise OnnxImportError(f"node {_label(p.node)}: a Relu after average pooling is not supported")
    if p.kind not in ("concat",):
        layer.out_shape = expected_out_shape(layer, [s for _, _, s in srcs])
    w.layers.append(layer)
    w.tensor_of[name] = tensor
    w.q[tensor] = (name, fmt, layer.out_shape)


# ---- public entry points ----------------------------------------------------------

def qonnx_execute(m: OnnxModel, x: np.ndarray) -> dict:
    """QONNX's own (float) execution of ``x`` (N, *input_shape): every tensor by name."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    proto = onnx.ModelProto.FromString(m.wrapper.model.SerializeToString())
    batched = ModelWrapper(proto)
    del batched.graph.value_info[:]
    for t in list(batched.graph.input) + list(batched.graph.output):
        if t.name == m.input_name or t.name == m.output_name:
            t.type.tensor_type.shape.dim[0].dim_value = len(x)
    try:
        batched = batched.transform(InferShapes())
        return execute_onnx(batched, {m.input_name: np.asarray(x, dtype=np.float32)}, return_full_exec_context=True)
    except Exception as e:  # onnxruntime's and QONNX's own failures, with their first line
        raise OnnxImportError(f"--model {m.path}: QONNX cannot execute it ({type(e).__name__}: "
                              f"{first_line(e, 240)})") from None


def keep_network(m: OnnxModel, calib: np.ndarray, name: str, metadata: dict | None = None) -> QuantizedNetwork:
    """The model's own quantization as a validated integer network; ``calib`` (float
    inputs) calibrates an output that has no Quant of its own (the logits)."""
    if not any(n.op_type in ("Quant", "BipolarQuant") for n in m.nodes):
        raise OnnxImportError(f"--model {m.path}: a float ONNX model (no Quant node) has no quantization to keep; "
                              "quantize it with one of quantrtl's quantizers instead")
    w = _walk(m)
    if w.input_format is None:
        raise OnnxImportError(f"--model {m.path}: the input must go through a Quant node first (its format is the "
                              "network's input format)")
    out = m.output_name
    if out in w.pending:  # float logits: an 8-bit format calibrated on the data
        y = qonnx_execute(m, calib[:256])[out]
        _finish(w, w.pending.pop(out), ActivationFormat.from_range(float(y.min()), float(y.max())), out)
    if w.pending:
        t, p = next(iter(w.pending.items()))
        raise OnnxImportError(f"node {_label(p.node)} ({p.node.op_type}): its output must be quantized (a Quant node "
                              "after it)")
    if out not in w.q or not w.layers or w.q[out][0] != w.layers[-1].name:
        raise OnnxImportError(f"--model {m.path}: the output {out!r} must be the last operation's output")
    net = QuantizedNetwork(name=name, quantizer="keep", input_shape=tuple(m.input_shape), input=w.input_format,
                           layers=w.layers, metadata={**(metadata or {}), "onnx_tensors": w.tensor_of})
    validate(net)
    return net


def float_graph(m: OnnxModel):
    """The float model as a :class:`FloatGraph`: the float weights (the initializers a weight
    Quant node reads, or plain ONNX initializers), biases as stored, activation Quant nodes
    passed through, batch norms folded; what any quantizer but ``keep`` starts from.  Plain
    ONNX (no Quant node at all) takes this path too."""
    import torch
    from torch import nn

    from quantrtl.model.training.graph import FloatGraph, GraphNode, fold_batch_norm

    alias: dict[str, str] = {m.input_name: INPUT}  # tensor -> the node (or INPUT) computing it
    weights: dict[str, np.ndarray] = {}  # tensor -> float weights behind a weight Quant node
    nodes: dict[str, GraphNode] = {}
    users: dict[str, int] = {}
    for node in m.nodes:
        for i in node.input:
            users[i] = users.get(i, 0) + 1
    taken: set = set()

    def src(node, t):
        if t not in alias:
            raise OnnxImportError(f"node {_label(node)} ({node.op_type}): input {t!r} is not an operation's output")
        return alias[t]

    def const(t):
        v = m.init(t)
        return weights.get(t) if v is None else np.asarray(v, dtype=np.float64)

    def add(node, kind, inputs, module=None):
        name = layer_name(node, taken)
        nodes[name] = GraphNode(name, kind, tuple(inputs), module)
        alias[node.output[0]] = name

    for node in m.nodes:
        op, ins = node.op_type, list(node.input)
        if op in ("Quant", "BipolarQuant"):
            if m.init(ins[0]) is not None:
                weights[node.output[0]] = np.asarray(m.init(ins[0]), dtype=np.float64)
            else:
                alias[node.output[0]] = src(node, ins[0])
        elif op in ("Conv", "Gemm", "MatMul"):
            w = const(ins[1])
            if w is None:
                raise OnnxImportError(f"node {_label(node)} ({op}): its weights must be a constant")
            b = const(ins[2]) if len(ins) > 2 and ins[2] else None
            a = _attrs(node)
            if op == "Conv":
                c = _conv_attrs(node)
                mod = nn.Conv2d(w.shape[1] * c["groups"], w.shape[0], c["kernel"], c["stride"], c["padding"],
                                groups=c["groups"], bias=True)
            else:
                if (op == "Gemm" and not a.get("transB", 0)) or op == "MatMul":
                    w = w.T
                mod = nn.Linear(w.shape[1], w.shape[0], bias=True)
            with torch.no_grad():
                mod.weight.copy_(torch.from_numpy(w.astype(np.float32)).reshape(mod.weight.shape))
                mod.bias.copy_(torch.zeros(w.shape[0]) if b is None else torch.from_numpy(b.astype(np.float32)))
            add(node, "conv2d" if op == "Conv" else "linear", [src(node, ins[0])], mod)
        elif op == "Add" and any(m.init(i) is not None for i in ins):  # a MatMul's bias
            t = next(i for i in ins if m.init(i) is None)
            prev = nodes[src(node, t)]
            if prev.kind != "linear":
                raise OnnxImportError(f"node {_label(node)} (Add): a constant is added only to a MatMul (its bias)")
            with torch.no_grad():
                prev.module.bias.add_(torch.from_numpy(const(next(i for i in ins if m.init(i) is not None))
                                                       .astype(np.float32).ravel()))
            alias[node.output[0]] = prev.name
        elif op in ("Add", "Concat"):
            add(node, "add" if op == "Add" else "concat", [src(node, i) for i in ins])
        elif op == "Relu":
            add(node, "relu", [src(node, ins[0])])
        elif op == "BatchNormalization":
            prev = nodes.get(src(node, ins[0]))
            if prev is None or prev.kind not in ("conv2d", "linear") or users.get(ins[0], 0) != 1:
                raise OnnxImportError(f"node {_label(node)} (BatchNormalization): must directly follow a Conv or Gemm")
            gamma, beta, mean, var = (torch.from_numpy(const(i).astype(np.float32)) for i in ins[1:5])
            bn = nn.BatchNorm2d(len(mean), eps=_attrs(node).get("epsilon", 1e-5))
            with torch.no_grad():
                bn.weight.copy_(gamma), bn.bias.copy_(beta), bn.running_mean.copy_(mean), bn.running_var.copy_(var)
            prev.module = fold_batch_norm(prev.module, bn)
            alias[node.output[0]] = prev.name
        elif op in ("MaxPool", "AveragePool"):
            a = _pool_attrs(node)
            cls = nn.MaxPool2d if op == "MaxPool" else nn.AvgPool2d
            add(node, "maxpool" if op == "MaxPool" else "avgpool", [src(node, ins[0])],
                cls(a["kernel"], a["stride"], a["padding"]))
        elif op == "GlobalAveragePool":
            add(node, "gap", [src(node, ins[0])])
        elif op in _LUT_OPS:
            name, params = _LUT_OPS[op]
            a = _attrs(node)
            spec = {"name": name}
            for p, (key, default) in params.items():
                v = a.get(key, default)
                spec[p] = v.decode() if isinstance(v, bytes) else float(v)
            add(node, "lut", [src(node, ins[0])], _lut_module(node, spec))
        elif op == "Clip":
            a = _attrs(node)
            lo = const(ins[1]) if len(ins) > 1 and ins[1] else a.get("min")
            hi = const(ins[2]) if len(ins) > 2 and ins[2] else a.get("max")
            lo, hi = (None if v is None else float(np.asarray(v).ravel()[0]) for v in (lo, hi))
            if lo == 0 and hi is None:
                add(node, "relu", [src(node, ins[0])])
            elif lo == 0 and hi == 6:
                add(node, "relu6", [src(node, ins[0])])
            elif lo is None or hi is None or not lo < hi:
                raise OnnxImportError(f"node {_label(node)} (Clip): needs both bounds, min below max "
                                      f"(got {lo}, {hi}), or min 0 alone (a ReLU)")
            else:
                add(node, "lut", [src(node, ins[0])], _lut_module(node, {"name": "clamp", "lo": lo, "hi": hi}))
        elif op == "Mul":
            a, b = (src(node, i) for i in ins)
            gate = nodes.get(b) if b in nodes else None
            if gate is not None and gate.kind == "lut" and gate.module.spec == {"name": "sigmoid"} and \
                    gate.inputs == (a,) and users.get(ins[1], 0) == 1:  # SiLU as exported: x · sigmoid(x)
                gate.module = _lut_module(node, {"name": "silu"})
                alias[node.output[0]] = gate.name
            else:
                add(node, "mul", [a, b])
        else:  # Flatten, Reshape, Identity, Dropout: the linear layer flattens its input itself
            alias[node.output[0]] = src(node, ins[0])
    out = alias.get(m.output_name)
    order = list(nodes)
    if out not in nodes or order[-1] != out:
        raise OnnxImportError(f"--model {m.path}: the output must be the last operation's output")
    return FloatGraph(list(nodes.values())).eval()
