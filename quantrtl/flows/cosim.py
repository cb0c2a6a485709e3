"""The cosim flow: inferences in RTL (cocotb on Icarus or Verilator) against golden.

Many images run through one simulator build and one simulator process; a fault can be
injected into the generated design (``hw/faults.py``) to see that the comparison
catches it."""
from __future__ import annotations

import time
from functools import partial
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from quantrtl.flows.common import DIGITS, HardwareOptions, ModelSource, lanes_tag, load_data, \
    check_engine, check_sparse, parse_lanes, resolve_quantizer
from quantrtl.flows.quantize import network_for
from quantrtl.util.atomic import atomic_write
from quantrtl.util.errors import OptionError

__all__ = ["CosimOptions", "CosimResult", "resolve_image", "resolve_images", "parse_images", "cosim_flow", "deadlock_report"]

#: The most images one ``--images`` list may name (more: use ``all`` or a range).
MAX_IMAGE_ITEMS = 10_000
#: Images streamed back to back per simulator batch (latency and initiation interval).
DEFAULT_STREAM = 3


@dataclass(frozen=True)
class CosimOptions(HardwareOptions):
    """A co-simulation (:class:`HardwareOptions`, and the images, the simulator, waves,
    the build folder, an injected fault), validated on construction.

    ``image`` is one test index or an image file; ``images`` (overrides it) is ``all``,
    a range ``0-99`` or a list ``3,5,8`` (ranges allowed) of test indices.  ``inject`` is
    a fault kind of ``hw/faults.py`` (weight, bias, requant, control) at ``at``
    (``layer:index``; default the first layer with weights, index 0)."""

    image: str | int = 0
    images: str | None = None
    simulator: str = "icarus"
    waves: bool = False
    build_root: str | Path = "build/cosim"
    inject: str | None = None
    at: str | None = None
    stream: int = DEFAULT_STREAM

    def __post_init__(self):
        from quantrtl.hw.faults import FAULT_KINDS
        from quantrtl.hw.harness import MAX_BATCH
        from quantrtl.sim.runner import check_simulator

        super().__post_init__()
        if self.images is not None:
            parse_images(self.images, None)
        if self.inject is not None and self.inject not in FAULT_KINDS:
            raise OptionError("inject", f"{self.inject!r} is not a fault kind; choose one of {', '.join(FAULT_KINDS)}")
        if not isinstance(self.stream, int) or not 1 <= self.stream <= MAX_BATCH:
            raise OptionError("stream", f"{self.stream!r}: give 1..{MAX_BATCH} images streamed back to back")
        if self.at is not None and self.inject is None:
            raise OptionError(("at", "inject"), "{0} places a fault: give {1} too")
        check_simulator(self.simulator)


@dataclass(frozen=True)
class CosimResult:
    """A co-simulation of one or more images.  ``label``, ``predicted``,
    ``golden_predicted`` and ``cycles`` are the first image's; ``per_image`` has every
    image's; ``layers`` sums mismatches over the images."""

    quantizer: str
    image: str
    label: int | None
    predicted: int | None
    golden_predicted: int
    bit_exact: bool
    cycles: int
    expected_cycles: int
    simulator: str
    lanes: int
    wall_seconds: float
    build_seconds: float
    run_seconds: float
    layers: list
    first_mismatch: dict | None
    timed_out: bool
    verilog: str
    waves: str | None
    images: int = 1
    bit_exact_images: int = 1
    rtl_accuracy: float | None = None
    golden_accuracy: float | None = None
    rtl_golden_agree: int = 1
    fault: str | None = None
    per_image: list | None = None
    throughput: dict | None = None
    simulated_cycles: int = 0  # every batch's cycles, first input to last output
    netlist: str = ""  # how the simulated Verilog was made from the design (sim/netlist.py)
    #: a streaming design's join FIFOs: per (join, input) the depth the cycle model computed,
    #: the measured high-water mark and skew-stall cycles (over every batch), and the model's
    fifos: list | None = None
    #: when a batch stopped (no last output within the timeout): the nodes that did not
    #: finish and any join input stuck at a full FIFO
    deadlock: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.run_seconds if self.run_seconds > 0 else float("inf")


