"""Flows that wire the stages together: model → artifact → golden (→ later hw, sim, synth).

Each flow is a plain function returning a frozen result dataclass; the CLI only
parses arguments and formats these results.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from quantrtl.model.numbers import artifact
from quantrtl.util.atomic import atomic_write
from quantrtl.model.numbers.families import parse_format
from quantrtl.util.provenance import package_versions

#: Fine-tuning epochs used when the user does not say (``--finetune 0`` is pure PTQ).
DEFAULT_FINETUNE = 10
#: The quantizers ``make demo`` compares.
DEMO_QUANTIZERS = ("fixed8", "shift4", "ternary", "binary")


def tool_versions() -> dict[str, str]:
    return package_versions("quantrtl", "numpy", "torch", python=True)


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str
    test_accuracy: float
    digest: str
    shipped_digest: str | None
    reproduces_shipped: bool
    seconds: float
    config: dict


def train_flow(out: str | Path, epochs: int | None = None, seed: int | None = None) -> TrainResult:
    """Train the digits CNN and write ``out`` (+ ``.json``); compare with the shipped checkpoint."""
    from dataclasses import replace

    from quantrtl.model.training import net

    cfg = net.TRAIN_DEFAULTS
    cfg = replace(cfg, **{k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None})
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {cfg.epochs}")
    t0 = time.perf_counter()
    model, acc = net.train(cfg)
    digest = net.state_digest(model)
    shipped = None
    meta = net.CHECKPOINT.with_suffix(".json")
    if meta.is_file():
        shipped = json.loads(meta.read_text()).get("digest")
    info = {"test_accuracy": acc, "digest": digest, "config": asdict(cfg), "versions": tool_versions(),
            "split": "sklearn digits, train_test_split(test_size=0.2, stratify=y, random_state=0)"}
    net.save_checkpoint(model, out, info)
    return TrainResult(checkpoint=str(out), test_accuracy=acc, digest=digest, shipped_digest=shipped,
                       reproduces_shipped=digest == shipped, seconds=time.perf_counter() - t0, config=asdict(cfg))


@dataclass(frozen=True)
class QuantizeResult:
    quantizer: str
    finetune: int
    float_accuracy: float | None
    quant_accuracy: float | None
    golden_accuracy: float | None
    golden_agreement: float
    weight_bits: int
    storage_bits: dict
    float_bits: int
    compression_ratio: float  # fp32 / every stored bit after Huffman coding (model/size.py)
    weight_compression_ratio: float
    artifact: str
    test_images: int
    raw_compression_ratio: float = 0.0  # fp32 / uncoded storage
    coded_bits: dict = field(default_factory=dict)
    training: str = ""
    density: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    seconds: float = 0.0
    versions: dict = field(default_factory=dict)


@dataclass
class _Quantized:
    """An in-memory quantized network and what was measured on it (nothing written yet)."""

    qnet: "artifact.QuantizedNetwork"
    float_accuracy: float | None
    quant_accuracy: float | None
    golden_accuracy: float | None
    golden_agreement: float
    test_images: int
    seconds: float


@dataclass(frozen=True)
class ModelSource:
    """Which float model and data: the shipped digits CNN (default) or a user model."""

    model: str | None = None  # path/to/file.py:factory
    weights: str | None = None  # state dict for the user model
    calib: str | None = None  # .npy float inputs instead of the digits data
    checkpoint: str | None = None  # another checkpoint of the digits CNN
    density: float | str | None = None  # prune to this density or plan first (None: the method's default)
    block: int | None = None  # unified: block size (None: the format's default)

    @property
    def name(self) -> str:
        if self.model is None:
            return "digits"
        stem = Path(self.model.rpartition(":")[0]).stem
        ident = "".join(c if c.isalnum() else "_" for c in stem)
        return ident if ident[:1].isalpha() else f"m_{ident}"


DIGITS = ModelSource()


def load_data(source: ModelSource):
    """``(calibration/training split, evaluation split, input format, labelled)``."""
    from quantrtl.model.digits import INPUT_SCALE, INPUT_ZERO_POINT, load_split
    from quantrtl.model.numbers.formats import ActivationFormat

    if source.calib is None:
        train, test = load_split()
        return train, test, ActivationFormat(scale=INPUT_SCALE, zero_point=INPUT_ZERO_POINT), True
    from quantrtl.model.training.user import ArraySplit, load_calibration

    x = load_calibration(source.calib)
    fmt = ActivationFormat.from_range(float(x.min()), float(x.max()))
    split = ArraySplit(x, fmt)
    return split, split, fmt, False


def method_finetune(fmt, finetune: int | None) -> int:
    """Epochs of (re)training: the given number, else the method's default."""
    if finetune is None:
        finetune = fmt.finetune_epochs or DEFAULT_FINETUNE
    if finetune < 0:
        raise ValueError(f"--finetune must be 0 or more epochs, got {finetune}")
    return finetune


