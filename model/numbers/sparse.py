"""Relative-index (zero-run) encoding of sparse weight rows (Deep Compression, EIE).

Each output channel's weight codes, in fan-in order, become a stream of entries
``(run, code)``: ``run`` zeros are skipped, then comes a weight with code ``code``.
``run`` is stored in ``index_bits`` bits; a gap longer than ``2**index_bits - 1`` zeros is
bridged by a *filler*: an entry with the maximal run whose weight is the zero code, as in
the Deep Compression paper.  Formats without a zero code (binary) mark fillers with one
extra flag bit per entry.  Trailing zeros after the last entry are implicit (the row
length is known).

Decoding walks ``position += run + 1`` and places each entry's code there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantrtl.model.numbers.formats import WeightFormat

__all__ = ["SparseRow", "encode_row", "decode_row", "encode_matrix", "stream_bits"]


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


def stream_bits(rows: list[SparseRow], fmt: WeightFormat) -> dict[str, int]:
    """Exact storage: per entry ``index_bits`` + code bits (+1 filler flag without a zero code)."""
    flag = 0 if zero_code(fmt) is not None else 1
    entries = sum(r.entries for r in rows)
    index_bits = rows[0].index_bits if rows else 0
    return {"entries": entries, "fillers": int(sum(r.filler.sum() for r in rows)),
            "index": entries * index_bits, "codes": entries * fmt.bits, "flags": entries * flag,
            "total": entries * (index_bits + fmt.bits + flag)}
