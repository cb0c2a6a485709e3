"""Processing elements, exhaustively over code space × all activations, against NumPy."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from amaranth.hdl import Fragment

from quantrtl.hw.arith import signed_width
from quantrtl.hw.pe import make_pe, product_range
from quantrtl.model.numbers.families import parse_format
from quantrtl.model.numbers.formats import FixedFormat, FormatError, WeightFormat
from tests.factories import FITTED_NAMES, PLAIN_NAMES, fitted_format

#: Exhaustive over code space × all activations; formats with more than 4096 codes
#: (fixed13..16: up to 65535 codes × 256 activations, 14..115 s each) are marked slow.
PLAIN = [n for n in PLAIN_NAMES if not parse_format(n).binary_input]
EXHAUSTIVE = [n for n in PLAIN if len(parse_format(n).code_space()) <= 4096]
WIDE = [n for n in PLAIN if n not in EXHAUSTIVE]


def inspected(pe):
    """A PE whose widths a test reads: elaborated once, so Amaranth does not warn."""
    Fragment.get(pe, None)
    return pe


def check_pe(fmt: WeightFormat, codes, acts, act_bits: int = 8) -> list:
    """Simulate the PE on every (code, act) pair; return the mismatches as (code, act, expected, got)."""
    pe = make_pe(fmt, act_bits)
    acts = list(acts)
    expected = pe.reference(codes, acts)  # (outputs, codes, acts)
    bad = []

    async def bench(ctx):
        for ci, code in enumerate(codes):
            ctx.set(pe.code, int(code))
            for ai, a in enumerate(acts):
                ctx.set(pe.act, int(a))
                got = [ctx.get(p) for p in pe.products]
                want = [int(v) for v in expected[:, ci, ai]]
                if got != want:
                    bad.append((int(code), int(a), want if len(want) > 1 else want[0], got if len(got) > 1 else got[0]))

    sim = Simulator(pe)
    sim.add_testbench(bench)
    sim.run()
    return bad


@pytest.mark.parametrize("name", EXHAUSTIVE + [pytest.param(n, marks=pytest.mark.slow) for n in WIDE])
def test_pe_exhaustive(name):
    fmt = parse_format(name)
    bad = check_pe(fmt, fmt.code_space(), range(256))
    assert not bad, f"{name}: {len(bad)} mismatches, first (code, act, expected, got) = {bad[0]}"


@pytest.mark.parametrize("name", FITTED_NAMES)
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
