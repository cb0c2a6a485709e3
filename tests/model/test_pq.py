"""The ``pqN`` format (sub-vectors, codebooks, honest size, faults) and its training's
response error correction."""
from dataclasses import replace

import numpy as np
import pytest

from quantrtl.model.numbers.families import format_from_dict, parse_format
from quantrtl.model.numbers.formats import FormatError
from quantrtl.model.numbers.pq import PQFormat, kmeans, sub_length


def test_sub_vector_length_is_the_largest_divisor_not_above_block():
    assert [sub_length(c, 4) for c in (1, 2, 3, 4, 6, 8, 9, 16)] == [1, 2, 3, 4, 3, 4, 3, 4]
    q = parse_format("pq4").encode(np.random.default_rng(0).normal(size=(6, 6, 3, 3)))
    assert (q.format.sub, q.format.subspaces) == (3, 2)


def test_every_weight_of_a_sub_vector_carries_its_index_and_decodes_its_codeword():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 8, 3, 3))
    q = parse_format("pq3").encode(w)
    f = q.format
    idx = f.index(q.codes)  # (cout, M, P)
    cb = f.codebook_array
    for c, m, p in [(0, 0, 0), (4, 1, 8), (2, 1, 3)]:
        ky, kx = divmod(p, 3)
        assert (q.codes[c, m * 4:(m + 1) * 4, ky, kx] == idx[c, m, p]).all()
        assert (q.values[c, m * 4:(m + 1) * 4, ky, kx] == cb[m, idx[c, m, p]]).all()
    assert format_from_dict(f.to_dict()) == f


def test_a_classifier_after_a_map_splits_the_map_channels():
    """fc reading a (16, 4, 4) map: 4 subspaces of 4 channels, codebooks shared by the 16 pixels."""
    rng = np.random.default_rng(2)
    f = parse_format("pq4").for_input((16, 4, 4))
    q = f.encode(rng.normal(size=(10, 256)))
    assert (q.format.subspaces, q.format.sub) == (4, 4)
    assert q.format.index(q.codes).shape == (10, 4, 16)
    with pytest.raises(FormatError, match=r"cut for an input \(16, 4, 4\), but the layer has 255 inputs"):
        q.format.decode(q.codes[:, :255])


def test_sub_vectors_must_share_their_index():
    q = parse_format("pq2").encode(np.random.default_rng(3).normal(size=(3, 4, 2, 2)))
    bad = q.codes.copy()
    bad[1, 2, 0, 1] = (bad[1, 2, 0, 1] + 1) % 4
    with pytest.raises(FormatError, match=r"sub-vector \(output channel 1, subspace 0, position 1\)"):
        q.format.check_layer(bad, "conv2d", None, "layer 'x': ")


def test_honest_size_counts_an_index_per_sub_vector_and_the_codebooks():
    q = parse_format("pq4").encode(np.random.default_rng(4).normal(size=(16, 8, 3, 3)))
    s = q.format.storage(q.codes)
    assert s == {"codes": 16 * 2 * 9 * 4, "params": 2 * 16 * 4 * 8}
    assert q.format.coded_streams(q.codes) <= s["codes"]


def test_a_weight_fault_changes_one_sub_vector():
    rng = np.random.default_rng(5)
    q = parse_format("pq3").encode(rng.normal(size=(4, 8, 3, 3)))
    f = q.format
    bad = f.faulty_codes(q.codes, int(np.ravel_multi_index((2, 5, 1, 0), q.codes.shape)))
    f.check_subvectors(bad)
    diff = f.index(bad) != f.index(q.codes)
    assert diff.sum() == 1 and diff[2, 1, 3]
    assert f.decode(bad)[2, 5, 1, 0] != q.values[2, 5, 1, 0]


def test_kmeans_is_deterministic_and_exact_on_few_points():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 3))
    c1, a1 = kmeans(x, 8, seed=1)
    c2, a2 = kmeans(x, 8, seed=1)
    assert np.array_equal(c1, c2) and np.array_equal(a1, a2)
    few = np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])
    c, a = kmeans(few, 4)
    assert np.array_equal(c[a], few)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="block"):
        replace(parse_format("pq4"), block=0)
    with pytest.raises(ValueError, match="codebooks must be 32 integers"):
        PQFormat(bits=2, sub=4, subspaces=2, codebooks=(0,) * 31, scale=1.0)
    with pytest.raises(ValueError, match=r"in \[-127, 127\]"):
        PQFormat(bits=1 + 1, sub=1, subspaces=1, codebooks=(0, 0, 0, 128), scale=1.0)


def test_response_correction_lowers_the_response_error():
    """Correlated inputs: least-squares codewords and response-driven assignments beat
    k-means on the weights alone, measured on the response ``||(W - Ŵ)X||``."""
    torch = pytest.importorskip("torch")
    from quantrtl.model.training.pq import correct, response_error, response_gram

    rng = np.random.default_rng(7)
    w = rng.normal(size=(12, 8, 3, 3))
    mix = rng.normal(size=(8, 8))
    x = torch.tensor(np.einsum("ij,njhw->nihw", mix, rng.normal(size=(64, 8, 6, 6))))
    conv = torch.nn.Conv2d(8, 12, 3, padding=1)
    gram = response_gram(x, conv)
    fitted = parse_format("pq2").fit(w)
    fmt, index, before, after = correct(w, fitted, gram)
    assert after < 0.9 * before
    wq = fmt.scale * fmt.decode(fmt.codes_of(index, w.shape))
    assert response_error(w, wq, gram) == pytest.approx(after)


def test_response_correction_of_a_grouped_conv_uses_each_group_inputs():
    """Depthwise: each output channel's response is measured on its own input channel."""
    torch = pytest.importorskip("torch")
    from quantrtl.model.training.pq import correct, response_error, response_gram

    rng = np.random.default_rng(8)
    w = rng.normal(size=(8, 1, 3, 3))
    x = torch.tensor(rng.normal(size=(16, 8, 5, 5)) * np.arange(1, 9)[None, :, None, None])
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    gram = response_gram(x, conv)
    assert gram.shape == (8, 9, 9)
    fmt, index, before, after = correct(w, parse_format("pq2").fit(w), gram)
    assert after <= before
    wq = fmt.scale * fmt.decode(fmt.codes_of(index, w.shape))
    assert response_error(w, wq, gram) == pytest.approx(after)
