"""Gate-count comparisons across quantizers at equal throughput, in two hardware styles.

* **array**: each quantizer's layer engine (memory-fed weights, ``hw/layer.py``) with
  ``lanes = T``; every row carries the MACs per cycle the engine's schedule actually
  delivers (``macs / run_cycles``, ``hw/geometry.py``: fewer than T when the fan-in or the
  output channels do not fill the lanes, e.g. 9 of 16 on a 3×3 kernel over one input
  channel), and per-MAC figures divide by that actual rate; the MAC array alone
  (PEs + adder trees + accumulators) is synthesized too and reported as the datapath,
  the rest of the engine as control.
* **unrolled**: weights hard-wired (``hw/unrolled.py``), one output pixel per cycle, i.e.
  ``fan_in × Cout`` MACs per cycle for every design.  Every channel (``sample`` None):
  the whole layer as one design, subexpressions shared across its output channels
  (``UnrolledLayer``), measured.  A sample of output channels: each synthesized alone
  (``UnrolledDot``, no sharing) and the layer extrapolated (labelled as such, with the
  spread).

Every number comes from a Yosys run on the exact Verilog file named in the row.
"""
from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantrtl.hw.engines import conv_engine_class
from quantrtl.hw.unrolled import UnrolledDot, UnrolledLayer, window_bits
from quantrtl.hw.verilog import to_verilog
from quantrtl.model.numbers.artifact import Layer
from quantrtl.util.atomic import atomic_write
from quantrtl.util.lanes import lanes_tag, lanes_text

from quantrtl.synth.yosys import SynthResult, synthesize
from quantrtl.util.errors import OptionError

__all__ = ["GateRow", "array_designs", "unrolled_designs", "array_rows", "unrolled_rows", "unrolled_fpga",
           "check_unrolled_fpga", "network_rows",
           "fq_conv_weights", "BENCHES", "write_verilog", "run_all"]

#: The Focused Quantization paper's comparison layer: 3×3 conv, padding 1, 8×8 map,
#: 100 → 100 channels.  Float weights ~ N(0, 1) from ``numpy.random.default_rng(0)``.
BENCHES = {"fq-conv": {"cin": 100, "cout": 100, "kernel": (3, 3), "hw": (8, 8), "seed": 0}}


def fq_conv_weights(bench: str = "fq-conv") -> np.ndarray:
    b = BENCHES[bench]
    rng = np.random.default_rng(b["seed"])
    return rng.normal(0.0, 1.0, size=(b["cout"], b["cin"], *b["kernel"]))


@dataclass
class GateRow:
    """One design of a comparison (the JSON row of ``quantrtl gates``)."""

    quantizer: str
    style: str
    lanes: int
    throughput: int  # the MACs per cycle asked for (the lanes)
    gates_total: int
    gates_by_type: dict
    flipflops: int
    memory_bits: int
    gates_per_mac_per_cycle: float
    top: str
    verilog: str
    yosys_version: str
    yosys_script: str
    extrapolated: bool  # True: a sample of channels scaled to the layer; False: every channel synthesized
    sample: int | None
    transistors: int | None = None
    datapath_gates: int | None = None
    control_gates: int | None = None
    datapath_top: str | None = None
    datapath_verilog: str | None = None
    spread: dict | None = None
    layer: str = ""
    extra: dict = field(default_factory=dict)
    #: Dense MACs per cycle the design's schedule actually delivers (what per-MAC figures divide by).
    macs_per_cycle: float = 0.0
    #: ``measured`` (Yosys ran on the whole design) or ``extrapolated`` (derived from ``extrapolated``).
    provenance: str = ""
    #: Two-input gate levels on the design's longest register-to-register path (``ltp -noff``;
    #: unrolled rows: the deepest sampled channel).
    logic_depth: int | None = None

    def __post_init__(self):
        self.provenance = "extrapolated" if self.extrapolated else "measured"


def write_verilog(component, top: str, out_dir: Path) -> Path:
    """Emit ``component`` as ``out_dir/<top>.v`` (rewritten only when it changed)."""
    path = Path(out_dir) / f"{top}.v"
    text = to_verilog(component, top)
    if not path.is_file() or path.read_text() != text:
        atomic_write(path, text)
    return path


