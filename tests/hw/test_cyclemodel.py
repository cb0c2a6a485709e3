"""The cycle model of a streaming network (hw/cyclemodel.py) against the design it
describes, in the Amaranth simulator: images back to back, every output handshake of
every image where the model says, each join FIFO's measured high-water mark equal to the
depth the model computed for it, and a FIFO one smaller stalling (a deadlock the model
names)."""
import numpy as np
import pytest

from quantrtl.hw.cyclemodel import Deadlock
from quantrtl.hw.network import NetworkTop
from quantrtl.model.numbers.layout import to_stream
from quantrtl.sim import golden
from quantrtl.sim.compare import first_mismatch
from tests.factories import format_for_test, random_graph_network, random_network
from tests.hw.streams import run_stream


def _stream(top, net, maps, **kw):
    """``maps`` back to back through ``top``: the outputs checked against the golden model,
    per image the cycle of its first input and of its last output, and the FIFOs' marks."""
    n_in, n_out = int(np.prod(net.input_shape)), int(np.prod(net.layers[-1].out_shape))
    watch = {f"{j}.{i}": top.engines[j].fifo_hwm[i] for j in top.fifo_depths for i in range(len(top.fifo_depths[j]))}
    watch.update({f"{j}.{i} stalls": top.engines[j].fifo_stalls[i]
                  for j in top.fifo_depths for i in range(len(top.fifo_depths[j]))})
    rec = {"watch": watch}
    res = golden.run(net, maps)
    want = [v for k in range(len(maps)) for v in to_stream(res.outputs[net.layers[-1].name][k], net.layers[-1].out_shape)]
    got, _ = run_stream(top, [v for x in maps for v in to_stream(x, net.input_shape)], len(want), record=rec, **kw)
    assert first_mismatch(net.layers[-1].name, want, got) is None
    return rec["in_cycles"][::n_in], rec["out_cycles"][n_out - 1::n_out], rec["watched"]


@pytest.mark.parametrize("name,lanes,seed", [("fixed8", 4, 0), ("shift4", 2, 1), ("ternary", 8, 2)])
def test_graph_network_streams_on_the_model(name, lanes, seed):
    """A residual block (fork, skip FIFO, add), depthwise and pointwise convs, average
    pooling, a concat and global average pooling, three images back to back: the first
    input and last output of each image on the model's cycle, the latency and interval the
    design reports the model's, and each FIFO filled exactly to the depth computed for it."""
    net = random_graph_network(format_for_test(name), seed=seed, c=2, hw=6)
    top = NetworkTop(net, lanes=lanes, sparse="stream")
    assert top.streaming and set(top.fifo_depths) == {"add", "cat"}
    maps = np.random.default_rng(seed).integers(0, 256, size=(3,) + tuple(net.input_shape))
    firsts, lasts, marks = _stream(top, net, maps)
    s = top.schedule(3)
    assert (tuple(firsts), tuple(lasts)) == (s.first_in, s.last_out)
    assert top.expected_cycles == s.latencies[0] and top.batch_interval(3) == s.intervals[-1]
    assert {k: v for k, v in marks.items() if "stalls" not in k} == \
        {f"{j}.{i}": d for j, ds in top.fifo_depths.items() for i, d in enumerate(ds)}
    assert all(v == 0 for k, v in marks.items() if "stalls" in k)
    assert all(v == 0 for stalls in s.skew_stalls.values() for v in stalls)
    # an image's timing depends only on the images before it: three are the first three of eight
    assert top.schedule(8).last_out[:3] == s.last_out
    # the FIFO bits are the depths at the codes' widths
    assert top.memory_bits["skip_fifos"] == sum(d * 8 for ds in top.fifo_depths.values() for d in ds)


def test_a_fifo_one_smaller_stalls():
    """Each FIFO one below its computed depth: an input waits at the full FIFO while the
    join starves for another input.  The residual add's skip FIFO: the design counts the
    model's number of those stall cycles (and still finishes on the model's cycles); the
    concat's: the fork it shares with the add waits for ever, a deadlock the model names
    and in which the design stops."""
    net = random_graph_network(format_for_test("fixed8"), seed=0, c=2, hw=6)
    depths = NetworkTop(net, lanes=4, sparse="stream").fifo_depths
    maps = np.random.default_rng(0).integers(0, 256, size=(2,) + tuple(net.input_shape))
    seen = set()
    for join, ds in depths.items():
        for i, d in enumerate(ds):
            if d == 1:
                continue
            small = {k: list(v) for k, v in depths.items()}
            small[join][i] = d - 1
            top = NetworkTop(net, lanes=4, sparse="stream", fifo_depths=small)
            try:
                s = top.schedule(2)
            except Deadlock as e:
                assert f"join {join}" in str(e) or f", {join} waits" in str(e)
                with pytest.raises(TimeoutError, match="no progress"):
                    _stream(top, net, maps[:1], max_cycles=20 * NetworkTop(net, lanes=4, sparse="stream")
                            .expected_cycles)
                seen.add("deadlock")
                continue
            assert s.skew_stalls[join][i] > 0
            firsts, lasts, marks = _stream(top, net, maps)
            assert tuple(lasts) == s.last_out and marks[f"{join}.{i} stalls"] == s.skew_stalls[join][i]
            seen.add("stall")
    assert seen == {"stall", "deadlock"}


def test_fifo_depths_override_names_a_join():
    net = random_graph_network(format_for_test("fixed8"), seed=0, c=2, hw=6)
    with pytest.raises(ValueError, match="fifo_depths names conv: no streaming join of the design"):
        NetworkTop(net, lanes=4, sparse="stream", fifo_depths={"conv": [3]}).fifo_depths


def test_a_chain_streams_on_the_model():
    """conv → maxpool → linear, streamed: the model's cycles are the simulated ones, and a
    dense design has no cycle model (its formulas are the load-then-compute ones)."""
    net = random_network(format_for_test("shift4"), seed=4, cin=3, hw=7, cout=4, kernel=(3, 3), stride=(1, 1),
                         padding=(1, 1), pool=(2, 2, 0))
    top = NetworkTop(net, lanes=4, sparse="stream")
    maps = np.random.default_rng(4).integers(0, 256, size=(2,) + tuple(net.input_shape))
    firsts, lasts, _ = _stream(top, net, maps, valid_prob=1.0)
    assert (tuple(firsts), tuple(lasts)) == (top.schedule(2).first_in, top.schedule(2).last_out)
    dense = NetworkTop(net, lanes=4)
    assert not dense.streaming and dense.schedule(1) is None
