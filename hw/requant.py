"""Requantization (docs/integer-semantics.md §3) and the small activation units.

``q = clamp(Z + ((acc * M0 + 2**(n-1)) >> n), lo, hi)``: an exact ``acc_width × 31``
multiplier, an arithmetic barrel shift by ``n - 1``, an increment and a one-bit shift
(the same rounding), a zero-point add and a clamp (which is also the fused ReLU when
``lo = Z``).
"""
from __future__ import annotations

import operator

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from quantrtl.model.numbers.artifact import M0_BITS

__all__ = ["Requantizer", "clamp"]


def clamp(value, lo: int, hi: int):
    return Mux(value < lo, lo, Mux(value > hi, hi, value))


class Requantizer(wiring.Component):
    """Combinational requantizer for one output at a time.

    Parameters
    ----------
    acc_width : int
        Signed accumulator width.
    shift_range : (int, int)
        Smallest and largest shift ``n`` used by the layer (sizes the shifter).
    zero_point, lo, hi : int
        Output zero point and clamp bounds.
    out_bits : int
        Unsigned output width.
    """

    def __init__(self, acc_width: int, shift_range: tuple[int, int], zero_point: int, lo: int, hi: int,
                 out_bits: int = 8):
        self.acc_width = operator.index(acc_width)
        self.shift_min, self.shift_max = (operator.index(v) for v in shift_range)
        if not 1 <= self.shift_min <= self.shift_max:
            raise ValueError(f"shift range {shift_range} must satisfy 1 <= min <= max")
        self.zero_point, self.lo, self.hi = (operator.index(v) for v in (zero_point, lo, hi))
        self.out_bits = operator.index(out_bits)
        if not 0 <= self.lo <= self.hi < 1 << self.out_bits:
            raise ValueError(f"clamp [{lo}, {hi}] outside the {out_bits}-bit output range")
        super().__init__({
            "acc": In(signed(self.acc_width)),
            "m0": In(unsigned(M0_BITS)),
            "shift": In(unsigned(self.shift_max.bit_length())),
            "q": Out(unsigned(self.out_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        pw = self.acc_width + M0_BITS
        prod = Signal(signed(pw))
        m.d.comb += prod.eq(self.acc * self.m0)
        # floor((P + 2**(n-1)) / 2**n) == (floor(P / 2**(n-1)) + 1) >> 1: no wide rounding
        # constant, one arithmetic barrel shift by n-1 and an increment.
        half = Signal(signed(pw))
        m.d.comb += half.eq(prod >> (self.shift - 1).as_unsigned())
        shifted = Signal(signed(pw))
        m.d.comb += shifted.eq((half + 1) >> 1)
        y = Signal(signed(pw + 1))
        m.d.comb += y.eq(shifted + self.zero_point)
        m.d.comb += self.q.eq(clamp(y, self.lo, self.hi))
        return m
