"""The integer artifact: one module writes it, one reads it (this one).

An artifact is a pair of files ``<stem>.json`` (metadata, schema below) and
``<stem>.npz`` (integer arrays).  The JSON names the npz and its SHA-256, so a
mismatched or truncated pair is rejected.  ``docs/artifact.md`` documents the
schema; :data:`SCHEMA_VERSION` is bumped on any incompatible change.

This module imports NumPy only (no torch): every stage reads artifacts through it.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantrtl.util.atomic import atomic_write
from quantrtl.util.errors import first_line
from quantrtl.model.numbers.formats import ActivationFormat, FormatError, WeightFormat
from quantrtl.model.numbers.families import format_from_dict
from quantrtl.model.numbers.ops import WEIGHT_ARRAYS, op, op_of

SCHEMA = "quantrtl.artifact"
SCHEMA_VERSION = 2
#: Versions this reader accepts (version 1: a chain of layers, no ``inputs``).
READS_VERSIONS = (1, 2)
#: The name layers use for the network's input in ``inputs``.
INPUT = "input"
#: Requantization multiplier: ``M0`` is an unsigned integer in [2**30, 2**31) (31 bits).
M0_BITS = 31
#: Allowed total right shift ``n`` of the requantization (``2**(n-1)`` is the rounding term).
SHIFT_RANGE = (1, 127)


class ArtifactError(ValueError):
    """A malformed, inconsistent or unreadable artifact."""


@dataclass(eq=False)
class Layer:
    """One layer of a quantized network.

    ``conv2d``/``linear`` layers carry ``codes`` (weight codes in ``format``; a conv2d
    with ``groups`` g has codes (Cout, Cin/g, kh, kw)), ``bias`` (integer, in the
    accumulator's scale ``S_w[c] * S_x``), ``m0``/``shift`` per output channel and the
    output clamp ``[out_min, out_max]`` (ReLU fused as ``out_min = output.zero_point``).
    ``add``/``concat`` carry ``m0``/``shift`` per input and ``input_formats``;
    ``avgpool``/``gap`` one ``m0``/``shift`` (``S_in / (S_out · k²)``; models from PyTorch keep
    the input format, ``1/k²``);
    ``maxpool``/``relu`` carry only geometry.  ``inputs`` names the layers (or
    :data:`INPUT`) read, in order; empty means the layer before (the network input for
    the first).  Shapes are (C, H, W) for feature maps and (F,) for vectors; a linear
    layer reads its input flattened in C, H, W order.
    """

    name: str
    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    input: ActivationFormat
    output: ActivationFormat
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    activation: str = "none"
    format: WeightFormat | None = None
    codes: np.ndarray | None = None
    bias: np.ndarray | None = None
    m0: np.ndarray | None = None
    shift: np.ndarray | None = None
    weight_scale: np.ndarray | None = None
    groups: int = 1
    inputs: tuple[str, ...] = ()
    input_formats: tuple[ActivationFormat, ...] = ()
    #: ``lut``: the function (``{"name": ..., params}``) and its table (docs/integer-semantics.md §11).
    function: dict | None = None
    table: np.ndarray | None = None
    #: Attributes and arrays of a plug-in op that has no field here (name → value).
    extra: dict = field(default_factory=dict)

    @property
    def kind(self):
        """The layer's :class:`~quantrtl.model.numbers.ops.Op` record."""
        return op_of(self)

    @property
    def has_weights(self) -> bool:
        return self.kind.weights

    @property
    def arrays(self) -> tuple[str, ...]:
        """The names of the integer arrays this layer stores."""
        return self.kind.all_arrays

    def get(self, name: str):
        """An attribute or array by name (a plug-in op's live in :attr:`extra`)."""
        return getattr(self, name) if name in _FIELDS else self.extra.get(name)

    def set(self, name: str, value) -> None:
        if name in _FIELDS:
            setattr(self, name, value)
        else:
            self.extra[name] = value

    @property
    def out_min(self) -> int:
        return self.output.zero_point if self.activation == "relu" else self.output.qmin

    @property
    def out_max(self) -> int:
        return self.output.qmax

    @property
    def values(self) -> np.ndarray:
        """Decoded integer weights (same shape as ``codes``)."""
        return self.format.decode(self.codes)

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.codes.shape[1:]))

    def accumulator_bound(self) -> int:
        """Largest ``|acc|`` any input can produce (see docs/integer-semantics.md)::

            B = max_c ( sum_i |w_ci| * max(Z_x - 0, qmax_x - Z_x) + |b_c| )
        """
        xmax = 1 if self.input.binary else max(self.input.zero_point - self.input.qmin,
                                                  self.input.qmax - self.input.zero_point)
        w = np.abs(self.values).reshape(self.values.shape[0], -1).astype(object)
        per_channel = w.sum(axis=1) * xmax + np.abs(self.bias.astype(object))
        return int(max(per_channel))

    @property
    def accumulator_bits(self) -> int:
        """Signed width that holds every reachable accumulator value: bits(B) + 1, and at least
        2 (an all-zero layer's accumulator is still a signed register)."""
        return max(2, int(self.accumulator_bound()).bit_length() + 1)

    @property
    def macs(self) -> int:
        """Dense multiply-accumulates per inference."""
        if not self.has_weights:
            return 0
        return int(np.prod(self.out_shape)) * self.fan_in

    @property
    def weight_count(self) -> int:
        return int(self.codes.size) if self.has_weights else 0


