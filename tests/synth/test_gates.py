"""Equal-throughput gate comparisons (array and unrolled styles) and the gates command."""
import csv
import json

import numpy as np
import pytest

from quantrtl.cli import main

pytestmark = pytest.mark.yosys

ROW_KEYS = {"quantizer", "style", "lanes", "throughput", "gates_total", "gates_by_type", "flipflops", "memory_bits",
            "gates_per_mac_per_cycle", "top", "verilog", "yosys_version", "yosys_script", "extrapolated", "sample"}


def run_gates(tmp_path, argv):
    j = tmp_path / "g.json"
    rc = main(["gates", *argv, "--out", str(tmp_path / "v"), "--json", str(j), "--csv", str(tmp_path / "g.csv"),
               "--plot", str(tmp_path / "g.png")])
    assert rc == 0
    return json.loads(j.read_text())


def test_array_style_small(tmp_path, capsys):
    r = run_gates(tmp_path, ["--quantizers", "fixed8,shift4,binary", "--layer", "conv1", "--throughput", "4"])
    rows = {x["quantizer"]: x for x in r["rows"]}
    for x in rows.values():
        assert ROW_KEYS <= set(x)
        assert x["style"] == "array" and x["lanes"] == 4 and x["throughput"] == 4 and not x["extrapolated"]
        assert x["datapath_gates"] + x["control_gates"] == x["gates_total"]
        assert x["macs_per_cycle"] == 4.0  # 3×3 on one channel: 4 groups of 1 lane … 18 cycles per 72 MACs
        assert x["gates_per_mac_per_cycle"] == pytest.approx(x["gates_total"] / 4)
        assert (tmp_path / "v" / "array" / f"{x['top']}.v").is_file()
    assert rows["fixed8"]["datapath_gates"] > rows["shift4"]["datapath_gates"] > rows["binary"]["datapath_gates"]
    assert min(x["ratio_to_cheapest"] for x in rows.values()) == 1.0
    assert len(list(csv.DictReader((tmp_path / "g.csv").open()))) == 3
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "gates per MAC/cycle" in out and "Yosys" in out


@pytest.mark.yosys
def test_per_mac_figures_use_the_actual_rate(tmp_path, capsys):
    """conv1 (a 3×3 kernel on one input channel, 8 outputs) cannot keep 16 lanes busy: every
    design does 9 MACs per cycle, and the rows say so and divide by 9."""
    r = run_gates(tmp_path, ["--quantizers", "fixed8,binary", "--layer", "conv1", "--throughput", "16",
                             "--finetune", "0"])
    for x in r["rows"]:
        assert x["throughput"] == 16 and x["macs_per_cycle"] == 9.0
        assert x["gates_per_mac_per_cycle"] == pytest.approx(x["gates_total"] / 9)
    assert r["equal_throughput"]
    assert "16 MACs per cycle asked, 9 actual" in capsys.readouterr().out


def test_unrolled_style_from_a_model_layer(tmp_path):
    r = run_gates(tmp_path, ["--quantizers", "fixed8,ternary", "--style", "unrolled", "--layer", "conv1",
                             "--sample", "2"])
    for x in r["rows"]:
        assert ROW_KEYS <= set(x) and x["extrapolated"] and x["sample"] == 2
        assert x["throughput"] == 9 * 8 and len(x["spread"]["gates"]) == 2
        assert x["spread"]["min"] <= x["gates_total"] / 8 <= x["spread"]["max"]
    rows = {x["quantizer"]: x for x in r["rows"]}
    assert rows["fixed8"]["gates_total"] > rows["ternary"]["gates_total"]


@pytest.mark.yosys
def test_sample_all_is_the_whole_layer_measured(tmp_path):
    """``--sample all`` synthesizes the whole layer as one design (subexpressions shared
    across its channels): the row is that one Yosys count, measured, with its adder graph;
    a sample is labelled extrapolated."""
    full = run_gates(tmp_path, ["--quantizers", "ternary", "--style", "unrolled", "--layer", "conv1",
                                "--sample", "all", "--finetune", "0"])["rows"][0]
    assert full["provenance"] == "measured" and not full["extrapolated"] and full["sample"] == 8
    assert full["spread"]["tops"] == [full["top"]] and full["top"].endswith("_layer") and "min" not in full["spread"]
    assert full["extra"]["whole_layer"] and full["extra"]["adders"] >= 8 and full["extra"]["adder_depth"] >= 1
    assert full["flipflops"] > 0  # the output registers
    part = run_gates(tmp_path, ["--quantizers", "ternary", "--style", "unrolled", "--layer", "conv1",
                                "--sample", "2", "--finetune", "0"])["rows"][0]
    assert part["provenance"] == "extrapolated" and part["extrapolated"] and not part["extra"]["whole_layer"]


