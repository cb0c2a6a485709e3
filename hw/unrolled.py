"""Unrolled (hard-wired weight) datapaths: one output per cycle, weights as constants.

This is the methodology of the Focused Quantization paper's gate comparison: every
weight of an output channel is a constant in the netlist, so

* a zero weight costs nothing (no term);
* a power-of-two weight ``±2**e`` is wiring (``x << e``) plus its add or subtract;
* any other weight is its canonical signed digits (``hw/cmvm.py``): ``d`` nonzero
  digits are ``d`` shifted inputs, added or subtracted (no multiplier).

Positive and negative terms go into two balanced adder trees and the channel output is
their difference, registered: one dot product per clock cycle.  :class:`UnrolledLayer`
builds every output channel of a layer at once, sharing subexpressions across them.  Formats with a
decomposition (basis scales, component means, block magnitudes) sum each group of
terms first and multiply by the group's constant once.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Const, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from quantrtl.hw.arith import adder_tree, signed_width
from quantrtl.hw.cmvm import AdderGraph, cmvm, csd_digits

__all__ = ["UnrolledDot", "UnrolledLayer", "window_bits"]


def window_bits(fmt, codes, act_bits: int = 8) -> tuple[int, int]:
    """(bits of one channel's input window, bits of it the channel's datapath reads), for
    :meth:`UnrolledDot.from_codes` of the same arguments: inputs whose every term is zero
    are never read (synthesis removes their ``register_inputs`` flip-flops)."""
    codes = np.asarray(codes)
    bits = 1 if fmt.binary_input else act_bits
    groups = fmt.unrolled_groups(codes) or [(1, fmt.decode(codes))]
    terms = [np.asarray(ts).ravel() for c, ts in groups if c]
    used = sum(1 for i in range(codes.size) if any(int(t[i]) for t in terms))
    return codes.size * bits, used * bits


def _window_and_output(m: Module, c):
    """A hard-wired datapath's input window (registered inside when ``c.register_inputs``)
    and the domain its output is driven in (a register unless ``c.register_output`` is off)."""
    x = c.x
    if c.register_inputs:
        x = Signal.like(c.x, name="x_reg")
        m.d.sync += x.eq(c.x)
    return x, (m.d.sync if c.register_output else m.d.comb)


class UnrolledDot(wiring.Component):
    """``y = sum_i w_i * x_i`` with constant integer weights ``w`` and unsigned ``x``.

    Parameters
    ----------
    weights : sequence of int
        Decoded integer weight values of one output channel (fan-in order).
    act_bits : int
        Width of each unsigned activation.
    groups : list of (int, sequence of int), optional
        The format's decomposition ``w = sum_g c_g * t_g`` (:meth:`from_codes`): each
        group's terms are summed first and multiplied by its constant ``c_g`` once
        (ABC-Net's basis scales, focused quantization's means, a unified block's
        magnitude).  By default one group ``(1, w)``.
    register_inputs : bool
        Register ``x`` inside the design, so that every path runs register to register
        (what a post-route Fmax needs; in a whole layer this input window register is
        shared by all output channels).  Off for the gate counts.
    register_output : bool
        Register ``y`` (the default: one dot product per clock cycle); off, ``y`` is
        combinational (a part of a larger datapath that registers it: a pq table entry).
    """

    def __init__(self, weights, act_bits: int = 8, groups=None, register_inputs: bool = False,
                 register_output: bool = True):
        self.register_inputs = bool(register_inputs)
        self.register_output = bool(register_output)
        self.weights = [int(w) for w in np.asarray(weights).ravel()]
        self.act_bits = int(act_bits)
        self.groups = [(int(c), [int(t) for t in np.asarray(ts).ravel()]) for c, ts in groups] if groups else [(1, self.weights)]
        n = len(self.weights)
        if any(len(ts) != n for _, ts in self.groups):
            raise ValueError(f"every group needs {n} terms")
        recon = [sum(c * ts[i] for c, ts in self.groups) for i in range(n)]
        if recon != self.weights:
            raise ValueError("the groups do not sum to the weights")
        amax = (1 << self.act_bits) - 1
        lo = sum(w for w in self.weights if w < 0) * amax
        hi = sum(w for w in self.weights if w > 0) * amax
        self.out_width = max(signed_width(lo, hi), *(signed_width(*self._range(c, ts, amax)) for c, ts in self.groups))
        super().__init__({
            "x": In(data.ArrayLayout(unsigned(self.act_bits), len(self.weights))),
            "y": Out(signed(self.out_width)),
        })

    @staticmethod
    def _range(c, ts, amax):
        lo, hi = sum(t for t in ts if t < 0) * amax, sum(t for t in ts if t > 0) * amax
        return min(c * lo, c * hi, 0), max(c * lo, c * hi, 0)

    @classmethod
    def from_codes(cls, fmt, codes, act_bits: int = 8, register_inputs: bool = False) -> "UnrolledDot":
        """One output channel's codes in ``fmt``, with the format's decomposition.  A
        binary-input (``xnor``) format gets 1-bit activations ``a``: ``sum w * a`` is the
        popcount of the ±1 products up to the constant ``(K - sum w) / 2``."""
        codes = np.asarray(codes)
        return cls(fmt.decode(codes), 1 if fmt.binary_input else act_bits, fmt.unrolled_groups(codes),
                   register_inputs)


    @property
    def nonzero(self) -> int:
        return sum(1 for w in self.weights if w)

    def _sum(self, m: Module, x, ts: list, name: str):
        """Each weight's canonical signed digits as shifted inputs (a power of two is
        wiring, a zero weight nothing), positive and negative terms in two adder trees;
        their difference."""
        pos, neg = [], []
        for i, w in enumerate(ts):
            for k, d in csd_digits(w):
                t = Signal(unsigned(self.act_bits + k), name=f"{name}t{i}_{k}")
                m.d.comb += t.eq(x[i] << k)
                (pos if d > 0 else neg).append(t)
        zero = Const(0, 1)
        p = adder_tree(m, pos, f"{name}pos") if pos else zero
        n = adder_tree(m, neg, f"{name}neg") if neg else zero
        return p - n

    def elaborate(self, platform):
        m = Module()
        x, out = _window_and_output(m, self)
        if len(self.groups) == 1 and self.groups[0][0] == 1:
            out += self.y.eq(self._sum(m, x, self.groups[0][1], ""))
            return m
        scaled = []
        for g, (c, ts) in enumerate(self.groups):
            if c == 0 or not any(ts):
                continue
            s = Signal(signed(signed_width(*self._range(1, ts, (1 << self.act_bits) - 1))), name=f"g{g}_sum")
            m.d.comb += s.eq(self._sum(m, x, ts, f"g{g}_"))
            p = Signal(signed(self.out_width), name=f"g{g}_scaled")
            m.d.comb += p.eq(s * Const(c, signed(max(2, c.bit_length() + 1))) if c != 1 else s)
            scaled.append(p)
        out += self.y.eq(adder_tree(m, scaled, "groups") if scaled else 0)
        return m


def _range_shape(lo: int, hi: int):
    """The smallest shape holding every integer in [lo, hi]."""
    return unsigned(max(hi.bit_length(), 1)) if lo >= 0 else signed(signed_width(lo, hi))


class UnrolledLayer(wiring.Component):
    """A whole layer hard-wired, every output channel at once: ``y = W x`` for a constant
    integer matrix ``W`` (Cout x fan-in) as one adder graph (``hw/cmvm.py``: canonical
    signed digits, subexpressions shared across output channels, balanced output sums),
    no multiplier.  Each adder is as wide as its exact range; ``y`` is registered (one
    window per cycle) unless ``register_output`` is off; ``register_inputs`` registers
    the window too (register-to-register paths, for a post-route Fmax).

    ``max_depth`` bounds the adder levels of a shared subexpression (``cmvm``).

    ``carry_chains`` marks every adder's sum ``keep``, so that Yosys maps each adder of
    the graph to its own two-input ``$alu`` (a carry chain on an FPGA) instead of merging
    single-use adder chains into a ``$macc``, which it maps as carry-save full adders in
    LUTs: on ECP5 a ripple adder is half a CCU2C per bit and a 3:2 full-adder bit two LUT4s,
    while in gates the carry-save tree is the smaller (docs/hardware.md)."""

    def __init__(self, weights, act_bits: int = 8, register_inputs: bool = False, register_output: bool = True,
                 max_depth: int | None = None, carry_chains: bool = False, graph: AdderGraph | None = None):
        w = np.asarray(weights)
        self.weights = w.reshape(w.shape[0], -1).astype(np.int64)
        self.act_bits = int(act_bits)
        self.register_inputs, self.register_output = bool(register_inputs), bool(register_output)
        self.carry_chains = bool(carry_chains)
        # ``graph``: the adder graph of these weights found already (``with_carry_chains``)
        self.graph: AdderGraph = graph if graph is not None else cmvm(self.weights, self.act_bits, max_depth)
        amax = (1 << self.act_bits) - 1
        lo = int(np.minimum(self.weights, 0).sum(axis=1).min(initial=0)) * amax
        hi = int(np.maximum(self.weights, 0).sum(axis=1).max(initial=0)) * amax
        self.out_width = signed_width(lo, hi)
        cout, fan_in = self.weights.shape
        super().__init__({
            "x": In(data.ArrayLayout(unsigned(self.act_bits), fan_in)),
            "y": Out(data.ArrayLayout(signed(self.out_width), cout)),
        })

    @classmethod
    def from_codes(cls, fmt, codes, act_bits: int = 8, **options) -> "UnrolledLayer":
        """A layer's codes (Cout, fan-in...) in ``fmt``: its decoded integer weights; a
        binary-input (``xnor``) format reads 1-bit activations (``UnrolledDot``)."""
        codes = np.asarray(codes)
        return cls(np.asarray(fmt.decode(codes)).reshape(codes.shape[0], -1),
                   1 if fmt.binary_input else act_bits, **options)

    def with_carry_chains(self, carry_chains: bool = True) -> "UnrolledLayer":
        """The same layer (the same adder graph, not searched again) with ``carry_chains`` set."""
        return UnrolledLayer(self.weights, self.act_bits, self.register_inputs, self.register_output,
                             carry_chains=carry_chains, graph=self.graph)

    @property
    def adders(self) -> int:
        return self.graph.adders

    def describe(self) -> dict:
        """The adder graph in numbers: adders (final negations included), adder levels,
        shared subexpressions, canonical signed digits, the strategy kept (``hw/cmvm.py``)."""
        g = self.graph
        return {"adders": g.adders, "adder_depth": g.depth, "subexpressions": g.stats["subexpressions"],
                "csd_digits": g.stats["digits"], "cmvm_strategy": g.stats["strategy"]}

    @property
    def depth(self) -> int:
        return self.graph.depth

    def elaborate(self, platform):
        m = Module()
        x, out = _window_and_output(m, self)
        sig = []
        for n in self.graph.nodes:
            if n.is_input:
                sig.append(x[n.index])
                continue
            v = Signal(_range_shape(n.lo, n.hi), name=f"n{n.id}", attrs={"keep": 1} if self.carry_chains else {})
            a, b = sig[n.a] << n.shift_a, sig[n.b] << n.shift_b
            m.d.comb += v.eq(a + b if n.sign > 0 else a - b)
            sig.append(v)
        for j, o in enumerate(self.graph.outputs):
            if o is None:
                out += self.y[j].eq(0)
            else:
                node, shift, sign = o
                out += self.y[j].eq(sig[node] << shift if sign > 0 else -(sig[node] << shift))
        return m
