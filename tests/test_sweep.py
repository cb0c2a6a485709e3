"""``quantrtl sweep``: the same JSON from local jobs and from a Dask LocalCluster."""
import json

import pytest

from quantrtl.cli import main

ARGS = ["sweep", "--quantizers", "ternary,shift4", "--lanes", "4", "--densities", "1.0,0.5", "--finetune", "1"]


@pytest.mark.slow
@pytest.mark.yosys
@pytest.mark.icarus
def test_dask_matches_local(tmp_path):
    from distributed import LocalCluster

    assert main([*ARGS, "--jobs", "2", "--out", str(tmp_path / "a"), "--json", str(tmp_path / "local.json"),
                 "--csv", str(tmp_path / "s.csv"), "--plot", str(tmp_path / "s.png")]) == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert main([*ARGS, "--scheduler", cluster.scheduler_address, "--out", str(tmp_path / "b"),
                     "--json", str(tmp_path / "dask.json")]) == 0
    local = json.loads((tmp_path / "local.json").read_text())
    dask = json.loads((tmp_path / "dask.json").read_text())
    assert local == dask
    rows = local["rows"]
    assert len(rows) == 4 and all(r["bit_exact"] and r["cycles"] == r["expected_cycles"] for r in rows)
    assert {(r["quantizer"], r["density"]) for r in rows} == {("ternary", 1.0), ("ternary", 0.5), ("shift4", 1.0),
                                                             ("shift4", 0.5)}
    assert (tmp_path / "s.png").is_file() and len((tmp_path / "s.csv").read_text().splitlines()) == 5


