"""Gate-comparison outputs: CSV rows and a labelled bar chart."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from quantrtl.util.atomic import atomic_write

CSV_COLUMNS = ["quantizer", "style", "density", "layer", "lanes", "throughput", "macs_per_cycle", "gates_total",
               "datapath_gates", "control_gates", "flipflops", "memory_bits", "transistors", "gates_per_mac_per_cycle",
               "ratio_to_cheapest", "logic_depth", "extrapolated", "sample", "provenance", "bit_exact", "cycles", "top",
               "verilog",
               "yosys_version"]
#: With an FPGA target (``gates --target``): the row's ``fpga`` entries, as ``fpga_<name>`` columns.
FPGA_COLUMNS = ["target", "device", "dsp", "luts", "carry", "ffs", "dsps", "brams", "lutram", "fmax_mhz",
                "macs_per_second", "luts_per_gmacs", "nextpnr_version"]


def write_csv(rows: list[dict], path: str | Path) -> Path:
    fpga = any("fpga" in r for r in rows)
    columns = CSV_COLUMNS + ([f"fpga_{c}" for c in FPGA_COLUMNS] if fpga else [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, **{f"fpga_{c}": r["fpga"].get(c) for c in FPGA_COLUMNS}} if "fpga" in r else r)
    return atomic_write(path, buf.getvalue())


def write_plot(rows: list[dict], path: str | Path, title: str) -> Path:
    """Bar chart of total gates per quantizer (datapath stacked under control when known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["quantizer"] for r in rows]
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2.5, 4.2))
    if all(r.get("datapath_gates") is not None for r in rows):
        dp = [r["datapath_gates"] for r in rows]
        ctl = [r["control_gates"] for r in rows]
        ax.bar(names, dp, label="datapath (PEs + adder trees + accumulators)", color="#4C72B0")
        ax.bar(names, ctl, bottom=dp, label="control, requantization, memories' logic", color="#DD8452")
        ax.legend(fontsize=8, loc="upper right")
    else:
        ax.bar(names, [r["gates_total"] for r in rows], color="#4C72B0")
    top = max(r["gates_total"] for r in rows)
    for i, r in enumerate(rows):
        ax.text(i, r["gates_total"] + top * 0.01, f"{r['gates_total']:,}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("two-input gates + MUX (Yosys)")
    ax.set_xlabel("quantizer")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, top * 1.15)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def write_sweep_plot(rows: list[dict], path: str | Path) -> Path:
    """Gates against lanes, one line per (quantizer, density, layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    series: dict[tuple, list] = {}
    for r in rows:
        series.setdefault((r["quantizer"], r["density"], r["layer"]), []).append((r["lanes"], r["gates_total"]))
    for (q, d, layer), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p for p, _ in pts], [g for _, g in pts], marker="o", label=f"{q}, density {d:g}, {layer}")
    ax.set_xlabel("lanes (dense MACs per cycle)")
    ax.set_ylabel("two-input gates + MUX (Yosys)")
    ax.set_title("quantrtl sweep: layer engine gates", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(path, buf.getvalue())
