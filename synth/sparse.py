"""Dense vs zero-skipping engines of one layer at equal measured throughput, over weight density.

The experiment behind ``quantrtl gates --sparse``, for each quantizer:

1. **The throughput to meet**: the dense engine with ``throughput`` lanes and its default
   lane grouping; its cycles for one map (first input to last output, the layer's golden
   input streamed one value per cycle, output always ready) are *measured* by simulating
   the engine (the ``measure`` collaborator), never taken from a formula.
2. **The best dense design at that throughput**: every lane grouping of the same lanes
   (``groups = lanes``: each lane its own output channel, one activation read broadcast
   to all of them) is measured; those within :data:`DENSE_SLACK` of the target (they
   differ only in their last drain) are synthesized, and the cheapest is the dense side
   of the comparison.
3. **Each zero-skipping engine** (``row``: ``hw/sparse.py``; ``broadcast``:
   ``hw/broadcast.py``) of the model pruned to each density: the lane search starts from
   the fewest lanes whose cycle formula meets the target (the broadcast formula, a lower
   bound, is evaluated on the layer's actual input), measures, and adds lanes until the
   measurement meets the target, up to twice the dense lanes (the broadcast engine: up to
   the output channels).  A design that never meets it is reported as such and left out
   of the crossover.
4. Every design is synthesized by Yosys twice: with the activation memory mapped to
   flip-flops and read multiplexers (its read ports, the gather, count as logic:
   ``gates``), and with every memory written at run time mapped so (the broadcast
   engine's accumulator memories too: ``gates_all_logic``); ROMs stay memories.  The
   crossover per engine is the largest density at which it needs fewer gates than the
   best dense design, among designs that meet the throughput.

Training, simulation and the layer's input are the flows' business: they come in as
collaborators (:class:`Collaborators`), so this module needs no torch and no simulator.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quantrtl.hw.broadcast import BroadcastConvEngine
from quantrtl.hw.geometry import BroadcastSchedule, ConvGeometry, SparseSchedule
from quantrtl.hw.engines import make_engine
from quantrtl.synth.gates import run_all, write_verilog

__all__ = ["DENSE_SLACK", "ENGINES", "GATHER_MEMORIES", "RUNTIME_MEMORIES", "Collaborators", "LayerRun", "dense_groupings",
           "sparse_comparison"]

#: A dense grouping other than the default is admitted within this factor of the default's
#: cycles: they differ only in the drain of the last group (``groups`` outputs instead of
#: fewer), a handful of cycles; zero-skipping designs get no slack.
DENSE_SLACK = 1.01
#: The zero-skipping engines compared with the dense one.
ENGINES = ("row", "broadcast")
#: ``gates``: the activation memory is mapped to flip-flops and read multiplexers, so the
#: cost of its read ports (the gather) counts as logic.
GATHER_MEMORIES = ("act_mem",)
#: ``gates_all_logic``: every memory written at run time is mapped so (activations and
#: the broadcast engine's accumulators).
RUNTIME_MEMORIES = ("act_mem", "acc_mem")


@dataclass(frozen=True)
class LayerRun:
    """What a simulation of the layer's engine measured: cycles for one map, bit-exactness."""

    cycles: int
    bit_exact: bool


@dataclass(frozen=True)
class Collaborators:
    """``quantize(name, density)`` → ``(network, golden accuracy)`` (density None: dense);
    ``measure(engine, network, layer)`` → :class:`LayerRun`; ``layer_input(network, layer)``
    → the layer's input map in stream order (what the broadcast estimate walks);
    ``source_shape(network, layer)`` → the (C, H, W) a linear layer reads (else None)."""

    quantize: Callable
    measure: Callable[..., LayerRun]
    layer_input: Callable
    source_shape: Callable


