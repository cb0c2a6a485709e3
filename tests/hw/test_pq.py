"""Product quantization (``pqN``) hardware against NumPy: the table array (table builder and
accumulation), its engine on random layers, the unrolled layer, and the golden model's
table method against its direct convolution."""
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from quantrtl.hw.engines import make_engine
from quantrtl.hw.pq import TableArray, TableConvEngine, UnrolledTableLayer, unrolled_parts
from quantrtl.model.numbers import artifact
from quantrtl.model.numbers.families import parse_format
from quantrtl.model.numbers.layout import to_stream
from quantrtl.model.numbers.pq import PQFormat
from quantrtl.sim import golden
from quantrtl.sim.compare import first_mismatch
from quantrtl.sim.stream import run_stream
from tests.factories import grouped_conv_layer, random_network
from tests.hw.test_array import simulate, wrap
from tests.hw.test_unrolled import simulate as simulate_unrolled


def pq_format(bits: int, sub: int, subspaces: int, rng, extremes: bool = False) -> PQFormat:
    """A fitted pq format with random codewords (the full signed 8-bit range when ``extremes``)."""
    n = subspaces * (1 << bits) * sub
    books = rng.choice([-127, 127, 0], size=n) if extremes else rng.integers(-127, 128, size=n)
    return PQFormat(bits=bits, block=sub, sub=sub, subspaces=subspaces,
                    codebooks=tuple(int(v) for v in books), scale=0.01)


def table_operands(ctx, arr: TableArray, codes, ops, t: int) -> None:
    """Step ``t`` of a table array: the activations, each group's indices, the chunk."""
    acts, chunks = ops
    for j in range(arr.lanes_per_group):
        ctx.set(arr.act[j], int(acts[t, j]))
    for i in range(codes.shape[1]):
        ctx.set(arr.code[i], int(codes[t, i]))
    ctx.set(arr.chunk, int(chunks[t]))


def table_books(fmt: PQFormat, per_group: int, rng, chunks: int = 5):
    """Per chunk, its sub-vectors' subspaces (random) and the flat codewords the ROM holds."""
    S = per_group // fmt.sub
    m = rng.integers(0, fmt.subspaces, size=(chunks, S))
    cb = fmt.codebook_array
    return m, [np.concatenate([cb[m[c, s]].ravel() for s in range(S)]).tolist() for c in range(chunks)]


def table_jobs(fmt: PQFormat, groups: int, per_group: int, m, rng, act_max: int = 255):
    """Random jobs and their NumPy dot products of the decoded sub-vectors (not a table)."""
    S, K, sub = per_group // fmt.sub, fmt.codewords, fmt.sub
    cb = fmt.codebook_array
    jobs, want = [], []
    for _ in range(4):
        t = int(rng.integers(1, 4))
        chunk = rng.integers(0, len(m), size=t)
        codes = rng.integers(0, K, size=(t, groups * S))
        acts = rng.integers(0, act_max + 1, size=(t, per_group))
        if rng.random() < 0.3:
            acts[:] = act_max  # the extreme activations
        init = rng.integers(-(1 << 12), 1 << 12, size=groups)
        weights = np.array([[[cb[m[chunk[i], s], codes[i, g * S + s], j] for s in range(S) for j in range(sub)]
                             for g in range(groups)] for i in range(t)])  # (t, G, per_group)
        want.append([int(init[g]) + int((weights[:, g, :] * acts).sum()) for g in range(groups)])
        jobs.append((codes, (acts, chunk), init))
    return jobs, want


@pytest.mark.parametrize("bits,sub,per_group,groups,pipeline", [
    (2, 4, 8, 2, 0),    # K = 4
    (8, 2, 4, 2, 1),    # K = 256
    (4, 1, 4, 4, 2),    # d = 1 (scalar codewords)
    (3, 8, 8, 1, 0),    # d = the whole step: one sub-vector
    (4, 4, 4, 16, 1),   # more groups than codewords: the table is shared
])
def test_table_array_against_numpy(bits, sub, per_group, groups, pipeline):
    rng = np.random.default_rng(bits * 10 + sub)
    fmt = pq_format(bits, sub, 3, rng, extremes=bits == 8)
    width = 28
    m, books = table_books(fmt, per_group, rng)
    arr = TableArray(fmt, groups * per_group, width, books, groups=groups, pipeline=pipeline)
    jobs, want = table_jobs(fmt, groups, per_group, m, rng)
    got, _ = simulate(arr, jobs, seed=bits, stall_prob=0.25, operands=table_operands)
    assert got == [[wrap(v, width) for v in row] for row in want]


