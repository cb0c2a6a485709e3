"""Streaming engines with line buffers (the ``stream`` engine style).

A conv2d (dense, grouped or depthwise), linear, max/average pooling engine that keeps only the
input rows its windows still need (:class:`LineBuffer`, a ring of ``rows`` row slots,
``hw/window.py``) and starts on an output row as soon as the input rows under it have
arrived, while the next rows keep arriving.  Global average pooling keeps a running sum
per channel (:class:`StreamGapEngine`), no map at all.

The line buffer is one memory with one write and one read port: a word holds ``word``
channels of one pixel, and the lanes that read a tap read consecutive channels of it
(dense conv: ``P/G`` channels, each lane group the same; depthwise: the ``G`` groups'
own channels; pooling: one channel), so one read port serves every lane.  Yosys maps it to
block RAM like any other memory (docs/hardware.md, "Streaming engines").

The back end is the dense engine's: the MAC array, the output bank and the requantizer
(conv/linear), the pooling engine's reduction (pooling).  Joins (add, concat) stream
through a FIFO per input (:class:`SkipFifo`) whose depth the network's cycle model
computes (``hw/cyclemodel.py``, ``NetworkTop.fifo_depths``).
"""
from __future__ import annotations

import math

import numpy as np
from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory

from quantrtl.hw.cyclemodel import GapNode, JoinNode, WindowNode
from quantrtl.hw.geometry import ConvGeometry, uint_bits
from quantrtl.hw.join import JoinEngine
from quantrtl.hw.layer import ConvEngine, PoolEngine
from quantrtl.hw.parts import OutputBank, PixelWalker, pack, requant_layout, rom
from quantrtl.hw.requant import Requantizer
from quantrtl.hw.window import StreamGeometry, stream_groups
from quantrtl.model.numbers.artifact import Layer
from quantrtl.model.numbers.families import family

__all__ = ["LineBuffer", "StreamConvEngine", "StreamPoolEngine", "StreamGapEngine", "SkipFifo", "StreamJoinEngine",
           "stream_engine", "stream_window_engine"]


def _mod_add(x, k: int, n: int):
    """``(x + k) mod n`` for ``0 <= x < n`` and a constant ``k``."""
    k %= n
    if k == 0 or n == 1:
        return x if n > 1 else 0
    return Mux(x >= n - k, x - (n - k), x + k)


def _buffer(sg: StreamGeometry) -> dict:
    """A line buffer's shape, as the Verilog description states it."""
    return {"line_buffer": {"rows": sg.rows, "row_words": sg.row_words, "channels_per_word": sg.word,
                            "words": sg.depth}, "steps_per_pixel": sg.middle * sg.inner}


