"""PyTorch fake quantization with a straight-through estimator, calibration and fine-tuning.

The weight fake-quantizer calls the NumPy codec of :mod:`quantrtl.model.numbers.formats` on every
forward pass, so the weights seen in training are exactly the ones exported: one
codec, no torch re-implementation to drift from it.  Gradients pass straight
through to the latent float weights (STE).

A :class:`QuantModel` mirrors a float model traced into a graph
(:mod:`quantrtl.model.training.graph`) node by node.  A ReLU right after a
Conv2d/Linear/add is fused into it (the quantized output clamps at its zero point), as
the artifact and the hardware do.  Activations are unsigned 8-bit with scales calibrated
on training data.
"""
from __future__ import annotations

import math
import numpy as np
import torch
from torch import nn

from quantrtl.model.digits import INPUT_SCALE, INPUT_ZERO_POINT, Split
from quantrtl.model.numbers.lut import build_table
from quantrtl.model.numbers.formats import ActivationFormat, FormatError, Quantized, WeightFormat, XnorFormat
from quantrtl.model.training.graph import INPUT, FloatGraph, LutActivation, UnsupportedLayerError, trace
from quantrtl.model.training.net import batches, fit, single_thread

__all__ = ["QuantModel", "QuantLayer", "QuantAdd", "QuantConcat", "QuantAvgPool", "QuantLut", "QuantMul", "ActQuant", "UnsupportedLayerError",
           "quantize_model", "inq_quantize", "fake_quant_act", "fake_quant_weight", "straight_through", "BINARY_ACT"]

class _StraightThrough(torch.autograd.Function):
    """Forward returns ``y`` exactly; backward passes the gradient to ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x, y):
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` in the forward pass, identity gradient to ``x`` (the STE)."""
    return _StraightThrough.apply(x, y.detach())


def fake_quant_weight(w: torch.Tensor, fmt: WeightFormat) -> tuple[torch.Tensor, np.ndarray]:
    """``(w_q with STE gradient, per-channel scale)`` using the NumPy codec."""
    try:
        q = fmt.encode(w.detach().cpu().double().numpy())
    except FormatError as e:
        raise FormatError(f"{fmt.name}: {e}") from None
    wq = torch.from_numpy(q.dequantize()).to(w.dtype)
    return straight_through(w, wq), q.scale


#: Binary activations of XNOR layers: ±1 (the scale folds into the next layer's bias scale).
BINARY_ACT = ActivationFormat(scale=1.0, zero_point=0, bits=1, encoding="pm1")


def fake_quant_act(x: torch.Tensor, fmt: ActivationFormat) -> torch.Tensor:
    """Round-to-nearest affine quantization with STE (identity gradient); binary (pm1)
    activations are ``sign(x)`` (sign(0) = +1) with the hard-tanh STE (gradient where
    ``|x| <= 1``), as in BCNN."""
    if fmt.binary:
        y = torch.where(x >= 0, fmt.scale, -fmt.scale).to(x.dtype)
        clipped = torch.clamp(x, -1.0, 1.0)
        return clipped + (y - clipped).detach()
    q = torch.clamp(torch.round(x / fmt.scale) + fmt.zero_point, fmt.qmin, fmt.qmax)
    return straight_through(x, (q - fmt.zero_point) * fmt.scale)


class ActQuant(nn.Module):
    """An activation quantization point: observes min/max while calibrating (a fixed
    format, such as binary activations, is never calibrated)."""

    def __init__(self, fmt: ActivationFormat | None = None, fixed: bool = False):
        super().__init__()
        self.fmt = fmt
        self.fixed = fixed
        self.observing = False
        self.lo, self.hi = np.inf, -np.inf

    def forward(self, x):
        if self.observing:
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))
            return x
        return x if self.fmt is None else fake_quant_act(x, self.fmt)