@settings(max_examples=20, deadline=None)
@given(bits=st.integers(2, 8), sub=st.sampled_from([1, 2, 3, 4]), s=st.integers(1, 3), groups=st.integers(1, 4),
       pipeline=st.integers(0, 2), seed=st.integers(0, 1000), extremes=st.booleans())
def test_table_array_random(bits, sub, s, groups, pipeline, seed, extremes):
    """Random K, sub-vector lengths, groups and stages; codewords at ±127 and activations at 255 included.
    The codebook ROM word (S·K·sub codewords) stays within 8,192 bits: Amaranth's Python
    simulator writes wider masks as decimal literals, past Python's 4,300-digit limit
    (Icarus and Verilator take any width)."""
    assume(s * sub * (1 << bits) * 8 <= 8192)
    rng = np.random.default_rng(seed)
    fmt = pq_format(bits, sub, 2, rng, extremes)
    width = 30
    m, books = table_books(fmt, s * sub, rng)
    arr = TableArray(fmt, groups * s * sub, width, books, groups=groups, pipeline=pipeline)
    jobs, want = table_jobs(fmt, groups, s * sub, m, rng)
    got, _ = simulate(arr, jobs, seed=seed, stall_prob=0.2, operands=table_operands)
    assert got == [[wrap(v, width) for v in row] for row in want]


def run_layers(net, x, lanes: int, pipeline: int = 0, ready_prob: float = 1.0):
    res = golden.run(net, x[None])
    prev, inp, out = tuple(net.input_shape), x, []
    for layer in net.layers:
        eng = make_engine(layer, lanes=lanes, pipeline=pipeline, source_shape=prev if layer.op == "linear" else None)
        want = to_stream(res.outputs[layer.name][0], layer.out_shape)
        got, cycles = run_stream(eng, list(to_stream(inp, prev)), len(want), ready_prob=ready_prob, seed=lanes)
        out.append((layer.name, eng, first_mismatch(layer.name, want, got), cycles))
        inp, prev = res.outputs[layer.name][0], tuple(layer.out_shape)
    return out


GEOMETRIES = [
    dict(name="pq4", block=4, lanes=8, geom=dict(cin=8, hw=5, cout=6, kernel=(3, 3), padding=(1, 1))),
    dict(name="pq2", block=2, lanes=16, geom=dict(cin=6, hw=(6, 5), cout=9, kernel=(3, 2), stride=(2, 1),
                                                  padding=(1, 0))),
    dict(name="pq8", block=1, lanes=4, geom=dict(cin=3, hw=4, cout=5, kernel=(2, 2), padding=(0, 0), relu=False)),
    dict(name="pq3", block=8, lanes=8, geom=dict(cin=8, hw=4, cout=3, kernel=(1, 1), padding=(0, 0))),
]


@pytest.mark.parametrize("case", range(len(GEOMETRIES)), ids=lambda i: GEOMETRIES[i]["name"])
def test_table_engine_random_layers(case):
    """Strides, padding with a nonzero zero point, K = 4 .. 256, sub-vectors of 1 to the
    whole channel count, back-pressure: bit-exact, cycles as the dense formula."""
    c = GEOMETRIES[case]
    fmt = replace(parse_format(c["name"]), block=c["block"])
    net = random_network(fmt, seed=case, **c["geom"])
    x = np.random.default_rng(case).integers(0, 256, size=net.input_shape)
    for name, eng, mm, cycles in run_layers(net, x, c["lanes"], pipeline=case % 3):
        assert mm is None, str(mm)
        assert cycles == eng.expected_cycles, (name, cycles, eng.expected_cycles)
        if isinstance(eng, TableConvEngine):
            g = eng.geometry
            assert g.lanes_per_group % eng.layer.format.sub == 0
    for name, eng, mm, _ in run_layers(net, x, c["lanes"], ready_prob=0.6):
        assert mm is None, str(mm)


