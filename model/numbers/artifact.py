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

SCHEMA = "quantrtl.artifact"
SCHEMA_VERSION = 1
OPS = ("conv2d", "linear", "maxpool", "relu")
ACTIVATIONS = ("none", "relu", "sign")  # sign: binary (pm1) output, q = [acc >= 0]
#: Requantization multiplier: ``M0`` is an unsigned integer in [2**30, 2**31) (31 bits).
M0_BITS = 31
#: Allowed total right shift ``n`` of the requantization (``2**(n-1)`` is the rounding term).
SHIFT_RANGE = (1, 127)


class ArtifactError(ValueError):
    """A malformed, inconsistent or unreadable artifact."""


@dataclass(eq=False)
class Layer:
    """One layer of a quantized network.

    ``conv2d``/``linear`` layers carry ``codes`` (weight codes in ``format``), ``bias``
    (integer, in the accumulator's scale ``S_w[c] * S_x``), ``m0``/``shift`` per output
    channel and the output clamp ``[out_min, out_max]`` (ReLU fused as ``out_min =
    output.zero_point``).  ``maxpool``/``relu`` carry only geometry.
    Shapes are (C, H, W) for feature maps and (F,) for vectors; a linear layer reads
    its input flattened in C, H, W order.
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

    @property
    def has_weights(self) -> bool:
        return self.op in ("conv2d", "linear")

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


# ---- writing --------------------------------------------------------------------

def _layer_to_json(layer: Layer) -> dict:
    d: dict[str, Any] = {
        "name": layer.name,
        "op": layer.op,
        "in_shape": list(layer.in_shape),
        "out_shape": list(layer.out_shape),
        "input": layer.input.to_dict(),
        "output": layer.output.to_dict(),
    }
    if layer.op in ("conv2d", "maxpool"):
        d.update(kernel=list(layer.kernel), stride=list(layer.stride), padding=list(layer.padding))
    if layer.has_weights:
        d.update(
            activation=layer.activation,
            format=layer.format.to_dict(),
            out_min=layer.out_min,
            out_max=layer.out_max,
            accumulator_bits=layer.accumulator_bits,
            arrays={k: f"{layer.name}/{k}" for k in _LAYER_ARRAYS},
        )
    return d


_LAYER_ARRAYS = ("codes", "bias", "m0", "shift", "weight_scale")


def save(net: QuantizedNetwork, stem: str | os.PathLike) -> Path:
    """Write ``<stem>.npz`` and ``<stem>.json`` (suffixes appended); returns the JSON path.

    The network is validated first, and both files are written to temporary names
    and renamed, the JSON last, so a failure leaves no half-written artifact.
    """
    validate(net)
    stem = Path(stem)
    arrays = {}
    for layer in net.layers:
        if layer.has_weights:
            for k in _LAYER_ARRAYS:
                arrays[f"{layer.name}/{k}"] = getattr(layer, k)
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
        "layers": [_layer_to_json(l) for l in net.layers],
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


def _array_shapes(op: str, kw: dict, where: str) -> dict[str, tuple]:
    """The shape each array of a conv2d/linear layer must have, from the layer's JSON."""
    if not kw["out_shape"] or not kw["in_shape"]:
        raise ArtifactError(f"{where}: empty in_shape or out_shape")
    cout = kw["out_shape"][0]
    codes = (cout, kw["in_shape"][0], *kw["kernel"]) if op == "conv2d" else (cout, math.prod(kw["in_shape"]))
    return {"codes": codes, **{k: (cout,) for k in _LAYER_ARRAYS if k != "codes"}}


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
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{where}: artifact schema version {version!r} is not supported (this quantrtl reads version {SCHEMA_VERSION})")
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
        op = _need(ld, "op", lw, str)
        if op not in OPS:
            raise ArtifactError(f"{lw}: unknown op {op!r} (supported: {', '.join(OPS)})")
        kw: dict[str, Any] = dict(
            name=name, op=op,
            in_shape=_int_tuple(ld, "in_shape", lw), out_shape=_int_tuple(ld, "out_shape", lw),
            input=_qparams(_need(ld, "input", lw, dict), lw + " input"),
            output=_qparams(_need(ld, "output", lw, dict), lw + " output"),
        )
        if op in ("conv2d", "maxpool"):
            kw.update(kernel=_int_tuple(ld, "kernel", lw, 2), stride=_int_tuple(ld, "stride", lw, 2),
                      padding=_int_tuple(ld, "padding", lw, 2))
        if op in ("conv2d", "linear"):
            kw["activation"] = _need(ld, "activation", lw, str)
            try:
                kw["format"] = format_from_dict(_need(ld, "format", lw, dict))
            except FormatError as e:
                raise ArtifactError(f"{lw}: {e}") from None
            refs = _need(ld, "arrays", lw, dict)
            shapes = _array_shapes(op, kw, lw)
            for k in _LAYER_ARRAYS:
                kw[k] = _read_array(npz_path, _need(refs, k, lw + " arrays", str), shapes[k], lw)
        layers.append(Layer(**kw))
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


