"""Zero-skipping engines in the Amaranth simulator: bit-exact, cycles against their
formulas, edge-case rows; the row-wise engine (``hw/sparse.py``) and the
activation-broadcast engine (``hw/broadcast.py``)."""
import numpy as np
import pytest

from quantrtl.hw.broadcast import BroadcastConvEngine
from quantrtl.hw.sparse import SparseConvEngine
from quantrtl.model.numbers import artifact
from quantrtl.model.digits import load_split
from quantrtl.model.numbers.families import parse_format
from quantrtl.model.numbers.layout import to_stream
from quantrtl import flows
from quantrtl.sim import golden
from quantrtl.sim.compare import first_mismatch
from tests.factories import fitted_format, random_network
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


def run_sparse(net, x, lanes, index_bits=4, ready_prob=1.0, valid_prob=1.0, engine=SparseConvEngine, **kw):
    """Each weight layer of ``net`` alone on ``engine``, fed the golden model's input map:
    (layer, first mismatch, cycles, engine, input stream) per layer."""
    res = golden.run(net, x[None])
    prev, inp, out = tuple(net.input_shape), x, []
    for layer in net.layers:
        if layer.has_weights:
            eng = engine(layer, lanes=lanes, index_bits=index_bits, source_shape=prev if layer.op == "linear" else None,
                         **kw)
            want = to_stream(res.outputs[layer.name][0], layer.out_shape)
            stream = to_stream(inp, prev)
            got, cycles = run_stream(eng, list(stream), len(want), ready_prob=ready_prob,
                                     valid_prob=valid_prob, seed=lanes)
            out.append((layer.name, first_mismatch(layer.name, want, got), cycles, eng, stream))
        inp, prev = res.outputs[layer.name][0], tuple(layer.out_shape)
    return out


@pytest.mark.parametrize("name", ["shift3", "fixed8"])
@pytest.mark.parametrize("density", [0.1, 0.3, 1.0])
def test_digits_layers_sparse(pruned, name, density):
    net = pruned(name, density)
    x = load_split()[1].x[5]
    for layer, mm, cycles, eng, _ in run_sparse(net, x, lanes=8):
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
    for layer, mm, cycles, eng, _ in run_sparse(net, x, lanes=4, index_bits=index_bits):
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
    for layer, mm, cycles, eng, _ in run_sparse(net, x, lanes=lanes, ready_prob=0.6, valid_prob=0.8):
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


# ---- the activation-broadcast engine ---------------------------------------------------

