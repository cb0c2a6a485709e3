"""Processing elements, exhaustively over code space × all activations, against NumPy."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from amaranth.hdl import Cat, Elaboratable, Fragment, Module, Signal

from quantrtl.hw.arith import signed_width
from quantrtl.hw.pe import make_pe, product_range
from quantrtl.model.numbers.families import parse_format
from quantrtl.model.numbers.formats import FixedFormat, FormatError, WeightFormat
from tests.factories import FITTED_PE_NAMES, PLAIN_NAMES, fitted_format

#: Exhaustive over code space × all activations; formats with more than 4096 codes
#: (fixed13..16: up to 65535 codes × 256 activations) are marked slow.
PLAIN = [n for n in PLAIN_NAMES if not parse_format(n).binary_input]
EXHAUSTIVE = [n for n in PLAIN if len(parse_format(n).code_space()) <= 4096]
WIDE = [n for n in PLAIN if n not in EXHAUSTIVE]


def inspected(pe):
    """A PE whose widths a test reads: elaborated once, so Amaranth does not warn."""
    Fragment.get(pe, None)
    return pe


class PeBatch(Elaboratable):
    """One copy of the real PE per activation, all fed the same code: the simulator then
    takes one step per code instead of one per (code, activation) pair.  The activations
    are signals set once, and the products come back as one packed value."""

    def __init__(self, fmt: WeightFormat, acts: list, act_bits: int):
        self.pes = [make_pe(fmt, act_bits) for _ in acts]
        self.code = Signal(fmt.bits)
        self.acts = [Signal(act_bits, name=f"act{i}") for i in range(len(acts))]
        self.widths = [len(p) for p in self.pes[0].products]
        self.out = Signal(sum(self.widths) * len(acts))

    def elaborate(self, platform):
        m = Module()
        outs = []
        for i, (pe, a) in enumerate(zip(self.pes, self.acts)):
            m.submodules[f"pe{i}"] = pe
            m.d.comb += [pe.code.eq(self.code), pe.act.eq(a)]
            outs += pe.products
        m.d.comb += self.out.eq(Cat(*outs))
        return m

    def unpack(self, value: int) -> list[list[int]]:
        """Per activation, the signed products."""
        rows, shift = [], 0
        for _ in self.acts:
            row = []
            for w in self.widths:
                v = (value >> shift) & ((1 << w) - 1)
                row.append(v - (1 << w) if v >> (w - 1) else v)
                shift += w
            rows.append(row)
        return rows


def check_pe(fmt: WeightFormat, codes, acts, act_bits: int = 8) -> list:
    """Simulate the PE on every (code, act) pair; return the mismatches as (code, act, expected, got)."""
    acts = [int(a) for a in acts]
    probe = make_pe(fmt, act_bits)
    expected = probe.reference(codes, acts)  # (outputs, codes, acts), the PE's own NumPy reference
    Fragment.get(probe, None)
    per_act = sum(len(p) for p in probe.products)
    step = max(1, 4096 // per_act)  # packed outputs of at most ~4096 bits (the simulator prints them as literals)
    bad = []
    for lo in range(0, len(acts), step):
        chunk = acts[lo:lo + step]
        batch = PeBatch(fmt, chunk, act_bits)

        async def bench(ctx, batch=batch, chunk=chunk, lo=lo):
            for sig, a in zip(batch.acts, chunk):
                ctx.set(sig, a)
            for ci, code in enumerate(codes):
                ctx.set(batch.code, int(code))
                wants = expected[:, ci, lo:lo + len(chunk)].T.tolist()
                for a, want, got in zip(chunk, wants, batch.unpack(ctx.get(batch.out))):
                    if got != want:
                        bad.append((int(code), a, want if len(want) > 1 else want[0], got if len(got) > 1 else got[0]))

        sim = Simulator(batch)
        sim.add_testbench(bench)
        sim.run()
    bad.sort()
    return bad


@pytest.mark.parametrize("name", EXHAUSTIVE + [pytest.param(n, marks=pytest.mark.slow) for n in WIDE])
def test_pe_exhaustive(name):
    fmt = parse_format(name)
    bad = check_pe(fmt, fmt.code_space(), range(256))
    assert not bad, f"{name}: {len(bad)} mismatches, first (code, act, expected, got) = {bad[0]}"


@pytest.mark.parametrize("name", FITTED_PE_NAMES)
def test_method_pe_exhaustive(name):
    fmt = fitted_format(name)
    bad = check_pe(fmt, fmt.code_space(), range(256))
    assert not bad, f"{name}: {len(bad)} mismatches, first (code, act, expected, got) = {bad[0]}"


def test_xnor_pe_is_an_xnor():
    fmt = parse_format("xnor")
    bad = check_pe(fmt, fmt.code_space(), (0, 1), act_bits=1)
    assert not bad, bad
    assert inspected(make_pe(fmt, 1)).product_width == 3


def test_pe_check_can_fail():
    """The checker reports a wrong PE: a fixed8 PE judged as if it were fixed7 codes."""
    class Wrong(FixedFormat):
        def _decode(self, codes):
            return super()._decode(codes) + 1

    bad = check_pe(Wrong(bits=4), np.arange(1, 4), [3])  # family "fixed": the real FixedPE
    assert bad and bad[0] == (1, 3, 6, 3)


@pytest.mark.parametrize("name", EXHAUSTIVE + WIDE)
def test_product_width_is_tight(name):
    fmt = parse_format(name)
    lo, hi = product_range(fmt, 8)
    w = inspected(make_pe(fmt)).product_width
    assert w == signed_width(lo, hi)
    assert -(1 << (w - 1)) <= lo and hi < 1 << (w - 1)
    assert lo < -(1 << (w - 2)) or hi >= 1 << (w - 2)  # one bit fewer would not do


def test_signed_width():
    assert [signed_width(-128, 127), signed_width(-129, 0), signed_width(0, 128), signed_width(0, 0)] == [8, 9, 9, 1]


def test_unknown_format_has_no_pe():
    class Odd(WeightFormat):
        family = "odd"
    with pytest.raises(FormatError, match="no quantizer family 'odd'"):
        make_pe(Odd(bits=1))
