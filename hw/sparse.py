"""Zero-skipping layer engine: a relative-index weight stream and a sparse decoder.

Dataflow: **row-wise with an activation gather**.  For each output pixel and output
channel, the engine reads that channel's relative-index entries (``model/numbers/sparse.py``),
P per cycle, from an entry memory.  The sparse decoder turns each word of P entries into
P absolute fan-in indices with a prefix sum of ``run + 1`` (plus a running base kept
across the words of a channel), looks each index up in a tap ROM (input channel and kernel
offset) and gathers the P activations through P read ports of the activation memory.
Fillers and the unused entries of a channel's last word feed activation 0.  The MAC array,
the requantizer and the output stream are the dense engine's.

Why row-wise: every output is still one dot product finished in place (no per-lane
partial outputs to merge, unlike an EIE-style column broadcast), so the requantization and
output order stay those of the dense engine, and the cost of sparsity is explicit logic
(prefix adders, the tap ROM lookups, the P-port gather) that synthesis counts.

Cycles: each (pixel, channel) takes ``words_c = max(1, ceil(entries_c / P))`` cycles, so
the run takes ``pixels · Σ_c words_c`` cycles instead of ``pixels · Cout · ceil(K / P)``;
``expected_cycles`` adds the load, the pipeline and the drain (docs/hardware.md).
"""
from __future__ import annotations

import operator

from amaranth.hdl import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from quantrtl.hw.geometry import SparseSchedule, uint_bits
from quantrtl.hw.layer import ConvEngine
from quantrtl.hw.parts import (ActivationBuffer, EntryKind, OutputBank, PixelWalker, pack, rom, sparse_entry_layout,
                               tap_layout)
from quantrtl.model.numbers.artifact import Layer
from quantrtl.model.numbers.families import family

__all__ = ["SparseConvEngine", "SparseDecoder", "check_zero_skipping"]


