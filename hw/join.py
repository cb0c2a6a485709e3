"""Engines that join streams: residual addition (docs/integer-semantics.md §8) and channel
concatenation (§10).

Each input has its own activation memory, a double buffer of two maps, and loads on its
own (``inp0``, ``inp1``, … accept while their memory has a free map), so a join never
makes one branch wait for another: in a network top whose producer feeds both a branch
and a join (a residual block's skip path), the producer's stream forks to the branch and
to the join's skip input, which buffers the whole map (the *skip buffer*, in
``memory_bits``) while the branch computes, and takes the next image's map meanwhile
(images streamed back to back do not wait for the whole block to drain).  When every
input has arrived, the join emits its output map in stream order, one value per cycle::

    add:     y[i] = clamp(Z_y + ((M_a·(a[i] − Z_a) + M_b·(b[i] − Z_b) + 2^(n−1)) >> n), lo, 255)
    concat:  pixel p, channel c of input j: clamp(Z_y + (((x_j − Z_j)·M_j + 2^(n_j−1)) >> n_j), 0, 255)

Cycles, all inputs valid and ``out`` ready: the last input's arrival, then
``out_size + 2`` (:data:`JOIN_CYCLE_FORMULA`).
"""
from __future__ import annotations

from math import prod

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from quantrtl.hw.arith import all_of, signed_width
from quantrtl.hw.parts import ActivationBuffer, code_width, pack, requant_layout, rom
from quantrtl.hw.requant import Requantizer
from quantrtl.model.numbers.artifact import Layer

__all__ = ["JoinEngine", "JOIN_CYCLE_FORMULA", "join_tail"]

#: :meth:`JoinEngine.expected_cycles`, as the Verilog description JSON states it.
JOIN_CYCLE_FORMULA = "max_j(in_size_j) + out_size + 2"


def join_tail(out_size: int) -> int:
    """Cycles after a join's last input handshake until its last output handshake (inclusive)."""
    return out_size + 2


