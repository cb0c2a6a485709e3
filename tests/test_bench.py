"""``quantrtl bench``: each benchmark runs and writes its JSON (small configurations here)."""
import json

import pytest

from quantrtl import bench
from quantrtl.cli import main


@pytest.mark.icarus
def test_bench_cosim_icarus(tmp_path):
    r = bench.bench_cosim("ternary", lanes=4, build_root=tmp_path, simulators=("icarus",), images={"icarus": "5-6"})
    row = r["results"][0]
    assert row["simulator"] == "icarus" and row["bit_exact"] and row["cycles"] > 0
    assert row["simulator_version"].startswith("Icarus Verilog version ") and "proc; opt" in row["netlist"]
    assert row["images"] == row["bit_exact_images"] == 2 and row["images_per_second"] > 0
    assert row["simulated_cycles_per_second"] > 0 and set(row["utilization"]) == {"conv1", "conv2", "fc"}
    # each batch streams 3 images: the first one's latency is the formula's, the II the formula's
    assert row["latency_cycles"][0] == row["expected_cycles"] == row["cycles"]
    assert 0 < row["initiation_interval"] == row["expected_initiation_interval"]
    # the warm batch (2 images and a repeat): the last output two initiation intervals after the first image's
    assert row["simulated_cycles"] == row["latency_cycles"][0] + 2 * row["initiation_interval"]


@pytest.mark.icarus
def test_bench_sparse_bound(tmp_path):
    """Both engines, every layer alone: bit-exact and within its bound; the broadcast
    engine skips zero activations, so it runs closer to the nonzero x nonzero ideal."""
    r = bench.bench_sparse(quantizers=("shift3",), densities=(0.3,), lanes=8, build_root=tmp_path)
    assert {(x["engine"], x["layer"]) for x in r["results"]} == {(e, n) for e in ("row", "broadcast")
                                                                 for n in ("conv1", "conv2", "fc")}
    assert all(x["bit_exact"] and x["formula_ok"] for x in r["results"])
    assert all(x["within_bound"] and x["compute_cycles"] >= x["ideal_cycles"] for x in r["results"]
               if x["engine"] == "row")
    by = {(x["engine"], x["layer"]): x for x in r["results"]}
    assert by["broadcast", "conv2"]["measured_cycles"] < by["row", "conv2"]["measured_cycles"]
    assert by["broadcast", "conv2"]["walk_over_ideal"] < 1.5
    # the broadcast drain overlaps the input: conv1 (64 inputs, 512 outputs) is output-bound and
    # within its target; the target's terms are the ones the row names
    conv1 = by["broadcast", "conv1"]
    assert conv1["bound_kind"] == "output" and conv1["within_bound"]
    assert conv1["out_size"] <= conv1["measured_cycles"] < conv1["in_size"] + conv1["out_size"]
    assert all(x["lower_bound"] <= x["measured_cycles"] for x in r["results"] if x["engine"] == "broadcast")


@pytest.mark.slow
@pytest.mark.yosys
@pytest.mark.nextpnr
def test_bench_synth_cold_and_warm(tmp_path):
    r = bench.bench_synth(quantizers=("binary",), throughput={"conv2": 4, "*": 8}, build_root=tmp_path)
    assert {x["style"] for x in r["results"]} == {"array", "unrolled", "fpga ecp5"}
    assert {x["design"] for x in r["results"] if x["style"] == "array"} == {"conv2_binary_p4",
                                                                           "conv2_binary_p4_array"}
    fpga = [x for x in r["results"] if x["style"] == "fpga ecp5"]
    assert len(fpga) == 1 and fpga[0]["luts"] > 0 and fpga[0]["fmax_mhz"] > 0
    # each tool's peak memory, measured on the cold run; FPGA mapping on the native Yosys (pyosys)
    assert fpga[0]["peak_mb"]["yosys"] > 10 and fpga[0]["peak_mb"]["nextpnr"] > 10
    assert "pyosys native" in fpga[0]["yosys_version"]
    assert all(x["peak_mb"]["yosys"] > 10 for x in r["results"] if x["style"] != "fpga ecp5")
    assert all(x["warm_cached"] and x["warm_seconds"] < x["cold_seconds"] for x in r["results"])


def test_bench_verilog(tmp_path, capsys):
    """Generation time is a benchmark (a figure in the JSON), not a timed test."""
    r = bench.bench_verilog(("binary", "shift4"), lanes=4, build_root=tmp_path)
    assert [x["quantizer"] for x in r["results"]] == ["binary", "shift4"] and r["benchmark"] == "verilog"
    for x in r["results"]:
        assert x["seconds"] > 0 and x["top"] == f"digits_{x['quantizer']}_top"
        assert x["verilog_lines"] > 100 and x["verilog_bytes"] == len(open(x["verilog"], "rb").read())
    j = tmp_path / "v.json"
    assert main(["bench", "verilog", "--quantizer", "binary", "--lanes", "4", "--json", str(j)]) == 0
    assert json.loads(j.read_text())["results"][0]["quantizer"] == "binary"
    assert "digits_binary_top" in capsys.readouterr().out
    assert main(["bench", "verilog", "--quantizer", ","]) == 2
    assert "--quantizer ',' names no quantizer" in capsys.readouterr().err


def test_bench_unknown(capsys):
    assert main(["bench", "disk"]) == 2
    assert "unknown benchmark 'disk'; available: cosim, synth, sparse" in capsys.readouterr().err
    assert main(["bench", "unrolled", "--lanes", "4"]) == 2
    assert "--lanes does not apply to bench unrolled" in capsys.readouterr().err
    assert main(["bench", "sparse", "--lanes", "conv1=0"]) == 2
    assert "--lanes conv1: must be in 1..256, got 0" in capsys.readouterr().err
