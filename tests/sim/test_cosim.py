"""Co-simulation of the digits network in cocotb: RTL == golden, bit for bit."""
import json

import numpy as np
import pytest

from quantrtl import flows
from quantrtl.cli import main
from tests.factories import COSIM_NAMES

# every name of every plain family, and each fitted family's representative (the registry's)
ICARUS_QUANTIZERS = COSIM_NAMES

@pytest.fixture(scope="session")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cosim")


@pytest.mark.icarus
@pytest.mark.slow
@pytest.mark.parametrize("name", ICARUS_QUANTIZERS)
def test_icarus_bit_exact_on_three_images(quantized, build_root, name):
    art = quantized(name).artifact
    for image in (0, 17, 359):
        r = flows.cosim_flow(name, image, simulator="icarus", artifact_path=art, build_root=build_root)
        assert r.bit_exact, f"{name} image {image}: {r.first_mismatch}"
        assert r.cycles == r.expected_cycles
        assert r.predicted == r.golden_predicted
        assert [l["name"] for l in r.layers] == ["conv1", "conv2", "pool", "fc"]
        assert all(l["bit_exact"] and l["mismatches"] == 0 for l in r.layers)


@pytest.mark.verilator
@pytest.mark.slow
def test_verilator_bit_exact(quantized, build_root):
    r = flows.cosim_flow("shift4", 3, simulator="verilator", artifact_path=quantized("shift4").artifact,
                         build_root=build_root)
    assert r.bit_exact and r.cycles == r.expected_cycles, r.first_mismatch


@pytest.mark.icarus
def test_injected_fault_is_reported(quantized, build_root):
    """One corrupted weight code in the generated memory: cosim must see it and say where."""
    r = flows.cosim_flow("shift4", 0, artifact_path=quantized("shift4").artifact, build_root=build_root,
                         fault=("conv1", 2 * 9 + 4))  # channel 2, centre tap
    assert not r.bit_exact
    mm = r.first_mismatch
    assert mm["layer"] == "conv1" and mm["expected"] != mm["got"] and mm["mismatches"] > 0
    assert mm["index"] % 8 == 2  # stream order: channel fastest, so the first bad value is channel 2
    assert not r.layers[0]["bit_exact"]


@pytest.mark.icarus
def test_cli_cosim_json_and_exit_codes(quantized, build_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["cosim", "--quantizer", "ternary", "--image", "4", "--artifact", quantized("ternary").artifact,
               "--json", "c.json"])
    assert rc == 0
    r = json.loads((tmp_path / "c.json").read_text())
    for key in ("quantizer", "image", "label", "predicted", "golden_predicted", "bit_exact", "cycles",
                "simulator", "wall_seconds", "layers"):
        assert key in r
    assert all({"name", "bit_exact", "mismatches", "cycles"} <= set(l) for l in r["layers"])
    assert "RTL == golden, bit for bit" in capsys.readouterr().out


def test_image_from_files(tmp_path, quantized, build_root):
    from PIL import Image

    from quantrtl.model.digits import load_image, load_split

    _, test = load_split()
    img = test.x[7, 0]
    np.save(tmp_path / "d.npy", img)
    assert np.array_equal(load_image(tmp_path / "d.npy"), test.x[7])
    Image.fromarray((img * 255 // 16).astype(np.uint8)).save(tmp_path / "d.png")
    assert np.array_equal(load_image(tmp_path / "d.png"), test.x[7])


@pytest.mark.parametrize("make,match", [
    (lambda p: p.joinpath("bad.png").write_bytes(b"\x89PNG not really"), "unreadable image"),
    (lambda p: np.save(p / "bad.npy", np.zeros((7, 7))), r"array shape \(7, 7\), expected \(8, 8\) or \(1, 8, 8\)"),
    (lambda p: np.save(p / "bad.npy", np.full((8, 8), 17)), r"values must lie in 0..16"),
    (lambda p: p.joinpath("bad.gif").write_bytes(b"GIF89a"), "unsupported image type '.gif'"),
])
def test_cli_bad_images(tmp_path, capsys, make, match):
    make(tmp_path)
    path = next(tmp_path.glob("bad.*"))
    assert main(["cosim", "--quantizer", "shift4", "--image", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("quantrtl: error: ")
    import re
    assert re.search(match, err[-1]), err[-1]


def test_cli_bad_simulator_and_index(capsys):
    assert main(["cosim", "--quantizer", "shift4", "--simulator", "questa"]) == 2
    assert "unknown simulator 'questa'; choose one of icarus, verilator" in capsys.readouterr().err
    assert main(["cosim", "--quantizer", "shift4", "--image", "360"]) == 2
    assert "the digits test split has images 0..359" in capsys.readouterr().err


def test_cli_simulator_not_installed(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    import quantrtl.sim.tools

    monkeypatch.setattr(quantrtl.sim.tools.sys, "prefix", "/nonexistent")
    assert main(["cosim", "--quantizer", "shift4", "--simulator", "verilator"]) == 3
    err = capsys.readouterr().err.strip()
    assert "simulator verilator: verilator is not installed" in err and len(err.splitlines()) <= 2


@pytest.mark.icarus
@pytest.mark.slow
@pytest.mark.parametrize("name", ["shift3", "fixed8"])
@pytest.mark.parametrize("density", [0.1, 0.3, 1.0])
def test_icarus_sparse_engines_bit_exact(build_root, tmp_path, name, density):
    """Pruned weights on zero-skipping engines: bit-exact, and fewer cycles as density drops."""
    from quantrtl.model.numbers import artifact

    q = flows.quantize_network(name, 2, density=density)
    art = artifact.save(q.qnet, tmp_path / f"{name}-d{density:g}")
    r = flows.cosim_flow(name, 4, artifact_path=art, build_root=build_root, sparse=True)
    assert r.bit_exact, r.first_mismatch
    assert r.cycles == r.expected_cycles
    if density < 1.0:
        dense = flows.cosim_flow(name, 4, artifact_path=art, build_root=build_root)
        assert dense.bit_exact and r.cycles < dense.cycles


@pytest.mark.icarus
@pytest.mark.slow
@pytest.mark.parametrize("name", ["focused5", "kmeans4"])
def test_icarus_sparse_engines_for_pruned_methods(quantized, build_root, name):
    """The pruning methods' own artifacts on zero-skipping engines (multi-term focused
    PEs, codebook lookups): bit-exact and faster than the dense walk."""
    art = quantized(name).artifact
    r = flows.cosim_flow(name, 11, artifact_path=art, build_root=build_root, sparse=True)
    dense = flows.cosim_flow(name, 11, artifact_path=art, build_root=build_root)
    assert r.bit_exact and dense.bit_exact, r.first_mismatch or dense.first_mismatch
    assert r.cycles == r.expected_cycles and r.cycles < dense.cycles


@pytest.mark.parametrize("name", ["unified", "xnor"])
def test_sparse_engine_refuses_block_and_binary_layers(quantized, name):
    from quantrtl.hw.sparse import SparseConvEngine
    from quantrtl.model.numbers import artifact

    layer = artifact.load(quantized(name).artifact).layer("conv2")
    with pytest.raises(ValueError, match="use the dense engine"):
        SparseConvEngine(layer)