def run_all(jobs: list[tuple[Path, str]], n_jobs: int, yosys: str | None, cache_dir,
            map_memories: tuple[str, ...] = ()) -> list[SynthResult]:
    """Synthesize each (Verilog, top) of ``jobs``, ``n_jobs`` Yosys runs at a time (cached)."""
    with ThreadPoolExecutor(max_workers=max(1, n_jobs)) as pool:
        futures = [pool.submit(synthesize, v, top, yosys, None, cache_dir, map_memories) for v, top in jobs]
        return [f.result() for f in futures]


def array_designs(layers: dict[str, Layer], throughput: int, out_dir: Path, pipeline: int = 0,
                  prefix: str = "") -> list[tuple]:
    """Per quantizer: (quantizer, layer, engine, engine Verilog, top, array Verilog, array top)."""
    designs = []
    for q, layer in layers.items():
        eng = conv_engine_class(layer.format)(layer, lanes=throughput, pipeline=pipeline)
        arr = eng.mac_array()
        top = f"{prefix + '_' if prefix else ''}{layer.name}_{q}_p{throughput}"
        designs.append((q, layer, eng, write_verilog(eng, top, out_dir), top,
                        write_verilog(arr, top + "_array", out_dir), top + "_array"))
    return designs


def unrolled_designs(weights: dict[str, np.ndarray], out_dir: Path, sample: int | None, name: str, seed: int = 0,
                     register_inputs: bool = False, carry_chains: bool = False):
    """The channels the designs cover (the same for every quantizer) and per design
    (quantizer, the channels it computes, Verilog, top, its adder graph's description:
    ``UnrolledLayer.describe``, empty for a channel alone).  ``sample`` None: one design per
    quantizer, the whole layer (``UnrolledLayer``: every channel, subexpressions shared,
    ``_layer`` tops); else that many seeded channels, each its own design
    (``UnrolledDot``, ``_ch<c>`` tops).  ``register_inputs``: the designs register their
    input window too (what an FPGA place-and-route times, ``_reg`` tops); ``carry_chains``:
    a whole layer keeps every adder a two-input adder (``UnrolledLayer``: what an FPGA's
    carry chains make cheapest, ``_cc`` tops)."""
    cout = next(iter(weights.values())).codes.shape[0]
    reg = "_reg" if register_inputs else ""
    cc = "_cc" if carry_chains else ""
    designs = []
    if sample is None or sample >= cout:
        from quantrtl.hw.cmvm import MAX_PAIRS, MatrixTooLarge

        for q, w in weights.items():
            top = f"{name}_{q}_layer{reg}{cc}"
            try:
                layer = UnrolledLayer.from_codes(w.format, w.codes, register_inputs=register_inputs,
                                                 carry_chains=carry_chains)
            except MatrixTooLarge as e:
                raise OptionError("sample", f"all: the whole {q} layer ({e.shape[0]} channels x {e.shape[1]} weights) "
                                            f"has {e.pairs:,} pairs of signed-digit terms for the subexpression "
                                            f"search, more than {MAX_PAIRS:,}; sample channels (each synthesized "
                                            "alone) instead") from None
            designs.append((q, tuple(range(cout)), write_verilog(layer, top, out_dir), top, layer.describe()))
        return list(range(cout)), designs
    if sample < 1:
        raise OptionError("sample", f"must be at least 1, got {sample}")
    channels = sorted(np.random.default_rng(seed).choice(cout, size=sample, replace=False).tolist())
    for q, w in weights.items():
        for c in channels:
            top = f"{name}_{q}_ch{c}{reg}"
            dot = UnrolledDot.from_codes(w.format, w.codes[c], register_inputs=register_inputs)
            designs.append((q, (c,), write_verilog(dot, top, out_dir), top, {}))
    return channels, designs


def _whole_layer(per: list, cout: int) -> bool:
    """Designs ``(channels, ...)`` of one quantizer that are the whole layer as one."""
    return len(per) == 1 and len(per[0][0]) == cout


