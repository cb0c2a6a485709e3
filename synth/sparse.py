"""Dense vs zero-skipping engines of one layer at equal throughput, over weight density.

The experiment behind ``quantrtl gates --sparse``: for each quantizer the dense engine of
the layer gets ``throughput`` lanes; for each density the pruned model's sparse engine
gets the fewest lanes (up to twice as many) whose schedule is no longer than the dense
engine's.  Both are co-simulated (the layer's cycles and bit-exactness are measured, never
taken from the formula) and synthesized with Yosys (the sparse decoder apart), with the
activation memory mapped to logic so the gather's read ports count.  The crossover is
the largest density at which the sparse engine needs fewer gates.

Training and co-simulation are the flows' business: they come in as the collaborators
``quantize`` and ``cosim`` (:class:`Collaborators`), so this module needs no torch and no
simulator of its own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from quantrtl.hw.geometry import ConvGeometry, SparseSchedule
from quantrtl.model.numbers.formats import WeightFormat
from quantrtl.synth.gates import array_rows, sparse_rows

__all__ = ["GATHER_MEMORIES", "Collaborators", "LayerRun", "sparse_comparison"]

#: The activation memory is mapped to flip-flops and read multiplexers, so the cost of its
#: read ports (the gather) counts as logic.
GATHER_MEMORIES = ("act_mem",)


@dataclass(frozen=True)
class LayerRun:
    """What a co-simulation measured for the compared layer."""

    cycles: int
    bit_exact: bool


@dataclass(frozen=True)
class Collaborators:
    """``quantize(name, density)`` → ``(network, golden accuracy)`` (density None: dense);
    ``cosim(name, network, lanes, sparse, layer)`` → :class:`LayerRun`."""

    quantize: Callable
    cosim: Callable[..., LayerRun]


def sparse_comparison(fmts: list[WeightFormat], densities: list[float], throughput: int, layer: str | None,
                      index_bits: int, jobs: int, yosys: str | None, out: Path, cache_dir, version: str,
                      run: Collaborators) -> tuple[list[dict], dict]:
    """Rows (a dense row, then a sparse row per density, per quantizer) and the crossover density per quantizer."""
    rows, crossover = [], {}
    for f in fmts:
        dense_net, _ = run.quantize(f.name, None)
        where = layer or max((l for l in dense_net.layers if l.op == "conv2d"), key=lambda l: l.macs).name
        dl = dense_net.layer(where)
        dense = run.cosim(f.name, dense_net, throughput, False, where)
        drow = asdict(array_rows({f.name: dl}, throughput, out, jobs=jobs, yosys=yosys, cache_dir=cache_dir,
                                 prefix="dense", map_memories=GATHER_MEMORIES)[0])
        dense_geometry = ConvGeometry.from_layer(dl, throughput)
        rows.append({"quantizer": f.name, "style": "dense", "density": 1.0, "lanes": throughput, "layer": where,
                     "activation_read_ports": dense_geometry.lanes_per_group,
                     "flipflops": drow["flipflops"], "gates_total": drow["gates_total"],
                     "datapath_gates": drow["datapath_gates"], "decoder_gates": 0,
                     "memory_bits": drow["memory_bits"], "measured_cycles": dense.cycles,
                     "effective_macs_per_cycle": dl.macs / dense.cycles, "bit_exact": dense.bit_exact,
                     "verilog": drow["verilog"], "top": drow["top"], "yosys_version": version,
                     "provenance": "measured"})
        cheaper = []
        for d in densities:
            net, accuracy = run.quantize(f.name, d)
            sl = net.layer(where)
            p = next((n for n in range(1, 2 * throughput + 1)
                      if SparseSchedule.for_layer(sl, n, index_bits).run_cycles <= dense_geometry.run_cycles),
                     2 * throughput)
            sparse = run.cosim(f.name, net, p, True, where)
            key = f"{f.name}_d{int(round(d * 100))}"
            srow = sparse_rows({key: sl}, {key: p}, {key: sparse.cycles}, out, index_bits=index_bits, jobs=jobs,
                               yosys=yosys, cache_dir=cache_dir, map_memories=GATHER_MEMORIES)[0]
            srow.update(quantizer=f.name, density=d, bit_exact=sparse.bit_exact, golden_accuracy=accuracy,
                        layer=where, activation_read_ports=p)
            rows.append(srow)
            if srow["gates_total"] < drow["gates_total"]:
                cheaper.append(d)
        crossover[f.name] = max(cheaper) if cheaper else None
    return rows, crossover
