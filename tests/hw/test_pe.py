"""Processing elements, exhaustively over code space × all activations, against NumPy."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.pe import make_pe, product_range, signed_width
from model.formats import FixedFormat, WeightFormat, parse_format
from tests.factories import fitted_format

EXHAUSTIVE = [f"fixed{n}" for n in range(2, 13)] + [f"shift{n}" for n in range(3, 7)] + ["ternary", "binary"]
WIDE = [f"fixed{n}" for n in range(13, 17)]  # up to 65535 codes × 256 activations: 14..115 s each


def expected_affine(fmt: WeightFormat, codes) -> tuple[np.ndarray, np.ndarray]:
    """Per code and PE output, ``(m, c)`` with the output ``m * act + c``: ``value * act``;
    one ``term * act`` per term of a multi-term format; ``±act`` for unified (the block
    multiplies the magnitude); ``w * x + 1 = 2 * (a XOR code)`` for xnor (``x = 2a - 1``)."""
    codes = np.asarray(codes, dtype=np.int64)
    if fmt.binary_input:
        v = fmt.decode(codes)[None]
        return 2 * v, 1 - v
    if fmt.block > 1:
        return np.where(codes >> fmt.MAG_BITS, -1, 1)[None], np.zeros((1, len(codes)), dtype=np.int64)
    t = fmt.term_values(codes)
    return t, np.zeros_like(t)


def check_pe(fmt: WeightFormat, codes, acts, act_bits: int = 8) -> list:
    """Simulate the PE on every (code, act) pair; return the mismatches as (code, act, expected, got)."""
    pe = make_pe(fmt, act_bits)
    mult, off = (a.T.tolist() for a in expected_affine(fmt, codes))
    bad = []

    async def bench(ctx):
        for code, ms, cs in zip(codes, mult, off):
            ctx.set(pe.code, int(code))
            for a in acts:
                ctx.set(pe.act, int(a))
                got = [ctx.get(p) for p in pe.products]
                want = [m * int(a) + c for m, c in zip(ms, cs)]
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


METHODS = ["focused4", "focused5", "focused6", "kmeans2", "kmeans4", "kmeans8", "abcnet1", "abcnet5", "abcnet8",
           "lqnet1", "lqnet2", "lqnet4", "unified"]


@pytest.mark.parametrize("name", METHODS)
def test_method_pe_exhaustive(name):
    fmt = fitted_format(name)
    bad = check_pe(fmt, fmt.code_space(), range(256))
    assert not bad, f"{name}: {len(bad)} mismatches, first (code, act, expected, got) = {bad[0]}"


def test_xnor_pe_is_an_xnor():
    fmt = parse_format("xnor")
    bad = check_pe(fmt, fmt.code_space(), (0, 1), act_bits=1)
    assert not bad, bad
    pe = make_pe(fmt, 1)
    pe._MustUse__silence = True  # inspected, never elaborated
    assert pe.product_width == 3


def test_pe_check_can_fail():
    """The checker reports a wrong PE: a fixed8 PE judged as if it were fixed7 codes."""
    class Wrong(FixedFormat):
        def _decode(self, codes):
            return super()._decode(codes) + 1

    from hw import pe as pe_mod
    pe_mod.register_pe(Wrong, pe_mod.FixedPE)
    bad = check_pe(Wrong(bits=4), np.arange(1, 4), [3])
    assert bad and bad[0] == (1, 3, 6, 3)


@pytest.mark.parametrize("name", EXHAUSTIVE + WIDE)
def test_product_width_is_tight(name):
    fmt = parse_format(name)
    lo, hi = product_range(fmt, 8)
    pe = make_pe(fmt)
    pe._MustUse__silence = True  # inspected, never elaborated
    w = pe.product_width
    assert w == signed_width(lo, hi)
    assert -(1 << (w - 1)) <= lo and hi < 1 << (w - 1)
    assert lo < -(1 << (w - 2)) or hi >= 1 << (w - 2)  # one bit fewer would not do


def test_signed_width():
    assert [signed_width(-128, 127), signed_width(-129, 0), signed_width(0, 128), signed_width(0, 0)] == [8, 9, 9, 1]


def test_unknown_format_has_no_pe():
    class Odd(WeightFormat):
        family = "odd"
    with pytest.raises(ValueError, match="no processing element registered for format 'odd1'"):
        make_pe(Odd(bits=1))
