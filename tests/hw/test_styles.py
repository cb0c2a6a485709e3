"""The engine-style registry: every style builds engines that keep the engine contract,
compute the golden model bit for bit, and carry their own name in the Verilog top."""
import numpy as np
import pytest

from quantrtl.hw import styles
from quantrtl.hw.engines import make_engine, sparse_mode
from quantrtl.model.numbers.families import parse_format
from tests.factories import random_network


@pytest.mark.parametrize("st", styles.styles(), ids=lambda s: s.name)
def test_style_is_complete(st):
    """Every style's engines, on a conv (padding) and a linear layer reading a map: the
    engine contract, bit-exact outputs, cycles exactly the formula's (dense) or at least it
    (zero skipping), and a zero-skipping engine's count of nonzero weights."""
    from quantrtl.model.numbers.layout import to_stream
    from quantrtl.sim import golden
    from quantrtl.sim.compare import first_mismatch
    from quantrtl.sim.stream import run_stream

    assert st.summary and st.name in styles.styles_help()
    net = random_network(parse_format("shift4"), seed=5, cin=3, hw=5, cout=4)
    x = np.random.default_rng(5).integers(0, 256, size=net.input_shape)
    res = golden.run(net, x[None])
    prev, inp = tuple(net.input_shape), x
    for layer in net.layers:
        if layer.has_weights:
            e = make_engine(layer, lanes=4, sparse=st.name, source_shape=prev if layer.kind.flattens else None)
            assert isinstance(e, styles.Engine) and (isinstance(e, styles.ZeroSkipping) == st.zero_skipping), st.name
            want = to_stream(res.outputs[layer.name][0], layer.out_shape)
            got, cycles = run_stream(e, list(to_stream(inp, prev)), len(want))
            assert first_mismatch(layer.name, want, got) is None, st.name
            if st.zero_skipping:  # a lower bound where the work depends on the activations
                assert cycles >= e.expected_cycles and e.nonzero_weights == int(np.count_nonzero(layer.values))
            else:
                assert cycles == e.expected_cycles
        inp, prev = res.outputs[layer.name][0], tuple(layer.out_shape)


def test_style_names_and_aliases():
    assert styles.style_names()[:3] == ["dense", "row", "broadcast"]
    assert styles.style_of(False).name == styles.style_of(None).name == "dense"
    assert styles.style_of(True).name == "row" and sparse_mode("dense") is None and sparse_mode("broadcast") == "broadcast"
    with pytest.raises(ValueError, match=r"'columns' names no engine style; choose one of dense, row, broadcast"):
        styles.style_of("columns")
    with pytest.raises(ValueError, match="registered already"):
        styles.register(styles.style("dense"))
