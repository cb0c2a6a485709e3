"""``pqN``: product quantization (Quantized CNN, Wu et al., CVPR 2016; seed 003).

A layer's inputs are split along the channels into subspaces of ``sub`` consecutive
channels (the sub-vector length: the largest divisor of the layer's channel count not
above the requested ``block``).  In subspace ``m`` the weights of every output channel
and every kernel (or map) position form sub-vectors of length ``sub``; each is replaced
by one of ``K = 2**N`` codewords of that subspace's codebook, shared by the output
channels and the positions.  The layer stores an ``N``-bit index per sub-vector and the
codebooks, whose entries are signed 8-bit integers with one per-layer scale, so every
inner product of a codeword with an input sub-vector is an exact integer.

Channels and positions by layer kind (the weights viewed as ``(cout, C, P)``):

* conv2d: ``C`` input channels (of the group), ``P = kh * kw`` kernel positions;
* linear reading a ``(C, H, W)`` map (``source``): the map's ``C`` channels and its
  ``H * W`` pixels, codebooks shared by the pixels as a conv's by its kernel positions;
* plain linear: ``C`` = the fan-in and ``P = 1`` (one codebook per subspace of inputs).

Codes are stored per weight as the index of its sub-vector's codeword (every weight of
a sub-vector carries the same index; :meth:`PQFormat.check_layer` verifies it), so the
artifact keeps its one shape for codes; the honest size counts one index per sub-vector.
A weight's value depends on its position (the codeword entry it takes), so decoding
needs a whole layer's codes.  Hardware (``hw/pq.py``): a table builder forms the inner
products of the input sub-vectors with every codeword once, output channels add the
table entries their indices select.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from quantrtl.model.numbers.formats import BlockSourceFormat, FormatError, check_scale, quantize_coefficients

__all__ = ["PQFormat", "kmeans", "sub_length"]


def sub_length(channels: int, block: int) -> int:
    """The sub-vector length of a layer with ``channels`` channels: the largest divisor of
    ``channels`` that is at most ``block``."""
    return max(d for d in range(1, min(block, channels) + 1) if channels % d == 0)


def kmeans(points, k: int, seed: int = 0, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """k-means of ``points`` (n, d) into ``k`` clusters: ``(centroids (k, d), assignment (n,))``.

    k-means++ seeding from ``numpy.random.default_rng(seed)``, then Lloyd iterations until
    the assignment is stable; an emptied cluster keeps its centroid.  With at most ``k``
    distinct points each gets its own centroid (the rest are zero).  Deterministic.
    """
    x = np.asarray(points, dtype=np.float64)
    n, d = x.shape
    c = np.zeros((k, d))
    if n == 0:
        return c, np.zeros(0, dtype=np.int64)
    distinct = np.unique(x, axis=0)
    if len(distinct) <= k:
        c[:len(distinct)] = distinct
        return c, ((x[:, None, :] - c[None, :len(distinct), :]) ** 2).sum(axis=2).argmin(axis=1)
    rng = np.random.default_rng(seed)
    c[0] = x[rng.integers(n)]
    dist = ((x - c[0]) ** 2).sum(axis=1)
    for i in range(1, k):
        p = dist / dist.sum() if dist.sum() > 0 else np.full(n, 1.0 / n)
        c[i] = x[rng.choice(n, p=p)]
        dist = np.minimum(dist, ((x - c[i]) ** 2).sum(axis=1))
    assign = None
    for _ in range(iterations):
        new = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return c, assign


@dataclass(frozen=True)
class PQFormat(BlockSourceFormat):
    """``pqN``: an ``N``-bit codeword index per sub-vector, per-subspace codebooks."""

    family: ClassVar[str] = "pq"
    BITS: ClassVar[range] = range(2, 9)
    CODEWORD_BITS: ClassVar[int] = 8
    PARAMS: ClassVar[tuple[str, ...]] = ("sub", "subspaces", "codebooks", "scale")
    finetune_epochs: ClassVar[int] = 10
    prefers_more_groups: ClassVar[bool] = True
    bits: int = 4
    block: int = 4
    source: tuple | None = None
    sub: int | None = None
    subspaces: int | None = None
    codebooks: tuple | None = None
    scale: float | None = None

    def __post_init__(self):
        if not (isinstance(self.block, int) and 1 <= self.block <= 256):
            raise ValueError(f"{self.name}: sub-vector length (block) must be in 1..256, got {self.block!r}")
        if self.source is not None and not (len(self.source) == 3 and all(isinstance(v, int) and v > 0
                                                                         for v in self.source)):
            raise ValueError(f"{self.name}: source shape must be three positive integers, got {self.source!r}")
        for what in ("sub", "subspaces"):
            v = getattr(self, what)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{self.name}: {what} must be a positive integer, got {v!r}")
        if self.codebooks is not None:
            if self.sub is None or self.subspaces is None:
                raise ValueError(f"{self.name}: codebooks need sub and subspaces")
            n = self.subspaces * self.codewords * self.sub
            q = (1 << (self.CODEWORD_BITS - 1)) - 1
            if len(self.codebooks) != n or not all(isinstance(v, int) and not isinstance(v, bool) and -q <= v <= q
                                                   for v in self.codebooks):
                raise ValueError(f"{self.name}: codebooks must be {n} integers in [-{q}, {q}] "
                                 f"({self.subspaces} subspaces x {self.codewords} codewords x {self.sub})")
        check_scale(self.name, self.scale)

    # ---- naming and parameters -----------------------------------------------------
    @property
    def codewords(self) -> int:
        """K, codewords per subspace."""
        return 1 << self.bits

    # ---- the layer's subspace view ---------------------------------------------------
    def channels(self, shape: tuple) -> tuple[int, int]:
        """``(C, P)``: channels and positions of a layer whose weights have ``shape``
        (``(cout, C, *positions)``; ``(cout,)``: one channel, one position)."""
        shape = tuple(shape)
        if len(shape) == 0:
            raise FormatError(f"{self.name}: decoding needs a whole layer's codes (out, in[, kh, kw]), got a scalar")
        if len(shape) == 1:
            return 1, 1
        if len(shape) > 2 or self.source is None:
            return shape[1], int(np.prod(shape[2:], dtype=np.int64))
        c, h, w = self.source
        if c * h * w != shape[1]:
            raise FormatError(f"{self.name}: codebooks were cut for an input {self.source}, "
                              f"but the layer has {shape[1]} inputs")
        return c, h * w

    def subvectors(self, a) -> np.ndarray:
        """A layer's weights (or codes) as ``(cout, M, P, sub)`` sub-vectors."""
        a = np.asarray(a)
        c, p = self.channels(a.shape)
        sub = self.sub if self.sub is not None else sub_length(c, self.block)
        if c % sub:
            raise FormatError(f"{self.name}: sub-vector length {sub} does not divide the layer's {c} channels")
        return a.reshape(a.shape[0], c // sub, sub, p).transpose(0, 1, 3, 2)

    def from_subvectors(self, v: np.ndarray, shape: tuple) -> np.ndarray:
        """Inverse of :meth:`subvectors`."""
        cout, m, p, sub = v.shape
        return v.transpose(0, 1, 3, 2).reshape(shape)

    @property
    def lane_block(self) -> int:
        """A lane group holds whole sub-vectors."""
        return self.sub or 1

    @property
    def codebook_array(self) -> np.ndarray:
        """(M, K, sub) integer codewords."""
        self._require_fitted()
        return np.asarray(self.codebooks, dtype=np.int64).reshape(self.subspaces, self.codewords, self.sub)

    def _check_shape(self, shape) -> None:
        c, _ = self.channels(shape)
        if c != self.subspaces * self.sub:
            raise FormatError(f"{self.name}: codebooks cover {self.subspaces} x {self.sub} channels, "
                              f"the layer has {c}")

    # ---- codec ------------------------------------------------------------------------
    def fit(self, w):
        """k-means per subspace over its sub-vectors (every output channel and position)."""
        c, _ = self.channels(w.shape)
        fmt = replace(self, sub=sub_length(c, self.block), subspaces=c // sub_length(c, self.block))
        v = fmt.subvectors(w)
        books = [kmeans(v[:, m].reshape(-1, fmt.sub), self.codewords, seed=m)[0] for m in range(fmt.subspaces)]
        return fmt.from_codewords(np.stack(books))

    def from_codewords(self, books) -> "PQFormat":
        """This (shaped) format with real codewords ``books`` (M, K, sub) quantized to integers."""
        books = np.asarray(books, dtype=np.float64)
        ints, scale = quantize_coefficients(books.ravel(), self.CODEWORD_BITS)
        return replace(self, sub=books.shape[2], subspaces=books.shape[0], codebooks=ints, scale=scale)

    def assign(self, w) -> np.ndarray:
        """(cout, M, P) index of the nearest codeword of each sub-vector of ``w``."""
        self._check_shape(np.shape(w))
        v = self.subvectors(w)
        real = self.scale * self.codebook_array.astype(np.float64)  # (M, K, sub)
        d = ((v[:, :, :, None, :] - real[None, :, None, :, :]) ** 2).sum(axis=-1)  # (cout, M, P, K)
        return d.argmin(axis=-1)

    def codes_of(self, index, shape: tuple) -> np.ndarray:
        """Per-weight codes (each sub-vector's index repeated) from ``index`` (cout, M, P)."""
        index = np.asarray(index, dtype=np.int64)
        return self.from_subvectors(np.repeat(index[..., None], self.sub, axis=-1), tuple(shape))

    def _encode(self, w):
        return self.codes_of(self.assign(w), w.shape), np.full(w.shape[0], self.scale)

    def _decode(self, codes):
        self._check_shape(codes.shape)
        v = self.subvectors(codes)  # (cout, M, P, sub)
        m = np.arange(self.subspaces)[None, :, None, None]
        j = np.arange(self.sub)[None, None, None, :]
        return self.from_subvectors(self.codebook_array[m, v, j], codes.shape)

    def value_range(self):
        cb = self.codebook_array
        return int(min(cb.min(), 0)), int(max(cb.max(), 0))

    def check_layer(self, codes, op: str, source_shape: tuple | None, where: str = "") -> None:
        """The codebooks must be cut in the order the engine streams the input, and every
        weight of a sub-vector must carry the sub-vector's index."""
        if op == "linear" and tuple(self.source or ()) != tuple(source_shape or ()):
            raise FormatError(f"{where}pq codebooks were cut for input {self.source}, "
                              f"but the engine streams {source_shape}")
        self.check_subvectors(codes, where)

    def check_subvectors(self, codes, where: str = "") -> None:
        """Raise :class:`FormatError` unless every sub-vector's weights share one index."""
        self._check_shape(np.shape(codes))
        v = self.subvectors(codes)
        bad = np.argwhere((v != v[..., :1]).any(axis=-1))
        if bad.size:
            c, m, p = (int(i) for i in bad[0])
            raise FormatError(f"{where}pq sub-vector (output channel {c}, subspace {m}, position {p}) holds "
                              f"different indices {sorted(set(v[c, m, p].tolist()))}")

    def faulty_codes(self, codes, index: int) -> np.ndarray:
        """The stored index of weight ``index``'s sub-vector (every weight of it) set to the
        codeword whose entry at that weight is most different from the current one."""
        codes = np.asarray(codes, dtype=np.int64)
        idx = self.index(codes).copy()
        where = np.argwhere(self.subvectors(np.arange(codes.size).reshape(codes.shape)) == int(index))[0]
        c, m, p, j = (int(v) for v in where)
        entries = self.codebook_array[m, :, j]
        idx[c, m, p] = int(np.argmax(np.abs(entries - entries[idx[c, m, p]])))
        return self.codes_of(idx, codes.shape)

    def index(self, codes) -> np.ndarray:
        """(cout, M, P) codeword index of every sub-vector."""
        return self.subvectors(codes)[..., 0]

    def coded_streams(self, codes):
        """One index per sub-vector, Huffman coded (with its table) when that pays."""
        from quantrtl.model.numbers.size import huffman_bits

        idx = self.index(codes)
        return min(huffman_bits(idx, self.codewords), idx.size * self.bits)

    def storage(self, codes):
        """An index per sub-vector; the codebooks (8-bit codewords) as parameters."""
        n = int(self.index(codes).size)
        return {"codes": n * self.bits, "params": self.subspaces * self.codewords * self.sub * self.CODEWORD_BITS}

    def table_bounds(self, act_bits: int = 8) -> tuple[int, int]:
        """Range of one table entry ``<codeword, x>`` over all codewords and unsigned inputs."""
        cb = self.codebook_array
        amax = (1 << act_bits) - 1
        lo = int(np.minimum(cb, 0).sum(axis=2).min()) * amax
        hi = int(np.maximum(cb, 0).sum(axis=2).max()) * amax
        return lo, hi

