"""The MAC array: P lanes of a format's PE, adder trees, accumulators.

The P lanes are split into ``groups`` equal groups of ``P / groups`` lanes.  Each group
sums its lanes' products in a balanced adder tree and accumulates the sum into its own
accumulator.  ``groups = 1`` is the classic dot-product engine (P lanes → one adder tree →
one accumulator); more groups let a layer with a short fan-in (a 3×3 kernel on one
input channel) keep every lane busy by computing several output channels at once.

Accumulator width: ``acc_width`` comes from the layer's worst-case bound
(:attr:`quantrtl.model.numbers.artifact.Layer.accumulator_bits`, docs/integer-semantics.md §2).  All
additions are two's complement modulo ``2**acc_width``: because the *final* dot product
fits, intermediate wrap-around (for instance from a bias with the zero-point correction
folded in) cancels out and the result is exact.

Formats with several terms (ABC-Net, LQ-Net, focused) get one accumulator per term
and the bias in a register; ``acc`` is then ``bias + sum_k c_k * term_acc_k`` with the
format's per-layer coefficients (the scale multiplies once per output).  Unified
weights sum each block of lanes first and multiply by the block's magnitude (the
PE's :meth:`~quantrtl.hw.pe.ProcessingElement.lane_terms` hook).

Timing: inputs are sampled when ``en`` is high; ``pipeline`` (0, 1 or 2) adds a
register after the PEs and after the adder trees.  A step with ``last`` set has been
accumulated ``latency`` enabled cycles later, when ``done`` is high and ``acc`` holds the
finished dot products.  With ``en`` low every register holds (a stall).
"""
from __future__ import annotations

import operator

import numpy as np

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from quantrtl.model.numbers.formats import WeightFormat

from quantrtl.hw.arith import adder_tree, weighted_sum
from quantrtl.hw.pe import make_pe, pe_class

__all__ = ["MacArray", "term_widths"]


def term_widths(fmt: WeightFormat, codes, act_bits: int = 8) -> list[int]:
    """Per term, the signed width of its largest dot product over the rows of ``codes``
    (output channels × fan-in) and all activations: the term accumulators stay exact."""
    t = np.abs(fmt.term_values(np.asarray(codes))).reshape(fmt.terms, np.asarray(codes).shape[0], -1)
    bound = t.sum(axis=2).max(axis=1) * ((1 << act_bits) - 1)
    return [max(2, int(b).bit_length() + 1) for b in bound]


