"""Layer engines: conv2d/linear on a MAC array, max and average pooling, ReLU.

Every engine has the same ports: ``inp`` and ``out``, 8-bit ``amaranth.lib.stream``
links (valid/ready) carrying a feature map in stream order (:mod:`hw.layout`, channel
fastest).  The dataflow (docs/hardware.md has the picture and the cycle formulas):

1. **load**: the engine accepts its whole input map, one activation per cycle, into an
   activation memory (address = arrival index);
2. **run**: a control unit walks output pixel → channel group → fan-in chunk; each cycle
   it reads one wide weight word (P codes) and ``P / groups`` activations (one read port
   per lane) and feeds the MAC array; padding taps read the input zero point;
3. **drain**: a finished group of accumulators is copied to an output bank, and the
   requantizer emits one output per cycle while the array already works on the next
   group.  When the bank is still busy as the next group finishes, the whole pipeline
   stalls (``en``), so back-pressure on ``out`` is always safe.

Weights, biases and requantization constants come from the artifact into
``amaranth.lib.memory.Memory`` instances initialised at generation time.
"""
from __future__ import annotations

import operator

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring

from quantrtl.hw.arith import signed_width
from quantrtl.hw.array import MacArray, term_widths
from quantrtl.hw.cyclemodel import PassNode
from quantrtl.hw.geometry import ConvGeometry, conv_memory_bits, fanin_codes, maxpool_cycles, relu_cycles, uint_bits
from quantrtl.hw.parts import (ActivationBuffer, OutputBank, PixelWalker, code_width, pack, requant_layout, rom,
                               stream_ports, tap_layout)
from quantrtl.hw.requant import Requantizer
from quantrtl.model.numbers.artifact import Layer

__all__ = ["ConvEngine", "PoolEngine", "ReluEngine"]