class QuantLayer(nn.Module):
    """A Conv2d/Linear with fake-quantized weights and bias, optional fused ReLU,
    and its output activation quantizer."""

    def __init__(self, name: str, module: nn.Module, fmt: WeightFormat, relu: bool, binarize: bool = False):
        super().__init__()
        self.name, self.module, self.fmt = name, module, fmt
        self.binarize = binarize  # XNOR: the output is sign(acc), which replaces the ReLU
        self.relu = relu and not binarize
        self.out_q = ActQuant(BINARY_ACT, fixed=True) if binarize else ActQuant()
        self.frozen: torch.Tensor | None = None  # INQ: weights already quantized and fixed
        self.shared: nn.Module | None = None  # Deep Compression: weights drawn from trained centroids
        self.in_shape: tuple | None = None  # the input's (C, H, W) before a Flatten (set by QuantModel)
        self.cap: float | None = None  # ReLU6: the float clamp before the output quantizer

    def layer_format(self, in_shape: tuple) -> WeightFormat:
        """The format for this layer's input shape (C, H, W) or (F,) (unified blocks of a
        linear layer follow the stream order of the map it reads)."""
        return self.fmt.for_input(tuple(in_shape)) if isinstance(self.module, nn.Linear) else self.fmt

    def quantized(self, in_shape: tuple) -> Quantized:
        """The exported weights (NumPy): exactly what ``forward`` uses."""
        if self.shared is not None:
            return self.shared.quantized()
        return self.layer_format(in_shape).encode(self.module.weight.detach().cpu().double().numpy())

    def forward(self, x, in_fmt: ActivationFormat | None):
        if self.shared is not None:
            w, scale = self.shared()
        else:
            w, scale = fake_quant_weight(self.module.weight, self.layer_format(self.in_shape or x.shape[1:]))
        if self.frozen is not None:  # INQ: quantized part fixed, the rest trains in float
            w = torch.where(self.frozen, w.detach(), self.module.weight)
        b = self.module.bias
        if b is not None and in_fmt is not None:  # (in_fmt is None while calibrating)
            # bias lives in the accumulator's scale S_w[c] * S_x, rounded to an integer
            sb = torch.from_numpy(scale * in_fmt.scale).to(b.dtype)
            b = straight_through(b, torch.round(b / sb) * sb)
        if isinstance(self.module, nn.Conv2d):
            m = self.module
            padding = m.padding
            if in_fmt is not None and in_fmt.binary and any(padding):  # ±1 maps are padded with -1
                ph, pw = padding
                x = nn.functional.pad(x, (pw, pw, ph, ph), value=-in_fmt.scale)
                padding = (0, 0)
            op = lambda x_, w_, b_: nn.functional.conv2d(x_, w_, b_, m.stride, padding, 1, m.groups)
        else:
            op = lambda x_, w_, b_: nn.functional.linear(x_.flatten(1), w_, b_)
        y = op(x, w, b)
        if self.binarize and in_fmt is not None:
            y = straight_through(y, self._exact(op, x, w, b, scale, in_fmt))
        if self.relu:
            y = torch.relu(y) if self.cap is None else torch.clamp(y, 0.0, self.cap)
        return self.out_q(y)


    @staticmethod
    @torch.no_grad()
    def _exact(op, x, w, b, scale, in_fmt: ActivationFormat) -> torch.Tensor:
        """The pre-activation from integer arithmetic (float64: exact for these sizes),
        scaled back: a binarized output takes the sign of exactly the golden model's
        accumulator, not of a float sum that rounds near zero."""
        sw = torch.from_numpy(np.asarray(scale, dtype=np.float64))
        shape = (-1,) + (1,) * (w.dim() - 1)
        vals = torch.round(w.double() / sw.reshape(shape))
        xi = torch.round(x.double() / in_fmt.scale)
        bi = torch.round(b.double() / (sw * in_fmt.scale)) if b is not None else None
        acc = op(xi, vals, bi)
        out_shape = (1, -1) + (1,) * (acc.dim() - 2)
        return (acc * (sw * in_fmt.scale).reshape(out_shape)).to(x.dtype)


