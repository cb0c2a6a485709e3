"""Relative-index encoding and Huffman coding against NumPy references and properties."""
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantrtl.model.numbers import huffman
from quantrtl.model.numbers.families import parse_format
from quantrtl.model.numbers.sparse import (COUNT_WIDTH_BITS, decode_row, deserialize, encode_matrix, encode_row,
                                           serialize, stream_bits)

FORMATS = ["fixed8", "shift3", "ternary", "binary"]


def random_codes(fmt, rng, n, density):
    cs = fmt.code_space()
    values = fmt.decode(cs)
    nonzero, zero = cs[values != 0], cs[values == 0]
    keep = rng.random(n) < density
    out = rng.choice(nonzero, n)
    if len(zero):
        out[~keep] = zero[0]
    return out


@pytest.mark.parametrize("name", FORMATS)
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200), density=st.floats(0.0, 1.0),
       index_bits=st.integers(1, 6))
def test_round_trip_and_bounds(name, seed, n, density, index_bits):
    fmt = parse_format(name)
    codes = random_codes(fmt, np.random.default_rng(seed), n, density)
    row = encode_row(codes, fmt, index_bits)
    assert np.array_equal(decode_row(row, fmt), codes)
    assert (row.runs >= 0).all() and (row.runs < 2**index_bits).all()
    assert (~row.filler).sum() == np.count_nonzero(fmt.decode(codes))  # one entry per nonzero weight


@pytest.mark.parametrize("name", ["fixed8", "shift3", "ternary"])
def test_special_rows(name):
    fmt = parse_format(name)
    zero = fmt.code_space()[fmt.decode(fmt.code_space()) == 0][0]
    nz = fmt.code_space()[fmt.decode(fmt.code_space()) != 0][0]
    all_zero = np.full(40, zero)
    row = encode_row(all_zero, fmt, 4)
    assert row.entries == 0 and np.array_equal(decode_row(row, fmt), all_zero)
    full = np.full(40, nz)
    row = encode_row(full, fmt, 4)
    assert row.entries == 40 and (row.runs == 0).all() and not row.filler.any()
    last = np.full(40, zero)
    last[-1] = nz  # a single nonzero at the end: a 39-zero gap with 3-bit indices needs fillers
    row = encode_row(last, fmt, 3)
    assert row.filler.sum() == 39 // 8 and np.array_equal(decode_row(row, fmt), last)
    assert list(row.runs) == [7] * 4 + [39 - 32]


def test_bit_accounting():
    fmt = parse_format("shift3")
    codes = np.array([[0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5], [1] * 20])
    rows = encode_matrix(codes, fmt, index_bits=4)
    bits = stream_bits(rows, fmt)
    assert bits["entries"] == 3 + 20 and bits["fillers"] == 1
    assert bits["counts"] == 5 + 2 * 5  # the counts' width (5 bits), then 3 and 20 in 5 bits each
    assert bits["total"] == bits["counts"] + 23 * (4 + 3) and bits["flags"] == 0
    assert len(serialize(rows, fmt)) == bits["total"]
    b = stream_bits(encode_matrix(np.array([[0, 1, 1]]), parse_format("binary"), 2), parse_format("binary"))
    assert b["flags"] == b["entries"] == 3  # binary has no zero code: fillers need a flag bit


def test_rows_end_where_their_counts_say():
    """Without per-row counts the two layers below store the same entries (0,x) (1,y): the
    stream must tell them apart, and each must decode to itself."""
    fmt = parse_format("shift3")
    x, y = 3, 5
    a = np.array([[x, 0, 0, 0], [0, y, 0, 0]])
    b = np.array([[x, 0, y, 0], [0, 0, 0, 0]])
    ra, rb = encode_matrix(a, fmt, 2), encode_matrix(b, fmt, 2)
    entries = [[(int(r), int(c)) for row in rows for r, c in zip(row.runs, row.codes)] for rows in (ra, rb)]
    assert entries[0] == entries[1] == [(0, x), (1, y)]  # the ambiguity
    sa, sb = serialize(ra, fmt), serialize(rb, fmt)
    assert not np.array_equal(sa, sb)
    assert np.array_equal(deserialize(sa, fmt, 2, 4, 2), a)
    assert np.array_equal(deserialize(sb, fmt, 2, 4, 2), b)
    with pytest.raises(ValueError, match="ends inside a field"):
        deserialize(sa[:-1], fmt, 2, 4, 2)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(["shift3", "ternary", "binary", "fixed8", "fixed4"]),
       rows=st.integers(1, 6), length=st.integers(1, 70), index_bits=st.integers(1, 5))
def test_stream_round_trip(data, name, rows, length, index_bits):
    """Random sparse layers (any density, any gap length) through the stored bits and back;
    the stream is exactly as long as the size accounting says."""
    fmt = parse_format(name)
    cs = fmt.code_space()
    zero = cs[fmt.decode(cs) == 0]
    pick = st.sampled_from(cs.tolist())
    codes = np.array(data.draw(st.lists(pick, min_size=rows * length, max_size=rows * length))).reshape(rows, length)
    if len(zero):  # a pruned layer: many zeros
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=rows * length, max_size=rows * length)))
        codes = np.where(mask.reshape(rows, length), codes, zero[0])
    enc = encode_matrix(codes, fmt, index_bits)
    bits = serialize(enc, fmt)
    assert len(bits) == stream_bits(enc, fmt)["total"] >= COUNT_WIDTH_BITS + rows
    want = np.where(fmt.decode(codes) == 0, zero[0] if len(zero) else -1, codes)  # a zero weight: the zero code
    assert np.array_equal(deserialize(bits, fmt, rows, length, index_bits), want)


@settings(max_examples=100, deadline=None)
@given(symbols=st.lists(st.integers(-5, 20), min_size=1, max_size=300))
def test_huffman_round_trip_and_optimality(symbols):
    bits, table = huffman.encode(symbols)
    assert huffman.decode(bits, table) == symbols
    codes = list(table.values())
    assert all(not b.startswith(a) for a in codes for b in codes if a != b)  # prefix-free
    n = len(symbols)
    counts = Counter(symbols)
    entropy = -sum(c / n * math.log2(c / n) for c in counts.values())
    avg = len(bits) / n
    assert avg == huffman.encoded_bits(symbols) / n
    if len(counts) > 1:
        assert entropy - 1e-9 <= avg < entropy + 1  # Shannon bounds of an optimal code
    else:
        assert avg == 1


def test_huffman_rejects_truncated_stream():
    bits, table = huffman.encode([3, 3, 3, 2, 2, 1])  # ends with the rarest symbol: a 2-bit codeword
    with pytest.raises(ValueError, match="ends inside a codeword"):
        huffman.decode(bits[:-1], table)
