"""A small example layer of every built-in op without weights, with random formats and
constants (the op registry's ``example``: what the registry-driven completeness test
builds each op from, and a template for a plug-in op's own example).

Each function takes a seed and returns ``(layer, in_shapes)``.  Layers with weights
(conv2d, linear) have no example here: their engines depend on the quantizer family and
are checked family by family (``tests/test_families.py``).  NumPy only.
"""
from __future__ import annotations

import numpy as np

from quantrtl.model.numbers.artifact import Layer, add_multipliers, expected_out_shape, quantize_multiplier
from quantrtl.model.numbers.formats import ActivationFormat
from quantrtl.model.numbers.lut import FUNCTIONS, build_table

__all__ = ["maxpool", "relu", "avgpool", "gap", "add", "concat", "mul", "lut", "random_format"]


def random_format(rng, bits: int = 8) -> ActivationFormat:
    """An affine format with a random scale and zero point."""
    return ActivationFormat(scale=float(rng.uniform(0.01, 0.1)), zero_point=int(rng.integers(0, 1 << bits)), bits=bits)


def _shape(rng) -> tuple[int, int, int]:
    return (int(rng.integers(1, 4)), int(rng.integers(3, 6)), int(rng.integers(3, 6)))


def _window(op: str, seed: int):
    rng = np.random.default_rng(seed)
    shape = _shape(rng)
    qin = random_format(rng)
    if op == "gap":
        kernel, stride, padding = shape[1:], shape[1:], (0, 0)
    else:
        kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        padding = (int(rng.integers(0, kernel[0] // 2 + 1)), int(rng.integers(0, kernel[1] // 2 + 1)))
    consts = {}
    if op != "maxpool":
        m0, n = quantize_multiplier(1.0 / (kernel[0] * kernel[1]))
        consts = dict(m0=np.array([m0]), shift=np.array([n]))
    layer = Layer(name=op, op=op, in_shape=shape, out_shape=shape, input=qin, output=qin, kernel=tuple(kernel),
                  stride=tuple(stride), padding=tuple(padding), **consts)
    layer.out_shape = expected_out_shape(layer)
    return layer, [shape]


def maxpool(seed: int = 0):
    return _window("maxpool", seed)


def avgpool(seed: int = 0):
    return _window("avgpool", seed)


def gap(seed: int = 0):
    return _window("gap", seed)


def relu(seed: int = 0):
    rng = np.random.default_rng(seed)
    shape, q = _shape(rng), random_format(rng)
    return Layer(name="relu", op="relu", in_shape=shape, out_shape=shape, input=q, output=q), [shape]


def _join(op: str, seed: int):
    rng = np.random.default_rng(seed)
    first = _shape(rng)
    shapes = [first, first] if op == "add" else [first, (int(rng.integers(1, 4)),) + first[1:]]
    fmts = tuple(random_format(rng) for _ in shapes)
    out = random_format(rng)
    if op == "add":
        consts = add_multipliers([f.scale for f in fmts], out.scale)
    else:
        consts = [quantize_multiplier(f.scale / out.scale) for f in fmts]
    layer = Layer(name=op, op=op, in_shape=first, out_shape=first, input=fmts[0], output=out,
                  activation="relu" if op == "add" and rng.random() < 0.5 else "none",
                  inputs=tuple(f"in{j}" for j in range(len(shapes))), input_formats=fmts,
                  m0=np.array([c[0] for c in consts]), shift=np.array([c[1] for c in consts]))
    layer.out_shape = expected_out_shape(layer, shapes)
    return layer, shapes


def add(seed: int = 0):
    return _join("add", seed)


def concat(seed: int = 0):
    return _join("concat", seed)


def mul(seed: int = 0):
    """A product of two maps (odd seeds) or of a map and its (C, 1, 1) channel gate (even)."""
    rng = np.random.default_rng(seed)
    shape = _shape(rng)
    shapes = [shape, shape if seed % 2 else (shape[0], 1, 1)]
    fmts = (random_format(rng), random_format(rng))
    out = random_format(rng)
    m0, n = quantize_multiplier(fmts[0].scale * fmts[1].scale / out.scale)
    layer = Layer(name="mul", op="mul", in_shape=shape, out_shape=shape, input=fmts[0], output=out,
                  inputs=("in0", "in1"), input_formats=fmts, m0=np.array([m0]), shift=np.array([n]))
    return layer, shapes


def lut(seed: int = 0):
    """A table activation of a random function (parameters at their defaults) between random
    2..8-bit input and output formats."""
    rng = np.random.default_rng(seed)
    shape = _shape(rng)
    f = FUNCTIONS[int(rng.integers(len(FUNCTIONS)))]
    qin, qout = random_format(rng, int(rng.integers(2, 9))), random_format(rng, int(rng.integers(2, 9)))
    spec = {"name": f.name}
    return Layer(name="lut", op="lut", in_shape=shape, out_shape=shape, input=qin, output=qout, function=spec,
                 table=build_table(spec, qin, qout)), [shape]
