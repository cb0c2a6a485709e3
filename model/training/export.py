"""Export a :class:`~model.quantize.QuantModel` to the integer artifact.

The integer constants follow docs/integer-semantics.md §1:

* weight codes and per-channel scale ``S_w`` from the format's codec;
* ``bias_int = round_half_even(b / (S_w[c] * S_x))``;
* ``M = S_w[c] * S_x / S_y`` → ``(M0, n)`` by :func:`quantrtl.model.numbers.artifact.quantize_multiplier`.
"""
from __future__ import annotations

import copy

import numpy as np
from torch import nn

from quantrtl.model.numbers.artifact import Layer, QuantizedNetwork, quantize_multiplier, validate
from quantrtl.model.numbers.formats import ActivationFormat
from quantrtl.model.training.quantize import QuantLayer, QuantModel


def _qp(fmt: ActivationFormat) -> ActivationFormat:
    """The format with plain Python numbers (the artifact's JSON types)."""
    return ActivationFormat(scale=float(fmt.scale), zero_point=int(fmt.zero_point), bits=int(fmt.bits),
                            encoding=fmt.encoding)


def export(qm: QuantModel, input_shape: tuple[int, ...], name: str = "digits", metadata: dict | None = None) -> QuantizedNetwork:
    """Build the validated :class:`QuantizedNetwork` of ``qm`` for inputs of ``input_shape`` (C, H, W)."""
    layers: list[Layer] = []
    shape = tuple(input_shape)
    pending_flatten = False
    for lname, step, in_fmt in qm.walk():
        qin = _qp(in_fmt)
        if isinstance(step, nn.Flatten):
            pending_flatten = True  # a linear layer reads its input flattened in C, H, W order
            continue
        if isinstance(step, QuantLayer):
            layer = _weight_layer(lname, step, shape, qin, pending_flatten)
        elif isinstance(step, nn.MaxPool2d):
            pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))
            layer = Layer(name=lname, op="maxpool", in_shape=shape, out_shape=shape, input=qin, output=qin,
                          kernel=pair(step.kernel_size), stride=pair(step.stride if step.stride is not None else step.kernel_size),
                          padding=pair(step.padding))
        else:  # a ReLU not fused into a preceding conv/linear
            layer = Layer(name=lname, op="relu", in_shape=shape, out_shape=shape, input=qin, output=qin)
        from quantrtl.model.numbers.artifact import expected_out_shape
        layer.out_shape = expected_out_shape(layer)
        layers.append(layer)
        shape = layer.out_shape
        pending_flatten = False if isinstance(step, QuantLayer) else pending_flatten
    net = QuantizedNetwork(name=name, quantizer=qm.fmt.name, input_shape=tuple(input_shape),
                           input=_qp(qm.input_fmt), layers=layers, metadata=copy.deepcopy(metadata or {}))
    validate(net)
    return net


def _weight_layer(name: str, step: QuantLayer, shape, qin: ActivationFormat, flatten: bool) -> Layer:
    m = step.module
    w = m.weight.detach().cpu().double().numpy()
    q = step.quantized(shape)
    bias = m.bias.detach().cpu().double().numpy() if m.bias is not None else np.zeros(w.shape[0])
    acc_scale = q.scale * qin.scale
    bias_int = np.rint(bias / acc_scale).astype(np.int64)
    out_fmt = step.out_q.fmt
    if step.binarize:  # sign(acc): the requantization constants are M = 1 (unused by the comparator)
        consts = [quantize_multiplier(1.0)] * len(acc_scale)
    else:
        consts = [quantize_multiplier(float(s) / out_fmt.scale) for s in acc_scale]
    activation = "sign" if step.binarize else "relu" if step.relu else "none"
    common = dict(name=name, input=qin, output=_qp(out_fmt), activation=activation,
                  format=q.format, codes=q.codes, bias=bias_int,
                  m0=np.array([c[0] for c in consts], dtype=np.int64),
                  shift=np.array([c[1] for c in consts], dtype=np.int64),
                  weight_scale=np.asarray(q.scale, dtype=np.float64))
    if isinstance(m, nn.Conv2d):
        return Layer(op="conv2d", in_shape=shape, out_shape=shape, kernel=tuple(m.kernel_size),
                     stride=tuple(m.stride), padding=tuple(m.padding), **common)
    in_shape = (int(np.prod(shape)),) if flatten or len(shape) != 1 else shape
    return Layer(op="linear", in_shape=in_shape, out_shape=(w.shape[0],), **common)
