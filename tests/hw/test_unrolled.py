"""Hard-wired (unrolled) dot products: the decomposed forms compute exactly ``sum w * x``."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from quantrtl.hw.unrolled import UnrolledDot, window_bits
from tests.factories import PE_FAMILIES, format_for_test

#: The unrolled dot product per output channel is the style of the PE families (pq's
#: unrolled layer is tested in test_pq.py).
REPRESENTATIVES = [f.examples[0] for f in PE_FAMILIES]


def simulate(dot, xs, outputs: int | None = None) -> list:
    """One input per cycle; the outputs from the first cycle whose output is ``xs[0]``'s
    (one cycle later with ``register_inputs``); ``outputs``: ``y`` is a vector of that many."""
    out = []
    delay = 1 if getattr(dot, "register_inputs", False) else 0

    async def bench(ctx):
        for x in [*xs, *[xs[-1]] * delay]:
            for i, v in enumerate(x):
                ctx.set(dot.x[i], int(v))
            await ctx.tick()
            out.append(ctx.get(dot.y) if outputs is None else [ctx.get(dot.y[c]) for c in range(outputs)])

    sim = Simulator(dot)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out[delay:]


@pytest.mark.parametrize("name", list(dict.fromkeys(REPRESENTATIVES + ["fixed8", "shift3"])))
def test_unrolled_decomposition_is_exact(name):
    fmt = format_for_test(name)
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.2, size=(4, 4, 3, 3)) * (rng.random((4, 4, 3, 3)) < 0.6)
    q = fmt.encode(w)
    codes = q.codes[1]
    dot = UnrolledDot.from_codes(q.format, codes)
    amax = (1 << dot.act_bits) - 1
    xs = [rng.integers(0, amax + 1, size=codes.size) for _ in range(6)] + [np.full(codes.size, amax)]
    want = [int((q.values[1].ravel() * x).sum()) for x in xs]
    assert simulate(dot, xs) == want
    groups = q.format.unrolled_groups(codes)
    assert len(groups) == {"focused5": 3, "abcnet5": 5, "lqnet2": 2, "unified": 9}.get(name, len(groups))


def test_groups_must_sum_to_the_weights():
    with pytest.raises(ValueError, match="do not sum"):
        UnrolledDot([3, 1], groups=[(2, [1, 1])])


@pytest.mark.parametrize("name", ["fixed8", "shift3", "binary", "xnor", "abcnet5"])
def test_registered_inputs_compute_the_same_one_cycle_later(name):
    """The FPGA variant (input window registered) against the NumPy dot product; the
    window's bits and the bits it reads against a count of the weights."""
    fmt = format_for_test(name)
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.2, size=(2, 3, 3, 3)) * (rng.random((2, 3, 3, 3)) < 0.5)
    q = fmt.encode(w)
    dot = UnrolledDot.from_codes(q.format, q.codes[0], register_inputs=True)
    amax = (1 << dot.act_bits) - 1
    xs = [rng.integers(0, amax + 1, size=27) for _ in range(5)] + [np.full(27, amax)]
    assert simulate(dot, xs) == [int((q.values[0].ravel() * x).sum()) for x in xs]
    window, read = window_bits(q.format, q.codes[0])
    assert window == 27 * dot.act_bits
    if name in ("fixed8", "shift3", "binary", "xnor"):  # no decomposition: a zero weight is an input not read
        assert read == np.count_nonzero(q.values[0]) * dot.act_bits
    else:
        assert np.count_nonzero(q.values[0]) * dot.act_bits <= read <= window
