"""Golden model: each integer op against a direct float64 computation on integer inputs."""
from fractions import Fraction
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantrtl.model.numbers.artifact import ArtifactError, quantize_multiplier
from quantrtl.model.numbers.families import parse_format
from quantrtl.sim import golden
from tests.factories import random_network


def direct_conv(x, w, b, stride, pad, z):
    """Textbook loops in float64 (exact for these magnitudes), padding with the zero point."""
    n, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    oh, ow = (h + 2 * pad[0] - kh) // stride[0] + 1, (wd + 2 * pad[1] - kw) // stride[1] + 1
    out = np.zeros((n, cout, oh, ow))
    xf, wf = x.astype(np.float64), w.astype(np.float64)
    for i in range(n):
        for c in range(cout):
            for oy in range(oh):
                for ox in range(ow):
                    s = float(b[c])
                    for ci in range(cin):
                        for ky in range(kh):
                            for kx in range(kw):
                                iy, ix = oy * stride[0] - pad[0] + ky, ox * stride[1] - pad[1] + kx
                                v = xf[i, ci, iy, ix] if 0 <= iy < h and 0 <= ix < wd else float(z)
                                s += wf[c, ci, ky, kx] * (v - z)
                    out[i, c, oy, ox] = s
    return out


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_conv2d_matches_direct(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n, cin, cout = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    ph, pw = data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))
    h = data.draw(st.integers(max(1, kh - 2 * ph), 7))
    wd = data.draw(st.integers(max(1, kw - 2 * pw), 7))
    wmax = data.draw(st.sampled_from([1, 127, 2**15, 2**30]))
    z = data.draw(st.integers(0, 255))
    x = rng.integers(0, 256, size=(n, cin, h, wd))
    if data.draw(st.booleans()):  # extreme inputs
        x[:] = data.draw(st.sampled_from([0, 255]))
    w = rng.integers(-wmax, wmax + 1, size=(cout, cin, kh, kw))
    b = rng.integers(-2**20, 2**20, size=cout)
    got = golden.conv2d_acc(x, w, b, (sh, sw), (ph, pw), z)
    assert got.dtype == np.int64
    assert np.array_equal(got, direct_conv(x, w, b, (sh, sw), (ph, pw), z))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_linear_matches_direct(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n, fin, fout = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 10))
    z = data.draw(st.integers(0, 255))
    x = rng.integers(0, 256, size=(n, fin))
    w = rng.integers(-2**20, 2**20, size=(fout, fin))
    b = rng.integers(-2**30, 2**30, size=fout)
    want = np.array([[sum(float(w[o, i]) * (float(x[k, i]) - z) for i in range(fin)) + float(b[o])
                      for o in range(fout)] for k in range(n)])
    assert np.array_equal(golden.linear_acc(x, w, b, z), want)


