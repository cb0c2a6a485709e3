"""``unified``: micro-structured weight unification and pruning (seed 001).

Each output channel's weights, taken in the hardware's fan-in order (kernel position
major, input channel fastest: ``model.layout``), are cut into blocks of ``block``
consecutive weights (B input channels of one kernel position when B divides C_in; the
last block of a row may be shorter).  Within a block all weights share one
magnitude and keep their signs ("unification"); a block of magnitude 0 is pruned.

:func:`project` is the Euclidean projection used by ADMM (:mod:`quantrtl.model.training.admm`): the
shared magnitude of a block is the mean of its ``|w|``, and only the largest
``ceil(density * blocks)`` blocks of the layer survive.  The format then stores a
sign bit per weight and a 7-bit magnitude per block (with one per-layer scale).

Codes are 8-bit sign-magnitude (bit 7 = negative); every code of a block carries the
block's magnitude, and :meth:`UnifiedFormat.check_blocks` verifies that.  Hardware:
an add/sub per weight, an adder over the block and one multiply per block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from quantrtl.model.numbers.formats import BlockSourceFormat, FormatError, check_scale
from quantrtl.model.numbers.layout import stream_to_chw_index

__all__ = ["UnifiedFormat", "project", "fanin_matrix", "from_fanin_matrix", "block_magnitudes"]


def fanin_matrix(w: np.ndarray, source: tuple | None = None) -> np.ndarray:
    """(cout, K) weights in the hardware's fan-in order."""
    w = np.asarray(w)
    if w.ndim == 4:
        return np.transpose(w, (0, 2, 3, 1)).reshape(w.shape[0], -1)
    w2 = w.reshape(w.shape[0], -1)
    return w2[:, stream_to_chw_index(tuple(source))] if source else w2


def from_fanin_matrix(m: np.ndarray, shape: tuple, source: tuple | None = None) -> np.ndarray:
    """Inverse of :func:`fanin_matrix`."""
    if len(shape) == 4:
        cout, cin, kh, kw = shape
        return np.transpose(m.reshape(cout, kh, kw, cin), (0, 3, 1, 2))
    out = np.empty_like(m)
    if source:
        out[:, stream_to_chw_index(tuple(source))] = m
    else:
        out[:] = m
    return out.reshape(shape)


def _blocks(m: np.ndarray, block: int) -> np.ndarray:
    """(cout, K) → (cout, nblocks, block), the short last block padded with zeros."""
    cout, k = m.shape
    nb = math.ceil(k / block)
    padded = np.zeros((cout, nb * block), dtype=m.dtype)
    padded[:, :k] = m
    return padded.reshape(cout, nb, block)


def block_magnitudes(w: np.ndarray, block: int, source: tuple | None = None) -> np.ndarray:
    """(cout, nblocks) mean |w| of each block (the projection's shared magnitude)."""
    m = fanin_matrix(np.asarray(w, dtype=np.float64), source)
    k = m.shape[1]
    sizes = np.full(math.ceil(k / block), block)
    sizes[-1] = k - block * (len(sizes) - 1)
    return np.abs(_blocks(m, block)).sum(axis=2) / sizes


def project(w, block: int, density: float = 1.0, source: tuple | None = None) -> np.ndarray:
    """Projection onto the unified set: blocks share ``mean|w|`` with signs kept, and all
    but the ``ceil(density * blocks)`` largest blocks of the layer are zero."""
    w = np.asarray(w, dtype=np.float64)
    mags = block_magnitudes(w, block, source)
    keep = max(1, math.ceil(density * mags.size))
    order = np.argsort(-mags.ravel(), kind="stable")
    kept = np.zeros(mags.size, dtype=bool)
    kept[order[:keep]] = True
    mags = np.where(kept.reshape(mags.shape), mags, 0.0)
    m = fanin_matrix(w, source)
    k = m.shape[1]
    per_weight = np.repeat(mags, block, axis=1)[:, :k]
    signs = np.where(m < 0, -1.0, 1.0)
    return from_fanin_matrix(signs * per_weight, w.shape, source)