class QuantAdd(nn.Module):
    """A residual addition (optional fused ReLU) and its output activation quantizer."""

    def __init__(self, name: str, relu: bool):
        super().__init__()
        self.name, self.relu = name, relu
        self.cap: float | None = None  # ReLU6: the float clamp before the output quantizer
        self.out_q = ActQuant()

    def forward(self, a, b):
        y = a + b
        if self.relu:
            y = torch.relu(y) if self.cap is None else torch.clamp(y, 0.0, self.cap)
        return self.out_q(y)


class QuantMul(nn.Module):
    """The product of two activations (a map and a map, or its per-channel gate) and its
    output activation quantizer."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.out_q = ActQuant()

    def forward(self, a, b):
        return self.out_q(a * b)


class QuantConcat(nn.Module):
    """Channel concatenation; every input is requantized to one output format."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.out_q = ActQuant()

    def forward(self, *xs):
        return self.out_q(torch.cat(xs, 1))


class QuantAvgPool(nn.Module):
    """Average (``module``) or global average (``module`` None) pooling; the output keeps
    the input's format and rounds half up, as the integer model does."""

    def __init__(self, name: str, module: nn.Module | None):
        super().__init__()
        self.name, self.module = name, module

    def forward(self, x, in_fmt: ActivationFormat | None):
        y = self.module(x) if self.module is not None else x.mean((2, 3), keepdim=True)
        if in_fmt is None:  # calibrating: float
            return y
        q = torch.clamp(torch.floor(y / in_fmt.scale + 0.5) + in_fmt.zero_point, in_fmt.qmin, in_fmt.qmax)
        return straight_through(y, (q - in_fmt.zero_point) * in_fmt.scale)


class QuantLut(nn.Module):
    """A table activation (``function``: a :class:`~quantrtl.model.training.graph.LutActivation`)
    with its own calibrated output format.  Once both formats are known, the forward pass
    gives exactly the artifact's table applied to the input codes (the golden model's
    result) and passes the function's gradient straight through the output quantizer."""

    def __init__(self, name: str, function: LutActivation):
        super().__init__()
        self.name, self.function = name, function
        self.out_q = ActQuant()

    def table(self, in_fmt: ActivationFormat) -> np.ndarray:
        return build_table(self.function.spec, in_fmt, self.out_q.fmt)

    def forward(self, x, in_fmt: ActivationFormat | None):
        y = self.function(x)
        if in_fmt is None or self.out_q.fmt is None or self.out_q.observing:
            return self.out_q(y)  # calibrating: float, observed
        out = self.out_q.fmt
        table = torch.from_numpy(self.table(in_fmt)).to(x.device)
        q = torch.clamp(torch.round(x.detach() / in_fmt.scale) + in_fmt.zero_point, in_fmt.qmin, in_fmt.qmax).long()
        return straight_through(y, ((table[q] - out.zero_point) * out.scale).to(y.dtype))


#: Steps whose output has its own calibrated format (the others keep their input's).
_REQUANTIZING = (QuantLayer, QuantAdd, QuantConcat, QuantLut, QuantMul)


def _as_graph(float_model: nn.Module) -> FloatGraph:
    return float_model if isinstance(float_model, FloatGraph) else trace(float_model)


