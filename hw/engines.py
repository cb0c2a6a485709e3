"""The engine of an artifact layer: the one place that maps a layer's op to its engine."""
from __future__ import annotations

from quantrtl.hw.join import JoinEngine
from quantrtl.hw.layer import ConvEngine, PoolEngine, ReluEngine
from quantrtl.hw.sparse import SparseConvEngine
from quantrtl.model.numbers.artifact import Layer

__all__ = ["make_engine"]


def make_engine(layer: Layer, lanes: int = 8, pipeline: int = 0, groups: int | None = None,
                source_shape: tuple[int, ...] | None = None, sparse: bool = False, index_bits: int = 4,
                tap_fault: int | None = None, source_shapes: list[tuple] | None = None):
    """The engine for one artifact layer (zero-skipping for conv2d/linear when ``sparse``);
    ``tap_fault`` injects a control fault (``hw/faults.py``); a concat needs its inputs'
    ``source_shapes``."""
    if layer.has_weights and sparse:
        return SparseConvEngine(layer, lanes=lanes, pipeline=pipeline, source_shape=source_shape,
                                index_bits=index_bits, tap_fault=tap_fault)
    if layer.has_weights:
        return ConvEngine(layer, lanes=lanes, groups=groups, pipeline=pipeline, source_shape=source_shape,
                          tap_fault=tap_fault)
    if layer.op in ("maxpool", "avgpool", "gap"):
        return PoolEngine(layer)
    if layer.op == "relu":
        return ReluEngine(layer)
    if layer.op in ("add", "concat"):
        return JoinEngine(layer, source_shapes)
    raise ValueError(f"layer {layer.name!r}: no engine for op {layer.op!r}")
