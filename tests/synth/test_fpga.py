"""FPGA mapping (Yosys synth_*) and place-and-route (nextpnr) of emitted designs.

Small designs (conv1's engine at 4 lanes) keep these runs short; the same code maps the
demo's engines."""
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from quantrtl import flows
from quantrtl.cli import main
from quantrtl.synth import fpga
from quantrtl.synth.yosys import SynthesisError, cells_by_type, yosys_command

pytestmark = [pytest.mark.yosys, pytest.mark.nextpnr]


@pytest.fixture(scope="module")
def nets(quantized):
    from quantrtl.model.numbers import artifact

    return {q: artifact.load(quantized(q).artifact) for q in ("fixed8", "shift4")}


def _conv1(nets, tmp_path, target, dsp=True, quantizers=("fixed8", "shift4")):
    return flows.gates_flow(list(quantizers), layer="conv1", throughput=4, out_dir=tmp_path / "g",
                            cache_dir=tmp_path / "cache", networks=nets, target=target, dsp=dsp)


def test_ecp5_rows_and_the_recorded_commands_reproduce_them(nets, tmp_path):
    r = _conv1(nets, tmp_path, "ecp5")
    assert r.target == "ecp5" and [x["quantizer"] for x in r.rows] == ["fixed8", "shift4"]
    fixed8, shift4 = (x["fpga"] for x in r.rows)
    for row, f in zip(r.rows, (fixed8, shift4)):
        assert f["luts"] > 0 and f["ffs"] > 0 and f["fmax_mhz"] > 0 and f["target_mhz"] == 100
        # placed: every LUT4 cell and both LUT4s of each carry cell occupy a TRELLIS_COMB
        assert f["placed_luts"] == f["utilization"]["TRELLIS_COMB"]["used"] >= f["luts"] + 2 * f["carry"]
        assert f["macs_per_second"] == pytest.approx(row["macs_per_cycle"] * f["fmax_mhz"] * 1e6)
        c = f["critical_path"]
        assert c["from"] and c["to"] and c["logic_levels"] > 0 and c["parts"][0] == c["from_part"]
        assert c["to_part"] in c["parts"] and c["logic_ns"] + c["routing_ns"] <= c["delay_ns"] + 1e-6
        assert sum(f["cells_by_type"].values()) >= f["luts"] + f["ffs"] + f["dsps"]
    # one MULT18X18D per fixed8 lane; both keep the requantizer's acc x M0 multiply on DSPs
    assert fixed8["dsps"] - shift4["dsps"] == 4 and shift4["dsps"] > 0

    # re-run by hand: the recorded script on a copy of the recorded Verilog, then the recorded
    # nextpnr command on the netlist it writes
    work = tmp_path / "by-hand"
    work.mkdir()
    shutil.copy(fixed8["verilog"], work)
    (work / "s.ys").write_text(fixed8["yosys_script"])
    # FPGA mapping runs on the native Yosys (pyosys) by default; the row names the build it used
    assert "pyosys native" in fixed8["yosys_version"]
    subprocess.run([*yosys_command("native"), "-q", "s.ys"], cwd=work, check=True, capture_output=True)
    counts = fpga.classify(fpga.TARGETS["ecp5"], cells_by_type(json.loads((work / "stat.json").read_text())))
    assert {k: fixed8[k] for k in counts} == counts
    cmd = [shutil.which(fixed8["nextpnr_command"][0]), *fixed8["nextpnr_command"][1:]]
    subprocess.run(cmd, cwd=work, check=True, capture_output=True)
    report = json.loads((work / Path(fixed8["report"]).name).read_text())
    assert round(min(c["achieved"] for c in report["fmax"].values()), 2) == fixed8["fmax_mhz"]
    # the same run again is cached and says so
    again = _conv1(nets, tmp_path, "ecp5")
    assert [x["fpga"]["cached"] for x in again.rows] == [True, True]
    assert again.rows[0]["fpga"]["luts"] == fixed8["luts"]


def test_ecp5_without_dsps_maps_multipliers_to_luts(nets, tmp_path):
    """Mapping only (placing a DSP-free multiplier array takes minutes): the same Verilog
    with and without DSP blocks."""
    g = flows.gates_flow(["fixed8"], layer="conv1", throughput=4, out_dir=tmp_path / "g", cache_dir=tmp_path / "c",
                         networks=nets)
    row = g.rows[0]
    with_dsp = fpga.fpga_map(row["verilog"], row["top"], "ecp5", dsp=True, cache_dir=None, place=False)
    without = fpga.fpga_map(row["verilog"], row["top"], "ecp5", dsp=False, cache_dir=None, place=False)
    assert without.dsps == 0 < with_dsp.dsps and without.luts > with_dsp.luts
    assert "-nodsp" in without.yosys_script and Path(without.netlist).name.endswith(".ecp5-nodsp.json")
    assert without.fmax_mhz is None and without.nextpnr_command is None


