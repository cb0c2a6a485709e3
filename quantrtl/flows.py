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

from model import artifact
from model.atomic import atomic_write
from model.formats import parse_format
from model.provenance import package_versions

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

    from model import net

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
    float_accuracy: float
    quant_accuracy: float
    golden_accuracy: float
    golden_agreement: float
    weight_bits: int
    storage_bits: dict
    float_bits: int
    compression_ratio: float
    weight_compression_ratio: float
    artifact: str
    test_images: int
    layers: list = field(default_factory=list)
    seconds: float = 0.0
    versions: dict = field(default_factory=dict)


@dataclass
class _Quantized:
    """An in-memory quantized network and what was measured on it (nothing written yet)."""

    qnet: "artifact.QuantizedNetwork"
    float_accuracy: float
    quant_accuracy: float
    golden_accuracy: float
    golden_agreement: float
    test_images: int
    seconds: float


def quantize_network(quantizer: str, finetune: int = DEFAULT_FINETUNE, checkpoint: str | Path | None = None,
                     seed: int = 0) -> _Quantized:
    """Quantize the digits model and evaluate float, fake-quant and golden on the test split."""
    fmt = parse_format(quantizer)  # bad names fail before any work or output
    if finetune < 0:
        raise ValueError(f"--finetune must be 0 or more epochs, got {finetune}")
    from model import net
    from model.digits import INPUT_SHAPE, load_split
    from model.export import export
    from model.quantize import quantize_model
    from sim import golden

    t0 = time.perf_counter()
    float_model = net.load_checkpoint(checkpoint)
    train, test = load_split()
    float_acc = net.accuracy(net.predict(float_model, test), test.y)
    qm = quantize_model(float_model, fmt, train, finetune=finetune, seed=seed)
    fq_pred = net.predict(qm, test)
    meta = {"finetune_epochs": finetune, "seed": seed, "checkpoint": Path(checkpoint or net.CHECKPOINT).name,
            "model": "digits_cnn", "versions": tool_versions()}
    qnet = export(qm, INPUT_SHAPE, name="digits", metadata=meta)
    g_pred = golden.run(qnet, test.x).predicted
    return _Quantized(qnet=qnet, float_accuracy=float_acc, quant_accuracy=net.accuracy(fq_pred, test.y),
                      golden_accuracy=net.accuracy(g_pred, test.y), golden_agreement=net.accuracy(g_pred, fq_pred),
                      test_images=len(test.y), seconds=time.perf_counter() - t0)


def artifact_stem(out_dir: str | Path, qnet) -> Path:
    return Path(out_dir) / f"{qnet.name}-{qnet.quantizer}"


def quantize_flow(quantizer: str, out_dir: str | Path, finetune: int = DEFAULT_FINETUNE,
                  checkpoint: str | Path | None = None, seed: int = 0) -> QuantizeResult:
    """Quantize the digits model, export the artifact into ``out_dir`` and evaluate it.

    Accuracies are on the fixed digits test split: float model, fake-quant PyTorch
    model, and the integer golden model run on the exported artifact.
    """
    q = quantize_network(quantizer, finetune, checkpoint, seed)
    qnet = q.qnet
    path = artifact.save(qnet, artifact_stem(out_dir, qnet))
    bits = qnet.storage_bits()
    n_w = sum(l.weight_count for l in qnet.layers)
    layers = [{"name": l.name, "op": l.op, "out_shape": list(l.out_shape), "format": l.format.name if l.format else None,
               "accumulator_bits": l.accumulator_bits if l.has_weights else None, "macs": l.macs}
              for l in qnet.layers]
    return QuantizeResult(
        quantizer=qnet.quantizer, finetune=finetune, float_accuracy=q.float_accuracy,
        quant_accuracy=q.quant_accuracy, golden_accuracy=q.golden_accuracy,
        golden_agreement=q.golden_agreement, weight_bits=bits["weights"], storage_bits=bits,
        float_bits=qnet.float_bits(), compression_ratio=qnet.float_bits() / bits["total"],
        weight_compression_ratio=32 * n_w / bits["weights"], artifact=str(path), test_images=q.test_images,
        layers=layers, seconds=q.seconds, versions=qnet.metadata["versions"],
    )


MAX_LANES = 256


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
                 taps: bool = False) -> VerilogResult:
    """Verilog for one layer (or ``all``) of the quantized digits model (or of ``artifact_path``).

    Without an artifact the model is quantized first and its artifact is written next to
    the Verilog, which names it.  Every argument is checked before anything is written.
    """
    fmt = parse_format(quantizer)
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"--lanes must be in 1..{MAX_LANES}, got {lanes}")
    if pipeline not in (0, 1, 2):
        raise ValueError(f"--pipeline must be 0, 1 or 2, got {pipeline}")
    from hw.verilog import build_design, emit, render

    t0 = time.perf_counter()
    if artifact_path is not None:
        qnet = artifact.load(artifact_path)
        if qnet.quantizer != fmt.name:
            raise ValueError(f"{artifact_path}: artifact was quantized with {qnet.quantizer!r}, not {fmt.name!r}")
    else:
        qnet = quantize_network(quantizer, finetune).qnet
    names = [l.name for l in qnet.layers]
    if layer != "all" and layer not in names:
        raise ValueError(f"--layer {layer!r} is not a layer of the model; choose one of {names} or 'all'")
    design = build_design(qnet, layer=layer, lanes=lanes, pipeline=pipeline, taps=taps)
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


def write_json(path: str | Path, obj) -> Path:
    """Results as JSON, written atomically."""
    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        raise TypeError(f"not JSON serializable: {type(o).__name__}")
    return atomic_write(path, json.dumps(obj, indent=2, default=default) + "\n")
