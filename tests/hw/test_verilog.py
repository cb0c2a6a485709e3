"""Verilog emission: determinism, the JSON description, and lint by Verilator and Icarus."""
import json
import subprocess

import pytest

from quantrtl.hw.verilog import build_design, emit, render
from quantrtl.model.numbers import artifact
from quantrtl.cli import main
from quantrtl.sim.tools import find_tool
from tests.factories import REPRESENTATIVES

FORMATS = list(dict.fromkeys(REPRESENTATIVES + ["shift3", "shift4", "shift6"]))


@pytest.fixture(scope="module")
def emitted(quantized, tmp_path_factory):
    """Whole-network Verilog for every format (with taps), emitted once."""
    out = tmp_path_factory.mktemp("verilog")
    paths = {}
    for name in FORMATS:
        net = artifact.load(quantized(name).artifact)
        design = build_design(net, "all", lanes=8, taps=True, artifact=quantized(name).artifact)
        paths[name] = emit(design, out)
    return paths  # (generation time is a benchmark: quantrtl bench verilog)


def test_verilog_is_deterministic(quantized, emitted):
    paths = emitted
    net = artifact.load(quantized("shift4").artifact)
    again, _ = render(build_design(net, "all", lanes=8, taps=True))
    assert again == paths["shift4"][0].read_text()


def test_description(emitted):
    v, j = emitted["fixed8"]
    d = json.loads(j.read_text())
    names = {p["name"]: p for p in d["ports"]}
    assert {"clk", "rst", "inp__payload", "inp__valid", "inp__ready", "out__payload", "out__valid", "out__ready"} <= set(names)
    assert names["inp__payload"]["width"] == 8 and names["inp__ready"]["direction"] == "output"
    assert all(p["meaning"] for p in d["ports"])
    assert f"module {d['top']}(" in v.read_text()
    assert d["expected_cycles"] > 0 and d["memory_bits"]["weights"] > 0
    assert d["artifact"]["sha256"] and d["parameters"]["lanes"] == 8
    assert d["artifact"]["file"].endswith(".json") and "/" not in d["artifact"]["file"]  # no machine path
    for port in d["ports"]:
        assert port["name"] in v.read_text()


@pytest.mark.slow  # (with the module's fixture: every format's whole network emitted)
@pytest.mark.verilator
@pytest.mark.parametrize("name", FORMATS)
def test_verilator_lint(emitted, name):
    verilator = find_tool("verilator")
    v, _ = emitted[name]
    r = subprocess.run([verilator, "--lint-only", "-Wno-fatal", str(v)], capture_output=True, text=True)
    assert r.returncode == 0 and "%Error" not in r.stderr, r.stderr[-2000:]


@pytest.mark.icarus
@pytest.mark.parametrize("name", FORMATS)
def test_icarus_compiles(emitted, name, tmp_path):
    iverilog = find_tool("iverilog")
    v, _ = emitted[name]
    r = subprocess.run([iverilog, "-g2012", "-o", str(tmp_path / "a.vvp"), str(v)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr[-2000:]


def test_cli_verilog_one_layer(tmp_path, capsys, quantized):
    art = quantized("ternary").artifact
    rc = main(["verilog", "--quantizer", "ternary", "--layer", "conv2", "--lanes", "4", "--artifact", art,
               "--out", str(tmp_path), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["top"] == "digits_ternary_conv2" and (tmp_path / "digits_ternary_conv2.v").is_file()
    assert r["layers"][0]["lanes"] == 4
    assert "digits_ternary_conv2" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--layer", "conv9"], "--layer 'conv9' is not a layer of the model; choose one of ['conv1', 'conv2', 'pool', 'fc'] or 'all'"),
    (["--lanes", "0"], "--lanes must be in 1..256, got 0"),
    (["--pipeline", "5"], "--pipeline must be 0, 1 or 2"),
    (["--quantizer", "shift8"], "allowed 3..6"),
])
def test_cli_verilog_errors_write_nothing(tmp_path, capsys, quantized, argv, match):
    args = ["verilog", "--artifact", quantized("shift4").artifact, "--out", str(tmp_path / "out")]
    if "--quantizer" not in argv:
        args += ["--quantizer", "shift4"]
    assert main(args + argv) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_verilog_wrong_artifact_quantizer(tmp_path, capsys, quantized):
    assert main(["verilog", "--quantizer", "fixed8", "--artifact", quantized("shift4").artifact,
                 "--out", str(tmp_path / "o")]) == 2
    assert "quantized with 'shift4', not 'fixed8'" in capsys.readouterr().err