@pytest.mark.slow
def test_ice40_and_xilinx(nets, tmp_path):
    ice = _conv1(nets, tmp_path, "ice40", quantizers=("shift4",)).rows[0]["fpga"]
    assert ice["luts"] > 0 and ice["carry"] > 0 and ice["fmax_mhz"] > 0 and "HX8K" in ice["device"] and ice["dsps"] == 0
    xil = _conv1(nets, tmp_path, "xilinx", quantizers=("shift4",)).rows[0]["fpga"]
    assert xil["luts"] > 0 and xil["fmax_mhz"] is None and xil["nextpnr_command"] is None


def test_unrolled_rows_on_ecp5(nets, tmp_path):
    """Sampled channels, each with its input window registered, placed and routed; the
    layer extrapolated like its gate count (FFs: each channel's output register, times
    Cout, plus the shared window once; conv1's weights are all nonzero, so every channel
    reads its whole 9 x 8-bit window)."""
    r = flows.gates_flow(["fixed8", "shift4"], style="unrolled", layer="conv1", sample=2, out_dir=tmp_path / "g",
                         cache_dir=tmp_path / "cache", networks=nets, target="ecp5")
    for row in r.rows:
        f = row["fpga"]
        assert f["extrapolated"] and f["sample"] == 2 and len(f["channels"]) == 2
        assert all(c["top"].endswith("_reg") and c["fmax_mhz"] > 0 for c in f["channels"])
        assert f["fmax_mhz"] == min(c["fmax_mhz"] for c in f["channels"])
        assert row["extra"]["nonzero_weights_per_channel"] == [9, 9] and f["input_window_ffs"] == 72
        cout = row["extra"]["cout"]
        assert f["ffs"] == round(sum(c["ffs"] - 72 for c in f["channels"]) / 2 * cout) + 72
        assert f["ffs"] - 72 >= row["flipflops"] > 0  # the gate flow's output registers, fewer or equal
        assert f["luts"] == round(sum(c["luts"] for c in f["channels"]) / 2 * row["extra"]["cout"])
        assert f["fits"] is True and f["macs_per_second"] == pytest.approx(row["macs_per_cycle"] * f["fmax_mhz"] * 1e6)
    fixed8, shift4 = (x["fpga"] for x in r.rows)
    assert fixed8["dsps"] == 0 == shift4["dsps"]  # constants as canonical signed digits: no multiplier


def test_a_design_that_does_not_fit_is_a_tool_error(tmp_path, capsys, monkeypatch):
    """The smallest iCE40 (384 LUTs) cannot hold conv1's 4-lane engine: exit 3, one line
    naming the device and the log, no JSON written."""
    tiny = replace(fpga.TARGETS["ice40"], device="Lattice iCE40 LP384, QN32", pnr_args=("--lp384", "--package", "qn32"))
    monkeypatch.setitem(fpga.TARGETS, "ice40", tiny)
    monkeypatch.setenv("QUANTRTL_CACHE", str(tmp_path / "qcache"))
    rc = main(["gates", "--quantizers", "fixed8", "--target", "ice40", "--layer", "conv1", "--throughput", "4",
               "--finetune", "0", "--out", str(tmp_path / "g"), "--json", str(tmp_path / "g.json")])
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("quantrtl: error:")]
    assert rc == 3 and len(err) == 1, err
    assert "iCE40 LP384" in err[0] and "nextpnr.log" in err[0]
    assert not (tmp_path / "g.json").exists()
    log = err[0].rsplit("see ", 1)[1].strip()
    assert Path(log).is_file()


@pytest.mark.parametrize("argv,match", [
    (["--target", "virtex"], "unknown --target 'virtex'; choose one of gates, ecp5, ice40, xilinx"),
    (["--no-dsp"], "no-DSP mapping is for an FPGA --target"),
    (["--sparse", "--no-dsp"], "no-DSP mapping is for an FPGA --target"),
])
def test_target_options(capsys, argv, match):
    assert main(["gates", "--quantizers", "fixed8", *argv]) == 2
    assert match in capsys.readouterr().err


