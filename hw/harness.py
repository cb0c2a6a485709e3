"""Co-simulation harness: the network top plus an image source, capture memories and a
cycle counter, so that a whole batch of inferences runs with no Python per cycle and
no Python per captured value.

* **source**: the batch's images (stream order, one after the other) sit in a source
  memory that the simulator loads from ``inputs.hex`` when ``load`` rises
  (``$readmemh``); with ``go`` high the harness streams the first ``n_images`` of them
  into the network back to back, one value per cycle whenever the network is ready;
* **captures**: every tap and the output stream are written into their own capture
  memory as the handshakes happen (``out`` is always ready), image after image; when
  ``dump`` rises the simulator writes each one to ``cap<i>.hex`` (``$writememh``);
* **stamps**: a cycle counter runs from the first input handshake to the batch's last
  output handshake (the first handshake is cycle 1, the definition of the cycle
  formulas); per capture and per image the counter value of the first and last value
  is kept, read through ``rd_sel``/``rd_img`` → ``rd_first``/``rd_last`` (capture
  ``len(captures)`` is the input stream), and ``rd_count`` says how many values a
  capture took in all (one more than expected stays visible as "too many");
* ``done`` rises when the output capture has taken ``n_images`` whole outputs;
* ``reset``, ``go`` and ``n_images`` act one clock edge later (they are registered).

Capture 0..n-2 are the taps of the layers in order, capture n-1 is the output.  The
source and capture memories are two small hand-written Verilog modules
(:data:`SUPPORT_VERILOG`) instantiated by name; :meth:`CaptureHarness.verilog` appends
them to the generated text.
"""
from __future__ import annotations

from math import prod

from amaranth.hdl import ClockDomain, ClockSignal, Instance, Module, Mux, Shape, Signal, unsigned
from amaranth.lib.memory import Memory
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from quantrtl.hw.network import NetworkTop

__all__ = ["CaptureHarness", "SUPPORT_VERILOG", "SUPPORT_STUBS", "MAX_BATCH", "CLOCK_NS", "capture_file", "SOURCE_FILE"]

COUNTER_BITS = 32
#: The clock period of the testbench wrapper (:meth:`CaptureHarness.verilog`).
CLOCK_NS = 10
ADDR_BITS = 32
#: The most images one back-to-back batch may hold.
MAX_BATCH = 8
#: The file the simulator loads the batch's images from (in its working folder).
SOURCE_FILE = "inputs.hex"


def capture_file(index: int) -> str:
    """The file capture ``index`` is dumped to (in the simulator's working folder)."""
    return f"cap{index}.hex"


#: The source and capture memories, plain Verilog-2005 that Icarus and Verilator both
#: run: file names are parameters, so no name from an input ever reaches a path.
SUPPORT_VERILOG = """
module quantrtl_source #(parameter DEPTH = 1, parameter FILE = "inputs.hex") (
  input clk, input load, input [31:0] raddr, output [7:0] rdata);
  reg [7:0] mem [0:DEPTH-1];
  always @(posedge load) $readmemh(FILE, mem);
  assign rdata = raddr < DEPTH ? mem[raddr] : 8'd0;
endmodule

module quantrtl_capture #(parameter DEPTH = 1, parameter FILE = "cap0.hex", parameter WIDTH = 8) (
  input clk, input we, input [31:0] waddr, input [WIDTH-1:0] wdata, input dump);
  reg [WIDTH-1:0] mem [0:DEPTH-1];
  always @(posedge clk) if (we) mem[waddr] <= wdata;
  always @(posedge dump) $writememh(FILE, mem);
endmodule
"""

#: The support modules' ports alone, for a tool that reads the harness without them
#: (``keep``: the capture memories have no outputs, yet they are the point).
SUPPORT_STUBS = """
(* blackbox, keep *) module quantrtl_source #(parameter DEPTH = 1, parameter FILE = "inputs.hex") (
  input clk, input load, input [31:0] raddr, output [7:0] rdata);
endmodule
(* blackbox, keep *) module quantrtl_capture #(parameter DEPTH = 1, parameter FILE = "cap0.hex", parameter WIDTH = 8) (
  input clk, input we, input [31:0] waddr, input [WIDTH-1:0] wdata, input dump);
endmodule
"""