def method_format(quantizer: str, block: int | None = None):
    """The quantizer's format, with ``--block`` applied (formats with a block size only)."""
    from dataclasses import fields, replace

    from quantrtl.model.numbers.families import families

    fmt = parse_format(quantizer)  # bad names fail before any work or output
    if block is not None:
        if "block" not in {f.name for f in fields(fmt)}:
            blocky = [fam.name for fam in families() if "block" in {f.name for f in fields(fam.format)}]
            raise ValueError(f"--block sets the block size of {', '.join(map(repr, blocky))}, not of {fmt.name!r}")
        fmt = replace(fmt, block=block)  # validated by the format (1..64)
    return fmt


def _check_density(density) -> None:
    """A fraction in (0, 1] or a per-layer plan (``model.prune.parse_density``)."""
    if density is not None:
        from quantrtl.model.training.prune import parse_density

        parse_density(density)


def _train(float_model, fmt, train, finetune: int, seed: int, input_fmt, density, inq: bool):
    """The family's training procedure → (fake-quant model, description, per-layer densities)."""
    from quantrtl.model.numbers.families import family
    from quantrtl.model.training.procedures import TrainRequest
    from quantrtl.model.training.prune import resolve_density, weight_layers

    procedure = family(fmt.family).resolve("train")
    plan = resolve_density(density, weight_layers(float_model))
    done = procedure(TrainRequest(float_model=float_model, fmt=fmt, train=train, epochs=finetune, seed=seed,
                                  input_fmt=input_fmt, plan=plan, inq=inq))
    return done.model, done.description, done.plan


def quantize_network(quantizer: str, finetune: int | None = None, source: ModelSource = DIGITS,
                     seed: int = 0, density=None, inq: bool = False) -> _Quantized:
    """Quantize the model and evaluate float, fake-quant and golden (accuracy when labelled).

    ``density`` None is the method's default (pruning pipelines start pruned)."""
    fmt = method_format(quantizer, source.block)
    _check_density(density)
    finetune = method_finetune(fmt, finetune)
    density = fmt.default_density if density is None else density
    from quantrtl.model.training import net
    from quantrtl.model.training.export import export
    from quantrtl.sim import golden

    t0 = time.perf_counter()
    train, test, input_fmt, labelled = load_data(source)
    if finetune and not labelled:
        raise ValueError("fine-tuning needs labels: use the digits data (no --calib) or --finetune 0")
    if source.model is not None:
        import torch

        from quantrtl.model.training.user import load_user_model

        float_model = load_user_model(source.model, source.weights, probe=torch.tensor(train.float_inputs()[:8]))
    else:
        float_model = net.load_checkpoint(source.checkpoint)
    acc = (lambda pred: net.accuracy(pred, test.y)) if labelled else (lambda pred: None)
    float_acc = acc(net.predict(float_model, test))
    qm, training, plan = _train(float_model, fmt, train, finetune, seed, input_fmt, density, inq)
    fq_pred = net.predict(qm, test)
    meta = {"finetune_epochs": finetune, "seed": seed, "model": source.model or "digits_cnn", "density": plan,
            "training": training,
            "checkpoint": Path(source.weights or source.checkpoint or net.CHECKPOINT).name,
            "calibration": Path(source.calib).name if source.calib else "digits train split",
            "versions": tool_versions()}
    qnet = export(qm, tuple(test.x.shape[1:]), name=source.name, metadata=meta)
    g_pred = golden.run(qnet, test.x).predicted
    return _Quantized(qnet=qnet, float_accuracy=float_acc, quant_accuracy=acc(fq_pred),
                      golden_accuracy=acc(g_pred), golden_agreement=net.accuracy(g_pred, fq_pred),
                      test_images=len(test.y), seconds=time.perf_counter() - t0)


