"""Co-simulation results against the golden model: every layer of every image, bit for bit.

The hardware streams feature maps in stream order (channel fastest, ``model/numbers/layout.py``);
the golden model's (C, H, W) outputs are put in that order before the element-by-element
comparison.  Cycles are the ones the harness counted in simulation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantrtl.model.numbers.artifact import INPUT, QuantizedNetwork
from quantrtl.util.lanes import lanes_for
from quantrtl.model.numbers.layout import to_stream

from quantrtl.sim.compare import Mismatch, first_mismatch
from quantrtl.sim.golden import GoldenResult


@dataclass
class LayerReport:
    name: str
    bit_exact: bool
    mismatches: int  # positions that differ (over every image of a run)
    cycles: int  # from this layer's last input handshake (the last of its inputs) to its last output handshake
    first_mismatch: dict | None = None
    dense_macs: int = 0
    utilization: float | None = None
    mismatching_images: int = 0


@dataclass
class CosimReport:
    """One image: every layer judged against the golden model."""

    bit_exact: bool
    cycles: int
    predicted: int | None
    golden_predicted: int
    layers: list[LayerReport] = field(default_factory=list)
    first_mismatch: Mismatch | None = None
    timed_out: bool = False


def compare(net: QuantizedNetwork, golden: GoldenResult, raw: dict, lanes: int, captures: list[str],
            sparse: bool = False, index: int = 0, streaming: bool = False) -> CosimReport:
    """Judge one image's raw harness result (``sim.cocotb_cosim``) against image ``index``
    of the golden batch.

    A layer's cycles: from its producers' last output to its own (what it needs after its
    input has arrived), or in a ``streaming`` design (whose engines work as the input
    arrives) from its first input to its last output.  PE utilization counts the MACs the
    lanes must do over those cycles: every dense MAC for dense engines, the nonzero-weight
    MACs for zero-skipping (``sparse``) engines."""
    layers, first = [], None
    lasts = {INPUT: raw["in_last"]}  # the cycle stamp of each node's last output handshake
    firsts = {INPUT: raw["in_first"]}  # and of its first
    for layer in net.layers:
        if layer.name not in captures:
            continue  # a layer without a tap (none today: every inner layer has one)
        cap = raw["captures"][layer.name]
        prev_last = max(lasts.get(s, raw["in_last"]) for s in net.sources(layer))
        prev_first = min(firsts.get(s, raw["in_first"]) for s in net.sources(layer))
        want = to_stream(golden.outputs[layer.name][index], layer.out_shape)
        # the capture memory holds the expected number of values; one more counts as "extra" (-1)
        got = cap["values"][:min(cap["count"], len(want))] + [-1] * max(0, cap["count"] - len(want))
        mm = first_mismatch(layer.name, want, got)
        cycles = (cap["last"] - prev_first + 1 if streaming else cap["last"] - prev_last) if cap["count"] else 0
        work = layer.macs
        if sparse and layer.has_weights:
            work = int(np.count_nonzero(layer.values)) * int(np.prod(layer.out_shape[1:]))
        util = work / (lanes_for(lanes, layer.name) * cycles) if layer.has_weights and cycles else None
        layers.append(LayerReport(
            name=layer.name, bit_exact=mm is None, mismatches=mm.mismatches if mm else 0, cycles=cycles,
            first_mismatch=None if mm is None else {"index": mm.index, "expected": mm.expected, "got": mm.got},
            dense_macs=layer.macs, utilization=util, mismatching_images=int(mm is not None)))
        first = first or mm
        lasts[layer.name], firsts[layer.name] = cap["last"], cap["first"]
    out = raw["captures"][net.layers[-1].name]
    complete = raw["done"] and out["count"] == int(np.prod(net.layers[-1].out_shape))
    predicted = int(np.argmax(out["values"])) if complete else None
    return CosimReport(bit_exact=first is None and complete, cycles=raw["cycles"], predicted=predicted,
                       golden_predicted=int(golden.predicted[index]), layers=layers, first_mismatch=first,
                       timed_out=not raw["done"])


def throughput(raws: list[dict], expected_ii: int | None = None) -> dict:
    """Latency and initiation interval of one batch of images streamed back to back:
    latency = first input handshake to last output handshake of an image (inclusive);
    II = cycles between the last output handshakes of successive images (the steady
    state is the last one)."""
    ends = [r["in_first"] + r["cycles"] - 1 for r in raws]
    ii = [b - a for a, b in zip(ends, ends[1:])]
    return {"images_streamed": len(raws), "latency_cycles": [r["cycles"] for r in raws],
            "initiation_intervals": ii, "initiation_interval": ii[-1] if ii else None,
            "input_intervals": [b["in_first"] - a["in_first"] for a, b in zip(raws, raws[1:])],
            "expected_initiation_interval": expected_ii}


def merge_layers(reports: list[CosimReport]) -> list[LayerReport]:
    """Per layer over many images: mismatching images and positions summed, the first
    mismatch of the first image that has one, cycles and utilization of the first image."""
    merged = []
    for per_image in zip(*(r.layers for r in reports)):
        first = next((l.first_mismatch for l in per_image if l.first_mismatch is not None), None)
        head = per_image[0]
        merged.append(LayerReport(
            name=head.name, bit_exact=all(l.bit_exact for l in per_image),
            mismatches=sum(l.mismatches for l in per_image), cycles=head.cycles, first_mismatch=first,
            dense_macs=head.dense_macs, utilization=head.utilization,
            mismatching_images=sum(l.mismatching_images for l in per_image)))
    return merged
