"""The engine of an artifact layer: its op's engine (the op registry), or for a layer with
weights its engine style's (the style registry, ``hw/styles.py``)."""
from __future__ import annotations

from quantrtl.hw.broadcast import BroadcastConvEngine
from quantrtl.hw.layer import ConvEngine
from quantrtl.hw.sparse import SparseConvEngine
from quantrtl.hw.styles import style_names, style_of, styles
from quantrtl.model.numbers.artifact import Layer
from quantrtl.model.numbers.families import family
from quantrtl.model.numbers.formats import WeightFormat

__all__ = ["SPARSE_MODES", "sparse_mode", "conv_engine_class", "make_engine", "dense_engine", "row_engine",
           "broadcast_engine"]

#: The zero-skipping engine styles (``hw/styles.py``).
SPARSE_MODES = tuple(s.name for s in styles() if s.zero_skipping)


def sparse_mode(value) -> str | None:
    """The zero-skipping style ``value`` names (``True`` → ``"row"``), or None for a style
    that does not skip zeros (``False``/``None``, dense, stream); a name of no style is an
    error naming the zero-skipping choices."""
    if isinstance(value, str) and value not in style_names():
        raise ValueError(f"{value!r} names no zero-skipping engine; choose one of {', '.join(SPARSE_MODES)}")
    s = style_of(value)
    return s.name if s.zero_skipping else None


def conv_engine_class(fmt: WeightFormat) -> type[ConvEngine]:
    """The dense conv/linear engine of a format: its family's own (``pq``: table
    accumulation) or the MAC-array engine."""
    fam = family(fmt.family)
    return ConvEngine if fam.engine is None else fam.resolve("engine")


# ---- the styles' factories (hw/styles.py names them) ------------------------------

def dense_engine(layer: Layer, lanes, pipeline, groups, source_shape, index_bits, tap_fault):
    return conv_engine_class(layer.format)(layer, lanes=lanes, groups=groups, pipeline=pipeline,
                                           source_shape=source_shape, tap_fault=tap_fault)


def row_engine(layer: Layer, lanes, pipeline, groups, source_shape, index_bits, tap_fault):
    return SparseConvEngine(layer, lanes=lanes, pipeline=pipeline, source_shape=source_shape, index_bits=index_bits,
                            tap_fault=tap_fault)


def broadcast_engine(layer: Layer, lanes, pipeline, groups, source_shape, index_bits, tap_fault):
    return BroadcastConvEngine(layer, lanes=lanes, pipeline=pipeline, source_shape=source_shape,
                               index_bits=index_bits, tap_fault=tap_fault)


def make_engine(layer: Layer, lanes: int = 8, pipeline: int = 0, groups: int | None = None,
                source_shape: tuple[int, ...] | None = None, sparse: bool | str = False, index_bits: int = 4,
                tap_fault: int | None = None, source_shapes: list[tuple] | None = None):
    """The engine for one artifact layer: a layer with weights in the engine style
    ``sparse`` names (:func:`~quantrtl.hw.styles.style_of`: dense by default, ``row`` or
    ``broadcast``); ``tap_fault`` injects a control fault (``hw/faults.py``); an op that
    joins inputs (concat) needs its inputs' ``source_shapes``."""
    st = style_of(sparse)
    if layer.has_weights:
        return st.build(layer, lanes=lanes, pipeline=pipeline, groups=groups, source_shape=source_shape,
                        index_bits=index_bits, tap_fault=tap_fault)
    # every other op: the style's own engine for it (stream: line-buffered pooling), else its
    # registry record's engine (hw/layer.py pooling and ReLU, hw/join.py, hw/lut.py, a
    # plug-in's), given the shapes of the layer's inputs
    own = st.op_engine(layer.op)
    return (own or layer.kind.resolve("engine"))(layer, source_shapes=source_shapes)
