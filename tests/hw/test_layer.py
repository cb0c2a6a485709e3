"""Layer engines in the Amaranth simulator: output == golden, bit for bit, and cycles == formula."""
import numpy as np
import pytest

from quantrtl.hw.engines import make_engine
from quantrtl.hw.geometry import ConvGeometry, choose_groups
from quantrtl.hw.layer import ConvEngine
from quantrtl.model.numbers.layout import from_stream, to_stream
from quantrtl.model.numbers import artifact
from quantrtl.model.digits import load_split
from quantrtl.model.numbers.families import parse_format
from quantrtl.sim import golden
from quantrtl.sim.compare import first_mismatch
from tests.factories import REPRESENTATIVES, random_network
from tests.hw.streams import run_stream

DIGITS_FORMATS = list(dict.fromkeys(REPRESENTATIVES + ["shift3", "shift4", "shift6"]))


def run_layers(net, x, lanes, layers=None, ready_prob=1.0, valid_prob=1.0, pipeline=0, style=False):
    """Run each (chosen) layer's engine (of engine ``style``) on its golden input; return
    [(layer, mismatch, cycles, expected)]."""
    res = golden.run(net, x[None])
    prev_shape, inp, out = tuple(net.input_shape), x, []
    for layer in net.layers:
        if layers is None or layer.name in layers:
            src = prev_shape if layer.op == "linear" else None
            eng = make_engine(layer, lanes=lanes, pipeline=pipeline, source_shape=src, sparse=style,
                              source_shapes=[prev_shape])
            want = to_stream(res.outputs[layer.name][0], layer.out_shape)
            got, cycles = run_stream(eng, list(to_stream(inp, prev_shape)), len(want),
                                     ready_prob=ready_prob, valid_prob=valid_prob, seed=lanes)
            out.append((layer.name, first_mismatch(layer.name, want, got), cycles, eng.expected_cycles))
        inp, prev_shape = res.outputs[layer.name][0], tuple(layer.out_shape)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", DIGITS_FORMATS)
def test_digits_layers_bit_exact_with_formula_cycles(quantized, name):
    net = artifact.load(quantized(name).artifact)
    _, test = load_split()
    for layer, mm, cycles, expected in run_layers(net, test.x[0], lanes=8):
        assert mm is None, str(mm)
        assert cycles == expected, f"{layer}: {cycles} cycles simulated, formula says {expected}"


@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_digits_layers_other_lane_counts(quantized, lanes):
    net = artifact.load(quantized("shift4").artifact)
    _, test = load_split()
    for layer, mm, cycles, expected in run_layers(net, test.x[3], lanes=lanes, layers={"conv1", "fc", "pool"}):
        assert mm is None, str(mm)
        assert cycles == expected, (layer, cycles, expected)


GEOMETRIES = [
    dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), hw=(7, 6), cin=3, cout=5),
    dict(kernel=(1, 1), stride=(1, 1), padding=(0, 0), hw=5, cin=4, cout=7),
    dict(kernel=(5, 3), stride=(1, 2), padding=(2, 1), hw=(6, 7), cin=2, cout=3),
    dict(kernel=(2, 2), stride=(3, 1), padding=(0, 0), hw=(8, 5), cin=1, cout=9, pool=(3, 2, 1)),
    dict(kernel=(3, 3), stride=(1, 1), padding=(0, 0), hw=5, cin=3, cout=2, relu=False),
    dict(kernel=(1, 1), stride=(2, 2), padding=(0, 0), hw=6, cin=5, cout=4),
]


@pytest.mark.parametrize("style", ["dense", "stream"])
@pytest.mark.parametrize("geom", range(len(GEOMETRIES)))
@pytest.mark.parametrize("name,lanes", [("fixed8", 4), ("shift5", 8), ("binary", 3), ("ternary", 16), ("fixed3", 1)])
def test_random_geometries(name, lanes, geom, style):
    """Strides, paddings, odd kernels, non-zero input zero points, channel counts not a
    multiple of the groups (stream: nor of a line-buffer word), a stride above the kernel."""
    net = random_network(parse_format(name), seed=geom, **GEOMETRIES[geom])
    x = np.random.default_rng(geom).integers(0, 256, size=net.input_shape)
    for layer, mm, cycles, expected in run_layers(net, x, lanes=lanes, pipeline=geom % 3, style=style):
        assert mm is None, str(mm)
        assert cycles == expected, (layer, cycles, expected)