class MacArray(wiring.Component):
    """P-lane multiply-accumulate array for one weight format.

    Parameters
    ----------
    fmt : WeightFormat
        Weight format of every lane's PE.
    lanes : int
        P, the number of (weight, activation) pairs consumed per cycle.
    acc_width : int
        Accumulator width in bits (signed).
    groups : int
        Number of independent adder trees and accumulators; must divide ``lanes``.
    act_bits : int
        Unsigned activation width.
    pipeline : int
        0, 1 or 2 extra register stages (after the PEs, then after the trees).
    term_widths : list of int, optional
        Multi-term formats: signed width that holds each term's exact dot product
        (:func:`term_widths`); by default every term accumulator is ``acc_width`` wide
        (exact modulo ``2**acc_width``).
    """

    def __init__(self, fmt: WeightFormat, lanes: int, acc_width: int, groups: int = 1, act_bits: int = 8,
                 pipeline: int = 0, term_widths: list[int] | None = None):
        self.fmt = fmt
        self.term_widths = list(term_widths) if term_widths else None
        if self.term_widths is not None and len(self.term_widths) != fmt.terms:
            raise ValueError(f"term_widths needs {fmt.terms} widths, got {term_widths}")
        self.lanes = operator.index(lanes)
        self.groups = operator.index(groups)
        self.acc_width = operator.index(acc_width)
        self.act_bits = operator.index(act_bits)
        self.pipeline = operator.index(pipeline)
        if self.lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        if self.groups < 1 or self.lanes % self.groups:
            raise ValueError(f"groups ({groups}) must divide lanes ({lanes})")
        if not 2 <= self.acc_width <= 128:
            raise ValueError(f"acc_width must be in 2..128, got {acc_width}")
        if self.lanes_per_group % fmt.lane_block:
            raise ValueError(f"{fmt.name}: lanes per group ({self.lanes_per_group}) must be a multiple of the "
                             f"block size {fmt.lane_block}")
        if self.pipeline not in (0, 1, 2):
            raise ValueError(f"pipeline must be 0, 1 or 2, got {pipeline}")
        super().__init__({
            "en": In(1, init=1),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            **self.operand_ports(),
            "init": In(data.ArrayLayout(signed(self.acc_width), self.groups)),
            "acc": Out(data.ArrayLayout(signed(self.acc_width), self.groups)),
            "done": Out(1),
        })

    def operand_ports(self) -> dict:
        """The ports of a step's operands: an activation and a weight code per lane."""
        return {"act": In(data.ArrayLayout(unsigned(self.act_bits), self.lanes)),
                "code": In(data.ArrayLayout(unsigned(self.fmt.bits), self.lanes))}

    @property
    def lanes_per_group(self) -> int:
        return self.lanes // self.groups

    @property
    def latency(self) -> int:
        """Enabled cycles from a step's inputs to its accumulation being visible on ``acc``."""
        return 1 + self.pipeline

    def products(self, m: Module) -> tuple[list[list], int]:
        """What the adder trees sum: ``terms[k]`` lists each group's values of term ``k``,
        group after group, and the count per group.  Here the lanes' PEs (a PE may reduce
        its lanes first: unified, one value per block of lanes)."""
        fmt = self.fmt
        terms = [[] for _ in range(fmt.terms)]  # terms[k][lane]
        for i in range(self.lanes):
            pe = m.submodules[f"pe{i}"] = make_pe(fmt, self.act_bits)
            m.d.comb += [pe.act.eq(self.act[i]), pe.code.eq(self.code[i])]
            for k, p in enumerate(pe.products):
                terms[k].append(p)
        terms = pe_class(fmt).lane_terms(fmt, m, terms, [self.code[i] for i in range(self.lanes)])
        return terms, self.lanes_per_group // fmt.block

    def elaborate(self, platform):
        m = Module()
        fmt, K = self.fmt, self.fmt.terms
        terms, per_group = self.products(m)

        ctrl = [self.valid, self.first, self.last]
        init = self.init

        def stage(values, ctrl, init, name):
            """One pipeline register stage (enabled by ``en``) over data and control."""
            regs = [Signal.like(v, name=f"{name}_{i}") for i, v in enumerate(values)]
            cregs = [Signal(name=f"{name}_{n}") for n in ("valid", "first", "last")]
            ireg = Signal.like(init, name=f"{name}_init")
            with m.If(self.en):
                m.d.sync += [r.eq(v) for r, v in zip(regs, values)]
                m.d.sync += [r.eq(v) for r, v in zip(cregs, ctrl)]
                m.d.sync += ireg.eq(init)
            return regs, cregs, ireg

        def staged(groups, name):
            flat = [v for g in groups for v in g]
            regs, c, i = stage(flat, ctrl, init, name)
            n = len(groups[0])
            return [regs[j * n:(j + 1) * n] for j in range(len(groups))], c, i

        if self.pipeline >= 1:
            terms, ctrl, init = staged(terms, "pe_reg")
        sums = [[adder_tree(m, terms[k][g * per_group:(g + 1) * per_group], f"tree{g}" + (f"_t{k}" if K > 1 else ""))
                 for g in range(self.groups)] for k in range(K)]
        if self.pipeline >= 2:
            sums, ctrl, init = staged(sums, "tree_reg")

        valid, first, last = ctrl
        if K == 1:
            with m.If(self.en):
                m.d.sync += self.done.eq(valid & last)
                with m.If(valid):
                    for g in range(self.groups):
                        base = Mux(first, init[g], self.acc[g])
                        m.d.sync += self.acc[g].eq(base + sums[0][g])
            return m
        # several terms: one accumulator per term, the bias held apart; the per-layer
        # coefficients multiply once per output (modulo 2**acc_width, exact as above).
        with m.If(self.en):
            m.d.sync += self.done.eq(valid & last)
        W = self.acc_width
        widths = [min(W, w) for w in self.term_widths] if self.term_widths else [W] * K
        for g in range(self.groups):
            bias = Signal(signed(W), name=f"bias{g}")
            accs = [Signal(signed(widths[k]), name=f"acc{g}_t{k}") for k in range(K)]
            with m.If(self.en & valid):
                with m.If(first):
                    m.d.sync += bias.eq(init[g])
                for k in range(K):
                    m.d.sync += accs[k].eq(Mux(first, 0, accs[k]) + sums[k][g])
            m.d.comb += self.acc[g].eq(weighted_sum(m, bias, accs, fmt.coefficients, W, str(g)))
        return m