def _layer_total(per: list, cout: int, value) -> float:
    """A layer's total of ``value(result)`` from designs ``(channels, result)`` covering
    some of its ``cout`` channels: scaled by ``cout`` over the channels covered (exact
    when they cover all)."""
    covered = sum(len(chs) for chs, _ in per)
    return sum(value(r) for _, r in per) * cout / covered


def array_rows(layers: dict[str, Layer], throughput: int, out_dir: Path, jobs: int = 2, yosys: str | None = None,
               cache_dir="build/synth-cache", pipeline: int = 0, prefix: str = "",
               map_memories: tuple[str, ...] = ()) -> list[GateRow]:
    """``layers``: quantizer name → the same layer of each quantizer's artifact."""
    designs = array_designs(layers, throughput, Path(out_dir), pipeline, prefix)
    results = run_all([j for d in designs for j in ((d[3], d[4]), (d[5], d[6]))], jobs, yosys, cache_dir,
                       map_memories)
    rows = []
    for i, (q, layer, eng, v, top, av, atop) in enumerate(designs):
        full, dp = results[2 * i], results[2 * i + 1]
        g = eng.geometry
        rate = layer.macs / g.run_cycles  # the schedule's actual dense MACs per cycle
        rows.append(GateRow(
            quantizer=q, style="array", lanes=g.lanes, throughput=throughput, gates_total=full.gates_total,
            gates_by_type=full.gates_by_type, flipflops=full.flipflops, memory_bits=full.memory_bits,
            gates_per_mac_per_cycle=full.gates_total / rate, macs_per_cycle=rate, top=top, verilog=str(v),
            yosys_version=full.yosys_version, yosys_script=full.yosys_script, extrapolated=False, sample=None,
            transistors=full.transistors, datapath_gates=dp.gates_total, control_gates=full.gates_total - dp.gates_total,
            logic_depth=full.logic_depth,
            datapath_top=atop, datapath_verilog=str(av), layer=layer.name,
            extra={"groups": g.groups, "accumulator_bits": eng.acc_width,
                   "effective_macs_per_cycle": layer.macs / g.run_cycles, "cycles": eng.expected_cycles,
                   "datapath_flipflops": dp.flipflops, "memories": full.memories}))
    return rows


