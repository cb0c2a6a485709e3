"""A toy op, registered in one place (:func:`register_toy_op`).

``toyflip`` complements every code, ``y = 2^bits − 1 − q`` (an elementwise op of one
input that keeps the format), with its golden function, its engine (a combinational
stream stage) and its example layer all here.  Loaded as a pytest plugin
(``-p tests.toy_op``), it registers itself before collection, so the registry-driven op
tests include it; nothing else in the tests names it.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Module
from amaranth.lib import wiring

from quantrtl.hw.parts import stream_ports
from quantrtl.model.numbers import ops
from quantrtl.model.numbers.artifact import Layer
from quantrtl.model.numbers.op_examples import random_format


def toyflip_golden(layer, xs, acc_out=None):
    return layer.input.qmax - np.asarray(xs[0], dtype=np.int64)


class ToyFlipEngine(wiring.Component):
    streams_through = True

    def __init__(self, layer, source_shapes=None):
        self.layer = layer
        super().__init__(stream_ports())

    @property
    def expected_cycles(self) -> int:
        return int(np.prod(self.layer.in_shape))

    @property
    def memory_bits(self) -> dict[str, int]:
        return {}

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.out.valid.eq(self.inp.valid), self.inp.ready.eq(self.out.ready),
                     self.out.payload.eq(self.layer.input.qmax - self.inp.payload)]
        return m


def toyflip_example(seed: int = 0):
    rng = np.random.default_rng(seed)
    shape, q = (2, 3, 4), random_format(rng)
    return Layer(name="flip", op="toyflip", in_shape=shape, out_shape=shape, input=q, output=q), [shape]


TOY_OP = ops.Op("toyflip", "complement of every code (a test's toy op)", toyflip_golden, ToyFlipEngine,
                keeps_format=True, example=toyflip_example)


def register_toy_op() -> None:
    """The one place the toy op is registered."""
    if "toyflip" not in ops.op_names():
        ops.register(TOY_OP)


def pytest_configure(config):
    register_toy_op()
