"""Product quantization hardware (``pqN``, Quantized CNN): table building and table accumulation.

A ``pqN`` layer's weights are, per output channel and kernel (or map) position, one
codeword index per subspace of ``sub`` input channels (``model/numbers/pq.py``).  The
dot product of an output channel is then a sum of table entries
``T[s][k] = <codeword k of subspace m(s), x_s>`` over the input sub-vectors ``x_s`` of
its window, the entry chosen by the channel's stored index.

:class:`TableArray` is the datapath, in place of the MAC array and with its timing and
accumulators (``hw/array.py``): per step it takes the ``P / G`` activations of one
fan-in chunk (``S = P / (G * sub)`` whole sub-vectors) and the chunk's codebooks, builds
the ``S * K`` table entries (``K * P / G`` products of a signed 8-bit codeword entry and
an activation, adder trees of ``sub``), and each of the ``G`` lane groups (output
channels) selects ``S`` entries by its indices (``K``-to-1 multiplexers) and adds them:
``G * P / G = P`` dense MACs per cycle, like a ``P``-lane MAC array, with ``K * P / G``
multipliers instead of ``P``.  The table is built once per step and shared by every
output channel, so its cost grows with ``K`` and the accumulation's with ``G``: table
accumulation pays when a step serves more output channels than it has codewords.

:class:`TableConvEngine` is the dense conv/linear engine (``hw/layer.py``) on that
datapath: the same loop nest, activation buffer, biases and requantizer; its weight
memory holds ``G * S`` indices per word (one per sub-vector, not per weight) and a
codebook ROM holds each chunk's ``S`` codebooks (``S * K * sub`` codewords).

Unrolled (hard-wired) style, :class:`UnrolledTableLayer`: one output pixel per cycle, all
output channels at once.  Each input sub-vector of the window has a :class:`TableSlice`
(the codewords some output channel selects there, as constant multiplies: shift-add
networks); each output channel is a :class:`ChannelSum`, an adder tree over the entries
its indices select (the selection is wiring).  :func:`unrolled_parts` lists the distinct
parts and how many of each a layer has (what the gate comparison synthesizes).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from amaranth.hdl import Array, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from quantrtl.hw.arith import adder_tree, signed_width
from quantrtl.hw.array import MacArray
from quantrtl.hw.geometry import conv_memory_bits
from quantrtl.hw.layer import ConvEngine
from quantrtl.hw.parts import rom
from quantrtl.hw.unrolled import UnrolledDot
from quantrtl.model.numbers.pq import PQFormat

__all__ = ["TableArray", "TableConvEngine", "chunk_codebooks", "TableSlice", "ChannelSum", "UnrolledTableLayer",
           "unrolled_parts"]


def chunk_codebooks(fmt: PQFormat, fan_in: int, chunk_width: int, channels: int) -> list[list[int]]:
    """Per chunk of ``chunk_width`` consecutive fan-in positions, the codewords of its
    sub-vectors in order (``S`` codebooks of ``K`` codewords of ``sub`` entries, flat);
    fan-in position ``p`` reads channel ``p % channels`` (the engines' fan-in order:
    input channel fastest), a padded sub-vector past the fan-in gets zero codewords."""
    cb, sub = fmt.codebook_array, fmt.sub
    words = []
    for start in range(0, fan_in, chunk_width):
        flat = []
        for s in range(chunk_width // sub):
            p = start + s * sub
            flat += cb[(p % channels) // sub].ravel().tolist() if p < fan_in else [0] * (fmt.codewords * sub)
        words.append(flat)
    return words


class TableArray(MacArray):
    """The ``pqN`` datapath with the MAC array's control, accumulators and timing.

    Parameters are :class:`~quantrtl.hw.array.MacArray`'s (``fmt`` a fitted
    :class:`PQFormat`; lanes per group a multiple of its ``sub``) and ``books``: per chunk
    of the loop nest, the flat codewords of its ``S`` sub-vectors' codebooks
    (:func:`chunk_codebooks`), held in the array's codebook ROM as a MAC array's PEs hold
    their constants.  Operand ports: ``act``, the ``P / G`` activations of the step
    (shared by the groups); ``code``, per group its ``S`` indices; ``chunk``, the step's
    chunk (the ROM address).
    """

    def __init__(self, fmt: PQFormat, lanes: int, acc_width: int, books: list[list[int]], groups: int = 1,
                 act_bits: int = 8, pipeline: int = 0):
        if not isinstance(fmt, PQFormat) or not fmt.fitted:
            raise ValueError(f"a table array needs a fitted pq format, got {getattr(fmt, 'name', fmt)!r}")
        self.books = [list(b) for b in books]
        per = (lanes // groups) // fmt.sub * fmt.codewords * fmt.sub if lanes % groups == 0 else None
        if not self.books or any(len(b) != per for b in self.books):
            raise ValueError(f"a table array needs, per chunk, {per} codewords (S sub-vectors x K x sub)")
        super().__init__(fmt, lanes, acc_width, groups=groups, act_bits=act_bits, pipeline=pipeline)

    @property
    def subvectors(self) -> int:
        """S, whole sub-vectors per step and group."""
        return self.lanes_per_group // self.fmt.sub

    def operand_ports(self) -> dict:
        fmt, s = self.fmt, self.subvectors
        return {"act": In(data.ArrayLayout(unsigned(self.act_bits), self.lanes_per_group)),
                "code": In(data.ArrayLayout(unsigned(fmt.bits), self.groups * s)),
                "chunk": In(range(max(2, len(self.books))))}

    def products(self, m: Module) -> tuple[list[list], int]:
        """Codebook ROM, table builder, then each group's selection: ``G * S`` table entries to add."""
        fmt, S, K, sub = self.fmt, self.subvectors, self.fmt.codewords, self.fmt.sub
        cw = fmt.CODEWORD_BITS
        n = S * K * sub
        cb_rom = rom(m, "codebook_rom", [sum((v % (1 << cw)) << (i * cw) for i, v in enumerate(b)) for b in self.books],
                     n * cw)
        m.d.comb += cb_rom.addr.eq(self.chunk)
        codebook = data.View(data.ArrayLayout(signed(cw), n), cb_rom.data)
        width = signed_width(*fmt.table_bounds(self.act_bits))
        table = []
        for s in range(S):
            row = []
            for k in range(K):
                base = (s * K + k) * sub
                prods = [codebook[base + j] * self.act[s * sub + j] for j in range(sub)]
                entry = Signal(signed(width), name=f"table{s}_{k}")
                m.d.comb += entry.eq(adder_tree(m, prods, f"tb{s}_{k}"))
                row.append(entry)
            table.append(Array(row))
        chosen = []
        for g in range(self.groups):
            for s in range(S):
                sel = Signal(signed(width), name=f"sel{g}_{s}")
                m.d.comb += sel.eq(table[s][self.code[g * S + s]])
                chosen.append(sel)
        return [chosen], S


