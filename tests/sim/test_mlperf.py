"""The shipped MLPerf Tiny networks (ResNet-8, DS-CNN-S): untrained, calibrated on a
synthetic set, co-simulated in Verilator with images streamed back to back."""
import numpy as np
import pytest

from quantrtl import flows
from quantrtl.flows.common import ModelSource


@pytest.mark.parametrize("model,shape,weights,outputs", [
    ("resnet8", (3, 32, 32), ["stem", "s1a", "s1b", "s2a", "s2b", "s2sc", "s3a", "s3b", "s3sc", "fc"], 10),
    ("dscnn", (1, 49, 10), ["conv1"] + [f"{k}{i}" for i in range(1, 5) for k in ("dw", "pw")] + ["fc"], 12)])
def test_shipped_untrained_models_quantize_on_synthetic_data(model, shape, weights, outputs):
    source = ModelSource(model=model)
    assert not source.labelled and source.synthetic
    run = flows.quantize_network("fixed8", source=source)
    net = run.qnet
    assert tuple(net.input_shape) == shape and [l.name for l in net.layers if l.has_weights] == weights
    assert net.layers[-1].out_shape[-1] == outputs
    assert run.float_accuracy is None and run.golden_accuracy is None  # no labels: accuracy is "-"
    assert net.metadata["calibration"].startswith("synthetic") and net.metadata["finetune_epochs"] == 0
    if model == "resnet8":  # the MLPerf Tiny topology: three residual adds, a 1x1 stride-2 shortcut per stack 2, 3
        assert [l.op for l in net.layers].count("add") == 3 and net.layer("s2sc").kernel == (1, 1)
        assert sum(l.macs for l in net.layers) == pytest.approx(12.5e6, rel=0.01)
    else:  # depthwise blocks
        assert all(net.layer(f"dw{i}").groups == 64 for i in range(1, 5))
    with pytest.raises(Exception, match="has no labelled data"):
        flows.quantize_network("fixed8", finetune=1, source=source)


@pytest.mark.verilator
@pytest.mark.slow
@pytest.mark.parametrize("model,lanes,engine", [("resnet8", "stem=8,*=32", False), ("dscnn", "conv1=16,*=8", False),
                                                ("resnet8", "stem=8,*=32", "stream")])
def test_mlperf_network_streams_bit_exact_in_verilator(tmp_path, model, lanes, engine):
    """Every node bit-exact on three images streamed back to back; the first image's
    latency is the formula's, and so are the intervals (the slowest layer's busy cycles,
    less its producer's head start; for the stream style the cycle model's, and its skip
    FIFOs filled exactly to the depths the model computed, with no skew stall)."""
    r = flows.cosim_flow("fixed8", simulator="verilator", lanes=lanes, source=ModelSource(model=model),
                         build_root=tmp_path, images="0-2", sparse=engine)
    if engine == "stream":
        assert [f["join"] for f in r.fifos] == ["add", "add", "add_1", "add_1", "add_2", "add_2"]
        assert all(f["high_water"] == f["depth"] and f["stall_cycles"] == f["model_stall_cycles"] == 0
                   for f in r.fifos), r.fifos
    assert r.bit_exact, r.first_mismatch
    assert all(l["bit_exact"] and l["mismatches"] == 0 for l in r.layers)
    t = r.throughput
    assert t["images_streamed"] == 3 and t["latency_cycles"][0] == r.expected_cycles == r.cycles
    assert t["initiation_interval"] < r.expected_cycles  # images overlap in the pipeline
    assert t["initiation_intervals"] == [t["expected_initiation_interval"]] * 2, t
    assert [p["image"] for p in r.per_image] == ["calib[0]", "calib[1]", "calib[2]"]
    # one batch: the third image's last output comes two initiation intervals after the first's
    assert r.rtl_accuracy is None and r.simulated_cycles == t["latency_cycles"][0] + sum(t["initiation_intervals"])
    assert np.isfinite(r.run_seconds)
