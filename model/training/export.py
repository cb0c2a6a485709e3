"""Export a :class:`~model.quantize.QuantModel` to the integer artifact.

The integer constants follow docs/integer-semantics.md §1:

* weight codes and per-channel scale ``S_w`` from the format's codec;
* ``bias_int = round_half_even(b / (S_w[c] * S_x))``;
* ``M = S_w[c] * S_x / S_y`` → ``(M0, n)`` by :func:`quantrtl.model.numbers.artifact.quantize_multiplier`;
* add (§8): ``S_a / S_y`` and ``S_b / S_y`` with one shift (:func:`~quantrtl.model.numbers.artifact.add_multipliers`);
  average pooling (§9): ``1 / k²``; concat (§10): ``S_i / S_y`` per input;
* a table activation (§11): its table from the input and output formats.
"""
from __future__ import annotations

import copy

import numpy as np
from torch import nn

from quantrtl.model.numbers.artifact import Layer, QuantizedNetwork, add_multipliers, expected_out_shape, \
    quantize_multiplier, validate
from quantrtl.model.numbers.formats import ActivationFormat
from quantrtl.model.training.graph import INPUT, pool_geometry
from quantrtl.model.training.quantize import QuantAdd, QuantAvgPool, QuantConcat, QuantLayer, QuantLut, QuantModel, \
    QuantMul


def _qp(fmt: ActivationFormat) -> ActivationFormat:
    """The format with plain Python numbers (the artifact's JSON types)."""
    return ActivationFormat(scale=float(fmt.scale), zero_point=int(fmt.zero_point), bits=int(fmt.bits),
                            encoding=fmt.encoding)


def export(qm: QuantModel, input_shape: tuple[int, ...], name: str = "digits", metadata: dict | None = None) -> QuantizedNetwork:
    """Build the validated :class:`QuantizedNetwork` of ``qm`` for inputs of ``input_shape`` (C, H, W)."""
    layers: list[Layer] = []
    shapes = {INPUT: tuple(input_shape)}
    for lname, step, ins, in_fmts in qm.walk():
        qins = tuple(_qp(f) for f in in_fmts)
        qin, shape = qins[0], shapes[ins[0]]
        if isinstance(step, QuantLayer):
            layer = _weight_layer(lname, step, shape, qin)
        elif isinstance(step, (QuantAdd, QuantConcat)):
            out = _qp(step.out_q.fmt)
            if isinstance(step, QuantAdd):
                consts = add_multipliers([f.scale for f in qins], out.scale)
                activation = "relu" if step.relu else "none"
            else:
                consts = [quantize_multiplier(f.scale / out.scale) for f in qins]
                activation = "none"
            layer = Layer(name=lname, op="add" if isinstance(step, QuantAdd) else "concat", in_shape=shape,
                          out_shape=shape, input=qin, output=out, activation=activation, inputs=tuple(ins),
                          input_formats=qins, m0=np.array([c[0] for c in consts], dtype=np.int64),
                          shift=np.array([c[1] for c in consts], dtype=np.int64))
        elif isinstance(step, QuantAvgPool):
            m = step.module
            geo = pool_geometry(m) if m is not None else {"kernel": tuple(shape[1:]), "stride": tuple(shape[1:]),
                                                          "padding": (0, 0)}  # global: the whole map
            m0, n = quantize_multiplier(1.0 / (geo["kernel"][0] * geo["kernel"][1]))
            layer = Layer(name=lname, op="gap" if m is None else "avgpool", in_shape=shape, out_shape=shape,
                          input=qin, output=qin, m0=np.array([m0], dtype=np.int64),
                          shift=np.array([n], dtype=np.int64), **geo)
        elif isinstance(step, QuantMul):  # §12: the map first, a (C, 1, 1) gate second
            if len(shapes[ins[0]]) == 3 and shapes[ins[0]][1:] == (1, 1) and shapes[ins[1]][1:] != (1, 1):
                ins, qins = ins[::-1], qins[::-1]
            out = _qp(step.out_q.fmt)
            m0, n = quantize_multiplier(qins[0].scale * qins[1].scale / out.scale)
            layer = Layer(name=lname, op="mul", in_shape=shapes[ins[0]], out_shape=shapes[ins[0]], input=qins[0],
                          output=out, inputs=tuple(ins), input_formats=qins, m0=np.array([m0], dtype=np.int64),
                          shift=np.array([n], dtype=np.int64))
        elif isinstance(step, QuantLut):  # §11: the table from the two formats, as the forward pass applies it
            out = _qp(step.out_q.fmt)
            layer = Layer(name=lname, op="lut", in_shape=shape, out_shape=shape, input=qin, output=out,
                          function=dict(step.function.spec), table=step.table(qin))
        elif isinstance(step, nn.MaxPool2d):
            layer = Layer(name=lname, op="maxpool", in_shape=shape, out_shape=shape, input=qin, output=qin,
                          **pool_geometry(step))
        else:  # a ReLU not fused into the conv/linear/add before it
            layer = Layer(name=lname, op="relu", in_shape=shape, out_shape=shape, input=qin, output=qin)
        layer.inputs = tuple(ins)
        layer.out_shape = expected_out_shape(layer, [shapes[i] for i in ins])
        layers.append(layer)
        shapes[lname] = layer.out_shape
    net = QuantizedNetwork(name=name, quantizer=qm.fmt.name, input_shape=tuple(input_shape),
                           input=_qp(qm.input_fmt), layers=layers, metadata=copy.deepcopy(metadata or {}))
    validate(net)
    return net


def _weight_layer(name: str, step: QuantLayer, shape, qin: ActivationFormat) -> Layer:
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
                     stride=tuple(m.stride), padding=tuple(m.padding), groups=int(m.groups), **common)
    in_shape = (int(np.prod(shape)),)  # read flattened in C, H, W order
    return Layer(op="linear", in_shape=in_shape, out_shape=(w.shape[0],), **common)
