"""The quantizer families: the one plug-in point of the toolkit (no torch, no Amaranth).

A *family* is everything the stages need to know about one kind of quantizer, in one
record (:class:`Family`):

* ``format``: its codec, a :class:`~quantrtl.model.numbers.formats.WeightFormat`
  subclass (pure NumPy: encode/decode, code space, per-layer parameters, the term
  decomposition that the MAC array and the unrolled datapaths use);
* ``pe``: its processing element, an Amaranth ``ProcessingElement`` subclass
  (``hw/pe.py``), which also carries the NumPy reference of what it computes;
* ``engine`` (optional): for a family whose datapath is not a MAC array of per-weight
  PEs, its own dense conv/linear engine (``pq``: table building and accumulation,
  ``hw/pq.py``); such a family has no ``pe``;
* ``train``: its training procedure (``model/training/procedures.py``), called with a
  :class:`~quantrtl.model.training.procedures.TrainRequest`;
* ``widths``: the ``N`` of ``familyN`` names (``None`` for a bare name);
* ``examples``: the names the documentation, the demo lists and the test
  parametrizations use (the first is the family's representative).

``pe`` and ``train`` live in layers that import Amaranth or torch, so the built-in
families name them as ``"module:attribute"`` strings, resolved on first use
(:meth:`Family.resolve`); a plug-in may pass the objects themselves.  The list of
families is explicit (:data:`BUILTIN`); :func:`register` adds one at run time (a
plug-in, or a test's toy family).  Nothing registers itself by being imported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from quantrtl.util.registry import load_named
from quantrtl.model.numbers.bases import ABCNetFormat, LQNetFormat
from quantrtl.model.numbers.codebook import KMeansFormat
from quantrtl.model.numbers.focused import FocusedFormat
from quantrtl.model.numbers.formats import (BinaryFormat, FixedFormat, FormatError, ShiftFormat, TernaryFormat,
                                            WeightFormat, XnorFormat)
from quantrtl.model.numbers.pq import PQFormat
from quantrtl.model.numbers.unified import UnifiedFormat

__all__ = ["Family", "BUILTIN", "register", "unregister", "families", "family", "parse_format", "format_from_dict",
           "known_quantizers", "example_names", "all_names", "representatives", "comparison_names", "method_names",
           "quantizer_help"]

_NAME = re.compile(r"[a-z][a-z0-9]*")


@dataclass(frozen=True)
class Family:
    """One quantizer family: codec, PE, training procedure and names (module docstring)."""

    name: str
    format: type
    pe: str | type | None
    train: str | Callable
    widths: range | None
    examples: tuple[str, ...]
    summary: str
    #: A seed-paper method (``demo --quantizers methods`` and ``make results`` run these).
    method: bool = False
    #: The family's own conv/linear engine ("module:Class"), when its datapath is not a
    #: MAC array of PEs (then ``pe`` is None).
    engine: str | type | None = None

    def __post_init__(self):
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"family name {self.name!r} must be lower-case letters and digits")
        if not (isinstance(self.format, type) and issubclass(self.format, WeightFormat)):
            raise ValueError(f"family {self.name!r}: format must be a WeightFormat subclass, got {self.format!r}")
        if self.format.family != self.name:
            raise ValueError(f"family {self.name!r}: its format class says family {self.format.family!r}")
        if not self.examples:
            raise ValueError(f"family {self.name!r} needs at least one example name")
        if (self.pe is None) == (self.engine is None):
            raise ValueError(f"family {self.name!r} needs either a PE (a MAC array datapath) or an engine of its own")

    @property
    def pattern(self) -> str:
        """Regular expression over a whole quantizer name (group 1: the width)."""
        return rf"{self.name}(\d+)" if self.widths is not None else self.name

    @property
    def names(self) -> list[str]:
        """Every quantizer name of the family (each width once)."""
        return [f"{self.name}{n}" for n in self.widths] if self.widths is not None else [self.name]

    @property
    def help(self) -> str:
        w = self.widths
        return f"{self.name}N ({w.start}..{w.stop - 1})" if w is not None else self.name

    def resolve(self, piece: str) -> Any:
        """The family's ``pe``, ``engine`` or ``train`` object (imported on first use when named)."""
        value = getattr(self, piece)
        if value is None:
            raise LookupError(f"family {self.name!r} has no {piece}"
                              + (" (its datapath is its own engine)" if piece == "pe" else ""))
        return load_named(value, f"family {self.name!r}", piece)


_PE = "quantrtl.hw.pe:"
_TRAIN = "quantrtl.model.training.procedures:"