class _Tracker:
    """Where one stream is within a batch: image and position counters, the write address,
    and the cycle stamps of each image's first and last value (two small memories, written
    on those values only: an event-driven simulator does no work for them in between)."""

    def __init__(self, m: Module, name: str, fire, size: int, batch: int, now, n_images, rd_img):
        self.img = Signal(range(batch + 1), name=f"img_{name}")
        self.pos = Signal(range(max(2, size)), name=f"pos_{name}")
        self.addr = Signal(ADDR_BITS, name=f"addr_{name}")
        self.extra = Signal(name=f"extra_{name}")  # a value beyond the batch arrived
        self.write = Signal(name=f"we_{name}")
        m.d.comb += self.write.eq(fire & (self.img < n_images))
        self.first = self._stamps(m, f"first_{name}", 0, batch, now, rd_img)
        self.last = self._stamps(m, f"last_{name}", size - 1, batch, now, rd_img)
        with m.If(self.write):
            m.d.sync += self.addr.eq(self.addr + 1)
            with m.If(self.pos == size - 1):
                m.d.sync += [self.pos.eq(0), self.img.eq(self.img + 1)]
            with m.Else():
                m.d.sync += self.pos.eq(self.pos + 1)
        with m.Elif(fire):
            m.d.sync += self.extra.eq(1)

    def _stamps(self, m: Module, name: str, at: int, batch: int, now, rd_img):
        """A memory of the cycle stamp of each image's value at position ``at``; its read data at ``rd_img``."""
        mem = m.submodules[name] = Memory(shape=unsigned(COUNTER_BITS), depth=batch, init=[])
        wp, rp = mem.write_port(), mem.read_port(domain="comb")
        m.d.comb += [wp.addr.eq(self.img), wp.data.eq(now), wp.en.eq(self.write & (self.pos == at)),
                     rp.addr.eq(rd_img)]
        return rp.data

    @property
    def count(self):
        return self.addr + self.extra


