"""Processing elements: one per weight-format family, found through a registry.

A PE takes an unsigned activation code ``act`` and a weight code ``code`` (the bit
pattern stored in weight memory) and outputs the exact signed product
``format.decode(code) * act``, combinationally.  The zero point of the activation is
not subtracted here: the layer engine folds ``-Z_x * sum(w)`` into the bias
(docs/hardware.md), so every PE multiplies plain unsigned activations.

The arithmetic is the format's real logic, so gate counts measure the quantizer:

* ``fixed``: an N×8 signed-by-unsigned multiplier;
* ``shift``: sign/exponent decode, a barrel shifter and a conditional negate;
* ``ternary``: add, subtract or zero (a negate and a mux);
* ``binary``: add or subtract (a conditional negate);
* ``xnor``: an XOR of sign bits on 1-bit activations (popcount in the adder tree);
* ``kmeans``: a codebook lookup and an N×8 multiplier;
* ``abcnet``/``lqnet``: one add/sub per basis (a term each; scales applied per output);
* ``focused``: an add into the component's sum and a shift-add into the residual sum;
* ``unified``: an add/sub (the block's magnitude multiplies once per block).

A family names its PE class in the family registry (``model/numbers/families.py``);
:func:`make_pe` looks it up by the format's family name.  Each PE class also carries the
NumPy reference of what it computes (:meth:`ProcessingElement.reference`), and may reduce
its lanes before the adder trees (:meth:`ProcessingElement.lane_terms`: unified blocks).
"""
from __future__ import annotations

import operator

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from quantrtl.hw.arith import adder_tree, signed_width
from quantrtl.model.numbers.families import family
from quantrtl.model.numbers.formats import WeightFormat

__all__ = ["ProcessingElement", "MultiTermPE", "make_pe", "pe_class", "signed_width", "product_range"]


def product_range(fmt: WeightFormat, act_bits: int, term: int | None = None) -> tuple[int, int]:
    """Exact range of ``value * act`` (or of one term's ``term_value * act``) over the
    format's code space and all activations."""
    if term is None:
        vlo, vhi = fmt.value_range()
    else:
        t = fmt.term_values(fmt.code_space())[term]
        vlo, vhi = int(t.min()), int(t.max())
    amax = (1 << act_bits) - 1
    return min(vlo * amax, 0), max(vhi * amax, 0)


class ProcessingElement(wiring.Component):
    """Base PE: ``product = decode(code) * act`` (combinational).

    Parameters
    ----------
    fmt : WeightFormat
        The weight format whose codes this PE decodes.
    act_bits : int
        Width of the unsigned activation input (8 for every shipped model).
    """

    def __init__(self, fmt: WeightFormat, act_bits: int = 8):
        self.fmt = fmt
        self.act_bits = operator.index(act_bits)
        if not 1 <= self.act_bits <= 16:
            raise ValueError(f"act_bits must be in 1..16, got {act_bits}")
        super().__init__({
            "act": In(unsigned(self.act_bits)),
            "code": In(unsigned(fmt.bits)),
            **self._outputs(),
        })

    def _outputs(self) -> dict:
        return {"product": Out(signed(self.product_width))}

    @property
    def products(self) -> list:
        """The PE's output signals, one per term of the format (``[product]`` for one)."""
        return [self.product]

    @property
    def product_width(self) -> int:
        return signed_width(*product_range(self.fmt, self.act_bits))

    @property
    def latency(self) -> int:
        return 0

    def reference(self, codes, acts) -> np.ndarray:
        """NumPy reference of the PE's outputs: ``(len(products), len(codes), len(acts))``
        integers, ``term_k(code) * act`` for each term of the format (``value * act`` for a
        one-term format)."""
        codes, acts = np.asarray(codes, dtype=np.int64), np.asarray(acts, dtype=np.int64)
        return self.fmt.term_values(codes)[:, :, None] * acts[None, None, :]

    @classmethod
    def lane_terms(cls, fmt: WeightFormat, m: Module, terms: list[list], codes: list) -> list[list]:
        """The values the MAC array's adder trees sum, per term: one per lane by default.
        A format whose lanes share structure (a block magnitude) reduces them here, to
        ``lanes / fmt.block`` values per term."""
        return terms

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.product.eq(self._product(m))
        return m

    def _product(self, m: Module):  # pragma: no cover - abstract
        raise NotImplementedError


class FixedPE(ProcessingElement):
    """Two's-complement code times unsigned activation: a real multiplier."""

    def _product(self, m):
        return self.code.as_signed() * self.act


class ShiftPE(ProcessingElement):
    """``±(act << (k - 1))`` or 0: decode, barrel shift, conditional negate."""

    def _product(self, m):
        n = self.fmt.bits
        k = self.code[:n - 1]
        neg = self.code[n - 1]
        shamt = (k - 1)[:max(1, (self.fmt.levels - 1).bit_length())]
        mag = Mux(k == 0, 0, self.act << shamt)
        return Mux(neg, -mag, mag)


class TernaryPE(ProcessingElement):
    """Code 1 → +act, 3 → −act, 0 → 0."""

    def _product(self, m):
        return Mux(self.code[0], Mux(self.code[1], -self.act, self.act), 0)


class BinaryPE(ProcessingElement):
    """Code 0 → +act, 1 → −act."""

    def _product(self, m):
        return Mux(self.code[0], -self.act, self.act)


