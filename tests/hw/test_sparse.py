"""Zero-skipping engines in the Amaranth simulator: bit-exact, cycles == formula, edge-case rows."""
import numpy as np
import pytest

from quantrtl.hw.sparse import SparseConvEngine
from quantrtl.model.numbers import artifact
from quantrtl.model.digits import load_split
from quantrtl.model.numbers.families import parse_format
from quantrtl.model.numbers.layout import to_stream
from quantrtl import flows
from quantrtl.sim import golden
from quantrtl.sim.compare import first_mismatch
from tests.factories import random_network
from tests.hw.streams import run_stream


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned")
    cache = {}

    def get(name, density):
        if (name, density) not in cache:
            q = flows.quantize_network(name, 2, density=density)
            cache[(name, density)] = artifact.load(artifact.save(q.qnet, out / f"{name}-d{density:g}"))
        return cache[(name, density)]

    return get


def run_sparse(net, x, lanes, index_bits=4, ready_prob=1.0, valid_prob=1.0):
    res = golden.run(net, x[None])
    prev, inp, out = tuple(net.input_shape), x, []
    for layer in net.layers:
        if layer.has_weights:
            eng = SparseConvEngine(layer, lanes=lanes, index_bits=index_bits,
                                   source_shape=prev if layer.op == "linear" else None)
            want = to_stream(res.outputs[layer.name][0], layer.out_shape)
            got, cycles = run_stream(eng, list(to_stream(inp, prev)), len(want), ready_prob=ready_prob,
                                     valid_prob=valid_prob, seed=lanes)
            out.append((layer.name, first_mismatch(layer.name, want, got), cycles, eng))
        inp, prev = res.outputs[layer.name][0], tuple(layer.out_shape)
    return out


@pytest.mark.parametrize("name", ["shift3", "fixed8"])
@pytest.mark.parametrize("density", [0.1, 0.3, 1.0])
def test_digits_layers_sparse(pruned, name, density):
    net = pruned(name, density)
    x = load_split()[1].x[5]
    for layer, mm, cycles, eng in run_sparse(net, x, lanes=8):
        assert mm is None, str(mm)
        assert cycles == eng.expected_cycles, (layer, cycles, eng.expected_cycles)
        run = cycles - eng.geometry.in_size
        bound = 1.25 * eng.ideal_cycles + eng.geometry.pixels * eng.geometry.cout + eng.pipeline + 5
        assert run <= bound, (layer, run, eng.ideal_cycles)
        if density < 1.0 and layer == "conv2":
            assert eng.run_cycles < eng.geometry.run_cycles  # fewer cycles than the dense walk


@pytest.mark.parametrize("index_bits", [1, 2, 5])
def test_decoder_edge_rows(index_bits):
    """All-zero channels, full channels, runs longer than the index width, a lone nonzero at the end."""
    fmt = parse_format("fixed4")
    net = random_network(fmt, seed=index_bits, cin=3, hw=5, cout=4, kernel=(3, 3), padding=(1, 1))
    conv = net.layers[0]
    codes = conv.codes.reshape(4, -1)
    zero = 0
    codes[0] = zero                      # all-zero row
    codes[1] = fmt.code_space()[-1]       # full row, no zeros
    codes[2] = zero
    codes[2, -1] = 3                      # a single nonzero at the very end: a run of K-1 zeros
    codes[3, ::9] = zero                  # scattered zeros
    x = np.random.default_rng(0).integers(0, 256, size=net.input_shape)
    for layer, mm, cycles, eng in run_sparse(net, x, lanes=4, index_bits=index_bits):
        assert mm is None, str(mm)
        assert cycles == eng.expected_cycles
        if layer == "conv":
            assert eng.rows[0].entries == 0 and eng.rows[1].entries == 27
            assert eng.rows[2].filler.sum() == 26 // (2**index_bits)


@pytest.mark.parametrize("name,lanes", [("ternary", 3), ("shift5", 16)])
def test_random_geometry_sparse_with_back_pressure(name, lanes):
    net = random_network(parse_format(name), seed=7, cin=2, hw=(6, 7), cout=5, kernel=(3, 2), stride=(2, 1),
                         padding=(1, 1))
    x = np.random.default_rng(1).integers(0, 256, size=net.input_shape)
    for layer, mm, cycles, eng in run_sparse(net, x, lanes=lanes, ready_prob=0.6, valid_prob=0.8):
        assert mm is None, str(mm)
        assert cycles >= eng.expected_cycles


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 60), density=st.floats(0.0, 1.0),
       lanes=st.sampled_from([1, 2, 4, 8]), index_bits=st.integers(1, 4))
def test_decoder_unit_matches_numpy_decoder(seed, k, density, lanes, index_bits):
    """The hardware decoder's (index, code) lanes equal the NumPy decoder's nonzero positions."""
    from amaranth.sim import Simulator

    from quantrtl.hw.geometry import ConvGeometry
    from quantrtl.hw.sparse import SparseDecoder
    from quantrtl.model.numbers.sparse import decode_row, encode_row

    fmt = parse_format("shift3")
    rng = np.random.default_rng(seed)
    codes = np.where(rng.random(k) < density, rng.choice([1, 2, 3, 5, 6, 7], k), 0)
    row = encode_row(codes, fmt, index_bits)
    g = ConvGeometry(cin=k, h=1, w=1, cout=1, lanes=lanes)  # a linear layer: address = fan-in index
    dec = SparseDecoder(g, lanes, index_bits, fmt.bits)
    ew = dec.entry_width
    words = []
    for w0 in range(0, max(row.entries, 1), lanes):
        word = 0
        for j in range(lanes):
            i = w0 + j
            if i < row.entries:
                kind = 2 if row.filler[i] else 1
                word |= (int(row.runs[i]) | (int(row.codes[i]) << index_bits) | (kind << (index_bits + fmt.bits))) << (j * ew)
        words.append(word)
    got = np.zeros(k, dtype=np.int64)

    async def bench(ctx):
        for t, word in enumerate(words):
            ctx.set(dec.word, word)
            ctx.set(dec.first, int(t == 0))
            ctx.set(dec.step, 1)
            for j in range(lanes):
                if ctx.get(dec.weight[j]):
                    got[ctx.get(dec.addr[j])] = ctx.get(dec.code[j])
            await ctx.tick()

    sim = Simulator(dec)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(got, decode_row(row, fmt)), (codes, row)