def artifact_stem(out_dir: str | Path, qnet) -> Path:
    return Path(out_dir) / f"{qnet.name}-{qnet.quantizer}"


def quantize_flow(quantizer: str, out_dir: str | Path, finetune: int | None = None,
                  checkpoint: str | Path | None = None, seed: int = 0, source: ModelSource | None = None,
                  density=None, inq: bool = False) -> QuantizeResult:
    """Quantize the digits model, export the artifact into ``out_dir`` and evaluate it.

    Accuracies are on the fixed digits test split: float model, fake-quant PyTorch
    model, and the integer golden model run on the exported artifact.
    """
    from quantrtl.model.numbers.size import coded_size

    source = source or ModelSource(checkpoint=str(checkpoint) if checkpoint else None)
    _check_density(density)
    q = quantize_network(quantizer, finetune, source, seed, density=density, inq=inq)
    qnet = q.qnet
    path = artifact.save(qnet, artifact_stem(out_dir, qnet))
    bits = qnet.storage_bits()
    coded = coded_size(qnet)
    n_w = sum(l.weight_count for l in qnet.layers)
    layers = [{"name": l.name, "op": l.op, "out_shape": list(l.out_shape), "format": l.format.name if l.format else None,
               "params": l.format.params() if l.format else None,
               "accumulator_bits": l.accumulator_bits if l.has_weights else None, "macs": l.macs,
               "density": float((l.values != 0).mean()) if l.has_weights else None,
               "coded": coded["layers"].get(l.name)}
              for l in qnet.layers]
    return QuantizeResult(
        quantizer=qnet.quantizer, finetune=qnet.metadata["finetune_epochs"], float_accuracy=q.float_accuracy,
        quant_accuracy=q.quant_accuracy, golden_accuracy=q.golden_accuracy,
        golden_agreement=q.golden_agreement, weight_bits=bits["weights"] + bits["params"], storage_bits=bits,
        float_bits=qnet.float_bits(), compression_ratio=qnet.float_bits() / coded["total"],
        raw_compression_ratio=qnet.float_bits() / bits["total"], coded_bits=coded,
        weight_compression_ratio=32 * n_w / (bits["weights"] + bits["params"]), artifact=str(path),
        test_images=q.test_images, layers=layers, seconds=q.seconds, versions=qnet.metadata["versions"],
        training=qnet.metadata["training"], density=qnet.metadata["density"],
    )


MAX_LANES = 256


def _check_stream_options(index_bits: int, source: "ModelSource") -> None:
    """Relative-index width and pruning density, checked before any work."""
    if not 1 <= index_bits <= 16:
        raise ValueError(f"--index-bits must be in 1..16, got {index_bits}")
    _check_density(source.density)


def network_for(fmt, artifact_path: str | Path | None, finetune: int, source: ModelSource = DIGITS):
    """The artifact at ``artifact_path`` (which must use ``fmt``), or the model quantized now."""
    if artifact_path is None:
        return quantize_network(fmt.name, finetune, source, density=source.density).qnet
    qnet = artifact.load(artifact_path)
    if qnet.quantizer != fmt.name:
        raise ValueError(f"{artifact_path}: artifact was quantized with {qnet.quantizer!r}, not {fmt.name!r}")
    return qnet