@dataclass(frozen=True)
class UnifiedFormat(BlockSourceFormat):
    """Sign bit per weight, one 7-bit magnitude per block of ``block`` weights."""

    family: ClassVar[str] = "unified"
    MAG_BITS: ClassVar[int] = 7
    PARAMS: ClassVar[tuple[str, ...]] = ("scale",)
    #: Fraction of blocks ADMM keeps: the first layer (9 weights per channel here) dense.
    default_density: ClassVar[str] = "first=1.0,*=0.5"
    finetune_epochs: ClassVar[int] = 20
    bits: int = 8
    block: int = 4
    source: tuple | None = None
    scale: float | None = None

    def __post_init__(self):
        if not (isinstance(self.block, int) and 1 <= self.block <= 64):
            raise ValueError(f"unified: block size must be in 1..64, got {self.block!r}")
        if self.source is not None and not (len(self.source) == 3 and all(isinstance(v, int) and v > 0 for v in self.source)):
            raise ValueError(f"unified: source shape must be three positive integers, got {self.source!r}")
        check_scale(self.name, self.scale)

    @property
    def name(self) -> str:
        return "unified"

    @property
    def qmax(self) -> int:
        return (1 << self.MAG_BITS) - 1

    def fit(self, w):
        mags = block_magnitudes(w, self.block, self.source)
        top = float(mags.max()) if mags.size else 0.0
        return replace(self, scale=top / self.qmax if top > 0 else 1.0)

    def _encode(self, w):
        mags = np.clip(np.rint(block_magnitudes(w, self.block, self.source) / self.scale), 0, self.qmax).astype(np.int64)
        m = fanin_matrix(w, self.source)
        per = np.repeat(mags, self.block, axis=1)[:, :m.shape[1]]
        neg = ((m < 0) & (per > 0)).astype(np.int64)
        codes = from_fanin_matrix(per | (neg << self.MAG_BITS), w.shape, self.source)
        return codes, np.full(w.shape[0], self.scale)

    def _decode(self, codes):
        mag = codes & self.qmax
        return np.where(codes >> self.MAG_BITS, -mag, mag)

    def code_space(self):
        mags = np.arange(self.qmax + 1, dtype=np.int64)
        return np.concatenate([mags, mags[1:] | (1 << self.MAG_BITS)])

    def check_layer(self, codes, op: str, source_shape: tuple | None, where: str = "") -> None:
        """The MAC array multiplies one magnitude per block of lanes: the blocks must be cut
        in the order the engine streams the input, and every block must be unified."""
        if op == "linear" and tuple(self.source or ()) != tuple(source_shape or ()):
            raise FormatError(f"{where}unified blocks were cut for input {self.source}, "
                              f"but the engine streams {source_shape}")
        self.check_blocks(codes, where)

    def check_blocks(self, codes, where: str = "") -> None:
        """Raise :class:`FormatError` unless every block shares one magnitude."""
        mags = _blocks(fanin_matrix(np.asarray(codes) & self.qmax, self.source), self.block)
        k = fanin_matrix(np.asarray(codes), self.source).shape[1]
        last = k - self.block * (mags.shape[1] - 1)
        full = mags[:, :-1, :]
        bad = np.argwhere(full != full[:, :, :1])
        if bad.size == 0:
            tail = mags[:, -1, :last]
            bad = np.argwhere(tail != tail[:, :1])
            bad = np.column_stack([bad[:, 0], np.full(len(bad), mags.shape[1] - 1), bad[:, 1]]) if bad.size else bad
        if bad.size:
            c, b, _ = (int(v) for v in bad[0])
            raise FormatError(f"{where}unified block {b} of output channel {c} is not unified "
                              f"(magnitudes {sorted(set(mags[c, b].tolist()))})")

    def unrolled_groups(self, codes):
        """One group per block: the block's magnitude times its signs."""
        codes = np.asarray(codes)
        order = fanin_matrix(np.arange(codes.size).reshape((1,) + codes.shape), self.source)[0]
        groups = []
        for j in range(0, len(order), self.block):
            idx = order[j:j + self.block]
            mag = int(codes.ravel()[idx[0]] & self.qmax)
            t = np.zeros(codes.size, dtype=np.int64)
            t[idx] = np.where(codes.ravel()[idx] >> self.MAG_BITS, -1, 1) * (mag > 0)
            groups.append((mag, t.reshape(codes.shape)))
        return groups

    def coded_streams(self, codes):
        """Block magnitudes (0 = pruned block; Huffman coded when that pays) and a sign bit
        per weight of every kept block."""
        from quantrtl.model.numbers.size import huffman_bits

        codes = np.asarray(codes)
        mags = _blocks(fanin_matrix(codes & self.qmax, self.source), self.block)[:, :, 0]
        k = fanin_matrix(codes, self.source).shape[1]
        sizes = np.full(mags.shape[1], self.block)
        sizes[-1] = k - self.block * (mags.shape[1] - 1)
        signs = int(((mags > 0) * sizes).sum())
        return min(huffman_bits(mags, self.qmax + 1), mags.size * self.MAG_BITS) + signs

    def storage(self, codes):
        """A sign bit per weight and a magnitude per block (both count as codes)."""
        codes = np.asarray(codes)
        nblocks = codes.shape[0] * math.ceil(int(np.prod(codes.shape[1:])) / self.block)
        return {"codes": int(codes.size) + nblocks * self.MAG_BITS, "params": 0}
