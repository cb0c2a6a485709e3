"""Co-simulation of the digits network in cocotb: RTL == golden, bit for bit."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from quantrtl import flows
from quantrtl.cli import main
from quantrtl.hw.network import NetworkTop
from quantrtl.model.numbers import artifact
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
    """Three images streamed back to back through one simulator process: the first takes
    the formula's cycles, the others' latency and the initiation interval are measured."""
    art = quantized(name).artifact
    r = flows.cosim_flow(name, simulator="icarus", artifact_path=art, build_root=build_root, images="0,17,359")
    assert r.bit_exact, f"{name}: {r.first_mismatch}"
    assert r.images == r.bit_exact_images == 3
    assert [p["image"] for p in r.per_image] == ["test[0]", "test[17]", "test[359]"]
    t = r.throughput
    assert [p["batch_position"] for p in r.per_image] == [0, 1, 2] and t["images_streamed"] == 3
    for p in r.per_image:
        assert p["bit_exact"] and p["cycles"] == t["latency_cycles"][p["batch_position"]]
        assert p["predicted"] == p["golden_predicted"]
    assert r.per_image[0]["cycles"] == r.expected_cycles <= min(t["latency_cycles"])
    # back to back, an image follows the one before it by the initiation interval, less than one image's
    # latency, and exactly the formula's (the slowest layer's busy cycles, its producer's head start deducted)
    assert t["initiation_intervals"] == [t["expected_initiation_interval"]] * 2
    assert t["initiation_interval"] < r.expected_cycles
    assert [l["name"] for l in r.layers] == ["conv1", "conv2", "pool", "fc"]
    assert all(l["bit_exact"] and l["mismatches"] == 0 and l["mismatching_images"] == 0 for l in r.layers)
    assert r.netlist.startswith(f"digits_{name}_cosim_harness: the emitted Verilog after Yosys `proc; opt`")


@pytest.mark.verilator
def test_verilator_stream_style_on_the_cycle_model(build_root):
    """The residual digits network in the stream style (line buffers, joins through FIFOs),
    three images back to back: bit-exact, every image's latency and both intervals the
    cycle model's, and each skip FIFO filled exactly to the depth the model computed for it
    (an RTL counter of skew stalls: none, as the model says)."""
    from quantrtl.flows.common import ModelSource

    source = ModelSource(model="digits-res")
    r = flows.cosim_flow("fixed8", simulator="verilator", source=source, build_root=build_root, images="0-2",
                         sparse="stream")
    assert r.bit_exact, r.first_mismatch
    top = NetworkTop(flows.quantize_network("fixed8", source=source).qnet, lanes=8, sparse="stream")
    s = top.schedule(3)
    t = r.throughput
    assert t["latency_cycles"] == list(s.latencies) and r.expected_cycles == s.latencies[0]
    assert t["initiation_intervals"] == list(s.intervals) and t["expected_initiation_interval"] == s.intervals[-1]
    assert {(f["join"], f["input"]): f["depth"] for f in r.fifos} == \
        {(j, i): d for j, ds in top.fifo_depths.items() for i, d in enumerate(ds)}
    assert all(f["high_water"] == f["depth"] and f["stall_cycles"] == f["model_stall_cycles"] == 0 for f in r.fifos)
    assert "-stream-" in r.verilog


@pytest.mark.verilator
def test_verilator_deadlock_is_reported_naming_the_nodes(build_root, monkeypatch):
    """The concat's first FIFO one below the depth the cycle model computed: the design
    deadlocks (the fork before the pool waits on it, it waits for conv3, conv3 for the
    fork); the cosim stops after its bound and names the join input at its full FIFO and
    the layers that did not finish, instead of hanging."""
    from quantrtl.flows.common import ModelSource

    source = ModelSource(model="digits-res")
    good = NetworkTop(flows.quantize_network("fixed8", source=source).qnet, lanes=8, sparse="stream")
    depths = {k: list(v) for k, v in good.fifo_depths.items()}
    depths["cat"][0] -= 1
    latency = good.expected_cycles
    init = NetworkTop.__init__

    def small(self, *a, **kw):
        init(self, *a, **{**kw, "fifo_depths": depths})

    monkeypatch.setattr(NetworkTop, "__init__", small)
    monkeypatch.setattr(NetworkTop, "expected_cycles", property(lambda self: latency))  # the model deadlocks too
    r = flows.cosim_flow("fixed8", simulator="verilator", source=source, build_root=build_root, sparse="stream",
                         stream=1)
    assert not r.bit_exact and r.timed_out
    assert r.deadlock.startswith(f"deadlock: no last output within {4 * latency + 1000} cycles")
    assert "cat input 0 (" in r.deadlock and f"cycles at its full FIFO of {depths['cat'][0]} while" in r.deadlock
    assert "fc sent 0 of 10 values" in r.deadlock


@pytest.mark.verilator
@pytest.mark.slow
@pytest.mark.parametrize("name", ["shift4", "pq4"])
def test_verilator_whole_test_split(quantized, build_root, name):
    """Every test image in one Verilator process: all bit-exact, and the RTL's accuracy is
    the golden model's (counted here from the labels, independently of the flow); a MAC
    array network and a table accumulation (product quantization) network."""
    from quantrtl.model.digits import load_split
    from quantrtl.sim import golden

    art = quantized(name).artifact
    r = flows.cosim_flow(name, simulator="verilator", artifact_path=art, build_root=build_root, images="all")
    _, test = load_split()
    assert r.images == r.bit_exact_images == len(test.y) == 360, r.first_mismatch
    lat = r.throughput["latency_cycles"]
    assert r.bit_exact and all(p["cycles"] == lat[p["batch_position"]] for p in r.per_image)
    assert lat[0] == r.expected_cycles
    rtl = np.array([p["predicted"] for p in r.per_image])
    want = golden.run(artifact.load(art), test.x).predicted
    assert np.array_equal(rtl, want)
    assert r.rtl_accuracy == r.golden_accuracy == float(np.mean(want == test.y))


def _most_active(values) -> int:
    """The channel (axis 1 of a golden output) with the most distinct values over the map."""
    return int(np.argmax([len(np.unique(values[0, c])) for c in range(values.shape[1])]))


@pytest.mark.icarus
@pytest.mark.parametrize("kind", ["weight", "bias", "requant", "control"])
def test_injected_faults_are_caught_and_localized(quantized, build_root, kind):
    """Each fault kind, placed in conv1 (in the generated design only): cosim fails and its
    first mismatch names conv1 and a position of the faulty channel (stream order:
    channel fastest) or, for a control fault, of the layer."""
    from quantrtl.sim import golden

    art = quantized("shift4").artifact
    net = artifact.load(art)
    conv1 = net.layer("conv1")
    gold = golden.run(net, flows.resolve_image(0)[0])
    channel = _most_active(gold.outputs["conv1"])
    taps = int(np.prod(conv1.codes.shape[1:]))
    at = {"weight": channel * taps + taps // 2,  # the channel's centre tap
          "bias": channel, "requant": channel,
          "control": int(np.argmax(np.abs(conv1.values).sum(axis=0).reshape(-1)))}[kind]
    r = flows.cosim_flow("shift4", 0, artifact_path=art, build_root=build_root, inject=kind, at=f"conv1:{at}")
    assert not r.bit_exact and r.fault == f"{kind} fault at conv1:{at}"
    mm = r.first_mismatch
    assert mm["layer"] == "conv1" and mm["expected"] != mm["got"] and mm["mismatches"] > 0
    if kind != "control":
        assert mm["index"] % conv1.out_shape[0] == channel
    assert not r.layers[0]["bit_exact"] and r.layers[0]["mismatching_images"] == 1


@pytest.mark.verilator
@pytest.mark.slow
def test_cli_weight_fault_caught_over_the_whole_split(quantized, build_root, tmp_path, capsys, monkeypatch):
    """The last weight of the classifier: some image must exercise it; cosim exits 1 and
    names the layer and the position."""
    monkeypatch.chdir(tmp_path)
    rc = main(["cosim", "--quantizer", "shift4", "--artifact", quantized("shift4").artifact, "--simulator",
               "verilator", "--images", "all", "--inject", "weight", "--at", "fc:2559", "--json", "f.json"])
    out = capsys.readouterr().out
    assert rc == 1
    r = json.loads((tmp_path / "f.json").read_text())
    mm = r["first_mismatch"]
    assert mm["layer"] == "fc" and mm["index"] == 9  # output 9 holds row 9 of the weights (2559 = 9 * 256 + 255)
    assert f"layer 'fc', index 9" in out and "MISMATCH: test[" in out
    assert r["layers"][-1]["mismatching_images"] > 0 and all(l["bit_exact"] for l in r["layers"][:-1])


def test_cli_fault_and_images_arguments(quantized, capsys):
    for args, msg in ((["--inject", "clock"], "--inject 'clock' is not a fault kind; choose one of weight, bias"),
                      (["--at", "fc:1"], "--at places a fault: give --inject too"),
                      (["--inject", "weight", "--at", "fc"], "is not LAYER:INDEX"),
                      (["--inject", "weight", "--at", "pool:0"], "layer 'pool' is not a layer with weights"),
                      (["--inject", "bias", "--at", "fc:10"], "bias index 10 is outside 0..9 of layer 'fc'"),
                      (["--images", "5-2"], "--images range 5-2 is empty"),
                      (["--images", "0-360"], "--images 360 is outside the 360 images 0..359"),
                      (["--images", "1,x"], "--images 'x' is not an index or a range")):
        assert main(["cosim", "--quantizer", "shift4", "--artifact", quantized("shift4").artifact, *args]) == 2, args
        err = [l for l in capsys.readouterr().err.splitlines() if not l.startswith("co-simulating")]
        assert len(err) == 1 and err[0].startswith("quantrtl: error: ") and msg in err[0], (args, err)


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


def test_32x32_bitmaps_are_counted_per_4x4_block(tmp_path):
    """The data set's own reduction: ink pixels (gray >= 128) per 4×4 block, 0..16."""
    from PIL import Image

    from quantrtl.model.digits import load_image

    rng = np.random.default_rng(0)
    bitmap = rng.random((32, 32)) < 0.4
    want = np.zeros((8, 8), dtype=np.int64)
    for y in range(32):  # an independent count, pixel by pixel
        for x in range(32):
            want[y // 4, x // 4] += int(bitmap[y, x])
    gray = np.where(bitmap, rng.integers(128, 256, (32, 32)), rng.integers(0, 128, (32, 32))).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "b.png")
    np.save(tmp_path / "b.npy", bitmap.astype(np.uint8))
    for name in ("b.png", "b.npy"):
        got = load_image(tmp_path / name)
        assert got.shape == (1, 8, 8) and np.array_equal(got[0], want), name
    assert want.max() <= 16


