"""The seed methods' formats and training procedures: focused, k-means, ABC-Net, LQ-Net,
unified (ADMM), XNOR activations, pruning plans and the honest (Huffman) size."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantrtl.model.numbers.bases import ABCNetFormat, LQNetFormat
from quantrtl.model.numbers.codebook import KMeansFormat, kmeans_linear
from quantrtl.model.numbers.focused import FocusedFormat
from quantrtl.model.numbers.formats import ActivationFormat, FormatError, ShiftFormat
from quantrtl.model.numbers.families import format_from_dict, parse_format
from quantrtl.model.numbers.unified import UnifiedFormat, block_magnitudes, fanin_matrix, project

from tests.factories import FITTED_NAMES, METHOD_QUANTIZERS

METHODS = FITTED_NAMES  # every example name of the families that fit per-layer parameters

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False)
weights = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5), elements=finite)


def sparse_bimodal(seed=0, shape=(8, 4, 3, 3), density=0.3):
    """Pruned-looking weights: a positive and a negative mode, most weights zero."""
    rng = np.random.default_rng(seed)
    w = np.where(rng.random(shape) < 0.5, rng.normal(0.3, 0.05, shape), rng.normal(-0.25, 0.05, shape))
    return np.where(rng.random(shape) < density, w, 0.0)


@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=25, deadline=None)
@given(w=weights)
def test_fitted_contract(name, w):
    """Fit + encode: legal codes, values = decode, terms·coefficients = values, the artifact
    entry round-trips, and re-encoding the dequantized weights keeps the values."""
    spec = parse_format(name)
    assert not spec.fitted
    q = spec.encode(w)
    f = q.format
    assert f.fitted and f.name in (spec.name, f"shift{spec.bits}")
    assert np.isin(q.codes, f.code_space()).all()
    assert np.array_equal(f.decode(q.codes), q.values)
    t = f.term_values(q.codes)
    assert np.array_equal(sum(int(c) * t[k] for k, c in enumerate(f.coefficients)), q.values)
    assert q.scale.shape == (w.shape[0],) and (q.scale > 0).all() and np.isfinite(q.dequantize()).all()
    assert format_from_dict(f.to_dict()) == f
    if not isinstance(f, ABCNetFormat):  # ABC-Net's codes come from its shifted-sign rule
        again = f.encode(q.dequantize()).values
        # focused: components are split by the weight's sign, so a value whose sign
        # differs from its weight's re-encodes in the other component
        same = (np.sign(q.values) == np.sign(w)) | (q.values == 0) if isinstance(f, FocusedFormat) else True
        assert np.array_equal(np.where(same, again, q.values), q.values)


@pytest.mark.parametrize("name", ["focused5", "kmeans4"])
def test_pruned_weights_stay_zero(name):
    w = sparse_bimodal()
    q = parse_format(name).encode(w)
    assert (q.values[w == 0] == 0).all()


def test_unified_pruned_blocks_stay_zero():
    """Pruning is per block: an all-zero block stays zero, a kept block is unified."""
    w = project(sparse_bimodal(density=0.6), 4, 0.5)
    q = parse_format("unified").encode(w)
    assert ((block_magnitudes(w, 4) == 0) == (block_magnitudes(q.values, 4) == 0)).all()


def test_unfitted_format_cannot_decode():
    with pytest.raises(FormatError, match="no fitted parameters"):
        parse_format("kmeans4").decode(np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("entry,match", [
    ({"name": "kmeans4", "family": "kmeans", "bits": 4, "codebook": [1] * 16, "scale": 0.1}, "entry 0"),
    ({"name": "kmeans4", "family": "kmeans", "bits": 4, "codebook": [0] * 15, "scale": 0.1}, "16 integers"),
    ({"name": "kmeans4", "family": "kmeans", "bits": 4, "codebook": [0] * 16}, "lacks its parameter 'scale'"),
    ({"name": "abcnet3", "family": "abcnet", "bits": 3, "alphas": [1, 2, 300], "scale": 0.1}, r"\[-127, 127\]"),
    ({"name": "focused5", "family": "focused", "bits": 5, "mu_pos": 1.5, "mu_neg": -1, "e_min": -3}, "mu_pos"),
    ({"name": "unified", "family": "unified", "bits": 8, "block": 0, "source": None, "scale": 0.1}, "block size"),
    ({"name": "unified", "family": "unified", "bits": 8, "block": 4, "source": None, "scale": -1.0}, "scale"),
])
def test_bad_parameters_are_named(entry, match):
    with pytest.raises(FormatError, match=match):
        format_from_dict(entry)


# ---- Deep Compression ---------------------------------------------------------------

def test_kmeans_linear_initialisation_and_convergence():
    x = np.concatenate([np.full(5, -1.0), np.full(7, 0.5), np.full(3, 2.0)])
    c0, _ = kmeans_linear(x, 3, iterations=0)
    np.testing.assert_allclose(c0, [-1.0, 0.5, 2.0])  # evenly spaced between min and max
    c, assign = kmeans_linear(np.random.default_rng(0).permutation(x), 3)
    np.testing.assert_allclose(np.sort(c), [-1.0, 0.5, 2.0])
    assert np.bincount(assign).tolist() in ([5, 7, 3],) or sorted(np.bincount(assign)) == [3, 5, 7]


@pytest.mark.parametrize("bits", [2, 3, 4, 6])
def test_kmeans_codebook_size(bits):
    w = np.random.default_rng(bits).normal(size=(6, 50))
    f = parse_format(f"kmeans{bits}").encode(w).format
    assert len(f.codebook) == 2 ** bits and f.codebook[0] == 0
    assert len(set(f.encode(w).codes.ravel())) <= 2 ** bits - 1  # nonzero weights never use code 0
    assert f.storage(np.zeros((6, 50), int))["params"] == 2 ** bits * 8


def test_shared_weights_gradient_is_the_sum_of_member_gradients():
    from quantrtl.model.training.sharing import SharedWeights

    w = torch.tensor([[0.1, 0.11, -0.5, 0.0], [0.9, -0.52, 0.12, 0.88]])
    sw = SharedWeights(w, parse_format("kmeans2"))  # 3 centroids for the nonzero weights
    out, _ = sw()
    g = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    (out * g).sum().backward()
    assign, mask = sw.assign.numpy(), sw.mask.numpy()
    want = [g.numpy()[(assign == k) & mask].sum() for k in range(3)]
    np.testing.assert_allclose(sw.centroids.grad.numpy(), want)
    assert out[0, 3] == 0  # pruned weight stays zero
    q = sw.quantized()
    np.testing.assert_allclose(q.dequantize(), out.detach().numpy(), rtol=1e-6)


# ---- focused quantization ---------------------------------------------------------

def test_focused_recentralizes_a_bimodal_pruned_layer():
    w = sparse_bimodal()
    f = parse_format("focused5").fit(w)
    assert isinstance(f, FocusedFormat)
    scale = 2.0 ** f.e_min
    assert f.mu_pos * scale == pytest.approx(w[w > 0].mean(), abs=scale)
    assert f.mu_neg * scale == pytest.approx(w[w < 0].mean(), abs=scale)
    err = lambda fmt: ((fmt.encode(w).dequantize() - w) ** 2).sum()
    assert err(f) < err(ShiftFormat(bits=5))


def test_focused_falls_back_to_plain_shift_when_that_is_better():
    w = np.array([[1.0, -0.5, 0.25, -0.125, 0.0625, 2.0 ** -5]])  # exact powers of two
    f = parse_format("focused5").fit(w)
    assert isinstance(f, ShiftFormat) and f.bits == 5
    np.testing.assert_array_equal(f.encode(w).dequantize(), w)


def test_focused_code_layout():
    f = FocusedFormat(bits=5, mu_pos=20, mu_neg=-24, e_min=-6)
    # k (3 bits) | s | z: code 0 pruned; (s=1, k=0) is the mean itself
    assert f.decode(np.array([0, 0b01000, 0b11000, 0b00001, 0b01011, 0b10011]).astype(np.int64)).tolist() == \
        [0, 20, -24, 21, 20 - 4, -24 + 4]


# ---- ABC-Net / LQ-Net -------------------------------------------------------------

def test_abcnet_bases_follow_the_paper():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 30))
    fmt = parse_format("abcnet3")
    b = fmt.basis_signs(w)
    u = np.array([-1.0, 0.0, 1.0])
    assert np.array_equal(b, np.where(w[..., None] - w.mean() + u * w.std() >= 0, 1, -1))
    q = fmt.encode(w)
    alphas = np.linalg.lstsq(b.reshape(-1, 3).astype(float), w.ravel(), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(q.format.alphas) * q.format.scale, alphas, atol=q.format.scale / 2 + 1e-12)


def test_lqnet_alternating_least_squares_beats_its_start():
    w = np.random.default_rng(2).normal(size=(8, 40))
    f = parse_format("lqnet2").encode(w).format
    err = ((f.encode(w).dequantize() - w) ** 2).mean()
    a = np.abs(w).mean()
    start = LQNetFormat(bits=2, alphas=(64, 127), scale=a / 127)  # the uniform initial basis
    assert err < ((start.encode(w).dequantize() - w) ** 2).mean()


# ---- unified ------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(w=hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 6), st.just(3), st.just(3)), elements=finite),
       block=st.integers(1, 5), density=st.floats(0.05, 1.0))
def test_projection_unifies_every_block_and_reaches_the_density(w, block, density):
    p = project(w, block, density)
    m = fanin_matrix(p)
    k = m.shape[1]
    for start in range(0, k, block):
        mags = np.abs(m[:, start:start + block])
        assert (mags == mags[:, :1]).all(), "a block has two magnitudes"
    mags = block_magnitudes(p, block)
    assert (mags > 0).sum() <= max(1, math.ceil(density * mags.size))
    assert (np.sign(p)[p != 0] == np.where(w < 0, -1, 1)[p != 0]).all()  # signs kept


def test_unified_blocks_follow_the_stream_order_of_a_flattened_map():
    f = UnifiedFormat(block=4).for_input((4, 2, 2))
    w = np.random.default_rng(0).normal(size=(3, 16))
    q = f.encode(w)
    f2 = q.format
    f2.check_blocks(q.codes)
    with pytest.raises(FormatError, match="is not unified"):
        UnifiedFormat(block=4, scale=1.0).check_blocks(q.codes)  # the same codes in CHW blocks


def test_admm_constraints_hold_after_projection():
    from quantrtl.model.training.admm import admm_unify
    from quantrtl.model.digits import load_split
    from quantrtl.model.training.net import load_checkpoint

    train, _ = load_split()
    model = load_checkpoint()
    state, masks = admm_unify(model, train, epochs=3, block=4, density={"conv1": 1.0, "conv2": 0.5, "fc": 0.25})
    assert len(state.history) == 3
    for name, m in [("conv2", model.conv2), ("fc", model.fc)]:
        w = m.weight.detach().double().numpy()
        src = state.sources.get(name)
        mats = fanin_matrix(w, src)
        for start in range(0, mats.shape[1], 4):
            mags = np.abs(mats[:, start:start + 4])
            assert (mags == mags[:, :1]).all()
        kept = (block_magnitudes(w, 4, src) > 0).mean()
        assert kept <= {"conv2": 0.5, "fc": 0.25}[name] + 1e-9
        assert (masks[name] == (m.weight != 0)).all()
    assert state.sources["fc"] == (16, 4, 4)


# ---- pruning plans --------------------------------------------------------------

def test_density_plans():
    from quantrtl.model.training.prune import magnitude_masks, parse_density, resolve_density
    from quantrtl.model.training.net import load_checkpoint

    names = ["conv1", "conv2", "fc"]
    assert resolve_density("0.3", names) == {"conv1": 0.3, "conv2": 0.3, "fc": 0.3}
    assert resolve_density("first=0.6,last=0.12,*=0.35", names) == {"conv1": 0.6, "conv2": 0.35, "fc": 0.12}
    assert resolve_density("conv2=0.5", names) == {"conv1": 1.0, "conv2": 0.5, "fc": 1.0}
    for bad, match in [("conv9=0.5", "unknown layers"), ("fc=x", "not a number"), ("0", r"\(0, 1\]"),
                       ("fc=1.5", "layer 'fc'")]:
        with pytest.raises(ValueError, match=match):
            resolve_density(bad, names)
    model = load_checkpoint()
    masks = magnitude_masks(model, "first=0.6,last=0.12,*=0.35")
    for name, d in zip(names, (0.6, 0.35, 0.12)):
        assert int(masks[name].sum()) == math.ceil(d * masks[name].numel())
    assert parse_density(0.5) == {"*": 0.5}


# ---- xnor activations -----------------------------------------------------------

def test_binary_activation_format():
    f = ActivationFormat(scale=1.0, bits=1, encoding="pm1")
    assert f.quantize([-0.5, 0.0, 2.0]).tolist() == [0, 1, 1]  # sign(0) = +1
    assert f.dequantize([0, 1]).tolist() == [-1.0, 1.0]
    with pytest.raises(FormatError, match="bits 1 and zero point 0"):
        ActivationFormat(scale=1.0, bits=8, encoding="pm1")
    with pytest.raises(FormatError, match="encoding"):
        ActivationFormat(scale=1.0, encoding="ternary")


def test_xnor_model_binarizes_hidden_layers_exactly():
    """Every hidden layer's fake-quant output is ±1 with the sign of the integer accumulator."""
    from quantrtl.model.digits import load_split
    from quantrtl.model.training.net import load_checkpoint
    from quantrtl.model.training.quantize import QuantModel, QuantLayer

    train, test = load_split()
    qm = QuantModel(load_checkpoint(), parse_format("xnor"))
    qm.calibrate(train)
    layers = [s for s in qm.steps.values() if isinstance(s, QuantLayer)]
    assert [l.fmt.name for l in layers] == ["binary", "xnor", "xnor"]
    assert [l.binarize for l in layers] == [True, True, False]
    outs = {}
    hooks = [l.register_forward_hook(lambda mod, a, out, n=l.name: outs.__setitem__(n, out)) for l in layers]
    with torch.no_grad():
        qm(torch.tensor(test.float_inputs()[:16]))
    for h in hooks:
        h.remove()
    for n in ("conv1", "conv2"):
        assert set(torch.unique(outs[n]).tolist()) <= {-1.0, 1.0}