class JoinEngine(wiring.Component):
    """An ``add``, ``concat`` or ``mul`` layer: input streams ``inp0 … inp{n−1}``, one ``out``."""

    def __init__(self, layer: Layer, source_shapes: list[tuple] | None = None):
        if layer.op not in ("add", "concat", "mul"):
            raise ValueError(f"layer {layer.name!r} is {layer.op}, not add, concat or mul")
        if layer.op == "add":
            source_shapes = [tuple(layer.in_shape)] * 2
        elif layer.op == "mul":
            shape = tuple(layer.in_shape)
            if source_shapes is None or len(source_shapes) != 2 or tuple(source_shapes[0]) != shape or \
                    tuple(source_shapes[1]) not in (shape, (shape[0], 1, 1)):
                raise ValueError(f"layer {layer.name!r}: mul needs its inputs' shapes, {shape} and {shape} or "
                                 f"{(shape[0], 1, 1)}; got {source_shapes}")
        elif source_shapes is None or len(source_shapes) != len(layer.input_formats) or any(
                len(s) != 3 or tuple(s[1:]) != tuple(layer.out_shape[1:]) for s in source_shapes) or \
                sum(s[0] for s in source_shapes) != layer.out_shape[0]:
            raise ValueError(f"layer {layer.name!r}: concat needs its inputs' (C, H, W) shapes, one per input, "
                             f"whose channels sum to {layer.out_shape[0]}; got {source_shapes}")
        self.in_shapes = [tuple(s) for s in source_shapes]
        wide = 16 if layer.op == "add" else 8  # an add's operand may be a wide code (a conv's, §8)
        for q, top in [(f, wide) for f in layer.input_formats] + [(layer.output, 8)]:
            if q.binary or not 2 <= q.bits <= top:
                raise ValueError(f"layer {layer.name!r}: joins take 2- to 8-bit affine activations (an add's inputs "
                                 f"up to 16 bits), got {q.bits} bits ({q.encoding})")
        self.layer = layer
        self.fmts = tuple(layer.input_formats)
        self.widths = [code_width(f) for f in self.fmts]
        self.channels = [s[0] for s in self.in_shapes]
        members = {f"inp{j}": In(stream.Signature(unsigned(w))) for j, w in enumerate(self.widths)}
        members["out"] = Out(stream.Signature(unsigned(8)))
        super().__init__(members)

    @property
    def inputs(self) -> list:
        return [getattr(self, f"inp{j}") for j in range(len(self.fmts))]

    @property
    def in_sizes(self) -> list[int]:
        return [prod(s) for s in self.in_shapes]

    @property
    def out_size(self) -> int:
        return prod(self.layer.out_shape)

    @property
    def expected_cycles(self) -> int:
        return max(self.in_sizes) + join_tail(self.out_size)

    @property
    def memory_bits(self) -> dict[str, int]:
        """Every input's double buffer (an add's skip input is the residual block's skip
        buffer), and a concat's ROM of per-input requantization constants (an add's two
        multipliers are constants of its datapath)."""
        bits = {"join_buffers": 2 * sum(w * size for w, size in zip(self.widths, self.in_sizes))}
        if self.layer.op == "concat":
            bits["requant"] = len(self.layer.m0) * requant_layout(int(max(self.layer.shift))).size
        return bits

    def add_code(self, m: Module, operands) -> Requantizer:
        """The add's requantizer on its two operand codes (``M_a·(a − Z_a) + M_b·(b − Z_b)``)."""
        layer = self.layer
        (za, zb), (ma, mb), shift = (f.zero_point for f in self.fmts), (int(v) for v in layer.m0), int(layer.shift[0])
        top = max(f.qmax for f in self.fmts)
        width = signed_width(-top * (ma + mb), top * (ma + mb))
        total = Signal(signed(width), name="sum")
        m.d.comb += total.eq((operands[0] - za) * ma + (operands[1] - zb) * mb)
        rq = m.submodules.requant = Requantizer(width, (shift, shift), layer.output.zero_point, layer.out_min,
                                                layer.out_max)
        m.d.comb += [rq.acc.eq(total), rq.m0.eq(1), rq.shift.eq(shift)]
        return rq

    def concat_code(self, m: Module, sel, operands) -> Requantizer:
        """The concat's requantizer on the code of input ``sel`` (``operands[sel]``), with that
        input's ``M0`` and shift."""
        layer = self.layer
        shifts = [int(v) for v in layer.shift]
        rq = m.submodules.requant = Requantizer(10, (min(shifts), max(shifts)), layer.output.zero_point,
                                                layer.output.qmin, layer.output.qmax)
        # each input's M0 and shift from a ROM (a read port, not a case statement: a
        # 4-state simulator evaluates it before the selector first changes)
        consts = requant_layout(max(shifts))
        rq_rom = rom(m, "requant_rom", [pack(consts, [dict(m0=int(mj), shift=nj)])
                                        for mj, nj in zip(layer.m0, shifts)], consts.size)
        m.d.comb += rq_rom.addr.eq(sel)
        c = data.View(consts, rq_rom.data)
        x = Signal(signed(10), name="centered")
        with m.Switch(sel):
            for j, f in enumerate(self.fmts):
                with m.Case(j):
                    m.d.comb += x.eq(operands[j] - f.zero_point)
        m.d.comb += [rq.acc.eq(x), rq.m0.eq(c.m0), rq.shift.eq(c.shift)]
        return rq

    def elaborate(self, platform):
        m = Module()
        layer, n = self.layer, len(self.fmts)
        bufs = [ActivationBuffer(m, self, size, 1, name=f"in{j}", inp=port, slots=2, width=width)
                for j, (size, port, width) in enumerate(zip(self.in_sizes, self.inputs, self.widths))]
        finish = Signal(name="finish")  # the last output is taken: every input's map is released
        go = Signal(name="go")
        m.d.comb += go.eq(all_of([b.running for b in bufs]))
        out = self.out
        en = Signal(name="en")
        m.d.comb += en.eq(~out.valid | out.ready)
        issued = Signal(range(self.out_size + 1), name="issued")
        issuing = Signal(name="issuing")
        m.d.comb += issuing.eq(go & (issued != self.out_size))
        v_b = Signal(name="valid_b")
        with m.If(en):
            m.d.sync += v_b.eq(issuing)
            with m.If(issuing):
                m.d.sync += issued.eq(issued + 1)
        for b in bufs:
            m.d.comb += b.rps[0].en.eq(en)

        if layer.op == "mul":
            # the map in stream order (channel fastest); the second input the same map, or
            # one gate value per channel, read at the map value's channel
            (za, zb), m0, shift = (f.zero_point for f in self.fmts), int(layer.m0[0]), int(layer.shift[0])
            gate = self.in_sizes[1] != self.in_sizes[0]
            chan = Signal(range(max(2, self.channels[0])), name="chan")
            if gate:
                with m.If(en & issuing):
                    m.d.sync += chan.eq(Mux(chan == self.channels[0] - 1, 0, chan + 1))
                with m.If(finish):
                    m.d.sync += chan.eq(0)
            m.d.comb += [bufs[0].rps[0].addr.eq(bufs[0].read_base + issued),
                         bufs[1].rps[0].addr.eq(bufs[1].read_base + (chan if gate else issued))]
            width = signed_width(-255 * 255, 255 * 255)
            product = Signal(signed(width), name="product")
            m.d.comb += product.eq((bufs[0].rps[0].data - za) * (bufs[1].rps[0].data - zb))
            rq = m.submodules.requant = Requantizer(width, (shift, shift), layer.output.zero_point, layer.output.qmin,
                                                    layer.output.qmax)
            m.d.comb += [rq.acc.eq(product), rq.m0.eq(m0), rq.shift.eq(shift)]
        elif layer.op == "add":
            for b in bufs:
                m.d.comb += b.rps[0].addr.eq(b.read_base + issued)
            rq = self.add_code(m, [b.rps[0].data for b in bufs])
        else:
            # per output pixel: input 0's channels, then input 1's, ...; each input's pixel
            # base advances by its channel count after the pixel
            sel = Signal(range(max(2, n)), name="sel")
            sel_b = Signal.like(sel, name="sel_b")
            bases = [Signal(range(max(2, size)), name=f"base{j}") for j, size in enumerate(self.in_sizes)]
            local = Signal(range(max(2, max(self.channels))), name="local")
            with m.If(en & issuing):
                for j in range(n):
                    with m.If(sel == j):
                        with m.If(local == self.channels[j] - 1):
                            m.d.sync += [local.eq(0), sel.eq(0 if j == n - 1 else j + 1)]
                            if j == n - 1:
                                m.d.sync += [bb.eq(bb + c) for bb, c in zip(bases, self.channels)]
                        with m.Else():
                            m.d.sync += local.eq(local + 1)
            with m.If(en):
                m.d.sync += sel_b.eq(sel)
            with m.If(finish):
                m.d.sync += [sel.eq(0), local.eq(0)] + [bb.eq(0) for bb in bases]
            for j, b in enumerate(bufs):
                m.d.comb += b.rps[0].addr.eq(b.read_base + bases[j] + local)
            rq = self.concat_code(m, sel_b, [b.rps[0].data for b in bufs])

        with m.If(en):
            m.d.sync += [out.valid.eq(v_b), out.payload.eq(rq.q)]
        m.d.comb += finish.eq(out.valid & out.ready & (issued == self.out_size) & ~v_b)
        with m.If(finish):
            m.d.sync += issued.eq(0)
        m.d.comb += [b.release.eq(finish) for b in bufs]
        return m

