"""Layer engines: conv2d/linear on a MAC array, max pooling, ReLU.

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

import math
import operator
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from model.artifact import M0_BITS, Layer

from .array import MacArray, term_widths
from model.layout import stream_to_chw_index
from .requant import Requantizer

__all__ = ["ConvGeometry", "ConvEngine", "MaxPoolEngine", "ReluEngine", "make_engine", "choose_groups"]


def _bits(n: int) -> int:
    """Unsigned width for values 0..n (at least 1)."""
    return max(1, int(n).bit_length())


def choose_groups(fan_in: int, cout: int, lanes: int, block: int = 1) -> int:
    """Lane groups that minimise run cycles per pixel, ``ceil(cout/G) * ceil(K/(P/G))``.

    Only groups whose output drain (G cycles) fits in the compute time of a group
    (``ceil(K/(P/G))`` cycles) are allowed, so the output never stalls the array;
    ties go to fewer groups (fewer accumulators).  With ``block > 1`` (unified weights)
    every group must hold whole blocks.
    """
    if lanes % block:
        raise ValueError(f"lanes ({lanes}) must be a multiple of the unified block size {block}")
    best = None
    for g in range(1, lanes + 1):
        if lanes % g or (lanes // g) % block:
            continue
        t = math.ceil(fan_in / (lanes // g))
        if g > t and g > 1:
            continue
        cost = (math.ceil(cout / g) * t, g)
        best = min(best, cost) if best else cost
    return best[1]


@dataclass(frozen=True)
class ConvGeometry:
    """Loop nest of a conv2d (or linear, as a 1×1 conv on a 1×1 map) engine."""

    cin: int
    h: int
    w: int
    cout: int
    kh: int = 1
    kw: int = 1
    sh: int = 1
    sw: int = 1
    ph: int = 0
    pw: int = 0
    lanes: int = 1
    groups: int = 1

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.sw + 1

    @property
    def fan_in(self) -> int:
        return self.cin * self.kh * self.kw

    @property
    def lanes_per_group(self) -> int:
        return self.lanes // self.groups

    @property
    def chunks(self) -> int:
        """T: cycles per channel group per pixel."""
        return math.ceil(self.fan_in / self.lanes_per_group)

    @property
    def channel_groups(self) -> int:
        return math.ceil(self.cout / self.groups)

    @property
    def pixels(self) -> int:
        return self.oh * self.ow

    @property
    def in_size(self) -> int:
        return self.cin * self.h * self.w

    @property
    def out_size(self) -> int:
        return self.cout * self.pixels

    @property
    def run_cycles(self) -> int:
        """Cycles in which the array is fed: pixels × channel groups × chunks."""
        return self.pixels * self.channel_groups * self.chunks

    @property
    def last_group_size(self) -> int:
        return self.cout - (self.channel_groups - 1) * self.groups

    def cycles(self, pipeline: int) -> int:
        """Cycles from the first input handshake to the last output handshake, inclusive,
        with ``inp`` valid and ``out`` ready throughout (docs/hardware.md)."""
        return self.in_size + self.run_cycles + pipeline + 3 + self.last_group_size

    def taps(self) -> list[tuple[int, int, int]]:
        """Fan-in order k → (dy, dx, ci), input channel fastest (matches the stream order)."""
        return [(dy, dx, ci) for dy in range(self.kh) for dx in range(self.kw) for ci in range(self.cin)]

    @classmethod
    def from_layer(cls, layer: Layer, lanes: int, groups: int | None = None) -> "ConvGeometry":
        if layer.op == "conv2d":
            (cin, h, w), cout = layer.in_shape, layer.out_shape[0]
            kw = dict(kh=layer.kernel[0], kw=layer.kernel[1], sh=layer.stride[0], sw=layer.stride[1],
                      ph=layer.padding[0], pw=layer.padding[1])
        elif layer.op == "linear":
            (cin,), h, w, cout, kw = layer.in_shape, 1, 1, layer.out_shape[0], {}
        else:
            raise ValueError(f"layer {layer.name!r}: a MAC engine needs conv2d or linear, not {layer.op}")
        lanes = operator.index(lanes)
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        fan_in = cin * kw.get("kh", 1) * kw.get("kw", 1)
        g = choose_groups(fan_in, cout, lanes, layer.format.block) if groups is None else operator.index(groups)
        return cls(cin=cin, h=h, w=w, cout=cout, lanes=lanes, groups=g, **kw)


def _rom(m: Module, name: str, words: list[int], width: int, domain: str = "comb"):
    """A read-only memory initialised at generation time; returns its read port."""
    mem = m.submodules[name] = Memory(shape=unsigned(width), depth=max(1, len(words)), init=words or [0])
    return mem.read_port(domain=domain)


def _stream_ports() -> dict:
    return {"inp": In(stream.Signature(unsigned(8))), "out": Out(stream.Signature(unsigned(8)))}


class _PixelWalker:
    """Stage-A address generation shared by the engines: output pixel counters, the
    top-left input coordinate of the current window, and per-tap address and bounds.

    ``tap_fields`` are Values (dy, dx, off) from a tap ROM; the input address is
    ``pbase + off`` with ``pbase = (by * W + bx) * C``.
    """

    @staticmethod
    def shapes(g: ConvGeometry):
        """Shapes of the window's top-left row ``by``, column ``bx`` and flat base ``pbase``."""
        ymin, ymax = -g.ph, (g.oh - 1) * g.sh - g.ph
        xmin, xmax = -g.pw, (g.ow - 1) * g.sw - g.pw
        lo, hi = (ymin * g.w + xmin) * g.cin, (ymax * g.w + xmax) * g.cin
        return (Shape.cast(range(ymin, ymax + 1)), Shape.cast(range(xmin, xmax + 1)),
                Shape.cast(range(min(lo, 0), max(hi, 0) + 1)))

    def __init__(self, m: Module, g: ConvGeometry, name: str):
        self.g = g
        self.oy = Signal(range(max(2, g.oh)), name=f"{name}_oy")
        self.ox = Signal(range(max(2, g.ow)), name=f"{name}_ox")
        by, bx, pbase = self.shapes(g)
        start = (-g.ph * g.w - g.pw) * g.cin
        self.by = Signal(by, init=-g.ph, name=f"{name}_by")
        self.bx = Signal(bx, init=-g.pw, name=f"{name}_bx")
        self.row = Signal(pbase, init=start, name=f"{name}_row")
        self.pbase = Signal(pbase, init=start, name=f"{name}_pbase")
        self.last_pixel = (self.oy == g.oh - 1) & (self.ox == g.ow - 1)

    def reset(self, m: Module):
        g = self.g
        m.d.sync += [self.oy.eq(0), self.ox.eq(0), self.by.eq(-g.ph), self.bx.eq(-g.pw),
                     self.row.eq((-g.ph * g.w - g.pw) * g.cin), self.pbase.eq((-g.ph * g.w - g.pw) * g.cin)]

    def advance(self, m: Module):
        g = self.g
        with m.If(self.ox == g.ow - 1):
            m.d.sync += [self.ox.eq(0), self.bx.eq(-g.pw)]
            with m.If(self.oy == g.oh - 1):
                self.reset(m)
            with m.Else():
                step = g.sh * g.w * g.cin
                m.d.sync += [self.oy.eq(self.oy + 1), self.by.eq(self.by + g.sh),
                             self.row.eq(self.row + step), self.pbase.eq(self.row + step)]
        with m.Else():
            m.d.sync += [self.ox.eq(self.ox + 1), self.bx.eq(self.bx + g.sw),
                         self.pbase.eq(self.pbase + g.sw * g.cin)]

    def loop(self, m: Module, start, step, inner: Signal, n_inner: int, middle: Signal, n_middle: int,
             issued_all: Signal):
        """The loop nest pixel → middle → inner: ``start`` resets it, each ``step``
        advances it, and ``issued_all`` rises after the last iteration."""
        with m.If(start):
            m.d.sync += [inner.eq(0), middle.eq(0), issued_all.eq(0)]
            self.reset(m)
        with m.Elif(step):
            with m.If(inner == n_inner - 1):
                m.d.sync += inner.eq(0)
                with m.If(middle == n_middle - 1):
                    m.d.sync += middle.eq(0)
                    self.advance(m)
                    with m.If(self.last_pixel):
                        m.d.sync += issued_all.eq(1)
                with m.Else():
                    m.d.sync += middle.eq(middle + 1)
            with m.Else():
                m.d.sync += inner.eq(inner + 1)

    def address(self, off):
        return (self.pbase + off).as_unsigned()

    def in_bounds(self, dy, dx):
        g = self.g
        if g.ph == 0 and g.pw == 0:
            return Const(1)  # no padding: every window lies inside the map
        iy, ix = self.by + dy, self.bx + dx
        return (iy >= 0) & (iy < g.h) & (ix >= 0) & (ix < g.w)


