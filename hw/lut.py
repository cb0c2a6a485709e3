"""The table-activation engine (docs/integer-semantics.md §11): ``y = table[q]`` on a stream.

The layer's table (one output code per input code, ``2^bits`` words of the output's
width) is a ROM with a registered read port, the shape an FPGA block RAM or a LUT ROM with
its output register maps to.  One value per cycle: an input is taken whenever the output
register is empty or being emptied; a stalled output holds the read port (its enable is
the input handshake), so no value is lost or repeated.

Cycles, input valid and ``out`` ready throughout: ``in_size + 1`` (:data:`LUT_CYCLE_FORMULA`,
the one cycle of the registered read).
"""
from __future__ import annotations

from math import prod

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring

from quantrtl.hw.cyclemodel import RegisterNode
from quantrtl.hw.parts import rom, stream_ports
from quantrtl.model.numbers.artifact import Layer

__all__ = ["LutEngine", "LUT_CYCLE_FORMULA", "lut_cycles"]

#: :meth:`LutEngine.expected_cycles`, as the Verilog description JSON states it.
LUT_CYCLE_FORMULA = "in_size + 1"


def lut_cycles(in_shape) -> int:
    """First input handshake to last output handshake: one value per cycle, one of latency."""
    return prod(in_shape) + 1


class LutEngine(wiring.Component):
    """A ``lut`` layer: its table as a ROM with a registered read, one value per cycle."""

    #: No map of its own: a reader loads at the pace of the producer behind it (NetworkTop.occupancy).
    streams_through = True

    def __init__(self, layer: Layer, source_shapes: list[tuple] | None = None):
        if layer.op != "lut" or layer.table is None:
            raise ValueError(f"layer {layer.name!r} is {layer.op}, not a table activation")
        if layer.input.bits > 8 or layer.output.bits > 8:
            raise ValueError(f"layer {layer.name!r}: the stream carries codes of at most 8 bits")
        self.layer = layer
        super().__init__(stream_ports())

    @property
    def words(self) -> list[int]:
        return [int(v) for v in self.layer.table]

    @property
    def expected_cycles(self) -> int:
        return lut_cycles(self.layer.in_shape)

    @property
    def memory_bits(self) -> dict[str, int]:
        return {"table": len(self.words) * self.layer.output.bits}

    def cycle_node(self) -> RegisterNode:
        """One registered stage in the network's cycle model (``hw/cyclemodel.py``)."""
        return RegisterNode()

    def describe(self) -> dict:
        """What the Verilog description JSON says of this engine."""
        return {"function": dict(self.layer.function), "table_words": len(self.words),
                "table_bits": self.memory_bits["table"], "cycle_formula": LUT_CYCLE_FORMULA}

    def elaborate(self, platform):
        m = Module()
        read = rom(m, "table", self.words, self.layer.output.bits, domain="sync")
        full = Signal(name="full")  # the output register holds a value not yet taken
        take = Signal(name="take")
        m.d.comb += [self.inp.ready.eq(~full | self.out.ready), take.eq(self.inp.valid & self.inp.ready),
                     read.addr.eq(self.inp.payload[:self.layer.input.bits]), read.en.eq(take),
                     self.out.valid.eq(full), self.out.payload.eq(read.data)]
        with m.If(take):
            m.d.sync += full.eq(1)
        with m.Elif(self.out.ready):
            m.d.sync += full.eq(0)
        return m
