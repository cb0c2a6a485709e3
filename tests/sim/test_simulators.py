"""The simulator registry: every registered simulator has its pieces, and the runner and the
cosim flow take a simulator only through it."""
from pathlib import Path

import pytest

from quantrtl.sim import simulators

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.icarus
@pytest.mark.verilator
@pytest.mark.parametrize("kind", simulators.simulators(), ids=lambda k: k.name)
def test_simulator_is_complete(kind, tmp_path):
    assert kind.available(), f"{kind.name}: {kind.install}"
    assert kind.path() and kind.version().split()[0] in ("Icarus", "Verilator")
    assert all(isinstance(p, Path) for p in kind.outputs(tmp_path, "top"))
    assert all(isinstance(a, str) for a in kind.build_args(tmp_path, tmp_path / "public.vlt"))
    assert hasattr(kind.runner(), "build") and isinstance(kind.wrapper_clock, bool)


def test_unknown_simulator_is_named():
    with pytest.raises(ValueError, match=r"unknown simulator 'modelsim' \(supported: icarus, verilator\)"):
        simulators.simulator("modelsim")
    with pytest.raises(ValueError, match="registered already"):
        simulators.register(simulators.simulator("icarus"))


def test_no_simulator_branches_outside_the_registry():
    """The runner, the cosim flow and the tool look-ups name no simulator."""
    for f in ("sim/runner.py", "quantrtl/flows/cosim.py", "sim/tools.py"):
        text = (ROOT / f).read_text()
        assert 'simulator == "' not in text and "simulator == '" not in text, f
