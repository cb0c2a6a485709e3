"""The stream engine style (hw/stream.py): line buffers of ``min(H, kh + sh)`` rows, one
read port for every lane, images back to back exactly on the schedule of hw/window.py,
random shapes and widths bit-exact, and the refusals that name the layer."""
import numpy as np
import pytest
from amaranth.back import rtlil
from hypothesis import given, settings, strategies as st

from quantrtl.hw.engines import make_engine
from quantrtl.hw.stream import StreamConvEngine
from quantrtl.model.numbers.families import parse_format
from quantrtl.model.numbers.layout import to_stream
from quantrtl.sim import golden
from quantrtl.sim.compare import first_mismatch
from tests.factories import format_for_test, grouped_conv_layer, pool_layer, random_network
from tests.hw.streams import run_stream


def _images(layer, engine, maps, shape, **kw):
    """``maps`` streamed back to back through ``engine``: its outputs against the golden
    model's, and the cycles from the first input to the last output."""
    want = [v for x in maps for v in to_stream(golden.run_layer(layer, x[None])[0], layer.out_shape)]
    got, cycles = run_stream(engine, [v for x in maps for v in to_stream(x, shape)], len(want), **kw)
    return first_mismatch(layer.name, want, got), cycles


def _conv(seed, **kw):
    net = random_network(parse_format(kw.pop("fmt", "fixed8")), seed=seed, **kw)
    return net, net.layers[0]


@pytest.mark.parametrize("geom,lanes", [
    (dict(kernel=(3, 3), stride=(1, 1), padding=(1, 1), hw=(6, 5), cin=4, cout=5), 8),
    (dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), hw=7, cin=3, cout=4), 4),
    (dict(kernel=(1, 1), stride=(2, 2), padding=(0, 0), hw=6, cin=5, cout=3), 4),  # rows no window reads
    (dict(kernel=(5, 3), stride=(1, 2), padding=(2, 1), hw=(6, 7), cin=2, cout=3), 2),
])
def test_images_back_to_back_on_the_schedule(geom, lanes):
    """Three images streamed back to back: every output exact, and the last output at the
    cycle the row schedule gives for the third image (plus the fixed drain)."""
    net, layer = _conv(sum(geom["kernel"]) + lanes, **geom)
    maps = np.random.default_rng(lanes).integers(0, 256, size=(3,) + tuple(layer.in_shape))
    e = make_engine(layer, lanes=lanes, sparse="stream")
    mm, cycles = _images(layer, e, maps, layer.in_shape)
    assert mm is None, str(mm)
    drain = e.expected_cycles - e.stream.schedule()[0]
    assert cycles == e.stream.schedule(3)[-1] + drain
    # under back-pressure and bubbles the values stay exact
    mm, _ = _images(layer, make_engine(layer, lanes=lanes, sparse="stream"), maps, layer.in_shape,
                    ready_prob=0.5, valid_prob=0.6, seed=lanes)
    assert mm is None, str(mm)


@pytest.mark.parametrize("op,shape,kernel,stride,padding", [
    ("maxpool", (3, 6, 6), (2, 2), (2, 2), (0, 0)),
    ("avgpool", (2, 5, 7), (3, 3), (2, 1), (1, 1)),
    ("gap", (4, 3, 5), None, None, None),
])
def test_pooling_images_back_to_back(op, shape, kernel, stride, padding):
    layer = pool_layer(op, shape, kernel or (1, 1), stride, padding or (0, 0), seed=3)
    maps = np.random.default_rng(3).integers(0, 256, size=(3,) + shape)
    e = make_engine(layer, sparse="stream")
    mm, cycles = _images(layer, e, maps, shape)
    assert mm is None, str(mm)
    if op == "gap":  # a running sum: each image its map, then its C sums out
        assert "sums" in e.memory_bits and cycles == 3 * (int(np.prod(shape)) + shape[0]) + 1
    else:
        assert cycles == e.stream.schedule(3)[-1] + e.expected_cycles - e.stream.schedule()[0]


