"""The quantize flow: a float model → a trained, exported and evaluated integer artifact."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from quantrtl.flows.common import DEFAULT_FINETUNE, DIGITS, KEEP, ModelSource, artifact_stem, check_density, \
    check_input_shape, load_data, resolve_quantizer, tool_versions
from quantrtl.model.numbers import artifact
from quantrtl.model.numbers.families import families, family, parse_format
from quantrtl.util.errors import OptionError
from quantrtl.util.atomic import write_file

__all__ = ["QuantizeOptions", "QuantizeResult", "QuantizedRun", "method_format", "method_finetune", "compare_with_qonnx",
           "quantize_network", "quantize_flow", "network_for", "QUANTIZE_CACHE"]


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
    compression_ratio: float  # fp32 / every stored bit after Huffman coding (model/numbers/size.py)
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
    cached: bool = False  # taken from the quantize cache (measurements of the run that made it)


def method_finetune(fmt, finetune: int | None) -> int:
    """Epochs of (re)training: the given number, else the method's default."""
    if finetune is None:
        finetune = fmt.finetune_epochs or DEFAULT_FINETUNE
    if finetune < 0:
        raise OptionError("finetune", f"must be 0 or more epochs, got {finetune}")
    return finetune


def method_format(quantizer: str, block: int | None = None):
    """The quantizer's format, with ``block`` applied (formats with a block size only)."""
    fmt = parse_format(quantizer)  # bad names fail before any work or output
    if block is not None:
        if "block" not in {f.name for f in fields(fmt)}:
            blocky = [fam.name for fam in families() if "block" in {f.name for f in fields(fam.format)}]
            raise OptionError("block", f"sets the block size of {', '.join(map(repr, blocky))}, not of {fmt.name!r}")
        fmt = replace(fmt, block=block)  # validated by the format (1..64)
    return fmt


@dataclass(frozen=True)
class QuantizeOptions:
    """What to quantize and how, validated on construction (nothing runs before).

    ``finetune`` None is the method's default number of epochs; ``density`` None the
    method's default pruning plan (a fraction or ``conv1=0.6,*=0.3``); ``inq`` trains a
    power-of-two format incrementally.
    """

    quantizer: str
    finetune: int | None = None
    seed: int = 0
    source: ModelSource = DIGITS
    density: float | str | None = None
    inq: bool = False

    def __post_init__(self):
        check_density(self.density)
        if self.keep:
            resolve_quantizer(self.quantizer, self.source)
            for name, value in (("finetune", self.finetune or None), ("density", self.density), ("inq", self.inq or None)):
                if value is not None:
                    raise OptionError(name, "keeps an imported model's own quantization: {0} does not apply to keep")
            return
        method_finetune(self.format, self.finetune)

    @property
    def keep(self) -> bool:
        return self.quantizer == KEEP

    @property
    def format(self):
        return resolve_quantizer(KEEP, self.source) if self.keep else method_format(self.quantizer, self.source.block)

    @property
    def epochs(self) -> int:
        if self.keep or (self.finetune is None and not self.source.labelled):
            return 0  # nothing to train on without labels (unless asked, which then fails by name)
        return method_finetune(self.format, self.finetune)

    @property
    def plan(self):
        if self.keep:
            return None
        return self.format.default_density if self.density is None else self.density


def in_words(artifact_path) -> str:
    """An artifact argument as error messages name it."""
    return f"network {artifact_path.name!r}" if isinstance(artifact_path, artifact.QuantizedNetwork) else str(artifact_path)


@dataclass
class QuantizedRun:
    """An in-memory quantized network and what was measured on it (nothing written yet):
    what :func:`quantrtl.quantize` returns."""

    qnet: "artifact.QuantizedNetwork"
    float_accuracy: float | None
    quant_accuracy: float | None
    golden_accuracy: float | None
    golden_agreement: float
    test_images: int
    seconds: float
    cached: bool = False  # taken from the quantize cache (the measurements are those of the run that made it)

    @property
    def quantizer(self) -> str:
        return self.qnet.quantizer

    def save(self, stem: str | Path) -> Path:
        """Write the artifact (``<stem>.json`` + ``.npz``); returns the JSON path."""
        return artifact.save(self.qnet, stem)


