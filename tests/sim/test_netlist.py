"""The simulation netlist (Yosys ``proc; opt`` of the design) behaves as Amaranth's Verilog."""
import subprocess

import pytest
from amaranth.hdl import Instance, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from quantrtl.hw.verilog import to_rtlil, to_verilog
from quantrtl.sim.netlist import NETLIST_SCRIPT, simulation_netlist
from quantrtl.synth.yosys import SynthesisError

pytestmark = [pytest.mark.yosys, pytest.mark.icarus]

STUB = "(* blackbox, keep *) module probe(input clk, input [7:0] d);\nendmodule\n"
PROBE = "module probe(input clk, input [7:0] d);\nendmodule\n"


class Mac(wiring.Component):
    """A little of everything the engines use: a ROM, a signed multiply-accumulate with a
    synchronous clear, a comparison, a counter, a mux and an instance with no outputs."""
    x: In(signed(8))
    clear: In(1)
    acc: Out(signed(20))
    big: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.rom = rom = Memory(shape=signed(8), depth=8, init=[3, -5, 7, 1, -128, 127, 0, -1])
        rd = rom.read_port(domain="comb")
        count = Signal(8)
        m.d.comb += [rd.addr.eq(count), self.big.eq(self.acc > 1000)]
        m.d.sync += [count.eq(count + 1),
                     self.acc.eq(Mux(self.clear, 0, self.acc + self.x * rd.data))]
        m.submodules.probe = Instance("probe", i_clk=Signal(), i_d=count)
        return m


TESTBENCH = """
module tb;
  reg clk = 0; reg rst = 1; reg clear = 0; reg signed [7:0] x = 0; integer i; integer seed = 1;
  wire signed [19:0] acc; wire big;
  mac dut(.clk(clk), .rst(rst), .x(x), .clear(clear), .acc(acc), .big(big));
  initial begin
    #3 rst = 0;
    for (i = 0; i < 400; i = i + 1) begin
      x = $random(seed); clear = (i % 97) == 0;
      #5 clk = 1; #5 clk = 0; $display("%0d %0d %0d", i, acc, big);
    end
    $finish;
  end
endmodule
"""


def run_icarus(folder, design: str) -> str:
    folder.mkdir()
    (folder / "d.v").write_text(design + PROBE + TESTBENCH)
    subprocess.run(["iverilog", "-g2012", "-s", "tb", "-o", "sim.vvp", "d.v"], cwd=folder, check=True)
    return subprocess.run(["vvp", "-n", "sim.vvp"], cwd=folder, check=True, capture_output=True,
                          text=True).stdout


def test_netlist_simulates_like_the_emitted_verilog(tmp_path):
    netlist = simulation_netlist(to_rtlil(Mac(), "mac"), "mac", STUB, cache_dir=tmp_path / "cache")
    assert netlist.startswith("// mac: the emitted Verilog after Yosys `proc; opt`")
    assert "probe" in netlist  # the instance without outputs is kept
    emitted = run_icarus(tmp_path / "a", to_verilog(Mac(), "mac"))
    simulated = run_icarus(tmp_path / "b", netlist)
    assert len(emitted.splitlines()) == 400
    assert emitted == simulated
    assert {line.split()[2] for line in emitted.splitlines()} == {"0", "1"}  # both ways the comparison goes
    # cached by content: the same design again is read back, no Yosys run
    (cached,) = (tmp_path / "cache").glob("netlist-*.v")
    cached.write_text(cached.read_text() + "// read back\n")
    assert simulation_netlist(to_rtlil(Mac(), "mac"), "mac", STUB, cache_dir=tmp_path / "cache").endswith(
        "// read back\n")
    assert not list((tmp_path / "cache").glob(".netlist-*"))  # no scratch folder left behind


def test_netlist_failure_names_the_module(tmp_path):
    with pytest.raises(SynthesisError, match="simulation netlist of mac"):
        simulation_netlist(to_rtlil(Mac(), "mac"), "mac", "", cache_dir=tmp_path)  # the probe undefined
    assert NETLIST_SCRIPT == "proc; opt"
    assert not list(tmp_path.glob(".netlist-*"))