class LineBuffer:
    """A ring of ``rows`` input rows (``sg``: :class:`~quantrtl.hw.window.StreamGeometry`),
    written from ``engine.inp`` and read one word a cycle by the engine's window walk.

    Writer: ``free`` slots (a row is started only into a free slot), the row being written
    ``wy`` and ``ahead`` (the writer has the whole image the compute works on and is on the
    next).  Reader: ``rslot`` is the slot of the window's top row ``by`` (kept in step by
    :meth:`next_row` and :meth:`next_image`), ``col`` the word of its left column
    (:meth:`next_pixel`); :meth:`row_ready` says the window's rows are all in, and
    :meth:`read` addresses the word of kernel row ``dy`` at word offset ``off``.
    ``release`` (rows given back this cycle) is driven by :meth:`next_row` / :meth:`next_image`.
    """

    def __init__(self, m: Module, engine, sg: StreamGeometry, width: int, name: str = "lb"):
        g = self.g = sg.conv
        self.sg = sg
        B, C, H, D, RW = sg.word, g.cin, g.h, sg.rows, sg.row_words
        inp = engine.inp
        self.mem = m.submodules[f"{name}_mem"] = Memory(shape=unsigned(B * width), depth=sg.depth, init=[])
        wp = self.mem.write_port()
        self.rp = self.mem.read_port(domain="sync")
        self.width = width

        # ---- writer ----
        j = Signal(range(max(2, B)), name=f"{name}_j")  # element of the word
        c = Signal(range(max(2, C)), name=f"{name}_c")  # channel of the pixel
        word = Signal(range(max(2, RW)), name=f"{name}_word")  # word of the row
        wbase = Signal(range(max(2, sg.depth)), name=f"{name}_wbase")  # slot × row words
        self.wy = Signal(range(H + 1), name=f"{name}_wy")
        self.ahead = Signal(name=f"{name}_ahead")
        self.free = Signal(range(D + g.sh + 2), init=D, name=f"{name}_free")
        self.release = Signal(range(H + 1), name=f"{name}_release")
        mid = Signal(name=f"{name}_mid")  # inside a row: its slot is taken
        accept = Signal(name=f"{name}_accept")
        m.d.comb += [inp.ready.eq(mid | (self.free != 0)), accept.eq(inp.valid & inp.ready)]
        value = inp.payload[:width]
        last_in_word = (j == B - 1) | (c == C - 1) if B > 1 else 1
        row_end = accept & (word == RW - 1) & last_in_word
        m.d.sync += self.free.eq(self.free - (accept & ~mid) + self.release)
        if B > 1:
            stage = Signal(B * width, name=f"{name}_stage")
            elems = [Mux(j == i, value, stage[i * width:(i + 1) * width]) for i in range(B)]
            m.d.comb += wp.data.eq(Cat(*elems))
            with m.If(accept):
                m.d.sync += stage.eq(Cat(*elems))
        else:
            m.d.comb += wp.data.eq(value)
        m.d.comb += [wp.addr.eq(wbase + word), wp.en.eq(accept & last_in_word)]
        with m.If(accept):
            m.d.sync += [mid.eq(1), c.eq(Mux(c == C - 1, 0, c + 1))]
            if B > 1:
                m.d.sync += j.eq(Mux(last_in_word, 0, j + 1))
            with m.If(last_in_word):
                m.d.sync += word.eq(Mux(word == RW - 1, 0, word + 1))
        self.finish = Signal(name=f"{name}_finish")  # the compute is done with its image
        with m.If(self.finish):
            m.d.sync += self.ahead.eq(0)
        with m.If(row_end):
            m.d.sync += [mid.eq(0), wbase.eq(Mux(wbase == sg.depth - RW, 0, wbase + RW))]
            with m.If(self.wy == H - 1):
                m.d.sync += [self.wy.eq(0), self.ahead.eq(1)]
            with m.Else():
                m.d.sync += self.wy.eq(self.wy + 1)

        # ---- reader ----
        self.row0 = Signal(range(max(2, D)), name=f"{name}_row0")  # slot of the image's row 0
        self.rslot = Signal(range(max(2, D)), init=(-g.ph) % D, name=f"{name}_rslot")
        cw = sg.words_per_pixel
        self.col = Signal(range(-g.pw * cw, max(1, (g.w + g.pw) * cw + 1)), init=-g.pw * cw, name=f"{name}_col")
        self._bases = Array([(i % D) * RW for i in range(D + g.kh)])

    def row_ready(self, by):
        """The rows under a window whose top row is ``by`` are all in."""
        g = self.g
        need = by + (g.kh - 1)
        need = Mux(need > g.h - 1, g.h - 1, need)
        return self.ahead | (self.wy > need)

    def read(self, m: Module, dy, off, en) -> None:
        m.d.comb += [self.rp.addr.eq((self._bases[self.rslot + dy] + self.col + off).as_unsigned()),
                     self.rp.en.eq(en)]

    def element(self, i: int):
        return self.rp.data[i * self.width:(i + 1) * self.width]

    def next_pixel(self, m: Module) -> None:
        m.d.sync += self.col.eq(self.col + self.g.sw * self.sg.words_per_pixel)

    def next_row(self, m: Module, by) -> None:
        """The output row whose window starts at ``by`` is done (not the image's last)."""
        g, D = self.g, self.sg.rows
        m.d.sync += [self.rslot.eq(_mod_add(self.rslot, g.sh, D)), self.col.eq(-g.pw * self.sg.words_per_pixel)]
        lo = Mux(by < 0, 0, by)
        nxt = by + g.sh
        hi = Mux(nxt < 0, 0, Mux(nxt > g.h, g.h, nxt))
        m.d.comb += self.release.eq(hi - lo)

    def next_image(self, m: Module) -> None:
        """The image is done and the writer has all of it: release the rest, go on to the next."""
        g, D = self.g, self.sg.rows
        last_by = (g.oh - 1) * g.sh - g.ph
        m.d.comb += [self.release.eq(g.h - min(max(last_by, 0), g.h)), self.finish.eq(1)]
        m.d.sync += [self.row0.eq(_mod_add(self.row0, g.h, D)), self.rslot.eq(_mod_add(self.row0, g.h - g.ph, D)),
                     self.col.eq(-g.pw * self.sg.words_per_pixel)]