def conv_out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def expected_out_shape(layer: Layer) -> tuple[int, ...]:
    """Output shape implied by the layer's geometry (validation and generators)."""
    if layer.op in ("conv2d", "maxpool"):
        c, h, w = layer.in_shape
        oc = layer.codes.shape[0] if layer.op == "conv2d" else c
        return (oc,) + tuple(conv_out_size(n, k, s, p) for n, k, s, p in zip((h, w), layer.kernel, layer.stride, layer.padding))
    if layer.op == "linear":
        return (layer.codes.shape[0],)
    return layer.in_shape


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
    names = [l.name for l in net.layers]
    if len(set(names)) != len(names):
        raise ArtifactError(f"layer names are not unique: {names}")
    shape, qp = tuple(net.input_shape), net.input
    for layer in net.layers:
        w = f"layer {layer.name!r}"
        if layer.op not in OPS:
            raise ArtifactError(f"{w}: unknown op {layer.op!r} (supported: {', '.join(OPS)})")
        in_shape = tuple(layer.in_shape)
        if layer.op == "linear" and in_shape != shape:
            if int(np.prod(in_shape)) != int(np.prod(shape)) or len(in_shape) != 1:
                raise ArtifactError(f"{w}: in_shape {in_shape} does not flatten the previous output {shape}")
        elif in_shape != shape:
            raise ArtifactError(f"{w}: in_shape {in_shape} does not match the previous output {shape}")
        if layer.input != qp:
            raise ArtifactError(f"{w}: input quantization {layer.input} differs from the previous output {qp}")
        if layer.op in ("conv2d", "maxpool"):
            if len(in_shape) != 3:
                raise ArtifactError(f"{w}: {layer.op} needs a (C, H, W) input, got {in_shape}")
            if min(layer.kernel) < 1 or min(layer.stride) < 1 or min(layer.padding) < 0:
                raise ArtifactError(f"{w}: kernel {layer.kernel}, stride {layer.stride}, padding {layer.padding} out of range")
            if layer.op == "maxpool" and any(2 * p > k for p, k in zip(layer.padding, layer.kernel)):
                raise ArtifactError(f"{w}: maxpool padding {layer.padding} must be less than half the kernel {layer.kernel}")
        if layer.op in ("maxpool", "relu") and layer.output != layer.input:
            raise ArtifactError(f"{w}: {layer.op} must keep the input quantization")
        if layer.has_weights:
            _validate_weights(layer, w)
        out = expected_out_shape(layer)
        if min(out) < 1 or tuple(layer.out_shape) != out:
            raise ArtifactError(f"{w}: out_shape {tuple(layer.out_shape)} but the geometry gives {out}")
        shape, qp = out, layer.output


def _validate_weights(layer: Layer, w: str) -> None:
    if layer.activation not in ACTIVATIONS:
        raise ArtifactError(f"{w}: unknown activation {layer.activation!r} (supported: {', '.join(ACTIVATIONS)})")
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
    if layer.op == "conv2d":
        cin = layer.in_shape[0]
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
