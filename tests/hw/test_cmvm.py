"""Constant matrix-vector multiplication (``hw/cmvm.py``) and the whole hard-wired layer
built from it (``UnrolledLayer``): canonical signed digits against a brute-force minimum,
the adder graph and the simulated hardware against NumPy's integer product ``W @ x``."""
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantrtl.hw.cmvm import cmvm, csd_digits
from quantrtl.hw.unrolled import UnrolledLayer
from tests.factories import PE_FAMILIES, format_for_test
from tests.hw.test_unrolled import simulate


@lru_cache(maxsize=None)
def fewest_signed_digits(w: int) -> int:
    """The fewest nonzero digits of any representation ``sum d_k 2**k``, d_k in {-1, 0, 1}:
    an odd ``w`` ends in a digit +1 or -1, the rest is (w -/+ 1) / 2."""
    if w == 0:
        return 0
    if abs(w) == 1:
        return 1
    if w % 2 == 0:
        return fewest_signed_digits(w // 2)
    return 1 + min(fewest_signed_digits((w - 1) // 2), fewest_signed_digits((w + 1) // 2))


@given(st.integers(-(1 << 40), 1 << 40))
def test_csd_digits_are_a_minimal_non_adjacent_form(w):
    digits = csd_digits(w)
    assert sum(d << k for k, d in digits) == w
    assert all(d in (-1, 1) for _, d in digits)
    ks = [k for k, _ in digits]
    assert ks == sorted(ks) and all(b - a >= 2 for a, b in zip(ks, ks[1:]))  # non-adjacent
    if abs(w) < 1 << 16:
        assert len(digits) == fewest_signed_digits(w)


def test_csd_of_known_constants():
    assert csd_digits(0) == []
    assert csd_digits(7) == [(0, -1), (3, 1)]  # 8 - 1
    assert csd_digits(-127) == [(0, 1), (7, -1)]  # -128 + 1
    assert csd_digits(45) == [(0, 1), (2, -1), (4, -1), (6, 1)]  # 64 - 16 - 4 + 1


def _extremes(n: int, bits: int, rng) -> np.ndarray:
    amax = (1 << bits) - 1
    return np.vstack([np.zeros(n, np.int64), np.full(n, amax), rng.integers(0, amax + 1, size=(6, n))])


@settings(max_examples=60, deadline=None)
@given(cout=st.integers(1, 6), n=st.integers(1, 12), wbits=st.integers(1, 12), in_bits=st.integers(1, 10),
       density=st.floats(0.0, 1.0), max_depth=st.one_of(st.none(), st.integers(1, 4)), seed=st.integers(0, 2**31))
def test_adder_graph_computes_the_matrix_product(cout, n, wbits, in_bits, density, max_depth, seed):
    rng = np.random.default_rng(seed)
    lim = (1 << (wbits - 1)) if wbits > 1 else 1
    w = rng.integers(-lim, lim + 1, size=(cout, n)) * (rng.random((cout, n)) < density)
    if rng.random() < 0.3:  # the extreme weights of the width
        w[0, :] = -lim
    g = cmvm(w, in_bits, max_depth=max_depth)
    x = _extremes(n, in_bits, rng)
    assert np.array_equal(g.evaluate(x).astype(object), (x.astype(object) @ w.T.astype(object)))
    digits = sum(len(csd_digits(v)) for v in w.ravel())
    rows = sum(1 for r in w if r.any())
    assert g.adders <= digits - rows + sum(1 for r in w if r.any() and (r <= 0).all())  # never worse than no sharing
    for node in g.nodes:  # every node's range is exact-or-wider than its values, and bounded
        if not node.is_input:
            assert node.lo <= node.hi
    if max_depth is not None:  # a subexpression shared by outputs stays within the bound
        assert g.stats["subexpressions"] == 0 or all(
            g.nodes[i].depth <= max_depth for i in g.stats["shared_nodes"])


def test_sharing_across_outputs_saves_adders():
    """Two outputs reading the same pair of terms: one adder serves both."""
    w = np.array([[3, 5, 0, 1], [3, 5, 7, 0], [3, 5, 0, 0]])
    g = cmvm(w, 8)
    x = _extremes(4, 8, np.random.default_rng(0))
    assert np.array_equal(g.evaluate(x).astype(np.int64), x @ w.T)
    no_sharing = sum(len(csd_digits(v)) for v in w.ravel()) - len(w)
    assert g.shared >= 1 and g.adders < no_sharing


def test_an_all_zero_row_and_an_all_negative_row():
    w = np.array([[0, 0, 0], [-1, -2, -4], [1, 0, 0]])
    g = cmvm(w, 4)
    assert g.outputs[0] is None
    x = _extremes(3, 4, np.random.default_rng(1))
    assert np.array_equal(g.evaluate(x).astype(np.int64), x @ w.T)


def test_the_matrix_is_checked():
    with pytest.raises(ValueError, match="integers"):
        cmvm(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="matrix"):
        cmvm(np.array([1, 2]))


@pytest.mark.parametrize("name", list(dict.fromkeys([f.examples[0] for f in PE_FAMILIES] + ["fixed8", "shift3", "ternary"])))
@pytest.mark.parametrize("register_inputs", [False, True])
def test_unrolled_layer_is_the_integer_product(name, register_inputs):
    """A whole layer (every output channel, subexpressions shared) simulated in Amaranth
    against NumPy's product of the format's decoded weights, extremes included."""
    fmt = format_for_test(name)
    rng = np.random.default_rng(7)
    w = rng.normal(0, 0.2, size=(5, 3, 3, 3)) * (rng.random((5, 3, 3, 3)) < 0.6)
    q = fmt.encode(w)
    layer = UnrolledLayer.from_codes(q.format, q.codes, register_inputs=register_inputs)
    wv = np.asarray(q.values).reshape(5, -1)
    xs = list(_extremes(27, layer.act_bits, rng))
    got = simulate(layer, xs, outputs=5)
    assert got == [[int(v) for v in wv.astype(np.int64) @ x] for x in xs]
    assert layer.adders == layer.graph.adders and layer.depth >= 1