@dataclass(frozen=True)
class VerilogResult:
    top: str
    verilog: str
    description: str
    artifact: str
    expected_cycles: int
    memory_bits: dict
    seconds: float
    layers: list


def verilog_flow(quantizer: str, out_dir: str | Path, layer: str = "all", lanes: int = 8, pipeline: int = 0,
                 artifact_path: str | Path | None = None, finetune: int = DEFAULT_FINETUNE,
                 taps: bool = False, source: ModelSource = DIGITS, sparse: bool = False,
                 index_bits: int = 4) -> VerilogResult:
    """Verilog for one layer (or ``all``) of the quantized digits model (or of ``artifact_path``).

    Without an artifact the model is quantized first and its artifact is written next to
    the Verilog, which names it.  Every argument is checked before anything is written.
    """
    fmt = parse_format(quantizer)
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"--lanes must be in 1..{MAX_LANES}, got {lanes}")
    if pipeline not in (0, 1, 2):
        raise ValueError(f"--pipeline must be 0, 1 or 2, got {pipeline}")
    _check_stream_options(index_bits, source)
    from quantrtl.hw.verilog import build_design, emit, render

    t0 = time.perf_counter()
    qnet = network_for(fmt, artifact_path, finetune, source)
    names = [l.name for l in qnet.layers]
    if layer != "all" and layer not in names:
        raise ValueError(f"--layer {layer!r} is not a layer of the model; choose one of {names} or 'all'")
    design = build_design(qnet, layer=layer, lanes=lanes, pipeline=pipeline, taps=taps, sparse=sparse,
                          index_bits=index_bits)
    out_dir = Path(out_dir)
    made_artifact = artifact_path is None
    if made_artifact:
        artifact_path = artifact_stem(out_dir, qnet).with_suffix(".json")
    design.artifact = str(Path(artifact_path).with_suffix(".json"))
    rendered = render(design)  # all the work happens before the first file is written
    if made_artifact:
        artifact.save(qnet, artifact_stem(out_dir, qnet))
        rendered[1]["artifact"]["sha256"] = hashlib.sha256(Path(design.artifact).read_bytes()).hexdigest()
    try:
        v_path, j_path = emit(design, out_dir, rendered)
    except BaseException:
        if made_artifact:
            for suffix in (".json", ".npz"):
                artifact_stem(out_dir, qnet).with_suffix(suffix).unlink(missing_ok=True)
        raise
    return VerilogResult(top=design.top, verilog=str(v_path), description=str(j_path), artifact=design.artifact,
                         expected_cycles=design.expected_cycles, memory_bits=design.memory_bits,
                         seconds=time.perf_counter() - t0, layers=design.parameters()["layers"])


@dataclass(frozen=True)
class CosimResult:
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


def resolve_image(image: str | int, source: ModelSource = DIGITS):
    """``N`` (index into the digits test split, or into ``--calib``) or a digits-style image
    file → (integer input, label or None, description)."""
    from quantrtl.model.digits import load_image

    text = str(image)
    if text.isdigit():
        _, test, _, labelled = load_data(source)
        i = int(text)
        what = "the digits test split" if labelled else f"--calib {source.calib}"
        if not 0 <= i < len(test.x):
            raise ValueError(f"--image {i}: {what} has images 0..{len(test.x) - 1}")
        return test.x[i], int(test.y[i]) if labelled else None, f"test[{i}]" if labelled else f"calib[{i}]"
    if source.calib is not None:
        raise ValueError("with --calib, --image must be an index into the calibration data")
    return load_image(text), None, text


