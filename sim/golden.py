"""The NumPy golden model: integer-only inference of an artifact.

Every rule here is written once in ``docs/integer-semantics.md``; the code follows
that text section by section (§ numbers below).  No float arithmetic touches an
activation: inputs, weights, accumulators and outputs are Python/NumPy integers.
The hardware generators and the cosimulation are checked against this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantrtl.model.numbers.artifact import ArtifactError, Layer, QuantizedNetwork
from quantrtl.model.numbers.formats import centered

__all__ = ["requantize", "conv2d_acc", "linear_acc", "maxpool", "relu", "run_layer", "run", "GoldenResult", "predict"]


def requantize(acc, m0, shift, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """§3 ``q = clamp(Z + ((acc * M0 + 2**(n-1)) >> n), lo, hi)`` per output channel.

    ``acc`` has the channel on axis 1 (N, C, ...) or is (N, C); ``m0``/``shift`` are
    per channel.  ``>>`` is an arithmetic (flooring) shift, so the rounding is
    half toward +infinity.  The product is formed in exact Python integers.
    """
    acc = np.asarray(acc, dtype=np.int64)
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    ints = lambda a: np.array([int(v) for v in np.ravel(a)], dtype=object).reshape(shape)
    m0, n = ints(m0), ints(shift)
    y = (acc.astype(object) * m0 + (1 << (n - 1))) >> n
    return np.clip(y + zero_point, lo, hi).astype(np.int64)


def _check_input(x: np.ndarray, layer: Layer) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise ArtifactError(f"layer {layer.name!r}: input must be integers, got dtype {x.dtype}")
    if x.shape[1:] != tuple(layer.in_shape) and not (layer.op == "linear" and int(np.prod(x.shape[1:])) == int(np.prod(layer.in_shape))):
        raise ArtifactError(f"layer {layer.name!r}: input shape {x.shape[1:]} does not match {tuple(layer.in_shape)}")
    q = layer.input
    if x.size and (x.min() < q.qmin or x.max() > q.qmax):
        raise ArtifactError(f"layer {layer.name!r}: input values must lie in [{q.qmin}, {q.qmax}], got [{x.min()}, {x.max()}]")
    return x.astype(np.int64)


def conv2d_acc(x, w, bias, stride, padding, zero_point: int, binary: bool = False) -> np.ndarray:
    """§2 accumulators of a 2-D convolution (N, Cin, H, W) → (N, Cout, OH, OW).

    The input is offset by its zero point first and padded with 0 (the real zero),
    then ``acc = sum w * (x - Z_x) + b`` in int64.  Binary (±1) inputs (§7) are
    ``2q - 1`` and padded with -1: a 1-bit activation has no zero.
    """
    x = centered(x, zero_point, binary)  # §1, §7: q - Z, or 2q - 1 for binary inputs
    w = np.asarray(w, dtype=np.int64)
    (sh, sw), (ph, pw) = stride, padding
    cout, cin, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-1 if binary else 0)
    n, _, hp, wp = x.shape
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    # im2col: (N, OH, OW, Cin, KH, KW) by strided view, then an exact integer matmul
    s = x.strides
    cols = np.lib.stride_tricks.as_strided(
        x, shape=(n, oh, ow, cin, kh, kw), strides=(s[0], s[2] * sh, s[3] * sw, s[1], s[2], s[3]), writeable=False
    )
    acc = cols.reshape(n, oh * ow, cin * kh * kw) @ w.reshape(cout, -1).T
    acc = acc + np.asarray(bias, dtype=np.int64)
    return acc.transpose(0, 2, 1).reshape(n, cout, oh, ow)


def linear_acc(x, w, bias, zero_point: int, binary: bool = False) -> np.ndarray:
    """§2 accumulators of a fully connected layer; the input is flattened in C, H, W order."""
    x = centered(np.asarray(x).reshape(len(x), -1), zero_point, binary)
    return x @ np.asarray(w, dtype=np.int64).T + np.asarray(bias, dtype=np.int64)


def maxpool(x, kernel, stride, padding, pad_value: int = 0) -> np.ndarray:
    """§4 integer max pooling; padding uses ``pad_value`` (qmin, below every real value)."""
    x = np.asarray(x, dtype=np.int64)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    n, c, hp, wp = x.shape
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    s = x.strides
    win = np.lib.stride_tricks.as_strided(
        x, shape=(n, c, oh, ow, kh, kw), strides=(s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3]), writeable=False
    )
    return win.max(axis=(4, 5))


def relu(x, zero_point: int) -> np.ndarray:
    """§5 ReLU on quantized values: ``max(q, Z)``."""
    return np.maximum(np.asarray(x, dtype=np.int64), zero_point)


def run_layer(layer: Layer, x: np.ndarray, acc_out: dict | None = None) -> np.ndarray:
    """One layer on a batch ``x`` (N, *in_shape) of integers."""
    x = _check_input(x, layer)
    if layer.op == "maxpool":
        return maxpool(x, layer.kernel, layer.stride, layer.padding, pad_value=layer.input.qmin)
    if layer.op == "relu":
        return relu(x, layer.input.zero_point)
    zx, binary = layer.input.zero_point, layer.input.binary
    if layer.op == "conv2d":
        acc = conv2d_acc(x, layer.values, layer.bias, layer.stride, layer.padding, zx, binary)
    else:
        acc = linear_acc(x, layer.values, layer.bias, zx, binary)
    bound = 1 << (layer.accumulator_bits - 1)
    if acc.size and (acc.min() < -bound or acc.max() >= bound):  # §2: cannot happen for valid inputs
        raise ArtifactError(f"layer {layer.name!r}: accumulator exceeds its derived {layer.accumulator_bits}-bit width")
    if acc_out is not None:
        acc_out[layer.name] = acc
    if layer.activation == "sign":  # §7 binarization: the threshold is folded into the bias
        return (acc >= 0).astype(np.int64)
    return requantize(acc, layer.m0, layer.shift, layer.output.zero_point, layer.out_min, layer.out_max)


@dataclass
class GoldenResult:
    """Every layer's integer output (N, *out_shape), in network order, plus accumulators."""

    outputs: dict[str, np.ndarray]
    accumulators: dict[str, np.ndarray]

    @property
    def logits(self) -> np.ndarray:
        return next(reversed(self.outputs.values()))

    @property
    def predicted(self) -> np.ndarray:
        """argmax over the last layer's integer outputs (first index wins ties)."""
        return self.logits.reshape(len(self.logits), -1).argmax(axis=1)


def run(net: QuantizedNetwork, x) -> GoldenResult:
    """Integer inference of ``net`` on ``x``: (N, *input_shape) or one image (*input_shape)."""
    x = np.asarray(x)
    if x.shape == tuple(net.input_shape):
        x = x[None]
    if x.shape[1:] != tuple(net.input_shape):
        raise ArtifactError(f"input shape {x.shape} does not match the network input {tuple(net.input_shape)} (or a batch of it)")
    outputs, accs = {}, {}
    for layer in net.layers:
        x = run_layer(layer, x, accs)
        outputs[layer.name] = x
    return GoldenResult(outputs=outputs, accumulators=accs)


def predict(net: QuantizedNetwork, x) -> np.ndarray:
    return run(net, x).predicted
