"""A peer's hard-wired layer beside ours: da4ml (distributed arithmetic for machine
learning: canonical-signed-digit constants and greedy common-subexpression elimination
over the constant matrix) generates Verilog for the same integer matrix and input width
as :class:`~quantrtl.hw.unrolled.UnrolledLayer`, and both designs are checked against
the integer product ``W @ x`` in Icarus on the same inputs, extremes included.

da4ml is an optional development dependency (``pip install da4ml``): nothing else in
quantrtl imports it.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantrtl.synth.yosys import SynthesisError, run_icarus
from quantrtl.util.atomic import atomic_write, write_file

__all__ = ["FlatPorts", "da4ml_design", "da4ml_version", "check_product", "ours_ports"]


@dataclass(frozen=True)
class FlatPorts:
    """How a combinational design packs ``x`` and ``y`` into one flat input and one flat
    output vector: per element its (lowest bit, width), element 0 lowest; an output
    element is signed or not and worth ``2**shift`` per unit."""

    input_port: str
    output_port: str
    inputs: tuple[tuple[int, int], ...]
    outputs: tuple[tuple[int, int, bool, int], ...]  # (lowest bit, width, signed, shift)

    @property
    def input_bits(self) -> int:
        return max((lo + w for lo, w in self.inputs), default=0)

    @property
    def output_bits(self) -> int:
        return max((lo + w for lo, w, _, _ in self.outputs), default=0)

    def pack(self, x) -> int:
        v = 0
        for (lo, w), xi in zip(self.inputs, x):
            if w:
                v |= (int(xi) & ((1 << w) - 1)) << lo
        return v

    def unpack(self, v: int) -> list[int]:
        out = []
        for lo, w, signed, shift in self.outputs:
            e = (v >> lo) & ((1 << w) - 1) if w else 0
            if signed and w and e >> (w - 1):
                e -= 1 << w
            out.append(e << shift)
        return out


def ours_ports(layer) -> FlatPorts:
    """The ports of a combinational :class:`~quantrtl.hw.unrolled.UnrolledLayer`."""
    cout, n = layer.weights.shape
    a, w = layer.act_bits, layer.out_width
    return FlatPorts("x", "y", tuple((i * a, a) for i in range(n)), tuple((j * w, w, True, 0) for j in range(cout)))


def da4ml_version() -> str:
    try:
        from importlib.metadata import version

        return f"da4ml {version('da4ml')}"
    except Exception:  # noqa: BLE001 (not installed: named by da4ml_design)
        return "da4ml (not installed)"


def da4ml_design(matrix, in_bits: int, top: str, out_dir: Path) -> tuple[Path, FlatPorts, dict]:
    """da4ml's combinational Verilog of ``y = matrix @ x`` (``x`` unsigned ``in_bits``-bit
    integers), through its tracing front end (``x @ W`` on quantized inputs, then
    ``comb_trace``: its CMVM solver with its default options); with its helper modules in
    one file.  (Verilog, ports, {"adders", "adder_depth", "ops", "version"})."""
    try:
        import da4ml
        from da4ml.codegen.rtl.verilog.comb import comb_logic_gen
        from da4ml.trace import FixedVariableArrayInput, comb_trace
        from da4ml.types import minimal_kif
    except ImportError:
        raise SynthesisError("da4ml is not installed: pip install da4ml (an optional development dependency)") from None
    w = np.asarray(matrix, dtype=np.int64)
    inp = FixedVariableArrayInput((w.shape[1],))
    xq = inp.quantize(0, int(in_bits), 0)  # unsigned in_bits-bit integers
    comb = comb_trace(xq, xq @ w.T.astype(np.float64))
    widths = [sum(minimal_kif(q)) for q in comb.inp_qint]
    offsets = np.cumsum([0, *widths])
    ins = tuple((int(offsets[i]), int(widths[i])) for i in range(len(widths)))
    outs, lo = [], 0
    for q in comb.out_qint:
        k, i, f = minimal_kif(q)
        width = int(k + i + f)
        outs.append((lo, width, bool(k), int(-f)))
        lo += width
    source = Path(da4ml.__file__).parent / "codegen" / "rtl" / "verilog" / "source"
    helpers = [p.read_text() for p in sorted(source.glob("*.v")) if p.name != "lookup_table.v"]  # (no tables here)
    path = Path(out_dir) / f"{top}.v"
    atomic_write(path, comb_logic_gen(comb, top) + "\n" + "\n".join(helpers))
    depth: dict[int, int] = {}
    for k, op in enumerate(comb.ops):  # adder levels: opcode 0/1 are add/subtract, -1 an input copy
        ins_ = [op.id0, op.id1] if op.opcode in (0, 1) else [op.id0] if op.id0 >= 0 and op.opcode != -1 else []
        depth[k] = max((depth[i] for i in ins_ if i >= 0), default=0) + (op.opcode in (0, 1))
    adders = sum(1 for op in comb.ops if op.opcode in (0, 1))
    negs = sum(1 for j, idx in enumerate(comb.out_idxs) if idx >= 0 and comb.out_negs[j])
    stats = {"adders": adders + negs, "adder_depth": max((depth[idx] + bool(comb.out_negs[j])
                                                         for j, idx in enumerate(comb.out_idxs) if idx >= 0), default=0),
             "ops": len(comb.ops), "version": da4ml_version()}
    return path, FlatPorts("model_inp", "model_out", ins, tuple(outs)), stats


def check_product(verilog: Path, top: str, ports: FlatPorts, matrix, in_bits: int, vectors: int = 64,
                  seed: int = 0) -> dict:
    """Simulate the combinational ``top`` in Icarus on ``vectors`` inputs (all zero, all
    at the maximum, one-hot maxima, the rest random) and compare every output with the
    integer product ``matrix @ x``: {"vectors", "bit_exact", "first_mismatch"} (output,
    vector, expected, got)."""
    w = np.asarray(matrix, dtype=object)
    cout, n = w.shape
    amax = (1 << in_bits) - 1
    rng = np.random.default_rng(seed)
    xs = [np.zeros(n, dtype=np.int64), np.full(n, amax, dtype=np.int64)]
    xs += [np.eye(n, dtype=np.int64)[i] * amax for i in range(min(n, max(0, vectors // 4)))]
    while len(xs) < vectors:
        xs.append(rng.integers(0, amax + 1, size=n))
    hexw = max(1, (ports.input_bits + 3) // 4)
    tb = f"""`timescale 1ns/1ps
module tb;
  reg [{max(ports.input_bits, 1) - 1}:0] x;
  wire [{max(ports.output_bits, 1) - 1}:0] y;
  reg [{max(ports.input_bits, 1) - 1}:0] mem [0:{len(xs) - 1}];
  integer i, f;
  {top} dut(.{ports.input_port}(x), .{ports.output_port}(y));
  initial begin
    $readmemh("in.hex", mem);
    f = $fopen("out.hex", "w");
    for (i = 0; i < {len(xs)}; i = i + 1) begin
      x = mem[i];
      #1 $fdisplay(f, "%h", y);
    end
    $fclose(f);
    $finish;
  end
endmodule
"""
    work = Path(tempfile.mkdtemp(prefix=f".check-{top}-", dir=Path(verilog).parent))  # kept if Icarus fails
    write_file(work / "tb.v", tb)
    write_file(work / "in.hex", "\n".join(f"{ports.pack(x):0{hexw}x}" for x in xs) + "\n")
    run_icarus(work, ["tb.v", str(Path(verilog).resolve())], f"the product check of {top}")
    lines = (work / "out.hex").read_text().split()
    shutil.rmtree(work, ignore_errors=True)
    first = None
    for v, (x, line) in enumerate(zip(xs, lines)):
        if "x" in line.lower() or "z" in line.lower():
            first = {"vector": v, "output": None, "expected": None, "got": line}
            break
        got = ports.unpack(int(line, 16))
        want = [int(e) for e in w.dot(x.astype(object))]
        bad = next((j for j in range(cout) if got[j] != want[j]), None)
        if bad is not None:
            first = {"vector": v, "output": bad, "expected": want[bad], "got": got[bad]}
            break
    if first is None and len(lines) != len(xs):
        first = {"vector": len(lines), "output": None, "expected": None, "got": "no output"}
    return {"vectors": len(xs), "bit_exact": first is None, "first_mismatch": first}