class KMeansPE(ProcessingElement):
    """Codebook lookup (a table of the layer's integer centroids) and a multiplier."""

    def _product(self, m):
        # the table as one packed constant and a word select: a continuous assignment in
        # Verilog (a case statement would start as X in Icarus when the code never changes)
        bits = self.fmt.CODEBOOK_BITS
        packed = sum((int(v) % (1 << bits)) << (bits * i) for i, v in enumerate(self.fmt.codebook))
        table = Const(packed, bits * len(self.fmt.codebook))
        return table.word_select(self.code, bits).as_signed() * self.act


class UnifiedPE(ProcessingElement):
    """``±act`` by the sign bit; the block's magnitude multiplies the block sum once
    (:meth:`lane_terms`, inside the MAC array)."""

    @property
    def product_width(self) -> int:
        return signed_width(-((1 << self.act_bits) - 1), (1 << self.act_bits) - 1)

    def _product(self, m):
        return Mux(self.code[self.fmt.MAG_BITS], -self.act, self.act)

    def reference(self, codes, acts) -> np.ndarray:
        codes, acts = np.asarray(codes, dtype=np.int64), np.asarray(acts, dtype=np.int64)
        sign = np.where(codes >> self.fmt.MAG_BITS, -1, 1)
        return (sign[:, None] * acts[None, :])[None]

    @classmethod
    def lane_terms(cls, fmt, m, terms, codes):
        """Sum each block's ``±act`` and multiply by the block's magnitude (the magnitude
        field of the block's first code)."""
        b, mb = fmt.block, fmt.MAG_BITS
        products, out = terms[0], []
        for j in range(0, len(products), b):
            s = adder_tree(m, products[j:j + b], f"block{j // b}")
            p = Signal(signed(len(s) + mb + 1), name=f"block{j // b}_prod")
            m.d.comb += p.eq(s * codes[j][:mb])
            out.append(p)
        return [out]


class XnorPE(ProcessingElement):
    """Binary weight × binary (pm1) activation: ``2 * (a XOR code)``, i.e. ``w * x + 1``.

    ``a XOR code`` is the XNOR of the two sign bits (code 1 is -1, a = 1 is +1); the
    doubling is wiring, and the layer engine folds the ``-1`` per tap into the bias
    (``b - K``), so the adder tree is a popcount: ``acc = 2 * popcount - K + b``.
    """

    @property
    def product_width(self) -> int:
        return signed_width(0, 2)

    def _product(self, m):
        return (self.act[0] ^ self.code[0]) << 1

    def reference(self, codes, acts) -> np.ndarray:
        """``w * x + 1`` with ``x = 2a - 1``."""
        w = self.fmt.decode(np.asarray(codes, dtype=np.int64))
        x = 2 * np.asarray(acts, dtype=np.int64) - 1
        return (w[:, None] * x[None, :] + 1)[None]


class MultiTermPE(ProcessingElement):
    """A PE with one output per term of the format (``term{k} = term_value_k * act``).

    The per-layer coefficients are applied once per output by the MAC array, so each
    term here is an add/sub or a shift of the activation.
    """

    def _outputs(self) -> dict:
        return {f"term{k}": Out(signed(signed_width(*product_range(self.fmt, self.act_bits, k))))
                for k in range(self.fmt.terms)}

    @property
    def products(self) -> list:
        return [getattr(self, f"term{k}") for k in range(self.fmt.terms)]

    @property
    def product_width(self) -> int:  # not one product: the widest term
        return max(len(p) for p in self.products)

    def elaborate(self, platform):
        m = Module()
        for port, value in zip(self.products, self._terms(m)):
            m.d.comb += port.eq(value)
        return m

    def _terms(self, m):  # pragma: no cover - abstract
        raise NotImplementedError


class BasisPE(MultiTermPE):
    """ABC-Net / LQ-Net: ``±act`` per basis (bit i of the code is basis i's sign)."""

    def _terms(self, m):
        return [Mux(self.code[i], -self.act, self.act) for i in range(self.fmt.bits)]


class FocusedPE(MultiTermPE):
    """Focused quantization: the activation into its component's sum, and
    ``±(act << (k - 1))`` into the residual sum (nothing for a pruned weight)."""

    def _terms(self, m):
        kb = self.fmt.kbits
        k, s, z = self.code[:kb], self.code[kb], self.code[kb + 1]
        nonzero = self.code != 0
        shamt = (k - 1)[:max(1, (self.fmt.levels - 1).bit_length())]
        mag = Mux(k == 0, 0, self.act << shamt)
        return [Mux(nonzero & ~z, self.act, 0), Mux(z, self.act, 0), Mux(s, -mag, mag)]


def pe_class(fmt: WeightFormat) -> type[ProcessingElement]:
    """The PE class the family of ``fmt`` names (``model/numbers/families.py``)."""
    cls = family(fmt.family).resolve("pe")
    if not (isinstance(cls, type) and issubclass(cls, ProcessingElement)):
        raise TypeError(f"family {fmt.family!r}: its PE {cls!r} is not a ProcessingElement subclass")
    return cls


def make_pe(fmt: WeightFormat, act_bits: int = 8) -> ProcessingElement:
    """The PE for ``fmt``."""
    return pe_class(fmt)(fmt, act_bits)