@pytest.mark.parametrize("make,match", [
    (lambda p: p.joinpath("bad.png").write_bytes(b"\x89PNG not really"), "unreadable image"),
    (lambda p: np.save(p / "bad.npy", np.zeros((7, 7))), r"array shape \(7, 7\), expected \(8, 8\), \(1, 8, 8\) or a 32"),
    (lambda p: np.save(p / "bad.npy", np.full((32, 32), 2)), r"a 32×32 array must be a bitmap of 0 and 1"),
    (lambda p: __import__("PIL.Image").Image.fromarray(np.zeros((16, 16), np.uint8)).save(p / "bad.png"),
     r"image is 16×16 pixels, expected 8×8 \(digits\) or 32×32"),
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
    assert "unknown simulator 'questa' (supported: icarus, verilator)" in capsys.readouterr().err
    assert main(["cosim", "--quantizer", "shift4", "--image", "360"]) == 2
    assert "the digits test split has images 0..359" in capsys.readouterr().err


def test_cli_simulator_not_installed(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    import quantrtl.util.tools

    monkeypatch.setattr(quantrtl.util.tools.sys, "prefix", "/nonexistent")
    assert main(["cosim", "--quantizer", "shift4", "--simulator", "verilator"]) == 3
    err = capsys.readouterr().err.strip()
    assert "simulator verilator: verilator is not installed" in err and len(err.splitlines()) <= 2


@pytest.mark.icarus
def dense_cycles(net, lanes=8):
    """The network's cycles on dense engines, by their formula (which every dense cosim
    asserts exactly); the design is elaborated, as any design made is."""
    from amaranth.hdl import Fragment

    top = NetworkTop(net, lanes=lanes)
    Fragment.get(top, None)
    return top.expected_cycles


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shift3", "fixed8"])
@pytest.mark.parametrize("density", [0.1, 0.3, 1.0])
def test_icarus_sparse_engines_bit_exact(build_root, tmp_path, name, density):
    """Pruned weights on zero-skipping engines: bit-exact, and fewer cycles as density drops."""
    q = flows.quantize_network(name, 2, density=density)
    art = artifact.save(q.qnet, tmp_path / f"{name}-d{density:g}")
    r = flows.cosim_flow(name, 4, artifact_path=art, build_root=build_root, sparse=True, stream=1)
    assert r.bit_exact, r.first_mismatch
    assert r.cycles == r.expected_cycles
    if density < 1.0:  # dense engines run exactly their formula (asserted by every dense cosim)
        assert r.cycles < dense_cycles(q.qnet)


@pytest.mark.icarus
@pytest.mark.slow
@pytest.mark.parametrize("name", ["focused5", "kmeans4"])
def test_icarus_sparse_engines_for_pruned_methods(quantized, build_root, name):
    """The pruning methods' own artifacts on zero-skipping engines (multi-term focused
    PEs, codebook lookups): bit-exact and faster than the dense walk."""
    art = quantized(name).artifact
    r = flows.cosim_flow(name, 11, artifact_path=art, build_root=build_root, sparse=True, stream=1)
    assert r.bit_exact, r.first_mismatch
    assert r.cycles == r.expected_cycles and r.cycles < dense_cycles(artifact.load(art))


@pytest.mark.icarus
@pytest.mark.slow
@pytest.mark.parametrize("name", ["shift3", "focused5", "kmeans4"])
def test_icarus_broadcast_engines_bit_exact(build_root, tmp_path, name):
    """Activation-broadcast engines on the digits network pruned to 10, 30 and 100 % of its
    weights: every layer bit-exact in Icarus, at least the formula's cycles (a lower
    bound), and fewer cycles the sparser the weights."""
    cycles = {}
    for density in (0.1, 0.3, 1.0):
        q = flows.quantize_network(name, 2, density=density)
        art = artifact.save(q.qnet, tmp_path / f"{name}-d{density:g}")
        r = flows.cosim_flow(name, 4, artifact_path=art, build_root=build_root, sparse="broadcast", stream=1)
        assert r.bit_exact and all(l["bit_exact"] for l in r.layers), (density, r.first_mismatch)
        assert r.cycles >= r.expected_cycles
        cycles[density] = r.cycles
    assert cycles[0.1] < cycles[0.3] < cycles[1.0], cycles


def test_cosim_names_the_sparse_engines(capsys):
    assert main(["cosim", "--quantizer", "shift3", "--sparse", "columns"]) == 2
    err = capsys.readouterr().err
    assert "--sparse 'columns' names no zero-skipping engine; choose one of row, broadcast" in err and len(err.splitlines()) <= 2


@pytest.mark.parametrize("name", ["unified", "xnor"])
@pytest.mark.parametrize("engine", ["row", "broadcast"])
def test_sparse_engine_refuses_block_and_binary_layers(quantized, name, engine):
    from quantrtl.hw.engines import make_engine

    layer = artifact.load(quantized(name).artifact).layer("conv2")
    with pytest.raises(ValueError, match="use the dense engine"):
        make_engine(layer, sparse=engine)


@pytest.mark.icarus
@pytest.mark.slow
def test_two_cosims_at_once_on_one_build_both_pass(tmp_path, quantized):
    """Two runs started together on the same build folder: one waits for the other's lock,
    neither reads the other's job or result, both are bit-exact."""
    import subprocess
    import sys

    art = quantized("shift4").artifact
    cmd = [sys.executable, "-m", "quantrtl", "cosim", "--quantizer", "shift4", "--artifact", art]
    procs = [subprocess.Popen(cmd + ["--image", str(i)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in (3, 17)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "RTL == golden, bit for bit" in out


@pytest.mark.icarus
def test_damaged_build_is_rebuilt_and_waves_get_their_own(tmp_path, quantized):
    art = quantized("ternary").artifact
    r = flows.cosim_flow("ternary", 0, artifact_path=art, build_root=tmp_path)
    assert r.bit_exact
    build = Path(r.verilog).parent
    (build / "sim.vvp").write_bytes(b"#! truncated")  # a build cut short, newer than its sources
    again = flows.cosim_flow("ternary", 0, artifact_path=art, build_root=tmp_path)
    assert again.bit_exact and (build / "sim.vvp").read_bytes() != b"#! truncated"
    w = flows.cosim_flow("ternary", 0, artifact_path=art, build_root=tmp_path, waves=True)
    assert w.bit_exact and w.waves and Path(w.waves).is_file()
    assert Path(w.verilog).parent != build


@pytest.mark.verilator
def test_verilator_runtime_compiles_once_through_the_object_cache(tmp_path, quantized, monkeypatch):
    """Two different designs: the second build takes Verilator's and cocotb's runtime objects
    from ccache (hits counted by ccache itself), and both stay bit-exact."""
    import subprocess

    from quantrtl.sim.runner import OBJECT_CACHE_VARIABLE, SimulationError, object_cache_env

    monkeypatch.delenv(OBJECT_CACHE_VARIABLE, raising=False)
    assert object_cache_env(tmp_path / "root" / "design")["CCACHE_DIR"] == str(tmp_path / "root" / ".ccache")
    cache = tmp_path / "objects"
    monkeypatch.setenv(OBJECT_CACHE_VARIABLE, str(cache))
    env = object_cache_env(tmp_path / "any")
    assert env["CCACHE_DIR"] == str(cache) and Path(env["OBJCACHE"]).name == "ccache"
    monkeypatch.setenv(OBJECT_CACHE_VARIABLE, str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SimulationError, match=f"{OBJECT_CACHE_VARIABLE}=.*a-file: not a folder"):
        object_cache_env(tmp_path / "any")
    monkeypatch.setenv(OBJECT_CACHE_VARIABLE, str(cache))

    def hits() -> int:
        out = subprocess.run([env["OBJCACHE"], "--print-stats"], env={**os.environ, "CCACHE_DIR": str(cache)},
                             capture_output=True, text=True, check=True).stdout
        stats = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        return int(stats["direct_cache_hit"]) + int(stats["preprocessed_cache_hit"])

    for i, name in enumerate(("ternary", "binary")):
        r = flows.cosim_flow(name, 0, simulator="verilator", artifact_path=quantized(name).artifact,
                             build_root=tmp_path / name)
        assert r.bit_exact
        if i == 0:
            assert hits() == 0
    assert hits() >= 5  # verilated, _dpi, _vpi, _timing, _threads: the same objects for any design


def test_capture_dump_read_back_marks_unknown_words(tmp_path):
    """``$writememh`` files: comments and address marks skipped, X/Z words recorded as -1."""
    from quantrtl.sim.cocotb_cosim import read_hex
    from quantrtl.sim.compare import X_VALUE

    p = tmp_path / "cap0.hex"
    p.write_text("// 0x00000000\n0a\nff\nxx\n1z\n// 0x00000004\n@4\n07\n")
    assert read_hex(p, 5) == [10, 255, X_VALUE, X_VALUE, 7]
    assert read_hex(p, 2) == [10, 255]


@pytest.mark.parametrize("stream", [0, 9, "3"])
def test_stream_batch_size_checked_before_any_work(stream):
    from quantrtl.util.errors import OptionError

    with pytest.raises(OptionError, match="1..8 images streamed back to back"):
        flows.cosim_flow("shift4", stream=stream)
