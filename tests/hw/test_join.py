"""Join engines (add, concat) in the Amaranth simulator against the golden model: random
shapes, scales and zero points, both inputs arriving at once or one long after the other,
under back-pressure."""
import numpy as np
import pytest

from quantrtl.hw.engines import make_engine
from quantrtl.model.numbers.layout import to_stream
from quantrtl.sim import golden
from quantrtl.sim.compare import first_mismatch
from tests.factories import join_layer
from tests.hw.streams import run_stream


@pytest.mark.parametrize("op,shapes,relu,last_bits", [
    ("add", [(3, 4, 5), (3, 4, 5)], False, 8),
    ("add", [(2, 3, 3), (2, 3, 3)], True, 8),
    ("add", [(10,), (10,)], False, 8),
    ("add", [(2, 3, 3), (2, 3, 3)], True, 16),  # a conv's wide output as the second operand (§8)
    ("concat", [(2, 3, 4), (3, 3, 4)], False, 8),
    ("concat", [(1, 2, 2), (4, 2, 2), (2, 2, 2)], False, 8),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_join_engines_bit_exact(op, shapes, relu, last_bits, seed):
    layer = join_layer(op, shapes, seed=seed, relu=relu, last_bits=last_bits)
    rng = np.random.default_rng(seed)
    xs = [rng.integers(0, 1 << f.bits, size=s) for f, s in zip(layer.input_formats, shapes)]
    xs[0].flat[0], xs[-1].flat[-1] = 255, 0
    xs[-1].flat[0] = (1 << last_bits) - 1
    want = to_stream(golden.run_layer(layer, [x[None] for x in xs])[0], layer.out_shape)
    eng = make_engine(layer, source_shapes=shapes)
    feeds = {f"inp{j}": list(to_stream(x, s)) for j, (x, s) in enumerate(zip(xs, shapes))}
    got, cycles = run_stream(eng, feeds, len(want))
    assert first_mismatch(op, want, got) is None, str(first_mismatch(op, want, got))
    assert cycles == eng.expected_cycles
    got, _ = run_stream(make_engine(layer, source_shapes=shapes), feeds, len(want), ready_prob=0.5, valid_prob=0.3,
                        seed=seed)
    assert first_mismatch(op, want, got) is None
    want_bits = {"join_buffers": 2 * sum(f.bits * int(np.prod(s)) for f, s in zip(layer.input_formats, shapes))}
    if op == "concat":  # and a ROM of (M0, shift) per input
        want_bits["requant"] = len(shapes) * (31 + int(max(layer.shift)).bit_length())
    assert eng.memory_bits == want_bits


def test_concat_needs_its_input_shapes():
    layer = join_layer("concat", [(2, 3, 3), (1, 3, 3)])
    with pytest.raises(ValueError, match="concat needs its inputs' \\(C, H, W\\) shapes"):
        make_engine(layer, source_shapes=[(2, 3, 3), (2, 3, 3)])
