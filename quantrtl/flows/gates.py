"""The gates flows: Yosys gate counts across quantizers at equal throughput (array and
unrolled styles), and the dense vs zero-skipping comparison (``synth/sparse.py``)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from quantrtl.flows.common import DIGITS, KEEP, ModelSource, check_sparse, check_style, \
    check_stream_options, load_data, resolve_quantizer
from quantrtl.flows.quantize import quantize_network
from quantrtl.model.numbers.families import parse_format
from quantrtl.util.errors import OptionError
from quantrtl.util.lanes import lanes_for, parse_lanes

__all__ = ["STYLES", "TARGETS", "FPGA_TARGETS", "ASIC_TARGETS", "check_target", "GatesOptions", "GatesResult", "gates_flow", "sparse_gates_flow"]

#: array: one layer's engine at T lanes; unrolled: one layer hard-wired; network: the whole
#: network top at T lanes per engine (what cosim runs), with a per-layer split.
STYLES = ("array", "unrolled", "network")


#: FPGA families (``synth/fpga.py``): mapped, and placed and routed where an open tool exists.
FPGA_TARGETS = ("ecp5", "ice40", "xilinx")
#: Standard-cell libraries (``synth/asic.py``): mapped, area from Yosys, timing from OpenSTA.
ASIC_TARGETS = ("osu018",)
#: gates: two-input gates (the technology-free measure), then the FPGA and ASIC targets.
TARGETS = ("gates", *FPGA_TARGETS, *ASIC_TARGETS)


def check_target(target: str, clock_ns: float | None = None) -> None:
    if target not in TARGETS:
        raise OptionError("target", f"unknown {{0}} {target!r}; choose one of {', '.join(TARGETS)}")
    if clock_ns is not None:
        if target not in ASIC_TARGETS:
            raise OptionError(("clock_ns", "target"), f"is the clock a cell-library {{1}} ({', '.join(ASIC_TARGETS)}) "
                                                      f"is mapped and timed at")
        if not (isinstance(clock_ns, (int, float)) and 0.1 <= clock_ns <= 1000):
            raise OptionError("clock_ns", f"must be a period in 0.1..1000 ns, got {clock_ns!r}")


@dataclass(frozen=True)
class GatesResult:
    style: str
    throughput: int | dict  # lanes asked for (array style: MACs per cycle; network: per engine, or a plan)
    layer: str
    rows: list
    seconds: float
    yosys_version: str
    #: Every design's schedule delivers the same dense MACs per cycle (the rows compare equals).
    equal_throughput: bool = True
    target: str = "gates"
    dsp: bool = True


@dataclass(frozen=True)
class GatesOptions:
    """A gate-count comparison, validated on construction (before any work)."""

    quantizers: tuple[str, ...]
    style: str = "array"
    layer: str | None = None
    bench: str | None = None
    throughput: int | str | dict = 16  # lanes: a count, or a plan per layer (quantrtl.util.lanes)
    sample: int | None = 4  # None: every channel (measured, not extrapolated)
    jobs: int = 2
    target: str = "gates"
    dsp: bool = True
    source: ModelSource = DIGITS
    clock_ns: float | None = None  # the clock an ASIC target maps for and times at (None: its default)
    engine: str = "dense"  # network style: the engine style of every engine (hw/styles.py)

    def __post_init__(self):
        from quantrtl.synth.gates import BENCHES

        fmts = [resolve_quantizer(q, self.source) for q in self.quantizers]
        if not fmts:
            raise OptionError("quantizers", "needs at least one quantizer")
        if len({f.name for f in fmts}) != len(fmts):
            raise OptionError("quantizers", f"lists a quantizer twice: {list(self.quantizers)}")
        if self.style not in STYLES:
            raise OptionError("style", f"unknown {{0}} {self.style!r}; choose one of {', '.join(STYLES)}")
        if self.layer is not None and self.bench is not None:
            raise OptionError(("layer", "bench"), "give either {0} or {1}, not both")
        if self.bench is not None and self.bench not in BENCHES:
            raise OptionError("bench", f"unknown {{0}} {self.bench!r}; available: {', '.join(BENCHES)}")
        if KEEP in self.quantizers and (self.bench is not None or (self.style == "unrolled" and self.layer is None)):
            raise OptionError(("quantizers", "bench"), "keep is an imported model's own quantization; a {1} layer "
                                                       "has none (give --layer for the unrolled style)")
        if self.bench is not None and self.style != "unrolled":
            raise OptionError(("bench", "style"), "{0} layers have no trained artifact; use {1} unrolled with {0}")
        if self.layer is not None and self.style == "network":
            raise OptionError(("layer", "style"), "{1} network synthesizes every layer; drop {0}")
        parse_lanes(self.throughput)
        if self.sample is not None and self.sample < 1:
            raise OptionError("sample", f"must be at least 1, got {self.sample}")
        if self.jobs < 1:
            raise OptionError("jobs", f"must be at least 1, got {self.jobs}")
        check_target(self.target, self.clock_ns)
        check_dsp(self.dsp, self.target)
        if check_style(self.engine) != "dense" and self.style != "network":
            raise OptionError(("engine", "style"), f"{{0}} {self.engine} is for {{1}} network (the array and "
                                                   "unrolled styles synthesize a dense engine's datapath)")


def check_dsp(dsp: bool, target: str) -> None:
    if not dsp and target not in FPGA_TARGETS:
        raise OptionError(("dsp", "target"), f"no-DSP mapping is for an FPGA {{1}} ({', '.join(FPGA_TARGETS)})")


def _fpga_columns(rows: list[dict], target: str, dsp: bool, jobs: int, yosys: str | None, cache_dir,
                  progress=None) -> None:
    """Map each row's design onto ``target`` (in parallel) and add its resources, its
    post-route Fmax and the throughput per second it gives; ``progress(text)`` hears of
    each design as it finishes."""
    from quantrtl.synth.fpga import fpga_map_all

    results = fpga_map_all([(r["verilog"], r["top"], r.get("quantizer") or r.get("design")) for r in rows],
                           target, dsp, jobs, yosys, cache_dir, progress)
    for r, f in zip(rows, results):
        r["fpga"] = _per_second({**asdict(f), "placed_luts": f.placed_luts}, r["macs_per_cycle"])


def _asic_columns(rows: list[dict], library: str, clock_ns: float | None, jobs: int, yosys: str | None, cache_dir,
                  progress=None, stimuli: list | None = None) -> None:
    """Map each row's design onto the cell ``library`` (in parallel) and add its areas,
    its timing and the dense MACs per second and per mm\u00b2 its Fmax gives; with
    ``stimuli`` (one per row), its energy on them too (``asic["energy"]``)."""
    from quantrtl.synth.asic import CLOCK_NS, asic_map_all

    results = asic_map_all([(r["verilog"], r["top"], r.get("quantizer") or r.get("design")) for r in rows],
                           library, clock_ns or CLOCK_NS, jobs, yosys, cache_dir, progress)
    for r, a in zip(rows, results):
        r["asic"] = _asic_per_second(asdict(a), r["macs_per_cycle"])
    if stimuli is not None:
        _energy_columns(rows, stimuli, jobs, cache_dir)


def _energy_columns(rows: list[dict], stimuli: list, jobs: int, cache_dir) -> None:
    """Energy of each row's mapped netlist on its stimulus ((inputs, expected, dense MACs)
    of one test image, ``synth/power.py``), ``jobs`` simulations at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from quantrtl.synth.power import stream_energy

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(stream_energy, r["asic"], *stim, cache_dir) for r, stim in zip(rows, stimuli)]
        for r, f in zip(rows, futures):
            r["asic"]["energy"] = f.result()


