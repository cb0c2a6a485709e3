"""The verilog flow: an artifact (or a model quantized now) → Verilog and its description."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from quantrtl.flows.common import DIGITS, HardwareOptions, ModelSource, artifact_stem, \
    parse_lanes, resolve_quantizer
from quantrtl.flows.quantize import network_for
from quantrtl.model.numbers import artifact
from quantrtl.util.errors import OptionError

__all__ = ["VerilogOptions", "VerilogResult", "verilog_flow"]


@dataclass(frozen=True)
class VerilogOptions(HardwareOptions):
    """What to generate (:class:`HardwareOptions`, and the layer or ``all``, the MAC array's
    pipeline stages, tap ports on the network top), validated on construction."""

    layer: str = "all"
    pipeline: int = 0
    taps: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.artifact is not None:  # Verilog reads nothing but the network
            for name, value in (("model", self.source.model), ("calib", self.source.calib)):
                if value is not None:
                    raise OptionError((name, "artifact_path"), "{0} chooses the model to quantize, and {1} is "
                                                               "quantized already: drop {0}")
        if self.pipeline not in (0, 1, 2):
            raise OptionError("pipeline", f"must be 0, 1 or 2, got {self.pipeline}")


@dataclass(frozen=True)
class VerilogResult:
    top: str
    verilog: str
    description: str
    artifact: str
    expected_cycles: int
    memory_bits: dict
    seconds: float
    layers: list
    initiation_interval: int | None = None
    memory: dict | None = None  # on-chip bits by kind against the lower bound (hw/memory.py)
    cycle_model: dict | None = None  # a streaming design's: FIFO depths (hw/cyclemodel.py)


def verilog_flow(quantizer: str, out_dir: str | Path, layer: str = "all", lanes: int = 8, pipeline: int = 0,
                 artifact_path: str | Path | None = None, finetune: int | None = None,
                 taps: bool = False, source: ModelSource = DIGITS, sparse: bool | str = False,
                 index_bits: int = 4) -> VerilogResult:
    """Verilog for one layer (or ``all``) of the quantized digits model (or of ``artifact_path``:
    an artifact file, or an in-memory network).

    Without an artifact file the model is quantized first (or the in-memory network taken)
    and its artifact is written next to the Verilog, which names it.  Every argument is
    checked before anything is written.
    """
    opts = VerilogOptions(quantizer=quantizer, layer=layer, lanes=lanes, pipeline=pipeline, artifact=artifact_path,
                          finetune=finetune, taps=taps, source=source, sparse=sparse, index_bits=index_bits)
    fmt = resolve_quantizer(quantizer, source, artifact_path)
    lanes = parse_lanes(lanes)  # a count, or a plan per layer
    from quantrtl.hw.verilog import build_design, emit, render

    t0 = time.perf_counter()
    qnet = network_for(fmt, opts.artifact, finetune, source)
    names = [l.name for l in qnet.layers]
    if layer != "all" and layer not in names:
        raise OptionError("layer", f"{layer!r} is not a layer of the model; choose one of {names} or 'all'")
    design = build_design(qnet, layer=layer, lanes=lanes, pipeline=pipeline, taps=taps, sparse=sparse,
                          index_bits=index_bits)
    out_dir = Path(out_dir)
    made_artifact = not isinstance(artifact_path, (str, os.PathLike))  # quantized now, or in memory
    if made_artifact:
        artifact_path = artifact_stem(out_dir, qnet).with_suffix(".json")
    design.artifact = str(Path(artifact_path).with_suffix(".json"))
    rendered = render(design)  # all the work happens before the first file is written
    if made_artifact:
        artifact.save(qnet, artifact_stem(out_dir, qnet))
        rendered[1]["artifact"]["sha256"] = hashlib.sha256(Path(design.artifact).read_bytes()).hexdigest()
    try:
        v_path, j_path = emit(design, out_dir, rendered)
    except BaseException:
        if made_artifact:
            for suffix in (".json", ".npz"):
                artifact_stem(out_dir, qnet).with_suffix(suffix).unlink(missing_ok=True)
        raise
    return VerilogResult(top=design.top, verilog=str(v_path), description=str(j_path), artifact=design.artifact,
                         expected_cycles=design.expected_cycles, memory_bits=design.memory_bits,
                         initiation_interval=design.initiation_interval, memory=rendered[1]["memory"],
                         cycle_model=rendered[1]["parameters"].get("cycle_model"),
                         seconds=time.perf_counter() - t0, layers=design.parameters()["layers"])