class QuantModel(nn.Module):
    """Fake-quantized version of a float model (a :class:`FloatGraph`, or a module
    :func:`~quantrtl.model.training.graph.trace` accepts); shares its parameters.

    A ReLU whose input is a conv2d/linear/add read by nothing else is fused into it (the
    quantized output clamps at its zero point), as the artifact and the hardware do."""

    def __init__(self, float_model: nn.Module, fmt: WeightFormat, input_fmt: ActivationFormat | None = None):
        super().__init__()
        if input_fmt is None:  # the digits data: pixel / 16, exact
            input_fmt = ActivationFormat(scale=INPUT_SCALE, zero_point=INPUT_ZERO_POINT)
        graph = _as_graph(float_model)
        self.fmt = fmt
        self.input_q = ActQuant(input_fmt)
        users = graph.consumers()
        kinds = {n.name: n.kind for n in graph.nodes}
        weighted = [n.name for n in graph.nodes if n.kind in ("conv2d", "linear")]
        if not weighted:
            raise UnsupportedLayerError("model has no Conv2d or Linear layer to quantize")
        xnor = isinstance(fmt, XnorFormat)
        if xnor:
            other = [n for n in graph.nodes if n.kind not in ("conv2d", "linear", "relu", "maxpool")]
            if other:
                raise UnsupportedLayerError(f"node {other[0].name!r} ({other[0].kind}): {fmt.name} (binary activations) "
                                            "needs a chain of conv2d, linear, ReLU and max pooling")
        fused = {n.name: n.inputs[0] for n in graph.nodes if n.kind in ("relu", "relu6") and n.inputs[0] in kinds
                 and kinds[n.inputs[0]] in ("conv2d", "linear", "add") and users[n.inputs[0]] == [n.name]}
        relu_of = set(fused.values())
        # ReLU6 is fused: the float clamp at 6 precedes calibration, so the output format
        # ends at or below 6 and the integer clamp at qmax is the cap (no op of its own);
        # a ReLU6 that cannot be fused is a table activation, clamp(0, 6)
        capped = {fused[n.name] for n in graph.nodes if n.kind == "relu6" and n.name in fused}
        steps, sources = nn.ModuleDict(), {}
        rename = {}  # a fused ReLU stands for its producer
        for n in graph.nodes:
            if n.name in fused:
                rename[n.name] = fused[n.name]
                continue
            relu = n.name in relu_of
            if n.kind in ("conv2d", "linear"):
                layer_fmt, binarize = fmt, False
                if xnor:  # 8-bit input to the first layer, 8-bit logits out
                    layer_fmt = fmt.layer_format(first=n.name == weighted[0])
                    binarize = n.name != weighted[-1]
                step = QuantLayer(n.name, n.module, layer_fmt, relu, binarize)
                step.cap = 6.0 if n.name in capped else None
            elif n.kind == "add":
                step = QuantAdd(n.name, relu)
                step.cap = 6.0 if n.name in capped else None
            elif n.kind == "concat":
                step = QuantConcat(n.name)
            elif n.kind == "mul":
                step = QuantMul(n.name)
            elif n.kind in ("avgpool", "gap"):
                step = QuantAvgPool(n.name, n.module)
            elif n.kind == "maxpool":
                step = n.module
            elif n.kind == "lut":
                step = QuantLut(n.name, n.module)
            elif n.kind == "relu6":  # not fused (its producer is read elsewhere too): a table
                step = QuantLut(n.name, LutActivation({"name": "clamp", "lo": 0.0, "hi": 6.0}))
            else:
                step = nn.ReLU()
            steps[n.name] = step
            sources[n.name] = tuple(rename.get(i, i) for i in n.inputs)
        self.steps = steps
        self.sources = sources

    @property
    def input_fmt(self) -> ActivationFormat:
        return self.input_q.fmt

    def walk(self):
        """Yield ``(name, step, input names, input activation formats)`` in topological
        order (used by export)."""
        fmts = {INPUT: self.input_fmt}
        for name, s in self.steps.items():
            ins = self.sources[name]
            in_fmts = tuple(fmts[i] for i in ins)
            yield name, s, ins, in_fmts
            fmts[name] = s.out_q.fmt if isinstance(s, _REQUANTIZING) else in_fmts[0]

    def forward(self, x):
        vals = {INPUT: self.input_q(x)}
        for name, s, ins, fmts in self.walk():
            xs = [vals[i] for i in ins]
            if isinstance(s, QuantLayer):
                s.in_shape = tuple(xs[0].shape[1:])  # a linear layer reads this map flattened
                vals[name] = s(xs[0], fmts[0])
            elif isinstance(s, (QuantAvgPool, QuantLut)):
                vals[name] = s(xs[0], fmts[0])
            else:
                vals[name] = s(*xs)
        return vals[name]

    @torch.no_grad()
    def calibrate(self, split: Split, batch_size: int = 512) -> None:
        """Set every output activation format from min/max over ``split`` (float activations)."""
        qs = [s.out_q for s in self.steps.values() if isinstance(s, _REQUANTIZING) and not s.out_q.fixed]
        for q in qs:
            q.fmt, q.observing, q.lo, q.hi = None, True, np.inf, -np.inf
        was_training = self.training
        self.eval()
        for xb, _ in batches(split, batch_size):
            self(xb)
        for q in qs:
            q.observing = False
            q.fmt = ActivationFormat.from_range(q.lo, q.hi)
        self.train(was_training)