def dense_groupings(lanes: int, block: int = 1) -> list[int]:
    """Lane groupings of a dense engine with ``lanes`` lanes: every divisor whose groups
    hold whole blocks (unified weights)."""
    return [g for g in range(1, lanes + 1) if lanes % g == 0 and (lanes // g) % block == 0]


def _engine(kind: str, layer, lanes: int, index_bits: int, source_shape, groups: int | None = None):
    """The ``kind`` (dense, row, broadcast) engine of ``layer`` (``hw/engines.make_engine``)."""
    return make_engine(layer, lanes=lanes, groups=groups, source_shape=source_shape,
                       sparse=False if kind == "dense" else kind, index_bits=index_bits)


def _estimate(kind: str, layer, lanes: int, index_bits: int, source_shape, run: "Collaborators", net, where
              ) -> int:
    """Cycles of a design by its formula, without building it (the broadcast engine's lower
    bound is evaluated on the layer's actual input)."""
    if kind == "broadcast":
        s = BroadcastSchedule.for_layer(layer, lanes, index_bits, source_shape)
        return s.cycles(run.layer_input(net, where))
    return SparseSchedule.for_layer(layer, lanes, index_bits, source_shape).cycles(0)


def _search(kind, layer, net, where, target, max_lanes, index_bits, source_shape, run):
    """Fewest lanes whose measured cycles meet ``target``: (engine, run, lanes tried) or
    (last engine, its run, tried) with ``run.cycles > target`` when none does."""
    if kind == "broadcast":
        max_lanes = min(max_lanes, layer.out_shape[0])
    p = next((n for n in range(1, max_lanes + 1)
              if _estimate(kind, layer, n, index_bits, source_shape, run, net, where) <= target), max_lanes)
    tried = []
    while True:
        eng = _engine(kind, layer, p, index_bits, source_shape)
        r = run.measure(eng, net, where)
        tried.append((p, r.cycles))
        if r.cycles <= target or p >= max_lanes:
            return eng, r, tried
        p += 1


def _synthesize(designs: list[tuple[str, object]], out: Path, jobs, yosys, cache_dir) -> list[tuple]:
    """Each (top, engine) under both memory mappings: [(gates result, all-logic result,
    Verilog)].  Engines whose only run-time memory is the activation memory (dense, row)
    give the same netlist both ways: they are synthesized once."""
    files = [(write_verilog(eng, top, out), top) for top, eng in designs]
    more = [i for i, (_, eng) in enumerate(designs) if isinstance(eng, BroadcastConvEngine)]
    gather = run_all(files, jobs, yosys, cache_dir, GATHER_MEMORIES)
    runtime = dict(zip(more, run_all([files[i] for i in more], jobs, yosys, cache_dir, RUNTIME_MEMORIES)))
    return [(g, runtime.get(i, g), f[0]) for i, (g, f) in enumerate(zip(gather, files))]


def _row(quantizer, style, density, eng, r: LayerRun, target: int, layer, synth, version, limit: float | None = None,
         **extra) -> dict:
    gates, logic, verilog = synth
    return {"quantizer": quantizer, "style": style, "density": density, "layer": layer.name, "lanes": eng.lanes,
            "groups": eng.geometry.groups, "activation_read_ports": eng.activation_read_ports,
            "gates_total": gates.gates_total, "gates_all_logic": logic.gates_total, "flipflops": gates.flipflops,
            "memory_bits": gates.memory_bits, "measured_cycles": r.cycles, "target_cycles": target,
            "meets_throughput": r.cycles <= (target if limit is None else limit),
            "effective_macs_per_cycle": layer.macs / r.cycles, "macs_per_cycle": layer.macs / r.cycles, "bit_exact": r.bit_exact, "verilog": str(verilog),
            "top": gates.top, "yosys_version": version,
            "yosys_script": gates.yosys_script, "provenance": "measured", **extra}


def sparse_comparison(fmts: list, densities: list[float], throughput: int, layer: str | None, index_bits: int,
                      jobs: int, yosys: str | None, out: Path, cache_dir, version: str, run: Collaborators,
                      engines: tuple[str, ...] = ENGINES) -> tuple[list[dict], dict]:
    """Rows (the dense groupings that meet the throughput, then per engine a row per
    density) per quantizer, and the crossover density per quantizer and engine."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, crossover = [], {}
    for f in fmts:
        dense_net, _ = run.quantize(f.name, None)
        where = layer or max((l for l in dense_net.layers if l.op == "conv2d"), key=lambda l: l.macs).name
        dl = dense_net.layer(where)
        shape = run.source_shape(dense_net, where)
        default = _engine("dense", dl, throughput, index_bits, shape)
        base = run.measure(default, dense_net, where)
        target = base.cycles
        dense = [(f"dense_{where}_{f.name}_p{throughput}_g{default.geometry.groups}", default, base)]
        for g in dense_groupings(throughput, dl.format.lane_block):
            if g == default.geometry.groups or \
                    ConvGeometry.from_layer(dl, throughput, g).cycles(0) > DENSE_SLACK * target:
                continue
            eng = _engine("dense", dl, throughput, index_bits, shape, g)
            r = run.measure(eng, dense_net, where)
            if r.cycles <= DENSE_SLACK * target:
                dense.append((f"dense_{where}_{f.name}_p{throughput}_g{g}", eng, r))
        synth = _synthesize([(top, eng) for top, eng, _ in dense], out, jobs, yosys, cache_dir)
        dense_rows = [_row(f.name, "dense", 1.0, eng, r, target, dl, s, version, limit=DENSE_SLACK * target,
                           default=eng is default)
                      for (top, eng, r), s in zip(dense, synth)]
        best = min(dense_rows, key=lambda x: x["gates_total"])
        for x in dense_rows:
            x["best_dense"] = x is best
        rows += dense_rows
        sparse = []
        for kind in engines:
            for d in densities:
                net, accuracy = run.quantize(f.name, d)
                sl = net.layer(where)
                eng, r, tried = _search(kind, sl, net, where, target, 2 * throughput, index_bits, shape, run)
                top = f"{kind}_{where}_{f.name}_d{int(round(d * 100))}_p{tried[-1][0]}"
                sparse.append((kind, d, accuracy, top, eng, r, tried, sl))
        synth = _synthesize([(s[3], s[4]) for s in sparse], out, jobs, yosys, cache_dir)
        for (kind, d, accuracy, top, eng, r, tried, sl), s in zip(sparse, synth):
            rows.append(_row(f.name, kind, d, eng, r, target, sl, s, version, golden_accuracy=accuracy,
                             lanes_tried=[{"lanes": p, "cycles": c} for p, c in tried],
                             nonzero_weights=eng.nonzero_weights))
        for kind in engines:
            cheaper = [x["density"] for x in rows if x["quantizer"] == f.name and x["style"] == kind
                       and x["meets_throughput"] and x["gates_total"] < best["gates_total"]]
            crossover.setdefault(f.name, {})[kind] = max(cheaper) if cheaper else None
    return rows, crossover
