"""The op registry: every registered op's pieces agree with each other (shape inference,
golden model, engine in the Amaranth simulator, cycle formula, memory bits), and an op
registered in one place (``tests/toy_op.py``) reaches every registry-driven test."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantrtl.model.numbers import ops

ROOT = Path(__file__).resolve().parent.parent


def random_inputs(layer, in_shapes, rng, n: int = 2) -> list[np.ndarray]:
    fmts = layer.input_formats or (layer.input,)
    return [rng.integers(0, f.qmax + 1, size=(n, *s)) for f, s in zip(fmts, in_shapes)]


def check_op(o: ops.Op, seeds=range(3)) -> None:
    """``o``'s example layers: shape inference equals the golden model's output shape, the
    outputs lie in the output format, the engine computes the golden outputs bit for bit
    (under random back-pressure and bubbles too) in exactly the formula's cycles; so does
    every engine style's own engine for the op (``EngineStyle.ops``: stream's)."""
    from quantrtl.hw.styles import styles

    check_op_engine(o, seeds, False)
    for st in styles():
        if st.op_engine(o.name) is not None:
            check_op_engine(o, seeds, st.name)


def check_op_engine(o: ops.Op, seeds, style) -> None:
    from quantrtl.hw.engines import make_engine
    from quantrtl.model.numbers.layout import to_stream
    from quantrtl.sim import golden
    from quantrtl.sim.compare import first_mismatch
    from quantrtl.sim.stream import run_stream

    assert o.summary and callable(o.resolve("golden")) and isinstance(o.resolve("engine"), type)
    example = o.resolve("example")
    for seed in seeds:
        rng = np.random.default_rng(seed)
        layer, in_shapes = example(seed)
        assert layer.kind is o and o.accepts(len(in_shapes))
        xs = random_inputs(layer, in_shapes, rng)
        y = golden.run_layer(layer, xs if o.joins else xs[0])
        assert y.shape == (len(xs[0]), *o.out_shape(layer, in_shapes)) == (len(xs[0]), *layer.out_shape), o.name
        assert y.min() >= layer.output.qmin and y.max() <= layer.output.qmax, o.name
        eng = make_engine(layer, source_shapes=in_shapes, sparse=style)
        assert all(isinstance(v, int) and v >= 0 for v in eng.memory_bits.values()), eng.memory_bits
        feeds = [list(to_stream(x[0], s)) for x, s in zip(xs, in_shapes)]
        feed = {f"inp{j}": f for j, f in enumerate(feeds)} if o.joins else feeds[0]
        want = to_stream(y[0], layer.out_shape)
        got, cycles = run_stream(eng, feed, len(want))
        mm = first_mismatch(layer.name, want, got)
        assert mm is None, f"{o.name} ({style or 'dense'}) seed {seed}: {mm}"
        assert cycles == eng.expected_cycles, (o.name, style, seed, cycles, eng.expected_cycles)
        got, _ = run_stream(eng, feed, len(want), ready_prob=0.6, valid_prob=0.7, seed=seed)
        mm = first_mismatch(layer.name, want, got)
        assert mm is None, f"{o.name} seed {seed}, back-pressure: {mm}"


@pytest.mark.parametrize("o", [o for o in ops.ops() if o.example is not None], ids=lambda o: o.name)
def test_op_is_complete(o):
    check_op(o)


def test_ops_without_an_example_are_the_weighted_ones():
    """conv2d and linear are built by the quantizer family's engine (tests/test_families.py)."""
    assert {o.name for o in ops.ops() if o.example is None} == {o.name for o in ops.ops() if o.weights}


def test_completeness_check_can_fail():
    """An op whose engine does not compute its golden function is caught."""
    import dataclasses

    from tests.toy_op import TOY_OP, toyflip_example, toyflip_golden

    def example(seed):
        layer, shapes = toyflip_example(seed)
        layer.op = "toywrong"
        return layer, shapes

    bad = ops.register(dataclasses.replace(TOY_OP, name="toywrong", example=example,
                                           golden=lambda layer, xs, acc=None: toyflip_golden(layer, xs) // 2))
    try:
        with pytest.raises(AssertionError, match=r"toywrong \(dense\) seed 0"):
            check_op(bad, seeds=[0])
    finally:
        ops.unregister("toywrong")


def test_register_rejects_duplicates_and_built_ins():
    with pytest.raises(ValueError, match="registered already"):
        ops.register(ops.op("relu"))
    with pytest.raises(ValueError, match="built in"):
        ops.unregister("relu")
    with pytest.raises(KeyError, match=r"unknown op 'cumsum' \(supported: conv2d, linear"):
        ops.op("cumsum")
    odd = ops.Op("odd", "x", "quantrtl.sim.golden:no_such", "quantrtl.hw.layer:NoSuchEngine")
    with pytest.raises(LookupError, match="its engine 'quantrtl.hw.layer:NoSuchEngine' cannot be loaded"):
        odd.resolve("engine")


def test_toy_op_registered_in_one_place_passes_the_registry_tests():
    """Registered as a plugin, the toy op is collected and passes the completeness test,
    which does not name it."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.toy_op", "-p", "no:cacheprovider", "-q",
                          "tests/test_ops.py::test_op_is_complete"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"{len([o for o in ops.ops() if o.example]) + 1} passed" in out.stdout, out.stdout[-1000:]


def test_toy_op_in_an_artifact_round_trips_and_runs(tmp_path):
    """A plug-in op with no field of its own in Layer goes through save, load, validate and
    the golden model."""
    from quantrtl.model.numbers.artifact import QuantizedNetwork, load, save
    from quantrtl.sim import golden
    from tests.toy_op import register_toy_op, toyflip_example

    added = "toyflip" not in ops.op_names()
    register_toy_op()
    try:
        layer, (shape,) = toyflip_example(1)
        net = QuantizedNetwork(name="flip", quantizer="none", input_shape=shape, input=layer.input, layers=[layer])
        back = load(save(net, tmp_path / "flip"))
        x = np.random.default_rng(0).integers(0, 256, size=(3, *shape))
        assert np.array_equal(golden.run(back, x).logits, 255 - x)
    finally:
        if added:
            ops.unregister("toyflip")