@dataclass(eq=False)
class QuantizedNetwork:
    """A whole quantized network: the contract between all stages."""

    name: str
    quantizer: str
    input_shape: tuple[int, ...]
    input: ActivationFormat
    layers: list[Layer]
    metadata: dict[str, Any] = field(default_factory=dict)

    def sources(self, layer: Layer) -> tuple[str, ...]:
        """The names ``layer`` reads (:data:`INPUT` for the network input)."""
        if layer.inputs:
            return tuple(layer.inputs)
        i = self.layers.index(layer)
        return (self.layers[i - 1].name if i else INPUT,)

    @property
    def is_chain(self) -> bool:
        """Every layer reads only the layer before it (the networks the engines' top chains)."""
        return all(self.sources(l) == ((self.layers[i - 1].name if i else INPUT),) for i, l in enumerate(self.layers))

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ArtifactError(f"no layer named {name!r}; layers are {[l.name for l in self.layers]}")

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].out_shape

    def storage_bits(self) -> dict[str, int]:
        """Bits a deployment stores uncoded: weight codes (unified: a sign per weight and a
        magnitude per block), per-layer format parameters (codebooks, means, basis
        scales), biases and requantization constants (:mod:`quantrtl.model.numbers.size` adds Huffman
        coding and sparse layouts).

        Biases and ``m0`` are counted at the signed width their largest value needs,
        shifts at the width of the largest shift; equal ``(m0, shift)`` pairs of a layer
        are stored once.
        """
        codes = bias = requant = params = 0
        for layer in self.layers:
            if "table" in layer.arrays:  # a table activation: one output code per input code
                params += int(layer.table.size) * layer.output.bits
            if layer.kind.requantizes:  # add, concat, average pooling: their constants only
                requant += (M0_BITS + int(layer.shift.max()).bit_length()) * len(set(zip(layer.m0.tolist(),
                                                                                          layer.shift.tolist())))
            if not layer.has_weights:
                continue
            st = layer.format.storage(layer.codes)
            codes += st["codes"]
            params += st["params"]
            nb = int(np.abs(layer.bias).max()).bit_length() + 1
            bias += nb * layer.bias.size
            ns = int(layer.shift.max()).bit_length()
            # channels with the same (M0, n) share one stored constant (power-of-two
            # scales make a whole layer's constants equal)
            requant += (M0_BITS + ns) * len(set(zip(layer.m0.tolist(), layer.shift.tolist())))
        return {"weights": codes, "params": params, "bias": bias, "requant": requant,
                "total": codes + params + bias + requant}

    def float_bits(self) -> int:
        """fp32 storage of the same weights and biases."""
        return sum(32 * (l.weight_count + l.bias.size) for l in self.layers if l.has_weights)


# ---- requantization constants ---------------------------------------------------