class _Loader:
    """The load phase: accept ``size`` activations from ``inp`` into an activation memory."""

    def __init__(self, m: Module, engine, size: int, read_ports: int, name: str = "act", width: int = 8):
        self.mem = m.submodules[f"{name}_mem"] = Memory(shape=unsigned(width), depth=size, init=[])
        self.wp = self.mem.write_port()
        self.rps = [self.mem.read_port(domain="sync") for _ in range(read_ports)]
        self.running = Signal(name="running")
        self.count = Signal(range(max(2, size)), name=f"{name}_count")
        self.start = Signal(name="start")  # one cycle: the last input was accepted
        inp = engine.inp
        m.d.comb += [inp.ready.eq(~self.running), self.wp.addr.eq(self.count), self.wp.data.eq(inp.payload[:width])]
        with m.If(inp.valid & inp.ready):
            m.d.comb += self.wp.en.eq(1)
            with m.If(self.count == size - 1):
                m.d.sync += [self.count.eq(0), self.running.eq(1)]
                m.d.comb += self.start.eq(1)
            with m.Else():
                m.d.sync += self.count.eq(self.count + 1)


class _OutputBank:
    """The drain phase: a bank of finished values streamed out one per cycle.

    ``capture`` loads the bank (and must only be asserted when ``free``); each cycle
    the output register takes the next value through ``convert`` when it is empty or
    being accepted.  ``finished`` pulses with the handshake of the engine's last output.
    """

    def __init__(self, m: Module, engine, width: int, size: int, out_size: int):
        out = engine.out
        self.values = [Signal(signed(width), name=f"bank{i}") for i in range(size)]
        self.remaining = Signal(range(size + 1), name="bank_remaining")
        self.idx = Signal(range(max(2, size)), name="bank_idx")
        self.take = Signal(name="take")
        self.free = Signal(name="bank_free")
        self.capture = Signal(name="capture")
        self.finished = Signal(name="finished")
        self.sent = Signal(range(max(2, out_size)), name="sent")
        self.current = Signal(signed(width), name="bank_current")
        m.d.comb += [
            self.take.eq((~out.valid | out.ready) & (self.remaining != 0)),
            self.free.eq((self.remaining == 0) | ((self.remaining == 1) & self.take)),
            self.current.eq(Cat(*self.values).word_select(self.idx, width).as_signed()
                            if size > 1 else self.values[0]),
        ]
        self._out, self._out_size = out, out_size

    def connect(self, m: Module, new_values, new_count, converted):
        """Wire capture of ``new_values`` (``new_count`` of them valid) and the output register."""
        out = self._out
        with m.If(self.take):
            m.d.sync += [out.payload.eq(converted), out.valid.eq(1),
                         self.idx.eq(self.idx + 1), self.remaining.eq(self.remaining - 1)]
        with m.Elif(out.ready):
            m.d.sync += out.valid.eq(0)
        with m.If(self.capture):
            m.d.sync += [v.eq(n) for v, n in zip(self.values, new_values)]
            m.d.sync += [self.remaining.eq(new_count), self.idx.eq(0)]
        with m.If(out.valid & out.ready):
            with m.If(self.sent == self._out_size - 1):
                m.d.sync += self.sent.eq(0)
                m.d.comb += self.finished.eq(1)
            with m.Else():
                m.d.sync += self.sent.eq(self.sent + 1)


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
    """

    def __init__(self, layer: Layer, lanes: int = 8, groups: int | None = None, pipeline: int = 0,
                 source_shape: tuple[int, ...] | None = None):
        if not layer.has_weights:
            raise ValueError(f"layer {layer.name!r} ({layer.op}) has no weights for a MAC engine")
        self.layer = layer
        self.geometry = ConvGeometry.from_layer(layer, lanes, groups)
        self.pipeline = operator.index(pipeline)
        self.acc_width = layer.accumulator_bits
        self.source_shape = tuple(source_shape) if source_shape is not None else None
        for side, q in (("input", layer.input), ("output", layer.output)):
            if q.bits != (1 if q.binary else 8):
                raise ValueError(f"layer {layer.name!r}: engines take 8-bit or binary (pm1) activations, "
                                 f"{side} has {q.bits} bits ({q.encoding})")
        if layer.input.binary != layer.format.binary_input:
            raise ValueError(f"layer {layer.name!r}: format {layer.format.name} does not match the "
                             f"{layer.input.encoding} input")
        self._weights = self._weight_matrix()
        fmt = layer.format
        if fmt.block > 1:  # unified: the array multiplies one magnitude per block of lanes
            if tuple(fmt.source or ()) != tuple(self.source_shape or ()) and layer.op == "linear":
                raise ValueError(f"layer {layer.name!r}: unified blocks were cut for input {fmt.source}, "
                                 f"but the engine streams {self.source_shape}")
            fmt.check_blocks(layer.codes, f"layer {layer.name!r}: ")
        super().__init__(_stream_ports())

    # ---- generation-time tables --------------------------------------------------
    def _weight_matrix(self) -> np.ndarray:
        """Codes as (cout, K) in the engine's fan-in order."""
        layer, g = self.layer, self.geometry
        codes = layer.codes
        if layer.op == "conv2d":
            return np.transpose(codes, (0, 2, 3, 1)).reshape(g.cout, -1)  # (dy, dx, ci), ci fastest
        if self.source_shape is not None and len(self.source_shape) == 3:
            if int(np.prod(self.source_shape)) != g.cin:
                raise ValueError(f"layer {layer.name!r}: source shape {self.source_shape} does not flatten to {g.cin}")
            return codes[:, stream_to_chw_index(self.source_shape)]
        return codes

    @property
    def folded_bias(self) -> np.ndarray:
        """``b - Z_x * sum_k w`` per channel: the zero point enters once, through the bias.
        Binary (pm1) inputs: the XNOR PE gives ``w * x + 1`` per tap, so ``b - K``."""
        if self.layer.input.binary:
            return self.layer.bias.astype(object) - self.geometry.fan_in
        values = self.layer.format.decode(self._weights)
        return self.layer.bias.astype(object) - self.layer.input.zero_point * values.astype(object).sum(axis=1)

    def weight_words(self) -> list[int]:
        g, bits = self.geometry, self.layer.format.bits
        kc = g.lanes_per_group
        words = []
        for cg in range(g.channel_groups):
            for t in range(g.chunks):
                word = 0
                for gi in range(g.groups):
                    for j in range(kc):
                        c, k = cg * g.groups + gi, t * kc + j
                        code = int(self._weights[c, k]) if c < g.cout and k < g.fan_in else 0
                        word |= code << ((gi * kc + j) * bits)
                words.append(word)
        return words

    def mac_array(self) -> MacArray:
        """The engine's MAC array (also synthesized alone as the datapath)."""
        g, fmt = self.geometry, self.layer.format
        widths = term_widths(fmt, self._weights) if fmt.terms > 1 else None
        return MacArray(fmt, g.lanes, self.acc_width, groups=g.groups, act_bits=self.layer.input.bits,
                        pipeline=self.pipeline, term_widths=widths)

    @property
    def memory_bits(self) -> dict[str, int]:
        g, bits = self.geometry, self.layer.format.bits
        return {"weights": g.channel_groups * g.chunks * g.lanes * bits,
                "bias": g.channel_groups * g.groups * self.acc_width,
                "requant": g.channel_groups * g.groups * (M0_BITS + _bits(int(self.layer.shift.max()))),
                "activations": g.in_size * self.layer.input.bits}

    @property
    def expected_cycles(self) -> int:
        return self.geometry.cycles(self.pipeline)

    # ---- hardware ----------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        g, layer = self.geometry, self.layer
        bits, kc, W = layer.format.bits, g.lanes_per_group, self.acc_width
        zx = layer.input.zero_point

        load = _Loader(m, self, g.in_size, kc, width=layer.input.bits)
        walker = _PixelWalker(m, g, "px")
        arr = m.submodules.array = self.mac_array()
        bank = _OutputBank(m, self, W, g.groups, g.out_size)
        en = Signal(name="en")
        m.d.comb += en.eq(~arr.done | bank.free)
        m.d.comb += [arr.en.eq(en), bank.capture.eq(arr.done & bank.free)]

        # tap ROM: per chunk t, for each lane j: (off, dy, dx, valid)
        taps = g.taps()
        off_w = _bits(max((dy * g.w + dx) * g.cin + ci for dy, dx, ci in taps))
        dy_w, dx_w = _bits(g.kh - 1), _bits(g.kw - 1)
        fw = off_w + dy_w + dx_w + 1
        words = []
        for t in range(g.chunks):
            word = 0
            for j in range(kc):
                k = t * kc + j
                if k < g.fan_in:
                    dy, dx, ci = taps[k]
                    f = ((dy * g.w + dx) * g.cin + ci) | (dy << off_w) | (dx << (off_w + dy_w)) | (1 << (fw - 1))
                    word |= f << (j * fw)
            words.append(word)
        t = Signal(range(max(2, g.chunks)), name="chunk")
        cg = Signal(range(max(2, g.channel_groups)), name="cgroup")
        waddr = Signal(range(max(2, g.channel_groups * g.chunks)), name="waddr")
        tap_rom = _rom(m, "tap_rom", words, kc * fw)
        m.d.comb += tap_rom.addr.eq(t)

        # weight and bias memories (synchronous reads, stage A → B)
        wmem = _rom(m, "weight_mem", self.weight_words(), g.lanes * bits, domain="sync")
        bias = [int(b) % (1 << W) for b in self.folded_bias] + [0] * (g.channel_groups * g.groups - g.cout)
        bwords = [sum(bias[cgi * g.groups + gi] << (gi * W) for gi in range(g.groups)) for cgi in range(g.channel_groups)]
        bmem = _rom(m, "bias_mem", bwords, g.groups * W, domain="sync")
        m.d.comb += [wmem.addr.eq(waddr), wmem.en.eq(en), bmem.addr.eq(cg), bmem.en.eq(en)]

        issuing = Signal(name="issuing")
        issued_all = Signal(name="issued_all")
        m.d.comb += issuing.eq(load.running & ~issued_all)
        lane_ok = []
        for j, rp in enumerate(load.rps):
            f = tap_rom.data[j * fw:(j + 1) * fw]
            off, dy, dx, kvalid = f[:off_w], f[off_w:off_w + dy_w], f[off_w + dy_w:fw - 1], f[fw - 1]
            m.d.comb += [rp.addr.eq(walker.address(off)), rp.en.eq(en)]
            kv_b, inb_b = Signal(name=f"kvalid{j}"), Signal(name=f"inb{j}")
            with m.If(en):
                m.d.sync += [kv_b.eq(kvalid), inb_b.eq(walker.in_bounds(dy, dx))]
            lane_ok.append((rp.data, kv_b, inb_b))

        # stage B: array inputs
        v_b, first_b, last_b = Signal(name="valid_b"), Signal(name="first_b"), Signal(name="last_b")
        with m.If(en):
            m.d.sync += [v_b.eq(issuing), first_b.eq(t == 0), last_b.eq(t == g.chunks - 1)]
        m.d.comb += [arr.valid.eq(v_b), arr.first.eq(first_b), arr.last.eq(last_b)]
        for gi in range(g.groups):
            m.d.comb += arr.init[gi].eq(bmem.data[gi * W:(gi + 1) * W].as_signed())
            for j, (data_, kv_b, inb_b) in enumerate(lane_ok):
                lane = gi * kc + j
                m.d.comb += [arr.act[lane].eq(Mux(kv_b, Mux(inb_b, data_, zx), 0)),
                             arr.code[lane].eq(wmem.data[lane * bits:(lane + 1) * bits])]

        # stage A: the loop nest pixel → channel group → chunk
        walker.loop(m, load.start, en & issuing, t, g.chunks, cg, g.channel_groups, issued_all)
        last_addr = g.channel_groups * g.chunks - 1
        with m.If(load.start):
            m.d.sync += waddr.eq(0)
        with m.Elif(en & issuing):
            m.d.sync += waddr.eq(Mux(waddr == last_addr, 0, waddr + 1))

        self._drain(m, load, bank, arr)
        return m

    def _drain(self, m: Module, load: "_Loader", bank: "_OutputBank", arr: MacArray) -> None:
        """Output bank → requantizer (M0, n per channel from a ROM) → out stream; back to load."""
        g, layer, W = self.geometry, self.layer, self.acc_width
        out_cg = Signal(range(max(2, g.channel_groups)), name="out_cgroup")
        drain_cg = Signal(range(max(2, g.channel_groups)), name="drain_cgroup")
        with m.If(bank.capture):
            m.d.sync += [drain_cg.eq(out_cg), out_cg.eq(Mux(out_cg == g.channel_groups - 1, 0, out_cg + 1))]
        count = Mux(out_cg == g.channel_groups - 1, g.last_group_size, g.groups)
        if layer.activation == "sign":  # binary output: acc >= 0 (the threshold is in the bias)
            bank.connect(m, [arr.acc[gi] for gi in range(g.groups)], count, ~bank.current[-1])
            with m.If(bank.finished):
                m.d.sync += load.running.eq(0)
            return
        nb = _bits(int(layer.shift.max()))
        consts = [int(m0) | (int(n) << M0_BITS) for m0, n in zip(layer.m0, layer.shift)]
        rq_rom = _rom(m, "requant_rom", consts, M0_BITS + nb)
        m.d.comb += rq_rom.addr.eq(drain_cg * g.groups + bank.idx)
        rq = m.submodules.requant = Requantizer(W, (int(layer.shift.min()), int(layer.shift.max())),
                                                layer.output.zero_point, layer.out_min, layer.out_max)
        m.d.comb += [rq.acc.eq(bank.current), rq.m0.eq(rq_rom.data[:M0_BITS]), rq.shift.eq(rq_rom.data[M0_BITS:])]
        bank.connect(m, [arr.acc[gi] for gi in range(g.groups)], count, rq.q)
        with m.If(bank.finished):
            m.d.sync += load.running.eq(0)