def test_linear_flattens_chw():
    x = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2) % 256
    w = np.arange(12 * 2).reshape(2, 12) - 7
    assert np.array_equal(golden.linear_acc(x, w, [0, 0], 0), x.reshape(2, -1) @ w.T)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_maxpool_matches_direct(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    k = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    s = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    p = (data.draw(st.integers(0, k[0] // 2)), data.draw(st.integers(0, k[1] // 2)))
    h, w = data.draw(st.integers(k[0], 7)), data.draw(st.integers(k[1], 7))
    x = rng.integers(0, 256, size=(2, 3, h, w))
    got = golden.maxpool(x, k, s, p)
    oh, ow = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    want = np.full((2, 3, oh, ow), -1.0)
    for oy in range(oh):
        for ox in range(ow):
            for ky in range(k[0]):
                for kx in range(k[1]):
                    iy, ix = oy * s[0] - p[0] + ky, ox * s[1] - p[1] + kx
                    if 0 <= iy < h and 0 <= ix < w:  # padding never wins: every window has a real element
                        want[:, :, oy, ox] = np.maximum(want[:, :, oy, ox], x[:, :, iy, ix])
    assert np.array_equal(got, want)


def ref_requant(acc, m0, n, z, lo, hi):
    """floor(acc·M0/2^n + 1/2) with exact rationals: round half toward +inf."""
    v = math.floor(Fraction(int(acc) * int(m0), 2 ** int(n)) + Fraction(1, 2)) + z
    return min(max(v, lo), hi)


@settings(max_examples=200, deadline=None)
@given(acc=st.integers(-2**62, 2**62 - 1), m0=st.integers(2**30, 2**31 - 1), n=st.integers(1, 127),
       z=st.integers(0, 255), relu=st.booleans())
def test_requantize_matches_rational_reference(acc, m0, n, z, relu):
    lo = z if relu else 0
    got = golden.requantize(np.array([[acc]]), [m0], [n], z, lo, 255)
    assert got[0, 0] == ref_requant(acc, m0, n, z, lo, 255)


def test_requantize_rounds_half_up():
    # M = 1/2 exactly: M0 = 2**30, n = 31
    acc = np.array([[-3, -2, -1, 0, 1, 2, 3]]).T.reshape(1, 7)
    got = golden.requantize(acc, [2**30] * 7, [31] * 7, 100, 0, 255)
    assert list(got[0] - 100) == [-1, -1, 0, 0, 1, 1, 2]  # -1.5→-1, -0.5→0, 0.5→1, 1.5→2


@settings(max_examples=200, deadline=None)
@given(m=st.floats(2.0**-90, 2.0**29, allow_nan=False))
def test_quantize_multiplier(m):
    m0, n = quantize_multiplier(m)
    assert 2**30 <= m0 < 2**31 and 1 <= n <= 127
    assert abs(Fraction(m0, 2**n) - Fraction(m)) <= Fraction(m) * Fraction(1, 2**31)


@pytest.mark.parametrize("m", [0.0, -1.0, float("nan"), float("inf"), 2.0**31, 2.0**-100])
def test_quantize_multiplier_rejects(m):
    with pytest.raises(ArtifactError, match="multiplier"):
        quantize_multiplier(m)


@pytest.mark.parametrize("name", ["fixed8", "shift4", "ternary", "binary", "shift6", "fixed16"])
def test_network_run_matches_layer_by_layer_reference(name):
    net = random_network(parse_format(name), seed=3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4,) + net.input_shape)
    res = golden.run(net, x)
    conv, pool, fc = net.layers
    acc = direct_conv(x, conv.values, conv.bias, conv.stride, conv.padding, conv.input.zero_point)
    y = np.array([[[[ref_requant(a, conv.m0[c], conv.shift[c], conv.output.zero_point, conv.out_min, 255)
                     for a in row] for row in acc[i, c]] for c in range(acc.shape[1])] for i in range(len(x))])
    assert np.array_equal(res.outputs["conv"], y)
    assert np.array_equal(res.outputs["pool"], golden.maxpool(y, (2, 2), (2, 2), (0, 0)))
    acc = golden.linear_acc(res.outputs["pool"], fc.values, fc.bias, fc.input.zero_point)
    want = [[ref_requant(acc[i, o], fc.m0[o], fc.shift[o], fc.output.zero_point, 0, 255) for o in range(acc.shape[1])]
            for i in range(len(x))]
    assert np.array_equal(res.logits, want)
    assert np.array_equal(res.predicted, np.asarray(want).argmax(axis=1))
    # a single image gives the same as its batch row
    assert np.array_equal(golden.run(net, x[1]).logits[0], res.logits[1])


@pytest.mark.parametrize("name", ["fixed8", "shift6", "binary"])
def test_accumulator_stays_within_derived_width(name):
    """Extreme inputs (all 0, all 255, sign-matched to each channel) never exceed accumulator_bits."""
    net = random_network(parse_format(name), seed=5)
    conv = net.layers[0]
    xs = [np.zeros(net.input_shape, int), np.full(net.input_shape, 255)]
    for c in range(conv.values.shape[0]):
        per_channel = np.where(conv.values[c].sum(axis=(1, 2)) > 0, 255, 0)
        xs.append(np.broadcast_to(per_channel[:, None, None], net.input_shape))
    accs = golden.run(net, np.stack(xs)).accumulators
    for layer in (l for l in net.layers if l.has_weights):
        a = accs[layer.name]
        assert -(1 << (layer.accumulator_bits - 1)) <= a.min() and a.max() < 1 << (layer.accumulator_bits - 1)
        assert np.abs(a).max() <= layer.accumulator_bound()


@pytest.mark.parametrize("name", ["fixed8", "shift6", "binary", "ternary", "fixed16"])
def test_worst_case_linear_accumulators_fit_the_derived_width(name):
    """For each output of the linear layer, the inputs that drive its accumulator furthest up
    and furthest down (255 where the weight pushes that way, else 0), summed with Python
    integers here: the golden model agrees, and the value fits ``accumulator_bits``."""
    net = random_network(parse_format(name), seed=7)
    fc = net.layers[2]
    z, bits = int(fc.input.zero_point), fc.accumulator_bits
    w = fc.values.reshape(fc.values.shape[0], -1)
    for c in range(w.shape[0]):
        for direction in (1, -1):
            x = [255 if direction * int(v) > 0 else 0 for v in w[c]]
            want = sum(int(v) * (xi - z) for v, xi in zip(w[c], x)) + int(fc.bias[c])
            got = golden.linear_acc(np.array([x]), fc.values, fc.bias, z)[0, c]
            assert int(got) == want
            assert -(1 << (bits - 1)) <= want < 1 << (bits - 1), (c, direction, want, bits)


def test_run_rejects_bad_inputs():
    net = random_network(parse_format("fixed8"))
    with pytest.raises(ArtifactError, match="input shape"):
        golden.run(net, np.zeros((1, 2, 5, 5), int))
    with pytest.raises(ArtifactError, match=r"must lie in \[0, 255\]"):
        golden.run(net, np.full(net.input_shape, 256))
    with pytest.raises(ArtifactError, match="integers"):
        golden.run(net, np.zeros(net.input_shape))
