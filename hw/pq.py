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
"""
from __future__ import annotations

from amaranth.hdl import Array, Module, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.lib.wiring import In

from quantrtl.hw.arith import adder_tree, signed_width
from quantrtl.hw.array import MacArray
from quantrtl.hw.geometry import conv_memory_bits
from quantrtl.hw.layer import ConvEngine
from quantrtl.hw.parts import rom
from quantrtl.model.numbers.pq import PQFormat

__all__ = ["TableArray", "TableConvEngine", "chunk_codebooks"]


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
    :class:`PQFormat`; lanes per group a multiple of its ``sub``).  Operand ports: ``act``,
    the ``P / G`` activations of the step (shared by the groups); ``code``, per group its
    ``S`` indices; ``codebook``, the step's ``S`` codebooks (signed 8-bit codewords).
    """

    def __init__(self, fmt: PQFormat, lanes: int, acc_width: int, groups: int = 1, act_bits: int = 8,
                 pipeline: int = 0):
        if not isinstance(fmt, PQFormat) or not fmt.fitted:
            raise ValueError(f"a table array needs a fitted pq format, got {getattr(fmt, 'name', fmt)!r}")
        super().__init__(fmt, lanes, acc_width, groups=groups, act_bits=act_bits, pipeline=pipeline)

    @property
    def subvectors(self) -> int:
        """S, whole sub-vectors per step and group."""
        return self.lanes_per_group // self.fmt.sub

    def operand_ports(self) -> dict:
        fmt, s = self.fmt, self.lanes_per_group // self.fmt.sub
        return {"act": In(data.ArrayLayout(unsigned(self.act_bits), self.lanes_per_group)),
                "code": In(data.ArrayLayout(unsigned(fmt.bits), self.groups * s)),
                "codebook": In(data.ArrayLayout(signed(fmt.CODEWORD_BITS), s * fmt.codewords * fmt.sub))}

    def products(self, m: Module) -> tuple[list[list], int]:
        """Table builder, then each group's selection: ``G * S`` table entries to add."""
        fmt, S, K, sub = self.fmt, self.subvectors, self.fmt.codewords, self.fmt.sub
        width = signed_width(*fmt.table_bounds(self.act_bits))
        table = []
        for s in range(S):
            row = []
            for k in range(K):
                base = (s * K + k) * sub
                prods = [self.codebook[base + j] * self.act[s * sub + j] for j in range(sub)]
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
    :class:`~quantrtl.hw.layer.ConvEngine`; a grouped convolution is refused: its output
    channels read different inputs, so no table is shared)."""

    def __init__(self, layer, lanes: int = 8, groups: int | None = None, pipeline: int = 0, source_shape=None,
                 tap_fault: int | None = None):
        if not isinstance(layer.format, PQFormat):
            raise ValueError(f"layer {layer.name!r}: a table engine takes pq weights, not {layer.format.name}")
        if layer.op == "conv2d" and layer.groups != 1:
            raise ValueError(f"layer {layer.name!r}: table accumulation shares one table among output channels; "
                             f"a grouped convolution (groups {layer.groups}) has none to share")
        if lanes % layer.format.sub:
            raise ValueError(f"layer {layer.name!r}: lanes ({lanes}) must be a multiple of the sub-vector length "
                             f"{layer.format.sub} ({layer.format.name})")
        super().__init__(layer, lanes=lanes, groups=groups, pipeline=pipeline, source_shape=source_shape,
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

    def mac_array(self) -> TableArray:
        """The engine's table array (also synthesized alone as the datapath)."""
        g = self.geometry
        return TableArray(self.layer.format, g.lanes, self.acc_width, groups=g.groups, act_bits=self.layer.input.bits,
                          pipeline=self.pipeline)

    def weight_words(self) -> list[int]:
        """Per (channel group, chunk): each group's index of each sub-vector of the chunk."""
        g, fmt, S = self.geometry, self.layer.format, self.subvectors
        kc, bits = g.lanes_per_group, fmt.bits
        words = []
        for cg in range(g.channel_groups):
            for t in range(g.chunks):
                word = 0
                for gi in range(g.groups):
                    for s in range(S):
                        c, k = cg * g.groups + gi, t * kc + s * fmt.sub
                        code = int(self.fanin_codes[c, k]) if c < g.cout and k < g.fan_in else 0
                        word |= code << ((gi * S + s) * bits)
                words.append(word)
        return words

    def feed(self, m: Module, arr: TableArray, acts: list, word, chunk, en) -> None:
        """The chunk's activations (one group's: the groups read the same), the groups'
        indices from the weight word, the chunk's codebooks from a ROM read with it."""
        fmt, g = self.layer.format, self.geometry
        books = chunk_codebooks(fmt, g.fan_in, g.lanes_per_group, self.channels)
        cw = fmt.CODEWORD_BITS
        entries = len(books[0])
        cb_rom = rom(m, "codebook_rom", [sum((v % (1 << cw)) << (i * cw) for i, v in enumerate(b)) for b in books],
                     entries * cw, domain="sync")
        m.d.comb += [cb_rom.addr.eq(chunk), cb_rom.en.eq(en), arr.codebook.as_value().eq(cb_rom.data)]
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

