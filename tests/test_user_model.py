"""Bring your own model: a file outside the repo, another topology, batch norm folded,
through quantize → verilog → cosim (bit-exact) → gates with the documented commands."""
import json
import textwrap

import numpy as np
import pytest
import torch

from quantrtl.cli import main

USER_MODEL = textwrap.dedent("""
    import torch.nn as nn

    class Net(nn.Module):
        # not an nn.Sequential: its children run in order
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                nn.Conv2d(6, 12, 2), nn.ReLU(), nn.MaxPool2d(3, stride=1, padding=1))
            self.flat = nn.Flatten()
            self.head = nn.Sequential(nn.Linear(12 * 3 * 3, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Linear(20, 10))

        def forward(self, x):
            return self.head(self.flat(self.features(x)))

    def factory():
        return Net()

    def bad_factory():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Softmax(dim=1))
""")


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """The model file and a briefly trained state dict (batch norm statistics included)."""
    from quantrtl.model.digits import load_split
    from quantrtl.model.training.net import fit
    from quantrtl.model.training.user import load_factory

    d = tmp_path_factory.mktemp("user")
    (d / "mynet.py").write_text(USER_MODEL)
    net = load_factory(f"{d / 'mynet.py'}:factory")()
    train, _ = load_split()
    fit(net, train, epochs=4, lr=5e-3, batch_size=32, seed=0)
    torch.save(net.state_dict(), d / "mynet.pt")
    return d


@pytest.mark.slow
def test_user_model_end_to_end(user_model, tmp_path, capsys):
    spec = ["--model", f"{user_model / 'mynet.py'}:factory", "--weights", str(user_model / "mynet.pt")]
    assert main(["quantize", "--quantizer", "shift4", *spec, "--out", str(tmp_path / "a"),
                 "--json", str(tmp_path / "q.json")]) == 0
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["golden_agreement"] >= 0.99 and q["golden_accuracy"] > 0.8
    art = tmp_path / "a" / "mynet-shift4.json"
    layers = json.loads(art.read_text())["layers"]
    assert [l["op"] for l in layers] == ["conv2d", "conv2d", "maxpool", "linear", "linear"]  # batch norms folded
    assert layers[0]["stride"] == [2, 2] and layers[2]["padding"] == [1, 1]

    assert main(["verilog", "--quantizer", "shift4", "--artifact", str(art), "--out", str(tmp_path / "v")]) == 0
    assert (tmp_path / "v" / "mynet_shift4_top.v").is_file()

    assert main(["cosim", "--quantizer", "shift4", "--artifact", str(art), "--image", "11", "--lanes", "4",
                 "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["bit_exact"] and c["cycles"] == c["expected_cycles"]
    assert [l["name"] for l in c["layers"]] == [l["name"] for l in layers]

    assert main(["gates", "--quantizers", "shift4,binary", *spec, "--throughput", "4", "--out", str(tmp_path / "g"),
                 "--json", str(tmp_path / "g.json")]) == 0
    g = json.loads((tmp_path / "g.json").read_text())
    assert g["layer"] == "features_3" and all(r["gates_total"] > 0 for r in g["rows"])


def test_batch_norm_folding_is_exact(user_model):
    from quantrtl.model.digits import load_split
    from quantrtl.model.training.user import load_factory, load_user_model

    spec = f"{user_model / 'mynet.py'}:factory"
    original = load_factory(spec)()
    original.load_state_dict(torch.load(user_model / "mynet.pt"))
    original.eval()
    graph = load_user_model(spec, str(user_model / "mynet.pt"))
    x = torch.tensor(load_split()[1].float_inputs()[:32])
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in graph.modules())
    assert {n.kind for n in graph.nodes} <= {"conv2d", "linear", "relu", "maxpool"}
    torch.testing.assert_close(graph(x), original(x), rtol=1e-5, atol=1e-5)


@pytest.mark.icarus
def test_user_model_with_calibration_file(user_model, tmp_path):
    """Calibration data that is not centred on 0 gives the input a non-zero zero point:
    ``b - Z * sum(w)`` folding and zero-point padding (the first conv pads by 1) then run
    through the whole RTL flow, bit-exact on calibration images."""
    from quantrtl.model.digits import load_split
    from quantrtl.model.numbers import artifact
    from quantrtl import flows

    x = load_split()[0].float_inputs()[:200]
    np.save(tmp_path / "calib.npy", x)
    src = flows.ModelSource(model=f"{user_model / 'mynet.py'}:factory", weights=str(user_model / "mynet.pt"),
                            calib=str(tmp_path / "calib.npy"))
    r = flows.quantize_flow("fixed8", tmp_path / "a", finetune=0, source=src)
    assert r.golden_accuracy is None and r.golden_agreement >= 0.99
    with pytest.raises(ValueError, match="fine-tuning needs labels"):
        flows.quantize_network("fixed8", 2, src)
    # inputs shifted off 0: the model sees data it was not trained on (agreement is not the
    # point here), the RTL must still compute exactly what the golden model computes
    np.save(tmp_path / "shifted.npy", x - 0.3)
    src = flows.ModelSource(model=src.model, weights=src.weights, calib=str(tmp_path / "shifted.npy"))
    r = flows.quantize_flow("fixed8", tmp_path / "b", finetune=0, source=src)
    net = artifact.load(r.artifact)
    first = net.layers[0]
    assert net.input.zero_point == first.input.zero_point == 77 and tuple(first.padding) == (1, 1)
    c = flows.cosim_flow("fixed8", artifact_path=r.artifact, source=flows.ModelSource(calib=src.calib), images="0-2",
                         lanes=4,
                         build_root=tmp_path / "cosim")
    assert c.bit_exact and c.images == 3 and c.rtl_accuracy is None, c.first_mismatch
    assert c.image == "calib[0]..calib[2] (3 images)" and c.rtl_golden_agree == 3


@pytest.mark.parametrize("spec,match", [
    ("{d}/mynet.py:bad_factory", r"node '1' \(Softmax\) is not supported; supported: Conv2d \(any stride"),
    ("{d}/mynet.py:nothing", r"has no callable 'nothing'"),
    ("{d}/missing.py:factory", r"file .*missing.py not found"),
    ("{d}/mynet.py", r"expected path/to/file.py:factory"),
])
def test_user_model_errors(user_model, tmp_path, capsys, spec, match):
    import re

    rc = main(["quantize", "--quantizer", "fixed8", "--model", spec.format(d=user_model), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()


def test_user_model_wrong_weights(user_model, tmp_path, capsys):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "w.pt")
    rc = main(["quantize", "--quantizer", "fixed8", "--model", f"{user_model / 'mynet.py'}:factory",
               "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "cannot load checkpoint" in capsys.readouterr().err
