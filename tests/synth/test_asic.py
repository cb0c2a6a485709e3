"""Standard-cell mapping (Yosys + the OSU 0.18 um Liberty library), fanout buffering and
OpenSTA timing of emitted designs.

Small designs (conv1's engine at 4 lanes, a 4-weight hard-wired dot product) keep these
runs short; the same code maps the conv2 engines and the network of ``gates --target osu018``."""
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantrtl import flows
from quantrtl.cli import main
from quantrtl.synth import asic, power
from quantrtl.synth.yosys import SynthesisError, yosys_command

pytestmark = [pytest.mark.yosys, pytest.mark.sta]


@pytest.fixture(scope="module")
def nets(quantized):
    from quantrtl.model.numbers import artifact

    return {q: artifact.load(quantized(q).artifact) for q in ("fixed8", "shift4")}


def _cell_areas(netlist_text: str, liberty: str) -> float:
    """The area of a mapped netlist counted here: each instance's library cell area (not Yosys's stat)."""
    cells = asic.library_cells(liberty)
    types = re.findall(r"^\s*([A-Z][A-Z0-9]*)\s+\S+\s*\(", netlist_text, re.M)
    assert types and all(t in cells for t in types)
    return sum(cells[t]["area"] for t in types)


def test_osu018_rows_and_the_recorded_scripts_reproduce_the_area(nets, tmp_path):
    r = flows.gates_flow(["fixed8", "shift4"], layer="conv1", throughput=4, out_dir=tmp_path / "g",
                         cache_dir=tmp_path / "cache", networks=nets, target="osu018")
    fixed8, shift4 = (x["asic"] for x in r.rows)
    lib, liberty = asic.find_library("osu018")
    for row, a in zip(r.rows, (fixed8, shift4)):
        assert a["library"] == "osu018" and "qflow-tech-osu018" in a["library_version"]
        assert "OpenSTA" in a["sta_version"] and a["yosys_version"].startswith("Yosys")
        assert a["area"] == pytest.approx(a["area_sequential"] + a["area_combinational"])
        assert 0 < a["area_without_memories"] < a["area"]  # conv1's engine holds memories
        assert a["area_memories"] == pytest.approx(a["area"] - a["area_without_memories"])
        assert a["nand2_area"] == asic.library_cells(str(liberty))["NAND2X1"]["area"]
        assert a["nand2_eq"] == pytest.approx(a["area"] / a["nand2_area"])
        assert a["fmax_mhz"] == pytest.approx(1000 / (a["clock_ns"] - a["worst_slack_ns"]), rel=1e-3)
        assert a["critical_path"]["from"] and a["critical_path"]["to"] and a["critical_path"]["levels"] > 1
        assert a["macs_per_second"] == pytest.approx(row["macs_per_cycle"] * a["fmax_mhz"] * 1e6)
        # the kept netlist is the one timed; its instances' library areas add up to the area
        text = open(a["netlist"]).read()
        assert _cell_areas(text, str(liberty)) == pytest.approx(a["area"])
        assert sum(a["cells_by_type"].values()) == a["cells"]
    assert shift4["area"] < fixed8["area"] and shift4["area_without_memories"] < fixed8["area_without_memories"]
    # the energy run: the mapped netlist streamed conv1's golden input of test image 0 in
    # Icarus, bit-exact, in exactly the engine's cycles, its parts adding up
    for row, a in zip(r.rows, (fixed8, shift4)):
        e = a["energy"]
        assert e["bit_exact"] and e["first_mismatch"] is None and not e["timed_out"]
        assert e["cycles"] == row["extra"]["cycles"] and e["outputs"] == 512
        parts = e["switching_j"] + e["internal_j"] + e["clock_pins_j"] + e["clock_net_j"] + e["leakage_j"]
        assert e["energy_j"] == pytest.approx(parts) and parts > 0
        assert e["sequential_cells_j"] + e["combinational_cells_j"] <= e["energy_j"]
        assert e["energy_per_mac_pj"] == pytest.approx(e["energy_j"] / nets["fixed8"].layer("conv1").macs * 1e12)
        # the clock net: two edges a cycle on every clock pin's capacitance
        netlist = open(a["netlist"]).read()
        cells = asic.library_cells(str(liberty))
        c_clk = sum(cells[t]["caps"].get(pin, 0.0) for t, _, pins in power.netlist_cells(netlist, cells)
                    for pin, net in pins.items() if net == "clk")
        assert e["clock_net_j"] == pytest.approx(0.5 * c_clk * 1e-12 * 1.8 ** 2 * 2 * e["cycles"])
    assert shift4["energy"]["energy_j"] < fixed8["energy"]["energy_j"]
    # a wrong expectation is caught at its first position, with both values
    from quantrtl.sim import golden
    from quantrtl.sim.stream import layer_io

    x = flows.load_data(flows.DIGITS)[1].x[0]
    io = layer_io(nets["fixed8"], golden.run(nets["fixed8"], x[None]), "conv1", x)
    wrong = np.array(io.expected).copy()
    wrong[7] = (int(wrong[7]) + 1) % 256
    # the netlist simulation against Icarus running the same netlist on the library's own
    # cell models: the same outputs and cycles, the same toggles but at the window's edges
    ours = power.simulate_netlist(open(fixed8["netlist"]).read(), fixed8["top"], liberty, list(io.inputs),
                                  len(io.expected))
    icarus = power.simulate_stream(fixed8["netlist"], fixed8["top"], list(io.inputs), len(io.expected),
                                   liberty.parent / lib.cell_models, tmp_path / "icarus")
    assert ours.outputs == icarus.outputs == [int(v) & 0xFF for v in io.expected]
    assert ours.cycles == icarus.cycles == fixed8["energy"]["cycles"]
    assert ours.toggles.keys() == icarus.toggles.keys()
    assert all(abs(ours.toggles[n] - icarus.toggles[n]) <= 1 for n in ours.toggles)
    assert sum(ours.toggles.values()) == pytest.approx(sum(icarus.toggles.values()), rel=1e-3)
    bad = power.stream_energy(fixed8, io.inputs, wrong, 1, cache_dir=None)
    assert not bad["bit_exact"] and bad["first_mismatch"] == {"index": 7, "expected": int(wrong[7]) & 0xFF,
                                                              "got": int(io.expected[7]) & 0xFF}

    # re-run by hand: the recorded scripts on a copy of the recorded Verilog and library,
    # the recorded fanout buffering between them
    work = tmp_path / "by-hand"
    work.mkdir()
    shutil.copy(fixed8["verilog"], work)
    shutil.copy(liberty, work)
    (work / "map.ys").write_text(fixed8["yosys_script"])
    (work / "report.ys").write_text(fixed8["report_script"])
    subprocess.run([*yosys_command(None), "-q", "map.ys"], cwd=work, check=True, capture_output=True)
    for part in ("full", "nomem"):
        netlist = json.loads((work / f"{part}.json").read_text())
        asic.buffer_fanout(netlist, fixed8["top"], asic.library_cells(str(liberty)), lib.buffer, fixed8["max_fanout"])
        (work / f"{part}.buf.json").write_text(json.dumps(netlist))
    subprocess.run([*yosys_command(None), "-q", "report.ys"], cwd=work, check=True, capture_output=True)
    assert asic.parse_stat((work / "full.stat.txt").read_text())["area"] == fixed8["area"]
    assert asic.parse_stat((work / "nomem.stat.txt").read_text())["area"] == fixed8["area_without_memories"]
    # the same run again is cached and says so
    again = flows.gates_flow(["fixed8", "shift4"], layer="conv1", throughput=4, out_dir=tmp_path / "g",
                             cache_dir=tmp_path / "cache", networks=nets, target="osu018")
    assert [x["asic"]["cached"] for x in again.rows] == [True, True]
    assert [x["asic"]["area"] for x in again.rows] == [fixed8["area"], shift4["area"]]


