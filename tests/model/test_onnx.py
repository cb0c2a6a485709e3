"""QONNX / ONNX import: the shipped Brevitas example and a freshly exported Brevitas model
keep their own quantization, agree with QONNX's execution, and co-simulate bit-exactly;
bad files and unsupported nodes are refused by name."""
import json

import numpy as np
import pytest

from quantrtl.cli import main
from quantrtl.flows.quantize import compare_with_qonnx
from quantrtl.model.training.onnx_import import keep_network, load_onnx
from tests.brevitas_models import EXAMPLE, HIDDEN_EXAMPLE


def _quantize_keep(path, tmp_path, capsys=None):
    out = tmp_path / "a"
    assert main(["quantize", "--quantizer", "keep", "--model", str(path), "--out", str(out),
                 "--json", str(tmp_path / "q.json")]) == 0
    q = json.loads((tmp_path / "q.json").read_text())
    return q, next(out.glob("*.json"))


@pytest.mark.icarus
def test_shipped_example_keeps_its_quantization_and_cosims_bit_exact(tmp_path):
    """model/data/digits_brevitas.onnx (Brevitas: 8-bit input, stem and head; 4-bit
    depthwise and pointwise weights and activations; a residual add; average pooling)."""
    from quantrtl.model.numbers import artifact

    q, art = _quantize_keep(EXAMPLE, tmp_path)
    net = artifact.load(art)
    cmp = net.metadata["qonnx_comparison"]
    assert q["quantizer"] == "keep" and q["golden_agreement"] >= 0.99 and cmp["agreement"] >= 0.99
    assert cmp["max_code_difference"] and max(cmp["max_code_difference"].values()) <= 1, cmp
    assert {l.format.name for l in net.layers if l.has_weights} == {"fixed8", "fixed4"}
    assert net.layer("dw").groups == 8 and net.layer("pool").output != net.layer("pool").input
    assert main(["cosim", "--quantizer", "keep", "--model", str(EXAMPLE), "--artifact", str(art), "--images", "0-1",
                 "--simulator", "icarus", "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["bit_exact"] and c["bit_exact_images"] == 2 and all(l["bit_exact"] for l in c["layers"])


@pytest.mark.verilator
def test_residual_block_as_brevitas_users_write_it(tmp_path):
    """model/data/digits_brevitas_residual.onnx: ``QuantReLU(x + QuantConv2d(x))``, the
    conv branch without a Quant of its own (4-bit weights, 8-bit activations): the conv
    requantizes to a 16-bit code covering every value that can still change the add's
    output (docs/integer-semantics.md §8), bit-exact on the whole test split."""
    from quantrtl.model.numbers import artifact
    from quantrtl.model.training.onnx_import import branch_format

    q, art = _quantize_keep(HIDDEN_EXAMPLE, tmp_path)
    net = artifact.load(art)
    cmp = net.metadata["qonnx_comparison"]
    conv, add = net.layer("conv"), net.layer("Add")
    assert conv.output.bits == 16 and add.input_formats[1] == conv.output
    assert conv.output == branch_format(add.input_formats[0], add.output)
    assert q["golden_agreement"] >= 0.99 and cmp["agreement"] >= 0.99 and q["golden_accuracy"] >= 0.94
    # QONNX adds the float branch; the integer add sees it rounded to a 16-bit code
    # (S_out/128 or finer): the add's and every later layer's codes differ by at most 1
    assert max(cmp["max_code_difference"][n] for n in ("Add", "pool", "fc")) <= 1, cmp
    assert conv.output.scale <= add.output.scale / 64
    assert main(["cosim", "--quantizer", "keep", "--artifact", str(art), "--images", "all", "--simulator", "verilator",
                 "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["bit_exact"] and c["bit_exact_images"] == 360 and c["cycles"] == c["expected_cycles"]
    t = c["throughput"]
    assert set(t["initiation_intervals"]) == {t["expected_initiation_interval"]}


def test_wide_codes_feed_adds_only(tmp_path):
    """A 16-bit code is an add's operand and nothing else's (hw/network.py)."""
    import dataclasses

    from quantrtl.hw.network import NetworkTop
    from quantrtl.model.numbers import artifact

    _, art = _quantize_keep(HIDDEN_EXAMPLE, tmp_path)
    net = artifact.load(art)
    net.layers[-1] = dataclasses.replace(net.layers[-1], output=dataclasses.replace(net.layers[-1].output, bits=16))
    with pytest.raises(ValueError, match="layer 'fc': its 16-bit output codes feed the network output; only an add"):
        NetworkTop(net)


@pytest.mark.yosys
def test_gates_compares_the_models_quantization_with_ours(tmp_path):
    r = json.loads("{}")
    assert main(["gates", "--model", str(EXAMPLE), "--quantizers", "keep,shift3,ternary", "--throughput", "4",
                 "--finetune", "0", "--out", str(tmp_path / "g"), "--json", str(tmp_path / "g.json")]) == 0
    r = json.loads((tmp_path / "g.json").read_text())
    assert [x["quantizer"] for x in r["rows"]] == ["keep", "shift3", "ternary"] and r["equal_throughput"]
    assert all(x["gates_total"] > 0 for x in r["rows"])


@pytest.mark.icarus
@pytest.mark.parametrize("shared", [False, True])
def test_fresh_brevitas_export_agrees_with_qonnx(tmp_path, shared):
    """A Brevitas model trained for six epochs here (8-bit weights and activations this
    time), exported with Brevitas' QONNX exporter, imported with its own quantization,
    co-simulated in Icarus.  ``shared``: the residual block with one QuantIdentity on both
    branches (``relu(q(x) + q(conv(x)))``: the skip requantized by a 1x1 average pooling)."""
    from quantrtl.model.digits import load_split
    from tests.brevitas_models import HiddenResidual, QuantResidual, train_and_export

    path = tmp_path / "fresh.onnx"
    acc = train_and_export(path, epochs=6, wbits=8, abits=8, seed=1,
                           **({"model_class": HiddenResidual, "shared": True} if shared else {"model_class": QuantResidual}))
    m = load_onnx(path)
    train, test = load_split()
    net = keep_network(m, train.float_inputs(), "fresh")
    cmp = compare_with_qonnx(m, net, test.float_inputs())
    assert cmp["agreement"] >= 0.99 and max(cmp["max_code_difference"].values()) <= 1, cmp
    assert {l.format.name for l in net.layers if l.has_weights} == {"fixed8"} and acc > 0.5
    from quantrtl import flows

    c = flows.cosim_flow("keep", images="0", artifact_path=net, source=flows.ModelSource(model=str(path)),
                         build_root=tmp_path / "cosim")
    assert c.bit_exact and all(l["bit_exact"] for l in c.layers), c.first_mismatch


def _onnx_model(tmp_path, nodes, inits, name="m.onnx", shape=(1, 1, 8, 8)):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph(nodes, "g", [x], [y], [helper.make_tensor(k, TensorProto.FLOAT, np.shape(v),
                                                                          np.ravel(v).tolist())
                                                       for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("qonnx.custom_op.general", 1)])
    onnx.save(model, str(tmp_path / name))
    return tmp_path / name


def _quant(name, x, out, bits=8, signed=1, mode="ROUND"):
    from onnx import helper

    return helper.make_node("Quant", [x, f"{name}_s", f"{name}_z", f"{name}_b"], [out], name=name,
                            domain="qonnx.custom_op.general", signed=signed, narrow=0, rounding_mode=mode)


def test_bad_files_and_unsupported_nodes_are_named(tmp_path, capsys):
    from onnx import helper

    (tmp_path / "junk.onnx").write_bytes(b"not a model at all")
    sig = _onnx_model(tmp_path, [helper.make_node("Softmax", ["x"], ["y"], name="/head/Softmax")], {}, "sig.onnx")
    floor = _onnx_model(tmp_path, [_quant("/act/Quant", "x", "y", bits=3, signed=0, mode="FLOOR")],
                        {"/act/Quant_s": 0.1, "/act/Quant_z": 0.0, "/act/Quant_b": 3.0}, "floor.onnx")
    for path, match in [(tmp_path / "junk.onnx", "not a valid ONNX model"),
                        (sig, "node '/head/Softmax' (Softmax) is not supported; supported: Quant"),
                        (floor, "node '/act/Quant' (Quant): rounding mode FLOOR is not supported"),
                        (tmp_path / "missing.onnx", "file not found")]:
        out = tmp_path / "o"
        rc = main(["quantize", "--quantizer", "keep", "--model", str(path), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and match in err and "Traceback" not in err, err
        assert not out.exists()
    assert main(["quantize", "--quantizer", "keep", "--out", str(tmp_path / "o")]) == 2
    assert "keep takes an imported model's own quantization" in capsys.readouterr().err


def test_plain_onnx_is_requantized_and_keep_needs_quant_nodes(tmp_path, capsys):
    """A float ONNX export (the shipped residual network through torch.onnx): its float
    weights, re-quantized with fixed8, give the PyTorch model's float accuracy and the usual
    agreement; ``keep`` has no quantization to keep and says so."""
    import torch

    from quantrtl.model.training.net import SHIPPED, load_checkpoint

    shipped = SHIPPED["digits-res"]
    path = tmp_path / "plain.onnx"
    torch.onnx.export(load_checkpoint(shipped.checkpoint, shipped.factory), torch.zeros(1, 1, 8, 8), str(path),
                      dynamo=False)
    assert main(["quantize", "--quantizer", "fixed8", "--model", str(path), "--finetune", "0",
                 "--out", str(tmp_path / "a"), "--json", str(tmp_path / "q.json")]) == 0
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["float_accuracy"] == pytest.approx(0.9583, abs=1e-3) and q["golden_agreement"] >= 0.99
    assert [l["op"] for l in q["layers"]] == ["conv2d", "conv2d", "conv2d", "add", "conv2d", "avgpool", "conv2d",
                                              "concat", "gap", "linear"]
    assert main(["quantize", "--quantizer", "keep", "--model", str(path), "--out", str(tmp_path / "b")]) == 2
    assert "a float ONNX model (no Quant node) has no quantization to keep" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
