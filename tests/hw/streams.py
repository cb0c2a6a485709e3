"""Amaranth-simulator driver for stream engines (test helper): the package's own."""
from quantrtl.sim.stream import run_stream

__all__ = ["run_stream"]