def _expected_buffers(n: int, f: int) -> int:
    """Buffers of a balanced tree over n sinks, at most f per driver: level by level."""
    total = 0
    while n > f:
        n = -(-n // f)
        total += n
    return total


@settings(max_examples=40, deadline=None)
@given(fanouts=st.lists(st.integers(0, 300), min_size=1, max_size=6), f=st.integers(2, 20))
def test_buffer_fanout_bounds_every_net_and_keeps_every_connection(fanouts, f):
    cells = {"BUFX4": {"pins": {"A": "input", "Y": "output"}}, "INVX1": {"pins": {"A": "input", "Y": "output"}}}
    module = {"ports": {"clk": {"direction": "input", "bits": [2]}}, "cells": {}, "netnames": {}}
    bit = 10
    for net, n in enumerate(fanouts):
        bit += 1
        module["cells"][f"drv{net}"] = {"type": "INVX1", "connections": {"A": [2], "Y": [bit]}}
        for k in range(n):
            module["cells"][f"s{net}_{k}"] = {"type": "INVX1", "connections": {"A": [bit], "Y": [10_000 + 1000 * net + k]}}
    netlist = {"modules": {"t": module}}
    added = asic.buffer_fanout(netlist, "t", cells, ("BUFX4", "A", "Y"), f)
    assert added == sum(_expected_buffers(n, f) for n in fanouts)
    driver = {c["connections"]["Y"][0]: name for name, c in module["cells"].items()}
    loads: dict = {}
    for name, c in module["cells"].items():
        loads.setdefault(c["connections"]["A"][0], []).append(name)
    assert all(len(v) <= f for b, v in loads.items() if b != 2)  # the clock net is left alone
    assert len(loads[2]) == len(fanouts)
    for net, n in enumerate(fanouts):
        for k in range(n):  # each sink reaches its own driver through buffers only
            b = module["cells"][f"s{net}_{k}"]["connections"]["A"][0]
            while module["cells"][driver[b]]["type"] == "BUFX4":
                b = module["cells"][driver[b]]["connections"]["A"][0]
            assert driver[b] == f"drv{net}"


@pytest.mark.parametrize("sample", [None, 2])
def test_unrolled_rows_on_osu018(nets, tmp_path, sample):
    """The unrolled style on the cell library: the whole layer (one design, measured) or
    two sampled channels (each alone, extrapolated to the layer)."""
    r = flows.gates_flow(["shift4"], style="unrolled", layer="conv1", sample=sample, out_dir=tmp_path / "g",
                         cache_dir=tmp_path / "cache", networks=nets, target="osu018")
    row = r.rows[0]
    a = row["asic"]
    assert a["extrapolated"] == (sample is not None) and a["sample"] == (sample or 8)
    assert len(a["channels"]) == (1 if sample is None else 2) and a["fmax_mhz"] > 0
    if sample is None:
        assert a["area"] == a["channels"][0]["area"] and row["extra"]["whole_layer"]
    else:
        assert a["area"] == pytest.approx(sum(c["area"] for c in a["channels"]) / 2 * 8)


@pytest.mark.icarus
def test_mapped_netlist_computes_what_the_rtl_does(tmp_path):
    """The buffered netlist OpenSTA times, simulated with the library's own cell models in
    Icarus, gives the RTL's outputs cycle by cycle on random inputs."""
    from quantrtl.hw.unrolled import UnrolledDot
    from quantrtl.synth.gates import write_verilog

    weights = [3, -5, 7, 2, -8, 1]
    # without input registers the timed path starts at an input port (the inputs are constrained)
    bare = asic.asic_map(write_verilog(UnrolledDot(weights, act_bits=4), "dot_bare", tmp_path), "dot_bare",
                         cache_dir=None)
    assert bare.critical_path["from_kind"].startswith("input port") and bare.worst_slack_ns < 10
    dot = UnrolledDot(weights, act_bits=4, register_inputs=True)
    top = dot.out_width - 1
    v = write_verilog(dot, "dot", tmp_path)
    a = asic.asic_map(v, "dot", cache_dir=None)
    assert a.fmax_mhz > 0
    lib, liberty = asic.find_library("osu018")
    netlist = open(a.netlist).read().replace("module dot(", "module dot_gl(", 1)
    (tmp_path / "gl.v").write_text(netlist)
    ports = [name for _, name in re.findall(r"^\s*(input|output)\s+(?:\[[^\]]*\]\s*)?(\\?\S+)\s*;", netlist, re.M)]

    def bit_of(name):  # "\x[3]" or "x" → (base, index)
        m = re.match(r"\\?(\w+)(?:\[(\d+)\])?", name)
        return m.group(1), int(m.group(2) or 0)

    conns = ", ".join(f".{n} ({bit_of(n)[0]}[{bit_of(n)[1]}])" if n.startswith("\\") else f".{n} ({n})" for n in ports)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 16, size=(200, len(weights)))
    words = [sum(int(x) << (4 * i) for i, x in enumerate(row)) for row in xs]
    width = len(weights) * 4
    tb = f"""`timescale 1ns/10ps
module tb;
  reg clk = 0, rst = 1;
  reg [{width - 1}:0] x = 0;
  wire [63:0] y_rtl, y_gl;
  dot rtl(.clk(clk), .rst(rst), .x(x), .y(y_rtl));
  dot_gl gl({conns.replace('(y[', '(y_gl[')});
  reg [{width - 1}:0] stim [0:199];
  integer i, bad = 0;
  initial begin
    $readmemh("stim.hex", stim);
    #5 clk = 1; #5 clk = 0; rst = 0;
    for (i = 0; i < 200; i = i + 1) begin
      x = stim[i]; #5 clk = 1; #5 clk = 0;
      if (i > 2 && y_rtl[{top}:0] !== y_gl[{top}:0]) begin
        if (bad == 0) $display("MISMATCH cycle %0d rtl %h gl %h", i, y_rtl, y_gl);
        bad = bad + 1;
      end
    end
    $display("DONE bad=%0d", bad);
    $finish;
  end
endmodule
"""
    (tmp_path / "tb.v").write_text(tb)
    (tmp_path / "stim.hex").write_text("\n".join(f"{w:x}" for w in words) + "\n")
    models = liberty.parent / lib.cell_models
    subprocess.run(["iverilog", "-g2012", "-o", "sim", "tb.v", str(v.name), "gl.v", str(models)], cwd=tmp_path,
                   check=True, capture_output=True)
    out = subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert "DONE bad=0" in out, out


