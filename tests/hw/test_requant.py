"""Requantizer against the golden rule (docs/integer-semantics.md §3)."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from quantrtl.hw.requant import Requantizer
from quantrtl.sim.golden import requantize


@pytest.mark.parametrize("width,shifts,z,relu", [(18, (30, 40), 0, True), (24, (1, 62), 17, True),
                                                 (40, (40, 90), 128, False), (63, (60, 127), 255, False)])
def test_requantizer_matches_golden(width, shifts, z, relu):
    lo, hi = (z if relu else 0), 255
    rq = Requantizer(width, shifts, z, lo, hi)
    rng = np.random.default_rng(width)
    extremes = [-(1 << (width - 1)), (1 << (width - 1)) - 1, 0, -1, 1]
    cases = [(int(a), int(rng.integers(1 << 30, 1 << 31)), int(rng.integers(shifts[0], shifts[1] + 1)))
             for a in list(rng.integers(-(1 << (width - 1)), 1 << (width - 1), 1500)) + extremes]
    cases += [(a, m0, n) for a in extremes for m0 in (1 << 30, (1 << 31) - 1) for n in shifts]
    bad = []

    async def bench(ctx):
        for acc, m0, n in cases:
            ctx.set(rq.acc, acc)
            ctx.set(rq.m0, m0)
            ctx.set(rq.shift, n)
            want = int(requantize(np.array([[acc]]), [m0], [n], z, lo, hi)[0, 0])
            got = ctx.get(rq.q)
            if got != want:
                bad.append((acc, m0, n, want, got))

    sim = Simulator(rq)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, f"{len(bad)} mismatches; first (acc, m0, n, expected, got) = {bad[0]}"


def test_rounding_ties_go_up():
    rq = Requantizer(8, (31, 31), 100, 0, 255)
    got = []

    async def bench(ctx):
        ctx.set(rq.m0, 1 << 30)  # M = 1/2
        ctx.set(rq.shift, 31)
        for acc in (-3, -1, 1, 3):
            ctx.set(rq.acc, acc)
            got.append(ctx.get(rq.q) - 100)

    sim = Simulator(rq)
    sim.add_testbench(bench)
    sim.run()
    assert got == [-1, 0, 1, 2]