def unrolled_rows(weights: dict, out_dir: Path, sample: int | None = 4, jobs: int = 2,
                  yosys: str | None = None, cache_dir="build/synth-cache", name: str = "fqconv",
                  seed: int = 0) -> list[GateRow]:
    """``weights``: quantizer → the quantized weights of one layer, anything with ``codes``
    (Cout, fan-in…), ``values`` and ``format`` (a :class:`~model.formats.Quantized` or an
    artifact :class:`~quantrtl.model.numbers.artifact.Layer`).

    The same ``sample`` output channels (seeded choice) are synthesized for every
    quantizer, each alone; the layer total is the sample mean times Cout (one output
    pixel per cycle means all Cout channels work in parallel), marked extrapolated.
    ``sample`` None (or at least Cout) synthesizes the whole layer as one design, its
    subexpressions shared across channels: measured.
    """
    cout = next(iter(weights.values())).codes.shape[0]
    composed = {q: parts for q, w in weights.items()
                if (parts := conv_engine_class(w.format).unrolled_parts(w.format, w.codes)) is not None}
    per_channel = {q: w for q, w in weights.items() if q not in composed}
    channels, designs = unrolled_designs(per_channel, Path(out_dir), sample, name, seed) if per_channel else ([], [])
    k = len(channels)
    part_designs = [(q, part, count, write_verilog(comp, f"{name}_{q}_{part}", Path(out_dir)), f"{name}_{q}_{part}")
                    for q, parts in composed.items() for part, comp, count in parts]
    results = run_all([(v, top) for _, _, v, top, _ in designs] + [(v, top) for *_, v, top in part_designs], jobs,
                      yosys, cache_dir)
    part_results = results[len(designs):]
    rows = []
    for q, w in weights.items():
        if q in composed:
            rows.append(_composed_row(q, w, [(d, r) for d, r in zip(part_designs, part_results) if d[0] == q], name))
            continue
        values = w.values
        per = [(chs, r, v, top) for (qq, chs, v, top, _), r in zip(designs, results) if qq == q]
        whole = _whole_layer(per, cout)
        fan_in = int(np.prod(values.shape[1:]))
        throughput = fan_in * cout
        cover = [(chs, r) for chs, r, _, _ in per]
        total = _layer_total(cover, cout, lambda r: r.gates_total)
        kinds = sorted({t for _, r, _, _ in per for t in r.gates_by_type})
        first = per[0][1]
        gates = [r.gates_total for _, r, _, _ in per]
        spread = {"verilog": [str(v) for _, _, v, _ in per], "tops": [t for _, _, _, t in per]}
        if not whole:
            spread.update(channels=channels, gates=gates, min=min(gates), max=max(gates), stdev=statistics.pstdev(gates))
        extra = {"nonzero_weights_per_channel": [int(np.count_nonzero(values.reshape(cout, -1)[c])) for c in channels],
                 "cout": cout, "fan_in": fan_in, "whole_layer": whole,
                 "design": "the whole layer, subexpressions shared across output channels" if whole
                 else "each sampled channel alone"}
        if whole:
            extra.update(next(d[4] for d in designs if d[0] == q))
        rows.append(GateRow(
            quantizer=q, style="unrolled", lanes=throughput, throughput=throughput, gates_total=round(total),
            gates_by_type={t: round(_layer_total(cover, cout, lambda r: r.gates_by_type.get(t, 0))) for t in kinds},
            flipflops=round(_layer_total(cover, cout, lambda r: r.flipflops)), memory_bits=0,
            gates_per_mac_per_cycle=total / throughput, macs_per_cycle=float(throughput), top=per[0][3],
            verilog=str(per[0][2]),
            yosys_version=first.yosys_version, yosys_script=first.yosys_script, extrapolated=k < cout, sample=k,
            transistors=None if first.transistors is None else round(_layer_total(cover, cout, lambda r: r.transistors)),
            spread=spread, layer=name, logic_depth=max((r.logic_depth or 0 for _, r, _, _ in per), default=None) or None,
            extra=extra))
    return rows


def _composed_row(q: str, w, parts: list, name: str) -> GateRow:
    """The unrolled row of a layer built from distinct parts (pq: table slices and channel
    sums, ``hw/pq.py``): each part synthesized, the layer the sum of parts times their
    counts (no sampling; marked extrapolated all the same, as it is not one Yosys run)."""
    cout = w.codes.shape[0]
    fan_in = int(np.prod(w.values.shape[1:]))
    throughput = fan_in * cout
    total = sum(r.gates_total * count for (_, _, count, _, _), r in parts)
    by_type: dict[str, int] = {}
    for (_, _, count, _, _), r in parts:
        for t, n in r.gates_by_type.items():
            by_type[t] = by_type.get(t, 0) + n * count
    first = parts[0][1]
    return GateRow(
        quantizer=q, style="unrolled", lanes=throughput, throughput=throughput, gates_total=total,
        gates_by_type=dict(sorted(by_type.items())),
        flipflops=sum(r.flipflops * count for (_, _, count, _, _), r in parts), memory_bits=0,
        gates_per_mac_per_cycle=total / throughput, macs_per_cycle=float(throughput), top=parts[0][0][4],
        verilog=str(parts[0][0][3]), yosys_version=first.yosys_version, yosys_script=first.yosys_script,
        extrapolated=True, sample=None,
        transistors=None if any(r.transistors is None for _, r in parts)
        else sum(r.transistors * count for (_, _, count, _, _), r in parts),
        spread={"parts": [{"part": part, "count": count, "gates": r.gates_total, "top": top, "verilog": str(v)}
                          for (_, part, count, v, top), r in parts]},
        layer=name, logic_depth=_composed_depth(parts),
        extra={"composition": "sum over distinct parts (table slices, channel sums) of gates x count",
               "cout": cout, "fan_in": fan_in})


def _composed_depth(parts: list) -> int | None:
    """Gate levels from the window to an output register: the deepest table slice (all
    combinational) and the channel sum after it."""
    slices = [r.logic_depth for (_, part, _, _, _), r in parts if part != "channel"]
    channel = [r.logic_depth for (_, part, _, _, _), r in parts if part == "channel"]
    if any(d is None for d in slices + channel):
        return None
    return max(slices, default=0) + max(channel, default=0)