def cosim_flow(quantizer: str, image: str | int = 0, simulator: str = "icarus", lanes: int = 8,
               waves: bool = False, artifact_path: str | Path | None = None, finetune: int = DEFAULT_FINETUNE,
               build_root: str | Path = "build/cosim", fault: tuple[str, int] | None = None,
               source: ModelSource = DIGITS, sparse: bool = False, index_bits: int = 4) -> CosimResult:
    """One inference in RTL (cocotb on Icarus or Verilator) checked against the golden model.

    ``fault=(layer, index)`` (tests only) corrupts one weight code in the generated
    hardware, not in the golden model, to show that the comparison fails.
    """
    fmt = parse_format(quantizer)
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"--lanes must be in 1..{MAX_LANES}, got {lanes}")
    from quantrtl.hw.harness import CaptureHarness
    from quantrtl.hw.network import NetworkTop
    from quantrtl.hw.verilog import to_verilog
    from quantrtl.model.numbers.layout import to_stream
    from quantrtl.sim import cosim, golden
    from quantrtl.sim.runner import check_simulator, run_cocotb

    _check_stream_options(index_bits, source)
    check_simulator(simulator)
    x, label, desc = resolve_image(image, source)
    t0 = time.perf_counter()
    qnet = network_for(fmt, artifact_path, finetune, source)
    if tuple(x.shape) != tuple(qnet.input_shape):
        raise ValueError(f"image {desc} has shape {tuple(x.shape)}, the model's input is {tuple(qnet.input_shape)}")
    gold = golden.run(qnet, x)
    hw_net = qnet if fault is None else artifact.with_corrupted_code(qnet, *fault)
    harness = CaptureHarness(NetworkTop(hw_net, lanes=lanes, taps=True, sparse=sparse, index_bits=index_bits))
    top = f"{qnet.name}_{qnet.quantizer}_cosim"
    text = to_verilog(harness, top)
    variant = (f"-sparse{index_bits}" if sparse else "") + ("-fault" if fault else "")
    build_dir = Path(build_root) / f"{qnet.name}-{qnet.quantizer}-p{lanes}-{simulator}{variant}"
    v_path = build_dir / f"{top}.v"
    if not v_path.is_file() or v_path.read_text() != text:  # unchanged Verilog keeps the simulator build
        atomic_write(v_path, text)
    job = {"input": [int(v) for v in to_stream(x, qnet.input_shape)], "captures": harness.captures,
           "timeout_cycles": 4 * harness.expected_cycles + 1000}
    run = run_cocotb(v_path, top, simulator, build_dir, job, waves=waves)
    report = cosim.compare(qnet, gold, run.result, lanes, [n for n, _ in harness.captures], sparse=sparse)
    return CosimResult(
        quantizer=qnet.quantizer, image=desc, label=label, predicted=report.predicted,
        golden_predicted=report.golden_predicted, bit_exact=report.bit_exact, cycles=report.cycles,
        expected_cycles=harness.expected_cycles, simulator=simulator, lanes=lanes,
        wall_seconds=time.perf_counter() - t0, build_seconds=run.build_seconds, run_seconds=run.run_seconds,
        layers=[asdict(l) for l in report.layers],
        first_mismatch=None if report.first_mismatch is None else asdict(report.first_mismatch),
        timed_out=report.timed_out, verilog=str(v_path), waves=run.waves)


STYLES = ("array", "unrolled")


@dataclass(frozen=True)
class GatesResult:
    style: str
    throughput: int
    layer: str
    rows: list
    seconds: float
    yosys_version: str


