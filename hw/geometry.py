"""Engine geometry, schedules, cycle formulas and memory-bit accounting (pure Python).

The one place these numbers are defined: the engines (``hw/layer.py``, ``hw/sparse.py``)
build their loop nests from them, the Verilog description JSON (``hw/verilog.py``) and
the comparisons (``synth/``) read them without elaborating anything, and
docs/hardware.md states the same formulas.  No Amaranth here.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np

from quantrtl.model.numbers.artifact import M0_BITS, Layer
from quantrtl.model.numbers.formats import WeightFormat
from quantrtl.model.numbers.layout import stream_to_chw_index
from quantrtl.model.numbers.sparse import encode_row, zero_code

__all__ = ["uint_bits", "choose_groups", "ConvGeometry", "fanin_codes", "conv_memory_bits", "maxpool_cycles",
           "relu_cycles", "ZeroSkipSchedule", "SparseSchedule", "BroadcastSchedule", "MAXPOOL_CYCLE_FORMULA"]


def uint_bits(n: int) -> int:
    """Unsigned width for values 0..n (at least 1)."""
    return max(1, int(n).bit_length())


def choose_groups(fan_in: int, cout: int, lanes: int, block: int = 1, more_groups: bool = False) -> int:
    """Lane groups that minimise run cycles per pixel, ``ceil(cout/G) * ceil(K/(P/G))``.

    Only groups whose output drain (G cycles) fits in the compute time of a group
    (``ceil(K/(P/G))`` cycles) are allowed, so the output never stalls the array;
    ties go to fewer groups (fewer accumulators).  With ``block > 1`` (unified blocks, pq
    sub-vectors: the format's ``lane_block``) every group must hold whole blocks;
    ``more_groups``: ties go to more groups (a datapath whose per-step work the groups share).
    """
    if lanes % block:
        raise ValueError(f"lanes ({lanes}) must be a multiple of the format's block size {block}")
    best = None
    for g in range(1, lanes + 1):
        if lanes % g or (lanes // g) % block:
            continue
        t = math.ceil(fan_in / (lanes // g))
        if g > t and g > 1:
            continue
        cost = (math.ceil(cout / g) * t, -g if more_groups else g)
        best = min(best, cost) if best else cost
    return abs(best[1])


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
    #: the convolution's own groups (depthwise: ``cin``): output channel ``c`` reads only
    #: input channels ``(c // (cout/conv_groups)) * (cin/conv_groups) + 0 … cin/conv_groups − 1``
    conv_groups: int = 1
    #: an injected control fault (``hw/faults.py``): this fan-in position's tap table
    #: entry points at the next position's input (None: the correct table)
    tap_fault: int | None = None

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.sw + 1

    @property
    def fan_in(self) -> int:
        return self.cin // self.conv_groups * self.kh * self.kw

    def channel_base(self, c: int) -> int:
        """The first input channel output channel ``c`` reads (0 unless grouped)."""
        if c >= self.cout:
            return 0
        return c // (self.cout // self.conv_groups) * (self.cin // self.conv_groups)

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

    #: :meth:`cycles`, as the Verilog description JSON and docs/hardware.md state it.
    CYCLE_FORMULA = "in_size + pixels*channel_groups*chunks + pipeline + 3 + last_group_size"

    def cycles(self, pipeline: int) -> int:
        """Cycles from the first input handshake to the last output handshake, inclusive,
        with ``inp`` valid and ``out`` ready throughout (docs/hardware.md): load, run, the
        pipeline, three cycles of memory/array/bank latency, and the last group's drain."""
        return self.in_size + self.run_cycles + pipeline + 3 + self.last_group_size

    @property
    def tap_offsets(self) -> list[int]:
        """Per fan-in position, the input offset ``(dy * W + dx) * C + ci`` from the window's base."""
        return [(dy * self.w + dx) * self.cin + ci for dy, dx, ci in self.taps()]

    def taps(self) -> list[tuple[int, int, int]]:
        """Fan-in order k → (dy, dx, ci), input channel fastest (matches the stream order);
        ``ci`` counts from the output channel's :meth:`channel_base`."""
        taps = [(dy, dx, ci) for dy in range(self.kh) for dx in range(self.kw)
                for ci in range(self.cin // self.conv_groups)]
        if self.tap_fault is not None:
            taps[self.tap_fault] = taps[(self.tap_fault + 1) % len(taps)]
        return taps

    @classmethod
    def from_layer(cls, layer: Layer, lanes: int, groups: int | None = None,
                   tap_fault: int | None = None) -> "ConvGeometry":
        if layer.op == "conv2d":
            (cin, h, w), cout = layer.in_shape, layer.out_shape[0]
            kw = dict(kh=layer.kernel[0], kw=layer.kernel[1], sh=layer.stride[0], sw=layer.stride[1],
                      ph=layer.padding[0], pw=layer.padding[1], conv_groups=layer.groups)
        elif layer.op == "linear":
            (cin,), h, w, cout, kw = layer.in_shape, 1, 1, layer.out_shape[0], {}
        else:
            raise ValueError(f"layer {layer.name!r}: a MAC engine needs conv2d or linear, not {layer.op}")
        lanes = operator.index(lanes)
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        fan_in = cin // kw.get("conv_groups", 1) * kw.get("kh", 1) * kw.get("kw", 1)
        g = (choose_groups(fan_in, cout, lanes, layer.format.lane_block, layer.format.prefers_more_groups)
             if groups is None else operator.index(groups))
        if tap_fault is not None and not 0 <= tap_fault < fan_in:
            raise ValueError(f"layer {layer.name!r}: tap fault at fan-in position {tap_fault}, outside 0..{fan_in - 1}")
        return cls(cin=cin, h=h, w=w, cout=cout, lanes=lanes, groups=g, tap_fault=tap_fault, **kw)


def fanin_codes(layer: Layer, g: ConvGeometry, source_shape: tuple | None = None, values: bool = False) -> np.ndarray:
    """A conv/linear layer's codes (its decoded integer weights with ``values``) as
    (cout, K) in the engines' fan-in order: (dy, dx, ci) with the input channel fastest; a
    linear layer fed by a (C, H, W) map (``source_shape``) takes its columns in that map's
    stream order."""
    codes = layer.values if values else layer.codes
    if layer.op == "conv2d":
        return np.transpose(codes, (0, 2, 3, 1)).reshape(g.cout, -1)
    if source_shape is not None and len(source_shape) == 3:
        if int(np.prod(source_shape)) != g.cin:
            raise ValueError(f"layer {layer.name!r}: source shape {tuple(source_shape)} does not flatten to {g.cin}")
        return codes[:, stream_to_chw_index(tuple(source_shape))]
    return codes


def conv_memory_bits(g: ConvGeometry, code_bits: int, acc_width: int, act_bits: int, shift_max: int | None,
                     requant_words: int | None = None) -> dict[str, int]:
    """Bits of a dense conv/linear engine's memories: weight words (P codes per address,
    padded groups and chunks included), biases and requantization constants (``M0`` and
    the shift, one per padded channel; none for a ``sign`` layer: ``shift_max`` None),
    and the activation buffer."""
    channels = g.channel_groups * g.groups if requant_words is None else requant_words
    return {"weights": g.channel_groups * g.chunks * g.lanes * code_bits,
            "bias": channels * acc_width,
            "requant": 0 if shift_max is None else channels * (M0_BITS + uint_bits(shift_max)),
            "activations": g.in_size * act_bits}


#: :func:`maxpool_cycles`, as the Verilog description JSON states it.
MAXPOOL_CYCLE_FORMULA = "in_size + pixels*channels*kh*kw + 4"


def maxpool_cycles(g: ConvGeometry) -> int:
    """Max pooling, one window tap per cycle: load, pixels × channels × taps, 4 of latency."""
    return g.in_size + g.pixels * g.cout * g.kh * g.kw + 4


def relu_cycles(in_shape) -> int:
    """An unfused ReLU passes one value per cycle."""
    return int(np.prod(in_shape))


class ZeroSkipSchedule:
    """What both zero-skipping schedules share: built from a layer's codes in fan-in
    order, entries of ``index_bits`` + ``code_bits`` + a 2-bit kind."""

    index_bits: int
    code_bits: int

    @classmethod
    def build(cls, g: ConvGeometry, weights: np.ndarray, fmt: WeightFormat, index_bits: int):
        raise NotImplementedError

    @classmethod
    def for_layer(cls, layer: Layer, lanes: int, index_bits: int, source_shape: tuple | None = None):
        """The schedule of ``layer`` on a ``lanes``-lane zero-skipping engine (one lane group)."""
        g = ConvGeometry.from_layer(layer, lanes, groups=1)
        return cls.build(g, fanin_codes(layer, g, source_shape), layer.format, index_bits)

    @property
    def entry_width(self) -> int:
        """run + code + a 2-bit kind (absent, weight, filler)."""
        return self.index_bits + self.code_bits + 2


@dataclass(frozen=True)
class SparseSchedule(ZeroSkipSchedule):
    """The zero-skipping engine's schedule: each (pixel, channel) takes ``words_c =
    max(1, ceil(entries_c / P))`` cycles over the channel's relative-index entries."""

    geometry: ConvGeometry
    rows: tuple
    index_bits: int
    code_bits: int

    #: :meth:`cycles`, as the Verilog description JSON and docs/hardware.md state it.
    CYCLE_FORMULA = "in_size + pixels*sum_c(max(1, ceil(entries_c/lanes))) + pipeline + 5"

    @classmethod
    def build(cls, g: ConvGeometry, weights: np.ndarray, fmt: WeightFormat, index_bits: int) -> "SparseSchedule":
        """``weights``: codes as (cout, K) in the engine's fan-in order (:func:`fanin_codes`)."""
        return cls(g, tuple(encode_row(r, fmt, index_bits) for r in weights), index_bits, fmt.bits)

    def channel_words(self) -> list[int]:
        p = self.geometry.lanes
        return [max(1, math.ceil(r.entries / p)) for r in self.rows]

    @property
    def nonzero_weights(self) -> int:
        return int(sum((~r.filler).sum() for r in self.rows))

    @property
    def run_cycles(self) -> int:
        return self.geometry.pixels * sum(self.channel_words())

    def cycles(self, pipeline: int) -> int:
        """Load, run, the pipeline, five cycles of latency (entry memory, decoder, gather,
        array, bank) and the one-output drain."""
        return self.geometry.in_size + self.run_cycles + pipeline + 5

    @property
    def ideal_cycles(self) -> int:
        """``ceil(nonzero MACs / lanes)``: every lane busy on a nonzero weight every cycle."""
        return math.ceil(self.geometry.pixels * self.nonzero_weights / self.geometry.lanes)

    def memory_bits(self, acc_width: int, shift_max: int | None) -> dict[str, int]:
        g = self.geometry
        return {"entries": sum(self.channel_words()) * g.lanes * self.entry_width,
                "bias": g.cout * acc_width,
                "requant": 0 if shift_max is None else g.cout * (M0_BITS + uint_bits(shift_max)),
                "activations": g.in_size * 8}


@dataclass(frozen=True)
class BroadcastSchedule(ZeroSkipSchedule):
    """The activation-broadcast engine's tables (``hw/broadcast.py``): output channels
    assigned to lanes, and per lane and input channel a *column*: the lane's weights that
    an input activation of that channel meets, in the order (kernel row, kernel column,
    the lane's channel), as relative-index entries (:func:`encode_row`).

    Channels go to lanes largest nonzero count first, each to the least loaded lane that
    has room for it (at most ``ceil(Cout / P)`` per lane), so every lane holds about the
    same number of nonzero weights.  ``lanes`` is ``min(P, Cout)``: a lane owns at least
    one output channel.
    """

    geometry: ConvGeometry
    #: per lane, its output channels (position ``cl`` = the lane's channel index)
    channels: tuple
    #: per lane, per input channel, the column's relative-index row
    columns: tuple
    index_bits: int
    code_bits: int

    #: :meth:`cycles`, as the Verilog description JSON and docs/hardware.md state it.
    CYCLE_FORMULA = ("max over output pixels p of (ready(p) + Cout * (pixels - p)) + 2, ready(p) = the inputs up to "
                     "the last input pixel feeding p, or the busiest lane's entries up to it + 2 (a lower bound; the walk "
                     "depends on the input)")

    @classmethod
    def build(cls, g: ConvGeometry, weights: np.ndarray, fmt: WeightFormat, index_bits: int) -> "BroadcastSchedule":
        """``weights``: codes as (cout, K) in the engine's fan-in order (:func:`fanin_codes`)."""
        if g.sh != 1 or g.sw != 1:
            raise ValueError(f"stride {g.sh}x{g.sw}: the activation-broadcast engine takes stride 1")
        if g.conv_groups != 1:
            raise ValueError(f"groups {g.conv_groups}: the activation-broadcast engine takes groups=1")
        weights = np.asarray(weights, dtype=np.int64)
        nonzero = (fmt.decode(weights) != 0).sum(axis=1)
        lanes = min(g.lanes, g.cout)
        per_lane = math.ceil(g.cout / lanes)
        owned, load = [[] for _ in range(lanes)], [0] * lanes
        for c in sorted(range(g.cout), key=lambda c: (-int(nonzero[c]), c)):
            lane = min((l for l in range(lanes) if len(owned[l]) < per_lane), key=lambda l: (load[l], l))
            owned[lane].append(c)
            load[lane] += int(nonzero[c])
        zero = zero_code(fmt)
        if zero is None:
            raise ValueError(f"{fmt.name} weights are never zero: nothing to skip")
        taps = g.kh * g.kw
        # (cout, kh*kw, cin): fan-in order is (dy, dx, ci) with ci fastest
        w3 = weights.reshape(g.cout, taps, g.cin)
        columns = []
        for chans in owned:
            block = np.full((g.cin, taps, per_lane), zero, dtype=np.int64)
            block[:, :, :len(chans)] = np.transpose(w3[chans], (2, 1, 0))
            columns.append(tuple(encode_row(block[ci].ravel(), fmt, index_bits) for ci in range(g.cin)))
        return cls(g, tuple(tuple(c) for c in owned), tuple(columns), index_bits, fmt.bits)

    @property
    def lanes(self) -> int:
        return len(self.channels)

    @property
    def lane_channels(self) -> int:
        """CL: output channels per lane (the last lanes may own one fewer)."""
        return max(len(c) for c in self.channels)

    @property
    def positions(self) -> int:
        """Length of a column: kernel taps x the lane's channels."""
        return self.geometry.kh * self.geometry.kw * self.lane_channels

    def position(self, pos: int) -> tuple[int, int, int]:
        """A column position → (kernel row, kernel column, the lane's channel index)."""
        cl = self.lane_channels
        return pos // (self.geometry.kw * cl), (pos // cl) % self.geometry.kw, pos % cl

    def lane_entries(self) -> list[int]:
        """Entries stored in each lane's bank."""
        return [sum(r.entries for r in cols) for cols in self.columns]

    @property
    def nonzero_weights(self) -> int:
        return int(sum((~r.filler).sum() for cols in self.columns for r in cols))

    def lane(self, c: int) -> tuple[int, int]:
        """Output channel ``c`` → (its lane, its index in the lane)."""
        for l, chans in enumerate(self.channels):
            if c in chans:
                return l, chans.index(c)
        raise ValueError(f"no output channel {c}")

    def need_pixels(self) -> np.ndarray:
        """Per output pixel (raster order), the raster index of the last input pixel that
        feeds it: the drain reads the pixel once that input pixel has passed the input and
        every lane (negative: no input pixel feeds it)."""
        g = self.geometry
        oy, ox = np.divmod(np.arange(g.oh * g.ow), g.ow)
        ny = np.minimum(oy + g.kh - 1 - g.ph, g.h - 1)
        nx = np.minimum(ox + g.kw - 1 - g.pw, g.w - 1)
        return ny * g.w + nx

    #: cycles between a lane's last entry read and that output's handshake that no rate
    #: hides: the lane's stages B and C, the drain's read and the output register
    PIPELINE = 4

    def tail_outputs(self) -> int:
        """Outputs that wait for the map's last input pixel: from the first output pixel
        it feeds (raster order) to the end, times Cout.  With :attr:`PIPELINE` it is the
        per-layer constant of the cycle target (docs/hardware.md)."""
        g = self.geometry
        late = np.flatnonzero(self.need_pixels() >= g.h * g.w - 1)
        return (g.oh * g.ow - (int(late[0]) if len(late) else g.oh * g.ow)) * g.cout

    def target_cycles(self, activations: np.ndarray, slack: float = 1.1) -> int:
        """The cycle target of issue 17 as we state it: ``max(in_size, out_size, ceil(slack ·
        ideal)) + tail_outputs + PIPELINE``: the ideal's cycles, or the interface's (one value
        per cycle in and out) when those are longer, then the outputs that must wait for the
        last input."""
        g = self.geometry
        return (max(g.in_size, g.out_size, math.ceil(slack * self.ideal_cycles(activations)))
                + self.tail_outputs() + self.PIPELINE)

    def cycles(self, activations: np.ndarray | None = None) -> int:
        """Cycles of one map, first input to last output handshake, input valid and output
        ready throughout, a lower bound (:attr:`CYCLE_FORMULA`).  The drain emits one output
        per cycle in stream order and reads output pixel ``p`` once the last input pixel
        feeding it (:meth:`need_pixels`) has arrived (``cin · (need + 1)`` inputs) and, for
        the map ``activations``, every lane has walked its entries up to that pixel (a lane
        walks one entry per cycle from cycle 1; its last entry leaves it two cycles later).
        Each pixel's outputs and all after it then take a cycle each, and the last one
        leaves the output register two cycles after its read.  A lower bound: a lane whose
        queue is full stalls the input, a lane may wait for its input; cosim measures it."""
        g = self.geometry
        need = self.need_pixels()
        ready = np.where(need >= 0, g.cin * (need + 1), 0)
        if activations is not None:
            nonzero = (np.asarray(activations).reshape(-1, g.cin) != 0).astype(np.int64)
            entries = np.array([[r.entries for r in cols] for cols in self.columns], dtype=np.int64)
            walked = np.cumsum(nonzero @ entries.T, axis=0).max(axis=1)  # busiest lane, up to each input pixel
            lane = np.where(need >= 0, walked[np.maximum(need, 0)], 0)
            ready = np.maximum(ready, np.where(lane > 0, lane + 2, 0))
        outputs_from = (g.oh * g.ow - np.arange(g.oh * g.ow)) * g.cout
        return int((ready + outputs_from).max()) + 2

    def lane_work(self, activations: np.ndarray) -> list[int]:
        """Per lane, the entries it walks for one input map ``activations`` (stream order):
        its column of each nonzero activation's channel (one cycle per entry, taps outside
        the output map and fillers included)."""
        g = self.geometry
        per_channel = (np.asarray(activations).reshape(-1, g.cin) != 0).sum(axis=0)
        return [int(sum(int(n) * r.entries for n, r in zip(per_channel, cols))) for cols in self.columns]

    def ideal_cycles(self, activations: np.ndarray) -> int:
        """``ceil(MACs / lanes)`` counting only nonzero weight x nonzero activation products
        of taps inside the map, for one input map ``activations`` in stream order."""
        return math.ceil(self.useful_macs(activations) / self.lanes)

    def useful_macs(self, activations: np.ndarray) -> int:
        """Nonzero weight x nonzero activation products over every output pixel and its
        in-bounds taps (the work an ideal zero-skipping engine does)."""
        g = self.geometry
        x = np.asarray(activations).reshape(g.h, g.w, g.cin) != 0
        per = np.zeros((g.cin, g.kh, g.kw), dtype=np.int64)  # nonzero weights per (ci, dy, dx)
        for l, cols in enumerate(self.columns):
            for ci, r in enumerate(cols):
                pos = np.cumsum(r.runs + 1) - 1
                for p, f in zip(pos, r.filler):
                    if not f:
                        dy, dx, _ = self.position(int(p))
                        per[ci, dy, dx] += 1
        total = 0
        for dy in range(g.kh):
            for dx in range(g.kw):
                for oy in range(g.oh):
                    iy = oy - g.ph + dy
                    if not 0 <= iy < g.h:
                        continue
                    for ox in range(g.ow):
                        ix = ox - g.pw + dx
                        if 0 <= ix < g.w:
                            total += int((x[iy, ix] * per[:, dy, dx]).sum())
        return total

    def memory_bits(self, acc_word: int, acc_width: int, shift_max: int | None, bias_words: int) -> dict[str, int]:
        """Entry banks, column pointers (``cin + 1`` per lane: where each column starts),
        accumulators (one ``acc_word`` per output of a lane), biases and requantization
        constants; no activation memory (activations are broadcast as they arrive)."""
        g = self.geometry
        pointer = uint_bits(max(self.lane_entries()))
        depth = g.pixels * self.lane_channels
        return {"entries": sum(self.lane_entries()) * self.entry_width,
                "pointers": self.lanes * (g.cin + 1) * pointer,
                "accumulators": self.lanes * depth * acc_word,
                "bias": bias_words * acc_width,
                "requant": 0 if shift_max is None else g.cout * (M0_BITS + uint_bits(shift_max))}
