"""Relative-index encoding and Huffman coding against NumPy references and properties."""
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantrtl.model.numbers import huffman
from quantrtl.model.numbers.families import parse_format
from quantrtl.model.numbers.sparse import decode_row, encode_matrix, encode_row, stream_bits

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
    assert bits["total"] == 23 * (4 + 3) and bits["flags"] == 0
    b = stream_bits(encode_matrix(np.array([[0, 1, 1]]), parse_format("binary"), 2), parse_format("binary"))
    assert b["flags"] == b["entries"] == 3  # binary has no zero code: fillers need a flag bit


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