def quantize_model(float_model: nn.Sequential, fmt: WeightFormat, train: Split, finetune: int = 0,
                   lr: float = 5e-4, seed: int = 0, batch_size: int = 32,
                   input_fmt: ActivationFormat | None = None, after_step=None) -> QuantModel:
    """Post-training quantization, then ``finetune`` epochs with the quantizers in the loop.

    Activation scales are re-calibrated at the start of every epoch and at the end.
    """
    qm = QuantModel(float_model, fmt, input_fmt)
    with single_thread():  # deterministic: the same inputs give the same artifact
        qm.calibrate(train)
        if finetune > 0:
            fit(qm, train, finetune, lr, batch_size, seed, on_epoch=lambda m, e: e and m.calibrate(train),
                after_step=after_step)
            qm.calibrate(train)
    qm.eval()
    return qm


#: INQ's accumulated portions of quantized weights (Zhou et al., ICLR 2017).
INQ_SCHEDULE = (0.5, 0.75, 0.875, 1.0)


def inq_quantize(float_model: nn.Sequential, fmt: WeightFormat, train: Split, epochs: int, lr: float = 5e-4,
                 seed: int = 0, input_fmt: ActivationFormat | None = None,
                 schedule: tuple[float, ...] = INQ_SCHEDULE) -> QuantModel:
    """Incremental network quantization: quantize the largest-magnitude portion of every
    layer's weights, fix it, retrain the rest for ``epochs``; repeat for 50 %, 75 %, 87.5 %,
    100 %.  Fixed weights hold their quantized values (restored after every optimizer step)."""
    qm = QuantModel(float_model, fmt, input_fmt)
    layers = [s for s in qm.steps.values() if isinstance(s, QuantLayer)]
    with single_thread():
        qm.calibrate(train)
        for portion in schedule:
            fixed = []
            for layer in layers:
                w = layer.module.weight
                with torch.no_grad():
                    q = torch.from_numpy(fmt.encode(w.detach().double().numpy()).dequantize()).to(w.dtype)
                    keep = max(1, math.ceil(portion * w.numel()))
                    order = torch.argsort(w.detach().abs().reshape(-1), descending=True, stable=True)
                    mask = torch.zeros(w.numel(), dtype=torch.bool)
                    mask[order[:keep]] = True
                    mask = mask.reshape(w.shape)
                    if layer.frozen is not None:
                        mask |= layer.frozen  # once fixed, always fixed
                    w.data = torch.where(mask, q, w.data)
                layer.frozen = mask
                fixed.append((w, mask, w.detach().clone()))

            def restore(_model, fixed=fixed):
                with torch.no_grad():
                    for w, mask, values in fixed:
                        w.data = torch.where(mask, values, w.data)

            if portion < 1.0 and epochs > 0:
                fit(qm, train, epochs, lr, 32, seed, on_epoch=lambda m, e: e and m.calibrate(train),
                    after_step=restore)
            qm.calibrate(train)
    qm.eval()
    return qm