def _check_image(image, source: ModelSource) -> None:
    n = len(load_data(source)[1].x)
    if isinstance(image, bool) or not isinstance(image, int) or not 0 <= image < n:
        raise OptionError("image", f"{image!r}: the energy's test image must be one of 0..{n - 1}")


def _stimuli(nets: dict, where: str | None, image: int, source: ModelSource) -> list:
    """Per quantizer: (stream inputs, golden outputs, dense MACs) of test image ``image`` for
    layer ``where`` (its engine) or, ``where`` None, the whole network."""
    from quantrtl.model.numbers.layout import to_stream
    from quantrtl.sim import golden
    from quantrtl.sim.stream import layer_io

    x = load_data(source)[1].x[image]  # (gates_flow checked ``image`` before any work)
    out = []
    for net in nets.values():
        gold = golden.run(net, x[None])
        if where is None:
            last = net.layers[-1]
            out.append((to_stream(x, tuple(net.input_shape)), to_stream(gold.outputs[last.name][0], last.out_shape),
                        sum(l.macs for l in net.layers)))
        else:
            io = layer_io(net, gold, where, x)
            out.append((io.inputs, io.expected, net.layer(where).macs))
    return out


def _asic_per_second(asic: dict, macs_per_cycle: float) -> dict:
    """An ASIC result with the MACs per second at its Fmax, and per mm\u00b2 of area (with and
    without the memories; the library's area unit is um\u00b2)."""
    per_second = _macs_per_second(macs_per_cycle, asic["fmax_mhz"])
    return {**asic, "macs_per_second": per_second,
            "macs_per_second_per_mm2": per_second / (asic["area"] / 1e6) if per_second else None,
            "macs_per_second_per_mm2_without_memories":
                per_second / (asic["area_without_memories"] / 1e6) if per_second else None}