class ConvEngine(wiring.Component):
    """A conv2d or linear layer of an artifact on a P-lane MAC array.

    Parameters
    ----------
    layer : Layer
        A conv2d or linear layer of a validated artifact.
    lanes : int
        P, MAC lanes (weight/activation pairs per cycle).
    groups : int, optional
        Lane groups (accumulators); by default :func:`choose_groups`.
    pipeline : int
        Extra register stages in the MAC array (0, 1 or 2).
    source_shape : tuple, optional
        For a linear layer fed by a feature map: that map's (C, H, W), whose stream
        order (channel fastest) the weight columns are permuted to.
    tap_fault : int, optional
        An injected control fault (``hw/faults.py``): this fan-in position's tap table
        entry points at the next position's input.
    """

    def __init__(self, layer: Layer, lanes: int = 8, groups: int | None = None, pipeline: int = 0,
                 source_shape: tuple[int, ...] | None = None, tap_fault: int | None = None):
        if not layer.has_weights:
            raise ValueError(f"layer {layer.name!r} ({layer.op}) has no weights for a MAC engine")
        self.layer = layer
        self.geometry = ConvGeometry.from_layer(layer, lanes, groups, tap_fault)
        self.pipeline = operator.index(pipeline)
        self.acc_width = layer.accumulator_bits
        self.source_shape = tuple(source_shape) if source_shape is not None else None
        for side, q, top in (("input", layer.input, 8), ("output", layer.output, 16)):
            if not (q.bits == 1 if q.binary else 2 <= q.bits <= top):
                raise ValueError(f"layer {layer.name!r}: engines take 2- to 8-bit affine or binary (pm1) activations "
                                 f"(outputs up to 16 bits), {side} has {q.bits} bits ({q.encoding})")
        if layer.input.binary != layer.format.binary_input:
            raise ValueError(f"layer {layer.name!r}: format {layer.format.name} does not match the "
                             f"{layer.input.encoding} input")
        self.fanin_codes = fanin_codes(layer, self.geometry, self.source_shape)
        # a format whose lanes share structure checks that the weights hold it, in the
        # order this engine streams them (unified blocks)
        layer.format.check_layer(layer.codes, layer.op, self.source_shape, f"layer {layer.name!r}: ")
        super().__init__(stream_ports(out_width=code_width(layer.output)))

    @staticmethod
    def unrolled_parts(fmt, codes, act_bits: int = 8):
        """The hard-wired (unrolled) style of a layer in ``fmt``, as distinct parts and their
        counts, for an engine whose datapath is not per-weight; None here: the unrolled
        style is a dot product per output channel (``hw/unrolled.py``)."""
        return None

    # ---- generation-time tables --------------------------------------------------
    @property
    def folded_bias(self) -> np.ndarray:
        """``b - Z_x * sum_k w`` per channel: the zero point enters once, through the bias.
        Binary (pm1) inputs: the XNOR PE gives ``w * x + 1`` per tap, so ``b - K``."""
        if self.layer.input.binary:
            return self.layer.bias.astype(object) - self.geometry.fan_in
        values = fanin_codes(self.layer, self.geometry, self.source_shape, values=True)
        return self.layer.bias.astype(object) - self.layer.input.zero_point * values.astype(object).sum(axis=1)

    @property
    def code_stride(self) -> int:
        """Fan-in positions per stored code: 1, a code per weight (pq: one per sub-vector)."""
        return 1

    def weight_words(self) -> list[int]:
        """Per (channel group, chunk): each lane group's codes of the chunk, one per
        :attr:`code_stride` fan-in positions."""
        g, bits, step = self.geometry, self.layer.format.bits, self.code_stride
        kc = g.lanes_per_group
        n = kc // step
        words = []
        for cg in range(g.channel_groups):
            for t in range(g.chunks):
                word = 0
                for gi in range(g.groups):
                    for j in range(n):
                        c, k = cg * g.groups + gi, t * kc + j * step
                        code = int(self.fanin_codes[c, k]) if c < g.cout and k < g.fan_in else 0
                        word |= code << ((gi * n + j) * bits)
                words.append(word)
        return words

    def mac_array(self) -> MacArray:
        """The engine's MAC array (also synthesized alone as the datapath)."""
        g, fmt = self.geometry, self.layer.format
        widths = term_widths(fmt, self.fanin_codes) if fmt.terms > 1 else None
        return MacArray(fmt, g.lanes, self.acc_width, groups=g.groups, act_bits=self.layer.input.bits,
                        pipeline=self.pipeline, term_widths=widths)

    @property
    def lanes(self) -> int:
        """P, the MAC lanes."""
        return self.geometry.lanes

    @property
    def activation_read_ports(self) -> int:
        """Read ports of the activation memory: one per lane of a group (the groups read the
        same activations), or one per lane when each group reads its own channel's inputs
        (a grouped convolution)."""
        g = self.geometry
        return g.lanes if g.conv_groups > 1 else g.lanes_per_group

    @property
    def shift_max(self) -> int | None:
        """The largest requantization shift (None for a ``sign`` layer: no requantizer)."""
        return None if self.layer.activation == "sign" else int(self.layer.shift.max())

    @property
    def memory_bits(self) -> dict[str, int]:
        return conv_memory_bits(self.geometry, self.layer.format.bits, self.acc_width, self.layer.input.bits,
                                self.shift_max)

    @property
    def expected_cycles(self) -> int:
        return self.geometry.cycles(self.pipeline)

    @property
    def head_start(self) -> int:
        """Cycles of its next image the engine computes while its output is blocked (its
        consumer still busy with the previous image), saved when the consumer takes it.
        The first finished group goes to the output bank and the output register takes one
        of its values; with one value per group the bank is then free for a second group
        and a third waits in the accumulators, with more the second waits there.  Each
        group is ``chunks`` cycles, plus the array's register stage(s).  Once unblocked,
        the waiting group leaves the accumulators when the bank is free again, after
        ``groups - 2`` more outputs: that much of the lead is lost."""
        g = self.geometry
        groups_ahead = min(3 if g.groups == 1 else 2, g.pixels * g.channel_groups)
        return max(0, groups_ahead * g.chunks + 1 + self.pipeline - max(0, g.groups - 2))

    # ---- hardware ----------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        g, layer = self.geometry, self.layer
        bits, kc, W = layer.format.bits, g.lanes_per_group, self.acc_width
        zx = layer.input.zero_point

        grouped = g.conv_groups > 1  # each lane group reads its own output channel's inputs
        load = ActivationBuffer(m, self, g.in_size, self.activation_read_ports, width=layer.input.bits)
        walker = PixelWalker(m, g, "px")
        arr = m.submodules.array = self.mac_array()
        bank = OutputBank(m, self, W, g.groups, g.out_size)
        en = Signal(name="en")
        m.d.comb += en.eq(~arr.done | bank.free)
        m.d.comb += [arr.en.eq(en), bank.capture.eq(arr.done & bank.free)]

        # tap ROM: per chunk t, for each lane j, a tap entry (off, dy, dx, valid)
        taps, offsets = g.taps(), g.tap_offsets
        entry = tap_layout(g)
        words = [pack(entry, [dict(off=offsets[k], dy=taps[k][0], dx=taps[k][1], valid=1) if k < g.fan_in else None
                              for k in range(t * kc, (t + 1) * kc)]) for t in range(g.chunks)]
        t = Signal(range(max(2, g.chunks)), name="chunk")
        cg = Signal(range(max(2, g.channel_groups)), name="cgroup")
        waddr = Signal(range(max(2, g.channel_groups * g.chunks)), name="waddr")
        tap_rom = rom(m, "tap_rom", words, kc * entry.size)
        m.d.comb += tap_rom.addr.eq(t)

        # weight and bias memories (synchronous reads, stage A → B)
        wmem = rom(m, "weight_mem", self.weight_words(), g.groups * (g.lanes_per_group // self.code_stride) * bits,
                   domain="sync")
        bmem = rom(m, "bias_mem", self.bias_words(), g.groups * W, domain="sync")
        m.d.comb += [wmem.addr.eq(waddr), wmem.en.eq(en), bmem.addr.eq(cg), bmem.en.eq(en)]

        issuing = Signal(name="issuing")
        issued_all = Signal(name="issued_all")
        m.d.comb += issuing.eq(load.running & ~issued_all)
        lane_ok = []
        tap_entries = data.View(data.ArrayLayout(entry, kc), tap_rom.data)
        bases = []
        if grouped:  # per lane group, the first input channel of its output channel
            bw = uint_bits(g.cin)
            base_rom = rom(m, "chan_base_rom", [sum(g.channel_base(cgi * g.groups + gi) << (gi * bw)
                                                    for gi in range(g.groups)) for cgi in range(g.channel_groups)],
                           g.groups * bw)
            m.d.comb += base_rom.addr.eq(cg)
            bases = [base_rom.data[gi * bw:(gi + 1) * bw] for gi in range(g.groups)]
        for i, rp in enumerate(load.rps):
            j = i % kc
            tap = tap_entries[j]
            off = tap.off + bases[i // kc] if grouped else tap.off  # (ungrouped: the netlist as before)
            m.d.comb += [rp.addr.eq(walker.address(off)), rp.en.eq(en)]
            kv_b, inb_b = Signal(name=f"kvalid{i}"), Signal(name=f"inb{i}")
            with m.If(en):
                m.d.sync += [kv_b.eq(tap.valid), inb_b.eq(walker.in_bounds(tap.dy, tap.dx))]
            lane_ok.append((rp.data, kv_b, inb_b))

        # stage B: array inputs
        self.array_control(m, arr, bmem.data, en, issuing, t == 0, t == g.chunks - 1)
        acts = []
        for gi in range(g.groups):
            for j in range(kc):
                data_, kv_b, inb_b = lane_ok[gi * kc + j if grouped else j]
                acts.append(Mux(kv_b, Mux(inb_b, data_, zx), 0))
        self.feed(m, arr, acts, wmem.data, t, en)

        # stage A: the loop nest pixel → channel group → chunk
        walker.loop(m, load.start, en & issuing, t, g.chunks, cg, g.channel_groups, issued_all)
        last_addr = g.channel_groups * g.chunks - 1
        with m.If(load.start):
            m.d.sync += waddr.eq(0)
        with m.Elif(en & issuing):
            m.d.sync += waddr.eq(Mux(waddr == last_addr, 0, waddr + 1))

        self.drain(m, bank, arr)
        with m.If(bank.finished):
            m.d.sync += load.running.eq(0)
        return m

    def bias_words(self) -> list[int]:
        """Per channel group, its lane groups' folded biases (modulo ``2**acc_width``), group 0
        in the low bits; padded groups past the last channel hold 0."""
        g, W = self.geometry, self.acc_width
        bias = [int(b) % (1 << W) for b in self.folded_bias] + [0] * (g.channel_groups * g.groups - g.cout)
        return [sum(bias[cgi * g.groups + gi] << (gi * W) for gi in range(g.groups)) for cgi in range(g.channel_groups)]

    def array_control(self, m: Module, arr, bias_word, en, issuing, first, last) -> None:
        """Stage B of the loop nest: a step's valid, first and last flags (``issuing``,
        ``first``, ``last`` at its issue) registered into the array while ``en``, and each
        lane group's initial accumulator from ``bias_word`` (read with the step)."""
        W = self.acc_width
        v_b, first_b, last_b = Signal(name="valid_b"), Signal(name="first_b"), Signal(name="last_b")
        with m.If(en):
            m.d.sync += [v_b.eq(issuing), first_b.eq(first), last_b.eq(last)]
        m.d.comb += [arr.valid.eq(v_b), arr.first.eq(first_b), arr.last.eq(last_b)]
        for gi in range(self.geometry.groups):
            m.d.comb += arr.init[gi].eq(bias_word[gi * W:(gi + 1) * W].as_signed())

    def feed(self, m: Module, arr, acts: list, word, chunk, en) -> None:
        """Wire a step's operands into the datapath: lane ``i`` gets activation ``acts[i]``
        (the padding zero point or 0 for a padded lane already chosen) and the ``i``-th
        code of the weight word ``word`` (read at ``chunk`` of the loop nest, ``en`` its
        enable)."""
        bits = self.layer.format.bits
        for lane, act in enumerate(acts):
            m.d.comb += [arr.act[lane].eq(act), arr.code[lane].eq(word[lane * bits:(lane + 1) * bits])]

    def drain(self, m: Module, bank: OutputBank, arr: MacArray) -> None:
        """Output bank → requantizer (M0, n per channel from a ROM) → out stream."""
        g = self.geometry
        out_cg = Signal(range(max(2, g.channel_groups)), name="out_cgroup")
        drain_cg = Signal(range(max(2, g.channel_groups)), name="drain_cgroup")
        with m.If(bank.capture):
            m.d.sync += [drain_cg.eq(out_cg), out_cg.eq(Mux(out_cg == g.channel_groups - 1, 0, out_cg + 1))]
        count = Mux(out_cg == g.channel_groups - 1, g.last_group_size, g.groups)
        converted = self.output_code(m, bank.current, drain_cg * g.groups + bank.idx)
        bank.connect(m, [arr.acc[gi] for gi in range(g.groups)], count, converted)

    def output_code(self, m: Module, value, channel):
        """The output code of the finished dot product ``value`` of output channel
        ``channel``: ``value >= 0`` for a ``sign`` layer (binary output; the threshold is in
        the bias), else the requantizer with the channel's ``M0`` and shift from a ROM."""
        layer = self.layer
        if layer.activation == "sign":
            return ~value[-1]
        consts = requant_layout(self.shift_max)
        rq_rom = rom(m, "requant_rom", [pack(consts, [dict(m0=int(m0), shift=int(n))])
                                        for m0, n in zip(layer.m0, layer.shift)], consts.size)
        m.d.comb += rq_rom.addr.eq(channel)
        rq = m.submodules.requant = Requantizer(self.acc_width, (int(layer.shift.min()), int(layer.shift.max())),
                                                layer.output.zero_point, layer.out_min, layer.out_max,
                                                out_bits=code_width(layer.output))
        c = data.View(consts, rq_rom.data)
        m.d.comb += [rq.acc.eq(value), rq.m0.eq(c.m0), rq.shift.eq(c.shift)]
        return rq.q


class PoolEngine(wiring.Component):
    """Integer max pooling (docs/integer-semantics.md §4), average and global average
    pooling (§9), one window tap per cycle.

    Loop nest: output pixel → channel → window tap; out-of-bounds (padding) taps read as
    0 for the max (the smallest code) and as the zero point for the average (the real
    zero).  The average sums ``x − Z_in`` over the window and requantizes the sum with the
    layer's ``M0 · 2^(−n) ≈ S_in / (S_out · kh·kw)`` (``1/(kh·kw)`` when the output keeps
    the input's format) and ``Z_out`` on the way out.  Output order is the stream order
    (channel fastest).
    """

    def __init__(self, layer: Layer, source_shapes: list[tuple] | None = None):
        if layer.op not in ("maxpool", "avgpool", "gap"):
            raise ValueError(f"layer {layer.name!r} is {layer.op}, not a pooling layer")
        c, h, w = layer.in_shape
        self.layer = layer
        self.average = layer.op != "maxpool"
        self.geometry = ConvGeometry(cin=c, h=h, w=w, cout=c, kh=layer.kernel[0], kw=layer.kernel[1],
                                     sh=layer.stride[0], sw=layer.stride[1], ph=layer.padding[0], pw=layer.padding[1])
        super().__init__(stream_ports())

    @property
    def taps(self) -> int:
        return self.geometry.kh * self.geometry.kw

    @property
    def sum_width(self) -> int:
        """Signed width of a window sum of ``x − Z`` (average pooling)."""
        z = self.layer.input.zero_point
        return signed_width(-z * self.taps, (255 - z) * self.taps)

    @property
    def expected_cycles(self) -> int:
        return maxpool_cycles(self.geometry)

    @property
    def memory_bits(self) -> dict[str, int]:
        return {"activations": self.geometry.in_size * self.layer.input.bits}

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        load = ActivationBuffer(m, self, g.in_size, 1, width=self.layer.input.bits)
        walker = PixelWalker(m, g, "px")
        done, en = Signal(name="done"), Signal(name="en")
        entry = tap_layout(g, channels=False, valid=False)
        words = [pack(entry, [dict(off=(dy * g.w + dx) * g.cin, dy=dy, dx=dx)])
                 for dy in range(g.kh) for dx in range(g.kw)]
        tap = Signal(range(max(2, self.taps)), name="tap")
        ch = Signal(range(max(2, g.cin)), name="channel")
        tap_rom = rom(m, "tap_rom", words, entry.size)
        m.d.comb += tap_rom.addr.eq(tap)
        t = data.View(entry, tap_rom.data)
        rp = load.rps[0]
        m.d.comb += [rp.addr.eq(walker.address(t.off + ch)), rp.en.eq(en)]

        issuing, issued_all = Signal(name="issuing"), Signal(name="issued_all")
        m.d.comb += issuing.eq(load.running & ~issued_all)
        bank = self.reduce(m, en, done, issuing, tap, rp.data, walker.in_bounds(t.dy, t.dx))
        walker.loop(m, load.start, en & issuing, tap, self.taps, ch, g.cin, issued_all)
        with m.If(bank.finished):
            m.d.sync += load.running.eq(0)
        return m

    def reduce(self, m: Module, en, done, issuing, tap, value_in, in_bounds) -> OutputBank:
        """The window reduction behind the tap reads: ``value_in`` (the activation read at
        the tap issued a cycle earlier, ``in_bounds`` whether that tap lies in the map),
        ``issuing``/``tap`` the loop's state at the issue, ``en`` the pipeline enable and
        ``done`` (a window finished) driven here; the output bank, requantizer and ``out``."""
        g, layer = self.geometry, self.layer
        zx = layer.input.zero_point
        width = self.sum_width if self.average else 9
        bank = OutputBank(m, self, width, 1, g.out_size)
        m.d.comb += [en.eq(~done | bank.free), bank.capture.eq(done & bank.free)]
        v_b, first_b, last_b, inb_b = (Signal(name=n) for n in ("valid_b", "first_b", "last_b", "inb_b"))
        with m.If(en):
            m.d.sync += [v_b.eq(issuing), first_b.eq(tap == 0), last_b.eq(tap == self.taps - 1),
                         inb_b.eq(in_bounds)]
        if self.average:  # sum of x - Z; a padding tap adds 0
            value = Signal(signed(width), name="term")
            m.d.comb += value.eq(Mux(inb_b, value_in, zx) - zx)
            result = Signal(signed(width), name="sum")
            update = Mux(first_b, value, result + value)
        else:
            value = Mux(inb_b, value_in, 0)
            result = Signal(unsigned(8), name="best")
            update = Mux(first_b | (value > result), value, result)
        with m.If(en):
            m.d.sync += done.eq(v_b & last_b)
            with m.If(v_b):
                m.d.sync += result.eq(update)
        if self.average:
            rq = m.submodules.requant = Requantizer(width, (int(layer.shift[0]), int(layer.shift[0])),
                                                    layer.output.zero_point, layer.output.qmin, layer.output.qmax)
            m.d.comb += [rq.acc.eq(bank.current), rq.m0.eq(int(layer.m0[0])), rq.shift.eq(int(layer.shift[0]))]
            out = rq.q
        else:
            out = bank.current[:8]
        bank.connect(m, [result], 1, out)
        return bank


class ReluEngine(wiring.Component):
    """Unfused ReLU on a stream (§5): ``max(q, Z)``, combinational pass-through."""

    #: No map of its own: a reader loads at the pace of the producer behind it (NetworkTop.occupancy).
    streams_through = True

    def __init__(self, layer: Layer, source_shapes: list[tuple] | None = None):
        self.layer = layer
        super().__init__(stream_ports())

    @property
    def expected_cycles(self) -> int:
        return relu_cycles(self.layer.in_shape)

    def cycle_node(self) -> PassNode:
        """Combinational: ready and valid pass through (``hw/cyclemodel.py``)."""
        return PassNode()

    @property
    def memory_bits(self) -> dict[str, int]:
        return {}

    def elaborate(self, platform):
        m = Module()
        z = self.layer.input.zero_point
        m.d.comb += [self.out.valid.eq(self.inp.valid), self.inp.ready.eq(self.out.ready),
                     self.out.payload.eq(Mux(self.inp.payload > z, self.inp.payload, z))]
        return m
