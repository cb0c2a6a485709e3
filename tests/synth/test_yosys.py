"""The Yosys flow: parser on known designs, sanity of the counts, reproducibility, failures."""
import json
import subprocess

import pytest
from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from quantrtl.hw.array import MacArray
from quantrtl.hw.pe import make_pe
from quantrtl.hw.verilog import to_verilog
from quantrtl.model.numbers.families import parse_format
from quantrtl.synth.yosys import SynthesisError, synthesize, yosys_command

pytestmark = pytest.mark.yosys

KNOWN = """
module known(input clk, input a, input b, input c, input [3:0] wa, input [3:0] ra, input [7:0] wd, input we,
             output y, output reg q, output [7:0] rd);
  assign y = (a & b) ^ c;
  always @(posedge clk) q <= a;
  reg [7:0] mem [0:15];
  always @(posedge clk) if (we) mem[wa] <= wd;
  assign rd = mem[ra];
endmodule
"""


def synth_text(tmp_path, text, top, **kw):
    v = tmp_path / f"{top}.v"
    v.write_text(text)
    return synthesize(v, top, cache_dir=None, **kw)


def synth_component(tmp_path, comp, top):
    return synth_text(tmp_path, to_verilog(comp, top), top)


def test_parser_on_known_design(tmp_path):
    r = synth_text(tmp_path, KNOWN, "known")
    assert r.gates_total == 2, r.gates_by_type  # one AND, one XOR
    assert sum(r.gates_by_type.values()) == 2 and set(r.gates_by_type) <= {"$_AND_", "$_XOR_", "$_XNOR_", "$_NOR_",
                                                                           "$_ANDNOT_", "$_OR_", "$_NAND_", "$_ORNOT_"}
    assert r.flipflops == 1
    assert r.memory_bits == 128 and r.memories[0]["width"] == 8 and r.memories[0]["depth"] == 16
    assert r.transistors and r.transistors > 0
    assert r.logic_depth == 2  # a -> AND -> XOR -> y: two gate levels (the memory read is one)
    assert r.yosys_version.startswith("Yosys") and "abc -g AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX" in r.yosys_script


class Reg(wiring.Component):
    def __init__(self):
        super().__init__({"d": In(unsigned(4)), "q": Out(unsigned(4))})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.q.eq(self.d)
        return m


def test_flipflops_counted(tmp_path):
    r = synth_component(tmp_path, Reg(), "reg4")
    assert r.flipflops == 4 and r.memory_bits == 0


def test_pe_sanity(tmp_path):
    """fixed-point PE > shift PE > binary PE, in synthesized gates."""
    g = {q: synth_component(tmp_path, make_pe(parse_format(q)), f"pe_{q}").gates_total
         for q in ("fixed8", "shift4", "binary")}
    assert g["fixed8"] > g["shift4"] > g["binary"] > 0, g


def test_gates_grow_with_lanes(tmp_path):
    g = [synth_component(tmp_path, MacArray(parse_format("shift4"), p, 20), f"arr{p}").gates_total for p in (2, 4, 8)]
    assert g[0] < g[1] < g[2], g


def test_results_reproduce_and_cache(tmp_path):
    v = tmp_path / "arr.v"
    v.write_text(to_verilog(MacArray(parse_format("ternary"), 4, 16), "arr"))
    cache = tmp_path / "cache"
    first = synthesize(v, "arr", cache_dir=cache)
    again = synthesize(v, "arr", cache_dir=cache)
    fresh = synthesize(v, "arr", cache_dir=None, workdir=tmp_path / "w2")
    assert not first.cached and again.cached
    assert first.gates_total == again.gates_total == fresh.gates_total
    assert first.gates_by_type == fresh.gates_by_type
    # re-run the recorded script by hand on the recorded file: the same count
    work = tmp_path / "manual"
    work.mkdir()
    (work / "arr.v").write_text(v.read_text())
    (work / "s.ys").write_text(first.yosys_script)
    subprocess.run([*yosys_command(None), "-q", "s.ys"], cwd=work, check=True, capture_output=True)
    stat = json.loads((work / "stat.json").read_text())
    cells = stat["design"]["num_cells_by_type"]
    assert sum(n for t, n in cells.items() if t in first.gates_by_type) == first.gates_total


def test_bad_verilog_names_the_log(tmp_path):
    with pytest.raises(SynthesisError, match=r"Yosys failed on broken.v \(top broken\): .*; see .*yosys.log"):
        synth_text(tmp_path, "module broken(input a, output y); assign y = a +; endmodule\n", "broken")


def test_missing_yosys(tmp_path):
    (tmp_path / "t.v").write_text("module t(input a, output y); assign y = a; endmodule\n")
    with pytest.raises(SynthesisError, match="Yosys not found at '/nonexistent/yosys'"):
        synthesize(tmp_path / "t.v", "t", yosys="/nonexistent/yosys")
    with pytest.raises(SynthesisError, match="Verilog file not found"):
        synthesize(tmp_path / "none.v", "t")
