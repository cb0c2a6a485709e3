"""Arithmetic building blocks shared by the PEs, the MAC array and the unrolled datapaths:
exact widths and balanced adder trees (no format knowledge)."""
from __future__ import annotations

from amaranth.hdl import Const, Module, Shape, Signal, signed

__all__ = ["signed_width", "sum_shape", "adder_tree", "all_of", "weighted_sum"]


def all_of(signals):
    """The AND of one or more 1-bit ``signals`` (an expression)."""
    result = signals[0]
    for s in signals[1:]:
        result = result & s
    return result


def signed_width(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in [lo, hi]."""
    return max((-int(lo) - 1).bit_length() if lo < 0 else 0, int(hi).bit_length()) + 1


def sum_shape(a, b) -> Shape:
    """Shape that holds every sum of two values of the shapes of ``a`` and ``b``."""
    sa, sb = a.shape(), b.shape()
    if sa.signed == sb.signed:
        return Shape(max(sa.width, sb.width) + 1, signed=sa.signed)
    ws = max(sa.width if sa.signed else sa.width + 1, sb.width if sb.signed else sb.width + 1)
    return signed(ws + 1)


def adder_tree(m: Module, values: list, name: str):
    """Balanced pairwise sum of ``values`` (each addition widens by one bit, never overflows)."""
    level = 0
    while len(values) > 1:
        nxt = []
        for i in range(0, len(values) - 1, 2):
            s = Signal(sum_shape(values[i], values[i + 1]), name=f"{name}_l{level}_{i // 2}")
            m.d.comb += s.eq(values[i] + values[i + 1])
            nxt.append(s)
        if len(values) % 2:
            nxt.append(values[-1])
        values, level = nxt, level + 1
    return values[0]


def weighted_sum(m: Module, base, terms: list, coefficients, width: int, name: str):
    """``base + Σ_k c_k · terms[k]`` modulo ``2**width`` (terms whose coefficient is 0
    skipped), a named signal per step (``scaled<name>_t<k>``, ``sum<name>_t<k>``): a
    multi-term format's per-layer coefficients applied once per output."""
    total = base
    for k, (term, c) in enumerate(zip(terms, coefficients)):
        if c:
            scaled = Signal(signed(width), name=f"scaled{name}_t{k}")
            m.d.comb += scaled.eq(term * Const(int(c), signed(max(2, int(c).bit_length() + 1))))
            nxt = Signal(signed(width), name=f"sum{name}_t{k}")
            m.d.comb += nxt.eq(total + scaled)
            total = nxt
    return total
