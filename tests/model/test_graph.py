"""Graph networks: tracing with torch.fx, the graph artifact, and the integer semantics of
add, average pooling, concat and grouped convolution against references written here
(Python integers and Fractions, loops over every output element; docs/integer-semantics.md
§2, §8–§10)."""
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quantrtl.model.numbers import artifact
from quantrtl.model.numbers.artifact import ArtifactError, Layer, QuantizedNetwork, add_multipliers, \
    quantize_multiplier
from quantrtl.model.numbers.formats import ActivationFormat
from quantrtl.model.training.graph import FloatGraph, UnsupportedLayerError, trace
from quantrtl.sim import golden


class Residual(nn.Module):
    """Written as a user would: x + f(x), groups=C, AdaptiveAvgPool2d(1), view(n, -1)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw = nn.Conv2d(4, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        x = nn.functional.relu(self.bn(self.stem(x)))
        y = self.pw(torch.clamp(self.dw(x), 0, 6))
        x = torch.relu(x + y)
        z = self.pool(torch.cat([x, y], dim=1))
        return self.fc(self.drop(z.view(z.size(0), -1)))


def _randomized(m: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
    return m.eval()


def test_trace_residual_depthwise_gap_concat():
    m = _randomized(Residual())
    g = trace(m)
    assert [(n.name, n.kind, n.inputs) for n in g.nodes] == [
        ("stem", "conv2d", ("input",)), ("relu", "relu", ("stem",)), ("dw", "conv2d", ("relu",)),
        ("clamp", "relu6", ("dw",)), ("pw", "conv2d", ("clamp",)), ("add", "add", ("relu", "pw")),
        ("relu_1", "relu", ("add",)), ("cat", "concat", ("relu_1", "pw")), ("pool", "gap", ("cat",)),
        ("fc", "linear", ("pool",))]
    assert not any(isinstance(x, nn.BatchNorm2d) for x in g.modules())  # folded into stem
    assert g.nodes[2].module.groups == 4
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(g(x), m(x), rtol=1e-5, atol=1e-5)


class Cumsum(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 1)


class Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.up(x)


class Difference(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return self.a(x) - self.b(x)


class AddConstant(nn.Module):
    def forward(self, x):
        return x + 1


class ClampBelow(nn.Module):
    def forward(self, x):
        return torch.clamp(x, 1)


class Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


@pytest.mark.parametrize("model,match", [
    (Cumsum(), r"node 'cumsum' \(function cumsum\) is not supported; supported: Conv2d.*table activations"),
    (Upsample(), r"node 'up' \(Upsample\) is not supported"),
    (Difference(), r"node 'sub' \(function sub\) is not supported"),
    (AddConstant(), r"operand 1 is a constant"),
    (Branchy(), r"torch.fx cannot trace its forward"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2)), r"node '0' \(Conv2d\) is not supported: needs dilation 1"),
    (nn.Sequential(nn.AdaptiveAvgPool2d(2)), r"only output size 1"),
    (nn.Sequential(nn.ReLU(), nn.BatchNorm2d(1)), r"a batch norm must directly follow a Conv2d or Linear"),
    (ClampBelow(), r"node 'clamp' \(clamp\(1, None\)\) is not supported: a clamp needs constant bounds"),
])
def test_unsupported_nodes_are_named(model, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        trace(model)


def test_relu6_is_fused_and_caps_the_calibrated_range():
    """ReLU6 after a conv: the float graph clamps at 6, the fake-quant model clamps before
    its output quantizer, so the calibrated output format ends at or below 6; a ReLU6 with
    nothing to fuse into is a table activation, clamp(0, 6)."""
    from quantrtl.model.digits import load_split
    from quantrtl.model.numbers.families import parse_format
    from quantrtl.model.training.export import export
    from quantrtl.model.training.quantize import QuantModel, quantize_model

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU6(), nn.Flatten(), nn.Linear(256, 10)).eval()
    with torch.no_grad():
        m[0].weight.mul_(20)  # activations well above 6
    train, _ = load_split()
    x = torch.tensor(train.float_inputs()[:16])
    assert float(torch.relu(m[0](x)).max()) > 6
    torch.testing.assert_close(trace(m)(x), m(x))
    net = export(quantize_model(m, parse_format("fixed8"), train), (1, 8, 8))
    conv = net.layer("0")
    assert conv.activation == "relu" and conv.output.scale * (255 - conv.output.zero_point) <= 6.0 + 1e-6
    lone = QuantModel(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU6()), parse_format("fixed8"))
    assert lone.steps["2"].function.spec == {"name": "clamp", "lo": 0.0, "hi": 6.0}


def test_cli_rejects_an_unsupported_node_and_writes_nothing(tmp_path, capsys):
    from quantrtl.cli import main

    f = tmp_path / "m.py"
    f.write_text("import torch\nfrom torch import nn\n"
                 "class M(nn.Module):\n"
                 "    def __init__(self):\n        super().__init__()\n        self.c = nn.Conv2d(1, 2, 3)\n"
                 "    def forward(self, x):\n        return torch.cumsum(self.c(x), 1)\n"
                 "def factory():\n    return M()\n")
    out = tmp_path / "out"
    assert main(["quantize", "--quantizer", "fixed8", "--model", f"{f}:factory", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "node 'cumsum' (function cumsum) is not supported" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


# ---- integer semantics against references written out element by element ----------

def _ref_round_shift(num: int, n: int) -> int:
    """floor(num / 2**n + 1/2) with Fractions (round half toward +infinity)."""
    q = Fraction(num, 1 << n) + Fraction(1, 2)
    return q.numerator // q.denominator


def _clamp(v, lo, hi):
    return max(lo, min(hi, v))


fmts = st.builds(lambda s, z: ActivationFormat(scale=s, zero_point=z), st.floats(1e-3, 4.0), st.integers(0, 255))


@settings(max_examples=40, deadline=None)
@given(fa=fmts, fb=fmts, fo=fmts, relu=st.booleans(), shape=st.tuples(st.integers(1, 3), st.integers(1, 4),
                                                                          st.integers(1, 4)), seed=st.integers(0, 99))
def test_add_against_fractions(fa, fb, fo, relu, shape, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(2, *shape))
    b = rng.integers(0, 256, size=(2, *shape))
    a.flat[0], b.flat[0] = 255, 0  # extremes
    try:
        consts = add_multipliers([fa.scale, fb.scale], fo.scale)
    except ArtifactError:
        return  # scales more than 2**31 apart: rejected at export
    (ma, n), (mb, _) = consts
    lo = fo.zero_point if relu else 0
    got = golden.add(a, b, fa.zero_point, fb.zero_point, [ma, mb], n, fo.zero_point, lo, 255)
    for i in range(a.size):
        num = ma * (int(a.flat[i]) - fa.zero_point) + mb * (int(b.flat[i]) - fb.zero_point)
        want = _clamp(fo.zero_point + _ref_round_shift(num, n), lo, 255)
        assert got.flat[i] == want, (i, got.flat[i], want)
        # and within one code of the real-valued sum
        real = (Fraction(fa.scale) * (int(a.flat[i]) - fa.zero_point)
                + Fraction(fb.scale) * (int(b.flat[i]) - fb.zero_point)) / Fraction(fo.scale)
        exact = _clamp(fo.zero_point + _ref_round_shift(int(real * (1 << 40)), 40), lo, 255)
        assert abs(want - exact) <= 1


@settings(max_examples=40, deadline=None)
@given(z=st.integers(0, 255), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6), k=st.integers(1, 3),
       s=st.integers(1, 3), p=st.integers(0, 1), seed=st.integers(0, 99), global_=st.booleans())
def test_average_pooling_against_fractions(z, c, h, w, k, s, p, seed, global_):
    if global_:
        k, s, p = None, None, 0
    elif k > h + 2 * p or k > w + 2 * p or 2 * p > k:
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(2, c, h, w))
    kernel = (h, w) if global_ else (k, k)
    stride = kernel if global_ else (s, s)
    m0, n = quantize_multiplier(1.0 / (kernel[0] * kernel[1]))
    got = golden.avgpool(x, kernel, stride, (p, p), z, m0, n, z, 0, 255)
    oh, ow = (h + 2 * p - kernel[0]) // stride[0] + 1, (w + 2 * p - kernel[1]) // stride[1] + 1
    assert got.shape == (2, c, oh, ow)
    for b in range(2):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    total = 0
                    for di in range(kernel[0]):
                        for dj in range(kernel[1]):
                            r, q = i * stride[0] + di - p, j * stride[1] + dj - p
                            if 0 <= r < h and 0 <= q < w:  # padding is the real zero
                                total += int(x[b, ch, r, q]) - z
                    want = _clamp(z + _ref_round_shift(total * m0, n), 0, 255)
                    assert got[b, ch, i, j] == want
                    mean = Fraction(total, kernel[0] * kernel[1])
                    assert abs(want - _clamp(z + _ref_round_shift(int(mean * (1 << 40)), 40), 0, 255)) <= 1


@settings(max_examples=30, deadline=None)
@given(fins=st.lists(fmts, min_size=2, max_size=3), fo=fmts, seed=st.integers(0, 99))
def test_concat_against_fractions(fins, fo, seed):
    rng = np.random.default_rng(seed)
    xs = [rng.integers(0, 256, size=(1, int(rng.integers(1, 3)), 2, 2)) for _ in fins]
    consts = [quantize_multiplier(f.scale / fo.scale) for f in fins]
    got = golden.concat(xs, fins, [m for m, _ in consts], [n for _, n in consts], fo)
    want = []
    for x, f, (m, n) in zip(xs, fins, consts):
        want.append(np.vectorize(lambda v: _clamp(fo.zero_point + _ref_round_shift((int(v) - f.zero_point) * m, n),
                                                  0, 255))(x))
    assert np.array_equal(got, np.concatenate(want, axis=1))
    same = [quantize_multiplier(1.0)] * 2  # an input already in the output format passes unchanged
    assert np.array_equal(golden.concat([xs[0], xs[0]], [fo, fo], [same[0][0]] * 2, [same[0][1]] * 2, fo),
                          np.concatenate([xs[0], xs[0]], axis=1))


@settings(max_examples=30, deadline=None)
@given(groups=st.integers(1, 3), per_in=st.integers(1, 2), per_out=st.integers(1, 2), k=st.sampled_from([1, 3]),
       stride=st.integers(1, 2), z=st.integers(0, 255), seed=st.integers(0, 99))
def test_grouped_convolution_against_loops(groups, per_in, per_out, k, stride, z, seed):
    rng = np.random.default_rng(seed)
    cin, cout, hw, pad = groups * per_in, groups * per_out, 4, k // 2
    x = rng.integers(0, 256, size=(1, cin, hw, hw))
    w = rng.integers(-128, 128, size=(cout, per_in, k, k))
    bias = rng.integers(-1000, 1000, size=cout)
    got = golden.conv2d_acc(x, w, bias, (stride, stride), (pad, pad), z, groups=groups)
    oh = (hw + 2 * pad - k) // stride + 1
    for o in range(cout):
        g = o // per_out
        for i in range(oh):
            for j in range(oh):
                acc = int(bias[o])
                for ci in range(per_in):
                    for di in range(k):
                        for dj in range(k):
                            r, q = i * stride + di - pad, j * stride + dj - pad
                            if 0 <= r < hw and 0 <= q < hw:
                                acc += int(w[o, ci, di, dj]) * (int(x[0, g * per_in + ci, r, q]) - z)
                assert got[0, o, i, j] == acc


# ---- the graph artifact ---------------------------------------------------------------

@pytest.fixture(scope="module")
def residual_run():
    """The residual digits network shipped with quantrtl, quantized (cached)."""
    from quantrtl import flows

    return flows.quantize_network("fixed8", source=flows.ModelSource(model="digits-res"))


def test_shipped_residual_network_quantizes_with_agreement(residual_run):
    net = residual_run.qnet
    assert residual_run.golden_agreement >= 0.99 and residual_run.golden_accuracy >= 0.9
    assert {l.op for l in net.layers} == {"conv2d", "add", "avgpool", "concat", "gap", "linear"}
    assert not net.is_chain and net.layer("dw").groups == 8 and net.layer("add").activation == "relu"
    assert net.sources(net.layer("add")) == ("stem", "pw") and net.sources(net.layer("cat")) == ("pool", "conv3")


def test_per_node_codes_within_one_lsb_of_fake_quant(residual_run):
    """Each node of the fake-quant model, fed the golden model's inputs of that node,
    gives codes within one LSB of the golden model's on the digits test split."""
    from quantrtl.model.digits import load_split
    from quantrtl.model.training import net as tnet
    from quantrtl.model.training.export import export
    from quantrtl.model.training.quantize import QuantAvgPool, QuantLayer, quantize_model
    from quantrtl.model.numbers.families import parse_format

    train, test = load_split()
    shipped = tnet.SHIPPED["digits-res"]
    qm = quantize_model(tnet.load_checkpoint(shipped.checkpoint, shipped.factory), parse_format("fixed8"), train)
    net = export(qm, tuple(test.x.shape[1:]))
    g = golden.run(net, test.x)
    outs = {**g.outputs, "input": test.x}
    worst = {}
    with torch.no_grad():
        for name, step, ins, in_fmts in qm.walk():
            xs = [torch.tensor(f.dequantize(outs[i]), dtype=torch.float32) for i, f in zip(ins, in_fmts)]
            if isinstance(step, QuantLayer):
                step.in_shape = tuple(xs[0].shape[1:])
                y = step(xs[0], in_fmts[0])
            elif isinstance(step, QuantAvgPool):
                y = step(xs[0], in_fmts[0])
            else:
                y = step(*xs)
            layer = net.layer(name)
            codes = layer.output.quantize(y.numpy())
            worst[name] = int(np.abs(codes.reshape(g.outputs[name].shape) - g.outputs[name]).max())
    assert max(worst.values()) <= 1, worst
    agree = float((qm(torch.tensor(test.float_inputs())).argmax(1).numpy() == g.predicted).mean())
    assert agree >= 0.99


