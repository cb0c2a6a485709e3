"""Energy of one streamed map on a mapped standard-cell netlist: measured switching
activity combined with the library's power tables.

1. **Activity.** The netlist OpenSTA timed (``synth/asic.py``) is simulated cycle by cycle
   (:func:`simulate_netlist`: each cell evaluated from its Liberty ``function``, levelized,
   zero delay) on the design's stream input, one value per cycle whenever ``inp.ready``,
   output always ready: the golden input of the layer or the network; its outputs are
   compared with the golden model's, bit for bit.  Every net's settled value is compared
   with the previous cycle's, from the first cycle the stream is offered to the last
   output handshake (the cycles the cosim counts).  The same bench in Verilog
   (:func:`testbench`, :func:`simulate_stream`) runs the netlist in Icarus with the
   library's own cell models, counting each net's settled toggles per time step: the two
   agree on the outputs and the cycles, and on the toggles but for a net's first or last
   transition at the window's edges (a test); the Icarus run takes about ten times longer
   (17 s against 2 s for conv1's engine), too long for a whole network.
2. **Energy per toggle, from the library's tables.**  The packaged OpenSTA reads no VCD or
   SAIF and ignores per-pin activities (docs/results.md), so the measured toggles are
   combined with the Liberty file here (:func:`energy_of`): each toggle of a cell's output
   costs its switching energy ``1/2 C V^2`` (C: the input pins the net drives; no wire load,
   pre-layout) and the cell's internal energy, the mean over the output's arcs of the rise
   and fall tables at that load and a fixed input transition (:data:`DATA_SLEW_NS`; slews
   are not propagated); each clock edge costs every clock pin's passive energy and the
   clock net's ``1/2 C V^2`` (an ideal clock: no clock-tree buffers or wires); leakage is
   the cells' leakage over the cycles.  OpenSTA's own switching power at a global activity
   of one transition per period gives the same ``1/2 C V^2`` per net (a test checks it).

Split by kind (switching, internal, clock pins, clock net, leakage) and by cell class
(sequential, combinational).  The split into datapath, memories and control is not given:
ABC and ``write_verilog`` rename every cell, so the netlist keeps no trace of which engine
part a cell came from.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from quantrtl.synth.yosys import SynthesisError, run_icarus
from quantrtl.util.atomic import write_file

__all__ = ["StreamRun", "simulate_stream", "simulate_netlist", "liberty_functions", "energy_of", "stream_energy", "liberty_power", "arc_energy",
           "netlist_nets", "netlist_cells", "testbench", "DATA_SLEW_NS", "CLOCK_SLEW_NS"]

#: The half clock period of the testbench (ns); the energy takes the asked clock, not this.
HALF_NS = 5


@dataclass(frozen=True)
class StreamRun:
    outputs: list[int]  # the output payloads, as unsigned words
    cycles: int  # first offer of the stream to the last output handshake, inclusive
    toggles: dict[str, int]  # net name → settled toggles in those cycles
    timed_out: bool


def _decl_names(text: str) -> list[tuple[str, str]]:
    """(direction or "wire", name) of every single-bit declaration of a Yosys netlist."""
    return re.findall(r"^\s*(input|output|wire)\s+(\\\S+\s|[A-Za-z_][\w$]*)\s*;", text, re.M)


def netlist_nets(text: str) -> list[str]:
    """Every net of the netlist (ports included), as Verilog names (escaped ones end in a space)."""
    names = [name for _, name in _decl_names(text)]
    if re.search(r"^\s*(input|output|wire)\s+\[", text, re.M):
        raise SynthesisError("the netlist has multi-bit nets (expected one bit per net after splitnets -ports)")
    return list(dict.fromkeys(names))


def netlist_cells(text: str, cells: dict[str, dict]) -> list[tuple[str, str, dict[str, str]]]:
    """(cell type, instance, {pin: net}) of every library cell instance."""
    out = []
    for m in re.finditer(r"^\s*([A-Z][A-Z0-9_]*)\s+(\S+)\s*\((.*?)\);", text, re.M | re.S):
        if m.group(1) not in cells:
            continue
        pins = dict(re.findall(r"\.(\w+)\((\\\S+\s|[^()\s]+)\s*\)", m.group(3)))
        out.append((m.group(1), m.group(2), {p: n if n.startswith("\\") else n.strip() for p, n in pins.items()}))
    return out


def _port(name: str) -> tuple[str, int | None]:
    """``\\inp__payload[3] `` → ("inp__payload", 3); ``inp__valid`` → ("inp__valid", None)."""
    m = re.match(r"\\?([A-Za-z_]\w*)(?:\[(\d+)\])?\s*$", name)
    if m is None:
        raise SynthesisError(f"unexpected port name {name!r} in the netlist")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def testbench(text: str, top: str, n_in: int, n_out: int, max_cycles: int) -> tuple[str, list[str]]:
    """The testbench (module ``quantrtl_power_tb``) and the nets it counts, in order."""
    decls = _decl_names(text)
    ports = [(d, n) for d, n in decls if d in ("input", "output")]
    widths: dict[str, int] = {}
    for _, name in ports:
        base, bit = _port(name)
        widths[base] = max(widths.get(base, 0), 0 if bit is None else bit + 1)
    for need in ("clk", "rst", "inp__valid", "inp__ready", "inp__payload", "out__valid", "out__ready", "out__payload"):
        if need not in widths:
            raise SynthesisError(f"{top}: no {need} port; the energy bench drives a stream design (inp, out)")
    iw, ow = widths["inp__payload"], widths["out__payload"]
    conns = []
    for _, name in ports:
        base, bit = _port(name)
        conns.append(f".{name}({base}{'' if bit is None else f'[{bit}]'})")
    nets = [n for n in netlist_nets(text) if n.strip() != "clk"]
    watch = "\n".join(f"  always @(dut.{n}) ev({k}, dut.{n});" for k, n in enumerate(nets))
    n = len(nets)
    tb = f"""`timescale 1ns/1ps
module quantrtl_power_tb;
  reg clk = 0, rst = 1, inp__valid = 0, out__ready = 1;
  reg [{iw - 1}:0] inp__payload = 0;
  wire inp__ready, out__valid;
  wire [{ow - 1}:0] out__payload;
  {top} dut ({", ".join(conns)});
  always #{HALF_NS} clk = ~clk;
  reg [{iw - 1}:0] src [0:{max(n_in, 1) - 1}];
  reg cur [0:{n - 1}];
  reg st [0:{n - 1}];
  time t [0:{n - 1}];
  integer cnt [0:{n - 1}];
  integer k, fo, fc, n_in = 0, n_out = 0, cycle = 0, last = -1;
  reg counting = 0, in_fire = 0, out_fire = 0;
  reg [{ow - 1}:0] captured;
  task ev(input integer i, input v);
    begin
      if (counting && t[i] != $time) begin  // a new time step: the last one's settled toggle
        if ((cur[i] ^ st[i]) === 1'b1) cnt[i] = cnt[i] + 1;
        st[i] = cur[i];
        t[i] = $time;
      end
      cur[i] = v;
    end
  endtask
{watch}
  initial begin
    for (k = 0; k < {n}; k = k + 1) cnt[k] = 0;
    $readmemh("in.hex", src);
    fo = $fopen("out.hex", "w");
    repeat (3) @(posedge clk);
    rst <= 0;
    @(posedge clk);
    inp__valid <= {int(n_in > 0)};
    inp__payload <= src[0];
    for (k = 0; k < {n}; k = k + 1) begin st[k] = cur[k]; t[k] = $time; end
    counting = 1;
    while (n_out < {n_out} && cycle < {max_cycles}) begin
      @(negedge clk);
      in_fire = inp__valid & inp__ready;
      out_fire = out__valid & out__ready;
      captured = out__payload;
      @(posedge clk);
      cycle = cycle + 1;
      if (in_fire) n_in = n_in + 1;
      if (out_fire) begin $fdisplay(fo, "%h", captured); n_out = n_out + 1; last = cycle; end
      inp__valid <= n_in < {n_in};
      if (n_in < {n_in}) inp__payload <= src[n_in];
    end
    #1 counting = 0;
    for (k = 0; k < {n}; k = k + 1) if ((cur[k] ^ st[k]) === 1'b1) cnt[k] = cnt[k] + 1;
    fc = $fopen("toggles.txt", "w");
    for (k = 0; k < {n}; k = k + 1) $fdisplay(fc, "%0d", cnt[k]);
    $fclose(fc);
    $fclose(fo);
    $display("QUANTRTL_POWER cycles=%0d outputs=%0d", last, n_out);
    $finish;
  end
endmodule
"""
    return tb, nets


def simulate_stream(netlist: str | Path, top: str, inputs: list[int], n_out: int, cell_models: str | Path,
                    workdir: str | Path, max_cycles: int = 2_000_000) -> StreamRun:
    """Run the mapped ``netlist`` in Icarus on ``inputs``, counting every net's toggles."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    text = Path(netlist).read_text()
    tb, nets = testbench(text, top, len(inputs), n_out, max_cycles)
    write_file(work / "tb.v", tb)
    shutil.copyfile(netlist, work / "netlist.v")
    write_file(work / "in.hex", "\n".join(f"{int(v) & 0xFFFFFFFF:x}" for v in inputs) + "\n" if inputs else "0\n")
    r = run_icarus(work, ["tb.v", "netlist.v", str(cell_models)], f"the {top} netlist")
    m = re.search(r"QUANTRTL_POWER cycles=(-?\d+) outputs=(\d+)", r.stdout)
    if m is None:
        raise SynthesisError(f"the {top} netlist simulation printed no result; see {work / 'run.log'}")
    outs = []
    for line in (work / "out.hex").read_text().split():
        outs.append(int(line, 16) if all(c in "0123456789abcdefABCDEF" for c in line) else -1)
    counts = [int(x) for x in (work / "toggles.txt").read_text().split()]
    return StreamRun(outputs=outs, cycles=int(m.group(1)), toggles=dict(zip(nets, counts)),
                     timed_out=int(m.group(2)) < n_out)


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?[\d.]+(?:[eE][-+]?\d+)?", text)]


def _table(block: str, kind: str) -> tuple | None:
    """``rise_power``/``fall_power`` of an ``internal_power`` block: (template, index_1, index_2, values)."""
    m = re.search(kind + r"\s*\(\s*(\w+)\s*\)\s*\{(.*?)\}", block, re.S)
    if m is None:
        return None
    body = m.group(2)
    i1 = re.search(r"index_1\s*\(\s*\"([^\"]*)\"", body)
    i2 = re.search(r"index_2\s*\(\s*\"([^\"]*)\"", body)
    values = re.search(r"values\s*\((.*?)\)\s*;", body, re.S)
    return (m.group(1), _numbers(i1.group(1)) if i1 else [], _numbers(i2.group(1)) if i2 else [],
            [_numbers(row) for row in re.findall(r"\"([^\"]*)\"", values.group(1))] if values else [])


def _interp(xs: list[float], ys: list[float], grid: list[list[float]], x: float, y: float | None) -> float:
    """Bilinear interpolation in a Liberty table (clamped to its range); ``y`` None: 1-D."""
    import numpy as np

    def axis(v, points):
        v = min(max(v, points[0]), points[-1])
        i = max(0, min(len(points) - 2, int(np.searchsorted(points, v) - 1)))
        w = 0.0 if points[i + 1] == points[i] else (v - points[i]) / (points[i + 1] - points[i])
        return i, w

    if y is None or not ys:
        row = [r[0] for r in grid] if len(grid) > 1 and len(grid[0]) == 1 else grid[0]
        if len(xs) == 1:
            return row[0]
        i, w = axis(x, xs)
        return row[i] * (1 - w) + row[i + 1] * w
    i, wi = axis(x, xs)
    j, wj = axis(y, ys)
    return ((grid[i][j] * (1 - wj) + grid[i][j + 1] * wj) * (1 - wi)
            + (grid[i + 1][j] * (1 - wj) + grid[i + 1][j + 1] * wj) * wi)


@lru_cache(maxsize=None)
def liberty_power(path: str | Path) -> dict:
    """The power model of a Liberty file: its voltage, each template's variables, and per
    cell the internal-power arcs of each pin ({"output": [(rise, fall), ...] per related
    pin, "input": (rise, fall) passive tables}) and the leakage (W)."""
    text = Path(path).read_text()
    volt = re.search(r"nom_voltage\s*:\s*([\d.]+)", text)
    leak_unit = re.search(r"leakage_power_unit\s*:\s*\"1(\w+)\"", text)
    scale = {"nW": 1e-9, "uW": 1e-6, "pW": 1e-12, "mW": 1e-3}[leak_unit.group(1) if leak_unit else "nW"]
    templates = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"power_lut_template\s*\(\s*(\w+)\s*\)\s*\{\s*variable_1\s*:\s*(\w+)\s*;(?:\s*variable_2\s*:\s*(\w+)\s*;)?",
        text)}
    cells: dict[str, dict] = {}
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^\s*cell\s*\(\s*\"?(\w+)\"?\s*\)", text, re.M)]
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(text), "")]):
        body = text[start:end]
        leak = re.search(r"cell_leakage_power\s*:\s*([\d.eE+-]+)", body)
        pins: dict[str, dict] = {}
        marks = [(m.start(), m.group(1), m.group(2)) for m in re.finditer(
            r"pin\s*\(\s*\"?(\w+)\"?\s*\)\s*\{\s*direction\s*:\s*(\w+)", body)]
        for (ps, pin, direction), (pe, _, _) in zip(marks, marks[1:] + [(len(body), "", "")]):
            arcs = []
            for block in re.split(r"internal_power\s*\(\s*\)", body[ps:pe])[1:]:
                related = re.search(r"related_pin\s*:\s*\"(\w+)\"", block)
                arcs.append((related.group(1) if related else None, _table(block, "rise_power"),
                             _table(block, "fall_power")))
            pins[pin] = {"direction": direction, "arcs": arcs}
        cells[name] = {"leakage_w": float(leak.group(1)) * scale if leak else 0.0, "pins": pins}
    return {"voltage": float(volt.group(1)) if volt else None, "templates": templates, "cells": cells}


def arc_energy(model: dict, table: tuple | None, load_pf: float, slew_ns: float) -> float:
    """One table's energy (pJ: the library's capacitance x voltage^2 unit) at a load and an
    input transition, whichever order the table's template names them in."""
    if table is None or not table[3]:
        return 0.0
    template, i1, i2, grid = table
    v1, v2 = model["templates"].get(template, ("total_output_net_capacitance", "input_transition_time"))
    value = {"total_output_net_capacitance": load_pf, "input_transition_time": slew_ns}
    x = value.get(v1, slew_ns)
    y = value.get(v2, slew_ns) if v2 else None
    return _interp(i1, i2, grid, x, y)


#: The input transition the internal-energy tables are read at (ns): the data pins' and the
#: ideal clock's.  Pre-layout: slews are not propagated; docs/results.md gives the spread
#: between the tables' ends.
DATA_SLEW_NS = 0.1
CLOCK_SLEW_NS = 0.06


def energy_of(run: StreamRun, netlist: str | Path, top: str, liberty: str | Path, cells: dict[str, dict],
              clock_ns: float, data_slew_ns: float = DATA_SLEW_NS, clock_slew_ns: float = CLOCK_SLEW_NS) -> dict:
    """The energy (J) of ``run`` on ``netlist`` at ``clock_ns``: per net toggle, its
    switching energy 1/2 C V^2 (C: the input pins it drives) and the driving cell's
    internal energy (the mean over the output's arcs of the rise and fall tables at that
    load); per clock edge, every clock pin's passive energy and the clock net's switching;
    leakage over the cycles.  By kind and by cell class (sequential, combinational)."""
    model = liberty_power(liberty)
    volt = model["voltage"]
    if not volt:
        raise SynthesisError(f"{liberty}: no nom_voltage")
    text = Path(netlist).read_text()
    instances = netlist_cells(text, cells)
    load: dict[str, float] = {}
    for cell, _, pins in instances:
        for pin, net in pins.items():
            if cells[cell]["pins"].get(pin) == "input":
                load[net] = load.get(net, 0.0) + cells[cell]["caps"].get(pin, 0.0)
    clock = next((n for n in netlist_nets(text) if n.strip() == "clk"), None)
    edges = 2 * run.cycles  # the clock net's toggles in the window
    window = run.cycles * clock_ns * 1e-9
    pj = 1e-12
    out = dict.fromkeys(("switching", "internal", "clock_pins", "clock_net", "leakage", "sequential",
                         "combinational"), 0.0)
    for cell, inst, pins in instances:
        lib_cell = model["cells"][cell]
        seq = cells[cell]["sequential"]
        e_cell = lib_cell["leakage_w"] * window
        out["leakage"] += e_cell
        for pin, net in pins.items():
            spec = lib_cell["pins"].get(pin)
            if spec is None:
                continue
            if spec["direction"] == "output":
                toggles = run.toggles.get(net, 0)
                arcs = spec["arcs"]
                slew = clock_slew_ns if seq else data_slew_ns
                per = (sum((arc_energy(model, r, load.get(net, 0.0), slew) + arc_energy(model, f, load.get(net, 0.0), slew))
                           / 2 for _, r, f in arcs) / len(arcs)) if arcs else 0.0
                e_int = per * pj * toggles
                e_sw = 0.5 * load.get(net, 0.0) * pj * volt ** 2 * toggles
                out["internal"] += e_int
                out["switching"] += e_sw
                e_cell += e_int + e_sw
            elif spec["arcs"]:  # an input pin's own (passive) energy per transition
                toggles = edges if net == clock else run.toggles.get(net, 0)
                slew = clock_slew_ns if net == clock else data_slew_ns
                e_in = sum((arc_energy(model, r, 0.0, slew) + arc_energy(model, f, 0.0, slew)) / 2
                           for _, r, f in spec["arcs"]) / len(spec["arcs"]) * pj * toggles
                out["clock_pins" if net == clock else "internal"] += e_in
                e_cell += e_in
        out["sequential" if seq else "combinational"] += e_cell
    # nets the ports drive: the clock (two edges a cycle) and the data inputs
    for d, n in _decl_names(text):
        if d == "input":
            toggles = edges if n == clock else run.toggles.get(n, 0)
            e = 0.5 * load.get(n, 0.0) * pj * volt ** 2 * toggles
            out["clock_net" if n == clock else "switching"] += e
    total = out["switching"] + out["internal"] + out["clock_pins"] + out["clock_net"] + out["leakage"]
    return {"energy_j": total, "switching_j": out["switching"], "internal_j": out["internal"],
            "clock_pins_j": out["clock_pins"], "clock_net_j": out["clock_net"], "leakage_j": out["leakage"],
            "sequential_cells_j": out["sequential"], "combinational_cells_j": out["combinational"],
            "cycles": run.cycles, "clock_ns": clock_ns, "voltage": volt, "data_slew_ns": data_slew_ns,
            "clock_slew_ns": clock_slew_ns, "toggles": sum(run.toggles.values()), "nets": len(run.toggles)}


def stream_energy(asic: dict, inputs, expected, dense_macs: int, cache_dir: str | Path | None = None) -> dict:
    """Energy of one map streamed through a design mapped by :func:`~quantrtl.synth.asic.asic_map`
    (``asic``: its result as a dict): the netlist simulated on ``inputs``, its outputs
    checked against ``expected`` bit for bit (first mismatch reported), the energy by kind,
    per inference and per dense MAC.  Cached by content (netlist, stimulus, library)."""
    import hashlib
    import json

    import numpy as np

    from quantrtl.synth.asic import find_library, library_cells
    from quantrtl.util.atomic import atomic_write

    _, liberty = find_library(asic["library"])
    netlist = Path(asic["netlist"])
    inputs = [int(v) for v in np.asarray(inputs).ravel()]
    expected = [int(v) for v in np.asarray(expected).ravel()]
    key = hashlib.sha256(b"\0".join([netlist.read_bytes(), json.dumps([inputs, expected, asic["clock_ns"], dense_macs,
                                                                      DATA_SLEW_NS, CLOCK_SLEW_NS]).encode(),
                                     liberty.read_bytes(), Path(__file__).read_bytes()])).hexdigest()
    cache_file = Path(cache_dir) / f"energy-{key}.json" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        return {**json.loads(cache_file.read_text()), "cached": True}
    text = netlist.read_text()
    run = simulate_netlist(text, asic["top"], liberty, inputs, len(expected),
                           max_cycles=max(10_000, 50 * (len(inputs) + len(expected)) + 100 * dense_macs))
    energy = energy_of(run, netlist, asic["top"], liberty, library_cells(str(liberty)), asic["clock_ns"])
    bits = re.findall(r"out__payload\[(\d+)\]", text)
    mask = (1 << (1 + max(int(b) for b in bits))) - 1 if bits else 1  # the payload's width
    want = [v & mask for v in expected]
    mismatch = None
    for i, (w, g) in enumerate(zip(want, run.outputs)):
        if w != g:
            mismatch = {"index": i, "expected": w, "got": g}
            break
    if mismatch is None and len(run.outputs) != len(want):
        mismatch = {"index": min(len(run.outputs), len(want)), "expected": len(want), "got": len(run.outputs),
                    "what": "output count"}
    result = {**energy, "bit_exact": mismatch is None, "first_mismatch": mismatch, "outputs": len(run.outputs),
              "timed_out": run.timed_out, "dense_macs": dense_macs,
              "energy_per_mac_pj": energy["energy_j"] / dense_macs * 1e12 if dense_macs else None,
              "simulator": "the netlist's cells evaluated from their Liberty functions, zero delay",
              "cached": False}
    if cache_file is not None:
        atomic_write(cache_file, json.dumps(result))
    return result


def _function(expr: str) -> str:
    """A Liberty ``function`` as a Python expression over numpy booleans (``!`` not, ``+``
    or ``|`` or, ``*``, ``&`` or juxtaposition and, ``^`` xor)."""
    f = expr.replace("!", "~").replace("+", "|").replace("*", "&")
    prev = None
    while prev != f:  # juxtaposition is AND
        prev = f
        f = re.sub(r"([\w)])\s+([\w(~])", r"\1 & \2", f)
    return f


@lru_cache(maxsize=None)
def liberty_functions(path: str | Path) -> dict[str, dict]:
    """Cell → {"outputs": {pin: python expression}} for combinational cells, or
    {"ff": (D pin, clock pin, Q pin)} for a rising-edge flip-flop without set or clear."""
    text = Path(path).read_text()
    out: dict[str, dict] = {}
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^\s*cell\s*\(\s*\"?(\w+)\"?\s*\)", text, re.M)]
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(text), "")]):
        body = text[start:end]
        funcs = dict(re.findall(r"pin\s*\(\s*\"?(\w+)\"?\s*\)\s*\{[^{}]*?function\s*:\s*\"([^\"]+)\"", body))
        ff = re.search(r"\bff\s*\(\s*(\w+)\s*,\s*\w+\s*\)\s*\{\s*next_state\s*:\s*\"(\w+)\"\s*;\s*"
                       r"clocked_on\s*:\s*\"(\w+)\"\s*;\s*\}", body)
        if ff:
            q = next((p for p, f in funcs.items() if f.strip() == ff.group(1)), None)
            if q is not None:
                out[name] = {"ff": (ff.group(2), ff.group(3), q)}
        elif not re.search(r"\b(ff|latch|three_state)\b", body) and funcs:
            out[name] = {"outputs": {p: _function(f) for p, f in funcs.items()}}
    return out


def simulate_netlist(text: str, top: str, liberty: str | Path, inputs: list[int], n_out: int,
                     max_cycles: int = 2_000_000) -> StreamRun:
    """The stream bench of :func:`testbench`, cycle by cycle on the mapped netlist itself:
    every cell evaluated from its Liberty ``function`` (levelized, one numpy operation per
    level and cell type), every flip-flop loaded on the clock edge, every net's settled
    value compared with the previous cycle's.  Zero delay, like the Icarus run it is
    checked against (``tests/synth/test_asic.py``), at a fraction of its time."""
    import numpy as np

    funcs = liberty_functions(liberty)
    from quantrtl.synth.asic import library_cells

    cells = library_cells(str(liberty))
    nets = netlist_nets(text)
    index = {n: i for i, n in enumerate(nets)}
    n_nets = len(nets) + 2
    const = {"1'h0": len(nets), "1'b0": len(nets), "1'h1": len(nets) + 1, "1'b1": len(nets) + 1}

    def at(net: str) -> int:
        if net in index:
            return index[net]
        if net.strip() in const:
            return const[net.strip()]
        raise SynthesisError(f"{top}: net {net!r} is not declared in the netlist")

    ffs, comb = [], []
    for cell, inst, pins in netlist_cells(text, cells):
        spec = funcs.get(cell)
        if spec is None:
            raise SynthesisError(f"{top}: cell {cell} ({inst}) has no function the simulation knows")
        if "ff" in spec:
            d, clk, q = spec["ff"]
            if pins.get(clk, "").strip() != "clk":
                raise SynthesisError(f"{top}: flip-flop {inst} is not clocked by clk")
            ffs.append((at(pins[d]), at(pins[q])))
        else:
            for pin, expr in spec["outputs"].items():
                if pin in pins:
                    ins = {p: at(n) for p, n in pins.items() if cells[cell]["pins"].get(p) == "input"}
                    comb.append((cell, pin, expr, ins, at(pins[pin])))
    # levelize: a cell's level is one more than its inputs' deepest driver
    driver = {o: k for k, (_, _, _, _, o) in enumerate(comb)}
    level = [-1] * len(comb)
    for k in range(len(comb)):
        stack = [k]
        while stack:
            c = stack[-1]
            if level[c] >= 0:
                stack.pop()
                continue
            pending = [driver[i] for i in comb[c][3].values() if i in driver and level[driver[i]] < 0]
            if pending:
                if len(stack) > len(comb):
                    raise SynthesisError(f"{top}: combinational loop in the netlist")
                stack.extend(pending)
                continue
            level[c] = 1 + max((level[driver[i]] for i in comb[c][3].values() if i in driver), default=-1)
            stack.pop()
    groups: dict = {}
    for k, (cell, pin, expr, ins, o) in enumerate(comb):
        groups.setdefault((level[k], cell, pin), []).append(k)
    plan = []
    for (lvl, cell, pin), ks in sorted(groups.items()):
        expr = comb[ks[0]][2]
        names = sorted(comb[ks[0]][3])
        code = compile(expr, f"<{cell}.{pin}>", "eval")
        plan.append((code, {p: np.array([comb[k][3][p] for k in ks]) for p in names},
                     np.array([comb[k][4] for k in ks])))
    d_idx = np.array([d for d, _ in ffs], dtype=np.int64)
    q_idx = np.array([q for _, q in ffs], dtype=np.int64)
    value = np.zeros(n_nets, dtype=bool)
    value[len(nets) + 1] = True

    ports = {}
    for d, name in _decl_names(text):
        if d in ("input", "output"):
            base, bit = _port(name)
            ports.setdefault(base, {})[bit or 0] = index[name]

    def set_word(base, word):
        for bit, i in ports[base].items():
            value[i] = bool((word >> bit) & 1)

    def get_word(base):
        return sum(int(value[i]) << bit for bit, i in ports[base].items())

    def settle():
        for code, pins, out in plan:
            value[out] = eval(code, {}, {p: value[idx] for p, idx in pins.items()})

    toggles = np.zeros(n_nets, dtype=np.int64)
    outputs, n_in, cycle, last = [], 0, 0, -1
    set_word("out__ready", 1)
    for step in range(4):  # reset: three cycles, then the first offer of the stream
        set_word("rst", 1 if step < 3 else 0)
        if step == 3:
            set_word("inp__valid", int(len(inputs) > 0))
            if inputs:
                set_word("inp__payload", inputs[0])
        settle()
        if step < 3:
            value[q_idx] = value[d_idx]
    before = value.copy()
    while len(outputs) < n_out and cycle < max_cycles:
        in_fire = get_word("inp__valid") and get_word("inp__ready")
        out_fire = get_word("out__valid") and get_word("out__ready")
        captured = get_word("out__payload")
        value[q_idx] = value[d_idx]  # the clock edge
        cycle += 1
        n_in += int(bool(in_fire))
        if out_fire:
            outputs.append(captured)
            last = cycle
        set_word("inp__valid", int(n_in < len(inputs)))
        if n_in < len(inputs):
            set_word("inp__payload", inputs[n_in])
        settle()
        toggles += value != before
        before = value.copy()
    names = [n for n in nets if n.strip() != "clk"]
    return StreamRun(outputs=outputs, cycles=last, toggles={n: int(toggles[index[n]]) for n in names},
                     timed_out=len(outputs) < n_out)