@pytest.mark.parametrize("name,style", [("fixed8", "dense"), ("binary", "dense"), ("fixed8", "stream")])
def test_back_pressure_and_bubbles_keep_results_exact(quantized, name, style):
    net = artifact.load(quantized(name).artifact)
    _, test = load_split()
    for layer, mm, cycles, expected in run_layers(net, test.x[1], lanes=8, ready_prob=0.6, valid_prob=0.7,
                                                  style=style):
        assert mm is None, str(mm)
        assert cycles >= expected


def test_mismatch_is_reported_and_the_check_can_fail(quantized):
    """Corrupt one weight code in a copy of the layer: the comparison names layer, index, values."""
    net = artifact.load(quantized("shift4").artifact)
    _, test = load_split()
    layer = net.layer("conv1")
    bad = layer.codes.copy()
    bad[2, 0, 1, 1] = 0 if bad[2, 0, 1, 1] else 1
    broken = artifact.Layer(**{**layer.__dict__, "codes": bad})
    eng = make_engine(broken, lanes=8)
    res = golden.run(net, test.x[:1])
    want = to_stream(res.outputs["conv1"][0], layer.out_shape)
    got, _ = run_stream(eng, list(to_stream(test.x[0], net.input_shape)), len(want))
    mm = first_mismatch("conv1", want, got)
    assert mm is not None and mm.layer == "conv1" and mm.expected != mm.got
    assert from_stream(np.arange(len(want)), layer.out_shape)[2].ravel().tolist().count(mm.index) == 1  # channel 2
    assert "layer 'conv1'" in str(mm) and f"index {mm.index}" in str(mm)


