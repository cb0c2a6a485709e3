"""Faults a user injects into the generated design, to see that co-simulation catches them.

Each fault changes the hardware only (the golden model keeps the artifact as it is), so a
co-simulation that does not report a mismatch has not exercised the fault:

* ``weight`` — the weight code at flat ``index`` of the layer's codes (the artifact's
  (out, in, kh, kw) or (out, in) order) becomes the legal code whose value is farthest
  from it;
* ``bias`` — output channel ``index``'s bias is raised by as many accumulator units as
  move its output across the whole output range (a ``sign`` layer: by ``2·fan_in + 1``),
  so every output of that channel that was not already at the top changes;
* ``requant`` — output channel ``index``'s requantization shift grows by one (shrinks
  when it is already the largest allowed), halving (doubling) its scale;
* ``control`` — in the engine's tap table (its address generation: fan-in position →
  input offset and kernel position), position ``index`` points at position ``index + 1``'s
  input (the last position at the first's), so the weight there meets the wrong
  activation.  Positions are in the engine's fan-in order (kernel row, column, input
  channel fastest; a linear layer after a feature map: that map's stream order).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from quantrtl.model.numbers.artifact import SHIFT_RANGE, QuantizedNetwork

__all__ = ["FAULT_KINDS", "Fault", "FaultError", "parse_fault", "faulty_network"]

FAULT_KINDS = ("weight", "bias", "requant", "control")


class FaultError(ValueError):
    """A fault that names no element of the design; the message says what exists."""


@dataclass(frozen=True)
class Fault:
    kind: str
    layer: str
    index: int

    def __str__(self) -> str:
        return f"{self.kind} fault at {self.layer}:{self.index}"


def _weight_layers(net: QuantizedNetwork) -> list:
    return [l for l in net.layers if l.has_weights]


def _size(net: QuantizedNetwork, kind: str, name: str) -> int:
    """How many places of ``kind`` layer ``name`` has (the valid indices are 0..size-1)."""
    layer = net.layer(name)
    if kind == "weight":
        return int(layer.codes.size)
    if kind == "control":
        return int(np.prod(layer.codes.shape[1:]))
    if kind == "requant" and layer.activation == "sign":
        raise FaultError(f"layer {name!r} outputs sign bits and has no requantization constants; "
                         f"choose a layer with a requantizer")
    return int(layer.codes.shape[0])


def parse_fault(kind: str, at: str | None, net: QuantizedNetwork) -> Fault:
    """``kind`` (one of :data:`FAULT_KINDS`) at ``"layer:index"`` (default: the first layer
    with weights, index 0), checked against ``net``."""
    if kind not in FAULT_KINDS:
        raise FaultError(f"unknown fault kind {kind!r}; choose one of {', '.join(FAULT_KINDS)}")
    names = [l.name for l in _weight_layers(net)]
    if at is None:
        name, index = names[0], 0
    else:
        name, sep, text = str(at).rpartition(":")
        if not sep or not text.strip().isdigit():
            raise FaultError(f"{at!r} is not LAYER:INDEX (e.g. {names[-1]}:0)")
        index = int(text)
        if name not in names:
            raise FaultError(f"layer {name!r} is not a layer with weights of {net.name}; choose one of {', '.join(names)}")
    size = _size(net, kind, name)
    if not 0 <= index < size:
        raise FaultError(f"{kind} index {index} is outside 0..{size - 1} of layer {name!r}")
    return Fault(kind, name, index)


def faulty_network(net: QuantizedNetwork, fault: Fault) -> tuple[QuantizedNetwork, dict[str, int]]:
    """The network the hardware is built from with ``fault`` in it, and the engines' tap
    faults (layer → fan-in position, for ``control``)."""
    parse_fault(fault.kind, f"{fault.layer}:{fault.index}", net)
    if fault.kind == "control":
        return net, {fault.layer: fault.index}
    bad = copy.deepcopy(net)
    layer, i = bad.layer(fault.layer), fault.index
    if fault.kind == "weight":
        layer.codes = layer.format.faulty_codes(layer.codes, i)
    elif fault.kind == "bias":
        layer.bias = layer.bias.astype(np.int64).copy()
        if layer.activation == "sign":
            delta = 2 * int(np.prod(layer.codes.shape[1:])) + 1
        else:  # one output step is 2**n / M0 accumulator units (docs/integer-semantics.md §3)
            step = max(1, -(-(1 << int(layer.shift[i])) // int(layer.m0[i])))
            delta = (layer.out_max - layer.out_min + 1) * step
        layer.bias[i] += delta
    else:  # requant
        layer.shift = layer.shift.copy()
        layer.shift[i] += 1 if layer.shift[i] < SHIFT_RANGE[1] else -1
    return bad, {}