class _WindowWalk:
    """The loop nest output pixel → middle → inner of a streaming engine over its line
    buffer: ``step`` advances it when high; ``issuing`` says a step can issue now (the
    window's rows are in and the image is not finished)."""

    def __init__(self, m: Module, sg: StreamGeometry, lb: LineBuffer, en):
        self.walker = walker = PixelWalker(m, sg.conv, "px")
        self.inner = Signal(range(max(2, sg.inner)), name="chunk")
        self.middle = Signal(range(max(2, sg.middle)), name="cgroup")
        self.issued_all = Signal(name="issued_all")
        self.issuing = Signal(name="issuing")
        self.step = Signal(name="step")
        g = sg.conv
        m.d.comb += [self.issuing.eq(~self.issued_all & lb.row_ready(walker.by)), self.step.eq(en & self.issuing)]
        end_image = Signal(name="end_image")
        m.d.comb += end_image.eq(self.issued_all & lb.ahead)
        walker.loop(m, end_image, self.step, self.inner, sg.inner, self.middle, sg.middle, self.issued_all)
        pixel_done = self.step & (self.inner == sg.inner - 1) & (self.middle == sg.middle - 1)
        with m.If(end_image):
            lb.next_image(m)
        with m.Elif(pixel_done & (walker.ox == g.ow - 1)):
            with m.If(walker.oy != g.oh - 1):
                lb.next_row(m, walker.by)
        with m.Elif(pixel_done):
            lb.next_pixel(m)


