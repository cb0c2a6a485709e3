"""The whole digits network as one design in the Amaranth simulator."""
import numpy as np
import pytest
from amaranth.hdl import Fragment

from quantrtl.model.numbers.layout import to_stream
from quantrtl.hw.network import NetworkTop
from quantrtl.model.numbers import artifact
from quantrtl.model.digits import load_split
from quantrtl.sim import golden
from quantrtl.sim.compare import first_mismatch
from tests.hw.streams import run_stream


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shift4", "binary"])
def test_network_top_bit_exact_with_taps(quantized, name):
    net = artifact.load(quantized(name).artifact)
    _, test = load_split()
    x = test.x[2]
    res = golden.run(net, x)
    top = NetworkTop(net, lanes=8, taps=True)
    logits, cycles, taps = run_stream(top, list(to_stream(x, net.input_shape)), 10,
                                      taps={n: getattr(top, f"tap_{n}") for n in top.tap_names})
    assert first_mismatch("fc", res.logits[0], logits) is None
    for n, values in taps.items():
        mm = first_mismatch(n, to_stream(res.outputs[n][0], net.layer(n).out_shape), values)
        assert mm is None, str(mm)
    assert cycles == top.expected_cycles
    assert int(logits.argmax()) == int(res.predicted[0])


def _run_graph(net, x, lanes, **kw):
    top = NetworkTop(net, lanes=lanes, taps=True)
    n_out = int(net.layers[-1].out_shape[0])
    out, cycles, taps = run_stream(top, list(to_stream(x, net.input_shape)), n_out,
                                   taps={n: getattr(top, f"tap_{n}") for n in top.tap_names}, **kw)
    res = golden.run(net, x)
    assert first_mismatch(net.layers[-1].name, res.logits[0], out) is None
    for n, values in taps.items():
        mm = first_mismatch(n, to_stream(res.outputs[n][0], net.layer(n).out_shape), values)
        assert mm is None, str(mm)
    return top, cycles


@pytest.mark.parametrize("name,lanes", [("fixed8", 4), ("shift4", 3), ("ternary", 8), ("fixed4", 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_graph_network_top_every_node_bit_exact(name, lanes, seed):
    """A residual block (fork, skip buffer, add), depthwise and pointwise convs, average
    pooling, concat and global average pooling as one design: every node's output equals
    the golden model's, and the cycles equal the DAG formula."""
    from tests.factories import format_for_test, random_graph_network

    net = random_graph_network(format_for_test(name), seed=seed, relu=seed == 0)
    artifact.validate(net)
    x = np.random.default_rng(seed).integers(0, 256, size=net.input_shape)
    top, cycles = _run_graph(net, x, lanes)
    assert cycles == top.expected_cycles
    # double buffers of the add (two 2x4x4 maps) and the concat (two 2x2x2)
    assert top.memory_bits["join_buffers"] == 2 * 8 * (2 * 2 * 16 + 2 * 2 * 4)


@pytest.mark.parametrize("seed", range(4))
def test_graph_network_top_never_deadlocks_under_back_pressure(seed):
    """Random bubbles on the input and random back-pressure on the output: the fork waits
    for all its readers, the skip buffer takes the whole map, and the result is the same."""
    from tests.factories import format_for_test, random_graph_network

    net = random_graph_network(format_for_test("fixed8"), seed=seed)
    x = np.random.default_rng(seed).integers(0, 256, size=net.input_shape)
    _run_graph(net, x, 4, ready_prob=0.3 + 0.15 * seed, valid_prob=0.5, seed=seed, max_cycles=200_000)


def test_initiation_interval_deducts_the_producers_head_start(quantized):
    """Digits shift4 at 8 lanes, by hand: the pool is the slowest layer; it loads conv2's
    output (conv2's tail 9 220 cycles) less what conv2 computed while blocked: one value per
    group (8 lanes on one channel, 9 chunks), so the output register, the bank and the
    accumulators hold three groups, 3 x 9 cycles, plus the array's register stage; then the
    pool's own 1 028.  The cosims check the same numbers in Icarus (test_cosim)."""
    top = NetworkTop(artifact.load(quantized("shift4").artifact), lanes=8)
    Fragment.get(top, None)  # the formula of the design as built (and no unused-design warning)
    conv2 = top.engines["conv2"]
    assert (conv2.geometry.groups, conv2.geometry.chunks) == (1, 9)
    assert conv2.head_start == 3 * 9 + 1
    tails = top.tails()
    assert (tails["conv2"], tails["pool"]) == (9220, 1028)
    assert top.occupancy()["pool"] == 9220 - 28 + 1028 == top.initiation_interval
    conv1 = top.engines["conv1"]  # 8 groups of one lane: two groups ahead, 6 outputs lost before the third starts
    assert (conv1.geometry.groups, conv1.geometry.chunks) == (8, 9)
    assert conv1.head_start == 2 * 9 + 1 - (8 - 2)