def test_table_engine_shares_the_table_among_more_groups():
    """Between lane groupings of equal cycles, a table engine takes the most groups (the
    table is built once per step for all of them); a MAC array the fewest."""
    fmt = parse_format("pq4")
    net = random_network(fmt, seed=1, cin=8, hw=4, cout=16, kernel=(3, 3), padding=(1, 1))
    conv = net.layers[0]
    eng = make_engine(conv, lanes=16)
    assert isinstance(eng, TableConvEngine) and eng.geometry.groups == 4
    fixed = random_network(parse_format("fixed8"), seed=1, cin=8, hw=4, cout=16, kernel=(3, 3), padding=(1, 1))
    assert make_engine(fixed.layers[0], lanes=16).geometry.groups == 2
    assert eng.geometry.run_cycles == make_engine(fixed.layers[0], lanes=16).geometry.run_cycles


def test_table_engine_refusals():
    layer = grouped_conv_layer(parse_format("pq4"), cin=4, cout=4, groups=4)
    with pytest.raises(ValueError, match="grouped convolution"):
        TableConvEngine(layer)
    net = random_network(parse_format("pq4"), seed=0, cin=8, hw=4, cout=4)
    with pytest.raises(ValueError, match="at least the sub-vector length 4"):
        make_engine(net.layers[0], lanes=3)
    assert make_engine(net.layers[0], lanes=6).lanes == 4  # whole sub-vectors per step
    for mode in ("row", "broadcast"):
        with pytest.raises(ValueError, match="codeword index per sub-vector"):
            make_engine(net.layers[0], lanes=4, sparse=mode)
    with pytest.raises(ValueError, match="fitted pq format"):
        TableArray(parse_format("fixed8"), 4, 20, [[0]])
    with pytest.raises(ValueError, match="per chunk, 64 codewords"):
        TableArray(net.layers[0].format, 4, 20, [[0] * 63])


@pytest.mark.parametrize("bits,block", [(2, 4), (8, 2), (4, 1), (3, 6)])
def test_unrolled_table_layer_against_numpy(bits, block):
    """The hard-wired layer (K = 4 .. 256, d = 1 .. the channel count) computes every
    channel's ``sum w x``; its parts are what it instantiates, with their counts."""
    rng = np.random.default_rng(bits)
    w = rng.normal(size=(5, 6, 3, 3))
    q = replace(parse_format(f"pq{bits}"), block=block).encode(w)
    lay = UnrolledTableLayer(q.format, q.codes)
    xs = [rng.integers(0, 256, size=lay.fan_in) for _ in range(4)] + [np.full(lay.fan_in, 255)]
    want = [(q.values.reshape(5, -1) * x).sum(axis=1).tolist() for x in xs]

    assert simulate_unrolled(lay, xs, outputs=5) == want
    parts = unrolled_parts(q.format, q.codes)
    M, P = q.format.subspaces, 9
    assert sum(n for name, _, n in parts if name != "channel") == M * P
    assert [(n, part.n) for name, part, n in parts if name == "channel"] == [(5, M * P)]


def test_golden_table_method_equals_direct(tmp_path):
    """The golden model's table method (a table per input pixel and subspace, entries summed
    by index) gives the direct convolution's accumulators: random layers (strides,
    padding, grouped) and a trained digits artifact."""
    rng = np.random.default_rng(0)
    layers = [random_network(parse_format("pq4"), seed=s, cin=8, hw=6, cout=5, kernel=(3, 3), stride=(1 + s % 2, 1),
                             padding=(1, s % 2)).layers for s in range(3)]
    layers = [l for ls in layers for l in ls if l.has_weights]
    layers.append(grouped_conv_layer(parse_format("pq2"), seed=3, cin=8, cout=4, groups=2))
    for layer in layers:
        x = rng.integers(0, 256, size=(3,) + tuple(layer.in_shape))
        acc = {}
        golden.run_layer(layer, x, acc)
        assert np.array_equal(golden.table_acc(layer, x), acc[layer.name]), layer.name


def test_golden_table_method_on_the_digits_model(quantized):
    from quantrtl.model.digits import load_split

    net = artifact.load(quantized("pq4").artifact)
    _, test = load_split()
    res = golden.run(net, test.x[:16])
    prev = test.x[:16]
    for layer in net.layers:
        if layer.has_weights:
            acc = {}
            golden.run_layer(layer, prev, acc)
            assert np.array_equal(golden.table_acc(layer, prev), acc[layer.name]), layer.name
        prev = res.outputs[layer.name]