def check_unrolled_fpga(weights: dict, target: str = "an FPGA") -> None:
    """Refuse an FPGA or cell-library mapping of an unrolled layer built from parts (pq),
    whose timing the parts alone do not give."""
    composed = [q for q, w in weights.items() if conv_engine_class(w.format).unrolled_parts(w.format, w.codes)]
    if composed:
        raise OptionError("target", f"the unrolled style of {', '.join(composed)} (table slices and channel sums) is "
                                    f"not mapped onto {target}; use --style array for its {target} columns")


def unrolled_fpga(weights: dict, out_dir: Path, target: str, dsp: bool = True, sample: int | None = 4,
                  jobs: int = 2, yosys: str | None = None, cache_dir="build/synth-cache", name: str = "fqconv",
                  seed: int = 0, progress=None) -> dict[str, dict]:
    """FPGA columns of the unrolled rows (quantizer → dict): the designs of
    :func:`unrolled_rows` (the whole layer, or the same sampled channels one by one), each
    with its input window registered (so that nextpnr times register-to-register paths),
    mapped and placed on ``target``.

    A sample is extrapolated like the gate count: LUTs, carry, DSPs, … are the sample
    mean times Cout; flip-flops count each channel's output register (its flip-flops less
    the input bits it reads, :func:`~quantrtl.hw.unrolled.window_bits`) times
    Cout plus the input window register once (all channels of a layer share it); the Fmax
    is the slowest sampled channel's.  The whole layer is measured as placed.  ``fits``
    says whether the layer's LUTs and DSPs fit the named device."""
    from quantrtl.synth.fpga import TARGETS, fpga_map_all

    check_unrolled_fpga(weights)
    cout = next(iter(weights.values())).codes.shape[0]
    channels, designs = unrolled_designs(weights, Path(out_dir), sample, name, seed, register_inputs=True,
                                         carry_chains=True)
    results = fpga_map_all([(v, top, f"{q} " + (f"ch{chs[0]}" if len(chs) == 1 else "layer"))
                            for q, chs, v, top, _ in designs], target, dsp, jobs, yosys, cache_dir, progress)
    k = len(channels)
    t = TARGETS[target]
    out = {}
    for q, w in weights.items():
        per = [(chs, r) for (qq, chs, _, _, _), r in zip(designs, results) if qq == q]
        layer = {kind: round(_layer_total(per, cout, lambda r: getattr(r, kind)))
                 for kind in ("luts", "carry", "dsps", "brams", "lutram", "muxes")}
        window = window_bits(w.format, w.codes[per[0][0][0]])[0]
        if _whole_layer(per, cout):  # its window register is in the design
            layer["ffs"] = per[0][1].ffs
        else:  # each channel's output register, the window register once
            bits = {chs[0]: window_bits(w.format, w.codes[chs[0]]) for chs, _ in per}
            layer["ffs"] = round(statistics.fmean(r.ffs - bits[chs[0]][1] for chs, r in per) * cout) + window
        fits = None if t.luts_available is None else (layer["luts"] <= t.luts_available
                                                      and layer["dsps"] <= t.dsps_available)
        slowest = min((r for _, r in per if r.fmax_mhz is not None), key=lambda r: r.fmax_mhz, default=per[0][1])
        placed = [r.placed_luts for _, r in per]
        layer["placed_luts"] = None if None in placed else round(_layer_total(per, cout, lambda r: r.placed_luts))
        out[q] = {"target": target, "device": slowest.device, "dsp": dsp, **layer,
                  "fmax_mhz": slowest.fmax_mhz, "target_mhz": slowest.target_mhz,
                  "critical_path": slowest.critical_path, "top": slowest.top, "verilog": slowest.verilog,
                  "netlist": slowest.netlist, "report": slowest.report,
                  "extrapolated": k < cout, "sample": k, "input_window_ffs": window,
                  "fits": fits, "luts_available": t.luts_available, "dsps_available": t.dsps_available,
                  "channels": [{"channel": chs[0] if len(chs) == 1 else "all", "top": r.top, "verilog": r.verilog,
                                "luts": r.luts, "carry": r.carry, "placed_luts": r.placed_luts, "ffs": r.ffs,
                                "dsps": r.dsps,
                                "fmax_mhz": r.fmax_mhz, "cached": r.cached} for chs, r in per],
                  "yosys_version": slowest.yosys_version, "yosys_script": slowest.yosys_script,
                  "nextpnr_version": slowest.nextpnr_version, "nextpnr_command": slowest.nextpnr_command,
                  "seconds": sum(r.seconds for _, r in per), "cached": all(r.cached for _, r in per),
                  # the largest of the runs, per tool (each channel's design was mapped alone)
                  "peak_mb": {tool: max(r.peak_mb[tool] for _, r in per) for tool in ("yosys", "nextpnr")
                              if all(tool in r.peak_mb for _, r in per)}}
    return out


