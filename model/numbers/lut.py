"""Lookup-table activations: any elementwise function of one activation as a table.

A ``lut`` layer maps each input code ``q`` (``0 .. 2^bits − 1``) to the output code
``table[q]``.  The table is computed once, here, from the input format's real values into
the output format (docs/integer-semantics.md §11)::

    table[q] = clamp(Z_y + round_half_even(f(S_x · (q − Z_x)) / S_y), 0, 2^bits_y − 1)

in float64, and stored in the artifact; the golden model and the hardware apply the stored
table, never the function.  :data:`FUNCTIONS` is the list of functions (the one place
that names them): each with its parameters and their defaults, its NumPy definition and
the PyTorch and ONNX forms that map to it (the mapping code lives with the importers,
``model/training/graph.py`` and ``model/training/onnx_import.py``).

NumPy only (layer 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from quantrtl.model.numbers.formats import ActivationFormat

__all__ = ["LutFunction", "FUNCTIONS", "function", "function_names", "check_function", "build_table", "INPUT_BITS"]

#: Input widths a table may index (2^bits entries).
INPUT_BITS = range(2, 9)

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


@dataclass(frozen=True)
class LutFunction:
    """One elementwise function: ``fn(x, **params)`` on float64 arrays."""

    name: str
    fn: Callable
    summary: str
    #: Parameter name → default (floats, or a string where the function takes a mode).
    params: dict = field(default_factory=dict)
    #: The PyTorch forms mapped to it (for the docs and the error text).
    torch: tuple[str, ...] = ()
    #: The ONNX op types mapped to it.
    onnx: tuple[str, ...] = ()
    #: Allowed values of a string parameter.
    choices: dict = field(default_factory=dict)

    def __call__(self, x, **params):
        return self.fn(np.asarray(x, dtype=np.float64), **{**self.params, **params})


FUNCTIONS: tuple[LutFunction, ...] = (
    LutFunction("sigmoid", _sigmoid, "1 / (1 + e^-x)", torch=("nn.Sigmoid", "torch.sigmoid", "F.sigmoid", ".sigmoid()"),
                onnx=("Sigmoid",)),
    LutFunction("tanh", np.tanh, "tanh x", torch=("nn.Tanh", "torch.tanh", "F.tanh", ".tanh()"), onnx=("Tanh",)),
    LutFunction("hardswish", lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0, "x · relu6(x + 3) / 6",
                torch=("nn.Hardswish", "F.hardswish"), onnx=("HardSwish",)),
    LutFunction("hardsigmoid", lambda x, alpha, beta: np.clip(alpha * x + beta, 0.0, 1.0),
                "clamp(alpha · x + beta, 0, 1)", params={"alpha": 1.0 / 6.0, "beta": 0.5},
                torch=("nn.Hardsigmoid", "F.hardsigmoid"), onnx=("HardSigmoid",)),
    LutFunction("silu", lambda x: x * _sigmoid(x), "x · sigmoid(x) (swish)", torch=("nn.SiLU", "F.silu"),
                onnx=("Mul(x, Sigmoid(x))",)),
    LutFunction("gelu", _gelu, "0.5 x (1 + erf(x / √2)), or its tanh approximation", params={"approximate": "none"},
                choices={"approximate": ("none", "tanh")}, torch=("nn.GELU", "F.gelu"), onnx=("Gelu",)),
    LutFunction("leakyrelu", lambda x, alpha: np.where(x >= 0, x, alpha * x), "x, or alpha · x below 0",
                params={"alpha": 0.01}, torch=("nn.LeakyReLU", "F.leaky_relu"), onnx=("LeakyRelu",)),
    LutFunction("elu", lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))),
                "x, or alpha · (e^x − 1) below 0", params={"alpha": 1.0}, torch=("nn.ELU", "F.elu"), onnx=("Elu",)),
    LutFunction("clamp", lambda x, lo, hi: np.clip(x, lo, hi), "clamp(x, lo, hi) (ReLU6 and hard-tanh not fused)",
                params={"lo": 0.0, "hi": 6.0},
                torch=("nn.ReLU6", "nn.Hardtanh", "torch.clamp", "F.relu6", "F.hardtanh", ".clamp()"),
                onnx=("Clip",)),
)


def function_names() -> list[str]:
    return [f.name for f in FUNCTIONS]


def function(name: str) -> LutFunction:
    for f in FUNCTIONS:
        if f.name == name:
            return f
    raise ValueError(f"unknown table function {name!r} (supported: {', '.join(function_names())})")


def check_function(spec) -> str | None:
    """Why ``spec`` (``{"name": ..., <param>: value, ...}``) is not a valid function, or None."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return f"function must be an object with a 'name', got {spec!r}"
    try:
        f = function(spec["name"])
    except ValueError as e:
        return str(e)
    for k, v in spec.items():
        if k == "name":
            continue
        if k not in f.params:
            return f"function {f.name!r} has no parameter {k!r} (its parameters: {', '.join(f.params) or 'none'})"
        if k in f.choices:
            if v not in f.choices[k]:
                return f"function {f.name!r}: {k} must be one of {', '.join(f.choices[k])}, got {v!r}"
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"function {f.name!r}: {k} must be a finite number, got {v!r}"
    if f.name == "clamp" and not spec.get("lo", 0.0) < spec.get("hi", 6.0):
        return f"function 'clamp': lo {spec.get('lo')} must be below hi {spec.get('hi')}"
    return None


def build_table(spec: dict, inp: ActivationFormat, out: ActivationFormat) -> np.ndarray:
    """The ``2^inp.bits`` output codes of ``spec`` from ``inp`` into ``out`` (module docstring)."""
    why = check_function(spec)
    if why:
        raise ValueError(why)
    if inp.binary or out.binary or inp.bits not in INPUT_BITS:
        raise ValueError(f"a table activation maps affine {INPUT_BITS.start}..{INPUT_BITS.stop - 1}-bit codes, "
                         f"got input {inp.bits}-bit {inp.encoding}, output {out.encoding}")
    params = {k: v for k, v in spec.items() if k != "name"}
    q = np.arange(1 << inp.bits)
    y = function(spec["name"])(inp.scale * (q - inp.zero_point).astype(np.float64), **params)
    codes = np.rint(np.asarray(y, dtype=np.float64) / out.scale) + out.zero_point
    return np.clip(codes, out.qmin, out.qmax).astype(np.int64)