def _train(float_model, fmt, train, finetune: int, seed: int, input_fmt, density, inq: bool):
    """The family's training procedure → (fake-quant model, description, per-layer densities)."""
    from quantrtl.model.training.procedures import TrainRequest
    from quantrtl.model.training.prune import resolve_density, weight_layers

    procedure = family(fmt.family).resolve("train")
    plan = resolve_density(density, weight_layers(float_model))
    done = procedure(TrainRequest(float_model=float_model, fmt=fmt, train=train, epochs=finetune, seed=seed,
                                  input_fmt=input_fmt, plan=plan, inq=inq))
    return done.model, done.description, done.plan


#: Where :func:`quantize_network` keeps what it quantized (``QUANTRTL_CACHE`` overrides).
QUANTIZE_CACHE = "build/cache/quantize"
#: What a cache entry keeps beside the network: the run's measurements.
_RUN_FIELDS = ("float_accuracy", "quant_accuracy", "golden_accuracy", "golden_agreement", "test_images", "seconds")


def _cache_key(opts: "QuantizeOptions") -> str | None:
    """A digest of everything a quantization of the shipped model depends on: the resolved
    options, the checkpoint's bytes, the source of every module of ``quantrtl.model`` and
    of this flow, torch's version and CPU kernels (training is exact run to run only on one
    kind).  None for a user model or a calibration file (never cached)."""
    import hashlib
    import json

    source = opts.source
    if source.shipped is None or source.calib is not None:
        return None
    import torch

    import quantrtl.model as model_pkg
    from quantrtl.model.training import net

    checkpoint = source.checkpoint or net.SHIPPED[source.shipped].checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        return None  # the quantization itself says what is wrong with it
    h = hashlib.sha256()
    key = {"quantizer": opts.format.name, "format": repr(opts.format), "epochs": opts.epochs, "seed": opts.seed,
           "density": str(opts.plan), "inq": opts.inq, "torch": torch.__version__, "cpu": net.cpu_capability(),
           "model": source.shipped}
    h.update(json.dumps(key, sort_keys=True).encode())
    h.update(Path(checkpoint).read_bytes() if checkpoint is not None else b"seeded")  # seeded: net.py's code
    root = Path(model_pkg.__file__).parent
    for f in sorted(root.rglob("*.py")) + [Path(__file__)]:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:32]


def _cache_root() -> Path:
    import os

    return Path(os.environ.get("QUANTRTL_CACHE", QUANTIZE_CACHE))


def _cache_load(key: str) -> QuantizedRun | None:
    import json

    entry = _cache_root() / key
    try:
        run = json.loads((entry / "run.json").read_text())
        qnet = artifact.load(entry / "network.json")
        return QuantizedRun(qnet=qnet, cached=True, **{k: run[k] for k in _RUN_FIELDS})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: quantize again (and replace it)


def _cache_store(key: str, run: QuantizedRun) -> None:
    """Written whole into a folder of its own and renamed into place: concurrent runs never
    see half of an entry; a cache that cannot be written is skipped."""
    import json
    import os
    import shutil
    import tempfile

    root, tmp = _cache_root(), None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        artifact.save(run.qnet, tmp / "network")
        write_file(tmp / "run.json", json.dumps({k: getattr(run, k) for k in _RUN_FIELDS}))
        shutil.rmtree(root / key, ignore_errors=True)
        os.replace(tmp, root / key)
    except OSError:  # (or another run's entry landed first)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def quantize_network(quantizer: str, finetune: int | None = None, source: ModelSource = DIGITS,
                     seed: int = 0, density=None, inq: bool = False) -> QuantizedRun:
    """Quantize the model and evaluate float, fake-quant and golden (accuracy when labelled).

    ``density`` None is the method's default (pruning pipelines start pruned).  The shipped
    model's runs are cached in :data:`QUANTIZE_CACHE` (keyed on every input, see
    :func:`_cache_key`): the same run again loads the network and its measurements."""
    opts = QuantizeOptions(quantizer, finetune, seed, source, density, inq)
    key = _cache_key(opts)
    if key is not None:
        hit = _cache_load(key)
        if hit is not None:
            return hit
    run = _quantize(opts)
    if key is not None:
        _cache_store(key, run)
    return run


