"""A design's on-chip memory against a lower bound.

The design's bits, by kind, are its engines' own ``memory_bits`` (weights, biases,
requantization constants, activation buffers, join buffers, zero-skipping entries, …;
a capture harness is not part of a design).  The lower bound is what any design that
computes the same layers in stream order, one image at a time, without recomputing
and without off-chip memory, has to hold:

* **weights**: every stored code at its format's width, nothing padded (a product-
  quantization layer stores one code per sub-vector of each output channel's fan-in; a
  zero-skipping engine only its nonzero weights, their positions not counted);
* **constants**: the design's own per-channel constants (bias, requantization, codebooks,
  look-up tables), at most one channel group of padding above the minimum;
* **line buffers**: a k_h × k_w window (conv, depthwise conv, pooling) over an H × W × C
  input streamed row by row needs the last ``k_h − 1`` rows and ``k_w`` pixels of it:
  ``((k_h − 1) · W + k_w) · C`` codes at the input width (1 × 1 windows: none).

Skip and concat buffers (the early branch waiting for the late one) are not in the bound:
their smallest depth depends on the schedule, and counting none keeps it a lower bound.
"""
from __future__ import annotations

__all__ = ["CONSTANT_KINDS", "WINDOW_OPS", "memory_floor", "memory_report"]

#: Kinds of ``memory_bits`` the bound takes as the design keeps them.
CONSTANT_KINDS = ("bias", "requant", "codebooks", "table")

#: Ops whose window slides over a streamed map (their input needs a line buffer).
WINDOW_OPS = ("conv2d", "maxpool", "avgpool")


def _stored_codes(layer, engine) -> int:
    nonzero = getattr(engine, "nonzero_weights", None)  # zero-skipping engines store only these
    if nonzero is not None:
        return int(nonzero)
    stride = getattr(engine, "code_stride", 1)  # fan-in positions per stored code (pq: a sub-vector's)
    cout = layer.codes.shape[0]
    return cout * -(-(layer.codes.size // cout) // stride)


def _line_buffer_bits(layer) -> int:
    if layer.op not in WINDOW_OPS or len(layer.in_shape) != 3:
        return 0
    (kh, kw), (c, _, w) = layer.kernel, layer.in_shape
    if kh * kw == 1:
        return 0
    return ((kh - 1) * w + kw) * c * layer.input.bits


def memory_floor(net, engines: dict) -> dict[str, int]:
    """The lower bound of the module docstring, by kind, for the layers ``engines`` (name →
    engine) builds of ``net``."""
    floor = {"weights": 0, "constants": 0, "line_buffers": 0}
    for name, e in engines.items():
        layer = net.layer(name)
        if layer.has_weights:
            floor["weights"] += _stored_codes(layer, e) * layer.format.bits
        floor["constants"] += sum(v for k, v in e.memory_bits.items() if k in CONSTANT_KINDS)
        floor["line_buffers"] += _line_buffer_bits(layer)
    return floor


def memory_report(net, engines: dict, bits: dict[str, int]) -> dict:
    """The design's bits by kind (``bits``: its ``memory_bits``) and in total, the lower
    bound by kind and in total, and their ratio (how many times the bound the design holds)."""
    floor = memory_floor(net, engines)
    total, bound = sum(bits.values()), sum(floor.values())
    return {"design_bits": bits, "design_total": total, "lower_bound": floor, "lower_bound_total": bound,
            "over_lower_bound": round(total / bound, 3) if bound else None,
            "lower_bound_excludes": "skip and concat buffers (their depth depends on the schedule)"}
