"""Co-simulation harness: the network top plus capture memories and a cycle counter.

The testbench only pushes the image into ``inp`` and waits for ``done``; everything
else happens in hardware, so Python does not touch every clock cycle:

* every tap and the output stream are written into their own capture memory as the
  handshakes happen (``out`` is always ready);
* a cycle counter runs from the first input handshake to the last output handshake,
  inclusive (the definition used by the cycle formulas), and each capture records the
  counter value of its first and last write;
* after ``done``, the testbench reads captures through ``rd_sel``/``rd_addr`` →
  ``rd_data`` (combinational) and ``rd_count``/``rd_first``/``rd_last``.

Capture 0..n-2 are the taps of the layers in order, capture n-1 is the output; the
input's last handshake is reported on ``in_last``.
"""
from __future__ import annotations

from math import prod

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from quantrtl.hw.network import NetworkTop

__all__ = ["CaptureHarness"]

COUNTER_BITS = 32


class CaptureHarness(wiring.Component):
    """Wraps :class:`NetworkTop` (with taps) for co-simulation."""

    def __init__(self, top: NetworkTop):
        if not top.tap_names and len(top.net.layers) > 1:
            raise ValueError("the network top must be built with taps=True")
        self.top = top
        self.captures = [(n, prod(top.net.layer(n).out_shape)) for n in top.tap_names]
        last = top.net.layers[-1]
        self.captures.append((last.name, prod(last.out_shape)))
        depth = max(size for _, size in self.captures)
        super().__init__({
            "inp": In(stream.Signature(unsigned(8))),
            "done": Out(1),
            "cycles": Out(COUNTER_BITS),
            "in_last": Out(COUNTER_BITS),
            "rd_sel": In(range(max(2, len(self.captures)))),
            "rd_addr": In(range(max(2, depth))),
            "rd_data": Out(8),
            "rd_count": Out(range(depth + 2)),
            "rd_first": Out(COUNTER_BITS),
            "rd_last": Out(COUNTER_BITS),
        })

    @property
    def expected_cycles(self) -> int:
        return self.top.expected_cycles

    @property
    def memory_bits(self) -> dict[str, int]:
        return self.top.memory_bits

    def elaborate(self, platform):
        m = Module()
        top = m.submodules.top = self.top
        m.d.comb += [top.inp.payload.eq(self.inp.payload), top.inp.valid.eq(self.inp.valid),
                     self.inp.ready.eq(top.inp.ready), top.out.ready.eq(1)]
        in_fire = self.inp.valid & self.inp.ready
        started = Signal()
        counter = Signal(COUNTER_BITS)
        now = Mux(started, counter + 1, 1)  # value of the counter for the current cycle
        with m.If((in_fire | started) & ~self.done):
            m.d.sync += [started.eq(1), counter.eq(now)]
        with m.If(in_fire):
            m.d.sync += self.in_last.eq(now)
        m.d.comb += self.cycles.eq(counter)

        ports = [(getattr(top, f"tap_{n}"), n) for n in top.tap_names] + [(None, self.captures[-1][0])]
        rd_data, rd_count, rd_first, rd_last = [], [], [], []
        out_size = self.captures[-1][1]
        for i, ((port, name), (_, size)) in enumerate(zip(ports, self.captures)):
            valid = top.out.valid if port is None else port.valid
            payload = top.out.payload if port is None else port.payload
            mem = m.submodules[f"cap_{name}"] = Memory(shape=unsigned(8), depth=size, init=[])
            wp, rp = mem.write_port(), mem.read_port(domain="comb")
            count = Signal(range(size + 2), name=f"count_{name}")
            first, last = Signal(COUNTER_BITS, name=f"first_{name}"), Signal(COUNTER_BITS, name=f"last_{name}")
            m.d.comb += [wp.addr.eq(count), wp.data.eq(payload), rp.addr.eq(self.rd_addr)]
            with m.If(valid):
                m.d.comb += wp.en.eq(count < size)
                with m.If(count <= size):  # one extra value is remembered as "too many"
                    m.d.sync += count.eq(count + 1)
                with m.If(count == 0):
                    m.d.sync += first.eq(now)
                m.d.sync += last.eq(now)
            if port is None:
                with m.If(valid & (count == out_size - 1)):
                    m.d.sync += self.done.eq(1)
            rd_data.append(rp.data)
            rd_count.append(count)
            rd_first.append(first)
            rd_last.append(last)
        for sig, values in ((self.rd_data, rd_data), (self.rd_count, rd_count), (self.rd_first, rd_first),
                            (self.rd_last, rd_last)):
            with m.Switch(self.rd_sel):
                for i, v in enumerate(values):
                    with m.Case(i):
                        m.d.comb += sig.eq(v)
        return m