def _quantize_keep(opts: "QuantizeOptions") -> QuantizedRun:
    """An imported (QONNX) model's own quantization as the artifact; its accuracies: the
    dequantized float model, QONNX's own execution (the model's fake-quant), the golden
    model, and golden vs QONNX agreement."""
    import torch

    from quantrtl.model.training import net
    from quantrtl.model.training.onnx_import import float_graph, keep_network, load_onnx, qonnx_execute
    from quantrtl.sim import golden

    t0 = time.perf_counter()
    source = opts.source
    m = load_onnx(source.onnx)
    train, test, _, labelled = load_data(source)
    check_input_shape(source, test, m.input_shape)
    meta = {"finetune_epochs": 0, "seed": opts.seed, "model": source.onnx, "density": None,
            "training": "the model's own quantization (QONNX Quant nodes), no training",
            "checkpoint": Path(source.onnx).name,
            "calibration": source.data_name,
            "versions": tool_versions()}
    qnet = keep_network(m, train.float_inputs(), source.name, meta)
    x = test.float_inputs()
    acc = (lambda pred: net.accuracy(pred, test.y)) if labelled else (lambda pred: None)
    with torch.no_grad():
        float_pred = float_graph(m)(torch.tensor(x)).reshape(len(x), -1).argmax(1).numpy()
    ctx = qonnx_execute(m, x)  # QONNX and the golden model each run once on the test split
    g = golden.run(qnet, qnet.input.quantize(x))
    qonnx_pred, g_pred = ctx[m.output_name].reshape(len(x), -1).argmax(1), g.predicted
    qnet.metadata["qonnx_comparison"] = compare_with_qonnx(m, qnet, x, ctx, g)
    return QuantizedRun(qnet=qnet, float_accuracy=acc(float_pred), quant_accuracy=acc(qonnx_pred),
                        golden_accuracy=acc(g_pred), golden_agreement=net.accuracy(g_pred, qonnx_pred),
                        test_images=len(x), seconds=time.perf_counter() - t0)


def compare_with_qonnx(m, net, x, ctx: dict | None = None, golden_result=None) -> dict:
    """Golden (integer) vs QONNX (float) on float inputs ``x``: argmax agreement of the
    whole networks, and per node the largest difference in codes when the golden layer is
    fed QONNX's own inputs of that node (QONNX's float tensors turned into codes with the
    formats of the artifact), so a difference is that node's, not carried from before.
    ``ctx`` (QONNX's tensors) and ``golden_result`` of ``x``, when the caller has them."""
    import numpy as np

    from quantrtl.model.numbers.artifact import INPUT
    from quantrtl.model.training.onnx_import import qonnx_execute
    from quantrtl.sim import golden

    ctx = qonnx_execute(m, x) if ctx is None else ctx
    tensors = net.metadata.get("onnx_tensors", {})
    fmts = {INPUT: net.input, **{l.name: l.output for l in net.layers}}

    def codes(name):
        return fmts[name].quantize(ctx[tensors[name]])

    worst = {}
    for layer in net.layers:
        srcs = net.sources(layer)
        if any(s not in tensors for s in srcs) or layer.name not in tensors:
            continue
        ins = [codes(s) for s in srcs]
        got = golden.run_layer(layer, ins if layer.kind.joins else ins[0])
        worst[layer.name] = int(np.abs(codes(layer.name).reshape(got.shape) - got).max())
    g = golden.run(net, net.input.quantize(x)) if golden_result is None else golden_result
    logits = ctx[m.output_name].reshape(len(x), -1)
    agree = float((logits.argmax(axis=1) == g.predicted).mean())
    return {"agreement": agree, "max_code_difference": worst, "images": len(x)}


def _check_classes(float_model, probe, train, labelled: bool, source) -> None:
    """A model evaluated (and fine-tuned) on labelled data needs an output per class."""
    if not labelled:
        return
    import torch

    with torch.no_grad():
        outputs = int(float_model(probe).reshape(len(probe), -1).shape[1])
    classes = int(train.y.max()) + 1
    if outputs < classes:
        what = "the nn.Module" if source.module is not None else source.model
        raise OptionError("model", f"{what}: {outputs} output{'s' if outputs != 1 else ''}, but the digits data it is "
                                   f"trained and evaluated on has {classes} classes; a model of other data "
                                   "calibrates on --calib (no labels)")