def test_zero_weights_cost_nothing(tmp_path):
    from quantrtl.hw.unrolled import UnrolledDot
    from quantrtl.synth.gates import write_verilog
    from quantrtl.synth.yosys import synthesize

    dense = synthesize(write_verilog(UnrolledDot([3, -5, 7, 1, 2, -1]), "dense", tmp_path), "dense", cache_dir=None)
    sparse = synthesize(write_verilog(UnrolledDot([3, 0, 7, 0, 0, 0]), "sparse", tmp_path), "sparse", cache_dir=None)
    pow2 = synthesize(write_verilog(UnrolledDot([4, 0, 8, 0, 0, 0]), "pow2", tmp_path), "pow2", cache_dir=None)
    assert dense.gates_total > sparse.gates_total > pow2.gates_total


@pytest.mark.parametrize("argv,match", [
    (["--quantizers", "fixed8,shift9"], "allowed 3..6"),
    (["--style", "diagonal"], "unknown --style 'diagonal'; choose one of array, unrolled"),
    (["--bench", "resnet"], "unknown --bench 'resnet'; available: fq-conv"),
    (["--layer", "conv1", "--bench", "fq-conv", "--style", "unrolled"], "either --layer or --bench"),
    (["--throughput", "0"], "--lanes must be in 1..256"),  # the older name of --lanes
    (["--layer", "pool"], "--layer 'pool' is not a conv2d/linear layer"),
    (["--yosys", "/nonexistent/yosys"], "Yosys not found at '/nonexistent/yosys'"),
    (["--engine", "stream"], "--engine stream is for --style network"),
    (["--style", "network", "--engine", "columns"], "'columns' names no engine style; choose one of dense, row"),
])
def test_gates_bad_arguments(tmp_path, capsys, argv, match):
    rc = main(["gates", *argv, "--out", str(tmp_path / "v"), "--json", str(tmp_path / "g.json")])
    assert rc in (2, 3)
    assert match in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()


@pytest.mark.slow
def test_acceptance_array_command(tmp_path):
    """The issue's command: fixed8, shift3, ternary, binary, array style (largest conv, T = 16)."""
    r = run_gates(tmp_path, ["--quantizers", "fixed8,shift3,ternary,binary", "--style", "array"])
    rows = {x["quantizer"]: x for x in r["rows"]}
    assert r["layer"] == "conv2" and all(x["lanes"] == 16 for x in rows.values())
    assert rows["fixed8"]["gates_total"] == max(x["gates_total"] for x in rows.values())
    assert rows["fixed8"]["datapath_gates"] > rows["shift3"]["datapath_gates"] > rows["binary"]["datapath_gates"]


@pytest.mark.slow
def test_acceptance_unrolled_fq_conv(tmp_path):
    """The fq-conv bench's hard-wired layer, one sampled channel per quantizer (a fixed8
    channel takes Yosys over two minutes; sampling more is test_unrolled_style_from_a_model_layer's)."""
    r = run_gates(tmp_path, ["--quantizers", "fixed8,shift3,ternary,binary", "--style", "unrolled",
                             "--bench", "fq-conv", "--sample", "1"])
    rows = {x["quantizer"]: x for x in r["rows"]}
    assert all(x["throughput"] == 90000 and x["extrapolated"] and x["sample"] == 1 for x in rows.values())
    assert len({tuple(x["spread"]["channels"]) for x in rows.values()}) == 1  # the same channel for all
    assert rows["fixed8"]["gates_total"] > rows["shift3"]["gates_total"]
    assert rows["fixed8"]["gates_total"] > rows["binary"]["gates_total"]


@pytest.mark.slow
@pytest.mark.icarus
@pytest.mark.nextpnr
def test_sparse_vs_dense_at_equal_throughput(tmp_path, capsys):
    """The dense default sets the throughput; the cheapest dense grouping that meets it is
    the dense side; both zero-skipping engines get the fewest lanes that meet it, measured;
    every design bit-exact; the FPGA columns per design."""
    j = tmp_path / "s.json"
    rc = main(["gates", "--sparse", "--quantizers", "shift3", "--density", "0.2", "--throughput", "4",
               "--finetune", "1", "--out", str(tmp_path / "v"), "--json", str(j), "--target", "ecp5"])
    assert rc == 0
    r = json.loads(j.read_text())
    dense = [x for x in r["rows"] if x["style"] == "dense"]
    row, broadcast = ([x for x in r["rows"] if x["style"] == e] for e in ("row", "broadcast"))
    assert len(row) == len(broadcast) == 1 and row[0]["density"] == broadcast[0]["density"] == 0.2
    row, broadcast = row[0], broadcast[0]
    target = dense[0]["measured_cycles"]
    assert dense[0]["default"] and all(x["target_cycles"] == target for x in r["rows"])
    assert sum(x["best_dense"] for x in dense) == 1
    best = next(x for x in dense if x["best_dense"])
    assert best["gates_total"] == min(x["gates_total"] for x in dense)
    assert {x["groups"] for x in dense} >= {1, 4}  # groups = lanes: one activation read for all lanes
    assert next(x for x in dense if x["groups"] == 4)["activation_read_ports"] == 1
    for x in r["rows"]:
        assert x["bit_exact"] and x["meets_throughput"] and x["gates_all_logic"] >= x["gates_total"]
    for x in (row, broadcast):  # at least the dense throughput, measured, with the lanes it needed
        assert x["measured_cycles"] <= target and x["lanes_tried"][-1]["lanes"] == x["lanes"] <= 4
    assert row["activation_read_ports"] == row["lanes"] and broadcast["activation_read_ports"] == 1
    assert set(r["crossover"]["shift3"]) == {"row", "broadcast"}
    for x in r["rows"]:  # per second: the measured MACs per cycle x the post-route Fmax
        f = x["fpga"]
        assert f["luts"] > 0 and f["fmax_mhz"] > 0
        assert f["macs_per_second"] == pytest.approx(x["effective_macs_per_cycle"] * f["fmax_mhz"] * 1e6)
    out = capsys.readouterr().out
    assert "broadcast zero-skipping hardware is cheaper than the best dense design" in out
    assert "shift3 broadcast d=0.2" in out