class TableConvEngine(ConvEngine):
    """A ``pqN`` conv2d/linear layer on a :class:`TableArray` (parameters as
    :class:`~quantrtl.hw.layer.ConvEngine`; of ``lanes`` the largest multiple of the
    sub-vector length is used; a grouped convolution is refused: its output channels read
    different inputs, so no table is shared)."""

    def __init__(self, layer, lanes: int = 8, groups: int | None = None, pipeline: int = 0, source_shape=None,
                 tap_fault: int | None = None):
        if not isinstance(layer.format, PQFormat):
            raise ValueError(f"layer {layer.name!r}: a table engine takes pq weights, not {layer.format.name}")
        if layer.op == "conv2d" and layer.groups != 1:
            raise ValueError(f"layer {layer.name!r}: table accumulation shares one table among output channels; "
                             f"a grouped convolution (groups {layer.groups}) has none to share")
        sub = layer.format.sub
        if lanes < sub:
            raise ValueError(f"layer {layer.name!r}: lanes ({lanes}) must be at least the sub-vector length {sub} "
                             f"({layer.format.name}: a step takes whole sub-vectors)")
        # a step takes whole sub-vectors: P - P mod sub lanes work (the actual rate says so)
        super().__init__(layer, lanes=lanes - lanes % sub, groups=groups, pipeline=pipeline, source_shape=source_shape,
                         tap_fault=tap_fault)

    @property
    def channels(self) -> int:
        """The channel count the subspaces split, in fan-in order (position ``p`` reads
        channel ``p % channels``)."""
        g, src = self.geometry, self.source_shape
        if self.layer.op == "linear":
            return src[0] if src is not None and len(src) == 3 else g.cin
        return g.cin

    @property
    def subvectors(self) -> int:
        return self.geometry.lanes_per_group // self.layer.format.sub

    @staticmethod
    def unrolled_parts(fmt, codes, act_bits: int = 8):
        return unrolled_parts(fmt, codes, act_bits)

    def mac_array(self) -> TableArray:
        """The engine's table array (also synthesized alone as the datapath)."""
        g = self.geometry
        books = chunk_codebooks(self.layer.format, g.fan_in, g.lanes_per_group, self.channels)
        return TableArray(self.layer.format, g.lanes, self.acc_width, books, groups=g.groups,
                          act_bits=self.layer.input.bits, pipeline=self.pipeline)

    @property
    def code_stride(self) -> int:
        """An index per sub-vector: the weight words hold ``G * S`` indices."""
        return self.layer.format.sub

    def feed(self, m: Module, arr: TableArray, acts: list, word, chunk, en) -> None:
        """The chunk's activations (one group's: the groups read the same), the groups'
        indices from the weight word (read a cycle after ``chunk``), and that chunk."""
        fmt, g = self.layer.format, self.geometry
        chunk_b = Signal.like(chunk, name="chunk_b")
        with m.If(en):
            m.d.sync += chunk_b.eq(chunk)
        m.d.comb += arr.chunk.eq(chunk_b)
        for j in range(g.lanes_per_group):
            m.d.comb += arr.act[j].eq(acts[j])
        for i in range(g.groups * self.subvectors):
            m.d.comb += arr.code[i].eq(word[i * fmt.bits:(i + 1) * fmt.bits])

    @property
    def memory_bits(self) -> dict[str, int]:
        """The dense engine's memories with an index per sub-vector, plus the codebook ROM."""
        g, fmt = self.geometry, self.layer.format
        bits = conv_memory_bits(g, fmt.bits, self.acc_width, self.layer.input.bits, self.shift_max)
        bits["weights"] = g.channel_groups * g.chunks * g.groups * self.subvectors * fmt.bits
        bits["codebooks"] = g.chunks * self.subvectors * fmt.codewords * fmt.sub * fmt.CODEWORD_BITS
        return bits