#: The built-in families, in the order lists and tables show them.
BUILTIN: tuple[Family, ...] = (
    Family("fixed", FixedFormat, _PE + "FixedPE", _TRAIN + "standard", FixedFormat.BITS,
           ("fixed8", "fixed4", "fixed2", "fixed16"), "symmetric per-channel integers (TensorFlow 8-bit style)"),
    Family("shift", ShiftFormat, _PE + "ShiftPE", _TRAIN + "incremental", ShiftFormat.BITS,
           ("shift3", "shift4", "shift6"), "zero or ±2^e (INQ powers of two; --inq trains incrementally)"),
    Family("ternary", TernaryFormat, _PE + "TernaryPE", _TRAIN + "standard", None, ("ternary",),
           "{-1, 0, +1} per channel scale (TWN)"),
    Family("binary", BinaryFormat, _PE + "BinaryPE", _TRAIN + "standard", None, ("binary",),
           "{-1, +1} per channel scale (BWN)"),
    Family("xnor", XnorFormat, _PE + "XnorPE", _TRAIN + "standard", None, ("xnor",),
           "binary weights on binary activations (XNOR-popcount)", method=True),
    Family("focused", FocusedFormat, _PE + "FocusedPE", _TRAIN + "standard", FocusedFormat.BITS,
           ("focused5", "focused4", "focused6"), "focused quantization for sparse CNNs", method=True),
    Family("kmeans", KMeansFormat, _PE + "KMeansPE", "quantrtl.model.training.sharing:procedure", KMeansFormat.BITS,
           ("kmeans4", "kmeans2", "kmeans8"), "Deep Compression weight sharing (k-means codebook)", method=True),
    Family("abcnet", ABCNetFormat, _PE + "BasisPE", _TRAIN + "standard", ABCNetFormat.BITS,
           ("abcnet5", "abcnet1", "abcnet3", "abcnet8"), "ABC-Net: M shifted-sign binary bases", method=True),
    Family("lqnet", LQNetFormat, _PE + "BasisPE", _TRAIN + "standard", LQNetFormat.BITS,
           ("lqnet2", "lqnet1", "lqnet4"), "LQ-Net: K learned binary bases", method=True),
    Family("unified", UnifiedFormat, _PE + "UnifiedPE", "quantrtl.model.training.admm:procedure", None, ("unified",),
           "micro-structured weight unification and pruning (ADMM)", method=True),
    Family("pq", PQFormat, None, "quantrtl.model.training.pq:procedure", PQFormat.BITS, ("pq4", "pq2", "pq8"),
           "product quantization: sub-vector codebooks, table accumulation (Q-CNN)", method=True,
           engine="quantrtl.hw.pq:TableConvEngine"),
)

_REGISTRY: dict[str, Family] = {f.name: f for f in BUILTIN}


def register(fam: Family) -> Family:
    """Add a family (a plug-in's, or a test's toy family); its name must be new."""
    if not isinstance(fam, Family):
        raise TypeError(f"register() takes a Family, got {type(fam).__name__}")
    if fam.name in _REGISTRY:
        raise ValueError(f"quantizer family {fam.name!r} is already registered")
    _REGISTRY[fam.name] = fam
    return fam


def unregister(name: str) -> None:
    """Remove a family added with :func:`register` (built-in families stay)."""
    if any(f.name == name for f in BUILTIN):
        raise ValueError(f"built-in family {name!r} cannot be removed")
    _REGISTRY.pop(name, None)


def families() -> list[Family]:
    """Every registered family, built-in first."""
    return list(_REGISTRY.values())


def family(name: str) -> Family:
    """The family called ``name`` (a format's ``family``)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FormatError(f"no quantizer family {name!r}; known: {', '.join(_REGISTRY)}") from None


def known_quantizers() -> list[str]:
    """Human-readable list of accepted names."""
    return [f"{f.name}N (N={f.widths.start}..{f.widths.stop - 1})" if f.widths else f.name for f in families()]


def quantizer_help() -> str:
    """The accepted quantizer names, as ``--quantizer`` help shows them."""
    return ", ".join(f.help for f in families())


def example_names() -> list[str]:
    """Every family's example names (tests parametrize over these)."""
    return [n for f in families() for n in f.examples]


def all_names() -> list[str]:
    """Every accepted quantizer name (each width of each family)."""
    return [n for f in families() for n in f.names]


def representatives() -> list[str]:
    """Each family's representative name (its first example)."""
    return [f.examples[0] for f in families()]


def comparison_names(also=()) -> list[str]:
    """Each family's representative and the names in ``also`` that the registry knows,
    in registry order (the methods comparison of ``make results``)."""
    wanted = set(representatives()) | set(also)
    return [n for f in families() for n in dict.fromkeys(f.examples + tuple(f.names)) if n in wanted]


def method_names() -> list[str]:
    """The representative name of each seed-method family (``--quantizers methods``)."""
    return [f.examples[0] for f in families() if f.method]


def parse_format(name: str) -> WeightFormat:
    """``"shift4"`` → ``ShiftFormat(bits=4)``; a clear :class:`FormatError` otherwise."""
    if not isinstance(name, str):
        raise FormatError(f"quantizer name must be a string, got {name!r}")
    for f in families():
        m = re.fullmatch(f.pattern, name)
        if not m:
            continue
        if f.widths is None:
            return f.format()
        bits = int(m.group(1))
        if bits not in f.widths:
            raise FormatError(
                f"quantizer {name!r}: bit width {bits} out of range for {f.name}N "
                f"(allowed {f.widths.start}..{f.widths.stop - 1})"
            )
        return f.format(bits=bits)
    raise FormatError(f"unknown quantizer {name!r}; known: {', '.join(known_quantizers())}")


def format_from_dict(d: dict) -> WeightFormat:
    """Inverse of :meth:`WeightFormat.to_dict` (validated)."""
    if not isinstance(d, dict) or "name" not in d:
        raise FormatError(f"format entry must be an object with a 'name', got {d!r}")
    fmt = parse_format(d["name"]).with_params(d)
    if fmt.to_dict() != d:
        raise FormatError(f"format entry {d!r} is inconsistent with its name (expected {fmt.to_dict()!r})")
    return fmt
