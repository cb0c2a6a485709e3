"""Number formats: pure NumPy codecs from float weights to integer codes and back.

Every format follows one contract (:class:`Quantized`):

* ``encode(w)`` takes a float weight tensor whose axis 0 is the output channel and
  returns the integer *codes* (the unsigned bit patterns a weight memory stores,
  each in ``[0, 2**bits)``), the decoded integer weight *values* and a positive
  per-output-channel *scale*, so that ``w ≈ scale[c] * values``;
* ``decode(codes)`` maps codes back to the integer values (the hardware's view:
  the processing element multiplies an activation by exactly this value);
* ``code_space()`` lists every legal code, ``value_range()`` bounds the values,
  ``bits`` is the storage width of one code.

Weights are symmetric (zero point 0); NaN or infinite weights are rejected and
magnitudes below :data:`FLUSH_TO_ZERO` are flushed to zero.  Activations are a separate affine unsigned
format (:class:`ActivationFormat`).  This module must not import torch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

__all__ = [
    "FormatError",
    "Quantized",
    "WeightFormat",
    "BlockSourceFormat",
    "FixedFormat",
    "ShiftFormat",
    "TernaryFormat",
    "BinaryFormat",
    "XnorFormat",
    "ActivationFormat",
    "check_weights",
]


#: Weights smaller than this (about 1e-289) are treated as zero, so that every derived
#: scale (down to max|w| / 2**15 or 2**-30 · max|w|) stays a normal float64.
FLUSH_TO_ZERO = 2.0 ** -960


class FormatError(ValueError):
    """A format name, parameter or input that cannot be encoded or decoded."""


@dataclass(frozen=True, eq=False)
class Quantized:
    """The one return contract of every weight format.

    Attributes
    ----------
    codes : ndarray of int64
        Stored bit patterns, same shape as the weights, each in ``[0, 2**bits)``.
    values : ndarray of int64
        Decoded integer weight values (``format.decode(codes)``).
    scale : ndarray of float64
        Positive real scale per output channel (axis 0); ``w ≈ scale[c] * values``.
    format : WeightFormat
        The format that produced the codes.
    zero_point : int
        Always 0: weights are symmetric.
    """

    codes: np.ndarray
    values: np.ndarray
    scale: np.ndarray
    format: "WeightFormat"
    zero_point: int = 0

    def dequantize(self) -> np.ndarray:
        """Real weights ``scale[c] * values`` (float64)."""
        shape = (-1,) + (1,) * (self.values.ndim - 1)
        return self.scale.reshape(shape) * self.values


def check_weights(w) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if w.ndim < 1 or w.shape[0] == 0 or w.size == 0:
        raise FormatError(f"weights must have at least one output channel, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        bad = np.argwhere(~np.isfinite(w))[0]
        raise FormatError(f"weights contain a non-finite value ({w[tuple(bad)]}) at index {tuple(int(i) for i in bad)}")
    return np.where(np.abs(w) < FLUSH_TO_ZERO, 0.0, w)


def _per_channel(w: np.ndarray) -> np.ndarray:
    """View weights as (channels, elements)."""
    return w.reshape(w.shape[0], -1)


def _channel_shape(w: np.ndarray) -> tuple:
    return (-1,) + (1,) * (w.ndim - 1)


@dataclass(frozen=True)
class WeightFormat:
    """Base of all weight formats.  Subclasses set ``family`` and implement the codec."""

    family: ClassVar[str] = ""
    #: Layers in this format read binary (pm1) activations (``xnor``).
    binary_input: ClassVar[bool] = False
    bits: int

    # ---- naming ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.family}{self.bits}"

    def to_dict(self) -> dict:
        """Parameters as stored in the artifact (JSON types only)."""
        return {"name": self.name, "family": self.family, "bits": self.bits, **self.params()}

    # ---- per-layer parameters ----------------------------------------------------
    # Formats such as k-means or ABC-Net fit parameters (a codebook, basis scales) to
    # each layer.  ``parse_format("kmeans4")`` is then an *unfitted* spec whose
    # ``encode`` fits them; the returned :class:`Quantized` carries the fitted format,
    # which the artifact stores (``params`` in its format entry).

    def params(self) -> dict:
        """Fitted per-layer parameters (JSON types); empty for parameter-free formats."""
        return {}

    def with_params(self, d: dict) -> "WeightFormat":
        """This format with the parameters of an artifact entry ``d`` (validated)."""
        return self

    @property
    def fitted(self) -> bool:
        return True

    def for_input(self, in_shape: tuple) -> "WeightFormat":
        """The format for a layer whose input has ``in_shape`` (C, H, W) or (F,)."""
        return self

    #: Pipelines that start by pruning use this density (or plan) when none is given.
    default_density: ClassVar[float | str] = 1.0
    #: Fine-tuning epochs when none are given (None: the toolkit default) and learning rate.
    finetune_epochs: ClassVar[int | None] = None
    finetune_lr: ClassVar[float] = 5e-4

    # ---- hardware structure ------------------------------------------------------
    # The integer value of a weight is ``sum_k coefficients[k] * term_values(code)[k]``.
    # A PE forms one product per term (``term * act``, each an add/sub or a shift),
    # the array accumulates each term separately and multiplies by the per-layer
    # coefficients once per output.  One term with coefficient 1 is the plain MAC.

    @property
    def coefficients(self) -> tuple[int, ...]:
        return (1,)

    @property
    def terms(self) -> int:
        return len(self.coefficients)

    def term_values(self, codes) -> np.ndarray:
        """(terms, *codes.shape) integers whose coefficient-weighted sum is ``decode(codes)``."""
        return self.decode(codes)[None]

    def unrolled_groups(self, codes) -> list[tuple[int, np.ndarray]]:
        """One output channel's weights as ``[(constant, term values)]`` (hard-wired style)."""
        t = self.term_values(codes)
        return [(int(c), t[k]) for k, c in enumerate(self.coefficients)]

    #: Weights sharing one multiplier per block of this many consecutive fan-in positions.
    block: ClassVar[int] = 1

    #: Lane groups share work the datapath does once per step (pq: the table), so between
    #: groupings of equal cycles the engine takes the most groups rather than the fewest.
    prefers_more_groups: ClassVar[bool] = False

    @property
    def lane_block(self) -> int:
        """A lane group holds whole runs of this many consecutive fan-in positions (the
        weights that share structure in the datapath: unified blocks, pq sub-vectors)."""
        return self.block

    def check_layer(self, codes, op: str, source_shape: tuple | None, where: str = "") -> None:
        """Check that a layer's ``codes`` hold the structure the hardware relies on, for an
        engine of ``op`` streaming a ``source_shape`` input (a block-structured format's
        blocks); a :class:`FormatError` naming the layer (``where``) otherwise."""

    def faulty_codes(self, codes, index: int) -> np.ndarray:
        """A copy of a layer's ``codes`` whose stored code of weight ``index`` (flat) holds
        the legal value most different from its own (an injected weight fault)."""
        out = np.array(codes, dtype=np.int64)
        flat = out.reshape(-1)
        space = self.code_space()
        values = self.decode(space)
        current = self.decode(flat[index:index + 1])[0]
        flat[index] = space[np.argmax(np.abs(values - current))]
        return out

    def coded_streams(self, codes) -> int | None:
        """Losslessly coded bits of ``codes`` when the format has its own layout
        (:mod:`quantrtl.model.numbers.size`); ``None``: Huffman over dense or relative-index codes."""
        return None

    def storage(self, codes) -> dict[str, int]:
        """Bits this layer's weights need stored densely: codes plus per-layer parameters."""
        return {"codes": int(np.asarray(codes).size) * self.bits_per_weight, "params": 0}

    # ---- codec ----------------------------------------------------------------
    def encode(self, w) -> Quantized:
        w = check_weights(w)
        codes, scale = self._encode(w)
        codes = codes.astype(np.int64)
        return Quantized(codes=codes, values=self.decode(codes), scale=scale, format=self)

    def decode(self, codes) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu":
            raise FormatError(f"{self.name}: codes must be integers, got dtype {codes.dtype}")
        codes = codes.astype(np.int64)
        valid = np.isin(codes, self.code_space())
        if not np.all(valid):
            bad = np.argwhere(~valid)[0]
            raise FormatError(
                f"{self.name}: invalid code {int(codes[tuple(bad)])} at index "
                f"{tuple(int(i) for i in bad)}; legal codes are {self._describe_codes()}"
            )
        return self._decode(codes)

    def code_space(self) -> np.ndarray:
        """All legal codes, ascending."""
        return np.arange(1 << self.bits, dtype=np.int64)

    def value_range(self) -> tuple[int, int]:
        v = self._decode(self.code_space())
        return int(v.min()), int(v.max())

    @property
    def bits_per_weight(self) -> int:
        return self.bits

    def _describe_codes(self) -> str:
        cs = self.code_space()
        return f"{cs.tolist()}" if len(cs) <= 16 else f"{len(cs)} codes in [{cs.min()}, {cs.max()}]"

    # subclasses
    def _encode(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _decode(self, codes: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _twos(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers → unsigned ``bits``-wide two's-complement patterns."""
    return np.where(values < 0, values + (1 << bits), values)


def _from_twos(codes: np.ndarray, bits: int) -> np.ndarray:
    return np.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)


def _safe_scale(s: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """Give all-zero channels a positive scale (requantization needs one).

    Their weights decode to 0 in every format that has a zero, so any positive scale
    is exact; the mean scale of the other channels keeps the bias resolution typical
    (1.0 when every channel is zero).  ``factor`` shrinks it for formats without a zero.
    """
    pos = s[s > 0]
    fallback = (float(pos.mean()) if pos.size else 1.0) * factor
    return np.where(s > 0, s, fallback)


@dataclass(frozen=True)
class FixedFormat(WeightFormat):
    """``fixedN``: symmetric per-channel integers in ``[-(2**(N-1)-1), 2**(N-1)-1]``.

    ``scale[c] = max|w_c| / qmax``, ``q = round_half_even(w / scale)``.  The most negative
    two's-complement pattern is not used, so the range is symmetric.
    """

    family: ClassVar[str] = "fixed"
    BITS: ClassVar[range] = range(2, 17)

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def _encode(self, w):
        wc = _per_channel(w)
        scale = _safe_scale(np.abs(wc).max(axis=1) / self.qmax)
        q = np.clip(np.rint(w / scale.reshape(_channel_shape(w))), -self.qmax, self.qmax)
        return _twos(q.astype(np.int64), self.bits), scale

    def _decode(self, codes):
        return _from_twos(codes, self.bits)

    def codes_of(self, values) -> np.ndarray:
        """The codes of exact integer weight values (an imported model's own quantization)."""
        v = np.asarray(values, dtype=np.int64)
        if v.size and np.abs(v).max() > self.qmax:
            raise FormatError(f"{self.name}: values must lie in [-{self.qmax}, {self.qmax}], got [{v.min()}, {v.max()}]")
        return _twos(v, self.bits)

    def code_space(self):
        return np.sort(_twos(np.arange(-self.qmax, self.qmax + 1, dtype=np.int64), self.bits))


def inq_emax(m) -> np.ndarray:
    """INQ's ``e_max = floor(log2(4/3 * m))`` computed exactly (0 where ``m`` is 0)."""
    m = np.asarray(m, dtype=np.float64)
    safe = np.where(m > 0, m, 1.0)
    # frexp gives m = f * 2**k with f in [0.5, 1); 4/3*m >= 2**k <=> f >= 3/4.
    f, k = np.frexp(safe)
    return np.where(m > 0, np.where(f >= 0.75, k, k - 1), 0).astype(np.int64)


def pow2_level(a, levels: int) -> np.ndarray:
    """INQ rounding of magnitudes ``a`` in units of the smallest level: 0 or ``k`` in
    ``1..levels`` meaning ``2**(k-1)``.  ``a`` in ``[3/4 * 2**p, 3/2 * 2**p)`` maps to
    ``2**p``; below 1/2 to zero; above the window it saturates."""
    a = np.asarray(a, dtype=np.float64)
    f, k = np.frexp(np.where(a > 0, a, 1.0))  # a = f * 2**k, f in [0.5, 1)
    p = np.where(f < 0.75, k - 1, k)  # nearest power of two in the linear domain: a ≈ 2**p
    kk = np.clip(p + 1, 1, levels)
    return np.where(a < 0.5, 0, kk).astype(np.int64)


@dataclass(frozen=True)
class ShiftFormat(WeightFormat):
    """``shiftN``: zero or ``±2**e`` (INQ), N = 3..6.

    Code layout: bit ``N-1`` is the sign (1 = negative), the low ``N-1`` bits hold ``k``;
    ``k = 0`` is zero (the sign bit must then be 0) and ``k = 1 .. 2**(N-1)-1`` is the
    exponent ``e = e_min + k - 1``.  The integer value is ``±2**(k-1)`` and the channel
    scale is ``2**e_min``, with ``e_max = floor(log2(4/3 * max|w_c|))`` (INQ) and
    ``e_min = e_max - (2**(N-1) - 2)``.

    Rounding is INQ's: ``|w|`` in ``[3/4 * 2**e, 3/2 * 2**e)`` maps to ``2**e``;
    ``|w| < 2**e_min / 2`` maps to zero; larger magnitudes saturate at ``2**e_max``.
    """

    family: ClassVar[str] = "shift"
    BITS: ClassVar[range] = range(3, 7)

    @property
    def levels(self) -> int:
        """Number of nonzero magnitudes (exponents) in the window."""
        return (1 << (self.bits - 1)) - 1

    def exponent_window(self, w) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(e_min, e_max)`` for weights ``w``."""
        e_max = inq_emax(np.abs(_per_channel(np.asarray(w, dtype=np.float64))).max(axis=1))
        return e_max - (self.levels - 1), e_max

    def _encode(self, w):
        e_min, _ = self.exponent_window(w)
        shape = _channel_shape(w)
        # magnitude in units of 2**e_min (exact: scaling by a power of two)
        kk = pow2_level(np.ldexp(np.abs(w), -e_min.reshape(shape)), self.levels)
        sign = (w < 0) & (kk > 0)
        codes = (sign.astype(np.int64) << (self.bits - 1)) | kk.astype(np.int64)
        return codes, np.ldexp(1.0, e_min).astype(np.float64)

    def _decode(self, codes):
        k = codes & ((1 << (self.bits - 1)) - 1)
        neg = (codes >> (self.bits - 1)) & 1
        mag = np.where(k > 0, np.left_shift(np.int64(1), np.maximum(k - 1, 0)), 0)
        return np.where(neg == 1, -mag, mag).astype(np.int64)

    def code_space(self):
        k = np.arange(1, self.levels + 1, dtype=np.int64)
        neg = k | (1 << (self.bits - 1))
        return np.sort(np.concatenate([[0], k, neg]))


@dataclass(frozen=True)
class TernaryFormat(WeightFormat):
    """``ternary``: values in {-1, 0, +1} (TWN).

    Threshold ``Δ_c = 0.7 * mean|w_c|``; scale ``α_c = mean(|w| for |w| > Δ_c)``.
    Codes are 2-bit two's complement: 0 → 0, 1 → +1, 3 → -1 (2 is illegal).
    """

    family: ClassVar[str] = "ternary"
    bits: int = 2
    DELTA: ClassVar[float] = 0.7

    @property
    def name(self) -> str:
        return "ternary"

    def _encode(self, w):
        wc = _per_channel(w)
        delta = self.DELTA * np.abs(wc).mean(axis=1)
        big = np.abs(wc) > delta[:, None]
        n = big.sum(axis=1)
        alpha = np.where(n > 0, (np.abs(wc) * big).sum(axis=1) / np.maximum(n, 1), 0.0)
        q = (np.sign(w) * big.reshape(w.shape)).astype(np.int64)
        return _twos(q, 2), _safe_scale(alpha)

    def _decode(self, codes):
        return _from_twos(codes, 2)

    def code_space(self):
        return np.array([0, 1, 3], dtype=np.int64)


@dataclass(frozen=True)
class BinaryFormat(WeightFormat):
    """``binary``: values in {-1, +1}; scale ``α_c = mean|w_c|`` (XNOR-Net / BWN).

    One bit per weight: code 0 → +1, code 1 → -1 (the sign bit).  Zero encodes as +1.
    Binary has no zero, so an all-zero channel cannot be exact: it gets +1 values with
    ``2**-16`` times the layer's mean scale, i.e. weights of (almost) nothing.
    """
    ZERO_CHANNEL_FACTOR: ClassVar[float] = 2.0 ** -16

    family: ClassVar[str] = "binary"
    bits: int = 1

    @property
    def name(self) -> str:
        return "binary"

    def _encode(self, w):
        alpha = np.abs(_per_channel(w)).mean(axis=1)
        return (w < 0).astype(np.int64), _safe_scale(alpha, self.ZERO_CHANNEL_FACTOR)

    def _decode(self, codes):
        return 1 - 2 * codes

    def codes_of(self, values) -> np.ndarray:
        """The codes of exact ±1 weight values (an imported model's own quantization)."""
        v = np.asarray(values, dtype=np.int64)
        if v.size and not np.isin(v, (-1, 1)).all():
            raise FormatError(f"binary: values must be -1 or +1, got {sorted(set(v.ravel().tolist()))[:4]}")
        return (v < 0).astype(np.int64)


@dataclass(frozen=True)
class ParamFormat(WeightFormat):
    """Base of formats with fitted per-layer parameters.

    Subclasses list their parameter fields in ``PARAMS`` (each ``None`` while unfitted)
    and implement ``fit(w)`` → the fitted format; ``encode`` on an unfitted format fits
    first.  Parameters are stored as JSON numbers or lists of integers.
    """

    PARAMS: ClassVar[tuple[str, ...]] = ()

    @property
    def fitted(self) -> bool:
        return all(getattr(self, p) is not None for p in self.PARAMS)

    def params(self) -> dict:
        out = {}
        for p in self.PARAMS:
            v = getattr(self, p)
            out[p] = list(v) if isinstance(v, tuple) else v
        return out

    def with_params(self, d: dict) -> "WeightFormat":
        kw = {}
        for p in self.PARAMS:
            if p not in d:
                raise FormatError(f"{self.name}: format entry lacks its parameter {p!r}")
            v = d[p]
            kw[p] = tuple(v) if isinstance(v, list) else v
        try:
            return dataclasses.replace(self, **kw)
        except (TypeError, ValueError) as e:
            raise FormatError(f"{self.name}: bad parameters in format entry: {e}") from None

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise FormatError(f"{self.name}: format has no fitted parameters ({', '.join(self.PARAMS)})")

    def encode(self, w) -> Quantized:
        if not self.fitted:
            return self.fit(check_weights(w)).encode(w)
        return super().encode(w)

    def decode(self, codes) -> np.ndarray:
        self._require_fitted()
        return super().decode(codes)

    def value_range(self) -> tuple[int, int]:
        self._require_fitted()
        return super().value_range()

    def fit(self, w: np.ndarray) -> "ParamFormat":  # pragma: no cover - abstract
        raise NotImplementedError


class BlockSourceFormat(ParamFormat):
    """A fitted format whose structure follows the fan-in order: a ``block`` size and, for
    a classifier reading a (C, H, W) map, that ``source`` map (whose stream order the
    blocks follow); both are stored in the artifact beside the fitted parameters
    (``unified`` blocks, ``pq`` sub-vectors).  Subclasses declare the two fields."""

    def params(self):
        return {"block": self.block, "source": list(self.source) if self.source else None, **super().params()}

    def with_params(self, d):
        for key in ("block", "source"):
            if key not in d:
                raise FormatError(f"{self.name}: format entry lacks its parameter {key!r}")
        try:
            base = dataclasses.replace(self, block=d["block"], source=tuple(d["source"]) if d["source"] else None)
        except (TypeError, ValueError) as e:
            raise FormatError(f"{self.name}: bad parameters in format entry: {e}") from None
        return ParamFormat.with_params(base, d)

    def for_input(self, in_shape):
        return dataclasses.replace(self, source=tuple(int(v) for v in in_shape) if len(in_shape) == 3 else None)


def check_int_list(name: str, what: str, values, n: int, lo: int, hi: int) -> None:
    """Validate a fitted integer list parameter (length ``n``, each in ``[lo, hi]``)."""
    if values is None:
        return
    if len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in values):
        raise FormatError(f"{name}: {what} must be {n} integers in [{lo}, {hi}], got {list(values)!r}")


def check_scale(name: str, scale) -> None:
    if scale is not None and not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
        raise FormatError(f"{name}: scale must be a positive finite float, got {scale!r}")


def quantize_coefficients(c, bits: int) -> tuple[tuple[int, ...], float]:
    """Real per-layer constants → symmetric ``bits``-bit integers and their scale."""
    c = np.asarray(c, dtype=np.float64)
    qmax = (1 << (bits - 1)) - 1
    top = float(np.abs(c).max()) if c.size else 0.0
    scale = top / qmax if top > FLUSH_TO_ZERO else 1.0
    q = np.clip(np.rint(c / scale), -qmax, qmax).astype(np.int64)
    return tuple(int(v) for v in q), float(scale)


@dataclass(frozen=True)
class XnorFormat(BinaryFormat):
    """``xnor``: binary weights on binary (pm1) activations (BCNN / XNOR-Net).

    The weights are coded as in ``binary`` (0 → +1, 1 → -1); a layer in this format
    reads ±1 activations ``2a - 1`` from 1-bit codes ``a``, so ``w * x = +1`` exactly
    when ``a XOR code`` is 1: the PE is an XOR (an XNOR of the sign bits) and the
    dot product is ``2 * popcount - K``.  Hidden layers binarize their output (sign,
    the threshold folded into the integer bias); the network's first layer keeps its
    8-bit input and uses ``binary`` weights (:meth:`layer_format`), the last layer
    outputs 8-bit logits.
    """

    family: ClassVar[str] = "xnor"
    binary_input: ClassVar[bool] = True
    #: Binary activations need longer training from the float checkpoint (BCNN's STE).
    finetune_epochs: ClassVar[int] = 60
    finetune_lr: ClassVar[float] = 2e-3

    @property
    def name(self) -> str:
        return "xnor"

    def layer_format(self, first: bool) -> WeightFormat:
        """The weight format of a layer: ``binary`` for the first (8-bit input), else xnor."""
        return BinaryFormat() if first else self


# ---- activations ----------------------------------------------------------------

#: Activation encodings: ``affine`` (``real = scale * (q - zero_point)``) and ``pm1``, the
#: binary activations of XNOR networks (1 bit, ``real = scale * (2q - 1)``, i.e. ±scale).
ENCODINGS = ("affine", "pm1")


def centered(q, zero_point: int, binary: bool) -> np.ndarray:
    """Integer activation values the MACs see: ``q - Z`` (affine) or ``2q - 1`` (pm1)."""
    q = np.asarray(q, dtype=np.int64)
    return 2 * q - 1 if binary else q - zero_point


@dataclass(frozen=True)
class ActivationFormat:
    """Unsigned activation codes q in [qmin, qmax]: affine ``real = scale * (q - zero_point)``
    or binary ``pm1`` (``bits = 1``, ``zero_point = 0``, ``real = scale * (2q - 1)``)."""

    scale: float
    zero_point: int = 0
    bits: int = 8
    encoding: str = "affine"
    #: Calibrated ranges narrower than this are widened to it (keeps the scale normal).
    MIN_SPAN: ClassVar[float] = 2.0 ** -30

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise FormatError(f"activation encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.encoding == "pm1" and (self.bits != 1 or self.zero_point != 0):
            raise FormatError(f"pm1 (binary) activations have bits 1 and zero point 0, got bits {self.bits}, "
                              f"zero point {self.zero_point}")
        if not (isinstance(self.scale, float) and math.isfinite(self.scale) and self.scale > 0):
            raise FormatError(f"activation scale must be a positive finite float, got {self.scale!r}")
        if not 1 <= self.bits <= 16:
            raise FormatError(f"activation bits {self.bits} out of range 1..16")
        if not 0 <= self.zero_point <= self.qmax:
            raise FormatError(f"activation zero point {self.zero_point} outside [0, {self.qmax}]")

    def to_dict(self) -> dict:
        """The artifact's activation entry (affine entries keep the schema-1 form)."""
        d = {"scale": self.scale, "zero_point": self.zero_point, "bits": self.bits}
        if self.binary:
            d["encoding"] = self.encoding
        return d

    @property
    def qmin(self) -> int:
        return 0

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @classmethod
    def from_range(cls, lo: float, hi: float, bits: int = 8) -> "ActivationFormat":
        """Calibrated range → scale and zero point (range widened to include 0)."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        qmax = (1 << bits) - 1
        if hi - lo <= 0:  # a dead tensor (always 0): any scale is exact
            return cls(scale=1.0, zero_point=0, bits=bits)
        scale = max(hi - lo, cls.MIN_SPAN) / qmax
        zp = int(np.clip(round(-lo / scale), 0, qmax))
        return cls(scale=float(scale), zero_point=zp, bits=bits)

    @property
    def binary(self) -> bool:
        return self.encoding == "pm1"

    def centered(self, q) -> np.ndarray:
        """Integer activation values the MACs see (:func:`centered`)."""
        return centered(q, self.zero_point, self.binary)

    def quantize(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.binary:  # sign, with sign(0) = +1
            return (x >= 0).astype(np.int64)
        q = np.rint(x / self.scale) + self.zero_point
        return np.clip(q, self.qmin, self.qmax).astype(np.int64)

    def dequantize(self, q) -> np.ndarray:
        return self.scale * self.centered(q).astype(np.float64)