def _unrolled_asic(dicts: list[dict], library: str, clock_ns: float | None, jobs: int, yosys: str | None,
                   cache_dir, progress=None) -> None:
    """ASIC columns of unrolled rows, the gate rows' own designs mapped: the whole layer
    as it is, or the sampled channels one by one, the layer's areas their mean times Cout
    (extrapolated like the gates), the Fmax the slowest channel's."""
    import statistics

    from quantrtl.synth.asic import CLOCK_NS, asic_map_all

    jobs_list = [(v, t, f"{r['quantizer']} {t}") for r in dicts for v, t in zip(r["spread"]["verilog"],
                                                                               r["spread"]["tops"])]
    results = iter(asic_map_all(jobs_list, library, clock_ns or CLOCK_NS, jobs, yosys, cache_dir, progress))
    for r in dicts:
        per = [next(results) for _ in r["spread"]["tops"]]
        cout = 1 if r["extra"].get("whole_layer") else r["extra"]["cout"]  # (one design: every channel)
        slowest = min(per, key=lambda a: a.fmax_mhz or float("inf"))
        layer = asdict(slowest)
        for kind in ("area", "area_sequential", "area_combinational", "area_without_memories", "area_memories",
                     "nand2_eq", "nand2_eq_without_memories", "cells", "buffers_added"):
            layer[kind] = statistics.fmean(getattr(a, kind) for a in per) * cout
        layer.update(extrapolated=r["extrapolated"], sample=r["sample"], cells_by_type={},
                     channels=[{"top": a.top, "area": a.area, "fmax_mhz": a.fmax_mhz, "cached": a.cached} for a in per])
        r["asic"] = _asic_per_second(layer, r["macs_per_cycle"])


def _macs_per_second(macs_per_cycle: float, fmax_mhz: float | None) -> float | None:
    """Dense MACs per second at a measured Fmax (None without one)."""
    return macs_per_cycle * fmax_mhz * 1e6 if fmax_mhz else None


def _per_second(fpga: dict, macs_per_cycle: float) -> dict:
    """An FPGA result with the dense MACs per second its Fmax gives and resources per GMAC/s."""
    per_second = _macs_per_second(macs_per_cycle, fpga["fmax_mhz"])
    return {**fpga, "macs_per_second": per_second,
            "luts_per_gmacs": fpga["luts"] / (per_second / 1e9) if per_second else None,
            "dsps_per_gmacs": fpga["dsps"] / (per_second / 1e9) if per_second else None}