def test_choose_groups():
    assert choose_groups(9, 8, 8) == 8        # 3×3 kernel on one channel: one lane per output channel
    assert choose_groups(72, 16, 8) == 1      # long fan-in: one dot product
    assert choose_groups(256, 10, 8) == 1
    for k, c, p in [(9, 8, 8), (72, 16, 8), (5, 3, 4), (1, 7, 16)]:
        g = choose_groups(k, c, p)
        assert p % g == 0
        cost = lambda gg: -(-c // gg) * -(-k // (p // gg))
        assert all(cost(g) <= cost(gg) for gg in range(1, p + 1) if p % gg == 0 and (gg <= -(-k // (p // gg)) or gg == 1))


def test_geometry_formula_matches_documented_terms():
    g = ConvGeometry(cin=8, h=8, w=8, cout=16, kh=3, kw=3, ph=1, pw=1, lanes=8, groups=1)
    assert (g.fan_in, g.chunks, g.channel_groups, g.pixels) == (72, 9, 16, 64)
    assert g.cycles(pipeline=0) == 512 + 64 * 16 * 9 + 0 + 3 + 1


def test_engine_rejects_layers_without_weights(quantized):
    net = artifact.load(quantized("fixed8").artifact)
    with pytest.raises(ValueError, match="has no weights"):
        ConvEngine(net.layer("pool"))


@pytest.mark.parametrize("name", ["fixed8", "shift4", "ternary"])
def test_all_zero_layer_generates_and_is_exact(name):
    """All-zero weights and biases (a pruned-away layer): a 2-bit accumulator, bit-exact."""
    fmt = parse_format(name)
    net = random_network(fmt, seed=5)
    zero = int(fmt.encode(np.zeros((1, 1))).codes[0, 0])
    for layer in net.layers:
        if layer.has_weights:
            layer.codes = np.full_like(layer.codes, zero)
            layer.bias = np.zeros_like(layer.bias)
    assert [l.accumulator_bits for l in net.layers if l.has_weights] == [2, 2]
    x = np.random.default_rng(5).integers(0, 256, size=net.input_shape)
    for layer, mm, cycles, expected in run_layers(net, x, lanes=4):
        assert mm is None, str(mm)
        assert cycles == expected, (layer, cycles, expected)


@pytest.mark.parametrize("op,in_shape,kernel,stride,padding,rescale", [
    ("avgpool", (3, 6, 6), (2, 2), (2, 2), (0, 0), False),
    ("avgpool", (3, 6, 6), (2, 2), (2, 2), (0, 0), True),  # an output format of its own
    ("gap", (4, 3, 3), None, None, None, True),
    ("avgpool", (2, 5, 7), (3, 3), (2, 1), (1, 1), False),
    ("avgpool", (4, 4, 4), (3, 2), (1, 2), (1, 0), False),
    ("gap", (5, 4, 4), None, None, None, False),
    ("gap", (3, 7, 5), None, None, None, False),  # 35 taps: 1/35 is not a power of two
    ("maxpool", (3, 5, 5), (3, 3), (2, 2), (1, 1), False),
])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("style", ["dense", "stream"])
def test_pool_engines_bit_exact_with_formula_cycles(op, in_shape, kernel, stride, padding, rescale, seed, style):
    """Average and global average pooling (a non-zero input zero point, padding counted as
    the real zero) and max pooling against the golden model, under back-pressure too."""
    from tests.factories import pool_layer

    layer = pool_layer(op, in_shape, kernel or (1, 1), stride, padding or (0, 0), seed=seed, rescale=rescale)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=in_shape)
    x.flat[0], x.flat[-1] = 0, 255
    want = to_stream(golden.run_layer(layer, x[None])[0], layer.out_shape)
    eng = make_engine(layer, sparse=style)
    got, cycles = run_stream(eng, list(to_stream(x, in_shape)), len(want))
    assert first_mismatch(op, want, got) is None, str(first_mismatch(op, want, got))
    assert cycles == eng.expected_cycles
    got, _ = run_stream(make_engine(layer, sparse=style), list(to_stream(x, in_shape)), len(want), ready_prob=0.4,
                        valid_prob=0.6, seed=seed)
    assert first_mismatch(op, want, got) is None


GROUPED = [
    (4, 4, 4, 8, (3, 3), (1, 1), (1, 1), "dense"),   # depthwise
    (6, 6, 6, 3, (3, 3), (2, 2), (1, 1), "dense"),   # depthwise, strided
    (4, 8, 2, 4, (3, 3), (1, 1), (0, 0), "dense"),   # two groups, two outputs per input group
    (6, 3, 3, 16, (1, 1), (1, 1), (0, 0), "dense"),  # grouped pointwise
    (3, 6, 3, 1, (2, 3), (1, 2), (1, 1), "dense"),   # depthwise multiplier 2, one lane
    (4, 4, 4, 8, (3, 3), (1, 1), (1, 1), "stream"),  # depthwise, 8 lanes: one word of 8 channels (4 used)
    (6, 6, 6, 3, (3, 3), (2, 2), (1, 1), "stream"),  # strided, 3-channel words
    (5, 5, 5, 4, (3, 3), (1, 1), (1, 1), "stream"),  # 5 channels in words of 4: the last word partly empty
    (6, 6, 6, 1, (2, 3), (1, 2), (1, 1), "stream"),  # one lane
    (4, 8, 2, 4, (3, 3), (1, 1), (0, 0), "stream"),  # two groups: a channel group's outputs in one of them
    (6, 3, 3, 2, (1, 1), (1, 1), (0, 0), "stream"),  # grouped pointwise, one output per group
    (8, 8, 2, 8, (3, 3), (2, 1), (1, 1), "stream"),  # two groups of 4 in words of 4, strided
]


@pytest.mark.parametrize("name", ["fixed8", "shift4", "ternary", "binary"])
@pytest.mark.parametrize("cin,cout,groups,lanes,kernel,stride,padding,style", GROUPED)
def test_grouped_convolution_engine(name, cin, cout, groups, lanes, kernel, stride, padding, style):
    """Depthwise and grouped convolutions: each lane group reads its own output channel's
    input channels (a non-zero input zero point; padding reads it); the stream style's
    depthwise engine gives each lane a channel of a line-buffer word."""
    from tests.factories import format_for_test, grouped_conv_layer

    layer = grouped_conv_layer(format_for_test(name), seed=lanes, cin=cin, cout=cout, groups=groups, hw=(5, 6),
                               kernel=kernel, stride=stride, padding=padding)
    x = np.random.default_rng(groups).integers(0, 256, size=layer.in_shape)
    want = to_stream(golden.run_layer(layer, x[None])[0], layer.out_shape)
    eng = make_engine(layer, lanes=lanes, sparse=style)
    got, cycles = run_stream(eng, list(to_stream(x, layer.in_shape)), len(want), ready_prob=0.7, seed=lanes)
    assert first_mismatch("gconv", want, got) is None, str(first_mismatch("gconv", want, got))
    got, cycles = run_stream(make_engine(layer, lanes=lanes, sparse=style), list(to_stream(x, layer.in_shape)),
                             len(want))
    assert first_mismatch("gconv", want, got) is None and cycles == eng.expected_cycles
    assert eng.geometry.fan_in == cin // groups * kernel[0] * kernel[1]
