"""Which tool versions produced a result (recorded in every artifact and report)."""
from __future__ import annotations

import importlib.metadata as md
import platform


def package_versions(*packages: str, python: bool = False) -> dict[str, str]:
    """``{package: version}`` (``"not installed"`` when absent), optionally with Python's."""
    out = {"python": platform.python_version()} if python else {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
