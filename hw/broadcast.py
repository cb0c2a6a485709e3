"""Activation-broadcast zero-skipping engine (EIE-style): one activation read, no gather.

Dataflow: **input-stationary broadcast**.  The input map streams in one activation per
cycle, as into every engine; there is no activation memory.  A nonzero activation
``x`` at input pixel ``(iy, ix)``, channel ``ci`` is broadcast once, with its
coordinates and the kernel taps whose output lies inside the map, to the lanes that
have work for it.  The layer's work is split in (output channel, input-channel block,
kernel tap) units, cut into runs of equal nonzero weights
(:class:`~quantrtl.hw.geometry.BroadcastSchedule`): a lane holds whole output channels and
a part of one at each end (its *slots*).  Its bank holds, per input channel and tap, the
*column* of its weights such an activation meets through that tap, as relative-index
entries (``model/numbers/sparse.py``) restarting at every column, with a pointer per
column and a mask of the non-empty ones.  A lane queues the activations it has work for
(a small FIFO, as in EIE, so lanes with more work for one activation do not hold the
others back) and walks one entry per cycle, back to back across columns and activations:

* A: entry bank read: the next entry of the current column, or the first of the item's
  next non-empty column inside the map, or of the queue head's first (border taps are
  never walked);
* B: the entry's run moves the column position (``pos += run + 1``), a slot ROM gives
  the lane's slot, the tap gives ``(dy, dx)``; the output pixel is ``(iy + ph − dy,
  ix + pw − dx)``; the lane's accumulator memory is read there (not for a filler);
* C: the PE's products are added and written back (the read is transparent to this
  write, so consecutive updates of one accumulator see each other).

Each lane's accumulator memory holds the partial sums of its slots for the whole output
map (one word per output pixel and slot: a term accumulator per term of the format).
The drain runs while the input still streams: it emits the outputs in stream order
(pixel, channel fastest), each output pixel as soon as the last input pixel that feeds
it has passed the input and every lane (each lane reports the oldest activation it
still holds); every lane reads its part of the channel through a second read port (a
ROM says whether and in which slot it holds one), the parts are added, then the bias
(with the zero point of the taps that fell outside the map folded in per border class)
and the format's term coefficients; the value is requantized as every engine does.  Each
lane's write port clears, behind the drain, the words it has read (in local address
order, in cycles its stage C does not write); the next map's input waits until every lane
has cleared.  Why input-stationary: every nonzero activation meets ``kh · kw · Cout ·
density`` weights, many more than the ``Cout · density`` of one output pixel's window
tap, so the lanes stay busy at low densities, and a lane's imbalance averages over the
whole map instead of one pixel.  Cost: an accumulator word per output pixel and slot (a
memory with two read ports and one write port) and the column pointers.

Cycles (docs/hardware.md, :meth:`~quantrtl.hw.geometry.BroadcastSchedule.cycles`): per
output pixel, the later of its inputs' arrival and the busiest lane's walk up to them,
then one cycle per output from there; only the outputs fed by the last input pixel wait
for the end of the input.  Limits: stride 1, ``groups=1``, no control-fault injection.
"""
from __future__ import annotations

import operator

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory

from quantrtl.hw.arith import weighted_sum
from quantrtl.hw.array import term_widths
from quantrtl.hw.geometry import BroadcastSchedule, uint_bits
from quantrtl.hw.layer import ConvEngine
from quantrtl.hw.parts import EntryKind, pack, rom, sparse_entry_layout
from quantrtl.hw.pe import make_pe
from quantrtl.hw.sparse import check_zero_skipping
from quantrtl.model.numbers.artifact import Layer

__all__ = ["BroadcastConvEngine"]