def quantize_multiplier(m: float) -> tuple[int, int]:
    """Real multiplier ``m > 0`` → ``(M0, n)`` with ``m ≈ M0 * 2**-n``, ``M0`` in [2**30, 2**31)."""
    if not (math.isfinite(m) and m > 0):
        raise ArtifactError(f"requantization multiplier must be positive and finite, got {m!r}")
    f, k = math.frexp(m)  # m = f * 2**k, f in [0.5, 1)
    m0 = round(f * (1 << M0_BITS))
    n = M0_BITS - k
    if m0 == 1 << M0_BITS:  # f rounded up to 1.0
        m0 >>= 1
        n -= 1
    if not SHIFT_RANGE[0] <= n <= SHIFT_RANGE[1]:
        raise ArtifactError(
            f"requantization multiplier {m!r} needs shift {n}, outside the allowed range "
            f"{SHIFT_RANGE[0]}..{SHIFT_RANGE[1]}"
        )
    return m0, n


def add_multipliers(scales, out_scale: float) -> list[tuple[int, int]]:
    """§8: ``S_i / S_y ≈ M_i · 2^(−n)`` for every input ``i`` of an add, with one shift
    ``n`` chosen so that the largest ``M_i`` lies in [2**30, 2**31) (the others are
    smaller, each at least 1)."""
    ms = [float(s) / float(out_scale) for s in scales]
    _, n = quantize_multiplier(max(ms))
    out = [(round(m * 2.0 ** n), n) for m in ms]
    if min(m for m, _ in out) < 1:
        raise ArtifactError(f"add input scales {list(scales)} differ too much (more than 2**31) to share one shift")
    return out


# ---- writing --------------------------------------------------------------------

def _layer_to_json(layer: Layer, inputs: tuple[str, ...]) -> dict:
    d: dict[str, Any] = {
        "name": layer.name,
        "op": layer.op,
        "in_shape": list(layer.in_shape),
        "out_shape": list(layer.out_shape),
        "inputs": list(inputs),
        "input": layer.input.to_dict(),
        "output": layer.output.to_dict(),
    }
    kind = layer.kind
    if kind.window:
        d.update(kernel=list(layer.kernel), stride=list(layer.stride), padding=list(layer.padding))
    for a in kind.attributes:
        d[a.name] = layer.get(a.name)
    if kind.joins:
        d["input_formats"] = [f.to_dict() for f in layer.input_formats]
    if kind.activations:
        d["activation"] = layer.activation
    if layer.has_weights:
        d.update(format=layer.format.to_dict(), out_min=layer.out_min, out_max=layer.out_max,
                 accumulator_bits=layer.accumulator_bits)
    if layer.arrays:
        d["arrays"] = {k: f"{layer.name}/{k}" for k in layer.arrays}
    return d


_LAYER_ARRAYS = WEIGHT_ARRAYS
_FIELDS = {f for f in Layer.__dataclass_fields__}


def save(net: QuantizedNetwork, stem: str | os.PathLike) -> Path:
    """Write ``<stem>.npz`` and ``<stem>.json`` (suffixes appended); returns the JSON path.

    The network is validated first, and both files are written to temporary names
    and renamed, the JSON last, so a failure leaves no half-written artifact.
    """
    validate(net)
    stem = Path(stem)
    arrays = {}
    for layer in net.layers:
        for k in layer.arrays:
            arrays[f"{layer.name}/{k}"] = layer.get(k)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    npz_bytes = buf.getvalue()
    doc = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "name": net.name,
        "quantizer": net.quantizer,
        "input": {"shape": list(net.input_shape), **net.input.to_dict()},
        "arrays": {"file": stem.name + ".npz", "sha256": hashlib.sha256(npz_bytes).hexdigest()},
        "layers": [_layer_to_json(l, net.sources(l)) for l in net.layers],
        "metadata": net.metadata,
    }
    json_path = stem.parent / (stem.name + ".json")  # not with_suffix: stems may contain dots
    npz_path = stem.parent / (stem.name + ".npz")
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    existed = npz_path.exists()
    atomic_write(npz_path, npz_bytes)
    try:
        atomic_write(json_path, text)
    except BaseException:
        if not existed:  # no orphan array file from a failed save
            npz_path.unlink(missing_ok=True)
        raise
    return json_path


# ---- reading and validation -----------------------------------------------------

def _need(d: dict, key: str, where: str, kind=None):
    if not isinstance(d, dict) or key not in d:
        raise ArtifactError(f"{where}: missing key {key!r}")
    v = d[key]
    if kind is not None and (not isinstance(v, kind) or isinstance(v, bool)):
        raise ArtifactError(f"{where}: {key!r} must be {getattr(kind, '__name__', kind)}, got {v!r}")
    return v