def deadlock_report(qnet, raws: list[dict], fifos: list | None, timeout: int) -> str:
    """Where a batch that did not finish stopped: each layer that sent less than its
    images' outputs (in network order; the first is where the stream stopped), and every
    join input that waited at a full FIFO while its join starved."""
    from math import prod

    n = sum(1 for r in raws if r["batch_position"] == 0 and not r["done"]) or 1
    first = next(r for r in raws if not r["done"])
    batch = [r for r in raws if r["batch_cycles"] == first["batch_cycles"]]
    short = []
    for layer in qnet.layers:
        got = sum(r["captures"][layer.name]["count"] for r in batch if layer.name in r["captures"])
        want = prod(layer.out_shape) * len(batch)
        if got < want:
            short.append(f"{layer.name} sent {got} of {want} values")
    full = [f"{f['join']} input {f['input']} ({f['stall_cycles']} cycles at its full FIFO of {f['depth']} while "
            "the join starved)" for f in fifos or [] if f["stall_cycles"]]
    return (f"deadlock: no last output within {timeout} cycles per image (4x the design's latency + 1000) in "
            f"{n} batch(es); " + "; ".join(short or ["every layer sent its values"])
            + ("; waiting at a full FIFO: " + "; ".join(full) if full else ""))


def _index(text: str) -> bool:
    """An image index: ASCII digits only (``str.isdigit`` also takes "²")."""
    return text.isascii() and text.isdigit()


def parse_images(text: str, count: int | None) -> list[int]:
    """``all``, ``A-B`` (inclusive) or a comma list of indices and ranges → sorted unique
    indices, each in ``0..count-1`` (``count`` None: the syntax only)."""
    text = str(text).strip()
    if count is not None and text == "all":
        return list(range(count))
    if text == "all":
        return []
    chosen: set[int] = set()
    items = text.split(",")
    if len(items) > MAX_IMAGE_ITEMS:
        raise OptionError("images", f"names {len(items)} items, at most {MAX_IMAGE_ITEMS}; use a range A-B or all")
    for item in items:
        lo, sep, hi = item.strip().partition("-")
        if not _index(lo) or (sep and not _index(hi)):
            raise OptionError("images", f"{item.strip()!r} is not an index or a range A-B; "
                                        "give all, A-B or a comma list such as 3,5,8")
        a, b = int(lo), int(hi) if sep else int(lo)
        if a > b:
            raise OptionError("images", f"range {a}-{b} is empty")
        if count is not None and b >= count:
            raise OptionError("images", f"{b} is outside the {count} images 0..{count - 1}")
        chosen.update(range(a, b + 1) if count is not None else (a, b))
    return sorted(chosen)


def resolve_images(images: str, source: ModelSource = DIGITS):
    """``--images`` → (integer inputs (N, ...), labels or None, descriptions)."""
    _, test, _, labelled = load_data(source)
    what = "test" if labelled else "calib"
    try:
        chosen = parse_images(images, len(test.x))
    except OptionError as e:
        if labelled:
            raise
        raise OptionError(("images", "calib"), f"{e.text} of {{1}} {source.calib}") from None
    labels = [int(test.y[i]) for i in chosen] if labelled else None
    return test.x[chosen], labels, [f"{what}[{i}]" for i in chosen]


def resolve_image(image: str | int, source: ModelSource = DIGITS):
    """``N`` (index into the digits test split, or into ``--calib``) or a digits-style image
    file → (integer input, label or None, description)."""
    from quantrtl.model.digits import load_image

    text = str(image)
    if _index(text):
        _, test, _, labelled = load_data(source)
        i = int(text)
        if not 0 <= i < len(test.x):
            what = "the digits test split" if labelled else f"{{1}} {source.calib}"
            raise OptionError(("image", "calib"), f"{i}: {what} has images 0..{len(test.x) - 1}")
        return test.x[i], int(test.y[i]) if labelled else None, f"test[{i}]" if labelled else f"calib[{i}]"
    if source.calib is not None:
        raise OptionError(("image", "calib"), "with {1}, {0} must be an index into the calibration data")
    return load_image(text), None, text


def _describe(descs: list[str]) -> str:
    if len(descs) == 1:
        return descs[0]
    return f"{descs[0]}..{descs[-1]} ({len(descs)} images)"