def _memories(engine) -> dict[str, tuple[int, int, int]]:
    """Per memory of the elaborated engine: width, depth and read ports (from its RTLIL)."""
    import re

    text = rtlil.convert(engine, name="t", emit_src=False)
    mems = {name: (int(w), int(d), 0) for w, d, name in re.findall(r"^\s*memory width (\d+) size (\d+) \\(\S+)",
                                                                     text, re.M)}
    for name in re.findall(r"cell \$memrd\S* .*?parameter \\MEMID \"\\\\(\S+)\"", text, re.S):
        w, d, n = mems[name]
        mems[name] = (w, d, n + 1)
    return mems


@pytest.mark.parametrize("lanes,groups_expected", [(8, 2), (16, 4), (2, 1)])
def test_line_buffer_rows_and_one_read_port(lanes, groups_expected):
    """A 3x3 conv over a 7-wide, 4-channel map: kh + sh = 4 rows of 7 pixels, words of P/G
    channels, one read port however many lanes (the dense engine's activation memory has a
    port per lane and the whole map)."""
    net, layer = _conv(1, kernel=(3, 3), stride=(1, 1), padding=(1, 1), hw=(9, 7), cin=4, cout=4)
    e = make_engine(layer, lanes=lanes, sparse="stream")
    g = e.geometry
    assert isinstance(e, StreamConvEngine) and g.groups == groups_expected
    word = g.lanes_per_group
    assert e.stream.rows == 4 and e.stream.word == word
    width, depth, ports = _memories(e)["lb_mem"]
    assert (width, depth) == (word * layer.input.bits, 4 * 7 * -(-4 // word)) and ports == 1
    assert e.memory_bits["line_buffer"] == width * depth and "activations" not in e.memory_bits
    dense = make_engine(layer, lanes=lanes)
    assert _memories(dense)["act_mem"][1:] == (4 * 9 * 7, dense.activation_read_ports)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(3, 7), st.integers(3, 6), st.integers(1, 3),
       st.integers(1, 2), st.integers(0, 1), st.sampled_from([1, 2, 3, 4, 8]),
       st.sampled_from(["fixed8", "fixed3", "shift4", "ternary"]), st.integers(0, 2**16))
def test_random_shapes_bit_exact_with_schedule_cycles(cin, cout, h, w, k, s, p, lanes, name, seed):
    """Random shapes, widths and lane counts, extreme activations at the map's corners: the
    stream engine equals the golden model, in the schedule's cycles."""
    if k > h or k > w or p >= k:
        return
    net = random_network(format_for_test(name), seed=seed, cin=cin, hw=(h, w), cout=cout, kernel=(k, k),
                         stride=(s, s), padding=(p, p))
    layer = net.layers[0]
    x = np.random.default_rng(seed).integers(0, 256, size=layer.in_shape)
    x.flat[0], x.flat[-1] = 0, 255
    e = make_engine(layer, lanes=lanes, sparse="stream")
    mm, cycles = _images(layer, e, x[None], layer.in_shape)
    assert mm is None, str(mm)
    assert cycles == e.expected_cycles


def test_refusals_name_the_layer():
    grouped = grouped_conv_layer(format_for_test("fixed8"), cin=6, cout=3, groups=3, hw=5, kernel=(1, 1))
    with pytest.raises(ValueError, match=r"layer '.*': 3 groups of 2 input and 1 output channels take lanes G\*K "
                                         r"with G dividing 1 and K dividing 2, not 16"):
        make_engine(grouped, lanes=16, sparse="stream")
    dw = grouped_conv_layer(format_for_test("fixed8"), cin=4, cout=4, groups=4, hw=5, kernel=(3, 3))
    with pytest.raises(ValueError, match=r"at most kh\*kw = 9 lanes"):
        make_engine(dw, lanes=16, sparse="stream")
    net, conv = _conv(0, kernel=(3, 3), hw=5, cin=2, cout=2)
    with pytest.raises(ValueError, match="no tap table"):
        make_engine(conv, lanes=4, sparse="stream", tap_fault=0)
    pq = random_network(format_for_test("pq4"), seed=0, cin=4, hw=5, cout=4).layers[0]
    with pytest.raises(ValueError, match="an engine of its own"):
        make_engine(pq, lanes=4, sparse="stream")
