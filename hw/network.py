"""The network top: the layer engines of a whole artifact, chained by streams.

Ports: ``inp`` (the image, stream order), ``out`` (the last layer's outputs, e.g. the
logits) and, with ``taps=True``, one observe-only port per inner layer,
``tap_<layer>`` = {payload, valid}, that pulses with each handshake between that layer
and the next (so a testbench can check every layer without slowing the design).
"""
from __future__ import annotations

from math import prod

import operator

from amaranth.hdl import Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from quantrtl.model.numbers.artifact import QuantizedNetwork

from quantrtl.hw.engines import make_engine

__all__ = ["NetworkTop", "TapSignature"]



def TapSignature() -> wiring.Signature:
    return wiring.Signature({"payload": Out(unsigned(8)), "valid": Out(1)})


class NetworkTop(wiring.Component):
    """All layers of ``net`` as one streaming design.

    Parameters
    ----------
    net : QuantizedNetwork
    lanes : int
        MAC lanes of every conv2d/linear engine.
    sparse, index_bits : bool, int
        Zero-skipping engines (``hw/sparse.py``) with relative indices of ``index_bits`` bits.
    pipeline : int
        MAC array pipeline stages (0..2).
    taps : bool
        Expose ``tap_<layer>`` ports for every layer but the last.
    tap_faults : dict, optional
        Injected control faults, layer name → fan-in position (``hw/faults.py``).
    """

    def __init__(self, net: QuantizedNetwork, lanes: int = 8, pipeline: int = 0, taps: bool = False,
                 sparse: bool = False, index_bits: int = 4, tap_faults: dict[str, int] | None = None):
        self.net = net
        self.lanes = operator.index(lanes)
        self.pipeline = operator.index(pipeline)
        self.sparse = bool(sparse)
        self.engines = {}
        if not net.is_chain:
            branch = next(l for l in net.layers if len(net.sources(l)) > 1 or net.sources(l)[0] != (
                net.layers[net.layers.index(l) - 1].name if net.layers.index(l) else "input"))
            raise ValueError(f"layer {branch.name!r} reads {list(net.sources(branch))}: the network top chains "
                             "engines and has no fork or skip buffer yet (quantize and the golden model take graphs)")
        prev = tuple(net.input_shape)
        for layer in net.layers:
            self.engines[layer.name] = make_engine(layer, lanes=self.lanes, pipeline=self.pipeline,
                                                   source_shape=prev if layer.op == "linear" else None,
                                                   sparse=sparse, index_bits=index_bits,
                                                   tap_fault=(tap_faults or {}).get(layer.name))
            prev = tuple(layer.out_shape)
        self.tap_names = [l.name for l in net.layers[:-1]] if taps else []
        members = {"inp": In(stream.Signature(unsigned(8))), "out": Out(stream.Signature(unsigned(8)))}
        members.update({f"tap_{n}": Out(TapSignature()) for n in self.tap_names})
        super().__init__(members)

    @property
    def expected_cycles(self) -> int:
        """Cycles for one image, first input handshake to last output handshake.

        Layer i+1 loads while layer i emits, and its last input handshake *is* layer i's
        last output handshake, so each layer adds its cycles after its last input:
        ``in_size(first) + sum(cycles(layer) - in_size(layer))``.
        """
        first = self.net.layers[0]
        total = prod(first.in_shape)
        for layer, e in zip(self.net.layers, self.engines.values()):
            total += e.expected_cycles - prod(layer.in_shape)
        return total

    @property
    def memory_bits(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for e in self.engines.values():
            for k, v in e.memory_bits.items():
                total[k] = total.get(k, 0) + v
        return total

    def elaborate(self, platform):
        m = Module()
        engines = list(self.engines.items())
        for name, e in engines:
            m.submodules[name] = e
        connect(m, wiring.flipped(self.inp), engines[0][1].inp)
        for (name, a), (_, b) in zip(engines, engines[1:]):
            connect(m, a.out, b.inp)
            if name in self.tap_names:
                tap = getattr(self, f"tap_{name}")
                m.d.comb += [tap.payload.eq(a.out.payload), tap.valid.eq(a.out.valid & b.inp.ready)]
        connect(m, engines[-1][1].out, wiring.flipped(self.out))
        return m