class StreamConvEngine(ConvEngine):
    """A conv2d (dense or depthwise) or linear layer on a P-lane MAC array, fed from a line
    buffer.  A linear layer is the window that covers its whole input map (``source_shape``,
    or a 1 × 1 map of its features): its buffer holds the map, its rows arrive as the map
    streams in.

    Lanes: a dense conv splits them into ``G`` groups (output channels) of ``P/G`` lanes
    that read ``P/G`` consecutive channels of one tap; a grouped conv the same within one
    conv group (``G`` dividing its outputs, ``P/G`` its inputs; a ROM gives each channel
    group its conv group's first word); a depthwise conv gives each of its ``P`` lanes its
    own channel (at most ``kh·kw`` lanes: more could not drain)."""

    def __init__(self, layer: Layer, lanes: int = 8, groups: int | None = None, pipeline: int = 0,
                 source_shape: tuple[int, ...] | None = None, tap_fault: int | None = None):
        if tap_fault is not None:
            raise ValueError(f"layer {layer.name!r}: the stream engine has no tap table to inject a fault into; "
                             "use the dense engine style")
        if layer.op == "linear":
            shape = tuple(source_shape) if source_shape is not None and len(source_shape) == 3 else \
                (layer.in_shape[0], 1, 1)
            c, h, w = shape
            win = dict(cin=c, h=h, w=w, kh=h, kw=w)
        elif layer.op == "conv2d":
            (c, h, w) = layer.in_shape
            win = dict(cin=c, h=h, w=w, kh=layer.kernel[0], kw=layer.kernel[1], sh=layer.stride[0],
                       sw=layer.stride[1], ph=layer.padding[0], pw=layer.padding[1])
        else:
            raise ValueError(f"layer {layer.name!r} ({layer.op}) has no weights for a MAC engine")
        super().__init__(layer, lanes=lanes, groups=groups, pipeline=pipeline, source_shape=source_shape)
        cout, P = layer.out_shape[0], self.geometry.lanes
        conv_groups = layer.groups if layer.op == "conv2d" else 1
        depthwise = conv_groups > 1 and conv_groups == c == cout
        cin_g, cout_g = c // conv_groups, cout // conv_groups
        block = layer.format.lane_block
        if block > 1 and c % block:
            raise ValueError(f"layer {layer.name!r}: {c} input channels are not whole blocks of {block} "
                             f"({layer.format.name}); use the dense engine style")
        taps = win["kh"] * win["kw"]
        if depthwise:
            if P > taps:
                raise ValueError(f"layer {layer.name!r}: a depthwise stream engine takes at most kh*kw = {taps} "
                                 f"lanes (one output per cycle drains {P} channels), got {P}")
            g = P
        elif conv_groups > 1:  # each channel group's outputs in one conv group, reading its channels
            g = stream_groups(cin_g, cout, taps, P, group_outputs=cout_g) if groups is None else int(groups)
            if g is None or block > 1:
                raise ValueError(f"layer {layer.name!r}: {conv_groups} groups of {cin_g} input and {cout_g} output "
                                 f"channels take lanes G*K with G dividing {cout_g} and K dividing {cin_g}, not {P}"
                                 + (f" (nor blocks of {block})" if block > 1 else "") + "; use the dense engine style")
        else:  # (the dense engine's lanes already hold whole blocks: a split always exists)
            g = stream_groups(c, cout, taps, P, block) if groups is None else int(groups)
        self.depthwise = depthwise
        self.grouped = conv_groups > 1 and not depthwise
        self.geometry = ConvGeometry(cout=cout, lanes=P, groups=g, conv_groups=conv_groups, **win)
        kc = P // g
        word = g if depthwise else kc
        blocks = 1 if depthwise else cin_g // kc if self.grouped else math.ceil(c / kc)
        self.stream = StreamGeometry(self.geometry, word=word, middle=self.geometry.channel_groups,
                                     inner=taps * blocks, per_channel=depthwise, blocks=blocks)

    def weight_words(self) -> list[int]:
        """Per (channel group, inner step): each lane's code, 0 where the lane has no input
        channel or its group no output channel."""
        g, sg, bits = self.geometry, self.stream, self.layer.format.bits
        kc, n = g.lanes_per_group, g.groups
        words = []
        for cg in range(g.channel_groups):
            for dy, dx, cb in sg.chunk_taps():
                word, tap = 0, dy * g.kw + dx
                for gi in range(n):
                    co = cg * n + gi
                    for jj in range(kc):
                        ci = 0 if self.depthwise else cb * kc + jj
                        if co < g.cout and ci < g.cin // g.conv_groups:
                            code = int(self.fanin_codes[co, tap * (g.cin // g.conv_groups) + ci])
                            word |= code << ((gi * kc + jj) * bits)
                words.append(word)
        return words

    @property
    def folded_bias(self) -> np.ndarray:
        """The dense engine's folded bias (its fan-in sum does not depend on the order)."""
        values = self.layer.values.reshape(self.geometry.cout, -1).astype(object)
        if self.layer.input.binary:
            return self.layer.bias.astype(object) - values.shape[1]
        return self.layer.bias.astype(object) - self.layer.input.zero_point * values.sum(axis=1)

    @property
    def activation_read_ports(self) -> int:
        return 1

    @property
    def memory_bits(self) -> dict[str, int]:
        bits = super().memory_bits
        bits.pop("activations")
        bits["weights"] = len(self.weight_words()) * self.geometry.lanes * self.layer.format.bits
        bits["line_buffer"] = self.stream.buffer_bits(self.layer.input.bits)
        return bits

    @property
    def expected_cycles(self) -> int:
        return self.stream.schedule()[0] + 4 + self.pipeline + self.geometry.last_group_size

    @property
    def head_start(self) -> int:
        return 0

    def describe(self) -> dict:
        """What the Verilog description JSON says of this engine."""
        g, sg = self.geometry, self.stream
        return {"format": self.layer.format.name, "engine": "stream", "lanes": g.lanes, "groups": g.groups,
                "lanes_per_group": g.lanes_per_group, "depthwise": self.depthwise, "accumulator_bits": self.acc_width,
                "pipeline": self.pipeline, "dense_macs": self.layer.macs, **_buffer(sg),
                "cycle_formula": "hw/window.py StreamGeometry.schedule (row by row) + pipeline + 4 + last_group_size"}

    def cycle_node(self) -> WindowNode:
        """This engine's control in the network's cycle model (``hw/cyclemodel.py``)."""
        g = self.geometry
        return WindowNode(self.stream, self.pipeline, [g.groups] * (g.channel_groups - 1) + [g.last_group_size])

    def elaborate(self, platform):
        m = Module()
        g, sg, layer = self.geometry, self.stream, self.layer
        bits, kc, W = layer.format.bits, g.lanes_per_group, self.acc_width
        zx = layer.input.zero_point
        lb = LineBuffer(m, self, sg, layer.input.bits)
        arr = m.submodules.array = self.mac_array()
        bank = OutputBank(m, self, W, g.groups, g.out_size)
        en = Signal(name="en")
        m.d.comb += [en.eq(~arr.done | bank.free), arr.en.eq(en), bank.capture.eq(arr.done & bank.free)]
        walk = _WindowWalk(m, sg, lb, en)
        walker = walk.walker

        # inner-step ROM: kernel row and column, word offset, and which lanes hold a channel
        lanes_here = 1 if self.depthwise else kc
        entry = data.StructLayout({"off": unsigned(uint_bits(max((g.kw - 1) * sg.words_per_pixel +
                                                                  sg.words_per_pixel - 1, 1))),
                                   "dy": unsigned(uint_bits(g.kh - 1)), "dx": unsigned(uint_bits(g.kw - 1)),
                                   "valid": unsigned(lanes_here)})
        rows = []
        for dy, dx, cb in sg.chunk_taps():
            valid = sum(1 << jj for jj in range(lanes_here) if self.depthwise or cb * kc + jj < g.cin // g.conv_groups)
            rows.append(pack(entry, [dict(off=dx * sg.words_per_pixel + cb, dy=dy, dx=dx, valid=valid)]))
        tap_rom = rom(m, "tap_rom", rows, entry.size)
        m.d.comb += tap_rom.addr.eq(walk.inner)
        tap = data.View(entry, tap_rom.data)
        if self.grouped:  # per channel group, the first word of its conv group's channels
            bases = [g.channel_base(cgi * g.groups) // kc for cgi in range(g.channel_groups)]
            base_rom = rom(m, "chan_base_rom", bases, uint_bits(max(bases)))
            m.d.comb += base_rom.addr.eq(walk.middle)
            lb.read(m, tap.dy, tap.off + base_rom.data, en)
        else:
            lb.read(m, tap.dy, tap.off + walk.middle if self.depthwise else tap.off, en)

        waddr = Signal(range(max(2, g.channel_groups * sg.inner)), name="waddr")
        wmem = rom(m, "weight_mem", self.weight_words(), g.lanes * bits, domain="sync")
        bmem = rom(m, "bias_mem", self.bias_words(), g.groups * W, domain="sync")
        m.d.comb += [wmem.addr.eq(waddr), wmem.en.eq(en), bmem.addr.eq(walk.middle), bmem.en.eq(en)]
        with m.If(walk.step):
            m.d.sync += waddr.eq(Mux(waddr == g.channel_groups * sg.inner - 1, 0, waddr + 1))

        self.array_control(m, arr, bmem.data, en, walk.issuing, walk.inner == 0, walk.inner == sg.inner - 1)
        inb_b, kv_b = Signal(name="inb_b"), Signal(lanes_here, name="kvalid_b")
        with m.If(en):
            m.d.sync += [inb_b.eq(walker.in_bounds(tap.dy, tap.dx)), kv_b.eq(tap.valid)]
        acts = []
        for gi in range(g.groups):
            for jj in range(kc):
                el, ok = (gi, kv_b[0]) if self.depthwise else (jj, kv_b[jj])
                acts.append(Mux(ok, Mux(inb_b, lb.element(el), zx), 0))
        self.feed(m, arr, acts, wmem.data, walk.inner, en)
        self.drain(m, bank, arr)
        return m


class StreamPoolEngine(PoolEngine):
    """Max and average pooling over a line buffer, one window tap per cycle (the pooling
    engine's loop nest and reduction)."""

    def __init__(self, layer: Layer, source_shapes: list[tuple] | None = None):
        super().__init__(layer, source_shapes)
        self.stream = StreamGeometry(self.geometry, word=1, middle=self.geometry.cin, inner=self.taps,
                                     per_channel=True)

    @property
    def expected_cycles(self) -> int:
        return self.stream.schedule()[0] + 5

    @property
    def memory_bits(self) -> dict[str, int]:
        return {"line_buffer": self.stream.buffer_bits(self.layer.input.bits)}

    def cycle_node(self) -> WindowNode:
        return WindowNode(self.stream, 0, [1])

    def describe(self) -> dict:
        g = self.geometry
        return {"engine": "stream", "kernel": [g.kh, g.kw], "stride": [g.sh, g.sw], "padding": [g.ph, g.pw],
                **_buffer(self.stream), "cycle_formula": "hw/window.py StreamGeometry.schedule (row by row) + 5"}

    def elaborate(self, platform):
        m = Module()
        g, sg = self.geometry, self.stream
        lb = LineBuffer(m, self, sg, self.layer.input.bits)
        done, en = Signal(name="done"), Signal(name="en")
        walk = _WindowWalk(m, sg, lb, en)
        entry = data.StructLayout({"off": unsigned(uint_bits(max(g.kw - 1, 1) * g.cin)),
                                   "dy": unsigned(uint_bits(g.kh - 1)), "dx": unsigned(uint_bits(g.kw - 1))})
        tap_rom = rom(m, "tap_rom", [pack(entry, [dict(off=dx * g.cin, dy=dy, dx=dx)]) for dy, dx, _ in sg.chunk_taps()],
                      entry.size)
        m.d.comb += tap_rom.addr.eq(walk.inner)
        t = data.View(entry, tap_rom.data)
        lb.read(m, t.dy, t.off + walk.middle, en)
        self.reduce(m, en, done, walk.issuing, walk.inner, lb.element(0), walk.walker.in_bounds(t.dy, t.dx))
        return m


class StreamGapEngine(PoolEngine):
    """Global average pooling as a running sum per channel: each input value adds ``x − Z``
    to its channel's sum (the first pixel starts it), and after the map's last value the
    ``C`` sums are requantized and sent, one a cycle.  No map is kept."""

    def __init__(self, layer: Layer, source_shapes: list[tuple] | None = None):
        if layer.op != "gap":
            raise ValueError(f"layer {layer.name!r} is {layer.op}, not a global average pooling layer")
        super().__init__(layer, source_shapes)

    @property
    def expected_cycles(self) -> int:
        return self.geometry.in_size + self.geometry.cin + 1

    @property
    def memory_bits(self) -> dict[str, int]:
        return {"sums": self.geometry.cin * self.sum_width}

    def cycle_node(self) -> GapNode:
        return GapNode(self.geometry.cin, self.geometry.in_size)

    def describe(self) -> dict:
        return {"engine": "stream", "running_sums": self.geometry.cin, "sum_bits": self.sum_width,
                "cycle_formula": "in_size + channels + 1"}

    def elaborate(self, platform):
        m = Module()
        g, layer = self.geometry, self.layer
        C, width, zx = g.cin, self.sum_width, layer.input.zero_point
        sums = m.submodules.sum_mem = Memory(shape=signed(width), depth=C, init=[])
        wp, rp = sums.write_port(), sums.read_port(domain="comb")
        c = Signal(range(max(2, C)), name="channel")
        pixel = Signal(range(max(2, g.h * g.w)), name="pixel")
        draining = Signal(name="draining")
        d = Signal(range(max(2, C)), name="drain_channel")
        m.d.comb += self.inp.ready.eq(~draining)
        accept = self.inp.valid & self.inp.ready
        term = Signal(signed(width), name="term")
        m.d.comb += [term.eq(self.inp.payload[:layer.input.bits] - zx),
                     rp.addr.eq(Mux(draining, d, c)), wp.addr.eq(c), wp.en.eq(accept),
                     wp.data.eq(Mux(pixel == 0, term, rp.data + term))]
        with m.If(accept):
            m.d.sync += c.eq(Mux(c == C - 1, 0, c + 1))
            with m.If(c == C - 1):
                m.d.sync += pixel.eq(Mux(pixel == g.h * g.w - 1, 0, pixel + 1))
                with m.If(pixel == g.h * g.w - 1):
                    m.d.sync += [draining.eq(1), d.eq(0)]
        rq = m.submodules.requant = Requantizer(width, (int(layer.shift[0]), int(layer.shift[0])),
                                                layer.output.zero_point, layer.output.qmin, layer.output.qmax)
        m.d.comb += [rq.acc.eq(rp.data), rq.m0.eq(int(layer.m0[0])), rq.shift.eq(int(layer.shift[0]))]
        out = self.out
        with m.If(draining & (~out.valid | out.ready)):
            m.d.sync += [out.payload.eq(rq.q), out.valid.eq(1), d.eq(d + 1)]
            with m.If(d == C - 1):
                m.d.sync += draining.eq(0)
        with m.Elif(out.ready):
            m.d.sync += out.valid.eq(0)
        return m


def stream_engine(layer: Layer, lanes, pipeline, groups, source_shape, index_bits, tap_fault):
    """The ``stream`` style's factory for a layer with weights (``hw/styles.py``)."""
    if family(layer.format.family).engine is not None:
        raise ValueError(f"layer {layer.name!r}: {layer.format.name} has an engine of its own (its family's); "
                         "the stream style builds MAC arrays: use the dense engine style")
    return StreamConvEngine(layer, lanes=lanes, groups=groups, pipeline=pipeline, source_shape=source_shape,
                            tap_fault=tap_fault)


def stream_window_engine(layer: Layer, source_shapes: list[tuple] | None = None):
    """The ``stream`` style's engine for the ops without weights that it streams."""
    if layer.op in ("add", "concat"):
        return StreamJoinEngine(layer, source_shapes)
    return (StreamGapEngine if layer.op == "gap" else StreamPoolEngine)(layer, source_shapes)


class SkipFifo:
    """A FIFO of ``depth`` codes on a join's input port with a combinational head (a small
    memory with an asynchronous read, LUT RAM on an FPGA), ``count`` codes held and
    ``hwm``, the most it has held (its high-water mark), and ``stalls``, the cycles a
    value waited at the full FIFO while the join starved (``starved``: it waits for another
    input); both are observation only, which co-simulation reads (synthesis drops them)."""

    def __init__(self, m: Module, port, depth: int, width: int, name: str, hwm: Signal | None = None,
                 stalls: Signal | None = None, starved=0):
        self.depth = depth
        mem = m.submodules[f"{name}_mem"] = Memory(shape=unsigned(width), depth=depth, init=[])
        wp, rp = mem.write_port(), mem.read_port(domain="comb")
        self.count = Signal(range(depth + 1), name=f"{name}_count")
        self.hwm = Signal(range(depth + 1), name=f"{name}_hwm") if hwm is None else hwm
        self.pop = Signal(name=f"{name}_pop")
        wptr = Signal(range(max(2, depth)), name=f"{name}_wptr")
        rptr = Signal(range(max(2, depth)), name=f"{name}_rptr")
        push = Signal(name=f"{name}_push")
        m.d.comb += [port.ready.eq(self.count != depth), push.eq(port.valid & port.ready),
                     wp.addr.eq(wptr), wp.data.eq(port.payload[:width]), wp.en.eq(push), rp.addr.eq(rptr)]
        self.head, self.nonempty = rp.data, self.count != 0
        nxt = self.count + push - self.pop
        m.d.sync += self.count.eq(nxt)
        self.stalls = Signal(32, name=f"{name}_stalls") if stalls is None else stalls
        with m.If(port.valid & ~port.ready & starved):
            m.d.sync += self.stalls.eq(self.stalls + 1)
        with m.If(nxt > self.hwm):
            m.d.sync += self.hwm.eq(nxt)
        with m.If(push):
            m.d.sync += wptr.eq(Mux(wptr == depth - 1, 0, wptr + 1))
        with m.If(self.pop):
            m.d.sync += rptr.eq(Mux(rptr == depth - 1, 0, rptr + 1))


class StreamJoinEngine(JoinEngine):
    """A residual ``add`` or a ``concat`` that joins its inputs as they stream: each input
    waits in a :class:`SkipFifo` (an add's skip path for as long as the branch takes), and
    an output is issued when its operands are at the FIFOs' heads (an add: both inputs'
    value ``i``; a concat: per pixel input 0's channels, then input 1's, …).

    ``depths`` (per input) is what the network's cycle model computes for this join
    (``hw/cyclemodel.py``: the smallest depths that never stall the stream); alone, each
    FIFO holds its input's whole map, so the join never stalls whatever the order."""

    def __init__(self, layer: Layer, source_shapes: list[tuple] | None = None, depths: list[int] | None = None):
        if layer.op not in ("add", "concat"):
            raise ValueError(f"layer {layer.name!r} is {layer.op}: the stream style joins add and concat")
        super().__init__(layer, source_shapes)
        self.depths = list(depths) if depths is not None else list(self.in_sizes)
        #: per input, its FIFO's high-water mark (what a co-simulation reads)
        self.fifo_hwm = [Signal(range(size + 1), name=f"in{j}_fifo_hwm") for j, size in enumerate(self.in_sizes)]
        #: per input, the cycles it waited at its full FIFO while the join starved (skew stalls)
        self.fifo_stalls = [Signal(32, name=f"in{j}_fifo_stalls") for j in range(len(self.in_sizes))]

    @property
    def expected_cycles(self) -> int:
        """Inputs valid and ``out`` ready throughout, the FIFOs deep enough: an output a cycle
        from the cycle after the first input, ``out_size + 2`` in all."""
        return self.out_size + 2

    def describe(self) -> dict:
        return {"engine": "stream", "inputs": list(self.layer.inputs), "fifo_depths": list(self.depths),
                "memory_bits": self.memory_bits, "cycle_formula": "out_size + 2 (alone; in a network: the cycle model)"}

    def cycle_node(self, unbounded: bool = False) -> JoinNode:
        """The join in the cycle model: its FIFOs at their depths, or unbounded (to size them)."""
        return JoinNode(self.layer.op == "add", self.channels if self.layer.op == "concat" else [1] * 2,
                        [None] * len(self.depths) if unbounded else list(self.depths))

    @property
    def memory_bits(self) -> dict[str, int]:
        bits = {"skip_fifos": sum(d * w for d, w in zip(self.depths, self.widths))}
        if self.layer.op == "concat":
            bits["requant"] = len(self.layer.m0) * requant_layout(int(max(self.layer.shift))).size
        return bits

    def elaborate(self, platform):
        m = Module()
        n = len(self.fmts)
        for j, (d, size) in enumerate(zip(self.depths, self.in_sizes)):
            if not 1 <= d <= size:
                raise ValueError(f"layer {self.layer.name!r}: input {j}'s FIFO depth {d} is outside 1..{size}")
        issuing = Signal(name="issuing")
        fifos = [SkipFifo(m, port, d, w, f"in{j}_fifo", hwm, stalls, ~issuing)
                 for j, (port, d, w, hwm, stalls) in enumerate(zip(self.inputs, self.depths, self.widths,
                                                                   self.fifo_hwm, self.fifo_stalls))]
        out = self.out
        en = Signal(name="en")
        m.d.comb += en.eq(~out.valid | out.ready)
        if self.layer.op == "add":
            m.d.comb += issuing.eq(fifos[0].nonempty & fifos[1].nonempty)
            m.d.comb += [f.pop.eq(en & issuing) for f in fifos]
            rq = self.add_code(m, [f.head for f in fifos])
        else:  # per pixel: input 0's channels, then input 1's, ...
            sel = Signal(range(max(2, n)), name="sel")
            local = Signal(range(max(2, max(self.channels))), name="local")
            m.d.comb += issuing.eq(Array([f.nonempty for f in fifos])[sel])
            for j, f in enumerate(fifos):
                m.d.comb += f.pop.eq(en & issuing & (sel == j))
            with m.If(en & issuing):
                for j in range(n):
                    with m.If(sel == j):
                        with m.If(local == self.channels[j] - 1):
                            m.d.sync += [local.eq(0), sel.eq(0 if j == n - 1 else j + 1)]
                        with m.Else():
                            m.d.sync += local.eq(local + 1)
            rq = self.concat_code(m, sel, [f.head for f in fifos])
        with m.If(en):
            m.d.sync += [out.valid.eq(issuing), out.payload.eq(rq.q)]
        return m
