"""Unrolled (hard-wired weight) datapaths: one output per cycle, weights as constants.

This is the methodology of the Focused Quantization paper's gate comparison: every
weight of an output channel is a constant in the netlist, so

* a zero weight costs nothing (no term);
* a power-of-two weight ``±2**e`` is wiring (``x << e``) plus its add or subtract;
* any other weight is a constant multiply (a shift-add network after synthesis).

Positive and negative terms go into two balanced adder trees and the channel output is
their difference, registered: one dot product per clock cycle.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Const, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .array import adder_tree
from .pe import signed_width

__all__ = ["UnrolledDot"]


class UnrolledDot(wiring.Component):
    """``y = sum_i w_i * x_i`` with constant integer weights ``w`` and unsigned ``x``.

    Parameters
    ----------
    weights : sequence of int
        Decoded integer weight values of one output channel (fan-in order).
    act_bits : int
        Width of each unsigned activation.
    """

    def __init__(self, weights, act_bits: int = 8):
        self.weights = [int(w) for w in np.asarray(weights).ravel()]
        self.act_bits = int(act_bits)
        amax = (1 << self.act_bits) - 1
        lo = sum(w for w in self.weights if w < 0) * amax
        hi = sum(w for w in self.weights if w > 0) * amax
        self.out_width = signed_width(lo, hi)
        super().__init__({
            "x": In(data.ArrayLayout(unsigned(self.act_bits), len(self.weights))),
            "y": Out(signed(self.out_width)),
        })

    @property
    def nonzero(self) -> int:
        return sum(1 for w in self.weights if w)

    def elaborate(self, platform):
        m = Module()
        pos, neg = [], []
        for i, w in enumerate(self.weights):
            if w == 0:
                continue  # a zero weight vanishes
            a = abs(w)
            x = self.x[i]
            if a & (a - 1) == 0:
                term = x << (a.bit_length() - 1)  # power of two: wiring
            else:
                term = x * Const(a, unsigned(a.bit_length()))  # constant multiply
            t = Signal(unsigned(len(term)), name=f"t{i}")
            m.d.comb += t.eq(term)
            (pos if w > 0 else neg).append(t)
        zero = Const(0, 1)
        p = adder_tree(m, pos, "pos") if pos else zero
        n = adder_tree(m, neg, "neg") if neg else zero
        m.d.sync += self.y.eq(p - n)
        return m
