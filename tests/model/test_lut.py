"""Table activations (docs/integer-semantics.md §11): the table against an element-by-element
reference, the artifact's checks, the PyTorch forms, the fake-quantized model equal to the
golden model, and a model of table activations co-simulated on Icarus and Verilator."""
import json
import math
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.nn import functional as F

from quantrtl.model.numbers.formats import ActivationFormat
from quantrtl.model.numbers.lut import FUNCTIONS, build_table, function_names

# The functions written out once more, per element, with Python's math module.
REFERENCE = {
    "sigmoid": lambda x: 1 / (1 + math.exp(-x)),
    "tanh": math.tanh,
    "hardswish": lambda x: x * min(max(x + 3, 0), 6) / 6,
    "hardsigmoid": lambda x: min(max(x / 6 + 0.5, 0), 1),
    "silu": lambda x: x / (1 + math.exp(-x)),
    "gelu": lambda x: x * (1 + math.erf(x / math.sqrt(2))) / 2,
    "leakyrelu": lambda x: x if x >= 0 else 0.01 * x,
    "elu": lambda x: x if x > 0 else math.exp(x) - 1,
    "clamp": lambda x: min(max(x, 0), 6),
}


def reference_table(name, qin: ActivationFormat, qout: ActivationFormat) -> list[int]:
    out = []
    for q in range(1 << qin.bits):
        y = REFERENCE[name](qin.scale * (q - qin.zero_point))
        out.append(min(max(round(y / qout.scale) + qout.zero_point, 0), qout.qmax))  # round(): half to even
    return out


def test_every_function_has_a_reference():
    assert set(REFERENCE) == set(function_names())


fmt = st.builds(lambda bits, s, z: ActivationFormat(scale=s, zero_point=min(z, (1 << bits) - 1), bits=bits),
                st.integers(2, 8), st.floats(1e-3, 0.5), st.integers(0, 255))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(function_names()), qin=fmt, qout=fmt)
def test_table_matches_the_reference(name, qin, qout):
    got = build_table({"name": name}, qin, qout)
    want = reference_table(name, qin, qout)
    # float64 against math: an entry may differ only where the scaled value is within
    # 1e-9 of a rounding boundary
    diff = [i for i, (a, b) in enumerate(zip(got.tolist(), want)) if a != b]
    for i in diff:
        y = REFERENCE[name](qin.scale * (i - qin.zero_point)) / qout.scale
        assert abs(y - math.floor(y) - 0.5) < 1e-9, (name, i, got[i], want[i])
    assert got.shape == (1 << qin.bits,) and got.min() >= 0 and got.max() <= qout.qmax


def test_extreme_formats():
    """The widest and narrowest scales and zero points at both ends stay in range."""
    for bits in (2, 8):
        for z in (0, (1 << bits) - 1):
            for s in (1e-6, 10.0):
                q = ActivationFormat(scale=s, zero_point=z, bits=bits)
                for f in FUNCTIONS:
                    t = build_table({"name": f.name}, q, q)
                    assert t.shape == (1 << bits,) and 0 <= t.min() and t.max() <= q.qmax


@pytest.mark.parametrize("spec,match", [
    ({"name": "softmax"}, r"unknown table function 'softmax' \(supported: sigmoid, tanh"),
    ({"name": "leakyrelu", "beta": 1.0}, r"function 'leakyrelu' has no parameter 'beta'"),
    ({"name": "elu", "alpha": float("nan")}, r"alpha must be a finite number"),
    ({"name": "gelu", "approximate": "fast"}, r"approximate must be one of none, tanh"),
    ({"name": "clamp", "lo": 2.0, "hi": 1.0}, r"lo 2.0 must be below hi 1.0"),
])
def test_bad_functions_are_named(spec, match):
    q = ActivationFormat(scale=0.1)
    with pytest.raises(ValueError, match=match):
        build_table(spec, q, q)


def _lut_net(spec=None):
    from quantrtl.model.numbers.artifact import Layer, QuantizedNetwork

    qin, qout = ActivationFormat(scale=0.05, zero_point=128), ActivationFormat(scale=1 / 255)
    spec = spec or {"name": "sigmoid"}
    layer = Layer(name="act", op="lut", in_shape=(2, 3, 3), out_shape=(2, 3, 3), input=qin, output=qout,
                  function=spec, table=build_table(spec, qin, qout))
    return QuantizedNetwork(name="lutnet", quantizer="none", input_shape=(2, 3, 3), input=qin, layers=[layer])