@pytest.mark.parametrize("argv,match", [
    (["--lanes", "0"], "--lanes must be in 1..256, got 0"),
    (["--lanes", "4;conv9=8,*=4"], "--lanes the plan names ['conv9'], not layers of the network"),
    (["--lanes", "conv1=4"], "--lanes the plan gives layer 'conv2' no lanes"),
    (["--densities", "1.5"], "--densities 1.5 out of range"),
    (["--densities", "half"], "cannot read 'half'"),
    (["--layers", "pool"], "--layers 'pool' is not a conv2d/linear layer"),
    (["--target", "stratix"], "unknown --target 'stratix'; choose one of gates, ecp5, ice40, xilinx, osu018"),
    (["--target", "osu018"], "--target osu018: sweep maps onto gates or an FPGA (ecp5, ice40, xilinx); cell-library "
                             "rows come from gates --target osu018"),
    (["--sparse", "columns"], "--sparse 'columns' names no zero-skipping engine; choose one of row, broadcast"),
    (["--scheduler", "tcp://127.0.0.1:9", "--lanes", "4", "--quantizers", "fixed8", "--finetune", "0"],
     "--scheduler tcp://127.0.0.1:9: cannot connect"),
])
def test_sweep_bad_arguments(tmp_path, capsys, argv, match):
    assert main(["sweep", "--out", str(tmp_path / "o"), "--json", str(tmp_path / "s.json"), *argv]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
    assert not (tmp_path / "o" / "artifacts").exists()


def test_sweep_checks_layers_and_image_before_work(quantized):
    """The names the sweep checks --layers against are the digits artifact's weight layers."""
    from quantrtl.flows import sweep as sweep_mod
    from quantrtl.model.numbers import artifact

    net = artifact.load(quantized("binary").artifact)
    assert list(sweep_mod.DIGITS_WEIGHT_LAYERS) == [l.name for l in net.layers if l.has_weights]
    from quantrtl.util.errors import OptionError

    with pytest.raises(OptionError, match="'pool' is not a conv2d/linear layer"):
        sweep_mod.sweep(["binary"], [4], [1.0], layers=["pool"])
    with pytest.raises(OptionError, match="image 360: the digits test split has images 0..359"):
        sweep_mod.sweep(["binary"], [4], [1.0], image=360)


@pytest.mark.yosys
@pytest.mark.nextpnr
def test_sweep_jobs_map_place_and_route_on_an_fpga(tmp_path, capsys):
    """FPGA mapping as sweep jobs (the local pool here; a Dask executor runs the same job)."""
    assert main(["sweep", "--quantizers", "ternary", "--lanes", "2", "--densities", "1.0", "--layers", "conv1",
                 "--finetune", "0", "--no-cosim", "--target", "ecp5", "--out", str(tmp_path / "o"),
                 "--json", str(tmp_path / "s.json")]) == 0
    r = json.loads((tmp_path / "s.json").read_text())
    f = r["rows"][0]["fpga"]
    assert r["target"] == "ecp5" and f["luts"] > 0 and f["fmax_mhz"] > 0
    assert f["macs_per_second"] == pytest.approx(r["rows"][0]["macs_per_cycle"] * f["fmax_mhz"] * 1e6)
    assert "ecp5 LUTs" in capsys.readouterr().out


@pytest.mark.yosys
def test_sweep_over_the_residual_network(tmp_path, capsys):
    """``--model digits-res``: its layers are known from the traced graph before any
    training (a pooling layer is refused), and its depthwise conv synthesizes as a job."""
    from quantrtl.flows.sweep import shipped_weight_layers

    assert shipped_weight_layers("digits-res") == ["stem", "dw", "pw", "conv2", "conv3", "fc"]
    assert main(["sweep", "--model", "digits-res", "--layers", "gap", "--out", str(tmp_path / "x")]) == 2
    assert "'gap' is not a conv2d/linear layer" in capsys.readouterr().err
    assert main(["sweep", "--model", "digits-res", "--quantizers", "fixed8", "--lanes", "8", "--layers", "dw",
                 "--finetune", "0", "--no-cosim", "--out", str(tmp_path / "o"), "--json", str(tmp_path / "s.json")]) == 0
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["model"] == "digits-res" and r["rows"][0]["layer"] == "dw" and r["rows"][0]["gates_total"] > 0
    assert r["rows"][0]["macs_per_cycle"] == pytest.approx(4608 / 576)  # 8 lane groups of one lane, 9 taps


@pytest.mark.yosys
@pytest.mark.icarus
@pytest.mark.parametrize("engine,density", [("broadcast", "0.3"), ("stream", "1.0")])
def test_sweep_on_other_engine_styles(tmp_path, engine, density):
    """``--engine broadcast|stream``: the synthesis job builds that style's engine (its MACs
    per cycle simulated on the image, bit-exact) and the cosim job runs the network on
    them (a broadcast engine's cycles at least its formula's, a streaming network's the
    cycle model's)."""
    assert main(["sweep", "--quantizers", "shift3", "--lanes", "4", "--densities", density, "--layers", "conv1",
                 "--finetune", "0", "--engine", engine, "--out", str(tmp_path / "o"),
                 "--json", str(tmp_path / "s.json")]) == 0
    r = json.loads((tmp_path / "s.json").read_text())
    row = r["rows"][0]
    assert r["sparse"] == engine and row["engine"] == engine and row["top"] == f"conv1_shift3_{engine}_p4"
    assert row["layer_bit_exact"] and row["bit_exact"]
    assert row["cycles"] >= row["expected_cycles"] if engine == "broadcast" else row["cycles"] == row["expected_cycles"]
    assert row["macs_per_cycle"] == pytest.approx(8 * 8 * 8 * 9 / row["layer_cycles"])
    assert row["gates_total"] > 0 and row["datapath_gates"] is None


def test_sweep_engine_option(capsys, tmp_path):
    """``--engine`` on sweep: the registry's styles listed, a bad one named, nothing written."""
    assert main(["sweep", "--engine", "list"]) == 0
    assert capsys.readouterr().out.split()[0] == "dense"
    assert main(["sweep", "--engine", "columns", "--out", str(tmp_path / "x")]) == 2
    assert "--engine 'columns' names no engine style" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.yosys
@pytest.mark.icarus
def test_sweep_takes_lane_plans(tmp_path):
    """A lane setting of the sweep can be a plan per layer, as verilog and cosim take it: the
    layer's engine is synthesized at the plan's lanes, the network co-simulated at the plan."""
    assert main(["sweep", "--quantizers", "binary", "--lanes", "conv1=2,*=4", "--densities", "1.0",
                 "--layers", "conv2", "--finetune", "0", "--out", str(tmp_path / "o"),
                 "--json", str(tmp_path / "s.json")]) == 0
    row = json.loads((tmp_path / "s.json").read_text())["rows"][0]
    assert row["lanes"] == 4 and row["lane_setting"] == "conv1=2,*=4" and row["top"].endswith("_p4")
    assert row["bit_exact"] and row["cycles"] == row["expected_cycles"]
