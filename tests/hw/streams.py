"""Amaranth-simulator driver for stream engines (test helper, imported explicitly)."""
from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator


def run_stream(dut, inputs, n_out: int, ready_prob: float = 1.0, valid_prob: float = 1.0,
               seed: int = 0, max_cycles: int = 2_000_000, taps: dict | None = None):
    """Push ``inputs`` into ``dut.inp`` (or, a dict: each list into the port it names, all
    at once, e.g. a join's ``inp0``, ``inp1``) and collect ``n_out`` values from ``dut.out``.

    Returns ``(outputs, cycles)``, where cycles counts from the first input handshake to
    the last output handshake, inclusive.  ``ready_prob``/``valid_prob`` < 1 add random
    back-pressure and bubbles.  ``taps`` maps names to tap ports to record.
    """
    rng = np.random.default_rng(seed)
    outs, tap_vals = [], {k: [] for k in (taps or {})}
    state = {"first": None, "last": None}
    feeds = inputs if isinstance(inputs, dict) else {"inp": inputs}
    sim = Simulator(dut)
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
            if ready and ctx.get(dut.out.valid):
                outs.append(ctx.get(dut.out.payload))
                state["last"] = cycle
            for k, port in (taps or {}).items():
                if ctx.get(port.valid):
                    tap_vals[k].append(ctx.get(port.payload))
            await ctx.tick()
            cycle += 1

    sim.add_testbench(bench)
    sim.run()
    cycles = state["last"] - state["first"] + 1
    return (np.array(outs), cycles, tap_vals) if taps else (np.array(outs), cycles)