def _int_tuple(d: dict, key: str, where: str, n: int | None = None) -> tuple[int, ...]:
    v = _need(d, key, where, list)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in v) or (n is not None and len(v) != n):
        raise ArtifactError(f"{where}: {key!r} must be a list of {n or 'some'} integers, got {v!r}")
    return tuple(v)


def _qparams(d: dict, where: str) -> ActivationFormat:
    scale = _need(d, "scale", where, (int, float))
    zp = _need(d, "zero_point", where, int)
    bits = _need(d, "bits", where, int)
    encoding = d.get("encoding", "affine")
    try:
        return ActivationFormat(scale=float(scale), zero_point=zp, bits=bits, encoding=encoding)
    except FormatError as e:
        raise ArtifactError(f"{where}: {e}") from None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _array_shapes(kind, kw: dict, where: str) -> dict[str, tuple]:
    """The shape each array of a layer must have, from the layer's JSON (the op's rule)."""
    if not kw["out_shape"] or not kw["in_shape"]:
        raise ArtifactError(f"{where}: empty in_shape or out_shape")
    shapes = kind.array_shapes(kw)
    if isinstance(shapes, str):
        raise ArtifactError(f"{where}: {shapes}")
    return shapes


def _read_array(npz_path: Path, key: str, shape: tuple, where: str) -> np.ndarray:
    """Read one named array of the archive, after checking its declared shape and type
    (nothing else in the archive is read)."""
    member = key + ".npy"
    try:
        with zipfile.ZipFile(npz_path) as zf:
            if member not in zf.namelist():
                raise ArtifactError(f"{where}: array {key!r} missing from {npz_path.name}")
            with zf.open(member) as f:
                version = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)(f)
                got, _, dtype = header
                if tuple(got) != tuple(shape) or dtype.kind not in "iuf" or dtype.itemsize > 8:
                    raise ArtifactError(f"{where}: array {key!r} is {dtype} {tuple(got)}, expected "
                                        f"{'integers' if key != 'weight_scale' else 'floats'} of shape {tuple(shape)}")
            return np.load(io.BytesIO(zf.read(member)), allow_pickle=False)
    except ArtifactError:
        raise
    except Exception as e:  # zipfile and numpy raise several types for corrupt archives
        raise ArtifactError(f"{npz_path}: unreadable array file ({first_line(e)})") from None