def broadcast_bounds(eng, stream):
    """Cycles of one map on a broadcast engine, input valid and output ready throughout:
    at least the schedule's lower bound; at most every activation serialized behind the
    busiest lane's column, then the whole drain."""
    s, g = eng.schedule, eng.geometry
    low = s.cycles(stream)
    inside, entries = s.valid_taps(), s.entries()  # (pixels, taps), (lanes, cin, taps)
    worst = [int((entries[:, i % g.cin] * inside[i // g.cin]).sum(axis=1).max()) if v else 0
             for i, v in enumerate(stream)]
    return low, sum(max(1, w) for w in worst) + g.out_size + 6 + eng.queue_depth


@pytest.mark.parametrize("name", ["shift3", "fixed8"])
@pytest.mark.parametrize("density", [0.1, 1.0])
def test_digits_layers_broadcast(pruned, name, density):
    net = pruned(name, density)
    x = load_split()[1].x[5]
    for layer, mm, cycles, eng, stream in run_sparse(net, x, lanes=4, engine=BroadcastConvEngine):
        assert mm is None, str(mm)
        low, high = broadcast_bounds(eng, stream)
        assert low <= cycles <= high, (layer, low, cycles, high)
        assert cycles >= eng.expected_cycles


@pytest.mark.parametrize("name,lanes,geometry", [
    ("focused5", 3, dict(cin=2, hw=(6, 7), cout=5, kernel=(3, 2), padding=(1, 1))),
    ("kmeans4", 8, dict(cin=3, hw=4, cout=4)),          # more lanes than channels: channels split by tap
    ("shift3", 1, dict(cin=2, hw=5, cout=3, padding=(0, 0))),
    ("ternary", 2, dict(cin=4, hw=5, cout=6, kernel=(1, 1), padding=(0, 0))),
    ("fixed4", 4, dict(cin=3, hw=5, cout=4, kernel=(3, 3), padding=(2, 1))),
])
@pytest.mark.parametrize("queue_depth", [1, 4])
def test_random_geometry_broadcast_with_back_pressure(name, lanes, geometry, queue_depth):
    """Multi-term (focused) and codebook PEs, padding with a nonzero input zero point (the
    border-class biases), a linear layer after a map, shallow and deeper queues, random
    bubbles and back-pressure."""
    net = random_network(fitted_format(name), seed=5, **geometry)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=net.input_shape) * (rng.random(net.input_shape) < 0.5)
    assert net.layers[0].input.zero_point != 0
    for layer, mm, cycles, eng, _ in run_sparse(net, x, lanes=lanes, ready_prob=0.6, valid_prob=0.8,
                                                engine=BroadcastConvEngine, queue_depth=queue_depth):
        assert mm is None, str(mm)
        s = eng.schedule
        assert eng.lanes <= min(lanes, eng.geometry.cout * s.blocks * eng.geometry.kh * eng.geometry.kw)
        assert cycles >= eng.expected_cycles
        if eng.lanes > eng.geometry.cout:  # some channel's parts sit in several lanes: the drain adds them
            assert any(len(s.owners(c)) > 1 for c in range(eng.geometry.cout))


def test_broadcast_all_zero_input_and_all_zero_channels():
    """A map of zeros broadcasts nothing (the outputs are the biases alone, each pixel's
    as soon as its inputs are in: exactly the formula); a channel without weights and a lane
    without entries for an input channel are skipped."""
    fmt = parse_format("fixed4")
    net = random_network(fmt, seed=2, cin=3, hw=5, cout=4)
    conv = net.layers[0]
    conv.codes[1] = 0          # output channel 1: no weights at all
    conv.codes[:, 2] = 0       # input channel 2 meets no weight
    zero = np.zeros(net.input_shape, dtype=np.int64)
    for x in (zero, np.random.default_rng(3).integers(0, 256, size=net.input_shape)):
        for layer, mm, cycles, eng, stream in run_sparse(net, x, lanes=2, engine=BroadcastConvEngine):
            assert mm is None, str(mm)
            if not np.any(stream):
                assert cycles == eng.expected_cycles
                # the drain reads each output pixel once its last input pixel is in: it
                # overlaps the input instead of following it
                assert cycles < eng.geometry.in_size + eng.geometry.out_size
            if layer == "conv":
                assert all(r.entries == 0 for cols in eng.schedule.columns for r in cols[2])


@pytest.mark.parametrize("change,message", [
    (dict(stride=(2, 1)), "takes stride 1"),
    (dict(format="binary"), "binary weights are never zero: nothing to skip; use --sparse row or the dense engine"),
    (dict(tap_fault=0), "control faults"),
    (dict(pipeline=1), "pipeline 0 only"),
    (dict(queue_depth=0), "queue_depth must be at least 1"),
])
def test_broadcast_refuses_what_it_cannot_build(change, message):
    net = random_network(parse_format(change.get("format", "fixed4")), seed=1, cin=2, hw=6, cout=3,
                         stride=change.get("stride", (1, 1)))
    kw = {k: v for k, v in change.items() if k not in ("stride", "format")}
    with pytest.raises(ValueError, match=message):
        BroadcastConvEngine(net.layers[0], lanes=2, **kw)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cin=st.integers(1, 5), cout=st.integers(1, 9), k=st.sampled_from([1, 2, 3]),
       density=st.floats(0.0, 1.0), lanes=st.integers(1, 10), index_bits=st.integers(1, 5))
def test_broadcast_schedule_columns_hold_the_layer(seed, cin, cout, k, density, lanes, index_bits):
    """Every (channel, tap) unit of work sits in exactly one lane, and the lanes' columns
    decode back to exactly the layer's weights; every lane's nonzero weights are within
    one unit (and the channel-boundary snap) of an equal share; the ideal MACs equal a
    brute-force count over the convolution, and a lane walks exactly its columns at the
    taps inside the map."""
    from quantrtl.hw.geometry import BroadcastSchedule, ConvGeometry
    from quantrtl.model.numbers.sparse import decode_row

    fmt = parse_format("shift3")
    rng = np.random.default_rng(seed)
    hw = 4
    w = np.where(rng.random((cout, cin, k, k)) < density, rng.choice([1, 2, 3, 5, 6, 7], (cout, cin, k, k)), 0)
    g = ConvGeometry(cin=cin, h=hw, w=hw, cout=cout, kh=k, kw=k, ph=k // 2, pw=k // 2, lanes=lanes)
    s = BroadcastSchedule.build(g, np.transpose(w, (0, 2, 3, 1)).reshape(cout, -1), fmt, index_bits)
    assert 1 <= s.lanes <= min(lanes, cout * s.blocks * k * k)
    rebuilt = np.full((cout, cin, k * k), -1)
    for chans, units, cols in zip(s.channels, s.units, s.columns):
        assert any(len(u) for blk in units for u in blk)  # no empty lane
        for ci, per_tap in enumerate(cols):
            for t, row in enumerate(per_tap):
                dense = decode_row(row, fmt)
                slots = units[ci % s.blocks][t]
                assert len(dense) == len(slots)
                for j, slot in enumerate(slots):
                    assert rebuilt[chans[slot], ci, t] == -1  # one lane per unit
                    rebuilt[chans[slot], ci, t] = dense[j]
    assert np.array_equal(rebuilt, w.reshape(cout, cin, k * k))
    nz = (w != 0).reshape(cout, cin, k * k)
    unit = np.stack([nz[:, b::s.blocks].sum(axis=1) for b in range(s.blocks)], axis=1)
    loads = [sum(int(unit[chans[slot], b, t]) for b, blk in enumerate(units) for t, u in enumerate(blk) for slot in u)
             for chans, units in zip(s.channels, s.units)]
    share = unit.sum() / min(lanes, unit.size)
    assert max(loads) <= share + unit.max() + 2 * s.SNAP * share + 1e-9, (loads, share)
    x = np.where(rng.random((cin, hw, hw)) < 0.5, rng.integers(1, 256, (cin, hw, hw)), 0)
    brute = 0
    for c in range(cout):
        for oy in range(g.oh):
            for ox in range(g.ow):
                for ci in range(cin):
                    for dy in range(k):
                        for dx in range(k):
                            iy, ix = oy - k // 2 + dy, ox - k // 2 + dx
                            if 0 <= iy < hw and 0 <= ix < hw:
                                brute += bool(w[c, ci, dy, dx]) and bool(x[ci, iy, ix])
    stream = np.transpose(x, (1, 2, 0)).ravel()  # stream order: channel fastest
    assert s.useful_macs(stream) == brute
    assert s.ideal_cycles(stream) == -(-brute // s.lanes)
    walked = [0] * s.lanes  # by hand: every nonzero activation, every tap landing inside the map
    for l, cols in enumerate(s.columns):
        for iy in range(hw):
            for ix in range(hw):
                for ci in range(cin):
                    if x[ci, iy, ix]:
                        walked[l] += sum(cols[ci][dy * k + dx].entries for dy in range(k) for dx in range(k)
                                         if 0 <= iy + k // 2 - dy < g.oh and 0 <= ix + k // 2 - dx < g.ow)
    assert s.lane_work(stream) == walked