def test_artifact_round_trip_and_checks(tmp_path):
    from quantrtl.model.numbers.artifact import ArtifactError, load, save, validate
    from quantrtl.sim import golden

    net = _lut_net({"name": "leakyrelu", "alpha": 0.2})
    back = load(save(net, tmp_path / "n"))
    layer = back.layers[0]
    assert layer.function == {"name": "leakyrelu", "alpha": 0.2} and np.array_equal(layer.table, net.layers[0].table)
    doc = json.loads((tmp_path / "n.json").read_text())
    assert doc["layers"][0]["function"] == {"name": "leakyrelu", "alpha": 0.2}
    x = np.arange(256).reshape(1, 256)[:, :18].reshape(1, 2, 3, 3)
    assert np.array_equal(golden.run(back, x).logits, layer.table[x])
    bad = _lut_net()
    bad.layers[0].table = bad.layers[0].table[:100]
    with pytest.raises(ArtifactError, match=r"layer 'act': table must be 256 integers"):
        validate(bad)
    bad.layers[0].table = np.full(256, 300)
    with pytest.raises(ArtifactError, match=r"table values must lie in the output's \[0, 255\]"):
        validate(bad)
    bad = _lut_net()
    bad.layers[0].function = {"name": "softplus"}
    with pytest.raises(ArtifactError, match=r"layer 'act': unknown table function 'softplus'"):
        validate(bad)
    bad = _lut_net()
    bad.layers[0].activation = "relu"
    with pytest.raises(ArtifactError, match=r"lut cannot have activation 'relu'"):
        validate(bad)


class Forms(nn.Module):
    """Every PyTorch form of a table activation, one after another."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3, padding=1)
        self.mods = nn.Sequential(nn.Sigmoid(), nn.Tanh(), nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU(),
                                  nn.GELU(approximate="tanh"), nn.LeakyReLU(0.2), nn.ELU(0.5), nn.Hardtanh(-1, 2))

    def forward(self, x):
        x = self.mods(self.c(x))
        x = F.gelu(F.elu(F.leaky_relu(torch.tanh(torch.sigmoid(x)), 0.3)))
        x = F.hardtanh(F.hardsigmoid(F.hardswish(F.silu(x))))
        x = torch.clamp(x.sigmoid().tanh(), -0.5, 0.5)
        return x.clamp(-0.25, 0.25)


def test_every_torch_form_traces_to_its_table_function():
    from quantrtl.model.training.graph import trace

    m = Forms().eval()
    g = trace(m)
    specs = [n.module.spec for n in g.nodes if n.kind == "lut"]
    assert specs == [
        {"name": "sigmoid"}, {"name": "tanh"}, {"name": "hardswish"}, {"name": "hardsigmoid"}, {"name": "silu"},
        {"name": "gelu", "approximate": "tanh"}, {"name": "leakyrelu", "alpha": 0.2}, {"name": "elu", "alpha": 0.5},
        {"name": "clamp", "lo": -1.0, "hi": 2.0},
        {"name": "sigmoid"}, {"name": "tanh"}, {"name": "leakyrelu", "alpha": 0.3}, {"name": "elu", "alpha": 1.0},
        {"name": "gelu", "approximate": "none"}, {"name": "silu"}, {"name": "hardswish"}, {"name": "hardsigmoid"},
        {"name": "clamp", "lo": -1.0, "hi": 1.0}, {"name": "sigmoid"}, {"name": "tanh"},
        {"name": "clamp", "lo": -0.5, "hi": 0.5}, {"name": "clamp", "lo": -0.25, "hi": 0.25}]
    x = torch.randn(4, 1, 5, 5)
    torch.testing.assert_close(g(x), m(x))


LUT_MODEL = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 6, 3, padding=1)
            self.act = nn.Hardswish()
            self.dw = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)
            self.pw = nn.Conv2d(6, 8, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = F.silu(self.dw(self.act(self.stem(x))))
            x = torch.sigmoid(F.leaky_relu(self.pw(x), 0.1))
            return self.fc(torch.tanh(self.pool(x)).flatten(1))

    def factory():
        torch.manual_seed(0)
        return Net()
""")


@pytest.fixture(scope="module")
def lut_artifact(tmp_path_factory):
    from quantrtl.cli import main

    d = tmp_path_factory.mktemp("lut")
    (d / "lutnet.py").write_text(LUT_MODEL)
    assert main(["quantize", "--quantizer", "shift4", "--model", f"{d / 'lutnet.py'}:factory", "--finetune", "2",
                 "--out", str(d / "a"), "--json", str(d / "q.json")]) == 0
    return d


def test_fake_quantized_model_equals_the_golden_model(lut_artifact):
    """The fake-quantized forward pass applies exactly the exported tables: every layer of
    the golden model matches it (worst difference 0 codes), and so do the predictions."""
    q = json.loads((lut_artifact / "q.json").read_text())
    assert q["golden_agreement"] == 1.0, q
    layers = json.loads((lut_artifact / "a" / "lutnet-shift4.json").read_text())["layers"]
    assert [l["op"] for l in layers].count("lut") == 5


@pytest.mark.icarus
@pytest.mark.verilator
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_table_activations_cosim_bit_exact(lut_artifact, tmp_path, simulator):
    from quantrtl.cli import main

    art = lut_artifact / "a" / "lutnet-shift4.json"
    assert main(["cosim", "--quantizer", "shift4", "--artifact", str(art), "--images", "0-3", "--lanes", "4",
                 "--simulator", simulator, "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["bit_exact"] and c["cycles"] == c["expected_cycles"], c