# ---- honest size ------------------------------------------------------------------

def test_honest_size_counts_every_stored_bit(quantized):
    from quantrtl.model.numbers import artifact
    from quantrtl.model.numbers.huffman import code_lengths
    from quantrtl.model.numbers.size import LENGTH_BITS, coded_size, huffman_bits

    assert huffman_bits([1, 1, 1, 2], 4) == 4 + 4 * LENGTH_BITS
    syms = np.random.default_rng(0).integers(0, 8, 500)
    lengths = code_lengths(syms.tolist())
    assert huffman_bits(syms, 8) == sum(lengths[int(s)] for s in syms) + 8 * LENGTH_BITS
    net = artifact.load(quantized("focused5").artifact)
    size = coded_size(net)
    raw = net.storage_bits()
    assert size["total"] == size["weights"] + raw["bias"] + raw["requant"]
    assert all(v["layout"] in ("raw", "dense", "sparse") for v in size["layers"].values())
    assert size["layers"]["fc"]["layout"] == "sparse" and size["layers"]["fc"]["index"] > 0
    assert all(v["total"] <= net.layer(n).format.storage(net.layer(n).codes)["codes"]
               + net.layer(n).format.storage(net.layer(n).codes)["params"] for n, v in size["layers"].items())


# ---- acceptance on the digits model ---------------------------------------------------

