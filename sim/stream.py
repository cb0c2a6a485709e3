"""Simulate one stream engine alone in the Amaranth simulator: push an input map, collect
its outputs, count the cycles (first input handshake to last output handshake).

What the dense vs zero-skipping comparison (``quantrtl gates --sparse``) measures a layer
with, and what the engine tests drive engines with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

__all__ = ["run_stream", "LayerIO", "layer_io", "measure_layer"]


def run_stream(dut, inputs, n_out: int, ready_prob: float = 1.0, valid_prob: float = 1.0,
               seed: int = 0, max_cycles: int = 2_000_000, taps: dict | None = None, record: dict | None = None):
    """Push ``inputs`` into ``dut.inp`` (or, a dict: each list into the port it names, all
    at once, e.g. a join's ``inp0``, ``inp1``) and collect ``n_out`` values from ``dut.out``.

    Returns ``(outputs, cycles)``, where cycles counts from the first input handshake to
    the last output handshake, inclusive.  ``ready_prob``/``valid_prob`` < 1 add random
    back-pressure and bubbles.  ``taps`` maps names to tap ports to record.  ``record``
    (a dict, filled in): ``in_cycles`` and ``out_cycles``, the cycle of every input and
    output handshake (the first input's is 1), and ``watched``: for each of its ``watch``
    signals (a dict of names to signals) the value after the last output.
    """
    rng = np.random.default_rng(seed)
    outs, tap_vals = [], {k: [] for k in (taps or {})}
    state = {"first": None, "last": None}
    feeds = inputs if isinstance(inputs, dict) else {"inp": inputs}
    sim = Simulator(_clocked(dut))
    sim.add_clock(1e-8)

    async def bench(ctx):
        pos, cycle = dict.fromkeys(feeds, 0), 0
        while len(outs) < n_out:
            if cycle > max_cycles:
                raise TimeoutError(f"no progress after {max_cycles} cycles ({len(outs)}/{n_out} outputs)")
            driven = {}
            for name, values in feeds.items():
                port, i = getattr(dut, name), pos[name]
                driven[name] = drive = i < len(values) and rng.random() < valid_prob
                ctx.set(port.valid, int(drive))
                if drive:
                    ctx.set(port.payload, int(values[i]))
            ready = int(rng.random() < ready_prob)
            ctx.set(dut.out.ready, ready)
            for name, drive in driven.items():
                if drive and ctx.get(getattr(dut, name).ready):
                    if state["first"] is None:
                        state["first"] = cycle
                    pos[name] += 1
                    stamps["in"].append(cycle)
            if ready and ctx.get(dut.out.valid):
                outs.append(ctx.get(dut.out.payload))
                state["last"] = cycle
                stamps["out"].append(cycle)
            for k, port in (taps or {}).items():
                if ctx.get(port.valid):
                    tap_vals[k].append(ctx.get(port.payload))
            await ctx.tick()
            cycle += 1
        if record is not None:
            record["watched"] = {k: ctx.get(v) for k, v in record.get("watch", {}).items()}

    stamps = {"in": [], "out": []}
    sim.add_testbench(bench)
    sim.run()
    cycles = state["last"] - state["first"] + 1
    if record is not None:
        record["in_cycles"] = [c - state["first"] + 1 for c in stamps["in"]]
        record["out_cycles"] = [c - state["first"] + 1 for c in stamps["out"]]
    return (np.array(outs), cycles, tap_vals) if taps else (np.array(outs), cycles)


def _clocked(dut):
    """``dut`` inside a module with a ``sync`` domain of its own, so that a purely
    combinational engine (an unfused ReLU) is driven cycle by cycle like the others."""
    from amaranth.hdl import Module, Signal

    m = Module()
    m.submodules.dut = dut
    toggle = Signal(name="clocked")
    m.d.sync += toggle.eq(~toggle)
    return m


@dataclass(frozen=True)
class LayerIO:
    """One layer's input map and the golden model's output, both in stream order, and
    the (C, H, W) map a linear layer reads (None otherwise)."""

    inputs: np.ndarray
    expected: np.ndarray
    source_shape: tuple | None


def layer_io(net, gold, where: str, x: np.ndarray, index: int = 0) -> LayerIO:
    """Layer ``where`` of ``net`` on image ``x`` (its golden run ``gold``, batch ``index``)."""
    from quantrtl.model.numbers.artifact import INPUT
    from quantrtl.model.numbers.layout import to_stream

    layer = net.layer(where)
    src = net.sources(layer)[0]
    shape = tuple(net.input_shape) if src == INPUT else tuple(net.layer(src).out_shape)
    inp = x if src == INPUT else gold.outputs[src][index]
    return LayerIO(inputs=to_stream(inp, shape), expected=to_stream(gold.outputs[where][index], layer.out_shape),
                   source_shape=shape if layer.kind.flattens and len(shape) == 3 else None)


def measure_layer(engine, io: LayerIO) -> tuple[int, bool]:
    """``(cycles, bit-exact)`` of ``engine`` on one map: input valid and output ready
    throughout, cycles from the first input to the last output handshake."""
    got, cycles = run_stream(engine, list(io.inputs), len(io.expected))
    return cycles, bool(len(got) == len(io.expected) and np.array_equal(got, io.expected))