def test_graph_artifact_round_trip_and_version_1(residual_run, tmp_path):
    from quantrtl import flows

    net = residual_run.qnet
    path = artifact.save(net, tmp_path / "res")
    again = artifact.load(path)
    x = np.random.default_rng(0).integers(0, 17, size=(4, 1, 8, 8))
    assert np.array_equal(golden.run(again, x).logits, golden.run(net, x).logits)
    # a version-1 artifact (a chain, no inputs, no groups) still loads
    import json

    chain = flows.quantize_network("fixed8").qnet
    p1 = artifact.save(chain, tmp_path / "chain")
    doc = json.loads(p1.read_text())
    doc["version"] = 1
    for l in doc["layers"]:
        l.pop("inputs")
        l.pop("groups", None)
    p1.write_text(json.dumps(doc))
    assert artifact.load(p1).is_chain


def _edit(net: QuantizedNetwork, name: str, **kw) -> QuantizedNetwork:
    import copy

    n2 = copy.deepcopy(net)
    for k, v in kw.items():
        setattr(n2.layer(name), k, v)
    return n2


@pytest.mark.parametrize("name,kw,match", [
    ("add", {"inputs": ("stem", "nowhere")}, r"layer 'add': input 'nowhere' is not the network input or a layer before"),
    ("add", {"inputs": ("stem",)}, r"layer 'add': add cannot read 1 inputs"),
    ("cat", {"inputs": ("pool", "fc")}, r"layer 'cat': input 'fc' is not the network input or a layer before it"),
    ("cat", lambda n: {"inputs": ("pool", "pool"), "input_formats": (n.layer("pool").output,) * 2},
     r"layer 'conv3': nothing reads its output"),
    ("add", {"m0": np.array([1, 2])}, r"add needs one shift and multipliers"),
    ("gap", {"kernel": (2, 2)}, r"gap's kernel \(2, 2\) must be the whole map"),
    ("dw", {"groups": 3}, r"groups 3 must divide"),
])
def test_graph_validation(residual_run, name, kw, match):
    kw = kw(residual_run.qnet) if callable(kw) else kw
    with pytest.raises(ArtifactError, match=match):
        artifact.validate(_edit(residual_run.qnet, name, **kw))