class MaxPoolEngine(wiring.Component):
    """Integer max pooling (docs/integer-semantics.md §4), one window tap per cycle.

    Loop nest: output pixel → channel → window tap; out-of-bounds (padding) taps read
    as 0, the smallest code.  Output order is the stream order (channel fastest).
    """

    def __init__(self, layer: Layer):
        if layer.op != "maxpool":
            raise ValueError(f"layer {layer.name!r} is {layer.op}, not maxpool")
        c, h, w = layer.in_shape
        self.layer = layer
        self.geometry = ConvGeometry(cin=c, h=h, w=w, cout=c, kh=layer.kernel[0], kw=layer.kernel[1],
                                     sh=layer.stride[0], sw=layer.stride[1], ph=layer.padding[0], pw=layer.padding[1])
        super().__init__(_stream_ports())

    @property
    def taps(self) -> int:
        return self.geometry.kh * self.geometry.kw

    @property
    def expected_cycles(self) -> int:
        g = self.geometry
        return g.in_size + g.pixels * g.cout * self.taps + 4

    @property
    def memory_bits(self) -> dict[str, int]:
        return {"activations": self.geometry.in_size * self.layer.input.bits}

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        load = _Loader(m, self, g.in_size, 1, width=self.layer.input.bits)
        walker = _PixelWalker(m, g, "px")
        bank = _OutputBank(m, self, 9, 1, g.out_size)
        done = Signal(name="done")
        en = Signal(name="en")
        m.d.comb += [en.eq(~done | bank.free), bank.capture.eq(done & bank.free)]

        off_w = _bits((g.kh - 1) * g.w * g.cin + (g.kw - 1) * g.cin)
        dy_w, dx_w = _bits(g.kh - 1), _bits(g.kw - 1)
        words = [((dy * g.w + dx) * g.cin) | (dy << off_w) | (dx << (off_w + dy_w))
                 for dy in range(g.kh) for dx in range(g.kw)]
        tap = Signal(range(max(2, self.taps)), name="tap")
        ch = Signal(range(max(2, g.cin)), name="channel")
        rom = _rom(m, "tap_rom", words, off_w + dy_w + dx_w)
        m.d.comb += rom.addr.eq(tap)
        off, dy, dx = rom.data[:off_w], rom.data[off_w:off_w + dy_w], rom.data[off_w + dy_w:]
        rp = load.rps[0]
        m.d.comb += [rp.addr.eq(walker.address(off + ch)), rp.en.eq(en)]

        issuing, issued_all = Signal(name="issuing"), Signal(name="issued_all")
        m.d.comb += issuing.eq(load.running & ~issued_all)
        v_b, first_b, last_b, inb_b = (Signal(name=n) for n in ("valid_b", "first_b", "last_b", "inb_b"))
        with m.If(en):
            m.d.sync += [v_b.eq(issuing), first_b.eq(tap == 0), last_b.eq(tap == self.taps - 1),
                         inb_b.eq(walker.in_bounds(dy, dx))]
        value = Mux(inb_b, rp.data, 0)
        best = Signal(unsigned(8), name="best")
        with m.If(en):
            m.d.sync += done.eq(v_b & last_b)
            with m.If(v_b):
                m.d.sync += best.eq(Mux(first_b | (value > best), value, best))

        walker.loop(m, load.start, en & issuing, tap, self.taps, ch, g.cin, issued_all)

        bank.connect(m, [best], 1, bank.current[:8])
        with m.If(bank.finished):
            m.d.sync += load.running.eq(0)
        return m


