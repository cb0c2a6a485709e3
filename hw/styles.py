"""The engine-style registry: how a layer with weights is built in hardware.

An :class:`EngineStyle` is one way to build a conv/linear layer: ``dense`` (the MAC
array on the dense loop nest, or the quantizer family's own engine: pq's table
accumulation), ``row`` (row-wise zero skipping, ``hw/sparse.py``), ``broadcast``
(activation-broadcast zero skipping, ``hw/broadcast.py``) and ``stream`` (line buffers,
``hw/stream.py``; a style may also build ops without weights its own way, its ``ops``:
stream's pooling engines).  A record names its engine
factory (``"module:attr"``, resolved on first use: importing this module loads no
Amaranth), the options it takes, the suffix its Verilog top's name carries, and a
one-line summary (``--engine list``).  :func:`make_engine <quantrtl.hw.engines.make_engine>`
builds through it; every engine a style makes satisfies :class:`Engine` (checked per style
by ``tests/hw/test_styles.py``, and its ``memory_bits`` against the memories its design
declares by ``tests/hw/test_memory_bits.py``).  ``--sparse row|broadcast`` is an alias of
``--engine row|broadcast``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from quantrtl.util.registry import Registry, load_named

__all__ = ["EngineStyle", "Engine", "ZeroSkipping", "BUILTIN", "register", "styles", "style", "style_names",
           "style_of", "DEFAULT", "styles_help"]


@runtime_checkable
class Engine(Protocol):
    """What every engine gives the network top, the formulas and the reports."""

    @property
    def expected_cycles(self) -> int: ...

    @property
    def memory_bits(self) -> dict[str, int]: ...


@runtime_checkable
class ZeroSkipping(Engine, Protocol):
    """A zero-skipping engine also says how many weights it stores and the width of their
    relative indices (its ``expected_cycles`` is a lower bound where its work depends on
    the activations: the broadcast engine's is exact on an all-zero map)."""

    @property
    def nonzero_weights(self) -> int: ...

    index_bits: int


@dataclass(frozen=True)
class EngineStyle:
    """One engine style (module docstring)."""

    name: str
    summary: str
    #: ``(layer, lanes, pipeline, groups, source_shape, index_bits, tap_fault) -> engine``.
    factory: str | Callable
    #: Appended to the Verilog top's name (``digits_shift4_top_sparse``).
    suffix: str = ""
    #: Skips zero weights (takes ``index_bits``; refuses formats without a zero weight).
    zero_skipping: bool = False
    #: Ops without weights this style builds its own way, and the engine (``"module:attr"``,
    #: called as ``(layer, source_shapes=...)``) for each; the others take their op's engine.
    ops: tuple[tuple[str, str], ...] = ()

    def op_engine(self, op: str):
        """The style's own engine class or factory for ``op``, or None (the op's engine)."""
        name = dict(self.ops).get(op)
        return None if name is None else load_named(name, f"engine style {self.name!r}", f"engine of {op}")

    def build(self, layer, **kw) -> Any:
        return load_named(self.factory, f"engine style {self.name!r}", "factory")(layer, **kw)


#: The default style.
DEFAULT = "dense"

BUILTIN: tuple[EngineStyle, ...] = (
    EngineStyle("dense", "MAC array (or the family's own datapath, pq's tables) on the dense loop nest",
                "quantrtl.hw.engines:dense_engine"),
    EngineStyle("row", "row-wise zero skipping: each lane walks its channel's nonzero weights and gathers "
                       "their activations", "quantrtl.hw.engines:row_engine", suffix="_sparse", zero_skipping=True),
    EngineStyle("broadcast", "activation-broadcast zero skipping: each nonzero activation meets every lane's "
                             "nonzero weights", "quantrtl.hw.engines:broadcast_engine", suffix="_broadcast",
                zero_skipping=True),
    EngineStyle("stream", "line buffers: each window engine (conv, depthwise, pooling; linear over its input map) "
                          "keeps the input rows its windows need and works as the rows arrive; global average "
                          "pooling a running sum per channel", "quantrtl.hw.stream:stream_engine", suffix="_stream",
                ops=(("maxpool", "quantrtl.hw.stream:stream_window_engine"),
                     ("avgpool", "quantrtl.hw.stream:stream_window_engine"),
                     ("gap", "quantrtl.hw.stream:stream_window_engine"),
                     ("add", "quantrtl.hw.stream:stream_window_engine"),
                     ("concat", "quantrtl.hw.stream:stream_window_engine"))),
)

_REGISTRY: Registry[EngineStyle] = Registry("engine style", BUILTIN)


def register(s: EngineStyle) -> EngineStyle:
    return _REGISTRY.register(s)


def styles() -> list[EngineStyle]:
    return _REGISTRY.records()


def style_names() -> list[str]:
    return _REGISTRY.names()


def style(name: str) -> EngineStyle:
    return _REGISTRY.get(name, ValueError)


def style_of(value) -> EngineStyle:
    """The style a hardware option names: ``False``/``None`` → dense, ``True`` → row (a bare
    ``--sparse``), a style name → that style; anything else an error naming the choices."""
    if value is None or value is False:
        return style(DEFAULT)
    if value is True:
        return style("row")
    if isinstance(value, str) and value in style_names():
        return style(value)
    raise ValueError(f"{value!r} names no engine style; choose one of {', '.join(style_names())}")


def styles_help() -> str:
    """``--engine list``: a line per style."""
    width = max(len(s.name) for s in styles())
    return "\n".join(f"{s.name:<{width}}  {s.summary}" for s in styles())