@pytest.mark.slow
def test_method_quantizers_array_style(tmp_path):
    """Every seed method synthesizes at equal throughput (conv2, T = 16); the structure shows."""
    r = run_gates(tmp_path, ["--quantizers", "binary,xnor,focused5,kmeans4,abcnet5,lqnet2,unified", "--style", "array"])
    rows = {x["quantizer"]: x for x in r["rows"]}
    assert all(x["lanes"] == 16 and x["datapath_gates"] > 0 and x["yosys_version"] for x in rows.values())
    # XNOR-popcount on 1-bit activations is the smallest datapath; five bases cost more than two
    assert rows["xnor"]["datapath_gates"] == min(x["datapath_gates"] for x in rows.values())
    assert rows["abcnet5"]["datapath_gates"] > rows["lqnet2"]["datapath_gates"] > rows["binary"]["datapath_gates"]
    assert rows["xnor"]["memory_bits"] < rows["binary"]["memory_bits"]  # 1-bit activation memory


def test_network_style_takes_a_lane_plan(tmp_path, capsys):
    """``gates --style network --lanes`` takes the plan verilog and cosim take: each engine its
    plan's lanes, the top named by the plan, the row saying which plan it was."""
    r = run_gates(tmp_path, ["--quantizers", "binary", "--style", "network", "--lanes", "conv1=2,*=4",
                             "--finetune", "0"])
    x = r["rows"][0]
    assert x["lanes"] == "conv1=2,*=4" and r["throughput"] == {"conv1": 2, "*": 4}
    lanes = {l["layer"]: l["lanes"] for l in x["layers"]}
    assert lanes["conv1"] == 2 and lanes["conv2"] == 4 and lanes["fc"] == 4
    assert x["top"] == "digits_binary_pall4_conv12_network" and (tmp_path / "v" / "network" / f"{x['top']}.v").is_file()
    assert "lanes conv1=2,*=4 per engine" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--style", "unrolled", "--layer", "conv1", "--lanes", "4"], "--lanes does not apply to --style unrolled"),
    (["--style", "network", "--lanes", "conv9=4,*=8"], "names ['conv9'], not layers of the network"),
    (["--layer", "conv2", "--lanes", "conv1=4"], "the plan gives layer 'conv2' no lanes"),
    (["--lanes", "0"], "--lanes must be in 1..256, got 0"),
])
def test_bad_lane_settings_are_named(tmp_path, capsys, argv, message):
    rc = main(["gates", "--quantizers", "binary", "--finetune", "0", *argv, "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "v").exists() or not any((tmp_path / "v").rglob("*.v"))


@pytest.mark.yosys
def test_network_rows_of_the_stream_style(tmp_path):
    """The network style on stream engines: the top named by its style, its cycles the cycle
    model's, its run-time memories counted by Yosys, and each layer's engine synthesized apart."""
    from quantrtl.hw.network import NetworkTop
    from quantrtl.synth.gates import network_rows
    from tests.factories import format_for_test, random_graph_network

    net = random_graph_network(format_for_test("shift4"), seed=1, c=2, hw=6)
    (row,) = network_rows({"shift4": net}, 4, tmp_path, jobs=2, cache_dir=None, engine="stream")
    top = NetworkTop(net, lanes=4, sparse="stream")
    assert row["engine"] == "stream" and row["top"] == "graph_shift4_p4_network_stream"
    assert row["cycles_per_image"] == top.expected_cycles == top.schedule(1).latencies[0]
    assert row["memory_bits"] > 0  # (Yosys keeps the run-time memories; small ROMs become logic)
    assert [s["layer"] for s in row["layers"]] == [l.name for l in net.layers]
