"""What every flow shares: the model source, the data, argument checks, JSON output."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantrtl.util.atomic import atomic_write
from quantrtl.util.errors import OptionError
from quantrtl.util.lanes import MAX_LANES, lanes_tag, parse_lanes
from quantrtl.util.provenance import package_versions

__all__ = ["DEFAULT_FINETUNE", "DEMO_QUANTIZERS", "SHIPPED_MODELS", "KEEP", "KeepQuantizer", "resolve_quantizer",
           "MAX_LANES", "OptionError", "ModelSource", "DIGITS", "load_data", "tool_versions", "check_density",
           "check_lanes", "parse_lanes", "lanes_tag", "check_sparse", "check_engine", "check_style", "check_stream_options", "artifact_stem", "write_json",
           "check_input_shape",
           "HardwareOptions"]

#: Fine-tuning epochs used when the user does not say (``--finetune 0`` is pure PTQ).
DEFAULT_FINETUNE = 10
#: The quantizers ``make demo`` compares.
DEMO_QUANTIZERS = ("fixed8", "shift4", "ternary", "binary")


#: ``--quantizer keep``: an imported (QONNX) model's own quantization.
KEEP = "keep"


@dataclass(frozen=True)
class KeepQuantizer:
    """What ``resolve_quantizer`` gives for ``keep`` (a name, like a format's)."""

    name: str = KEEP
    finetune_epochs: int = 0


def resolve_quantizer(quantizer: str, source: "ModelSource", artifact=None):
    """A quantizer name → its format, or :class:`KeepQuantizer` for ``keep`` (which needs
    an ONNX model, or a keep ``artifact`` already made); bad names fail here, before any work."""
    if quantizer == KEEP:
        if source.onnx is None and artifact is None:
            raise OptionError("quantizer", "keep takes an imported model's own quantization: give --model model.onnx "
                                           "(QONNX, e.g. exported by Brevitas)")
        return KeepQuantizer()
    from quantrtl.model.numbers.families import parse_format

    return parse_format(quantizer)


#: The shipped models (``--model NAME``; each has its checkpoint in ``model/data``).
SHIPPED_MODELS = ("digits", "digits-res", "digits-mobile", "resnet8", "dscnn")
#: Shipped models without data here (untrained, seeded weights): they calibrate on
#: ``--calib`` or on a synthetic set, and report accuracy as "-".
UNLABELLED_MODELS = ("resnet8", "dscnn")


def tool_versions() -> dict[str, str]:
    return package_versions("quantrtl", "numpy", "torch", python=True)


@dataclass(frozen=True)
class ModelSource:
    """Which float model and data: a shipped model (``model`` None: the digits CNN, or a
    name of :data:`SHIPPED_MODELS`) or a user model, from a file (``model``
    ``path/to/file.py:factory``) or in memory (``module``, an ``nn.Module``: the Python API)."""

    model: str | None = None  # a shipped model's name, or path/to/file.py:factory
    weights: str | None = None  # state dict for the user model
    calib: str | None = None  # .npy float inputs instead of the digits data
    checkpoint: str | None = None  # another checkpoint of the digits CNN
    density: float | str | None = None  # prune to this density or plan first (None: the method's default)
    block: int | None = None  # unified: block size (None: the format's default)
    module: Any = field(default=None, compare=False)  # an nn.Module (not copied here; the flow copies it)

    def __post_init__(self):
        if self.model is not None and self.module is not None:
            raise OptionError(("model", "module"), "give either {0} (a file) or {1} (an nn.Module), not both")
        if self.shipped is not None and self.weights is not None:
            raise OptionError(("weights", "model"), "{0} loads a state dict into a {1} FILE.py:FACTORY; a shipped "
                                                    "model takes --checkpoint")
        if self.shipped is None and self.checkpoint is not None:
            raise OptionError(("checkpoint", "model"), "{0} is for a shipped model; give {1}'s weights with --weights")
        if self.onnx is not None and self.weights is not None:
            raise OptionError(("weights", "model"), "an ONNX {1} carries its weights; drop {0}")

    @property
    def labelled(self) -> bool:
        """Whether the data has labels (the digits): not with ``--calib`` nor for an untrained shipped model."""
        return self.calib is None and self.shipped not in UNLABELLED_MODELS

    @property
    def synthetic(self) -> bool:
        """Calibration on a generated, seeded set (an untrained shipped model without ``--calib``)."""
        return self.calib is None and self.shipped in UNLABELLED_MODELS

    @property
    def data_name(self) -> str:
        """The calibration data, as results name it."""
        return (Path(self.calib).name if self.calib else "synthetic (seeded uniform [0, 1), 32 inputs)"
                if self.synthetic else "digits train split")

    @property
    def onnx(self) -> str | None:
        """The ONNX/QONNX file of ``--model model.onnx`` (None: not an ONNX model)."""
        return self.model if self.model is not None and self.model.lower().endswith(".onnx") else None

    @property
    def shipped(self) -> str | None:
        """The shipped model's name (None: a user model)."""
        if self.module is not None:
            return None
        if self.model is None:
            return "digits"
        return self.model if self.model in SHIPPED_MODELS else None

    @property
    def name(self) -> str:
        if self.module is not None:
            stem = type(self.module).__name__.lower()
        elif self.shipped is not None:
            return self.shipped.replace("-", "_")
        elif self.onnx is not None:
            stem = Path(self.onnx).stem
        else:
            stem = Path(self.model.rpartition(":")[0]).stem
        ident = "".join(c if c.isascii() and c.isalnum() else "_" for c in stem)
        return (ident if ident[:1].isalpha() else f"m_{ident}")[:48]  # an artifact name (1..64 characters)


DIGITS = ModelSource()


def load_data(source: ModelSource):
    """``(calibration/training split, evaluation split, input format, labelled)``."""
    from quantrtl.model.digits import INPUT_SCALE, INPUT_ZERO_POINT, load_split
    from quantrtl.model.numbers.formats import ActivationFormat

    if source.labelled:
        train, test = load_split()
        return train, test, ActivationFormat(scale=INPUT_SCALE, zero_point=INPUT_ZERO_POINT), True
    from quantrtl.model.training.user import ArraySplit, load_calibration

    if source.synthetic:
        from quantrtl.model.training.net import SHIPPED, synthetic_inputs

        x = synthetic_inputs(SHIPPED[source.shipped].input_shape)
    else:
        x = load_calibration(source.calib)
    fmt = ActivationFormat.from_range(float(x.min()), float(x.max()))
    split = ArraySplit(x, fmt)
    return split, split, fmt, False


def check_input_shape(source: ModelSource, split, shape=None) -> None:
    """A model's input shape is fixed: a shipped model is not rebuilt for the data, an ONNX
    model declares ``shape`` (C, H, W). Data of another shape is an error naming both."""
    if shape is None:
        if source.shipped is None:
            return
        from quantrtl.model.training.net import SHIPPED

        shape = SHIPPED[source.shipped].input_shape
    want, got = tuple(shape), tuple(split.x.shape)
    if got[1:] == want:
        return
    takes = f"takes inputs of shape (N, {', '.join(map(str, want))})"
    if source.calib is None:
        raise OptionError("model", f"{source.model}: {takes}, the digits data has (N, 1, 8, 8)")
    who = f"the shipped model {source.shipped}" if source.shipped else source.model
    raise OptionError("calib", f"{source.calib}: {who} {takes}, the file holds {got}")


def check_density(density) -> None:
    """A fraction in (0, 1] or a per-layer plan (``model/training/prune.parse_density``)."""
    if density is not None:
        from quantrtl.model.training.prune import parse_density

        parse_density(density)


def artifact_stem(out_dir: str | Path, qnet) -> Path:
    return Path(out_dir) / f"{qnet.name}-{qnet.quantizer}"


def check_lanes(lanes: int, param: str = "lanes") -> None:
    """One lane count in 1..MAX_LANES (:func:`quantrtl.util.lanes.parse_lanes`'s check)."""
    parse_lanes(lanes, param)


def check_sparse(sparse) -> str | None:
    """The zero-skipping engine named by ``sparse`` (``hw/engines.sparse_mode``), or an
    OptionError naming the choices."""
    from quantrtl.hw.engines import sparse_mode

    try:
        return sparse_mode(sparse)
    except ValueError as e:
        raise OptionError("sparse", str(e)) from None


def check_engine(sparse) -> str:
    """The engine style named by ``sparse`` (False/None: dense, True: row, a style's name),
    as its registered name, or an OptionError naming the choices."""
    from quantrtl.hw.styles import style_of

    check_sparse(sparse)  # a name of no style: the zero-skipping choices, as --sparse takes them
    return style_of(sparse).name


def check_style(value, option: str = "engine") -> str:
    """The engine style ``value`` names, as its registered name, or an OptionError on
    ``option`` naming every style (``--engine`` takes any of them)."""
    from quantrtl.hw.styles import style_of

    try:
        return style_of(value).name
    except ValueError as e:
        raise OptionError(option, str(e)) from None


def check_stream_options(index_bits: int, source: "ModelSource") -> None:
    """Relative-index width and pruning density, checked before any work."""
    if not 1 <= index_bits <= 16:
        raise OptionError("index_bits", f"must be in 1..16, got {index_bits}")
    check_density(source.density)


def write_json(path: str | Path, obj) -> Path:
    """Results as JSON, written atomically."""
    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        raise TypeError(f"not JSON serializable: {type(o).__name__}")
    return atomic_write(path, json.dumps(obj, indent=2, default=default) + "\n")


@dataclass(frozen=True)
class HardwareOptions:
    """What every flow that generates hardware for a network shares, validated on
    construction: the quantizer, MAC lanes per engine, the network (``artifact``: a file
    or an in-memory network; None quantizes ``source`` with ``finetune`` epochs now) and the
    zero-skipping engines' relative-index width."""

    quantizer: str
    lanes: int | dict | str = 8  # every engine's lanes, or a plan ("conv1=8,*=32")
    artifact: Any = None
    finetune: int | None = None
    source: ModelSource = DIGITS
    sparse: bool | str = False  # the engine style: False (dense), a style's name (True: "row")
    index_bits: int = 4
    #: The engine style's registered name (hw/styles.py), parsed from ``sparse``.
    engine: str = field(default="dense", init=False)

    def __post_init__(self):
        if isinstance(self.artifact, (str, os.PathLike)) and not str(self.artifact).strip():
            raise OptionError("artifact_path", "is empty: give an artifact's .json file")
        resolve_quantizer(self.quantizer, self.source, self.artifact)
        object.__setattr__(self, "engine", check_engine(self.sparse))  # the one parsed engine style
        parse_lanes(self.lanes)  # a count, or a plan per layer (checked against the network later)
        check_stream_options(self.index_bits, self.source)
        if self.artifact is not None:  # options of a quantization that does not happen
            s = self.source
            for name, value in (("finetune", self.finetune), ("density", s.density), ("checkpoint", s.checkpoint),
                                ("weights", s.weights), ("block", s.block)):
                if value is not None:
                    raise OptionError((name, "artifact_path"), "{0} is an option of quantizing, and {1} is "
                                                               "quantized already: drop {0} (or {1}, to quantize now)")
