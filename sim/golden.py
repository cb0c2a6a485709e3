"""The NumPy golden model: integer-only inference of an artifact.

Every rule here is written once in ``docs/integer-semantics.md``; the code follows
that text section by section (§ numbers below).  No float arithmetic touches an
activation: inputs, weights, accumulators and outputs are Python/NumPy integers.
The hardware generators and the cosimulation are checked against this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantrtl.model.numbers.artifact import INPUT, ArtifactError, Layer, QuantizedNetwork
from quantrtl.model.numbers.formats import centered

__all__ = ["requantize", "conv2d_acc", "linear_acc", "table_acc", "maxpool", "avgpool", "add", "concat", "relu", "lut", "mul",
           "run_layer", "run", "GoldenResult", "predict", "conv2d_layer", "linear_layer", "maxpool_layer", "relu_layer",
           "avgpool_layer", "add_layer", "concat_layer", "lut_layer", "mul_layer"]


def requantize(acc, m0, shift, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """§3 ``q = clamp(Z + ((acc * M0 + 2**(n-1)) >> n), lo, hi)`` per output channel.

    ``acc`` has the channel on axis 1 (N, C, ...) or is (N, C); ``m0``/``shift`` are
    per channel, or one value for every channel.  ``>>`` is an arithmetic (flooring) shift, so the rounding is
    half toward +infinity.  The product is formed in exact Python integers.
    """
    acc = np.asarray(acc, dtype=np.int64)
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    ints = lambda a: np.array([int(v) for v in np.ravel(a)], dtype=object).reshape(shape)
    m0, n = ints(m0), ints(shift)
    y = (acc.astype(object) * m0 + (1 << (n - 1))) >> n
    return np.clip(y + zero_point, lo, hi).astype(np.int64)


def _check_input(x: np.ndarray, layer: Layer, fmt=None) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise ArtifactError(f"layer {layer.name!r}: input must be integers, got dtype {x.dtype}")
    flat = layer.kind.flattens and int(np.prod(x.shape[1:])) == int(np.prod(layer.in_shape))
    if x.shape[1:] != tuple(layer.in_shape) and not flat and fmt is None:
        raise ArtifactError(f"layer {layer.name!r}: input shape {x.shape[1:]} does not match {tuple(layer.in_shape)}")
    q = fmt or layer.input
    if x.size and (x.min() < q.qmin or x.max() > q.qmax):
        raise ArtifactError(f"layer {layer.name!r}: input values must lie in [{q.qmin}, {q.qmax}], got [{x.min()}, {x.max()}]")
    return x.astype(np.int64)


def conv2d_acc(x, w, bias, stride, padding, zero_point: int, binary: bool = False, groups: int = 1) -> np.ndarray:
    """§2 accumulators of a 2-D convolution (N, Cin, H, W) → (N, Cout, OH, OW).

    The input is offset by its zero point first and padded with 0 (the real zero),
    then ``acc = sum w * (x - Z_x) + b`` in int64.  Binary (±1) inputs (§7) are
    ``2q - 1`` and padded with -1: a 1-bit activation has no zero.  With ``groups`` g,
    output channel group j reads only input channel group j (w is (Cout, Cin/g, kh, kw)).
    """
    x = centered(x, zero_point, binary)  # §1, §7: q - Z, or 2q - 1 for binary inputs
    w = np.asarray(w, dtype=np.int64)
    b = np.asarray(bias, dtype=np.int64)
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    return np.concatenate([_conv(x[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], b[g * og:(g + 1) * og],
                                 stride, padding, -1 if binary else 0) for g in range(groups)], axis=1)


def _conv(x, w, bias, stride, padding, pad_value: int) -> np.ndarray:
    """The convolution of a centered input ``x`` padded with ``pad_value``."""
    (sh, sw), (ph, pw) = stride, padding
    cout, cin, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    n, _, hp, wp = x.shape
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    # im2col: (N, OH, OW, Cin, KH, KW) by strided view, then an exact integer matmul
    s = x.strides
    cols = np.lib.stride_tricks.as_strided(
        x, shape=(n, oh, ow, cin, kh, kw), strides=(s[0], s[2] * sh, s[3] * sw, s[1], s[2], s[3]), writeable=False
    )
    acc = cols.reshape(n, oh * ow, cin * kh * kw) @ w.reshape(cout, -1).T
    acc = acc + bias
    return acc.transpose(0, 2, 1).reshape(n, cout, oh, ow)


def linear_acc(x, w, bias, zero_point: int, binary: bool = False) -> np.ndarray:
    """§2 accumulators of a fully connected layer; the input is flattened in C, H, W order."""
    x = centered(np.asarray(x).reshape(len(x), -1), zero_point, binary)
    return x @ np.asarray(w, dtype=np.int64).T + np.asarray(bias, dtype=np.int64)


def table_acc(layer: Layer, x) -> np.ndarray:
    """§2 accumulators of a product-quantized (``pqN``) conv2d/linear layer computed the
    Quantized CNN way, not from decoded weights: per input position and subspace ``m``
    the table ``T[m][k] = <codeword k of m, x_m - Z>`` (every codeword, once per input
    pixel), then per output (pixel) and channel the sum of the entries its stored indices
    select over its window, plus the bias.  Padding contributes nothing (``x - Z = 0``).
    Equal to :func:`conv2d_acc`/:func:`linear_acc` on the decoded weights."""
    fmt = layer.format
    x = _check_input(x, layer) - layer.input.zero_point
    index, cb, sub = fmt.index(layer.codes), fmt.codebook_array, fmt.sub  # (cout, M, P), (M, K, sub)
    cout, M, P = index.shape
    bias = np.asarray(layer.bias, dtype=np.int64)
    if not layer.kind.window:  # linear
        c, _ = fmt.channels(layer.codes.shape)
        xs = x.reshape(len(x), c, P)
        acc = np.tile(bias, (len(x), 1))
        for m in range(M):
            table = np.einsum("kj,njp->nkp", cb[m], xs[:, m * sub:(m + 1) * sub])  # (N, K, P)
            for p in range(P):
                acc += table[:, index[:, m, p], p]
        return acc
    (kh, kw), (sh, sw), (ph, pw), g = layer.kernel, layer.stride, layer.padding, layer.groups
    n, cin, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    cg, og = cin // g, cout // g
    acc = np.tile(bias[None, :, None, None], (n, 1, oh, ow))
    for gr in range(g):
        for m in range(M):
            xm = x[:, gr * cg + m * sub:gr * cg + (m + 1) * sub]
            table = np.pad(np.einsum("kj,njhw->nkhw", cb[m], xm), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            for ky in range(kh):
                for kx in range(kw):
                    window = table[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]
                    chans = range(gr * og, (gr + 1) * og)
                    acc[:, chans] += window[:, index[chans, m, ky * kw + kx]]
    return acc


def _windows(x, kernel, stride, padding, pad_value: int) -> np.ndarray:
    """(N, C, OH, OW, kh, kw) view of the padded map's pooling windows."""
    x = np.asarray(x, dtype=np.int64)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    n, c, hp, wp = x.shape
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, shape=(n, c, oh, ow, kh, kw), strides=(s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3]), writeable=False)


