"""Canonical Huffman coding of integer symbols (weight codes, relative indices).

Used to report honest compressed sizes (Deep Compression's last stage).  ``code_lengths``
builds optimal prefix-code lengths; ``canonical_codes`` turns them into codewords; ``encode``
and ``decode`` round-trip a symbol sequence through a bit string.
"""
from __future__ import annotations

import heapq
from collections import Counter

__all__ = ["code_lengths", "canonical_codes", "encode", "decode", "encoded_bits"]


def code_lengths(symbols) -> dict[int, int]:
    """Optimal prefix-code length per symbol (a single distinct symbol gets length 1)."""
    counts = Counter(int(s) for s in symbols)
    if not counts:
        return {}
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    heap = [(n, i, (s,)) for i, (s, n) in enumerate(sorted(counts.items()))]
    heapq.heapify(heap)
    lengths = dict.fromkeys(counts, 0)
    tie = len(heap)
    while len(heap) > 1:
        n1, _, a = heapq.heappop(heap)
        n2, _, b = heapq.heappop(heap)
        for s in a + b:
            lengths[s] += 1
        heapq.heappush(heap, (n1 + n2, tie, a + b))
        tie += 1
    return lengths


def canonical_codes(lengths: dict[int, int]) -> dict[int, str]:
    """Canonical codewords (shorter first, then by symbol) for the given lengths."""
    code, prev, out = 0, 0, {}
    for sym, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= n - prev
        out[sym] = format(code, f"0{n}b")
        code, prev = code + 1, n
    return out


def encode(symbols) -> tuple[str, dict[int, str]]:
    table = canonical_codes(code_lengths(symbols))
    return "".join(table[int(s)] for s in symbols), table


def decode(bits: str, table: dict[int, str]) -> list[int]:
    inverse = {v: k for k, v in table.items()}
    out, cur = [], ""
    for b in bits:
        cur += b
        if cur in inverse:
            out.append(inverse[cur])
            cur = ""
    if cur:
        raise ValueError("bit string ends inside a codeword")
    return out


def encoded_bits(symbols) -> int:
    """Bits of the Huffman-coded sequence (the codebook itself is not included)."""
    lengths = code_lengths(symbols)
    return sum(lengths[int(s)] for s in symbols)