def gates_flow(quantizers: list[str], style: str = "array", layer: str | None = None, bench: str | None = None,
               throughput: int = 16, sample: int | None = 4, jobs: int = 2, yosys: str | None = None,
               out_dir: str | Path = "build/gates", finetune: int | None = None,
               cache_dir: str | Path = "build/synth-cache", networks: dict | None = None,
               source: ModelSource = DIGITS, target: str = "gates", dsp: bool = True,
               progress=None, clock_ns: float | None = None, image: int = 0,
               energy: bool = True, engine: str = "dense") -> GatesResult:
    """Synthesize every quantizer's design at equal throughput and compare gate counts
    (``throughput``: the lanes, a count or a plan per layer as ``verilog`` and ``cosim`` take
    them; the array style takes the plan's lanes of its layer, the network style gives every
    engine its plan's; the unrolled style has no lanes: every MAC of a window each cycle;
    ``progress(text)``: one call per design an FPGA ``target`` has mapped; ``engine``: the
    network style's engine style, dense or stream, or a zero-skipping one)."""
    from quantrtl.synth.gates import (array_rows, check_unrolled_fpga, fq_conv_weights, network_rows, unrolled_fpga,
                                      unrolled_rows)
    from quantrtl.synth.yosys import yosys_version

    GatesOptions(tuple(quantizers), style, layer, bench, throughput, sample, jobs, target, dsp, source, clock_ns, engine)
    throughput = parse_lanes(throughput)
    if target in ASIC_TARGETS:
        from quantrtl.synth.asic import check_tools

        check_tools(target)  # a missing library or analyzer: exit 3 before any work
        if energy:
            _check_image(image, source)
    fmts = [resolve_quantizer(q, source) for q in quantizers]
    version = yosys_version(yosys)  # a missing Yosys fails before any work
    t0 = time.perf_counter()
    out = Path(out_dir) / style
    stimuli = None
    if style == "unrolled" and layer is None:
        bench = bench or "fq-conv"
        w = fq_conv_weights(bench)
        weights = {f.name: f.encode(w) for f in fmts}
        if target != "gates":
            check_unrolled_fpga(weights, target)
        name = bench.replace("-", "")
        rows = unrolled_rows(weights, out, sample=sample, jobs=jobs, yosys=yosys, cache_dir=cache_dir, name=name)
        where = bench
    else:
        nets = {f.name: (networks or {}).get(f.name) or quantize_network(
            f.name, None if f.name == KEEP else finetune, source, density=source.density).qnet
            for f in fmts}  # keep trains nothing
        asic_energy = energy and target in ASIC_TARGETS  # its stimulus is made (and checked) before any work
        if style == "network":
            stimuli = _stimuli(nets, None, image, source) if asic_energy else None
            rows = network_rows(nets, throughput, out, jobs=jobs, yosys=yosys, cache_dir=cache_dir,
                                engine=check_style(engine))
            for r in rows:
                r.update(throughput=throughput, layer="all", datapath_gates=None, control_gates=None,
                         extrapolated=False, sample=None)
            where = "all"
        else:
            first = next(iter(nets.values()))
            convs = [l for l in first.layers if l.op == "conv2d"] or [l for l in first.layers if l.has_weights]
            where = layer or max(convs, key=lambda l: l.macs).name
            names = [l.name for l in first.layers if l.has_weights]
            if where not in names:
                raise OptionError("layer", f"{where!r} is not a conv2d/linear layer of the model; choose one of {names}")
            if style == "array":
                stimuli = _stimuli(nets, where, image, source) if asic_energy else None
                throughput = lanes_for(throughput, where)
                rows = array_rows({q: n.layer(where) for q, n in nets.items()}, throughput, out, jobs=jobs,
                                  yosys=yosys, cache_dir=cache_dir, prefix=first.name)
            else:
                weights = {q: n.layer(where) for q, n in nets.items()}
                if target != "gates":
                    check_unrolled_fpga(weights, target)
                name = f"{first.name}_{where}"
                rows = unrolled_rows(weights, out, sample=sample, jobs=jobs, yosys=yosys, cache_dir=cache_dir,
                                     name=name)
    dicts = [r if isinstance(r, dict) else asdict(r) for r in rows]
    cheapest = min(r["gates_total"] for r in dicts)
    for r in dicts:
        r["ratio_to_cheapest"] = r["gates_total"] / cheapest
    rates = {round(r["macs_per_cycle"], 9) for r in dicts}
    if target in ASIC_TARGETS and style == "unrolled":
        _unrolled_asic(dicts, target, clock_ns, jobs, yosys, cache_dir, progress)
    elif target in ASIC_TARGETS:  # the stream designs also get their energy on one test image
        _asic_columns(dicts, target, clock_ns, jobs, yosys, cache_dir, progress, stimuli)
    elif target != "gates" and style == "unrolled":  # sampled channels, registered, extrapolated like the gates
        fpga = unrolled_fpga(weights, out, target, dsp, sample, jobs, yosys, cache_dir, name, progress=progress)
        for r in dicts:
            r["fpga"] = _per_second(fpga[r["quantizer"]], r["macs_per_cycle"])
    elif target != "gates":
        _fpga_columns(dicts, target, dsp, jobs, yosys, cache_dir, progress)
    return GatesResult(style=style, throughput=dicts[0]["throughput"], layer=where, rows=dicts,
                       equal_throughput=len(rates) == 1, target=target, dsp=dsp,
                       seconds=time.perf_counter() - t0, yosys_version=version)


