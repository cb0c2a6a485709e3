"""PyTorch fake quantization with a straight-through estimator, calibration and fine-tuning.

The weight fake-quantizer calls the NumPy codec of :mod:`quantrtl.model.numbers.formats` on every
forward pass, so the weights seen in training are exactly the ones exported: one
codec, no torch re-implementation to drift from it.  Gradients pass straight
through to the latent float weights (STE).

A :class:`QuantModel` is built from a float ``nn.Sequential`` of Conv2d, Linear,
ReLU, MaxPool2d and Flatten.  A ReLU right after a Conv2d/Linear is fused into it
(the quantized output clamps at its zero point), as the artifact and the hardware do.
Activations are unsigned 8-bit with scales calibrated on training data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantrtl.model.digits import INPUT_SCALE, INPUT_ZERO_POINT, Split
from quantrtl.model.numbers.formats import ActivationFormat, FormatError, Quantized, WeightFormat, XnorFormat
from quantrtl.model.training.net import batches, fit, single_thread

SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten)


class UnsupportedLayerError(ValueError):
    """A module that the quantizer, the artifact and the hardware cannot express."""


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
            op = lambda x_, w_, b_: nn.functional.conv2d(x_, w_, b_, m.stride, padding)
        else:
            op = lambda x_, w_, b_: nn.functional.linear(x_.flatten(1), w_, b_)
        y = op(x, w, b)
        if self.binarize and in_fmt is not None:
            y = straight_through(y, self._exact(op, x, w, b, scale, in_fmt))
        if self.relu:
            y = torch.relu(y)
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


@dataclass
class Step:
    """One element of the quantized plan: a QuantLayer or a pass-through module."""

    name: str
    module: nn.Module


def _check_module(name: str, m: nn.Module) -> None:
    if not isinstance(m, SUPPORTED):
        raise UnsupportedLayerError(
            f"layer {name!r} of type {type(m).__name__} is not supported; supported: "
            + ", ".join(t.__name__ for t in SUPPORTED)
        )
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedLayerError(
                f"layer {name!r}: Conv2d needs groups=1, dilation=1, numeric zero padding "
                f"(got groups={m.groups}, dilation={m.dilation}, padding={m.padding!r}, mode={m.padding_mode!r})"
            )
    if isinstance(m, nn.MaxPool2d):
        if m.dilation not in (1, (1, 1)) or m.ceil_mode or m.return_indices:
            raise UnsupportedLayerError(f"layer {name!r}: MaxPool2d needs dilation=1, ceil_mode=False")


class QuantModel(nn.Module):
    """Fake-quantized version of a float ``nn.Sequential``; shares its parameters."""

    def __init__(self, float_model: nn.Sequential, fmt: WeightFormat, input_fmt: ActivationFormat | None = None):
        super().__init__()
        if input_fmt is None:  # the digits data: pixel / 16, exact
            input_fmt = ActivationFormat(scale=INPUT_SCALE, zero_point=INPUT_ZERO_POINT)
        if not isinstance(float_model, nn.Sequential):
            raise UnsupportedLayerError(f"model must be an nn.Sequential, got {type(float_model).__name__}")
        self.fmt = fmt
        self.input_q = ActQuant(input_fmt)
        mods = list(float_model.named_children())
        for name, m in mods:
            _check_module(name, m)
        weighted = [n for n, m in mods if isinstance(m, (nn.Conv2d, nn.Linear))]
        steps, i = nn.ModuleDict(), 0
        while i < len(mods):
            name, m = mods[i]
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                relu = i + 1 < len(mods) and isinstance(mods[i + 1][1], nn.ReLU)
                layer_fmt, binarize = fmt, False
                if isinstance(fmt, XnorFormat):  # 8-bit input to the first layer, 8-bit logits out
                    layer_fmt = fmt.layer_format(first=name == weighted[0])
                    binarize = name != weighted[-1]
                steps[name] = QuantLayer(name, m, layer_fmt, relu, binarize)
                i += 2 if relu else 1
            else:
                steps[name] = m
                i += 1
        if not any(isinstance(s, QuantLayer) for s in steps.values()):
            raise UnsupportedLayerError("model has no Conv2d or Linear layer to quantize")
        self.steps = steps

    @property
    def input_fmt(self) -> ActivationFormat:
        return self.input_q.fmt

    def walk(self):
        """Yield ``(name, step, input activation format)`` in order (used by export)."""
        fmt = self.input_fmt
        for name, s in self.steps.items():
            yield name, s, fmt
            if isinstance(s, QuantLayer):
                fmt = s.out_q.fmt

    def forward(self, x):
        x = self.input_q(x)
        in_shape = None  # a linear layer after Flatten reads a feature map of this shape
        for _, s, fmt in self.walk():
            if isinstance(s, QuantLayer):
                s.in_shape = in_shape or tuple(x.shape[1:])
                x = s(x, fmt)
                in_shape = None
            else:
                if isinstance(s, nn.Flatten):
                    in_shape = tuple(x.shape[1:])
                x = s(x)
        return x

    @torch.no_grad()
    def calibrate(self, split: Split, batch_size: int = 512) -> None:
        """Set every output activation format from min/max over ``split`` (float activations)."""
        qs = [s.out_q for s in self.steps.values() if isinstance(s, QuantLayer) and not s.out_q.fixed]
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