def _quantize(opts: "QuantizeOptions") -> QuantizedRun:
    if opts.keep:
        return _quantize_keep(opts)
    source, seed, inq = opts.source, opts.seed, opts.inq
    fmt, finetune, density = opts.format, opts.epochs, opts.plan
    from quantrtl.model.training import net
    from quantrtl.model.training.export import export
    from quantrtl.sim import golden

    t0 = time.perf_counter()
    train, test, input_fmt, labelled = load_data(source)
    check_input_shape(source, train)
    if finetune and not labelled:
        if source.synthetic:
            raise OptionError("finetune", f"fine-tuning needs labels and {source.shipped} has no labelled data "
                                          "here: give {0} 0")
        raise OptionError(("finetune", "calib"), "fine-tuning needs labels: use the digits data (no {1}) or {0} 0")
    if source.shipped is None:
        import copy

        import torch

        from quantrtl.model.training.user import load_user_model, prepare_module

        probe = torch.tensor(train.float_inputs()[:8])
        if source.onnx is not None:  # its float weights, re-quantized by the chosen quantizer
            from quantrtl.model.training.onnx_import import float_graph, load_onnx

            m = load_onnx(source.onnx)
            check_input_shape(source, train, m.input_shape)
            float_model = float_graph(m)
        elif source.module is not None:  # training changes the model: work on a copy
            float_model = prepare_module(copy.deepcopy(source.module), "model", probe=probe)
        else:
            float_model = load_user_model(source.model, source.weights, probe=probe)
        _check_classes(float_model, probe, train, labelled, source)
    else:
        float_model = net.SHIPPED[source.shipped].build(source.checkpoint)
    acc = (lambda pred: net.accuracy(pred, test.y)) if labelled else (lambda pred: None)
    float_acc = acc(net.predict(float_model, test))
    qm, training, plan = _train(float_model, fmt, train, finetune, seed, input_fmt, density, inq)
    fq_pred = net.predict(qm, test)
    model_name = (f"{type(source.module).__name__} (in memory)" if source.module is not None
                  else source.model if source.shipped is None
                  else "digits_cnn" if source.shipped == "digits" else source.shipped)
    params = ("in memory" if source.module is not None else Path(source.weights).name if source.weights
              else Path(source.onnx).name if source.onnx
              else "the factory's initial parameters" if source.shipped is None
              else Path(source.checkpoint).name if source.checkpoint
              else Path(net.SHIPPED[source.shipped].checkpoint).name if net.SHIPPED[source.shipped].checkpoint
              else "seeded (untrained)")
    meta = {"finetune_epochs": finetune, "seed": seed, "model": model_name, "density": plan,
            "training": training, "checkpoint": params,
            "calibration": source.data_name,
            "versions": tool_versions()}
    qnet = export(qm, tuple(test.x.shape[1:]), name=source.name, metadata=meta)
    g_pred = golden.run(qnet, test.x).predicted
    return QuantizedRun(qnet=qnet, float_accuracy=float_acc, quant_accuracy=acc(fq_pred),
                        golden_accuracy=acc(g_pred), golden_agreement=net.accuracy(g_pred, fq_pred),
                        test_images=len(test.y), seconds=time.perf_counter() - t0)


def quantize_flow(quantizer: str, out_dir: str | Path, finetune: int | None = None,
                  checkpoint: str | Path | None = None, seed: int = 0, source: ModelSource | None = None,
                  density=None, inq: bool = False) -> QuantizeResult:
    """Quantize the digits model, export the artifact into ``out_dir`` and evaluate it.

    Accuracies are on the fixed digits test split: float model, fake-quant PyTorch
    model, and the integer golden model run on the exported artifact.
    """
    from quantrtl.model.numbers.size import coded_size

    source = source or ModelSource(checkpoint=str(checkpoint) if checkpoint else None)
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
        test_images=q.test_images, layers=layers, seconds=q.seconds, versions=qnet.metadata["versions"], cached=q.cached,
        training=qnet.metadata["training"], density=qnet.metadata["density"],
    )


def network_for(fmt, artifact_path, finetune: int, source: ModelSource = DIGITS):
    """The network of ``artifact_path`` (an artifact file, or an in-memory
    :class:`~quantrtl.model.numbers.artifact.QuantizedNetwork` or :class:`QuantizedRun`),
    which must use ``fmt``; None quantizes the model now (or takes it from the cache)."""
    if artifact_path is None:
        if fmt.name == KEEP:  # the imported model's own quantization: nothing to train
            return quantize_network(KEEP, None, source).qnet
        return quantize_network(fmt.name, finetune, source, density=source.density).qnet
    if isinstance(artifact_path, QuantizedRun):
        artifact_path = artifact_path.qnet
    qnet = artifact_path if isinstance(artifact_path, artifact.QuantizedNetwork) else artifact.load(artifact_path)
    if qnet.quantizer != fmt.name:
        raise OptionError("artifact_path", f"{in_words(artifact_path)}: artifact was quantized with "
                          f"{qnet.quantizer!r}, not {fmt.name!r}")
    return qnet