def _slice_width(codewords, act_bits: int) -> int:
    amax = (1 << act_bits) - 1
    lo = min(sum(min(v, 0) for v in cw) for cw in codewords) * amax
    hi = max(sum(max(v, 0) for v in cw) for cw in codewords) * amax
    return signed_width(lo, hi)


class TableSlice(wiring.Component):
    """The hard-wired table of one input sub-vector: ``entry[i] = <codewords[i], x>``
    (constant codewords: each a shift-add network, ``hw/unrolled.py``), combinational."""

    def __init__(self, codewords, act_bits: int = 8):
        self.codewords = [tuple(int(v) for v in cw) for cw in codewords]
        if not self.codewords or len({len(cw) for cw in self.codewords}) != 1:
            raise ValueError("a table slice needs one or more codewords of one length")
        self.act_bits = int(act_bits)
        self.width = _slice_width(self.codewords, self.act_bits)
        super().__init__({"x": In(data.ArrayLayout(unsigned(self.act_bits), len(self.codewords[0]))),
                          "entry": Out(data.ArrayLayout(signed(self.width), len(self.codewords)))})

    def elaborate(self, platform):
        m = Module()
        for i, cw in enumerate(self.codewords):
            dot = m.submodules[f"cw{i}"] = UnrolledDot(cw, self.act_bits, register_output=False)
            m.d.comb += [dot.x.eq(self.x), self.entry[i].eq(dot.y)]
        return m