def maxpool(x, kernel, stride, padding, pad_value: int = 0) -> np.ndarray:
    """§4 integer max pooling; padding uses ``pad_value`` (qmin, below every real value)."""
    return _windows(x, kernel, stride, padding, pad_value).max(axis=(4, 5))


def avgpool(x, kernel, stride, padding, zero_point: int, m0: int, shift: int, out_zero_point: int, lo: int,
            hi: int) -> np.ndarray:
    """§9 average pooling (global average: the kernel is the whole map): the window sum of
    ``x − Z_in`` (padding is the real zero, counted in the divisor), times ``M0 · 2^(−n) ≈
    S_in / (S_out · k²)`` with §3's rounding, plus ``Z_out``."""
    acc = _windows(np.asarray(x, dtype=np.int64) - zero_point, kernel, stride, padding, 0).sum(axis=(4, 5))
    return requantize(acc, [m0], [shift], out_zero_point, lo, hi)


def add(a, b, za: int, zb: int, m0, shift: int, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """§8 ``y = clamp(Z_y + ((M_a·(a − Z_a) + M_b·(b − Z_b) + 2^(n−1)) >> n), lo, hi)``."""
    acc = (np.asarray(a, dtype=np.int64) - za) * int(m0[0]) + (np.asarray(b, dtype=np.int64) - zb) * int(m0[1])
    return requantize(acc, [1], [shift], zero_point, lo, hi)  # §3 with the multiply already in the sum


def concat(xs, fmts, m0, shift, out) -> np.ndarray:
    """§10 every input requantized to the output format (``M_i · 2^(−n_i) ≈ S_i / S_y``),
    then joined along the channels."""
    return np.concatenate([requantize(np.asarray(x, dtype=np.int64) - f.zero_point, [m], [n], out.zero_point, out.qmin,
                                      out.qmax) for x, f, m, n in zip(xs, fmts, m0, shift)], axis=1)


def relu(x, zero_point: int) -> np.ndarray:
    """§5 ReLU on quantized values: ``max(q, Z)``."""
    return np.maximum(np.asarray(x, dtype=np.int64), zero_point)


def mul(a, b, za: int, zb: int, m0: int, shift: int, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """§12 ``y = clamp(Z_y + (((a − Z_a)·(b − Z_b)·M0 + 2^(n−1)) >> n), lo, hi)``; ``b`` is the
    map's shape or a (N, C, 1, 1) gate, broadcast over H, W."""
    acc = (np.asarray(a, dtype=np.int64) - za) * (np.asarray(b, dtype=np.int64) - zb)
    return requantize(acc, [m0], [shift], zero_point, lo, hi)


def lut(x, table) -> np.ndarray:
    """§11 a table activation: ``y = table[q]`` (the table has one entry per input code)."""
    return np.asarray(table, dtype=np.int64)[np.asarray(x, dtype=np.int64)]


# ---- one function per op (the registry's ``golden``: ``(layer, xs, acc_out) -> outputs``) ----

def _weighted(layer: Layer, acc) -> np.ndarray:
    bound = 1 << (layer.accumulator_bits - 1)
    if acc.size and (acc.min() < -bound or acc.max() >= bound):  # §2: cannot happen for valid inputs
        raise ArtifactError(f"layer {layer.name!r}: accumulator exceeds its derived {layer.accumulator_bits}-bit width")
    if layer.activation == "sign":  # §7 binarization: the threshold is folded into the bias
        return (acc >= 0).astype(np.int64)
    return requantize(acc, layer.m0, layer.shift, layer.output.zero_point, layer.out_min, layer.out_max)


def conv2d_layer(layer: Layer, xs, acc_out: dict | None = None) -> np.ndarray:
    x = _check_input(xs[0], layer)
    acc = conv2d_acc(x, layer.values, layer.bias, layer.stride, layer.padding, layer.input.zero_point,
                     layer.input.binary, layer.groups)
    if acc_out is not None:
        acc_out[layer.name] = acc
    return _weighted(layer, acc)


def linear_layer(layer: Layer, xs, acc_out: dict | None = None) -> np.ndarray:
    x = _check_input(xs[0], layer)
    acc = linear_acc(x, layer.values, layer.bias, layer.input.zero_point, layer.input.binary)
    if acc_out is not None:
        acc_out[layer.name] = acc
    return _weighted(layer, acc)


def maxpool_layer(layer: Layer, xs, acc_out=None) -> np.ndarray:
    return maxpool(_check_input(xs[0], layer), layer.kernel, layer.stride, layer.padding, pad_value=layer.input.qmin)


def relu_layer(layer: Layer, xs, acc_out=None) -> np.ndarray:
    return relu(_check_input(xs[0], layer), layer.input.zero_point)


def avgpool_layer(layer: Layer, xs, acc_out=None) -> np.ndarray:
    """Average and global average pooling (§9)."""
    return avgpool(_check_input(xs[0], layer), layer.kernel, layer.stride, layer.padding, layer.input.zero_point,
                   int(layer.m0[0]), int(layer.shift[0]), layer.output.zero_point, layer.output.qmin,
                   layer.output.qmax)


def _join_inputs(layer: Layer, xs) -> list[np.ndarray]:
    if len(xs) != len(layer.input_formats):
        raise ArtifactError(f"layer {layer.name!r}: reads {len(layer.input_formats)} inputs, got {len(xs)}")
    return [_check_input(v, layer, f) for v, f in zip(xs, layer.input_formats)]


def add_layer(layer: Layer, xs, acc_out=None) -> np.ndarray:
    a, b = _join_inputs(layer, xs)
    for v in (a, b):
        if v.shape[1:] != tuple(layer.in_shape):
            raise ArtifactError(f"layer {layer.name!r}: input shape {v.shape[1:]} does not match {tuple(layer.in_shape)}")
    return add(a, b, layer.input_formats[0].zero_point, layer.input_formats[1].zero_point, layer.m0,
               int(layer.shift[0]), layer.output.zero_point, layer.out_min, layer.out_max)


def concat_layer(layer: Layer, xs, acc_out=None) -> np.ndarray:
    return concat(_join_inputs(layer, xs), layer.input_formats, layer.m0, layer.shift, layer.output)


def mul_layer(layer: Layer, xs, acc_out=None) -> np.ndarray:
    a, b = _join_inputs(layer, xs)
    gate = (layer.in_shape[0], 1, 1)
    if a.shape[1:] != tuple(layer.in_shape) or (b.shape[1:] != a.shape[1:] and b.shape[1:] != gate) or len(b) != len(a):
        raise ArtifactError(f"layer {layer.name!r}: mul of shapes {a.shape[1:]} and {b.shape[1:]}, expected "
                            f"{tuple(layer.in_shape)} and the same or {gate}")
    za, zb = (f.zero_point for f in layer.input_formats)
    return mul(a, b, za, zb, int(layer.m0[0]), int(layer.shift[0]), layer.output.zero_point, layer.output.qmin,
               layer.output.qmax)


def lut_layer(layer: Layer, xs, acc_out=None) -> np.ndarray:
    return lut(_check_input(xs[0], layer), layer.table)


def run_layer(layer: Layer, x, acc_out: dict | None = None) -> np.ndarray:
    """One layer on a batch ``x`` (N, *in_shape) of integers (an op that reads several
    inputs, such as add and concat: a list, one batch per input), by its op's golden function."""
    kind = layer.kind
    return kind.resolve("golden")(layer, list(x) if kind.joins else [x], acc_out)


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
    outputs, accs = {INPUT: x}, {}
    for layer in net.layers:
        srcs = [outputs[s] for s in net.sources(layer)]
        outputs[layer.name] = run_layer(layer, srcs if layer.kind.joins else srcs[0], accs)
    del outputs[INPUT]
    return GoldenResult(outputs=outputs, accumulators=accs)


def predict(net: QuantizedNetwork, x) -> np.ndarray:
    return run(net, x).predicted