class BroadcastConvEngine(ConvEngine):
    """A conv2d/linear layer on activation-broadcast lanes (module docstring).

    Parameters are those of :class:`ConvEngine` plus ``index_bits`` (relative index
    width) and ``queue_depth`` (each lane's activation queue); ``lanes`` is the schedule's
    (at most the units of work, fewer when some run of the cut would be empty).
    """

    def __init__(self, layer: Layer, lanes: int = 8, pipeline: int = 0, source_shape=None, index_bits: int = 4,
                 queue_depth: int = 4, tap_fault: int | None = None):
        self.index_bits = operator.index(index_bits)
        self.queue_depth = operator.index(queue_depth)
        check_zero_skipping(layer)
        if tap_fault is not None:
            raise ValueError(f"layer {layer.name!r}: control faults are injected into a tap table, which the "
                             f"broadcast engine does not have (use --sparse row or the dense engine)")
        if pipeline != 0:
            raise ValueError(f"layer {layer.name!r}: the broadcast engine has a fixed pipeline (pipeline 0 only, "
                             f"got {pipeline})")
        if self.queue_depth < 1:
            raise ValueError(f"queue_depth must be at least 1, got {queue_depth}")
        super().__init__(layer, lanes=lanes, groups=1, pipeline=0, source_shape=source_shape)
        try:
            self.schedule = BroadcastSchedule.build(self.geometry, self.fanin_codes, layer.format, self.index_bits)
        except ValueError as e:
            raise ValueError(f"layer {layer.name!r}: {e}; use --sparse row or the dense engine") from None
        fmt = layer.format
        self.acc_widths = (term_widths(fmt, self.fanin_codes, layer.input.bits) if fmt.terms > 1
                           else [self.acc_width])

    # ---- generation-time tables --------------------------------------------------
    def border_classes(self) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        """Output rows and columns grouped by which kernel rows (columns) fall inside the
        input map: per output row its class, per output column its class, and the classes'
        (first row, first column) representatives.  One class when the input zero point
        is 0 (then the taps outside the map change no sum)."""
        g = self.geometry

        def classes(n_out, n_in, k, pad):
            keys, index, first = {}, [], []
            for o in range(n_out):
                key = tuple(0 <= o - pad + d < n_in for d in range(k))
                if key not in keys:
                    keys[key] = len(keys)
                    first.append(o)
                index.append(keys[key])
            return index, first

        if self.layer.input.zero_point == 0:  # the padding adds nothing: one class
            return [0] * g.oh, [0] * g.ow, [(0, 0)]
        rows, ry = classes(g.oh, g.h, g.kh, g.ph)
        cols, rx = classes(g.ow, g.w, g.kw, g.pw)
        return rows, cols, [(y, x) for y in ry for x in rx]

    def biases(self) -> list[int]:
        """Per (border class, channel): ``b − Z_x · Σ w`` over the taps inside the map (the
        lanes never see the padding, which holds the zero point)."""
        g, layer = self.geometry, self.layer
        values = layer.format.decode(self.fanin_codes).astype(object).reshape(g.cout, g.kh, g.kw, -1)
        zx = layer.input.zero_point
        out = []
        for oy, ox in self.border_classes()[2]:
            inside = np.zeros((g.kh, g.kw), dtype=bool)
            for dy in range(g.kh):
                for dx in range(g.kw):
                    inside[dy, dx] = 0 <= oy - g.ph + dy < g.h and 0 <= ox - g.pw + dx < g.w
            out += [layer.bias[c] - zx * values[c][inside].sum() for c in range(g.cout)]
        return [int(b) for b in out]

    def lane_tables(self, lane: int) -> tuple[list[int], list[int], list[int]]:
        """A lane's entry bank words, its column pointers (column ``(ci, tap)`` is
        ``[pointer[ci · taps + tap], pointer[ci · taps + tap + 1])``; ``cin · taps + 1``
        words) and per input channel the mask of its non-empty columns (bit ``tap``)."""
        layout = sparse_entry_layout(self.index_bits, self.layer.format.bits)
        words, pointers, masks = [], [0], []
        for cols in self.schedule.columns[lane]:
            mask = 0
            for tap, row in enumerate(cols):
                words += [pack(layout, [dict(run=int(r), code=int(c),
                                             kind=EntryKind.FILLER if f else EntryKind.WEIGHT)])
                          for r, c, f in zip(row.runs, row.codes, row.filler)]
                pointers.append(len(words))
                mask |= (row.entries > 0) << tap
            masks.append(mask)
        return words, pointers, masks

    @property
    def pointer_bits(self) -> int:
        return uint_bits(max(self.schedule.lane_entries()))

    @property
    def acc_word(self) -> int:
        return sum(self.acc_widths)

    # ---- figures -----------------------------------------------------------------
    @property
    def lanes(self) -> int:
        return self.schedule.lanes

    @property
    def activation_read_ports(self) -> int:
        return 1  # the input stream: activations are used as they arrive, no activation memory

    @property
    def nonzero_weights(self) -> int:
        return self.schedule.nonzero_weights

    @property
    def expected_cycles(self) -> int:
        return self.schedule.cycles()

    @property
    def head_start(self) -> int:
        return 0  # it computes while it loads; nothing of the next map before its drain ends

    @property
    def memory_bits(self) -> dict[str, int]:
        bias_words = len(self.border_classes()[2]) * self.geometry.cout
        return self.schedule.memory_bits(self.acc_word, self.acc_width, self.shift_max, bias_words)

    # ---- hardware ----------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        g, layer, s = self.geometry, self.layer, self.schedule
        fmt, P, CL, W = layer.format, s.lanes, s.lane_channels, self.acc_width
        T, J = g.kh * g.kw, s.tap_units
        entry = sparse_entry_layout(self.index_bits, fmt.bits)

        # ---- input: coordinates of the arriving activation, the kernel taps whose output
        # lies inside the map; a nonzero activation goes to every lane with entries there
        iy, ix = Signal(range(max(2, g.h)), name="in_y"), Signal(range(max(2, g.w)), name="in_x")
        ci = Signal(range(max(2, g.cin)), name="in_ch")
        received = Signal(name="received")
        map_done = Signal(name="map_done")  # every output of the map read: the lanes may clear all
        blocks = rom(m, "block_rom", [c % s.blocks for c in range(g.cin)], uint_bits(s.blocks - 1))
        m.d.comb += blocks.addr.eq(ci)
        item = data.StructLayout({"x": unsigned(layer.input.bits), "ci": unsigned(len(ci)),
                                  "iy": unsigned(len(iy)), "ix": unsigned(len(ix)), "taps": unsigned(T),
                                  "block": unsigned(len(blocks.data))})
        row_masks, col_masks = s.tap_masks()
        row_taps, col_taps = rom(m, "row_taps_rom", row_masks, T), rom(m, "col_taps_rom", col_masks, T)
        m.d.comb += [row_taps.addr.eq(iy), col_taps.addr.eq(ix)]
        inside = row_taps.data & col_taps.data
        x = self.inp.payload[:layer.input.bits]
        take = Signal(name="take_input")
        queues, tables = [], []
        for l in range(P):
            queues.append(SyncFIFO(width=item.size, depth=self.queue_depth))
            m.submodules[f"queue{l}"] = queues[-1]
            tables.append(self.lane_tables(l))
        swept = [Signal(name=f"lane{l}_swept") for l in range(P)]  # the previous map's words all cleared
        first_in = (ci == 0) & (ix == 0) & (iy == 0)
        m.d.comb += [self.inp.ready.eq(~received & Cat(*[q.w_rdy for q in queues]).all() &
                                       (~first_in | Cat(*swept).all())),  # a map starts on cleared words
                     take.eq(self.inp.valid & self.inp.ready)]
        for l, q in enumerate(queues):
            masks = rom(m, f"column_mask_rom{l}", tables[l][2], T)
            m.d.comb += masks.addr.eq(ci)
            mine = Signal(T, name=f"lane{l}_in_taps")
            m.d.comb += [mine.eq(masks.data & inside), q.w_data.eq(Cat(x, ci, iy, ix, mine, blocks.data)),
                         q.w_en.eq(take & (x != 0) & mine.any())]
        last_in = (ci == g.cin - 1) & (ix == g.w - 1) & (iy == g.h - 1)
        with m.If(take):
            m.d.sync += ci.eq(Mux(ci == g.cin - 1, 0, ci + 1))
            with m.If(first_in):
                m.d.sync += map_done.eq(0)
            with m.If(ci == g.cin - 1):
                m.d.sync += ix.eq(Mux(ix == g.w - 1, 0, ix + 1))
                with m.If(ix == g.w - 1):
                    m.d.sync += iy.eq(Mux(iy == g.h - 1, 0, iy + 1))
            with m.If(last_in):
                m.d.sync += received.eq(1)

        # ---- lanes
        tap_of = data.StructLayout({"dy": unsigned(uint_bits(g.kh - 1)), "dx": unsigned(uint_bits(g.kw - 1))})
        tap_mem = m.submodules.tap_rom = Memory(shape=unsigned(tap_of.size), depth=T,
                                                init=[pack(tap_of, [dict(dy=t // g.kw, dx=t % g.kw)]) for t in range(T)])
        depth = g.pixels * CL
        aw = self.pointer_bits
        cw = uint_bits(max(CL - 1, 1))
        held, acc_ports = [], []
        drained = Signal(range(depth + 1), name="drained")  # local words the drain has read, in every lane
        at = data.StructLayout({"ix": unsigned(len(ix)), "iy": unsigned(len(iy))})  # a pixel, raster order
        for l in range(P):
            words, pointers, _ = tables[l]
            q = queues[l]
            head = data.View(item, q.r_data)
            ptr_mem = m.submodules[f"pointer_rom{l}"] = Memory(shape=unsigned(aw), depth=len(pointers),
                                                                init=pointers)
            first_ptr, end_ptr = ptr_mem.read_port(domain="comb"), ptr_mem.read_port(domain="comb")
            bank = rom(m, f"entry_mem{l}", words, entry.size, domain="sync")
            slot_rom = rom(m, f"slot_rom{l}", [u[j] if j < len(u) else 0 for blk in s.units[l] for u in blk
                                               for j in range(J)], cw)
            acc = m.submodules[f"acc_mem{l}"] = Memory(shape=unsigned(self.acc_word), depth=depth, init=[])
            wp = acc.write_port()
            rp = acc.read_port(domain="sync", transparent_for=[wp])

            # stage A: the next entry of the current column; or the first of the item's next
            # column inside the map; or of the queue head's first (no cycle between columns)
            cur_addr = Signal(range(max(2, len(words) + 1)), name=f"lane{l}_addr")
            cur_end = Signal.like(cur_addr, name=f"lane{l}_end")
            cur_more = Signal(name=f"lane{l}_more")  # entries left in the current column
            cur = Signal(item, name=f"lane{l}_item")  # its taps field: the columns still to walk
            b_valid, b_first = Signal(name=f"lane{l}_b_valid"), Signal(name=f"lane{l}_b_first")
            b_item, b_tap = Signal(item, name=f"lane{l}_b_item"), Signal(range(max(2, T)), name=f"lane{l}_b_tap")
            next_col = Signal(name=f"lane{l}_next_column")  # the current item has more columns
            m.d.comb += next_col.eq(cur.taps.any())
            pick_from = Signal(item, name=f"lane{l}_pick_from")
            with m.If(next_col):
                m.d.comb += pick_from.eq(cur)
            with m.Else():
                m.d.comb += pick_from.eq(q.r_data)
            tap = Signal(range(max(2, T)), name=f"lane{l}_tap")  # the lowest column left to walk
            for t in reversed(range(T)):
                with m.If(pick_from.taps[t]):
                    m.d.comb += tap.eq(t)
            col = pick_from.ci * T + tap
            m.d.comb += [first_ptr.addr.eq(col), end_ptr.addr.eq(col + 1), q.r_en.eq(~cur_more & ~next_col)]
            start, end = first_ptr.data, end_ptr.data
            m.d.sync += b_valid.eq(cur_more | next_col | q.r_rdy)
            with m.If(cur_more):
                m.d.comb += bank.addr.eq(cur_addr)
                m.d.sync += [cur_addr.eq(cur_addr + 1), cur_more.eq(cur_addr + 1 != cur_end),
                             b_first.eq(0), b_item.eq(cur)]
            with m.Elif(next_col | q.r_rdy):
                m.d.comb += bank.addr.eq(start)
                m.d.sync += [cur_addr.eq(start + 1), cur_end.eq(end), cur_more.eq(start + 1 != end),
                             cur.eq(pick_from), cur.taps.eq(pick_from.taps & ~(1 << tap)),
                             b_first.eq(1), b_item.eq(pick_from), b_tap.eq(tap)]

            # stage B: relative index → unit of the column → slot; the tap → output pixel
            e = data.View(entry, bank.data)
            pos = Signal(range(max(2, J)), name=f"lane{l}_pos")
            here = Signal.like(pos, name=f"lane{l}_here")
            m.d.comb += here.eq(Mux(b_first, 0, pos + 1) + e.run)
            with m.If(b_valid):
                m.d.sync += pos.eq(here)
            m.d.comb += slot_rom.addr.eq((b_item.block * T + b_tap) * J + here)
            tr = tap_mem.read_port(domain="comb")
            m.d.comb += tr.addr.eq(b_tap)
            kt = data.View(tap_of, tr.data)
            oy = Signal(range(max(2, g.oh)), name=f"lane{l}_oy")
            ox = Signal(range(max(2, g.ow)), name=f"lane{l}_ox")
            m.d.comb += [oy.eq(b_item.iy + g.ph - kt.dy), ox.eq(b_item.ix + g.pw - kt.dx)]
            c_valid = Signal(name=f"lane{l}_c_valid")
            c_addr = Signal(range(max(2, depth)), name=f"lane{l}_c_addr")
            c_code, c_x = Signal(fmt.bits, name=f"lane{l}_c_code"), Signal(layer.input.bits, name=f"lane{l}_c_x")
            addr = (oy * g.ow + ox) * CL + slot_rom.data
            m.d.comb += [rp.addr.eq(addr[:len(c_addr)]), rp.en.eq(1)]
            m.d.sync += [c_valid.eq(b_valid & (e.kind == EntryKind.WEIGHT)), c_addr.eq(addr[:len(c_addr)]),
                         c_code.eq(e.code), c_x.eq(b_item.x)]

            # stage C: products into the term accumulators, written back
            pe = m.submodules[f"pe{l}"] = make_pe(fmt, layer.input.bits)
            m.d.comb += [pe.act.eq(c_x), pe.code.eq(c_code)]
            fields, lo = [], 0
            for k, w in enumerate(self.acc_widths):
                fields.append((rp.data[lo:lo + w].as_signed() + pe.products[k])[:w])
                lo += w
            # the same write port clears, behind the drain, the words it has read (in local
            # address order, in cycles stage C does not write); the next map waits for it
            sweep = Signal(range(depth + 1), name=f"lane{l}_sweep", init=depth)
            m.d.comb += swept[l].eq(sweep == depth)
            with m.If(c_valid):
                m.d.comb += [wp.addr.eq(c_addr), wp.data.eq(Cat(*fields)), wp.en.eq(1)]
            with m.Elif(sweep < drained):
                m.d.comb += [wp.addr.eq(sweep[:len(c_addr)]), wp.data.eq(0), wp.en.eq(1)]
                m.d.sync += sweep.eq(sweep + 1)
            with m.If(take & first_in):
                m.d.sync += sweep.eq(0)

            # the oldest activation still in the lane (stage C, B, A, then the queue head):
            # the drain may read an output only once every activation feeding it is past
            c_at = Signal(at, name=f"lane{l}_c_at")
            m.d.sync += c_at.eq(Cat(b_item.ix, b_item.iy))
            oldest, holds = Signal(at, name=f"lane{l}_oldest"), Signal(name=f"lane{l}_holds")
            with m.If(c_valid):
                m.d.comb += [oldest.eq(c_at), holds.eq(1)]
            with m.Elif(b_valid):
                m.d.comb += [oldest.eq(Cat(b_item.ix, b_item.iy)), holds.eq(1)]
            with m.Elif(cur_more | next_col):
                m.d.comb += [oldest.eq(Cat(cur.ix, cur.iy)), holds.eq(1)]
            with m.Elif(q.r_rdy):
                m.d.comb += [oldest.eq(Cat(head.ix, head.iy)), holds.eq(1)]
            held.append((holds, oldest))
            acc_ports.append(acc.read_port(domain="sync"))  # the drain's read

        # ---- drain, while the input still streams: outputs in stream order from their
        # lanes, each output pixel once the last input pixel that feeds it has passed the
        # input and every lane; words cleared behind for the next map
        op = Signal(range(max(2, g.pixels)), name="out_pixel")
        oc = Signal(range(max(2, g.cout)), name="out_channel")
        oy_d, ox_d = Signal(range(max(2, g.oh)), name="out_y"), Signal(range(max(2, g.ow)), name="out_x")
        issued = Signal(name="drain_issued")  # every output's read has been issued
        need_y = Signal(range(-g.kh - g.ph, g.h + 1), name="need_y")  # the last input pixel feeding it
        need_x = Signal(range(-g.kw - g.pw, g.w + 1), name="need_x")
        m.d.comb += [need_y.eq(Mux(oy_d + (g.kh - 1 - g.ph) > g.h - 1, g.h - 1, oy_d + (g.kh - 1 - g.ph))),
                     need_x.eq(Mux(ox_d + (g.kw - 1 - g.pw) > g.w - 1, g.w - 1, ox_d + (g.kw - 1 - g.pw)))]

        def past(py, px):  # pixel (py, px) comes after the needed one in raster order
            return (py > need_y) | ((py == need_y) & (px > need_x))

        ready = Signal(name="drain_ready")
        m.d.comb += ready.eq((received | past(iy, ix)) &
                             ~Cat(*[holds & ~past(o.iy, o.ix) for holds, o in held]).any())
        out = self.out
        advance = ~out.valid | out.ready
        issue = ~issued & advance & ready
        # per lane, whether it holds a part of the channel and in which slot: every lane
        # reads its word of the pixel, the parts are added
        owned, slots = [], []
        for l in range(P):
            part = {c: j for j, c in enumerate(s.channels[l])}
            where = rom(m, f"channel_slot_rom{l}", [(part[c] << 1 | 1) if c in part else 0 for c in range(g.cout)],
                        cw + 1)
            m.d.comb += where.addr.eq(oc)
            owned.append(where.data[0])
            slots.append(where.data[1:])
        s1_valid, s1_c = Signal(name="s1_valid"), Signal.like(oc, name="s1_c")
        s1_owned = Signal(P, name="s1_owned")
        rows, cols, classes = self.border_classes()
        ncols = max(cols) + 1
        row_rom = rom(m, "row_class_rom", rows, uint_bits(max(rows)))
        col_rom = rom(m, "col_class_rom", cols, uint_bits(max(cols)))
        s1_class = Signal(range(max(2, len(classes))), name="s1_class")
        m.d.comb += [row_rom.addr.eq(oy_d), col_rom.addr.eq(ox_d)]
        m.d.comb += drained.eq(Mux(map_done, depth, op * CL))
        for l, rp in enumerate(acc_ports):
            m.d.comb += [rp.addr.eq(op * CL + slots[l]), rp.en.eq(advance)]
        with m.If(advance):
            m.d.sync += [s1_valid.eq(issue), s1_owned.eq(Cat(*owned)), s1_c.eq(oc),
                         s1_class.eq(row_rom.data * ncols + col_rom.data)]
        with m.If(issue):
            with m.If(oc == g.cout - 1):
                m.d.sync += oc.eq(0)
                with m.If(op == g.pixels - 1):
                    m.d.sync += [op.eq(0), oy_d.eq(0), ox_d.eq(0), issued.eq(1), map_done.eq(1)]
                with m.Else():
                    m.d.sync += op.eq(op + 1)
                    with m.If(ox_d == g.ow - 1):
                        m.d.sync += [ox_d.eq(0), oy_d.eq(oy_d + 1)]
                    with m.Else():
                        m.d.sync += ox_d.eq(ox_d + 1)
            with m.Else():
                m.d.sync += oc.eq(oc + 1)

        # the finished output: bias + sum of coefficient x term accumulator, each term the
        # sum of the channel's parts over the lanes that hold one
        bias_rom = rom(m, "bias_rom", [b % (1 << W) for b in self.biases()], W)
        m.d.comb += bias_rom.addr.eq(s1_class * g.cout + s1_c)
        terms, lo = [], 0
        for k, w in enumerate(self.acc_widths):
            parts = [Mux(s1_owned[l], rp.data[lo:lo + w], 0).as_signed() for l, rp in enumerate(acc_ports)]
            term = Signal(signed(w), name=f"drain_term{k}")
            m.d.comb += term.eq(sum(parts[1:], parts[0])[:w])
            terms.append(term)
            lo += w
        value = weighted_sum(m, bias_rom.data.as_signed(), terms, fmt.coefficients if fmt.terms > 1 else (1,), W,
                             "_drain")
        converted = self.output_code(m, value, s1_c)
        with m.If(advance):
            m.d.sync += [out.valid.eq(s1_valid), out.payload.eq(converted)]
        sent = Signal(range(max(2, g.out_size)), name="sent")
        with m.If(out.valid & out.ready):
            with m.If(sent == g.out_size - 1):
                m.d.sync += [sent.eq(0), received.eq(0), issued.eq(0)]
            with m.Else():
                m.d.sync += sent.eq(sent + 1)
        return m
