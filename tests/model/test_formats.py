"""Number formats: encode/decode properties over random shapes and extreme values."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantrtl.model.numbers.families import format_from_dict, parse_format
from quantrtl.model.numbers.formats import (FLUSH_TO_ZERO, ActivationFormat, BinaryFormat, FixedFormat, FormatError,
                                            ShiftFormat, TernaryFormat)
from tests.factories import PLAIN_NAMES

ALL = PLAIN_NAMES  # every name of every format without fitted parameters
HAS_ZERO = [n for n in ALL if 0 in parse_format(n).decode(parse_format(n).code_space())]

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False)
weights = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5), elements=finite)
extreme = st.sampled_from([0.0, 1e-300, -1e-300, 5e-324, 2.0 ** -960, 2.2250738585072014e-308, 1e-30, 1.0, -1.0, 1e30, -1e30, 1e300, -1e300])
extreme_weights = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4),
                             elements=extreme)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=40, deadline=None)
@given(w=weights)
def test_encode_contract(name, w):
    fmt = parse_format(name)
    q = fmt.encode(w)
    assert q.codes.shape == w.shape and q.values.shape == w.shape
    assert np.isin(q.codes, fmt.code_space()).all()
    assert ((q.codes >= 0) & (q.codes < 1 << fmt.bits)).all()
    lo, hi = fmt.value_range()
    assert ((q.values >= lo) & (q.values <= hi)).all()
    assert np.array_equal(fmt.decode(q.codes), q.values)
    assert q.scale.shape == (w.shape[0],) and (q.scale > 0).all() and np.isfinite(q.scale).all()
    assert q.zero_point == 0 and q.format == fmt


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=40, deadline=None)
@given(w=weights)
def test_round_trip_is_idempotent(name, w):
    """Encoding the dequantized weights again gives the same codes."""
    fmt = parse_format(name)
    q = fmt.encode(w)
    q2 = fmt.encode(q.dequantize())
    assert np.array_equal(q2.codes, q.codes)
    np.testing.assert_allclose(q2.scale, q.scale, rtol=1e-12)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=30, deadline=None)
@given(w=extreme_weights)
def test_extreme_values(name, w):
    fmt = parse_format(name)
    q = fmt.encode(w)
    assert np.isin(q.codes, fmt.code_space()).all()
    assert np.isfinite(q.dequantize()).all()
    # the largest magnitude of each channel keeps its sign (it is never flushed to zero)
    wc = w.reshape(len(w), -1)
    i = np.abs(wc).argmax(axis=1)
    big = wc[np.arange(len(wc)), i]
    vals = q.values.reshape(len(w), -1)[np.arange(len(wc)), i]
    nz = np.abs(big) >= FLUSH_TO_ZERO  # smaller magnitudes are flushed to zero by design
    assert (np.sign(vals[nz]) == np.sign(big[nz])).all()


@pytest.mark.parametrize("name", HAS_ZERO)
def test_zero_is_exact(name):
    fmt = parse_format(name)
    w = np.zeros((3, 2, 3, 3))
    w[1] = np.linspace(-1, 1, 18).reshape(2, 3, 3)  # one live channel
    q = fmt.encode(w)
    assert (q.values[0] == 0).all() and (q.values[2] == 0).all()
    assert (q.dequantize()[[0, 2]] == 0).all()
    assert q.scale[0] == q.scale[2] == q.scale[1]  # dead channels borrow the live scale
    assert fmt.decode(np.zeros(1, dtype=np.int64))[0] == 0


def test_binary_zero_channel_is_nearly_zero():
    w = np.zeros((2, 4))
    w[0] = [0.5, -0.5, 0.25, -0.25]
    q = BinaryFormat().encode(w)
    assert np.abs(q.dequantize()[1]).max() <= q.scale[0] * 2.0 ** -16


@pytest.mark.parametrize("bits", range(2, 17))
def test_fixed_channel_max_maps_to_qmax(bits):
    fmt = FixedFormat(bits=bits)
    w = np.array([[0.3, -1.7, 0.1], [2.0, 0.0, -0.5]])
    q = fmt.encode(w)
    assert q.values[0, 1] == -fmt.qmax and q.values[1, 0] == fmt.qmax
    assert np.abs(q.dequantize() - w).max() <= q.scale.max() / 2 + 1e-15


@pytest.mark.parametrize("bits", range(3, 7))
def test_shift_matches_inq_rule(bits):
    """INQ: |w| in [3/4·2^e, 3/2·2^e) → 2^e, below 2^e_min / 2 → 0, e_max = floor(log2(4/3·max|w|))."""
    fmt = ShiftFormat(bits=bits)
    rng = np.random.default_rng(bits)
    w = rng.normal(size=(4, 50)) * rng.uniform(0.01, 10, size=(4, 1))
    q = fmt.encode(w)
    for c in range(4):
        e_max = int(np.floor(np.log2(4 / 3 * np.abs(w[c]).max())))
        e_min = e_max - (2 ** (bits - 1) - 2)
        assert q.scale[c] == 2.0 ** e_min
        for wi, v in zip(w[c], q.values[c]):
            a = abs(wi)
            if a < 2.0 ** e_min / 2:
                assert v == 0
            else:
                e = min(max(int(np.floor(np.log2(a / 0.75))), e_min), e_max)
                assert abs(v) == 2 ** (e - e_min) and np.sign(v) == np.sign(wi)


def test_ternary_is_twn():
    w = np.array([[1.0, -1.0, 0.1, -0.2, 0.0, 0.9]])
    q = TernaryFormat().encode(w)
    delta = 0.7 * np.abs(w).mean()
    assert list(q.values[0]) == [1, -1, 0, 0, 0, 1]
    assert q.scale[0] == pytest.approx(np.abs(w[np.abs(w) > delta]).mean())


@pytest.mark.parametrize("name", ALL)
def test_code_space_and_illegal_codes(name):
    fmt = parse_format(name)
    cs = fmt.code_space()
    v = fmt.decode(cs)
    assert len(np.unique(v)) == len(cs), "every legal code decodes to a distinct value"
    illegal = np.setdiff1d(np.arange(1 << fmt.bits), cs)
    for c in list(illegal[:3]) + [-1, 1 << fmt.bits]:
        with pytest.raises(FormatError, match="invalid code"):
            fmt.decode(np.array([0, c]) if 0 in cs else np.array([c]))
    assert fmt.value_range() == (int(v.min()), int(v.max()))
    assert format_from_dict(fmt.to_dict()) == fmt


def test_code_space_sizes():
    assert len(parse_format("fixed8").code_space()) == 255
    assert len(parse_format("shift4").code_space()) == 15
    assert parse_format("shift4").value_range() == (-64, 64)
    assert list(parse_format("ternary").code_space()) == [0, 1, 3]
    assert list(parse_format("binary").code_space()) == [0, 1]


@pytest.mark.parametrize("bad", [[np.nan, 1.0], [1.0, np.inf], [-np.inf, 0.0]])
@pytest.mark.parametrize("name", ["fixed8", "shift4", "ternary", "binary"])
def test_non_finite_weights_rejected(name, bad):
    with pytest.raises(FormatError, match="non-finite"):
        parse_format(name).encode(np.array([bad]))


@pytest.mark.parametrize("name,match", [
    ("shift7", r"bit width 7 out of range for shiftN \(allowed 3..6\)"),
    ("shift2", r"allowed 3..6"),
    ("fixed1", r"allowed 2..16"),
    ("fixed17", r"allowed 2..16"),
    ("float16", r"unknown quantizer 'float16'; known: fixedN"),
    ("ternary2", r"unknown quantizer"),
    ("", r"unknown quantizer"),
])
def test_parse_errors(name, match):
    with pytest.raises(FormatError, match=match):
        parse_format(name)


def test_format_from_dict_rejects_inconsistent():
    with pytest.raises(FormatError, match="inconsistent"):
        format_from_dict({"name": "shift4", "family": "shift", "bits": 5})


@settings(max_examples=50, deadline=None)
@given(lo=st.floats(-100, 0), hi=st.floats(0, 100), x=hnp.arrays(np.float64, 20, elements=st.floats(-200, 200)))
def test_activation_format(lo, hi, x):
    a = ActivationFormat.from_range(lo, hi)
    q = a.quantize(x)
    assert ((q >= 0) & (q <= 255)).all()
    assert a.quantize([0.0])[0] == a.zero_point  # real zero is exact
    inside = (x >= lo) & (x <= hi)
    assert (np.abs(a.dequantize(q) - x)[inside] <= a.scale / 2 + 1e-9).all()


@pytest.mark.parametrize("kw,match", [(dict(scale=0.0), "positive"), (dict(scale=float("nan")), "positive"),
                                      (dict(scale=1.0, zero_point=256), "zero point"), (dict(scale=1.0, bits=0), "bits")])
def test_activation_format_rejects(kw, match):
    with pytest.raises(FormatError, match=match):
        ActivationFormat(**kw)


@pytest.mark.parametrize("lo,hi", [(-5e-324, 0.0), (0.0, 5e-324), (-1e-300, 1e-300), (0.0, 0.0)])
def test_activation_format_degenerate_ranges(lo, hi):
    a = ActivationFormat.from_range(lo, hi)
    assert a.scale > 0 and np.isfinite(a.scale) and a.quantize([0.0])[0] == a.zero_point
