"""The command line: results, JSON contract and clear errors that write nothing."""
import json
from pathlib import Path

import pytest
import torch

from quantrtl.cli import main

QUANTIZE_KEYS = {"quantizer", "float_accuracy", "quant_accuracy", "golden_accuracy", "golden_agreement",
                 "weight_bits", "compression_ratio", "artifact"}


def test_quantize_writes_artifact_and_json(tmp_path, capsys):
    rc = main(["quantize", "--quantizer", "ternary", "--finetune", "1", "--out", str(tmp_path / "a"),
               "--json", str(tmp_path / "r.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ternary" in out and "agreement" in out and "conv2" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert QUANTIZE_KEYS <= set(r)
    assert r["quantizer"] == "ternary" and r["finetune"] == 1
    assert (tmp_path / "a" / "digits-ternary.json").is_file() and (tmp_path / "a" / "digits-ternary.npz").is_file()


def run_error(tmp_path, capsys, argv):
    out = tmp_path / "out"
    rc = main(argv + ["--out", str(out), "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert not out.exists() and not (tmp_path / "r.json").exists(), "an error must write nothing"
    return err[-1]


@pytest.mark.parametrize("argv,match", [
    (["--quantizer", "float7"], "unknown quantizer 'float7'; known: fixedN (N=2..16), shiftN (N=3..6), ternary, binary"),
    (["--quantizer", "shift9"], "bit width 9 out of range for shiftN (allowed 3..6)"),
    (["--quantizer", "fixed1"], "allowed 2..16"),
    (["--quantizer", "fixed8", "--finetune", "-1"], "--finetune must be 0 or more epochs"),
])
def test_quantize_bad_arguments(tmp_path, capsys, argv, match):
    assert match in run_error(tmp_path, capsys, ["quantize"] + argv)


def test_quantize_missing_checkpoint(tmp_path, capsys):
    msg = run_error(tmp_path, capsys, ["quantize", "--quantizer", "fixed8", "--checkpoint", str(tmp_path / "no.pt")])
    assert msg.startswith("quantrtl: error: ") and "no.pt: checkpoint not found" in msg


def test_quantize_nan_weights(tmp_path, capsys):
    from quantrtl.model.training.net import load_checkpoint

    sd = load_checkpoint().state_dict()
    sd["fc.weight"][3, 7] = float("inf")
    torch.save(sd, tmp_path / "inf.pt")
    msg = run_error(tmp_path, capsys, ["quantize", "--quantizer", "shift4", "--checkpoint", str(tmp_path / "inf.pt")])
    assert "parameter 'fc.weight' contains NaN or infinity" in msg


def test_train_command(tmp_path, capsys):
    rc = main(["train", "--epochs", "2", "--out", str(tmp_path / "m.pt"), "--json", str(tmp_path / "t.json")])
    assert rc == 0
    r = json.loads((tmp_path / "t.json").read_text())
    assert r["config"]["epochs"] == 2 and r["reproduces_shipped"] is False
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "m.json").is_file()
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_prints_table(tmp_path, capsys):
    """The demo's pipeline, made small to keep the suite short: two quantizers, Icarus on two
    images, 4 lanes (the default, Verilator on the whole split, is what
    tests/sim/test_cosim.py runs for shift4; the default quantizers are the same code)."""
    assert main(["demo", "--out", str(tmp_path), "--finetune", "1", "--images", "0,1", "--simulator", "icarus",
                 "--quantizers", "fixed8,binary", "--lanes", "4", "--throughput", "4", "--target", "ecp5"]) == 0
    out = capsys.readouterr().out
    for q in ("fixed8", "binary"):
        assert q in out
    assert "bit-exact" in out and "gates/MAC/cycle" in out and "total time" in out and "whole network" in out
    assert "ECP5 LUTs" in out and "Fmax MHz" in out
    r = json.loads((tmp_path / "results.json").read_text())
    assert [row["quantizer"] for row in r["rows"]] == ["fixed8", "binary"]
    for row in r["rows"]:
        assert row["bit_exact"] and row["images"] == row["bit_exact_images"] == 2
        assert row["cycles"] == row["expected_cycles"] and row["cycles_all_images_equal"]
        assert row["rtl_accuracy"] in (0.0, 0.5, 1.0)
        # the network synthesized is the one co-simulated: same artifact, same lanes, no harness
        assert row["network_gates"] > row["network_layers"]["conv2"] > 0 and row["network_macs_per_cycle"] > 0
        assert Path(row["network_verilog"]).name == f"digits_{row['quantizer']}_p4_network.v"
        assert row["ecp5"]["luts"] > 0 and row["ecp5"]["fmax_mhz"] > 0
    for f in ("report.md", "gates.png", "accuracy_vs_gates.png", "compression_vs_accuracy.png"):
        assert (tmp_path / f).is_file(), f
    report = (tmp_path / "report.md").read_text()
    assert "Yosys" in report and "bit-exact" in report and "test[0]..test[1] (2 images)" in report
    for row in r["rows"]:
        assert f"{row['gates_total']:,}" in report  # the report prints the measured numbers
        assert f"{row['network_gates']:,}" in report
        assert (tmp_path / "verilog" / f"digits_{row['quantizer']}_top.v").is_file()


def test_quantize_with_pruning_reports_densities(tmp_path):
    rc = main(["quantize", "--quantizer", "fixed8", "--density", "0.3", "--finetune", "2", "--out", str(tmp_path),
               "--json", str(tmp_path / "r.json")])
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    for layer in r["layers"]:
        if layer["density"] is not None:
            assert layer["density"] <= 0.31  # ceil(0.3·n) kept; pruned weights stay zero through fine-tuning
    assert r["golden_agreement"] >= 0.99


def test_quantize_density_out_of_range(tmp_path, capsys):
    assert main(["quantize", "--quantizer", "fixed8", "--density", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--density must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,match", [
    (["--quantizer", "fixed8", "--block", "4"], "--block sets the block size of 'unified', 'pq', not of 'fixed8'"),
    (["--quantizer", "unified", "--block", "0"], "block size must be in 1..64"),
    (["--quantizer", "focused5", "--density", "conv9=0.5"], "unknown layers \\['conv9'\\]"),
    (["--quantizer", "kmeans4", "--density", "fc=half"], "'half' is not a number"),
    (["--quantizer", "kmeans9"], "allowed 2..8"),
    (["--quantizer", "xnor", "--inq"], "--inq trains powers of two"),
])
def test_method_options_bad_input(tmp_path, capsys, argv, match):
    """Bad method options: exit 2, a message naming the option, nothing written."""
    import re

    assert main(["quantize", *argv, "--finetune", "0", "--out", str(tmp_path / "o")]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_results_table_replaces_only_its_block(tmp_path):
    """``make results`` rewrites the block between the markers and nothing else."""
    from quantrtl.demo import DOC_BEGIN, DOC_END, update_doc

    row = {"quantizer": "focused5", "layer_formats": {"conv1": "focused5", "fc": "shift5"},
           "density": {"conv1": 0.6, "fc": 0.12}, "golden_accuracy": 0.9694, "golden_agreement": 1.0,
           "coded_bits": 7088, "compression_ratio": 17.24, "raw_compression_ratio": 6.25, "bit_exact": True,
           "gates_total": 9345, "datapath_gates": 6656, "ratio_to_cheapest": 1.0, "float_accuracy": 0.975,
           "cosim_images": "all", "cosim_image": "test[0]..test[359] (360 images)", "images": 360,
           "bit_exact_images": 360, "rtl_accuracy": 0.9694, "network_gates": 22413, "network_flipflops": 928,
           "network_memory_bits": 36214, "network_gates_per_mac_per_cycle": 3109.4, "network_split_total": 22446,
           "network_layers": {"conv1": 11181, "conv2": 5741, "pool": 247, "fc": 5277},
           "training": "pruning, retraining, FQ"}
    result = {"rows": [row], "simulator": "verilator", "lanes": 8, "layer": "conv2", "throughput": 16, "rate": "16",
              "network_rate": "7.2081", "yosys_version": "Yosys 0.70 (git sha1 28ba3cb92, Release, Clang)",
              "seconds": 1.0, "versions": {"quantrtl": "0.1.0"}}
    doc = tmp_path / "r.md"
    doc.write_text(f"# head\n{DOC_BEGIN}\nold table\n{DOC_END}\ntail\n")
    update_doc(doc, result)
    text = doc.read_text()
    assert text.startswith("# head\n") and text.endswith(f"{DOC_END}\ntail\n") and "old table" not in text
    assert ("| focused5 | focused5/shift5 | 0.6/0.12 | 96.94% | 96.94% | 100.00% | 7,088 | 17.24x | 6.25x | 360/360 | "
            "22,413 | 9,345 | 6,656 | 1.00 |") in text
    assert "test[0]..test[359] (360 images) (verilator, 8 lanes per engine" in text
    assert "focused5   11,181  5,741   247  5,277         22,446         22,413" in text  # the per-layer split
    assert "Yosys 0.70 (git sha1 28ba3cb92)." in text and "* focused5: pruning, retraining, FQ" in text
    assert "layer conv2 alone, 16 lanes, 16 dense MACs per cycle" in text
    (tmp_path / "none.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="needs one <!-- methods-table:begin -->"):
        update_doc(tmp_path / "none.md", result)


def test_demo_update_doc_missing_file(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "o"), "--update-doc", str(tmp_path / "missing.md")]) == 2
    assert "file not found" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_engine_list_and_choice(quantized, tmp_path, capsys):
    """``--engine list`` prints the registered styles; ``--engine NAME`` builds that style,
    the same design as its alias ``--sparse NAME``; a bad or conflicting choice is exit 2."""
    from quantrtl.hw.styles import style_names

    assert main(["verilog", "--engine", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [l.split()[0] for l in lines] == style_names()
    art = quantized("shift4").artifact
    base = ["verilog", "--quantizer", "shift4", "--artifact", art, "--layer", "conv2"]
    assert main(base + ["--engine", "broadcast", "--out", str(tmp_path / "e")]) == 0
    assert main(base + ["--sparse", "broadcast", "--out", str(tmp_path / "s")]) == 0
    name = "digits_shift4_conv2_broadcast.v"
    assert (tmp_path / "e" / name).read_text() == (tmp_path / "s" / name).read_text()
    assert main(base + ["--engine", "dense", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "digits_shift4_conv2.v").is_file()
    capsys.readouterr()
    for extra, match in [(["--engine", "columns"], "--engine 'columns' names no engine style; choose one of dense, row"),
                         (["--engine", "row", "--sparse", "broadcast"], "name different engine styles")]:
        assert main(base + extra + ["--out", str(tmp_path / "x")]) == 2
        assert match in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_verilog_reports_memory_against_its_lower_bound(quantized, tmp_path, capsys):
    """``verilog`` prints and writes the design's on-chip bits by kind beside the lower bound
    (stored weights, constants, line buffers: hw/memory.py): the whole-map digits network
    holds its input maps, so it is above the bound."""
    art = quantized("shift4").artifact
    j = tmp_path / "v.json"
    assert main(["verilog", "--quantizer", "shift4", "--artifact", art, "--out", str(tmp_path / "v"),
                 "--json", str(j)]) == 0
    out = capsys.readouterr().out
    mem = json.loads(j.read_text())["memory"]
    assert mem["design_total"] == sum(mem["design_bits"].values()) > mem["lower_bound_total"] > 0
    # digits: 3x3 conv1 on a 1x16x16 input, 2x2 pool on 8x16x16, 3x3 conv2 on 8x8x8, 8-bit codes
    assert mem["lower_bound"]["line_buffers"] == ((2 * 16 + 3) * 1 + (1 * 16 + 2) * 8 + (2 * 8 + 3) * 8) * 8
    assert mem["lower_bound"]["weights"] == (8 * 9 + 16 * 72 + 10 * 256) * 4  # shift4: 4-bit codes, none padded
    assert f"lower bound  {mem['lower_bound_total']:,} bits" in out and f"{mem['over_lower_bound']}x the bound" in out
    desc = json.loads((tmp_path / "v" / "digits_shift4_top.json").read_text())
    assert desc["memory"] == mem
