"""Lanes per layer (``--lanes conv1=2,*=16``): parsing, checking against the network, and a
planned network bit-exact with its per-layer cycles."""
import json

import numpy as np
import pytest

from quantrtl.cli import main
from quantrtl.util.errors import OptionError
from quantrtl.util.lanes import check_plan_layers, lanes_for, lanes_tag, parse_lanes


def test_parse_lanes():
    assert parse_lanes("8") == 8 == parse_lanes(8)
    assert parse_lanes("conv1=8, *=32") == {"conv1": 8, "*": 32}
    assert lanes_for({"conv1": 8, "*": 32}, "fc") == 32 and lanes_for(4, "fc") == 4
    assert lanes_tag(8) == "p8" and lanes_tag({"conv1": 8, "*": 32}) == "pall32_conv18"
    assert len(lanes_tag({f"layer{i}": 8 for i in range(20)})) < 40


@pytest.mark.parametrize("text,match", [
    ("0", "lanes must be in 1..256, got 0"),
    ("conv1=300,*=8", "conv1: must be in 1..256, got 300"),
    ("conv1=8,conv1=4", "each layer once"),
    ("conv1=x", "'x' is not a number of lanes"),
    ("eight", "cannot read 'eight'"),
    ("a b=3", "each entry is LAYER=N"),
])
def test_bad_plans(text, match):
    with pytest.raises(OptionError, match=match):
        parse_lanes(text)


def test_plans_are_checked_against_the_network():
    with pytest.raises(OptionError, match=r"names \['conv9'\], not layers of the network"):
        check_plan_layers({"conv9": 4, "*": 8}, ["conv1", "fc"], ["conv1", "fc"])
    with pytest.raises(OptionError, match="gives layer 'fc' no lanes; name it or add"):
        check_plan_layers({"conv1": 4}, ["conv1", "fc"], ["conv1", "fc"])


def test_planned_graph_network_bit_exact_with_formula_cycles():
    from quantrtl.hw.network import NetworkTop
    from quantrtl.model.numbers.layout import to_stream
    from quantrtl.sim import golden
    from tests.factories import format_for_test, random_graph_network
    from tests.hw.streams import run_stream

    net = random_graph_network(format_for_test("shift4"), seed=3)
    plan = {"conv": 1, "dw": 2, "*": 5}
    top = NetworkTop(net, lanes=plan)
    assert [e.geometry.lanes for n, e in top.engines.items() if net.layer(n).has_weights] == [1, 2, 5, 5, 5]
    x = np.random.default_rng(3).integers(0, 256, size=net.input_shape)
    out, cycles = run_stream(top, list(to_stream(x, net.input_shape)), 3)
    assert list(out) == list(golden.run(net, x).logits[0]) and cycles == top.expected_cycles


@pytest.mark.icarus
def test_cli_cosim_and_verilog_with_a_plan(tmp_path, capsys):
    assert main(["cosim", "--quantizer", "shift4", "--lanes", "conv1=2,*=16", "--images", "0",
                 "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["bit_exact"] and c["lanes"] == {"conv1": 2, "*": 16} and c["cycles"] == c["expected_cycles"]
    util = {l["name"]: l["utilization"] for l in c["layers"]}
    assert util["conv1"] > 0.95 and util["conv2"] > 0.95  # each divided by its own lanes
    assert main(["verilog", "--quantizer", "shift4", "--lanes", "conv1=2,*=16", "--out", str(tmp_path / "v")]) == 0
    d = json.loads(next((tmp_path / "v").glob("*_top.json")).read_text())
    assert {l["name"]: l.get("lanes") for l in d["parameters"]["layers"]} == {"conv1": 2, "conv2": 16, "pool": None,
                                                                               "fc": 16}
    assert main(["cosim", "--quantizer", "shift4", "--lanes", "conv7=2,*=16"]) == 2
    assert "names ['conv7'], not layers of the network" in capsys.readouterr().err