class ReluEngine(wiring.Component):
    """Unfused ReLU on a stream (§5): ``max(q, Z)``, combinational pass-through."""

    def __init__(self, layer: Layer):
        self.layer = layer
        super().__init__(_stream_ports())

    @property
    def expected_cycles(self) -> int:
        return int(np.prod(self.layer.in_shape))

    @property
    def memory_bits(self) -> dict[str, int]:
        return {}

    def elaborate(self, platform):
        m = Module()
        z = self.layer.input.zero_point
        m.d.comb += [self.out.valid.eq(self.inp.valid), self.inp.ready.eq(self.out.ready),
                     self.out.payload.eq(Mux(self.inp.payload > z, self.inp.payload, z))]
        return m


def make_engine(layer: Layer, lanes: int = 8, pipeline: int = 0, groups: int | None = None,
                source_shape: tuple[int, ...] | None = None, sparse: bool = False, index_bits: int = 4):
    """The engine for one artifact layer (zero-skipping for conv2d/linear when ``sparse``)."""
    if layer.has_weights and sparse:
        from .sparse import SparseConvEngine

        return SparseConvEngine(layer, lanes=lanes, pipeline=pipeline, source_shape=source_shape,
                                index_bits=index_bits)
    if layer.has_weights:
        return ConvEngine(layer, lanes=lanes, groups=groups, pipeline=pipeline, source_shape=source_shape)
    if layer.op == "maxpool":
        return MaxPoolEngine(layer)
    if layer.op == "relu":
        return ReluEngine(layer)
    raise ValueError(f"layer {layer.name!r}: no engine for op {layer.op!r}")
