"""MAC array on random vectors against NumPy, with stalls, groups and pipeline stages."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from quantrtl.hw.array import MacArray, term_widths
from quantrtl.model.numbers.families import parse_format
from tests.factories import MAC_METHODS, PLAIN_REPRESENTATIVES, fitted_format, format_for_test


def wrap(v: int, width: int) -> int:
    return ((v + (1 << (width - 1))) % (1 << width)) - (1 << (width - 1))


def lane_operands(ctx, arr: MacArray, codes, acts, t: int) -> None:
    """Step ``t``'s operands of a MAC array: an activation and a code per lane."""
    for lane in range(arr.lanes):
        ctx.set(arr.act[lane], int(acts[t, lane]))
        ctx.set(arr.code[lane], int(codes[t, lane]))


def simulate(arr: MacArray, jobs, seed: int, stall_prob: float, operands=lane_operands):
    """Feed dot-product jobs (codes (T, ...), acts (T, ...), init (G,)) and collect ``acc`` at
    ``done``; ``operands(ctx, arr, codes, acts, t)`` sets a step's operand ports."""
    rng = np.random.default_rng(seed)
    steps = [(c, a, i, t, len(c)) for c, a, i in jobs for t in range(len(c))]
    got, cycles = [], [0]

    async def bench(ctx):
        idx = 0
        while len(got) < len(jobs):
            assert cycles[0] < 10 * len(steps) + 100, "array stopped making progress"
            en = int(rng.random() >= stall_prob)
            ctx.set(arr.en, en)
            ctx.set(arr.valid, int(idx < len(steps)))
            if idx < len(steps):
                codes, acts, init, t, T = steps[idx]
                ctx.set(arr.first, int(t == 0))
                ctx.set(arr.last, int(t == T - 1))
                operands(ctx, arr, codes, acts, t)
                for g in range(arr.groups):
                    ctx.set(arr.init[g], int(init[g]))
            if en and ctx.get(arr.done):
                got.append([ctx.get(arr.acc[g]) for g in range(arr.groups)])
            await ctx.tick()
            cycles[0] += 1
            if en and idx < len(steps):
                idx += 1

    sim = Simulator(arr)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, cycles[0]


CASES = [(p, g, pipe) for p in (1, 4, 8, 16) for g in (1, 2, 4, 16) if g <= p and p % g == 0 for pipe in (0, 1, 2)]


@pytest.mark.parametrize("name", PLAIN_REPRESENTATIVES)
@pytest.mark.parametrize("lanes,groups,pipeline", CASES)
def test_mac_array_random(name, lanes, groups, pipeline):
    fmt = parse_format(name)
    rng = np.random.default_rng(lanes * 100 + groups * 10 + pipeline)
    width = 22
    arr = MacArray(fmt, lanes, width, groups=groups, pipeline=pipeline)
    jobs = []
    for _ in range(6):
        t = int(rng.integers(1, 5))
        jobs.append((rng.choice(fmt.code_space(), size=(t, lanes)), rng.integers(0, 256, size=(t, lanes)),
                     rng.integers(-(1 << 12), 1 << 12, size=groups)))
    jobs.append((np.full((2, lanes), fmt.code_space()[-1]), np.full((2, lanes), 255), np.zeros(groups, int)))  # extremes
    k = lanes // groups
    want = [[wrap(int(init[g]) + int((fmt.decode(c) * a)[:, g * k:(g + 1) * k].sum()), width) for g in range(groups)]
            for c, a, init in jobs]
    got, _ = simulate(arr, jobs, seed=lanes + pipeline, stall_prob=0.25)
    for j, (w, g_) in enumerate(zip(want, got)):
        assert w == g_, f"job {j}: first mismatch at group {next(i for i in range(groups) if w[i] != g_[i])}: expected {w}, got {g_}"
    assert len(got) == len(want)


@pytest.mark.parametrize("pipeline", [0, 1, 2])
def test_latency_property(pipeline):
    fmt = parse_format("fixed8")
    arr = MacArray(fmt, 4, 20, pipeline=pipeline)
    jobs = [(np.ones((1, 4), int), np.ones((1, 4), int), np.zeros(1, int))]
    got, cycles = simulate(arr, jobs, seed=0, stall_prob=0.0)
    assert got == [[4]]
    assert cycles == arr.latency + 1  # the step's cycle, latency cycles to accumulate, then seen on done


def test_rejects_bad_parameters():
    fmt = parse_format("fixed8")
    with pytest.raises(ValueError, match=r"groups \(3\) must divide lanes \(8\)"):
        MacArray(fmt, 8, 20, groups=3)
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        MacArray(fmt, 0, 20)
    with pytest.raises(ValueError, match="pipeline must be 0, 1 or 2"):
        MacArray(fmt, 4, 20, pipeline=3)


def method_jobs(fmt, lanes: int, groups: int, rng):
    """Random jobs in a method format: unified blocks share one magnitude, xnor acts are bits."""
    jobs = []
    for _ in range(5):
        t = int(rng.integers(1, 4))
        codes = rng.choice(fmt.code_space(), size=(t, lanes))
        if fmt.block > 1:  # one magnitude per block of lanes, signs free
            mags = rng.integers(0, fmt.qmax + 1, size=(t, lanes // fmt.block)).repeat(fmt.block, axis=1)
            codes = mags | ((rng.random((t, lanes)) < 0.5) & (mags > 0)).astype(int) << fmt.MAG_BITS
        amax = 1 if fmt.binary_input else 255
        jobs.append((codes, rng.integers(0, amax + 1, size=(t, lanes)), rng.integers(-(1 << 12), 1 << 12, size=groups)))
    return jobs


@pytest.mark.parametrize("name", MAC_METHODS)
@pytest.mark.parametrize("lanes,groups,pipeline", [(8, 1, 0), (8, 2, 1), (16, 4, 2)])
def test_method_mac_array_random(name, lanes, groups, pipeline):
    """Multi-term accumulators with per-layer coefficients, block multiplies and XNOR
    popcounts against NumPy: ``init + sum(pe outputs)`` with the PE's own contract."""
    fmt = format_for_test(name)
    rng = np.random.default_rng(lanes + groups + pipeline)
    width = 24
    act_bits = 1 if fmt.binary_input else 8
    arr = MacArray(fmt, lanes, width, groups=groups, act_bits=act_bits, pipeline=pipeline)
    jobs = method_jobs(fmt, lanes, groups, rng)
    k = lanes // groups
    pe_sum = (lambda c, a: fmt.decode(c) * (2 * a - 1) + 1) if fmt.binary_input else (lambda c, a: fmt.decode(c) * a)
    want = [[wrap(int(init[g]) + int(pe_sum(c, a)[:, g * k:(g + 1) * k].sum()), width) for g in range(groups)]
            for c, a, init in jobs]
    got, _ = simulate(arr, jobs, seed=lanes + pipeline, stall_prob=0.25)
    assert got == want


def test_term_widths_are_exact_bounds():
    fmt = fitted_format("focused5")
    codes = fmt.code_space()[None, :].repeat(2, axis=0)
    widths = term_widths(fmt, codes)
    t = np.abs(fmt.term_values(codes)).sum(axis=2).max(axis=1) * 255
    assert widths == [int(b).bit_length() + 1 for b in t]
