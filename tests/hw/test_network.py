"""The whole digits network as one design in the Amaranth simulator."""
import pytest

from quantrtl.model.numbers.layout import to_stream
from quantrtl.hw.network import NetworkTop
from quantrtl.model.numbers import artifact
from quantrtl.model.digits import load_split
from quantrtl.sim import golden
from quantrtl.sim.compare import first_mismatch
from tests.hw.streams import run_stream


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shift4", "binary"])
def test_network_top_bit_exact_with_taps(quantized, name):
    net = artifact.load(quantized(name).artifact)
    _, test = load_split()
    x = test.x[2]
    res = golden.run(net, x)
    top = NetworkTop(net, lanes=8, taps=True)
    logits, cycles, taps = run_stream(top, list(to_stream(x, net.input_shape)), 10,
                                      taps={n: getattr(top, f"tap_{n}") for n in top.tap_names})
    assert first_mismatch("fc", res.logits[0], logits) is None
    for n, values in taps.items():
        mm = first_mismatch(n, to_stream(res.outputs[n][0], net.layer(n).out_shape), values)
        assert mm is None, str(mm)
    assert cycles == top.expected_cycles
    assert int(logits.argmax()) == int(res.predicted[0])
