"""Public building blocks of the layer engines, and the layouts of their memory words.

The dense (``hw/layer.py``) and the zero-skipping (``hw/sparse.py``) engines compose the
same parts: an :class:`ActivationBuffer` (the load phase and the activation memory's read
ports), a :class:`PixelWalker` (output pixel counters, window base address, padding
bounds, the loop nest) and an :class:`OutputBank` (the drain: finished accumulators
streamed out through a converter such as the requantizer).  Each part elaborates into the
engine's own module (``m``), so an engine is one Verilog module with the signal names the
parts give; their interfaces are the attributes documented on each class.

Memory words are ``amaranth.lib.data`` layouts, packed at generation time with
``layout.const(...)`` and read through views: :func:`tap_layout` (tap ROM entries),
:func:`requant_layout` (``M0`` and the shift per channel), :func:`sparse_entry_layout`
(relative-index stream entries with an :class:`EntryKind`).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, enum, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from quantrtl.hw.geometry import ConvGeometry, uint_bits
from quantrtl.model.numbers.artifact import M0_BITS

__all__ = ["rom", "stream_ports", "code_width", "CODE_WIDTHS", "PixelWalker", "ActivationBuffer", "OutputBank", "tap_layout", "requant_layout",
           "EntryKind", "sparse_entry_layout", "pack"]


def tap_layout(g: ConvGeometry, channels: bool = True, valid: bool = True) -> data.StructLayout:
    """A tap ROM entry: input offset from the window base, kernel row and column, and
    (for a lane of a chunk) whether the fan-in position exists.  ``channels=False``: the
    offset of a whole pixel (max pooling walks the channel itself)."""
    off = max((dy * g.w + dx) * g.cin + (ci if channels else 0) for dy, dx, ci in g.taps())
    fields = {"off": unsigned(uint_bits(off)), "dy": unsigned(uint_bits(g.kh - 1)),
              "dx": unsigned(uint_bits(g.kw - 1))}
    if valid:
        fields["valid"] = unsigned(1)
    return data.StructLayout(fields)


def requant_layout(shift_max: int) -> data.StructLayout:
    """Requantization constants of one channel: the multiplier ``M0`` and the shift ``n``."""
    return data.StructLayout({"m0": unsigned(M0_BITS), "shift": unsigned(uint_bits(shift_max))})


class EntryKind(enum.Enum, shape=2):
    """What a relative-index stream entry holds."""

    ABSENT = 0  # past a channel's last entry in its last word
    WEIGHT = 1
    FILLER = 2  # a zero weight that only carries a run longer than the index can say


def sparse_entry_layout(index_bits: int, code_bits: int) -> data.StructLayout:
    """A relative-index stream entry: zeros skipped before it, its weight code, its kind."""
    return data.StructLayout({"run": unsigned(index_bits), "code": unsigned(code_bits), "kind": EntryKind})


def pack(layout, entries: list) -> int:
    """Entries (dicts of field values, or None for an all-zero entry) packed into one word,
    entry 0 in the low bits: a memory word of ``len(entries)`` layout-sized fields."""
    word = 0
    for j, e in enumerate(entries):
        if e is not None:
            word |= layout.const(e).as_bits() << (j * layout.size)
    return word


def rom(m: Module, name: str, words: list[int], width: int, domain: str = "comb"):
    """A read-only memory of ``width``-bit words initialised at generation time; returns
    its read port (view its ``data`` through a layout of this module to read fields)."""
    mem = m.submodules[name] = Memory(shape=unsigned(width), depth=max(1, len(words)), init=words or [0])
    return mem.read_port(domain=domain)


#: Widths of the codes streams carry: 8 bits, or 16 for a wide code (up to 16-bit
#: activations: an add's operand that is a conv/linear output, docs/integer-semantics.md §8).
CODE_WIDTHS = (8, 16)


def code_width(fmt) -> int:
    """The stream width of codes of activation format ``fmt``."""
    return next(w for w in CODE_WIDTHS if fmt.bits <= w)


def stream_ports(in_width: int = 8, out_width: int = 8) -> dict:
    return {"inp": In(stream.Signature(unsigned(in_width))), "out": Out(stream.Signature(unsigned(out_width)))}


class PixelWalker:
    """Stage-A address generation shared by the engines: output pixel counters, the
    top-left input coordinate of the current window, and per-tap address and bounds.

    A tap (fields ``off``, ``dy``, ``dx`` of :func:`tap_layout`) addresses the input at
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


class ActivationBuffer:
    """The load phase: accept ``size`` activations from the engine's ``inp`` into an
    activation memory with ``read_ports`` synchronous read ports (``rps``).

    ``running`` is high from the last accepted input until the engine clears it after
    its last output; ``start`` pulses once when the whole map has arrived.

    With ``slots=2`` the memory holds two maps (a double buffer): the next map loads
    while the engine works on this one.  ``running`` then says a whole map is there,
    the engine pulses ``release`` (instead of clearing ``running``) after its last
    output, and reads at ``read_base`` + its address."""

    def __init__(self, m: Module, engine, size: int, read_ports: int, name: str = "act", width: int = 8, inp=None,
                 slots: int = 1):
        if slots not in (1, 2):
            raise ValueError(f"an activation buffer holds 1 or 2 maps, not {slots}")
        self.mem = m.submodules[f"{name}_mem"] = Memory(shape=unsigned(width), depth=size * slots, init=[])
        self.wp = self.mem.write_port()
        self.rps = [self.mem.read_port(domain="sync") for _ in range(read_ports)]
        self.running = Signal(name="running" if name == "act" else f"{name}_running")
        self.count = Signal(range(max(2, size)), name=f"{name}_count")
        self.start = Signal(name=f"{name}_start" if name != "act" else "start")  # the last input was accepted
        inp = engine.inp if inp is None else inp
        if slots == 2:  # whole maps held, the slot being written and the one being read
            full = Signal(range(3), name=f"{name}_full")
            wslot, rslot = Signal(name=f"{name}_wslot"), Signal(name=f"{name}_rslot")
            self.release = Signal(name=f"{name}_release")
            self.read_base = Mux(rslot, size, 0)
            ready, held, addr, on_last = full != 2, [self.running.eq(full != 0)], self.count + Mux(wslot, size, 0), \
                [wslot.eq(~wslot)]
        else:
            ready, held, addr, on_last = ~self.running, [], self.count, [self.running.eq(1)]
        m.d.comb += [inp.ready.eq(ready), *held, self.wp.addr.eq(addr), self.wp.data.eq(inp.payload[:width])]
        with m.If(inp.valid & inp.ready):
            m.d.comb += self.wp.en.eq(1)
            with m.If(self.count == size - 1):
                m.d.sync += [self.count.eq(0), *on_last]
                m.d.comb += self.start.eq(1)
            with m.Else():
                m.d.sync += self.count.eq(self.count + 1)
        if slots == 2:
            with m.If(self.release):
                m.d.sync += rslot.eq(~rslot)
            m.d.sync += full.eq(full + self.start - self.release)


class OutputBank:
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
