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
    """The activation-broadcast engine's tables (``hw/broadcast.py``): the layer's work
    split over lanes, and per lane, input channel and kernel tap a *column*: the lane's
    weights that an input activation of that channel meets through that tap, as
    relative-index entries (:func:`encode_row`), the index restarting at every column.

    The unit of work is an (output channel, input-channel block, kernel tap) triple: the
    input channels form ``blocks`` interleaved blocks (channel ``ci`` in block ``ci mod
    blocks``), as few as give at least four units per lane (one block for a conv with a
    kernel; a classifier, one tap over hundreds of inputs, gets several).  Interleaved, so
    that a lane's share of the work arrives evenly over the input stream.  Units are laid out channel by channel and cut into ``P``
    contiguous runs of about equal nonzero weights (a cut moves to the nearest channel
    boundary when that costs under 3 % of a lane's share), so a lane holds whole channels
    and at most a part of a channel at each end; the parts of a channel split over lanes
    are partial sums that the drain adds.  A lane's *slots* are the channels it holds
    parts of (an accumulator word per output pixel and slot).  ``lanes`` is the number of
    non-empty runs (at most ``P`` and the number of units).
    """

    geometry: ConvGeometry
    #: per lane, the output channels it holds parts of (slot ``j`` = ``channels[l][j]``)
    channels: tuple
    #: per lane, per input-channel block, per kernel tap, the slots of its units there
    #: (a column's positions, in order)
    units: tuple
    #: per lane, per input channel, per kernel tap, the column's relative-index row
    columns: tuple
    #: input-channel blocks (channel ``ci`` in block ``ci mod blocks``)
    blocks: int
    index_bits: int
    code_bits: int

    #: :meth:`cycles`, as the Verilog description JSON and docs/hardware.md state it.
    CYCLE_FORMULA = ("max over output pixels p of (ready(p) + Cout * (pixels - p)) + 2, ready(p) = the inputs up to "
                     "the last input pixel feeding p, or the busiest lane's entries up to it + 2 (a lower bound; the walk "
                     "depends on the input)")
    #: a cut moves to a channel boundary when that changes a lane's share by at most this
    SNAP = 0.03
    #: input channels are split into blocks until every lane has this many units
    UNITS_PER_LANE = 4

    @classmethod
    def build(cls, g: ConvGeometry, weights: np.ndarray, fmt: WeightFormat, index_bits: int) -> "BroadcastSchedule":
        """``weights``: codes as (cout, K) in the engine's fan-in order (:func:`fanin_codes`)."""
        if g.sh != 1 or g.sw != 1:
            raise ValueError(f"stride {g.sh}x{g.sw}: the activation-broadcast engine takes stride 1")
        if g.conv_groups != 1:
            raise ValueError(f"groups {g.conv_groups}: the activation-broadcast engine takes groups=1")
        zero = zero_code(fmt)
        if zero is None:
            raise ValueError(f"{fmt.name} weights are never zero: nothing to skip")
        taps = g.kh * g.kw
        w3 = np.asarray(weights, dtype=np.int64).reshape(g.cout, taps, g.cin)  # fan-in order (dy, dx, ci)
        nblocks = min(g.cin, math.ceil(cls.UNITS_PER_LANE * g.lanes / (g.cout * taps)))
        nonzero = fmt.decode(w3) != 0
        load = np.stack([nonzero[:, :, b::nblocks].sum(axis=2) for b in range(nblocks)], axis=1)
        runs = [r for r in cls.cut(load.ravel(), min(g.lanes, load.size), nblocks * taps) if r[1] > r[0]]
        channels, lane_units, columns = [], [], []
        for lo, hi in runs:
            units = [(u // (nblocks * taps), u // taps % nblocks, u % taps) for u in range(lo, hi)]
            chans = tuple(dict.fromkeys(c for c, _, _ in units))
            at = [[[c for c, b, t in units if (b, t) == (blk, tap)] for tap in range(taps)] for blk in range(nblocks)]
            channels.append(chans)
            lane_units.append(tuple(tuple(tuple(chans.index(c) for c in cs) for cs in per_tap) for per_tap in at))
            columns.append(tuple(tuple(encode_row(w3[cs, tap, ci] if cs else np.zeros(0, np.int64), fmt, index_bits)
                                       for tap, cs in enumerate(at[ci % nblocks])) for ci in range(g.cin)))
        return cls(g, tuple(channels), tuple(lane_units), tuple(columns), nblocks, index_bits, fmt.bits)

    @classmethod
    def cut(cls, load: np.ndarray, lanes: int, block: int) -> list[tuple[int, int]]:
        """``lanes`` contiguous runs ``[lo, hi)`` of the units whose ``load`` sums are as
        equal as the units allow; a cut moves to a multiple of ``block`` (a channel
        boundary) when that changes the run's sum by at most :attr:`SNAP` of a share.
        Without any load, runs of equal unit counts."""
        n = len(load)
        weight = np.asarray(load, dtype=np.float64) if np.any(load) else np.ones(n)
        prefix = np.concatenate([[0.0], np.cumsum(weight)])
        share = prefix[-1] / lanes
        cuts = [0]
        for k in range(1, lanes):
            target = k * share
            i = int(np.argmin(np.abs(prefix - target)))
            bounds = np.arange(0, n + 1, block)
            j = int(bounds[np.argmin(np.abs(prefix[bounds] - target))])
            if abs(prefix[j] - target) - abs(prefix[i] - target) <= cls.SNAP * share:
                i = j
            cuts.append(max(i, cuts[-1]))
        cuts.append(n)
        return list(zip(cuts[:-1], cuts[1:]))

    @property
    def lanes(self) -> int:
        return len(self.channels)

    @property
    def lane_channels(self) -> int:
        """CL: slots per lane (accumulator words per output pixel), at least 1."""
        return max(1, max(len(c) for c in self.channels))

    @property
    def tap_units(self) -> int:
        """J: the most units a lane holds at one (block, kernel tap): a column's length, at
        least 1."""
        return max(1, max(len(u) for lane in self.units for blk in lane for u in blk))

    def entries(self) -> np.ndarray:
        """Entries per (lane, input channel, kernel tap)."""
        return np.array([[[r.entries for r in taps] for taps in cols] for cols in self.columns],
                        dtype=np.int64).reshape(self.lanes, self.geometry.cin, -1)

    def lane_entries(self) -> list[int]:
        """Entries stored in each lane's bank."""
        return [int(e) for e in self.entries().sum(axis=(1, 2))]

    @property
    def nonzero_weights(self) -> int:
        return int(sum((~r.filler).sum() for cols in self.columns for taps in cols for r in taps))

    def owners(self, c: int) -> list[tuple[int, int]]:
        """Output channel ``c`` → the (lane, slot) pairs holding its parts."""
        return [(l, chans.index(c)) for l, chans in enumerate(self.channels) if c in chans]

    def tap_masks(self) -> tuple[list[int], list[int]]:
        """Per input row, then per input column, the kernel taps (bit ``dy · kw + dx``)
        whose output row (column) lies inside the output map; a pixel's taps inside the
        map are its row's and its column's (the engine's two ROMs)."""
        g = self.geometry
        taps = range(g.kh * g.kw)
        return ([sum(1 << t for t in taps if 0 <= y + g.ph - t // g.kw < g.oh) for y in range(g.h)],
                [sum(1 << t for t in taps if 0 <= x + g.pw - t % g.kw < g.ow) for x in range(g.w)])

    def valid_taps(self) -> np.ndarray:
        """(input pixels, kernel taps): whether the tap of an activation at that pixel
        lands inside the output map (the lanes walk only those)."""
        g = self.geometry
        rows, cols = self.tap_masks()
        masks = np.array([r & c for r in rows for c in cols], dtype=np.int64)
        return (masks[:, None] >> np.arange(g.kh * g.kw)[None, :]) & 1 == 1

    def pixel_work(self, activations: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """(input pixels, lanes): entries each lane walks for each input pixel's nonzero
        activations (``counts``: per (lane, channel, tap) what to count; default entries)."""
        g = self.geometry
        nonzero = (np.asarray(activations).reshape(-1, g.cin) != 0).astype(np.int64)
        counts = self.entries() if counts is None else counts
        return np.einsum("pc,pt,lct->pl", nonzero, self.valid_taps().astype(np.int64), counts)

    def need_pixels(self) -> np.ndarray:
        """Per output pixel (raster order), the raster index of the last input pixel that
        feeds it: the drain reads the pixel once that input pixel has passed the input and
        every lane (negative: no input pixel feeds it)."""
        g = self.geometry
        oy, ox = np.divmod(np.arange(g.oh * g.ow), g.ow)
        ny = np.minimum(oy + g.kh - 1 - g.ph, g.h - 1)
        nx = np.minimum(ox + g.kw - 1 - g.pw, g.w - 1)
        return ny * g.w + nx

    #: cycles that no rate hides, counted from the last input taken (or a lane's last entry
    #: read, one cycle later) to the last output's handshake, beyond the tail's outputs:
    #: the queue write, stages B and C, the drain's read and the output register
    PIPELINE = 5

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
            walked = np.cumsum(self.pixel_work(activations), axis=0).max(axis=1)  # busiest lane, up to each pixel
            lane = np.where(need >= 0, walked[np.maximum(need, 0)], 0)
            ready = np.maximum(ready, np.where(lane > 0, lane + 2, 0))
        outputs_from = (g.oh * g.ow - np.arange(g.oh * g.ow)) * g.cout
        return int((ready + outputs_from).max()) + 2

    def lane_work(self, activations: np.ndarray) -> list[int]:
        """Per lane, the entries it walks for one input map ``activations`` (stream order):
        its columns of each nonzero activation's channel at the taps inside the output map
        (one cycle per entry, fillers included)."""
        return [int(v) for v in self.pixel_work(activations).sum(axis=0)]

    def ideal_cycles(self, activations: np.ndarray) -> int:
        """``ceil(MACs / lanes)`` counting only nonzero weight x nonzero activation products
        of taps inside the map, for one input map ``activations`` in stream order."""
        return math.ceil(self.useful_macs(activations) / self.lanes)

    def useful_macs(self, activations: np.ndarray) -> int:
        """Nonzero weight x nonzero activation products over every output pixel and its
        in-bounds taps (the work an ideal zero-skipping engine does)."""
        weights = np.array([[[int((~r.filler).sum()) for r in taps] for taps in cols] for cols in self.columns],
                           dtype=np.int64).reshape(self.lanes, self.geometry.cin, -1)
        return int(self.pixel_work(activations, weights).sum())

    def memory_bits(self, acc_word: int, acc_width: int, shift_max: int | None, bias_words: int) -> dict[str, int]:
        """Entry banks, column pointers (``cin · taps + 1`` per lane: where each column
        starts), the columns' non-empty masks, the slot of each column position, the
        accumulators (one ``acc_word`` per output pixel and slot of a lane), biases and
        requantization constants; no activation memory (activations are broadcast as they
        arrive)."""
        g = self.geometry
        taps = g.kh * g.kw
        pointer = uint_bits(max(self.lane_entries()))
        return {"entries": sum(self.lane_entries()) * self.entry_width,
                "pointers": self.lanes * (g.cin * taps + 1) * pointer,
                "masks": self.lanes * g.cin * taps,
                "slots": self.lanes * self.blocks * taps * self.tap_units * uint_bits(self.lane_channels - 1),
                "accumulators": self.lanes * g.pixels * self.lane_channels * acc_word,
                "bias": bias_words * acc_width,
                "requant": 0 if shift_max is None else g.cout * (M0_BITS + uint_bits(shift_max))}