def load(path: str | os.PathLike) -> QuantizedNetwork:
    """Read and validate an artifact from ``<stem>.json`` (or the stem / the ``.npz``)."""
    p = Path(path)
    json_path = p if p.suffix == ".json" else p.with_suffix(".json") if p.suffix == ".npz" else p.parent / (p.name + ".json")
    if not json_path.is_file():
        raise ArtifactError(f"{json_path}: artifact not found")
    try:
        doc = json.loads(json_path.read_text())
    except RecursionError:
        raise ArtifactError(f"{json_path}: not a readable JSON artifact (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{json_path}: not a readable JSON artifact ({e})") from None
    where = str(json_path)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ArtifactError(f"{where}: not a quantrtl artifact (schema is {doc.get('schema') if isinstance(doc, dict) else None!r}, expected {SCHEMA!r})")
    version = doc.get("version")
    if isinstance(version, bool) or version not in READS_VERSIONS:  # (True == 1 in Python)
        raise ArtifactError(f"{where}: artifact schema version {version!r} is not supported (this quantrtl reads "
                            f"versions {', '.join(map(str, READS_VERSIONS))})")
    arrays_doc = _need(doc, "arrays", where, dict)
    npz_path = json_path.parent / _need(arrays_doc, "file", where + ": arrays", str)
    if not npz_path.is_file():
        raise ArtifactError(f"{npz_path}: array file of artifact {json_path.name} not found")
    if _file_sha256(npz_path) != arrays_doc.get("sha256"):
        raise ArtifactError(f"{npz_path}: SHA-256 does not match {json_path.name} (truncated or from another artifact)")

    inp = _need(doc, "input", where, dict)
    layers = []
    for i, ld in enumerate(_need(doc, "layers", where, list)):
        lw = f"{where}: layer {i}"
        name = _need(ld, "name", lw, str)
        lw = f"{where}: layer {name!r}"
        op_name = _need(ld, "op", lw, str)
        try:
            kind = op(op_name)
        except KeyError as e:
            raise ArtifactError(f"{lw}: {e.args[0]}") from None
        kw: dict[str, Any] = dict(
            name=name, op=op_name,
            in_shape=_int_tuple(ld, "in_shape", lw), out_shape=_int_tuple(ld, "out_shape", lw),
            input=_qparams(_need(ld, "input", lw, dict), lw + " input"),
            output=_qparams(_need(ld, "output", lw, dict), lw + " output"),
        )
        if version >= 2:
            kw["inputs"] = tuple(_need(ld, "inputs", lw, list))
            if not kw["inputs"] or not all(isinstance(v, str) for v in kw["inputs"]):
                raise ArtifactError(f"{lw}: 'inputs' must be a non-empty list of layer names")
        if kind.window:
            kw.update(kernel=_int_tuple(ld, "kernel", lw, 2), stride=_int_tuple(ld, "stride", lw, 2),
                      padding=_int_tuple(ld, "padding", lw, 2))
        extra = {}
        for a in kind.attributes:
            if version < a.since:
                continue
            v = _need(ld, a.name, lw, a.kind)
            (kw if a.name in _FIELDS else extra)[a.name] = v
        if kind.joins:
            fmts = _need(ld, "input_formats", lw, list)
            kw["input_formats"] = tuple(_qparams(f, f"{lw} input_formats[{i}]") for i, f in enumerate(fmts))
        if kind.activations:
            kw["activation"] = _need(ld, "activation", lw, str)
        if kind.weights:
            try:
                kw["format"] = format_from_dict(_need(ld, "format", lw, dict))
            except FormatError as e:
                raise ArtifactError(f"{lw}: {e}") from None
        if kind.all_arrays:
            refs = _need(ld, "arrays", lw, dict)
            shapes = _array_shapes(kind, kw, lw)
            for k in shapes:
                a = _read_array(npz_path, _need(refs, k, lw + " arrays", str), shapes[k], lw)
                (kw if k in _FIELDS else extra)[k] = a
        layers.append(Layer(**kw, extra=extra))
    net = QuantizedNetwork(
        name=_need(doc, "name", where, str), quantizer=_need(doc, "quantizer", where, str),
        input_shape=_int_tuple(inp, "shape", where + ": input"), input=_qparams(inp, where + ": input"),
        layers=layers, metadata=doc.get("metadata", {}),
    )
    try:
        validate(net)
    except ArtifactError as e:
        raise ArtifactError(f"{where}: {e}") from None
    return net


def expected_out_shape(layer: Layer, in_shapes: list[tuple] | None = None) -> tuple[int, ...]:
    """Output shape implied by the layer's geometry and its inputs' shapes (``in_shapes``,
    by default ``[layer.in_shape]``): the op's shape rule."""
    return layer.kind.out_shape(layer, [tuple(s) for s in (in_shapes or [layer.in_shape])])


#: Network and layer names become Verilog module and file names: letters, digits and
#: underscores (a layer name may start with a digit: nn.Sequential names its children 0, 1, …).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_]{1,64}")