def gates_flow(quantizers: list[str], style: str = "array", layer: str | None = None, bench: str | None = None,
               throughput: int = 16, sample: int = 4, jobs: int = 2, yosys: str | None = None,
               out_dir: str | Path = "build/gates", finetune: int = DEFAULT_FINETUNE,
               cache_dir: str | Path = "build/synth-cache", networks: dict | None = None,
               source: ModelSource = DIGITS) -> GatesResult:
    """Synthesize every quantizer's design at equal throughput and compare gate counts."""
    from quantrtl.synth.gates import BENCHES, array_rows, fq_conv_weights, unrolled_rows
    from quantrtl.synth.yosys import yosys_version

    fmts = [parse_format(q) for q in quantizers]
    if not fmts:
        raise ValueError("--quantizers needs at least one quantizer")
    if len({f.name for f in fmts}) != len(fmts):
        raise ValueError(f"--quantizers lists a quantizer twice: {quantizers}")
    if style not in STYLES:
        raise ValueError(f"unknown --style {style!r}; choose one of {', '.join(STYLES)}")
    if layer is not None and bench is not None:
        raise ValueError("give either --layer or --bench, not both")
    if bench is not None and bench not in BENCHES:
        raise ValueError(f"unknown --bench {bench!r}; available: {', '.join(BENCHES)}")
    if bench is not None and style == "array":
        raise ValueError("--bench layers have no trained artifact; use --style unrolled with --bench")
    if not 1 <= throughput <= MAX_LANES:
        raise ValueError(f"--throughput must be in 1..{MAX_LANES} MACs per cycle, got {throughput}")
    if sample < 1:
        raise ValueError(f"--sample must be at least 1, got {sample}")
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    version = yosys_version(yosys)  # a missing Yosys fails before any work
    t0 = time.perf_counter()
    out = Path(out_dir) / style
    if style == "unrolled" and layer is None:
        bench = bench or "fq-conv"
        w = fq_conv_weights(bench)
        weights = {f.name: f.encode(w) for f in fmts}
        rows = unrolled_rows(weights, out, sample=sample, jobs=jobs, yosys=yosys, cache_dir=cache_dir,
                             name=bench.replace("-", ""))
        where = bench
    else:
        nets = {f.name: (networks or {}).get(f.name) or quantize_network(f.name, finetune, source).qnet for f in fmts}
        first = next(iter(nets.values()))
        convs = [l for l in first.layers if l.op == "conv2d"] or [l for l in first.layers if l.has_weights]
        where = layer or max(convs, key=lambda l: l.macs).name
        names = [l.name for l in first.layers if l.has_weights]
        if where not in names:
            raise ValueError(f"--layer {where!r} is not a conv2d/linear layer of the model; choose one of {names}")
        if style == "array":
            rows = array_rows({q: n.layer(where) for q, n in nets.items()}, throughput, out, jobs=jobs, yosys=yosys,
                              cache_dir=cache_dir, prefix=first.name)
        else:
            rows = unrolled_rows({q: n.layer(where) for q, n in nets.items()}, out, sample=sample, jobs=jobs,
                                 yosys=yosys, cache_dir=cache_dir, name=f"{first.name}_{where}")
    dicts = [asdict(r) for r in rows]
    cheapest = min(r["gates_total"] for r in dicts)
    for r in dicts:
        r["ratio_to_cheapest"] = r["gates_total"] / cheapest
    return GatesResult(style=style, throughput=dicts[0]["throughput"], layer=where, rows=dicts,
                       seconds=time.perf_counter() - t0, yosys_version=version)


def sparse_gates_flow(quantizers: list[str], densities: list[float], throughput: int = 16, layer: str | None = None,
                      index_bits: int = 4, jobs: int = 2, yosys: str | None = None, out_dir: str | Path = "build/gates",
                      finetune: int = DEFAULT_FINETUNE, image: int = 0,
                      cache_dir: str | Path = "build/synth-cache") -> dict:
    """Dense vs zero-skipping engines at equal throughput, over weight density.

    The dense engine of the layer has ``throughput`` lanes.  For each density the pruned
    model's sparse engine gets the fewest lanes (up to twice as many) whose cycles do not
    exceed the dense engine's; both are co-simulated (the layer's cycles and bit-exactness are measured) and
    synthesized (the sparse decoder apart).  The crossover is the largest density at which
    the sparse engine needs fewer gates.
    """
    import tempfile

    from quantrtl.synth.yosys import yosys_version

    fmts = [parse_format(q) for q in quantizers]
    if not 1 <= throughput <= MAX_LANES:
        raise ValueError(f"--throughput must be in 1..{MAX_LANES} MACs per cycle, got {throughput}")
    for d in densities:
        if not 0.0 < d <= 1.0:
            raise ValueError(f"--densities {d} out of range (0, 1]")
    _check_stream_options(index_bits, DIGITS)
    version = yosys_version(yosys)
    t0 = time.perf_counter()
    out = Path(out_dir) / "sparse"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".sparse-work-", dir=Path(out_dir)))
    try:
        rows, crossover = _sparse_comparison(fmts, densities, throughput, layer, index_bits, jobs, yosys, out, work,
                                             finetune, image, cache_dir, version)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return {"layer": rows[0]["layer"], "throughput": throughput, "index_bits": index_bits, "rows": rows,
            "crossover": crossover, "yosys_version": version, "seconds": time.perf_counter() - t0}


