"""quantrtl: quantized CNN weights → Amaranth MAC arrays → bit-exact co-simulation and Yosys
gate counts.

The Python API (:mod:`quantrtl.api`): ``quantize``, ``verilog``, ``cosim``, ``gates``,
``sweep`` and ``load``.  They load on first use, so importing a sub-package (``quantrtl.hw``,
``quantrtl.sim.golden``) stays light.
"""
from __future__ import annotations

__all__ = ["quantize", "verilog", "cosim", "gates", "sweep", "load"]


def __getattr__(name: str):
    if name in __all__:
        from quantrtl import api

        return getattr(api, name)
    raise AttributeError(f"module 'quantrtl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