class ChannelSum(wiring.Component):
    """One output channel of an unrolled pq layer: the sum of the ``n`` table entries its
    indices select, registered (one output per cycle)."""

    def __init__(self, n: int, width: int):
        self.n, self.width = int(n), int(width)
        super().__init__({"entries": In(data.ArrayLayout(signed(self.width), self.n)),
                          "y": Out(signed(self.width + (self.n - 1).bit_length()))})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.y.eq(adder_tree(m, [self.entries[i] for i in range(self.n)], "sum"))
        return m


def _used(fmt: PQFormat, codes) -> tuple[np.ndarray, dict]:
    """The layer's (cout, M, P) indices and, per sub-vector (m, p), the codewords selected there."""
    index = fmt.index(codes)
    _, M, P = index.shape
    return index, {(mm, p): sorted(set(index[:, mm, p].tolist())) for mm in range(M) for p in range(P)}


class UnrolledTableLayer(wiring.Component):
    """A whole ``pqN`` layer unrolled: the window ``x`` (PyTorch's flattened fan-in order,
    channel-major) in, every output channel's dot product ``y`` out one cycle later."""

    def __init__(self, fmt: PQFormat, codes, act_bits: int = 8):
        self.fmt, self.act_bits = fmt, int(act_bits)
        self.index, self.used = _used(fmt, codes)
        cout, M, P = self.index.shape
        cb = fmt.codebook_array
        self.width = max(_slice_width([cb[mm][k] for k in ks], self.act_bits) for (mm, _), ks in self.used.items())
        self.fan_in = M * fmt.sub * P
        y = self.width + (M * P - 1).bit_length()
        super().__init__({"x": In(data.ArrayLayout(unsigned(self.act_bits), self.fan_in)),
                          "y": Out(data.ArrayLayout(signed(y), cout))})

    def elaborate(self, platform):
        m = Module()
        fmt, cb = self.fmt, self.fmt.codebook_array
        cout, M, P = self.index.shape
        slices = {}
        for (mm, p), ks in self.used.items():
            sl = m.submodules[f"slice{mm}_{p}"] = TableSlice([cb[mm][k] for k in ks], self.act_bits)
            for j in range(fmt.sub):
                m.d.comb += sl.x[j].eq(self.x[(mm * fmt.sub + j) * P + p])
            slices[mm, p] = sl
        for c in range(cout):
            acc = m.submodules[f"channel{c}"] = ChannelSum(M * P, self.width)
            for i, (mm, p) in enumerate((mm, p) for mm in range(M) for p in range(P)):
                sl = slices[mm, p]
                m.d.comb += acc.entries[i].eq(sl.entry[self.used[mm, p].index(int(self.index[c, mm, p]))])
            m.d.comb += self.y[c].eq(acc.y)
        return m


def unrolled_parts(fmt: PQFormat, codes, act_bits: int = 8) -> list[tuple[str, wiring.Component, int]]:
    """The distinct parts of :class:`UnrolledTableLayer` for ``codes`` and how many the
    layer has: ``(name, component, count)``, one per distinct table slice (a subspace and
    the codewords used there) and the channel sum (the same for every output channel)."""
    index, used = _used(fmt, codes)
    cout, M, P = index.shape
    cb = fmt.codebook_array
    kinds = Counter((mm, tuple(ks)) for (mm, _), ks in used.items())
    parts = [(f"slice{i}", TableSlice([cb[mm][k] for k in ks], act_bits), n)
             for i, ((mm, ks), n) in enumerate(sorted(kinds.items()))]
    width = max(p[1].width for p in parts)
    return parts + [("channel", ChannelSum(M * P, width), cout)]
