"""Every engine style's ``memory_bits`` against an independent count: the memories the
elaborated design declares (Amaranth's RTLIL ``memory`` cells, width × size), by name."""
import re

import numpy as np
import pytest
from amaranth.back import rtlil

from quantrtl.hw.engines import make_engine
from quantrtl.model.numbers import families, ops
from tests.factories import format_for_test, random_network

#: memory_bits category → the names of the memories that hold it.
CATEGORIES = {
    "weights": r"weight_mem", "entries": r"entry_mem\d*", "bias": r"bias_(mem|rom)", "requant": r"requant_rom",
    "activations": r"act_mem", "pointers": r"pointer_rom\d*", "masks": r"column_mask_rom\d*", "slots": r"slot_rom\d*",
    "accumulators": r"acc_mem\d*", "codebooks": r"codebook_rom", "join_buffers": r"in\d+_mem", "table": r"table",
    "line_buffer": r"lb_mem", "sums": r"sum_mem", "skip_fifos": r"in\d+_fifo_mem",
}
#: Control tables (addresses, tap offsets, border classes) and the broadcast engine's lane
#: queues, which memory_bits does not count (docs/hardware.md).
CONTROL = r"tap_rom|channel_rom|chan_base_rom|block_rom|row_taps_rom|col_taps_rom|channel_slot_rom\d*|row_class_rom|" \
          r"col_class_rom|storage"


def declared(engine) -> dict[str, int]:
    """Bits per category of the memories in the design, from its RTLIL."""
    text = rtlil.convert(engine, name="t", emit_src=False)
    out: dict[str, int] = {}
    for width, size, name in re.findall(r"^\s*memory width (\d+) size (\d+) \\(\S+)", text, re.M):
        cat = next((c for c, pat in CATEGORIES.items() if re.fullmatch(pat, name)), None)
        if cat is None:
            assert re.fullmatch(CONTROL, name), f"memory {name!r} ({width} x {size}) is in no category"
            continue
        out[cat] = out.get(cat, 0) + int(width) * int(size)
    return out


def weighted_cases():
    for name in families.representatives():
        if families.parse_format(name).binary_input:
            continue  # xnor reads binary maps: its dense engine is the MAC array's, counted through binary
        fam = families.family(families.parse_format(name).family)
        styles = [False] if fam.pe is None else [False, "row", "broadcast", "stream"]
        for style in styles:
            if style == "broadcast" and 0 not in format_for_test(name).decode(format_for_test(name).code_space()):
                continue  # no zero weight (binary, lqnet): the broadcast engine refuses, nothing to skip
            if style in ("row", "broadcast") and name.startswith("unified"):
                continue  # the zero-skipping engines refuse block formats (test_cosim)
            yield name, style


@pytest.mark.parametrize("name,style", list(weighted_cases()), ids=lambda v: str(v))
def test_weighted_engines_count_their_memories(name, style):
    net = random_network(format_for_test(name), seed=2, cin=4, hw=5, cout=4)
    prev = tuple(net.input_shape)
    rng = np.random.default_rng(2)
    for layer in net.layers:
        if layer.has_weights and name == "unified":  # codes of real weights: blocks share a magnitude
            fmt = layer.format.for_input(prev) if not layer.kind.window else layer.format
            q = fmt.encode(rng.normal(size=layer.codes.shape))
            layer.format, layer.codes = q.format, q.codes
        if layer.has_weights:
            e = make_engine(layer, lanes=4, sparse=style, source_shape=prev if layer.kind.flattens else None)
            got = {k: v for k, v in e.memory_bits.items() if v}
            assert got == declared(e), (name, style, layer.name)
        prev = tuple(layer.out_shape)


def test_row_engine_reports_its_own_memories():
    """The row engine's entries, not the dense engine's weight words (a misnamed property
    once fell back to the dense formula)."""
    net = random_network(families.parse_format("shift4"), seed=2, cin=4, hw=5, cout=4)
    e = make_engine(net.layers[0], lanes=4, sparse="row")
    assert "entries" in e.memory_bits and "weights" not in e.memory_bits
    assert type(e).memory_bits is not type(e).__mro__[1].memory_bits


@pytest.mark.parametrize("o", [o for o in ops.ops() if o.example is not None], ids=lambda o: o.name)
def test_op_engines_count_their_memories(o):
    for seed in range(2):
        layer, shapes = o.resolve("example")(seed)
        for style in ("dense", "stream"):  # the stream style builds the windowed ops its own way
            e = make_engine(layer, source_shapes=shapes, sparse=style)
            assert {k: v for k, v in e.memory_bits.items() if v} == declared(e), (o.name, style, seed)


@pytest.mark.parametrize("name, style", [("shift4", "dense"), ("fixed8", "dense"), ("pq4", "dense"),
                                         ("shift4", "row"), ("shift4", "broadcast"), ("shift4", "stream")])
def test_memory_report_against_a_hand_count(name, style):
    """The lower bound (hw/memory.py) counted by hand on a random conv(3x3) → maxpool(2x2) →
    linear network: stored codes x bits, the design's per-channel constants, and the line
    buffers ((kh-1)·W + kw)·C codes of each window's input; the design's total is its
    engines' memory_bits, and never below the bound."""
    from quantrtl.hw.memory import memory_report
    from quantrtl.hw.network import NetworkTop

    fmt = format_for_test(name)
    net = random_network(fmt, seed=3, cin=3, hw=6, cout=4, kernel=(3, 3), pool=(2, 2, 0))
    top = NetworkTop(net, lanes=4, sparse=style if style != "dense" else False)
    engines = top.engines
    r = memory_report(net, engines, top.memory_bits)
    conv, pool, fc = net.layers
    if style in ("dense", "stream"):
        # a pq layer: one code per sub-vector of each channel's fan-in (its own sub-vector length)
        sub = {l.name: l.format.sub if name.startswith("pq") else 1 for l in (conv, fc)}
        codes = sum(l.codes.shape[0] * -(-(l.codes.size // l.codes.shape[0]) // sub[l.name]) for l in (conv, fc))
    else:  # zero-skipping engines store only the nonzero weights (counted from the decoded values)
        codes = sum(int(np.count_nonzero(fmt.decode(l.codes))) for l in (conv, fc))
    assert r["lower_bound"]["weights"] == codes * fmt.bits
    # conv: 3x3 over a 6x6x3 input; pool: 2x2 over the conv's 6x6x4 output
    assert r["lower_bound"]["line_buffers"] == ((3 - 1) * 6 + 3) * 3 * conv.input.bits + \
        ((2 - 1) * 6 + 2) * 4 * pool.input.bits
    constants = sum(v for e in engines.values() for k, v in e.memory_bits.items()
                    if k in ("bias", "requant", "codebooks", "table"))
    assert r["lower_bound"]["constants"] == constants
    assert r["design_total"] == sum(v for e in engines.values() for v in e.memory_bits.values())
    assert r["lower_bound_total"] == sum(r["lower_bound"].values()) <= r["design_total"]
    assert r["over_lower_bound"] == round(r["design_total"] / r["lower_bound_total"], 3)
