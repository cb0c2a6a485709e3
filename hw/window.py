"""Line-buffered streaming engines: their geometry and their exact cycle schedule (pure Python).

A streaming engine (``hw/stream.py``) keeps ``rows`` input rows of its map in a ring of row
slots (the *line buffer*), not the whole map.  A line-buffer word holds ``word`` channels of
one pixel (``words_per_pixel = ceil(C / word)`` words a pixel), so the lanes that read the
same kernel tap of consecutive channels read one word through one read port: the buffer
is banked by channel inside its word and never replicated per lane.

The schedule, which the engines implement and :meth:`StreamGeometry.schedule` replays row
by row (exact to the cycle with ``inp`` valid and ``out`` ready throughout):

* the writer takes one value a cycle; it may start input row ``y`` when a slot is free,
  i.e. once the compute has released at least ``y − rows + 1`` rows;
* output row ``oy`` (window rows ``by … by + kh − 1``, ``by = oy·sh − ph``) issues its
  ``ow × middle × inner`` steps back to back once input row ``min(by + kh − 1, H − 1)`` is
  complete; when its last step issues, the rows below the next window (``clip(by + sh) −
  clip(by)``) are released;
* after the image's last step the engine waits until the writer has the whole image, then
  releases the rest and starts on the next image.

``rows = min(H, kh + sh)``: ``kh`` rows for the window and ``sh`` more so the writer fills
the next window's rows while the compute works on this one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from quantrtl.hw.geometry import ConvGeometry

__all__ = ["StreamGeometry", "stream_groups"]


def _clip(v: int, hi: int) -> int:
    return min(max(v, 0), hi)


def stream_groups(cin: int, cout: int, kernel_taps: int, lanes: int, block: int = 1,
                  group_outputs: int | None = None) -> int | None:
    """Lane groups of a streaming conv/linear: ``G`` dividing ``lanes`` with ``P/G`` lanes
    reading ``P/G`` channels of one tap; minimises ``ceil(cout/G) · taps · ceil(C/(P/G))``
    with the drain (``G`` outputs) no longer than a group's compute, ties to fewer groups;
    every group holds whole blocks of a blocked format.  A grouped conv (``cin`` the
    channels of one conv group, ``group_outputs`` its outputs): ``G`` outputs of one
    group at a time (``G`` divides ``group_outputs``), ``P/G`` dividing ``cin`` so a
    group's channels start on a word.  None when no such split of ``lanes`` exists."""
    best = None
    for g in range(1, lanes + 1):
        kc = lanes // g
        if lanes % g or kc % block:
            continue
        if group_outputs is not None and (group_outputs % g or cin % kc):
            continue
        chunks = kernel_taps * math.ceil(cin / kc)
        if g > 1 and g > chunks:
            continue
        cost = (math.ceil(cout / g) * chunks, g)
        best = min(best, cost) if best else cost
    return None if best is None else best[1]


@dataclass(frozen=True)
class StreamGeometry:
    """A window engine's line buffer and loop nest.

    ``conv`` is the window's geometry (``cin`` × ``h`` × ``w`` input, ``kh`` × ``kw``
    window, strides, padding; ``lanes``, ``groups`` of the MAC array).  Each output pixel
    takes ``middle × inner`` steps: ``middle`` channel groups (pooling: channels) by
    ``inner`` chunks (kernel taps × channel blocks; pooling and depthwise: taps).
    ``per_channel``: the middle loop picks the word (depthwise, pooling), instead of every
    group reading the same words (a dense conv).
    """

    conv: ConvGeometry
    word: int
    middle: int
    inner: int
    per_channel: bool
    #: channel blocks a tap's inner steps walk (None: every word of a pixel; a grouped
    #: conv: its group's ``cin/groups`` channels in words of ``word``)
    blocks: int | None = None

    @property
    def rows(self) -> int:
        g = self.conv
        return min(g.h, g.kh + g.sh)

    @property
    def words_per_pixel(self) -> int:
        return math.ceil(self.conv.cin / self.word)

    @property
    def row_words(self) -> int:
        return self.conv.w * self.words_per_pixel

    @property
    def depth(self) -> int:
        """Words of the line buffer."""
        return self.rows * self.row_words

    def buffer_bits(self, act_bits: int) -> int:
        return self.depth * self.word * act_bits

    @property
    def row_steps(self) -> int:
        return self.conv.ow * self.middle * self.inner

    @property
    def run_cycles(self) -> int:
        return self.conv.oh * self.row_steps

    def chunk_taps(self) -> list[tuple[int, int, int]]:
        """Per inner step: kernel row, kernel column and channel block (0 where the middle
        loop picks the channel)."""
        g = self.conv
        blocks = 1 if self.per_channel else self.blocks or self.words_per_pixel
        return [(dy, dx, cb) for dy in range(g.kh) for dx in range(g.kw) for cb in range(blocks)]

    def release(self, by: int) -> int:
        """Rows released when the output row whose window starts at ``by`` is done."""
        g = self.conv
        return _clip(by + g.sh, g.h) - _clip(by, g.h)

    def schedule(self, images: int = 1) -> list[int]:
        """Per image, the cycle of its last issued step (the first input handshake is cycle
        0), images back to back with ``inp`` valid and ``out`` ready throughout.

        Rows are counted over the whole run (row ``y`` of image ``i`` is row ``i·H + y``),
        as the ring of slots counts them."""
        g = self.conv
        per_row, rows = g.w * g.cin, self.rows
        released = [(0, 0)]  # (cycle from which visible, rows released in total)
        row_done: list[int] = []  # per input row, the cycle from which the compute sees it whole
        writer = 0  # the first cycle the writer may take the next row's first value
        compute = 0  # the first cycle the compute may issue its next step
        lasts = []

        def free_from(y: int) -> int:
            need = y - rows + 1
            return next(t for t, total in released if total >= need)

        def fill(upto: int) -> None:
            nonlocal writer
            while len(row_done) <= upto:
                start = max(writer, free_from(len(row_done)))
                writer = start + per_row
                row_done.append(writer)

        total = 0
        for i in range(images):
            base = i * g.h
            last = 0
            for oy in range(g.oh):
                by = oy * g.sh - g.ph
                fill(base + min(by + g.kh - 1, g.h - 1))
                start = max(compute, row_done[base + min(by + g.kh - 1, g.h - 1)])
                last = start + self.row_steps - 1
                compute = last + 1
                if oy < g.oh - 1:
                    total += self.release(by)
                    released.append((last + 1, total))
            lasts.append(last)
            fill(base + g.h - 1)
            # the image's end: issued-all is seen a cycle later; the writer must have the image
            end = max(last + 1, row_done[base + g.h - 1])
            total = (i + 1) * g.h
            released.append((end + 1, total))
            compute = end + 1
        return lasts