def sparse_gates_flow(quantizers: list[str], densities: list[float], throughput: int = 16, layer: str | None = None,
                      index_bits: int = 4, jobs: int = 2, yosys: str | None = None, out_dir: str | Path = "build/gates",
                      finetune: int | None = None, image: int = 0,
                      cache_dir: str | Path = "build/synth-cache", target: str = "gates", dsp: bool = True,
                      progress=None, engines: tuple[str, ...] | None = None, clock_ns: float | None = None) -> dict:
    """Dense vs zero-skipping engines (``engines``: row, broadcast; default both) at equal
    measured throughput, over weight density (:mod:`quantrtl.synth.sparse`): the models are
    quantized here and each design's layer simulated alone on the golden input of test
    image ``image`` (first input to last output handshake, bit-exact checked).
    ``progress(total)``, with an FPGA ``target``, returns the callback that hears of each
    of the ``total`` designs as it is mapped (the number is known once the searches end)."""
    from quantrtl.sim import golden
    from quantrtl.sim.stream import layer_io, measure_layer
    from quantrtl.synth.sparse import ENGINES, Collaborators, LayerRun, sparse_comparison
    from quantrtl.synth.yosys import yosys_version

    fmts = [parse_format(q) for q in quantizers]
    throughput = parse_lanes(throughput)
    if isinstance(throughput, dict):  # one layer's comparison: the plan's lanes of that layer
        if layer is None:
            raise OptionError(("lanes", "layer"), "a plan per layer needs {1}: the comparison is of one layer")
        throughput = lanes_for(throughput, layer)
    for d in densities:
        if not 0.0 < d <= 1.0:
            raise OptionError("densities", f"{d} out of range (0, 1]")
    engines = tuple(ENGINES if engines is None else engines)
    if not engines or any(check_sparse(e) is None for e in engines):
        raise OptionError("sparse", f"names no zero-skipping engine; choose from {', '.join(ENGINES)}")
    check_stream_options(index_bits, DIGITS)
    if jobs < 1:
        raise OptionError("jobs", f"must be at least 1, got {jobs}")
    check_target(target, clock_ns)
    check_dsp(dsp, target)
    if target in ASIC_TARGETS:
        from quantrtl.synth.asic import check_tools

        check_tools(target)
    version = yosys_version(yosys)
    t0 = time.perf_counter()
    x = load_data(DIGITS)[1].x[image]
    goldens = {}

    def quantize(name, density):
        q = quantize_network(name, finetune) if density is None else quantize_network(name, finetune, density=density)
        return q.qnet, q.golden_accuracy

    def io(net, where):
        if id(net) not in goldens:  # the network is kept with its golden run (its id stays valid)
            goldens[id(net)] = (net, golden.run(net, x[None]))
        return layer_io(net, goldens[id(net)][1], where, x)

    def measure(engine, net, where):
        cycles, exact = measure_layer(engine, io(net, where))
        return LayerRun(cycles=cycles, bit_exact=exact)

    rows, crossover = sparse_comparison(fmts, densities, throughput, layer, index_bits, jobs, yosys,
                                        Path(out_dir) / "sparse", cache_dir, version,
                                        Collaborators(quantize=quantize, measure=measure,
                                                      layer_input=lambda net, where: io(net, where).inputs,
                                                      source_shape=lambda net, where: io(net, where).source_shape),
                                        engines)
    if target in ASIC_TARGETS:  # per second: the MACs per cycle simulation measured x OpenSTA's Fmax
        _asic_columns(rows, target, clock_ns, jobs, yosys, cache_dir, progress(len(rows)) if progress else None)
    elif target != "gates":  # per second: the MACs per cycle simulation measured x the post-route Fmax
        _fpga_columns(rows, target, dsp, jobs, yosys, cache_dir, progress(len(rows)) if progress else None)
    return {"layer": rows[0]["layer"], "throughput": throughput, "index_bits": index_bits, "rows": rows,
            "crossover": crossover, "engines": list(engines), "yosys_version": version,
            "seconds": time.perf_counter() - t0, "target": target, "image": image,
            "measurement": "the layer's engine simulated alone (Amaranth simulator) on the golden input of the "
                           "test image, one value per cycle, output always ready: first input to last output"}
