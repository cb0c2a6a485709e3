"""``quantrtl sweep``: quantizers × lanes × densities (× layers), synthesis and cosim in parallel.

The models are quantized first, in this process.  Then every synthesis job (one layer
engine at one lane count) and every cosim job (the whole network at one lane count) runs
on an executor: a local process pool (``--jobs``) or a Dask cluster
(``--scheduler tcp://host:port``, through ``distributed.Client.get_executor()``).  Jobs
receive the artifact's bytes and return plain numbers, so workers need quantrtl and the
tools installed but no shared file system; rows hold no timings or worker paths, so the
JSON is the same whichever executor ran it.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path

from quantrtl.util.errors import OptionError
from quantrtl.util.lanes import check_plan_layers, lanes_for, lanes_text, parse_lane_axis
from quantrtl.util.atomic import write_file

__all__ = ["sweep", "synth_job", "cosim_job"]

#: The digits CNN's conv/linear layers (the artifact names them after the model's
#: children): what ``layers`` is checked against before any work.
DIGITS_WEIGHT_LAYERS = ("conv1", "conv2", "fc")


def _unpack(files: dict[str, bytes], where: Path):
    from quantrtl.model.numbers import artifact

    for name, data in files.items():
        write_file(where / name, data)
    return artifact.load(where / next(n for n in files if n.endswith(".json")))


def synth_job(files: dict[str, bytes], layer: str, lanes: int | dict, target: str = "gates", sparse: str | None = None,
              image: int = 0, model: str = "digits") -> dict:
    """Synthesize one layer engine (and its MAC array) of the artifact at ``lanes`` (a count,
    or a plan: its lanes for ``layer``); with an
    FPGA ``target``, also map, place and route the engine (``synth/fpga.py``).  An engine
    of another style (``sparse``: row, broadcast, stream) is synthesized whole, and its MACs
    per cycle come from simulating it alone on the golden input of test image ``image``."""
    lanes = lanes_for(lanes, layer)
    with tempfile.TemporaryDirectory(prefix="quantrtl-synth-") as d:
        net = _unpack(files, Path(d))
        if sparse:
            out, verilog, top = _sparse_synth(net, layer, lanes, sparse, image, model, Path(d) / "v")
        else:
            from quantrtl.synth.gates import array_rows

            row = array_rows({net.quantizer: net.layer(layer)}, lanes, Path(d) / "v", jobs=1, cache_dir=None)[0]
            verilog, top = row.verilog, row.top
            out = {"gates_total": row.gates_total, "datapath_gates": row.datapath_gates,
                   "control_gates": row.control_gates, "flipflops": row.flipflops, "memory_bits": row.memory_bits,
                   "gates_per_mac_per_cycle": row.gates_per_mac_per_cycle, "macs_per_cycle": row.macs_per_cycle,
                   "logic_depth": row.logic_depth, "top": row.top, "yosys_version": row.yosys_version}
        out["verilog_sha256"] = hashlib.sha256(Path(verilog).read_bytes()).hexdigest()
        if target != "gates":
            from quantrtl.synth.fpga import fpga_map
            f = fpga_map(verilog, top, target, cache_dir=None)
            per_second = out["macs_per_cycle"] * f.fmax_mhz * 1e6 if f.fmax_mhz else None
            out["fpga"] = {"target": target, "device": f.device, "luts": f.luts, "carry": f.carry, "ffs": f.ffs,
                           "dsps": f.dsps, "brams": f.brams, "lutram": f.lutram, "fmax_mhz": f.fmax_mhz,
                           "macs_per_second": per_second, "nextpnr_version": f.nextpnr_version}
        return out


def _sparse_synth(net, layer: str, lanes: int, sparse: str, image: int, model: str, where: Path):
    """An engine of ``layer`` in a style other than dense (zero skipping, stream): simulated
    alone (its cycles), then synthesized."""
    from quantrtl.flows.common import ModelSource, load_data
    from quantrtl.hw.engines import make_engine
    from quantrtl.sim import golden
    from quantrtl.sim.stream import layer_io, measure_layer
    from quantrtl.synth.gates import run_all, write_verilog

    x = load_data(ModelSource(model=model))[1].x[image]
    io = layer_io(net, golden.run(net, x[None]), layer, x)
    engine = make_engine(net.layer(layer), lanes=lanes, sparse=sparse, source_shape=io.source_shape)
    cycles, exact = measure_layer(engine, io)
    top = f"{layer}_{net.quantizer}_{sparse}_p{lanes}"
    where.mkdir(parents=True, exist_ok=True)
    verilog = write_verilog(engine, top, where)
    r = run_all([(verilog, top)], 1, None, None)[0]
    rate = net.layer(layer).macs / cycles
    return ({"gates_total": r.gates_total, "datapath_gates": None, "control_gates": None, "flipflops": r.flipflops,
             "memory_bits": r.memory_bits, "gates_per_mac_per_cycle": r.gates_total / rate, "macs_per_cycle": rate,
             "logic_depth": r.logic_depth, "top": top, "yosys_version": r.yosys_version, "engine": sparse,
             "layer_cycles": cycles, "layer_bit_exact": exact}, verilog, top)


def cosim_job(files: dict[str, bytes], lanes: int | dict, image: int, sparse: str | None = None) -> dict:
    """Co-simulate the whole network of the artifact at ``lanes`` (a count or a plan) on one test image (Icarus),
    on zero-skipping engines when ``sparse`` names them."""
    from quantrtl.flows.cosim import cosim_flow

    with tempfile.TemporaryDirectory(prefix="quantrtl-cosim-") as d:
        net = _unpack(files, Path(d))
        path = next(Path(d).glob("*.json"))
        r = cosim_flow(net.quantizer, image, artifact_path=path, lanes=lanes, build_root=Path(d) / "build",
                       sparse=sparse or False)
        return {"bit_exact": r.bit_exact, "cycles": r.cycles, "expected_cycles": r.expected_cycles,
                "predicted": r.predicted, "golden_predicted": r.golden_predicted, "first_mismatch": r.first_mismatch}


@contextmanager
def _executor(jobs: int, scheduler: str | None) -> Executor:
    if scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise OptionError("scheduler", "needs dask.distributed (pip install 'dask[distributed]')") from None
        try:
            client = Client(scheduler, timeout=15)
        except Exception as e:
            raise OptionError("scheduler", f"{scheduler}: cannot connect ({e})") from None
        try:
            yield client.get_executor()
        finally:
            client.close()
    else:
        from quantrtl.util.pools import process_pool

        with process_pool(jobs) as ex:
            yield ex


def shipped_weight_layers(model: str) -> list[str]:
    """The conv2d/linear layers of a shipped model, from its traced graph (no training)."""
    from quantrtl.model.training.graph import trace
    from quantrtl.model.training.net import SHIPPED

    return [n.name for n in trace(SHIPPED[model].factory()).nodes if n.kind in ("conv2d", "linear")]


def sweep(quantizers: list[str], lanes: list, densities: list[float], layers: list[str] | None = None,
          jobs: int = 2, scheduler: str | None = None, finetune: int = 10, image: int = 0, cosim: bool = True,
          out_dir: str | Path = "build/sweep", target: str = "gates", model: str = "digits",
          sparse: str | None = None) -> dict:
    """Every (quantizer, density, lanes, layer) of a shipped ``model`` synthesized, and each
    network co-simulated, as jobs on a local pool or a Dask cluster; ``sparse`` (row,
    broadcast, stream) puts engines of that style in both.  ``lanes``: the lane settings swept, each
    a count or a plan per layer (:func:`quantrtl.util.lanes.parse_lane_axis`; a layer's
    engine is synthesized at its plan's lanes, the network co-simulated at the plan)."""
    from quantrtl.model.digits import TEST_IMAGES
    from quantrtl.model.numbers import artifact
    from quantrtl.model.numbers.families import parse_format

    from quantrtl.flows.common import SHIPPED_MODELS, ModelSource, check_engine
    from quantrtl.flows.quantize import quantize_network

    fmts = [parse_format(q) for q in quantizers]
    sparse = None if check_engine(sparse) == "dense" else check_engine(sparse)
    if not fmts or not lanes or not densities:
        raise OptionError(("quantizers", "lanes", "densities"), "{0}, {1} and {2} each need at least one value")
    lanes = parse_lane_axis(lanes)
    for d in densities:
        if not 0.0 < d <= 1.0:
            raise OptionError("densities", f"{d} out of range (0, 1]")
    if jobs < 1:
        raise OptionError("jobs", f"must be at least 1, got {jobs}")
    from quantrtl.flows.gates import ASIC_TARGETS, check_target

    check_target(target)
    if target in ASIC_TARGETS:
        raise OptionError("target", f"{{0}} {target}: sweep maps onto gates or an FPGA (ecp5, ice40, xilinx); "
                                    f"cell-library rows come from gates --target {target}")
    if finetune is not None and finetune < 0:
        raise OptionError("finetune", f"must be 0 or more epochs, got {finetune}")
    if cosim and not 0 <= image < TEST_IMAGES:
        raise OptionError("image", f"{image}: the digits test split has images 0..{TEST_IMAGES - 1}")
    if model not in SHIPPED_MODELS:
        raise OptionError("model", f"{model!r} is not a shipped model; choose one of {', '.join(SHIPPED_MODELS)}")
    source = ModelSource(model=model)
    # known without training: every argument is checked before any work
    weighted = list(DIGITS_WEIGHT_LAYERS) if model == "digits" else shipped_weight_layers(model)
    for name in layers or ():
        if name not in weighted:
            raise OptionError("layers", f"{name!r} is not a conv2d/linear layer; choose from {weighted}")
    for p in lanes:  # a plan names conv2d/linear layers (only they have lanes) and gives each its lanes
        check_plan_layers(p, weighted, weighted)
    t0 = time.perf_counter()
    out = Path(out_dir)
    with _executor(jobs, scheduler) as ex:  # connect first: a bad scheduler fails before any work
        quantized = {(f.name, d): quantize_network(f.name, finetune, source, density=d) for f in fmts for d in densities}
        first = next(iter(quantized.values())).qnet
        layers = layers or [max((l for l in first.layers if l.op == "conv2d"), key=lambda l: l.macs).name]
        nets = {}
        for (q, d), qr in quantized.items():  # arguments all checked: now write the artifacts
            stem = out / "artifacts" / f"{source.name}-{q}-d{d:g}"
            json_path = artifact.save(qr.qnet, stem)
            files = {p.name: p.read_bytes() for p in (json_path, json_path.with_suffix(".npz"))}
            nets[(q, d)] = (qr, files)
        keys = [(q, d, i, layer) for (q, d) in nets for i in range(len(lanes)) for layer in layers]
        ckeys = [(q, d, i) for (q, d) in nets for i in range(len(lanes))] if cosim else []
        sfut = [ex.submit(synth_job, nets[(q, d)][1], layer, lanes[i], target, sparse, image, model)
                for q, d, i, layer in keys]
        cfut = [ex.submit(cosim_job, nets[(q, d)][1], lanes[i], image, sparse) for q, d, i in ckeys]
        synth = [f.result() for f in sfut]
        cos = {k: f.result() for k, f in zip(ckeys, cfut)}
    rows = []
    for (q, d, i, layer), s in zip(keys, synth):
        qr = nets[(q, d)][0]
        row = {"quantizer": q, "density": d, "lanes": lanes_for(lanes[i], layer), "layer": layer,
               "lane_setting": lanes_text(lanes[i]), "golden_accuracy": qr.golden_accuracy,
               "golden_agreement": qr.golden_agreement, **s}
        if cosim:
            c = cos[(q, d, i)]
            row.update(bit_exact=c["bit_exact"], cycles=c["cycles"], expected_cycles=c["expected_cycles"],
                       first_mismatch=c["first_mismatch"])
        rows.append(row)
    return {"rows": rows, "model": model, "image": image if cosim or sparse else None, "finetune": finetune,
            "target": target, "sparse": sparse,
            "executor": "dask" if scheduler else "local", "seconds": time.perf_counter() - t0}