class SparseDecoder(wiring.Component):
    """The sparse-decoder unit: one word of P relative-index entries → P gathered lanes.

    Lane j's absolute fan-in index is ``k_j = base + sum_{i<=j}(run_i + 1) - 1`` (absent
    entries add 0); ``base`` restarts at 0 on the first word of a channel (``first``) and
    moves past the word when ``step``.  A tap ROM (one read port per lane) maps ``k`` to the
    input offset and kernel position, giving the activation address ``pbase + offset`` and
    whether the tap is inside the map (else the engine feeds the zero point).
    """

    def __init__(self, geometry, lanes: int, index_bits: int, code_bits: int):
        self.g, self.lanes, self.index_bits, self.code_bits = geometry, lanes, index_bits, code_bits
        by, bx, pbase = PixelWalker.shapes(geometry)
        self.entry = sparse_entry_layout(index_bits, code_bits)
        self.entry_width = self.entry.size
        super().__init__({
            "word": In(unsigned(lanes * self.entry_width)),
            "first": In(1),
            "step": In(1),
            "by": In(by), "bx": In(bx), "pbase": In(pbase),
            "addr": Out(data.ArrayLayout(unsigned(uint_bits(max(geometry.in_size - 1, 1))), lanes)),
            "code": Out(data.ArrayLayout(unsigned(code_bits), lanes)),
            "weight": Out(data.ArrayLayout(unsigned(1), lanes)),
            "inb": Out(data.ArrayLayout(unsigned(1), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        g, p, ib, bits, ew = self.g, self.lanes, self.index_bits, self.code_bits, self.entry_width
        kw = uint_bits(g.fan_in + (1 << ib) * p)
        base = Signal(unsigned(kw), name="k_base")
        tap = tap_layout(g, valid=False)
        tap_mem = m.submodules.tap_rom = Memory(
            shape=unsigned(tap.size), depth=g.fan_in,
            init=[pack(tap, [dict(off=off, dy=dy, dx=dx)]) for off, (dy, dx, _) in zip(g.tap_offsets, g.taps())])
        acc = Mux(self.first, 0, base)
        entries = data.View(data.ArrayLayout(self.entry, p), self.word)
        for j in range(p):
            e = entries[j]
            run, code, kind = e.run, e.code, e.kind
            step_j = Mux(kind == EntryKind.ABSENT, 0, run + 1)
            k = Signal(unsigned(kw), name=f"k{j}")
            m.d.comb += k.eq(acc + step_j - 1)
            acc = acc + step_j
            rp = tap_mem.read_port(domain="comb")
            m.d.comb += rp.addr.eq(k)
            t = data.View(tap, rp.data)
            off, dy, dx = t.off, t.dy, t.dx
            if g.ph or g.pw:
                iy, ix = self.by + dy, self.bx + dx
                inb = (iy >= 0) & (iy < g.h) & (ix >= 0) & (ix < g.w)
            else:
                inb = Const(1)
            m.d.comb += [self.addr[j].eq((self.pbase + off).as_unsigned()), self.code[j].eq(code),
                         self.weight[j].eq(kind == EntryKind.WEIGHT), self.inb[j].eq(inb)]
        with m.If(self.step):
            m.d.sync += base.eq(acc)
        return m


def check_zero_skipping(layer: Layer) -> None:
    """Refuse a layer whose weights a zero-skipping engine cannot skip one by one."""
    if layer.input.binary:
        raise ValueError(f"layer {layer.name!r}: {layer.format.name} weights are ±1 (no zeros to skip); "
                         f"use the dense engine (no --sparse)")
    if family(layer.format.family).engine is not None:
        raise ValueError(f"layer {layer.name!r}: {layer.format.name} stores a codeword index per sub-vector, not "
                         f"a weight per position, so there are no zero weights to skip; use the dense engine "
                         f"(no --sparse)")
    if layer.format.block > 1:
        raise ValueError(f"layer {layer.name!r}: {layer.format.name} weights skip whole blocks, which the "
                         f"per-weight sparse engine cannot express; use the dense engine (no --sparse)")


class SparseConvEngine(ConvEngine):
    """A conv2d/linear layer whose zero weights are neither stored nor computed.

    Parameters are those of :class:`ConvEngine` (one lane group) plus ``index_bits``,
    the width of a relative index.
    """

    def __init__(self, layer: Layer, lanes: int = 8, pipeline: int = 0, source_shape=None, index_bits: int = 4,
                 tap_fault: int | None = None):
        self.index_bits = operator.index(index_bits)
        check_zero_skipping(layer)
        if layer.op == "conv2d" and layer.groups != 1:
            raise ValueError(f"layer {layer.name!r}: the zero-skipping engine takes groups=1 convolutions, this one "
                             f"has groups {layer.groups}; use the dense engine (no --sparse)")
        super().__init__(layer, lanes=lanes, groups=1, pipeline=pipeline, source_shape=source_shape,
                         tap_fault=tap_fault)
        self.schedule = SparseSchedule.build(self.geometry, self.fanin_codes, layer.format, self.index_bits)

    @property
    def rows(self) -> tuple:
        """Each output channel's relative-index row (``model/numbers/sparse.py``)."""
        return self.schedule.rows

    @property
    def entry_width(self) -> int:
        return self.schedule.entry_width

    def channel_words(self) -> list[int]:
        return self.schedule.channel_words()

    @property
    def nonzero_weights(self) -> int:
        return self.schedule.nonzero_weights

    @property
    def run_cycles(self) -> int:
        return self.schedule.run_cycles

    @property
    def expected_cycles(self) -> int:
        return self.schedule.cycles(self.pipeline)

    @property
    def activation_read_ports(self) -> int:
        """One per lane: each lane gathers its own activation."""
        return self.geometry.lanes

    @property
    def ideal_cycles(self) -> int:
        """``ceil(nonzero MACs / lanes)``: every lane busy on a nonzero weight every cycle."""
        return self.schedule.ideal_cycles

    @property
    def memory_bits(self) -> dict[str, int]:
        return self.schedule.memory_bits(self.acc_width, self.shift_max)

    def entry_words(self) -> list[int]:
        p = self.geometry.lanes
        layout = sparse_entry_layout(self.index_bits, self.layer.format.bits)
        words = []
        for row, n in zip(self.rows, self.channel_words()):
            for w in range(n):
                words.append(pack(layout, [
                    dict(run=int(row.runs[i]), code=int(row.codes[i]),
                         kind=EntryKind.FILLER if row.filler[i] else EntryKind.WEIGHT) if i < row.entries else None
                    for i in range(w * p, (w + 1) * p)]))
        return words

    def elaborate(self, platform):
        m = Module()
        g, layer = self.geometry, self.layer
        p, bits, ib, ew, W = g.lanes, layer.format.bits, self.index_bits, self.entry_width, self.acc_width
        zx = layer.input.zero_point

        load = ActivationBuffer(m, self, g.in_size, self.activation_read_ports)
        walker = PixelWalker(m, g, "px")
        arr = m.submodules.array = self.mac_array()
        bank = OutputBank(m, self, W, 1, g.out_size)
        en = Signal(name="en")
        m.d.comb += [en.eq(~arr.done | bank.free), arr.en.eq(en), bank.capture.eq(arr.done & bank.free)]

        # stage A: pixel → channel → word of entries (a variable number per channel)
        words = self.channel_words()
        starts = [sum(words[:c]) for c in range(g.cout)]
        aw = uint_bits(max(starts[-1], 1))
        nw = uint_bits(max(words))
        chan = rom(m, "channel_rom", [s | (n << aw) for s, n in zip(starts, words)], aw + nw)
        c = Signal(range(max(2, g.cout)), name="channel")
        t = Signal(range(max(2, max(words))), name="word")
        n_words = chan.data[aw:]
        m.d.comb += chan.addr.eq(c)
        issuing, issued_all = Signal(name="issuing"), Signal(name="issued_all")
        m.d.comb += issuing.eq(load.running & ~issued_all)
        walker.loop(m, load.start, en & issuing, t, n_words, c, g.cout, issued_all)
        emem = rom(m, "entry_mem", self.entry_words(), p * ew, domain="sync")
        bmem = rom(m, "bias_mem", [int(b) % (1 << W) for b in self.folded_bias], W, domain="sync")
        m.d.comb += [emem.addr.eq(chan.data[:aw] + t), emem.en.eq(en), bmem.addr.eq(c), bmem.en.eq(en)]

        def stage(pairs, name):
            regs = []
            for v in pairs:
                r = Signal.like(v, name=f"{name}_{len(regs)}")
                with m.If(en):
                    m.d.sync += r.eq(v)
                regs.append(r)
            return regs

        v_b, first_b, last_b, by_b, bx_b, pbase_b = stage(
            [issuing, t == 0, t == n_words - 1, walker.by, walker.bx, walker.pbase], "b")

        # stage B: the sparse decoder turns the word into P gathered (address, code) lanes
        dec = m.submodules.decoder = SparseDecoder(g, p, ib, bits)
        m.d.comb += [dec.word.eq(emem.data), dec.first.eq(first_b), dec.step.eq(en & v_b),
                     dec.by.eq(by_b), dec.bx.eq(bx_b), dec.pbase.eq(pbase_b)]
        lanes = []
        for j in range(p):
            act_port = load.rps[j]
            m.d.comb += [act_port.addr.eq(dec.addr[j]), act_port.en.eq(en)]
            lanes.append((dec.weight[j], dec.inb[j], dec.code[j], act_port.data))

        # stage C: gathered activations meet their weight codes in the MAC array
        v_c, first_c, last_c = stage([v_b, first_b, last_b], "c")
        m.d.comb += [arr.valid.eq(v_c), arr.first.eq(first_c), arr.last.eq(last_c)]
        bias_c = stage([bmem.data], "bias_c")[0]
        m.d.comb += arr.init[0].eq(bias_c.as_signed())
        for j, (wvalid, inb, code, data) in enumerate(lanes):
            wv_c, inb_c, code_c = stage([wvalid, inb, code], f"lane{j}_c")
            m.d.comb += [arr.act[j].eq(Mux(wv_c, Mux(inb_c, data, zx), 0)), arr.code[j].eq(code_c)]

        self.drain(m, bank, arr)  # one lane group: one output per channel, as in the dense engine
        with m.If(bank.finished):
            m.d.sync += load.running.eq(0)
        return m