def _user_residual_source() -> str:
    """The residual network as a user's file: the shipped class's source under another
    name, flattened with ``view(n, -1)`` as many users write it."""
    import inspect

    from quantrtl.model.training.net import DigitsRes

    body = inspect.getsource(DigitsRes).replace("class DigitsRes", "class MyResNet").replace(
        "return self.fc(torch.flatten(self.gap(z), 1))", "z = self.gap(z)\n        return self.fc(z.view(z.size(0), -1))")
    assert "z.view(z.size(0), -1)" in body
    return ("import torch\nfrom torch import nn\n\nNUM_CLASSES = 10\n\n\n" + body
            + "\n\ndef factory():\n    return MyResNet()\n")


@pytest.mark.icarus
def test_user_residual_model_quantize_and_cosim_every_node_in_icarus(tmp_path, capsys):
    """A residual + depthwise + global-average-pooling model written as a user would, with
    trained weights (the shipped residual network's, whose module names it shares):
    quantize, then co-simulate in Icarus, every node bit-exact."""
    import json

    from quantrtl.cli import main
    from quantrtl.model.training import net as tnet

    f = tmp_path / "myresnet.py"
    f.write_text(_user_residual_source())
    weights = str(tnet.SHIPPED["digits-res"].checkpoint)
    model = ["--model", f"{f}:factory", "--weights", weights]
    assert main(["quantize", "--quantizer", "fixed8", *model, "--finetune", "0", "--out", str(tmp_path / "a"),
                 "--json", str(tmp_path / "q.json")]) == 0
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["golden_agreement"] >= 0.99 and q["golden_accuracy"] >= 0.9
    # (--weights is a quantization's option: beside --artifact it is refused)
    assert main(["cosim", "--quantizer", "fixed8", "--artifact", q["artifact"], "--images", "0-1",
                 "--simulator", "icarus", "--lanes", "8", "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["bit_exact"] and c["bit_exact_images"] == 2 and c["cycles"] == c["expected_cycles"]
    assert [l["name"] for l in c["layers"]] == ["stem", "dw", "pw", "add", "conv2", "pool", "conv3", "cat", "gap", "fc"]
    assert all(l["bit_exact"] for l in c["layers"])


@pytest.mark.slow
def test_graph_network_verilog_and_gates(residual_run, tmp_path):
    """Every command takes the residual network: one layer's engine (the depthwise conv),
    the whole top (its skip and join buffers in the memory report), and the gate
    comparison of its largest conv across quantizers."""
    import json

    from quantrtl import flows
    from quantrtl.cli import main

    src = ["--model", "digits-res"]
    assert main(["verilog", "--quantizer", "fixed8", *src, "--layer", "dw", "--out", str(tmp_path / "v")]) == 0
    d = json.loads(next((tmp_path / "v").glob("*_dw.json")).read_text())
    assert d["parameters"]["layers"][0]["conv_groups"] == 8
    assert main(["verilog", "--quantizer", "fixed8", *src, "--out", str(tmp_path / "t")]) == 0
    top = json.loads(next((tmp_path / "t").glob("*_top.json")).read_text())
    assert top["memory_bits"]["join_buffers"] == 2 * 8 * (2 * 512 + 256 + 256)  # double buffers
    ops = {l["name"]: l for l in top["parameters"]["layers"]}
    assert ops["cat"]["inputs"] == ["pool", "conv3"] and ops["gap"]["cycle_formula"]
    r = flows.gates_flow(["fixed8", "shift4"], throughput=8, out_dir=tmp_path / "g", cache_dir=tmp_path / "c",
                         source=flows.ModelSource(model="digits-res"))
    assert r.layer == "conv2" and r.equal_throughput and all(x["gates_total"] > 0 for x in r.rows)
