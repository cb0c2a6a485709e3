"""The engine of an artifact layer: the one place that maps a layer's op to its engine."""
from __future__ import annotations

from quantrtl.hw.broadcast import BroadcastConvEngine
from quantrtl.hw.layer import ConvEngine
from quantrtl.hw.sparse import SparseConvEngine
from quantrtl.model.numbers.artifact import Layer
from quantrtl.model.numbers.families import family
from quantrtl.model.numbers.formats import WeightFormat

__all__ = ["SPARSE_MODES", "sparse_mode", "conv_engine_class", "make_engine"]

#: The zero-skipping engines: ``row`` (each lane gathers its own activation,
#: ``hw/sparse.py``) and ``broadcast`` (nonzero activations broadcast to all lanes,
#: ``hw/broadcast.py``).
SPARSE_MODES = ("row", "broadcast")


def sparse_mode(value) -> str | None:
    """``False``/``None`` → None (dense engines), ``True`` → ``"row"``, a name of
    :data:`SPARSE_MODES` → itself; anything else is an error naming the choices."""
    if value is None or value is False:
        return None
    if value is True:
        return "row"
    if value in SPARSE_MODES:
        return value
    raise ValueError(f"{value!r} names no zero-skipping engine; choose one of {', '.join(SPARSE_MODES)}")


def conv_engine_class(fmt: WeightFormat) -> type[ConvEngine]:
    """The dense conv/linear engine of a format: its family's own (``pq``: table
    accumulation) or the MAC-array engine."""
    fam = family(fmt.family)
    return ConvEngine if fam.engine is None else fam.resolve("engine")


def make_engine(layer: Layer, lanes: int = 8, pipeline: int = 0, groups: int | None = None,
                source_shape: tuple[int, ...] | None = None, sparse: bool | str = False, index_bits: int = 4,
                tap_fault: int | None = None, source_shapes: list[tuple] | None = None):
    """The engine for one artifact layer (a zero-skipping one for conv2d/linear when
    ``sparse`` names one, :func:`sparse_mode`); ``tap_fault`` injects a control fault
    (``hw/faults.py``); an op that joins inputs (concat) needs its inputs' ``source_shapes``."""
    mode = sparse_mode(sparse)
    if layer.has_weights and mode == "broadcast":
        return BroadcastConvEngine(layer, lanes=lanes, pipeline=pipeline, source_shape=source_shape,
                                   index_bits=index_bits, tap_fault=tap_fault)
    if layer.has_weights and mode == "row":
        return SparseConvEngine(layer, lanes=lanes, pipeline=pipeline, source_shape=source_shape,
                                index_bits=index_bits, tap_fault=tap_fault)
    if layer.has_weights:
        return conv_engine_class(layer.format)(layer, lanes=lanes, groups=groups, pipeline=pipeline, source_shape=source_shape,
                          tap_fault=tap_fault)
    # every other op: its registry record's engine (hw/layer.py pooling and ReLU, hw/join.py,
    # hw/lut.py, a plug-in's), given the shapes of the layer's inputs
    return layer.kind.resolve("engine")(layer, source_shapes=source_shapes)