def cosim_flow(quantizer: str, image: str | int = 0, simulator: str = "icarus", lanes: int = 8,
               waves: bool = False, artifact_path: str | Path | None = None, finetune: int | None = None,
               build_root: str | Path = "build/cosim", source: ModelSource = DIGITS, sparse: bool | str = False,
               index_bits: int = 4, images: str | None = None, inject: str | None = None,
               at: str | None = None, stream: int = DEFAULT_STREAM) -> CosimResult:
    """Inferences in RTL (cocotb on Icarus or Verilator) checked against the golden model
    (:class:`CosimOptions` says what each argument means)."""
    CosimOptions(quantizer=quantizer, image=image, images=images, simulator=simulator, lanes=lanes, waves=waves,
                 artifact=artifact_path, finetune=finetune, build_root=build_root, inject=inject, at=at,
                 source=source, sparse=sparse, index_bits=index_bits, stream=stream)
    fmt = resolve_quantizer(quantizer, source, artifact_path)
    lanes = parse_lanes(lanes)  # a count, or a plan per layer
    from quantrtl.hw.faults import FaultError, faulty_network, parse_fault
    from quantrtl.hw.harness import CaptureHarness
    from quantrtl.hw.network import NetworkTop
    from quantrtl.model.numbers.layout import to_stream
    from quantrtl.sim import cosim, golden
    from quantrtl.sim.netlist import simulation_netlist
    from quantrtl.sim.runner import run_cocotb

    if images is not None:
        xs, labels, descs = resolve_images(images, source)
    else:
        x, label, desc = resolve_image(image, source)
        xs, labels, descs = x[None], None if label is None else [label], [desc]
    t0 = time.perf_counter()
    qnet = network_for(fmt, artifact_path, finetune, source)
    data_fmt = load_data(source)[2]
    if qnet.input != data_fmt:  # an imported model's own input format: the same real inputs, re-quantized
        xs = qnet.input.quantize(data_fmt.dequantize(xs))
    if tuple(xs.shape[1:]) != tuple(qnet.input_shape):
        raise OptionError("image", f"{descs[0]} has shape {tuple(xs.shape[1:])}, "
                                   f"the model's input is {tuple(qnet.input_shape)}")
    gold = golden.run(qnet, xs)
    hw_net, tap_faults, fault = qnet, {}, None
    if inject is not None:
        try:
            fault = parse_fault(inject, at, qnet)
        except FaultError as e:
            raise OptionError(("at", "inject"), f"{{0}} {at or '(default)'} for {{1}} {inject}: {e}") from None
        hw_net, tap_faults = faulty_network(qnet, fault)
    harness = CaptureHarness(NetworkTop(hw_net, lanes=lanes, taps=True, sparse=sparse, index_bits=index_bits,
                                        tap_faults=tap_faults), batch=stream)
    top = f"{qnet.name}_{qnet.quantizer}_cosim"
    from quantrtl.sim.simulators import simulator as simulator_kind

    wrapper_clock = simulator_kind(simulator).wrapper_clock  # Verilator runs its own clock fastest, Icarus cocotb's
    # the simulators run the design after Yosys `proc; opt` (sim/netlist.py), cached under the build root
    text = harness.verilog(top, clock=wrapper_clock,
                           netlist=partial(simulation_netlist, cache_dir=Path(build_root) / "netlists"))
    mode, style = check_sparse(sparse), check_engine(sparse)
    variant = ((f"-{'sparse' if mode == 'row' else mode}{index_bits}" if mode else "")
               + (f"-{style}" if style != "dense" and not mode else "") + ("-fault" if fault else "")
               + ("-waves" if waves else ""))
    build_dir = Path(build_root) / f"{qnet.name}-{qnet.quantizer}-{lanes_tag(lanes)}-{simulator}{variant}-b{stream}"
    v_path = build_dir / f"{top}.v"
    if not v_path.is_file() or v_path.read_text() != text:  # unchanged Verilog keeps the simulator build
        atomic_write(v_path, text)
    # fewer images than one batch: the batch repeats them, so latency and II are measured
    order = [i % len(xs) for i in range(max(len(xs), stream))]
    job = {"inputs": [[int(v) for v in to_stream(xs[i], qnet.input_shape)] for i in order],
           "captures": harness.captures, "batch": stream, "timeout_cycles": 4 * harness.expected_cycles + 1000,
           "testbench_clock": not wrapper_clock, **harness.testbench_files()}
    run = run_cocotb(v_path, top, simulator, build_dir, job, waves=waves, ports=harness.testbench_ports)
    names = [n for n, _ in harness.captures]
    raws = run.result["images"]
    if len(raws) != len(order):
        from quantrtl.sim.runner import SimulationError
        raise SimulationError(f"{simulator} run of {top} returned {len(raws)} of {len(order)} images; "
                              f"see {run.build_dir}")
    streamed = [cosim.compare(qnet, gold, raw, lanes, names, sparse=mode is not None, index=i,
                              streaming=harness.top.streaming) for i, raw in zip(order, raws)]
    reports = streamed[:len(xs)]
    from quantrtl.hw.cyclemodel import Deadlock

    try:
        model_ii = harness.top.batch_interval(stream)
    except Deadlock:  # a design whose FIFOs were set too small by hand: the model stops too
        model_ii = None
    throughput = cosim.throughput(raws[:stream], model_ii)
    per_image, first = [], None
    for i, (d, r) in enumerate(zip(descs, reports)):
        mm = None if r.first_mismatch is None else {"image": d, **asdict(r.first_mismatch)}
        first = first or mm
        per_image.append({"image": d, "label": None if labels is None else labels[i], "predicted": r.predicted,
                          "golden_predicted": r.golden_predicted, "bit_exact": r.bit_exact, "cycles": r.cycles,
                          "batch_position": raws[i]["batch_position"], "timed_out": r.timed_out,
                          "first_mismatch": mm})
    for i, r in enumerate(streamed[len(xs):], len(xs)):  # a repeat that differs is a failure too
        if r.first_mismatch is not None and first is None:
            first = {"image": f"{descs[order[i]]} (streamed again, position {raws[i]['batch_position']})",
                     **asdict(r.first_mismatch)}
    rtl_acc = gold_acc = None
    if labels is not None:
        y = np.asarray(labels)
        rtl_acc = float(np.mean([r.predicted == t for r, t in zip(reports, y)]))
        gold_acc = float(np.mean(gold.predicted == y))
    head = reports[0]
    fifos = None
    if harness.fifos:
        batches = [r["fifos"] for r in raws if r["batch_position"] == 0]
        try:
            model = harness.top.schedule(stream).skew_stalls
        except Deadlock:
            model = {name: [None] * len(ds) for name, ds in harness.top.fifo_depths.items()}
        fifos = [{"join": name, "input": j, "depth": harness.top.fifo_depths[name][j],
                  "high_water": max(b[k]["high_water"] for b in batches),
                  "stall_cycles": sum(b[k]["stall_cycles"] for b in batches),
                  "model_stall_cycles": None if model[name][j] is None else model[name][j] * len(batches)}
                 for k, (name, j) in enumerate(harness.fifos)]
    deadlock = deadlock_report(qnet, raws, fifos, job["timeout_cycles"]) if any(not r["done"] for r in raws) else None
    return CosimResult(
        quantizer=qnet.quantizer, image=_describe(descs), label=None if labels is None else labels[0],
        predicted=head.predicted, golden_predicted=head.golden_predicted,
        bit_exact=all(r.bit_exact for r in streamed), cycles=head.cycles,
        expected_cycles=harness.expected_cycles, simulator=simulator, lanes=lanes,
        wall_seconds=time.perf_counter() - t0, build_seconds=run.build_seconds, run_seconds=run.run_seconds,
        layers=[asdict(l) for l in cosim.merge_layers(reports)], first_mismatch=first,
        timed_out=any(r.timed_out for r in streamed), verilog=str(v_path), waves=run.waves,
        images=len(reports), bit_exact_images=sum(r.bit_exact for r in reports), rtl_accuracy=rtl_acc,
        golden_accuracy=gold_acc, rtl_golden_agree=sum(r.predicted == r.golden_predicted for r in reports),
        fault=None if fault is None else str(fault), per_image=per_image, throughput=throughput,
        simulated_cycles=sum(r["batch_cycles"] for r in raws if r["batch_position"] == 0),
        netlist=text.splitlines()[0].removeprefix("// "), fifos=fifos, deadlock=deadlock)
