"""The peer bench of the hard-wired layer (``synth/peer.py``, ``bench unrolled``): both
generators' Verilog checked against the integer product in Icarus (a wrong matrix is
caught, with the first mismatch), synthesized alike."""
import json

import numpy as np
import pytest

from quantrtl.cli import main
from quantrtl.hw.unrolled import UnrolledLayer
from quantrtl.synth.gates import write_verilog
from quantrtl.synth.peer import check_product, da4ml_design, ours_ports

MATRIX = np.array([[3, -5, 0, 7, 1], [3, 5, 0, -7, 0], [-1, -1, -1, -1, -1], [0, 0, 0, 0, 0], [127, -128, 64, 1, 0]])


@pytest.mark.icarus
@pytest.mark.parametrize("who", ["quantrtl", "da4ml"])
def test_both_designs_are_the_integer_product(tmp_path, who):
    if who == "quantrtl":
        layer = UnrolledLayer(MATRIX, 6, register_output=False)
        v, top, ports = write_verilog(layer, "ours", tmp_path), "ours", ours_ports(layer)
    else:
        v, ports, stats = da4ml_design(MATRIX, 6, "peer", tmp_path)
        top = "peer"
        assert stats["adders"] > 0 and stats["adder_depth"] > 0 and stats["version"].startswith("da4ml")
    ok = check_product(v, top, ports, MATRIX, 6)
    assert ok["bit_exact"] and ok["vectors"] == 64, ok
    wrong = MATRIX.copy()
    wrong[4, 1] += 1
    bad = check_product(v, top, ports, wrong, 6)
    assert not bad["bit_exact"] and bad["first_mismatch"]["output"] == 4, bad
    m = bad["first_mismatch"]
    assert m["vector"] == 1 and m["expected"] - m["got"] == 63  # all inputs at 63: one more 63 expected


@pytest.mark.icarus
@pytest.mark.yosys
def test_carry_chains_keep_every_adder_a_carry_chain_on_ecp5(tmp_path):
    """``carry_chains``: the same integer product, and on ECP5 every adder of the graph its
    own carry chain (more CCU2C, fewer LUT4 cells) where Yosys would otherwise merge
    single-use adder chains into carry-save full adders in LUT4s."""
    from quantrtl.synth.fpga import fpga_map

    rng = np.random.default_rng(3)
    matrix = rng.integers(-40, 41, size=(6, 12))
    mapped = {}
    plain = UnrolledLayer(matrix, 8, register_output=False)
    for chains, layer in ((False, plain), (True, plain.with_carry_chains())):
        assert layer.graph is plain.graph and layer.carry_chains == chains
        top = f"l{int(chains)}"
        v = write_verilog(layer, top, tmp_path)
        assert check_product(v, top, ours_ports(layer), matrix, 8)["bit_exact"]
        assert ("keep" in v.read_text()) == chains
        mapped[chains] = fpga_map(v, top, "ecp5", yosys=None, cache_dir=None, place=False)
    assert mapped[True].carry > mapped[False].carry and mapped[True].luts < mapped[False].luts
    assert mapped[True].luts + 2 * mapped[True].carry < mapped[False].luts + 2 * mapped[False].carry


@pytest.mark.icarus
@pytest.mark.yosys
def test_bench_unrolled_on_a_small_layer(tmp_path, monkeypatch, capsys):
    """``bench unrolled`` on conv1 (8 x 9, gates only): both designs bit-exact, a row each."""
    monkeypatch.chdir(tmp_path)
    rc = main(["bench", "unrolled", "--quantizer", "shift3", "--layer", "conv1", "--target", "gates",
               "--json", str(tmp_path / "u.json")])
    assert rc == 0
    r = json.loads((tmp_path / "u.json").read_text())
    rows = {x["design"]: x for x in r["results"]}
    assert set(rows) == {"quantrtl", "da4ml"} and all(x["bit_exact"] for x in rows.values())
    assert all(x["gates_total"] > 0 and x["adders"] > 0 and x["matrix"] == [8, 9] for x in rows.values())
    assert rows["quantrtl"]["flipflops"] == 0 == rows["da4ml"]["flipflops"]  # combinational both
    assert "no register on either side" in capsys.readouterr().out


def test_bench_unrolled_refuses_what_is_no_constant_matrix(capsys):
    assert main(["bench", "unrolled", "--quantizer", "xnor", "--target", "gates"]) == 2
    assert "xnor: its hard-wired layer is not a constant matrix" in capsys.readouterr().err
    assert main(["bench", "unrolled", "--vs", "hls4ml", "--target", "gates"]) == 2
    assert "unknown peer 'hls4ml'; available: da4ml" in capsys.readouterr().err
    assert main(["bench", "unrolled", "--target", "stratix"]) == 2
    assert "--target 'stratix' is not a target; choose one of gates, ecp5" in capsys.readouterr().err


def test_bench_unrolled_quantizers_as_given(monkeypatch, capsys):
    """``--quantizer shift4`` is what it says (not the default list); no --quantizer is the
    default fixed8,shift3,ternary; an empty list is refused."""
    from quantrtl import bench

    seen = []
    monkeypatch.setattr(bench, "bench_unrolled", lambda qs, *a, **k: seen.append(qs) or {
        "results": [], "covers": "", "yosys_version": "Yosys 0.70"})
    assert main(["bench", "unrolled", "--quantizer", "shift4", "--target", "gates"]) == 0
    assert main(["bench", "unrolled", "--target", "gates"]) == 0
    assert seen == [("shift4",), bench.UNROLLED_QUANTIZERS]
    assert main(["bench", "unrolled", "--quantizer", ",", "--target", "gates"]) == 2
    assert "--quantizer ',' names no quantizer" in capsys.readouterr().err


@pytest.mark.yosys
def test_a_layer_without_multipliers_maps_to_one_netlist_with_or_without_dsps(tmp_path):
    """``bench unrolled`` places a hard-wired layer once when allowing DSPs changes nothing
    (``same_netlist``); a design with multipliers maps differently and is placed twice."""
    from quantrtl.hw.array import MacArray
    from quantrtl.model.numbers.families import parse_format
    from quantrtl.synth.fpga import fpga_map, same_netlist

    layer = UnrolledLayer(np.random.default_rng(5).integers(-20, 21, size=(4, 6)), 8).with_carry_chains()
    arr = MacArray(parse_format("fixed8"), 2, 20)
    for design, top, same in ((layer, "hw", True), (arr, "mul", False)):
        v = write_verilog(design, top, tmp_path)
        with_dsp, without = (fpga_map(v, top, "ecp5", dsp, cache_dir=None, place=False) for dsp in (True, False))
        assert same_netlist(with_dsp, without) == same and (with_dsp.dsps > 0) != same