def check_name(name, what: str) -> None:
    """An :class:`ArtifactError` unless ``name`` is 1..64 letters, digits or underscores."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise ArtifactError(f"{what} {shown} must be 1 to 64 letters, digits or underscores "
                            "(it names Verilog modules and files)")


def validate(net: QuantizedNetwork) -> None:
    """Check every invariant the golden model and the generators rely on."""
    check_name(net.name, "network name")
    check_name(net.quantizer, "quantizer")
    if not net.layers:
        raise ArtifactError("network has no layers")
    for layer in net.layers:
        check_name(layer.name, "layer name")
        if layer.name == INPUT:
            raise ArtifactError(f"layer name {INPUT!r} is reserved for the network input")
    names = [l.name for l in net.layers]
    if len(set(names)) != len(names):
        raise ArtifactError(f"layer names are not unique: {names}")
    shapes, fmts = {INPUT: tuple(net.input_shape)}, {INPUT: net.input}
    used: set[str] = set()
    for layer in net.layers:
        w = f"layer {layer.name!r}"
        try:
            kind = layer.kind
        except KeyError as e:
            raise ArtifactError(f"{w}: {e.args[0]}") from None
        srcs = net.sources(layer)
        for s in srcs:
            if s not in shapes:
                raise ArtifactError(f"{w}: input {s!r} is not the network input or a layer before it")
        used.update(srcs)
        n_in = len(srcs)
        if not kind.accepts(n_in):
            raise ArtifactError(f"{w}: {layer.op} cannot read {n_in} inputs")
        in_shapes = [shapes[s] for s in srcs]
        in_fmts = [fmts[s] for s in srcs]
        shape, qp = in_shapes[0], in_fmts[0]
        in_shape = tuple(layer.in_shape)
        if kind.flattens and in_shape != shape:
            if int(np.prod(in_shape)) != int(np.prod(shape)) or len(in_shape) != 1:
                raise ArtifactError(f"{w}: in_shape {in_shape} does not flatten the input {shape}")
        elif in_shape != shape:
            raise ArtifactError(f"{w}: in_shape {in_shape} does not match its input {shape}")
        if kind.joins:
            if tuple(layer.input_formats) != tuple(in_fmts):
                raise ArtifactError(f"{w}: input_formats {list(layer.input_formats)} differ from its inputs' {in_fmts}")
            if any(f.binary for f in in_fmts) or layer.output.binary:
                raise ArtifactError(f"{w}: {layer.op} takes and gives affine (not binary) activations")
        elif layer.input != qp:
            raise ArtifactError(f"{w}: input quantization {layer.input} differs from its input's {qp}")
        if kind.window:
            if len(in_shape) != 3:
                raise ArtifactError(f"{w}: {layer.op} needs a (C, H, W) input, got {in_shape}")
            if min(layer.kernel) < 1 or min(layer.stride) < 1 or min(layer.padding) < 0:
                raise ArtifactError(f"{w}: kernel {layer.kernel}, stride {layer.stride}, padding {layer.padding} out of range")
        if kind.check is not None:
            why = kind.check(layer, in_shapes, in_fmts)
            if why:
                raise ArtifactError(f"{w}: {why}")
        if kind.keeps_format and layer.output != layer.input:
            raise ArtifactError(f"{w}: {layer.op} must keep the input quantization")
        if kind.weights:
            _validate_weights(layer, w)
        elif kind.requantizes:
            _validate_requant(layer, w, kind.array_shapes({"inputs": srcs})["m0"][0])
        elif layer.activation != "none":
            raise ArtifactError(f"{w}: {layer.op} cannot have activation {layer.activation!r}")
        out = expected_out_shape(layer, in_shapes)
        if min(out) < 1 or tuple(layer.out_shape) != out:
            raise ArtifactError(f"{w}: out_shape {tuple(layer.out_shape)} but the geometry gives {out}")
        shapes[layer.name], fmts[layer.name] = out, layer.output
    unread = [n for n in names[:-1] if n not in used]
    if unread:
        raise ArtifactError(f"layer {unread[0]!r}: nothing reads its output (the network's output is the last layer)")


def _validate_requant(layer: Layer, w: str, n: int) -> None:
    """§8–§10 constants: ``m0``/``shift`` per input (add, concat) or one (average pooling)."""
    for k in ("m0", "shift"):
        a = getattr(layer, k)
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu" or a.shape != (n,):
            raise ArtifactError(f"{w}: {k} must be {n} integer(s)")
    lo, hi = SHIFT_RANGE
    if np.any((layer.shift < lo) | (layer.shift > hi)):
        raise ArtifactError(f"{w}: shift must lie in {lo}..{hi}, got {layer.shift.tolist()}")
    if layer.op == "add":  # one shift, the largest multiplier normalized, the other at least 1 (the op's own rule)
        if len(set(layer.shift.tolist())) != 1 or np.any(layer.m0 < 1) or np.any(layer.m0 >= 1 << M0_BITS) \
                or layer.m0.max() < 1 << (M0_BITS - 1):
            raise ArtifactError(f"{w}: add needs one shift and multipliers in [1, 2**{M0_BITS}), the largest at "
                                f"least 2**{M0_BITS - 1}; got m0 {layer.m0.tolist()}, shift {layer.shift.tolist()}")
    elif np.any((layer.m0 < 1 << (M0_BITS - 1)) | (layer.m0 >= 1 << M0_BITS)):
        raise ArtifactError(f"{w}: m0 must lie in [2**{M0_BITS - 1}, 2**{M0_BITS}), got {layer.m0.tolist()}")
    if layer.activation not in (layer.kind.activations or ("none",)):
        raise ArtifactError(f"{w}: {layer.op} cannot have activation {layer.activation!r}")
    if not layer.output.qmin <= layer.out_min <= layer.out_max:
        raise ArtifactError(f"{w}: output clamp [{layer.out_min}, {layer.out_max}] is empty")


def _validate_weights(layer: Layer, w: str) -> None:
    if layer.activation not in layer.kind.activations:
        raise ArtifactError(f"{w}: unknown activation {layer.activation!r} (supported: {', '.join(layer.kind.activations)})")
    if (layer.activation == "sign") != layer.output.binary:
        raise ArtifactError(f"{w}: a binary (pm1) output needs activation 'sign' and vice versa "
                            f"(activation {layer.activation!r}, output encoding {layer.output.encoding!r})")
    if layer.input.binary != layer.format.binary_input:
        raise ArtifactError(f"{w}: format {layer.format.name} {'needs' if layer.input.binary else 'cannot take'} "
                            f"binary (pm1) inputs; input encoding is {layer.input.encoding!r}")
    for k in _LAYER_ARRAYS:
        a = getattr(layer, k)
        if not isinstance(a, np.ndarray):
            raise ArtifactError(f"{w}: {k} is missing")
        kind = "f" if k == "weight_scale" else "iu"
        if a.dtype.kind not in kind:
            raise ArtifactError(f"{w}: {k} has dtype {a.dtype}, expected {'float' if kind == 'f' else 'integer'}")
    codes = layer.codes
    cout = codes.shape[0] if codes.ndim else 0
    if layer.kind.window and (layer.groups < 1 or layer.in_shape[0] % layer.groups or cout % layer.groups):
        raise ArtifactError(f"{w}: groups {layer.groups} must divide the input channels {layer.in_shape[0]} and "
                            f"the output channels {cout}")
    if layer.kind.window:
        cin = layer.in_shape[0] // layer.groups
        if codes.ndim != 4 or codes.shape[1] != cin or tuple(codes.shape[2:]) != tuple(layer.kernel):
            raise ArtifactError(f"{w}: weight codes shape {codes.shape} does not match (Cout, {cin}, {layer.kernel[0]}, {layer.kernel[1]})")
    else:
        fan = int(np.prod(layer.in_shape))
        if codes.ndim != 2 or codes.shape[1] != fan:
            raise ArtifactError(f"{w}: weight codes shape {codes.shape} does not match (out, {fan})")
    for k in ("bias", "m0", "shift", "weight_scale"):
        a = getattr(layer, k)
        if a.shape != (cout,):
            raise ArtifactError(f"{w}: {k} shape {a.shape}, expected ({cout},)")
    try:
        layer.format.decode(codes)
    except FormatError as e:
        raise ArtifactError(f"{w}: {e}") from None
    if np.any((layer.m0 < 1 << (M0_BITS - 1)) | (layer.m0 >= 1 << M0_BITS)):
        raise ArtifactError(f"{w}: m0 must lie in [2**{M0_BITS - 1}, 2**{M0_BITS}), got {layer.m0.tolist()}")
    lo, hi = SHIFT_RANGE
    if np.any((layer.shift < lo) | (layer.shift > hi)):
        raise ArtifactError(f"{w}: shift must lie in {lo}..{hi}, got {layer.shift.tolist()}")
    if not np.all(np.isfinite(layer.weight_scale)) or np.any(layer.weight_scale <= 0):
        raise ArtifactError(f"{w}: weight_scale must be positive and finite")
    if not layer.output.qmin <= layer.out_min <= layer.out_max:
        raise ArtifactError(f"{w}: output clamp [{layer.out_min}, {layer.out_max}] is empty")
    # Golden accumulates in int64: the bound must leave room (docs/integer-semantics.md).
    if layer.accumulator_bits > 63:
        raise ArtifactError(f"{w}: accumulator needs {layer.accumulator_bits} bits, more than the 63 supported")