#: In the dense vs sparse comparison the activation memory is mapped to flip-flops and
#: read multiplexers, so the cost of its read ports (the gather) counts as logic.
GATHER_MEMORIES = ("act_mem",)


def _sparse_comparison(fmts, densities, throughput, layer, index_bits, jobs, yosys, out, work, finetune, image,
                       cache_dir, version):
    from quantrtl.hw.geometry import ConvGeometry, SparseSchedule
    from quantrtl.synth.gates import array_rows, sparse_rows

    rows, crossover = [], {}
    for f in fmts:
        dense_net = quantize_network(f.name, finetune).qnet
        where = layer or max((l for l in dense_net.layers if l.op == "conv2d"), key=lambda l: l.macs).name
        dl = dense_net.layer(where)
        dense_art = artifact.save(dense_net, work / f"dense-{f.name}")
        dense_cos = cosim_flow(f.name, image, lanes=throughput, artifact_path=dense_art, build_root=work / "cosim")
        dcyc = next(l["cycles"] for l in dense_cos.layers if l["name"] == where)
        drow = asdict(array_rows({f.name: dl}, throughput, out, jobs=jobs, yosys=yosys, cache_dir=cache_dir,
                                 prefix="dense", map_memories=GATHER_MEMORIES)[0])
        dense_geometry = ConvGeometry.from_layer(dl, throughput)
        dense_run = dense_geometry.run_cycles
        rows.append({"quantizer": f.name, "style": "dense", "density": 1.0, "lanes": throughput, "layer": where,
                     "activation_read_ports": dense_geometry.lanes_per_group,
                     "flipflops": drow["flipflops"], "gates_total": drow["gates_total"], "datapath_gates": drow["datapath_gates"], "decoder_gates": 0,
                     "memory_bits": drow["memory_bits"], "measured_cycles": dcyc,
                     "effective_macs_per_cycle": dl.macs / dcyc, "bit_exact": dense_cos.bit_exact,
                     "verilog": drow["verilog"], "yosys_version": version})
        cheaper = []
        for d in densities:
            q = quantize_network(f.name, finetune, density=d)
            sl = q.qnet.layer(where)
            p = next((n for n in range(1, 2 * throughput + 1)
                      if SparseSchedule.for_layer(sl, n, index_bits).run_cycles <= dense_run),
                     2 * throughput)
            art = artifact.save(q.qnet, work / f"sparse-{f.name}-d{d:g}")
            cos = cosim_flow(f.name, image, lanes=p, artifact_path=art, build_root=work / "cosim", sparse=True,
                             index_bits=index_bits)
            scyc = next(l["cycles"] for l in cos.layers if l["name"] == where)
            key = f"{f.name}_d{int(round(d * 100))}"
            srow = sparse_rows({key: sl}, {key: p}, {key: scyc}, out, index_bits=index_bits, jobs=jobs, yosys=yosys,
                               cache_dir=cache_dir, map_memories=GATHER_MEMORIES)[0]
            srow.update(quantizer=f.name, density=d, bit_exact=cos.bit_exact, golden_accuracy=q.golden_accuracy,
                        layer=where, activation_read_ports=p)
            rows.append(srow)
            if srow["gates_total"] < drow["gates_total"]:
                cheaper.append(d)
        crossover[f.name] = max(cheaper) if cheaper else None
    return rows, crossover


def write_json(path: str | Path, obj) -> Path:
    """Results as JSON, written atomically."""
    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        raise TypeError(f"not JSON serializable: {type(o).__name__}")
    return atomic_write(path, json.dumps(obj, indent=2, default=default) + "\n")
