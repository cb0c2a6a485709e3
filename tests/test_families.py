"""The family registry: every registered family has every piece, and a new family
registered in one place reaches the command line and every registry-driven test."""
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from quantrtl.cli import main
from quantrtl.hw.pe import ProcessingElement, make_pe
from quantrtl.model.numbers import families
from quantrtl.model.numbers.formats import WeightFormat
from tests.factories import format_for_test

ROOT = Path(__file__).resolve().parent.parent


def check_complete(fam: families.Family) -> None:
    """Every piece of ``fam`` is there and agrees with the others."""
    assert issubclass(fam.format, WeightFormat) and fam.format.family == fam.name
    for name in fam.names:
        fmt = families.parse_format(name)
        assert type(fmt) is fam.format and fmt.name == name
    assert set(fam.examples) <= set(fam.names), f"{fam.name}: examples {fam.examples} are not names of the family"
    train = fam.resolve("train")
    assert callable(train) and len(inspect.signature(train).parameters) == 1, f"{fam.name}: training {train!r}"
    assert fam.summary and fam.help in families.quantizer_help()
    if fam.pe is None:
        check_engine(fam)
        return
    pe = fam.resolve("pe")
    assert isinstance(pe, type) and issubclass(pe, ProcessingElement), f"{fam.name}: PE {pe!r}"
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.2, size=(3, 2, 3, 3)) * (rng.random((3, 2, 3, 3)) < 0.7)
    fmt = format_for_test(fam.examples[0])
    q = fmt.encode(w)
    assert np.array_equal(q.values, q.format.decode(q.codes))
    # the unrolled decomposition of a channel sums to its values
    for c in range(q.codes.shape[0]):
        groups = q.format.unrolled_groups(q.codes[c])
        recon = sum(const * np.asarray(t) for const, t in groups)
        assert np.array_equal(np.asarray(recon).ravel(), q.format.decode(q.codes[c]).ravel()), f"{fam.name} channel {c}"
    # the PE computes its own reference on a sample of codes and activations
    act_bits = 1 if fmt.binary_input else 8
    pe_obj = make_pe(q.format, act_bits)
    codes = q.format.code_space()[:: max(1, len(q.format.code_space()) // 16)]
    acts = [0, 1] if act_bits == 1 else [0, 1, 37, 255]
    want = pe_obj.reference(codes, acts)
    got = np.zeros_like(want)

    async def bench(ctx):
        for i, code in enumerate(codes):
            ctx.set(pe_obj.code, int(code))
            for j, a in enumerate(acts):
                ctx.set(pe_obj.act, int(a))
                got[:, i, j] = [ctx.get(p) for p in pe_obj.products]

    sim = Simulator(pe_obj)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(got, want), f"{fam.name}: PE differs from its reference"


def check_engine(fam: families.Family) -> None:
    """A family with an engine of its own: the engine computes the golden model's layers
    (a conv with padding and a linear layer reading a map), bit for bit, in the formula's
    cycles, and the format decodes what it encodes."""
    from quantrtl.hw.engines import make_engine
    from quantrtl.hw.layer import ConvEngine
    from quantrtl.model.numbers.layout import to_stream
    from quantrtl.sim import golden
    from quantrtl.sim.compare import first_mismatch
    from quantrtl.sim.stream import run_stream
    from tests.factories import random_network

    engine = fam.resolve("engine")
    assert isinstance(engine, type) and issubclass(engine, ConvEngine), f"{fam.name}: engine {engine!r}"
    net = random_network(families.parse_format(fam.examples[0]), seed=3, cin=4, hw=5, cout=4)
    x = np.random.default_rng(3).integers(0, 256, size=net.input_shape)
    res = golden.run(net, x[None])
    prev, inp = tuple(net.input_shape), x
    for layer in net.layers:
        q = layer.format.decode(layer.codes) if layer.has_weights else None
        if layer.has_weights:
            assert type(layer.format) is fam.format and np.array_equal(q, layer.values)
            eng = make_engine(layer, lanes=8, source_shape=prev if layer.op == "linear" else None)
            assert isinstance(eng, engine), f"{fam.name}: {layer.name} got {type(eng).__name__}"
            want = to_stream(res.outputs[layer.name][0], layer.out_shape)
            got, cycles = run_stream(eng, list(to_stream(inp, prev)), len(want))
            mm = first_mismatch(layer.name, want, got)
            assert mm is None, f"{fam.name}: {mm}"
            assert cycles == eng.expected_cycles, (layer.name, cycles, eng.expected_cycles)
        inp, prev = res.outputs[layer.name][0], tuple(layer.out_shape)


@pytest.mark.parametrize("fam", families.families(), ids=lambda f: f.name)
def test_family_is_complete(fam):
    check_complete(fam)


def test_completeness_check_can_fail():
    """A family whose PE does not compute its format's values is caught."""
    from typing import ClassVar

    from tests.toy_family import TOY, ToyFormat

    class Wrong(ToyFormat):
        family: ClassVar[str] = "wrongtoy"

        def _decode(self, codes):
            return super()._decode(codes) + 1

    bad = families.register(families.Family("wrongtoy", Wrong, TOY.pe, TOY.train, TOY.widths, ("wrongtoy3",), "x"))
    try:
        with pytest.raises(AssertionError, match="PE differs from its reference"):
            check_complete(bad)
    finally:
        families.unregister("wrongtoy")


def test_register_rejects_duplicates_and_bad_families():
    with pytest.raises(ValueError, match="already registered"):
        families.register(families.family("fixed"))
    with pytest.raises(ValueError, match="format class says family"):
        families.Family("other", families.family("fixed").format, "m:PE", "m:train", None, ("other",), "x")
    with pytest.raises(ValueError, match="built-in family"):
        families.unregister("fixed")
    odd = families.Family("fixed", families.family("fixed").format, "quantrtl.hw.pe:NoSuchPE", "m:t", None,
                          ("fixed",), "x")
    with pytest.raises(LookupError, match="its pe 'quantrtl.hw.pe:NoSuchPE' cannot be loaded"):
        odd.resolve("pe")


def test_toy_family_registered_in_one_place_reaches_the_command_line(capsys):
    from tests.toy_family import register_toy

    added = "toy" not in {f.name for f in families.families()}
    register_toy()
    try:
        with pytest.raises(SystemExit):
            main(["quantize", "--help"])
        assert "toyN (2..4)" in " ".join(capsys.readouterr().out.split())
        check_complete(families.family("toy"))
        assert families.parse_format("toy3").name == "toy3"
    finally:
        if added:
            families.unregister("toy")


def pytest_ids(files: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.toy_family", "-p", "no:cacheprovider",
                          "--collect-only", "-q", *files], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout.splitlines()


def test_toy_family_appears_in_every_registry_driven_parametrization():
    """Registered as a plugin, the toy family shows up in the PE, array, cosim and
    completeness tests, none of which names it."""
    files = ["tests/hw/test_pe.py", "tests/hw/test_array.py", "tests/sim/test_cosim.py", "tests/test_families.py"]
    for f in files[:3]:
        assert "toy" not in (ROOT / f).read_text(), f"{f} names the toy family"
    ids = pytest_ids(files)
    for f, test in [("tests/hw/test_pe.py", "test_pe_exhaustive[toy3]"),
                    ("tests/hw/test_array.py", "test_mac_array_random[1-1-0-toy3]"),
                    ("tests/sim/test_cosim.py", "test_icarus_bit_exact_on_three_images[toy3]"),
                    ("tests/test_families.py", "test_family_is_complete[toy]")]:
        assert f"{f}::{test}" in ids, f"{f}::{test} not collected"


def test_toy_family_passes_the_pe_array_and_completeness_tests():
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.toy_family", "-p", "no:cacheprovider", "-q",
                          "-k", "toy", "tests/hw/test_pe.py", "tests/hw/test_array.py", "tests/test_families.py::"
                          "test_family_is_complete"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


@pytest.mark.icarus
@pytest.mark.slow
def test_toy_family_cosim_is_bit_exact():
    """The toy family end to end: trained, exported, generated and co-simulated in Icarus."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.toy_family", "-p", "no:cacheprovider", "-q",
                          "tests/sim/test_cosim.py::test_icarus_bit_exact_on_three_images[toy3]"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "1 passed" in out.stdout