def test_unrolled_pq_is_not_mapped_to_an_fpga(capsys, tmp_path):
    """Refused before any synthesis, naming the quantizer and the way that works."""
    assert main(["gates", "--style", "unrolled", "--quantizers", "fixed8,pq4", "--target", "ecp5",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unrolled style of pq4 (table slices and channel sums) is not mapped onto ecp5" in err
    assert not any(tmp_path.rglob("*.v"))


def test_unknown_target_in_the_library():
    with pytest.raises(SynthesisError, match="unknown FPGA target 'vu9p'"):
        fpga.fpga_map("x.v", "x", "vu9p")


BIG_RAM = """
module bigram(input clk, input we, input [15:0] wa, input [15:0] ra, input [7:0] wd, output reg [7:0] rd);
  reg [7:0] mem [0:65535];
  always @(posedge clk) begin
    if (we) mem[wa] <= wd;
    rd <= mem[ra];
  end
endmodule
"""


def test_a_design_too_large_for_the_device_is_refused_before_place_and_route(tmp_path):
    """A 512 Kbit RAM needs 128 iCE40 block RAMs, the HX8K has 32: the mapping says so, and
    nextpnr is not run (no log of it anywhere); the error names the device, the resource and
    the amount over (the CLI's exit 3, a tool error)."""
    v = tmp_path / "bigram.v"
    v.write_text(BIG_RAM)
    with pytest.raises(SynthesisError, match=r"bigram does not fit the Lattice iCE40 HX8K, CT256: 128 block RAMs "
                                             r"\(SB_RAM40_4K\) needed, the device has 32 \(96 over\) \(Yosys "
                                             r"synth_ice40, before place and route; see .*yosys.log\)"):
        fpga.fpga_map(v, "bigram", "ice40", cache_dir=None)
    assert not list(tmp_path.rglob("nextpnr.log")) and list(tmp_path.rglob("yosys.log"))
    # the same mapping without place and route is a resource count, not an error
    r = fpga.fpga_map(v, "bigram", "ice40", cache_dir=None, place=False)
    assert r.brams == 128 and r.fmax_mhz is None


def test_device_limits_are_lower_bounds_of_placed_cells():
    t = fpga.TARGETS["ecp5"]
    assert t.over_limits({"luts": 83_640 - 2 * 10, "carry": 10}) == []
    assert t.over_limits({"luts": 83_640, "carry": 1, "brams": 290}) == [
        ("LUT4 positions (LUT4s + 2 per CCU2C carry cell)", 83_642, 83_640), ("block RAMs (DP16KD)", 290, 208)]


def test_critical_path_parts_are_named_from_the_placed_cells():
    from quantrtl.synth.fpga import cell_part

    assert cell_part("requant.prod[9]_MULT18X18D_P9_P35_CCU2C_B1") == "requant"
    assert cell_part("out__payload_TRELLIS_FF_Q_7") == "out__payload"
    assert cell_part("bank0[20]_LUT4_C") == "bank0"
    assert cell_part("array.lane3.acc_CCU2C_S0") == "array.lane3"
    assert cell_part("fc.requant.prod[9]_MULT18X18D_P9") == "fc.requant" and cell_part("fc.bank0[3]_LUT4_Z") == "fc"
    assert cell_part("$abc$4711$auto$blifparse.cc:396:parse_blif$4712") == ""


def test_place_only_gives_placed_resources_and_no_fmax(tmp_path, capsys):
    """``route=False`` (``bench unrolled --no-route``): nextpnr places the design and stops;
    the row has the LUT4 positions it placed and no Fmax (a pre-route estimate is none)."""
    from quantrtl.hw.array import MacArray
    from quantrtl.hw.verilog import to_verilog
    from quantrtl.model.numbers.families import parse_format

    v = tmp_path / "arr.v"
    v.write_text(to_verilog(MacArray(parse_format("shift4"), 2, 16), "arr"))
    r = fpga.fpga_map(v, "arr", "ecp5", cache_dir=None, route=False)
    assert r.fmax_mhz is None and r.critical_path is None and "--no-route" in r.nextpnr_command
    assert r.placed_luts >= r.luts + 2 * r.carry > 0 and r.peak_mb["nextpnr"] > 10
    assert main(["bench", "unrolled", "--target", "gates", "--no-route"]) == 2
    assert "--no-route places on an FPGA --target" in capsys.readouterr().err
    assert main(["bench", "verilog", "--no-route"]) == 2
    assert "--no-route is for bench unrolled" in capsys.readouterr().err
