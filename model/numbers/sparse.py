"""Relative-index (zero-run) encoding of sparse weight rows (Deep Compression, EIE).

Each output channel's weight codes, in fan-in order, become a stream of entries
``(run, code)``: ``run`` zeros are skipped, then comes a weight with code ``code``.
``run`` is stored in ``index_bits`` bits; a gap longer than ``2**index_bits - 1`` zeros is
bridged by a *filler*: an entry with the maximal run whose weight is the zero code, as in
the Deep Compression paper.  Formats without a zero code (binary) mark fillers with one
extra flag bit per entry.  Trailing zeros after the last entry are implicit (the row
length is known).

Decoding walks ``position += run + 1`` and places each entry's code there.

A layer's rows are stored one after the other, so the decoder must know where each row's
entries end: without it the rows ``[x,0,0,0], [0,y,0,0]`` and ``[x,0,y,0], [0,0,0,0]``
give the same entries ``(0,x) (1,y)``.  The stored stream (:func:`serialize`) therefore
starts with each row's entry count (EIE keeps a pointer per column for the same reason),
:data:`COUNT_WIDTH_BITS` bits giving the counts' width first; :func:`stream_bits` counts
them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantrtl.model.numbers.formats import WeightFormat

__all__ = ["SparseRow", "zero_code", "encode_row", "decode_row", "encode_matrix", "stream_bits", "count_bits", "serialize",
           "deserialize", "COUNT_WIDTH_BITS"]

#: Bits of the stream header that give the width of the per-row entry counts.
COUNT_WIDTH_BITS = 5


@dataclass(frozen=True)
class SparseRow:
    """One row's entries: ``runs[i]`` zeros, then ``codes[i]`` (a filler when ``filler[i]``)."""

    runs: np.ndarray
    codes: np.ndarray
    filler: np.ndarray
    length: int
    index_bits: int

    @property
    def entries(self) -> int:
        return len(self.runs)


def zero_code(fmt: WeightFormat) -> int | None:
    """A code that decodes to 0 (None for a format without one, e.g. binary)."""
    cs = fmt.code_space()
    zero = cs[fmt.decode(cs) == 0]
    return int(zero[0]) if len(zero) else None


def encode_row(codes, fmt: WeightFormat, index_bits: int = 4) -> SparseRow:
    """Relative-index entries of one row of weight codes."""
    if not 1 <= index_bits <= 16:
        raise ValueError(f"index_bits must be in 1..16, got {index_bits}")
    codes = np.asarray(codes, dtype=np.int64).ravel()
    values = fmt.decode(codes)
    zero = zero_code(fmt)
    max_run = (1 << index_bits) - 1
    runs, out, filler = [], [], []
    gap = 0
    for code, v in zip(codes, values):
        if v == 0:
            gap += 1
            continue
        while gap > max_run:  # bridge the gap: max_run zeros, then a zero weight (the filler)
            runs.append(max_run)
            out.append(zero if zero is not None else 0)
            filler.append(True)
            gap -= max_run + 1
        runs.append(gap)
        out.append(int(code))
        filler.append(False)
        gap = 0
    return SparseRow(np.array(runs, dtype=np.int64), np.array(out, dtype=np.int64), np.array(filler, dtype=bool),
                     len(codes), index_bits)


def decode_row(row: SparseRow, fmt: WeightFormat) -> np.ndarray:
    """Dense codes of the row (zeros as the format's zero code, or 0 when it has none)."""
    zero = zero_code(fmt)
    dense = np.full(row.length, zero if zero is not None else 0, dtype=np.int64)
    pos = -1
    for run, code, fill in zip(row.runs, row.codes, row.filler):
        pos += int(run) + 1
        if pos >= row.length:
            raise ValueError(f"relative index runs past the row end ({pos} >= {row.length})")
        if not fill:
            dense[pos] = code
    return dense


def encode_matrix(codes, fmt: WeightFormat, index_bits: int = 4) -> list[SparseRow]:
    """Rows = output channels (axis 0), each flattened in the given fan-in order."""
    codes = np.asarray(codes)
    return [encode_row(r, fmt, index_bits) for r in codes.reshape(codes.shape[0], -1)]


def count_bits(rows: list[SparseRow]) -> int:
    """Width of each row's entry count: enough for the longest row (at least 1)."""
    return max(1, max((r.entries for r in rows), default=0).bit_length())


def stream_bits(rows: list[SparseRow], fmt: WeightFormat) -> dict[str, int]:
    """Exact storage of :func:`serialize`'s stream: the counts' width, one entry count per
    row, and per entry ``index_bits`` + code bits (+1 filler flag without a zero code)."""
    flag = 0 if zero_code(fmt) is not None else 1
    entries = sum(r.entries for r in rows)
    index_bits = rows[0].index_bits if rows else 0
    counts = COUNT_WIDTH_BITS + len(rows) * count_bits(rows)
    return {"entries": entries, "fillers": int(sum(r.filler.sum() for r in rows)), "counts": counts,
            "index": entries * index_bits, "codes": entries * fmt.bits, "flags": entries * flag,
            "total": counts + entries * (index_bits + fmt.bits + flag)}


def _bits(value: int, width: int) -> list[int]:
    return [(int(value) >> i) & 1 for i in range(width)]


def _field(bits, pos: int, width: int) -> tuple[int, int]:
    if pos + width > len(bits):
        raise ValueError(f"sparse stream ends inside a field (bit {pos} of {len(bits)})")
    return sum(int(b) << i for i, b in enumerate(bits[pos:pos + width])), pos + width


def serialize(rows: list[SparseRow], fmt: WeightFormat) -> np.ndarray:
    """The stored bit stream of a layer's rows (LSB first per field): the counts' width
    (:data:`COUNT_WIDTH_BITS`), each row's entry count, then every row's entries
    (run, code and, for a format without a zero code, the filler flag)."""
    flag = zero_code(fmt) is None
    width = count_bits(rows)
    out = _bits(width, COUNT_WIDTH_BITS)
    for r in rows:
        out += _bits(r.entries, width)
    for r in rows:
        for run, code, fill in zip(r.runs, r.codes, r.filler):
            out += _bits(run, r.index_bits) + _bits(int(code) & ((1 << fmt.bits) - 1), fmt.bits)
            out += [int(fill)] if flag else []
    return np.array(out, dtype=np.uint8)


def deserialize(bits, fmt: WeightFormat, rows: int, length: int, index_bits: int) -> np.ndarray:
    """Dense codes (``rows`` x ``length``) of a stream written by :func:`serialize`."""
    flag = zero_code(fmt) is None
    width, pos = _field(bits, 0, COUNT_WIDTH_BITS)
    counts = []
    for _ in range(rows):
        n, pos = _field(bits, pos, width)
        counts.append(n)
    out = []
    for n in counts:
        runs, codes, filler = [], [], []
        for _ in range(n):
            run, pos = _field(bits, pos, index_bits)
            code, pos = _field(bits, pos, fmt.bits)
            fill = 0
            if flag:
                fill, pos = _field(bits, pos, 1)
            runs.append(run)
            codes.append(code)
            filler.append(bool(fill))
        row = SparseRow(np.array(runs, dtype=np.int64), np.array(codes, dtype=np.int64),
                        np.array(filler, dtype=bool), length, index_bits)
        out.append(decode_row(row, fmt))
    if pos != len(bits):
        raise ValueError(f"sparse stream has {len(bits) - pos} bits after its last entry")
    return np.array(out, dtype=np.int64).reshape(rows, length)