def network_rows(nets: dict, lanes: int | dict, out_dir: Path, jobs: int = 2, yosys: str | None = None,
                 cache_dir="build/synth-cache", engine: str = "dense") -> list[dict]:
    """The whole network top of each quantizer's artifact (``nets``: quantizer →
    :class:`~quantrtl.model.numbers.artifact.QuantizedNetwork`) at ``lanes`` per engine (or a plan per layer),
    the design that co-simulation runs (without its capture harness), synthesized whole,
    and each layer's engine synthesized apart for the per-layer split; ``engine``: the
    engine style (``hw/styles.py``), whose suffix the top's name carries.

    The rate is the network's dense MACs per image over its cycles per image (the
    schedule's; co-simulation confirms them).  The split's sum differs from the whole by
    what flattening optimizes across engine boundaries; both are measured."""
    from quantrtl.hw.network import NetworkTop
    from quantrtl.hw.styles import style_of

    out_dir = Path(out_dir)
    designs = []
    st = style_of(False if engine == "dense" else engine)
    for q, net in nets.items():
        top = f"{net.name}_{q}_{lanes_tag(lanes)}_network{st.suffix}"
        whole = NetworkTop(net, lanes=lanes, sparse=False if st.name == "dense" else st.name)
        parts = whole.engines  # each engine is also emitted (elaborated) on its own
        files = [(write_verilog(whole, top, out_dir), top)]
        files += [(write_verilog(e, f"{top}_{name}", out_dir), f"{top}_{name}") for name, e in parts.items()]
        designs.append((q, net, whole, parts, files))
    results = iter(run_all([j for d in designs for j in d[4]], jobs, yosys, cache_dir))
    rows = []
    for q, net, whole, parts, files in designs:
        full = next(results)
        macs = sum(l.macs for l in net.layers)
        cycles = whole.expected_cycles
        split = []
        for (name, eng), (v, top) in zip(parts.items(), files[1:]):
            r = next(results)
            layer = net.layer(name)
            split.append({"layer": name, "op": layer.op, "lanes": getattr(eng, "lanes", None) if layer.has_weights
                          else None, "gates_total": r.gates_total, "flipflops": r.flipflops,
                          "memory_bits": r.memory_bits, "cycles": eng.expected_cycles, "dense_macs": layer.macs,
                          "top": top, "verilog": str(v)})
        rows.append({"quantizer": q, "style": "network", "engine": st.name, "lanes": lanes if isinstance(lanes, int) else lanes_text(lanes),
                     "gates_total": full.gates_total,
                     "logic_depth": full.logic_depth,
                     "gates_by_type": full.gates_by_type, "flipflops": full.flipflops,
                     "memory_bits": full.memory_bits, "transistors": full.transistors,
                     "cycles_per_image": cycles, "dense_macs_per_image": macs, "macs_per_cycle": macs / cycles,
                     "gates_per_mac_per_cycle": full.gates_total / (macs / cycles),
                     "split_gates_total": sum(s["gates_total"] for s in split), "layers": split,
                     "top": files[0][1], "verilog": str(files[0][0]), "provenance": "measured",
                     "yosys_version": full.yosys_version, "yosys_script": full.yosys_script,
                     "yosys_peak_mb": full.peak_mb})
    return rows