class CaptureHarness(wiring.Component):
    """Wraps :class:`NetworkTop` (with taps) for co-simulation of up to ``batch`` images
    streamed back to back."""

    def __init__(self, top: NetworkTop, batch: int = 3):
        if not top.tap_names and len(top.net.layers) > 1:
            raise ValueError("the network top must be built with taps=True")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch {batch}: a harness streams 1..{MAX_BATCH} images back to back")
        self.top, self.batch = top, batch
        self.captures = [(n, prod(top.net.layer(n).out_shape)) for n in top.tap_names]
        last = top.net.layers[-1]
        self.captures.append((last.name, prod(last.out_shape)))
        self.in_size = prod(top.net.input_shape)
        depth = max(size for _, size in self.captures) * batch
        #: a streaming design's join FIFOs, (join, input) in order: their high-water marks and
        #: skew-stall counts are read out as ``fifo_hwm<k>`` and ``fifo_stalls<k>``
        self.fifos = [(name, j) for name, ds in top.fifo_depths.items() for j in range(len(ds))]
        fifo_ports = {f"fifo_{kind}{k}": Out(COUNTER_BITS) for k in range(len(self.fifos)) for kind in ("hwm", "stalls")}
        super().__init__({
            **fifo_ports,
            "clk": In(1),
            "reset": In(1),
            "load": In(1),
            "go": In(1),
            "n_images": In(range(batch + 1)),
            "dump": In(1),
            "done": Out(1),
            "cycles": Out(COUNTER_BITS),
            "rd_sel": In(range(len(self.captures) + 1)),
            "rd_img": In(range(max(2, batch))),
            "rd_count": Out(range(depth + 2)),
            "rd_first": Out(COUNTER_BITS),
            "rd_last": Out(COUNTER_BITS),
        })

    @property
    def expected_cycles(self) -> int:
        return self.top.expected_cycles

    @property
    def memory_bits(self) -> dict[str, int]:
        return self.top.memory_bits

    @property
    def testbench_ports(self) -> dict[str, str]:
        """The wrapper's signals a testbench writes ("rw") or reads ("rd"), and nothing
        else: a simulator may optimize all the rest."""
        ports = {"clk": "rw"}
        ports.update({name: "rw" if member.flow == In else "rd"
                      for name, member in self.signature.members.items() if name != "clk"})
        return ports

    def verilog(self, top: str, clock: bool = True, netlist=None) -> str:
        """Verilog whose top module ``top`` is a testbench wrapper holding the harness
        (module ``<top>_harness``) with the support modules.  ``clock``: the wrapper makes
        the 10 ns clock itself, so the simulator runs it without the testbench's help (fast
        in Verilator); otherwise the testbench drives ``clk`` (faster in Icarus, whose
        own scheduler then has less to do).  ``netlist(rtlil, module, stubs)``, if given,
        turns the harness's own design (RTLIL text) into the Verilog the simulator runs
        (``stubs``: :data:`SUPPORT_STUBS`); the support modules and the wrapper follow it."""
        from quantrtl.hw.verilog import to_rtlil, to_verilog

        harness = f"{top}_harness"
        decls, conns = [], []
        for name, member in self.signature.members.items():
            if name == "clk":
                continue
            width = Shape.cast(member.shape).width
            rng = f"[{width - 1}:0] " if width > 1 else ""
            decls.append(f"  {'reg' if member.flow == In else 'wire'} {rng}{name}{' = 0' if member.flow == In else ''};")
            conns.append(f".{name}({name})")
        clk = f"  reg clk = 0;\n  always #{CLOCK_NS // 2} clk = ~clk;\n" if clock else "  reg clk = 0;\n"
        wrapper = (f"\nmodule {top};\n{clk}" + "\n".join(decls)
                   + f"\n  {harness} dut(.clk(clk), " + ", ".join(conns) + ");\nendmodule\n")
        design = to_verilog(self, harness) if netlist is None else netlist(to_rtlil(self, harness), harness,
                                                                            SUPPORT_STUBS)
        return design + SUPPORT_VERILOG + wrapper

    def testbench_files(self) -> dict:
        """What the testbench needs to know of the harness (so it imports no hardware code)."""
        return {"source_file": SOURCE_FILE, "capture_files": [capture_file(i) for i in range(len(self.captures))],
                "clock_ns": CLOCK_NS, "fifos": [list(f) for f in self.fifos]}

    def elaborate(self, platform):
        m = Module()
        # The testbench's inputs reach the design through registers only (the reset too:
        # the clock domain is the harness's own), so no logic of the design depends
        # combinationally on a top-level input: Verilator then evaluates it once per edge.
        m.domains.sync = sync = ClockDomain("sync")
        rst = Signal(init=1, reset_less=True)
        go, n_images = Signal(reset_less=True), Signal.like(self.n_images, reset_less=True)
        m.d.sync += [rst.eq(self.reset), go.eq(self.go), n_images.eq(self.n_images)]
        m.d.comb += [sync.clk.eq(self.clk), sync.rst.eq(rst)]
        top = m.submodules.top = self.top
        m.d.comb += top.out.ready.eq(1)
        for k, (name, j) in enumerate(self.fifos):
            e = top.engines[name]
            m.d.comb += [getattr(self, f"fifo_hwm{k}").eq(e.fifo_hwm[j]), getattr(self, f"fifo_stalls{k}").eq(e.fifo_stalls[j])]
        started = Signal()
        counter = Signal(COUNTER_BITS)
        now = Mux(started, counter + 1, 1)  # value of the counter for the current cycle
        m.d.comb += self.cycles.eq(counter)

        # the source: n_images images from the source memory, back to back
        src_data = Signal(8)
        src_valid = Signal()
        in_fire = src_valid & top.inp.ready
        source = _Tracker(m, "input", in_fire, self.in_size, self.batch, now, n_images, self.rd_img)
        m.d.comb += [src_valid.eq(go & (source.img < n_images)), top.inp.valid.eq(src_valid),
                     top.inp.payload.eq(src_data)]
        m.submodules.source = Instance(
            "quantrtl_source", p_DEPTH=self.in_size * self.batch, p_FILE=SOURCE_FILE,
            i_clk=ClockSignal(), i_load=self.load, i_raddr=source.addr, o_rdata=src_data)
        with m.If((in_fire | started) & ~self.done):
            m.d.sync += [started.eq(1), counter.eq(now)]

        trackers = []
        ports = [(getattr(top, f"tap_{n}"), n) for n in top.tap_names] + [(top.out, self.captures[-1][0])]
        for i, ((port, name), (_, size)) in enumerate(zip(ports, self.captures)):
            fire = port.valid & (port.ready if port is top.out else 1)
            t = _Tracker(m, name, fire, size, self.batch, now, n_images, self.rd_img)
            m.submodules[f"cap_{name}"] = Instance(
                "quantrtl_capture", p_DEPTH=size * self.batch, p_FILE=capture_file(i), p_WIDTH=len(port.payload),
                i_clk=ClockSignal(), i_we=t.write, i_waddr=t.addr, i_wdata=port.payload, i_dump=self.dump)
            trackers.append(t)
        m.d.comb += self.done.eq(trackers[-1].img == n_images)
        trackers.append(source)
        with m.Switch(self.rd_sel):
            for i, t in enumerate(trackers):
                with m.Case(i):
                    m.d.comb += [self.rd_count.eq(t.count), self.rd_first.eq(t.first), self.rd_last.eq(t.last)]
        return m