@pytest.mark.parametrize("name", METHOD_QUANTIZERS)
def test_method_quantize_report(quantized, name):
    """Each method: accuracy, golden agreement >= 99 %, honest compression, per-layer report."""
    r = quantized(name)
    assert r.golden_agreement >= 0.99
    assert r.golden_accuracy == r.quant_accuracy or abs(r.golden_accuracy - r.quant_accuracy) <= 0.01
    from quantrtl.model.training.net import load_checkpoint

    assert r.float_bits == 32 * sum(p.numel() for p in load_checkpoint().parameters())  # the float model's own count
    assert r.compression_ratio == pytest.approx(r.float_bits / r.coded_bits["total"])
    assert all(l["density"] is not None and l["coded"]["total"] > 0 for l in r.layers if l["format"])
    assert r.training and set(r.density) == {"conv1", "conv2", "fc"}


def test_focused5_acceptance(quantized):
    """Issue 6: >= 15x smaller than fp32 (every stored bit) within 1.5 points of float."""
    r = quantized("focused5")
    assert r.compression_ratio >= 15.0
    assert r.golden_accuracy >= r.float_accuracy - 0.015
    assert r.density == {"conv1": 0.6, "conv2": 0.35, "fc": 0.12}
    for l in r.layers:
        if l["format"]:
            n = math.prod(l["out_shape"][:1]) * {"conv1": 9, "conv2": 72, "fc": 256}[l["name"]]
            assert l["format"] in ("focused5", "shift5")
            assert round(l["density"] * n) == math.ceil(r.density[l["name"]] * n)  # magnitude pruning, exact count