def test_a_missing_library_or_analyzer_is_exit_3_before_any_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(asic, "ROOTS", (str(tmp_path / "nowhere"),))
    out = tmp_path / "g"
    assert main(["gates", "--quantizers", "fixed8", "--target", "osu018", "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "apt-get install qflow-tech-osu018" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    assert not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr(asic, "find_executable", lambda name: None)
    assert main(["gates", "--quantizers", "fixed8", "--target", "osu018", "--out", str(out)]) == 3
    assert "apt-get install opensta" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SynthesisError, match="unknown cell library 'tsmc7'"):
        asic.find_library("tsmc7")


@pytest.mark.parametrize("argv, match", [
    (["--clock-ns", "5"], "--clock-ns is the clock a cell-library --target (osu018)"),
    (["--target", "osu018", "--clock-ns", "0"], "--clock-ns must be a period in 0.1..1000 ns, got 0.0"),
    (["--target", "osu018", "--clock-ns", "nan"], "--clock-ns must be a period in 0.1..1000 ns, got nan"),
    (["--target", "osu018", "--no-dsp"], "no-DSP mapping is for an FPGA --target (ecp5, ice40, xilinx)"),
    (["--sparse", "--target", "osu018", "--no-dsp"], "no-DSP mapping is for an FPGA --target"),
    (["--image", "3"], "--image is for the energy a cell-library --target (osu018) measures"),
    (["--target", "ecp5", "--no-energy"], "--no-energy is for the energy a cell-library --target (osu018)"),
    (["--target", "osu018", "--style", "unrolled", "--image", "1"], "--image is for the energy"),
    (["--target", "osu018", "--image", "360"], "--image 360: the energy's test image must be one of 0..359"),
])
def test_asic_target_options(capsys, argv, match):
    assert main(["gates", "--quantizers", "fixed8", *argv]) == 2
    assert match in capsys.readouterr().err


def test_stat_and_sta_parsers_read_the_tools_text():
    stat = ("   Chip area for module '\\\\t': 1234.500000\n     of which used for sequential elements: 96.000000 (7.78%)\n"
            "        3     72   NAND2X1\n        1     96   DFFPOSX1\n")
    assert asic.parse_stat(stat) == {"area": 1234.5, "sequential": 96.0, "cells_by_type": {"DFFPOSX1": 1, "NAND2X1": 3}}
    with pytest.raises(SynthesisError, match="no chip area"):
        asic.parse_stat("nothing")
    with pytest.raises(SynthesisError, match="no timed path"):
        asic.parse_sta("Error: no network", 10.0)
    sta = """Startpoint: _1_ (rising edge-triggered flip-flop clocked by clk)
Endpoint: _9_ (rising edge-triggered flip-flop clocked by clk)
   0.000    0.000 ^ _1_/CLK (DFFPOSX1)
   0.300    0.300 ^ _1_/Q (DFFPOSX1)
   0.200    0.500 v _5_/Y (NAND2X1)
   0.000    0.500 v _9_/D (DFFPOSX1)
            0.500   data arrival time
  -0.200    9.800   library setup time
           9.300   slack (MET)
"""
    t = asic.parse_sta(sta, 10.0)
    assert t["worst_slack_ns"] == 9.3 and t["met"] and t["critical_delay_ns"] == 0.7
    assert math.isclose(t["fmax_mhz"], 1000 / 0.7, rel_tol=1e-4)
    assert t["critical_path"]["cells"] == ["DFFPOSX1", "NAND2X1"] and t["critical_path"]["from"] == "_1_"


def test_switching_energy_agrees_with_openstas_at_one_transition_per_period(tmp_path):
    """Our 1/2 C V^2 per toggle of a cell's output net against OpenSTA's switching power of
    that instance at a global activity of 1 (one transition per period), times the period.
    OpenSTA propagates activity through the logic from its inputs (an inverter or buffer
    after a quiet net gets less than 1), so the instances it keeps at 1 are compared: most
    of them, within 1 %, and none above ours."""
    from quantrtl.hw.unrolled import UnrolledDot
    from quantrtl.synth.gates import write_verilog

    a = asic.asic_map(write_verilog(UnrolledDot([3, -5, 7, 2], act_bits=4, register_inputs=True), "d4", tmp_path),
                      "d4", cache_dir=None)
    lib, liberty = asic.find_library("osu018")
    cells = asic.library_cells(str(liberty))
    text = open(a.netlist).read()
    instances = power.netlist_cells(text, cells)
    load: dict = {}
    for t, _, pins in instances:
        for pin, net in pins.items():
            if cells[t]["pins"][pin] == "input":
                load[net] = load.get(net, 0.0) + cells[t]["caps"][pin]
    shutil.copy(liberty, tmp_path)
    (tmp_path / "p.tcl").write_text(f"""read_liberty {liberty.name}
read_verilog {a.netlist}
link_design d4
create_clock -name clk -period 10 [get_ports clk]
set_power_activity -global -activity 1 -duty 0.5
set_power_activity -input -activity 1 -duty 0.5
report_power -instances [get_cells *] -digits 9
""")
    out = subprocess.run(["sta", "-no_splash", "-exit", "p.tcl"], cwd=tmp_path, capture_output=True, text=True).stdout
    num = r"(-?\d[\d.]*e[-+]\d+)"
    theirs = {m.group(2): float(m.group(1)) * 10e-9
              for m in re.finditer(rf"^\s*\S+\s+{num}\s+\S+\s+\S+\s+(\S+)\s*$", out, re.M)}
    assert len(theirs) == len(instances)
    driven = [next(n for p, n in pins.items() if cells[t]["pins"][p] == "output") for t, _, pins in instances]
    half_cv2 = {net: 0.5 * load.get(net, 0.0) * 1e-12 * 1.8 ** 2 for net in driven}
    agree = 0
    for (_, inst, _), net in zip(instances, driven):
        assert theirs[inst] <= half_cv2[net] * 1.01
        agree += theirs[inst] == pytest.approx(half_cv2[net], rel=0.01)
    assert agree >= 0.75 * len(instances)
    # and energy_of charges exactly that per toggle: every driven net toggling once
    run = power.StreamRun(outputs=[], cycles=1, timed_out=False, toggles=dict.fromkeys(driven, 1))
    e = power.energy_of(run, a.netlist, "d4", liberty, cells, 10.0)
    assert e["switching_j"] == pytest.approx(sum(half_cv2.values()))


def test_liberty_tables_are_read_as_the_file_writes_them():
    lib, liberty = asic.find_library("osu018")
    model = power.liberty_power(liberty)
    assert model["voltage"] == 1.8
    arcs = model["cells"]["AND2X1"]["pins"]["Y"]["arcs"]
    assert [a[0] for a in arcs] == ["A", "B"]
    rise = arcs[0][1]
    # the first value of the A->Y rise table, at its first load and first transition
    assert power.arc_energy(model, rise, 0.005, 0.06) == pytest.approx(0.012351)
    assert power.arc_energy(model, rise, 0.15, 1.2) == pytest.approx(0.086416)
    assert power.arc_energy(model, rise, 1.0, 9.0) == pytest.approx(0.086416)  # clamped to the table
    mid = power.arc_energy(model, rise, (0.005 + 0.0125) / 2, 0.06)
    assert mid == pytest.approx((0.012351 + 0.013339) / 2)
    assert model["cells"]["AND2X1"]["leakage_w"] == pytest.approx(0.0746794e-9)
    clk = model["cells"]["DFFPOSX1"]["pins"]["CLK"]["arcs"]
    assert len(clk) == 1 and power.arc_energy(model, clk[0][1], 0.0, 0.06) == pytest.approx(0.006865)
