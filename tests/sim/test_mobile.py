"""The MobileNetV3-style shipped model (``--model digits-mobile``: hardswish, SiLU,
squeeze-and-excitation with a sigmoid gate and channel multiply, LeakyReLU, global
pooling): quantized with shift4 and fixed8, co-simulated bit-exactly on every node, from
torch.fx and from its ONNX export."""
import json

import pytest

from quantrtl import flows
from quantrtl.cli import main

QUANTIZERS = ("shift4", "fixed8")


@pytest.fixture(scope="module")
def mobile(tmp_path_factory):
    """Its artifacts, one per quantizer, through the command line."""
    d = tmp_path_factory.mktemp("mobile")
    out = {}
    for q in QUANTIZERS:
        assert main(["quantize", "--model", "digits-mobile", "--quantizer", q, "--out", str(d),
                     "--json", str(d / f"{q}.json")]) == 0
        out[q] = (d / f"digits_mobile-{q}.json", json.loads((d / f"{q}.json").read_text()))
    return out


@pytest.mark.parametrize("q", QUANTIZERS)
def test_mobile_quantizes_with_the_new_ops(mobile, q):
    art, r = mobile[q]
    assert r["golden_agreement"] >= 0.99 and r["golden_accuracy"] > 0.9, r
    ops = [l["op"] for l in json.loads(art.read_text())["layers"]]
    assert ops.count("lut") == 4 and ops.count("mul") == 1 and "gap" in ops, ops


@pytest.mark.parametrize("simulator,images", [
    pytest.param("verilator", "all", marks=[pytest.mark.verilator, pytest.mark.slow]),
    pytest.param("icarus", "0,17,359", marks=pytest.mark.icarus)])
@pytest.mark.parametrize("q", QUANTIZERS)
def test_mobile_cosim_bit_exact(mobile, q, simulator, images, tmp_path):
    """Every node of every image checked: the whole split on Verilator, three images streamed
    back to back on Icarus; one image's cycles and the streamed interval are the formulas'."""
    art, _ = mobile[q]
    r = flows.cosim_flow(q, simulator=simulator, artifact_path=str(art), build_root=tmp_path, images=images,
                         source=flows.ModelSource(model="digits-mobile"))
    n = 360 if images == "all" else 3
    assert r.bit_exact and r.images == r.bit_exact_images == r.rtl_golden_agree == n, r.first_mismatch
    assert all(l["bit_exact"] and l["mismatches"] == 0 for l in r.layers) and len(r.layers) == 13
    assert r.per_image[0]["cycles"] == r.expected_cycles
    t = r.throughput
    assert t["initiation_intervals"] == [t["expected_initiation_interval"]] * 2


@pytest.mark.icarus
def test_mobile_from_its_onnx_export(mobile, tmp_path):
    """torch.onnx.export of the same model: SiLU's Mul(x, Sigmoid(x)) is one table, the gate
    a Mul; it quantizes to the same accuracy as the traced model and co-simulates bit-exactly."""
    import torch

    from quantrtl.model.training.net import SHIPPED, load_checkpoint

    shipped = SHIPPED["digits-mobile"]
    path = tmp_path / "mobile.onnx"
    torch.onnx.export(load_checkpoint(shipped.checkpoint, shipped.factory), torch.zeros(1, 1, 8, 8), str(path),
                      dynamo=False)
    assert main(["quantize", "--quantizer", "shift4", "--model", str(path), "--out", str(tmp_path / "a"),
                 "--json", str(tmp_path / "q.json")]) == 0
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["golden_accuracy"] == mobile["shift4"][1]["golden_accuracy"] and q["golden_agreement"] >= 0.99
    layers = json.loads((tmp_path / "a" / "mobile-shift4.json").read_text())["layers"]
    assert [l["function"]["name"] for l in layers if l["op"] == "lut"] == ["hardswish", "silu", "sigmoid", "leakyrelu"]
    assert main(["cosim", "--quantizer", "shift4", "--artifact", str(tmp_path / "a" / "mobile-shift4.json"),
                 "--images", "0-2", "--json", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["bit_exact"]
