"""``kmeansN`` (Deep Compression): weight sharing through a per-layer codebook.

Pipeline (Han et al.): magnitude pruning and retraining, then k-means over the
layer's nonzero weights with **linear initialisation** (centroids evenly spaced
between the smallest and the largest weight), then fine-tuning of the centroids
with the summed gradients of their members (:mod:`quantrtl.model.training.sharing`).

Codes are N-bit codebook indices.  Code 0 is reserved for the pruned (zero)
weight, so ``2**N - 1`` centroids are shared by the nonzero weights.  The centroids
are stored as signed 8-bit integers with one per-layer scale (the codebook the
hardware's lookup table holds); the PE is a lookup followed by an 8×8 multiplier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantrtl.model.numbers.formats import (ParamFormat, check_int_list, check_scale, quantize_coefficients)

__all__ = ["KMeansFormat", "kmeans_linear"]


def kmeans_linear(x, k: int, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means with linear initialisation: ``(centroids (k,), assignment of x)``.

    Lloyd iterations until the assignment is stable; a centroid that loses all its
    members keeps its position.  Deterministic.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        return np.zeros(k), np.zeros(0, dtype=np.int64)
    c = np.linspace(x.min(), x.max(), k)
    assign = None
    for _ in range(iterations):
        new = np.abs(x[:, None] - c[None, :]).argmin(axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        sums = np.bincount(assign, weights=x, minlength=k)
        counts = np.bincount(assign, minlength=k)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    return c, assign


@dataclass(frozen=True)
class KMeansFormat(ParamFormat):
    """``kmeansN``: N-bit index into a per-layer codebook; code 0 is the pruned zero.

    Parameters (fitted): ``codebook``, ``2**N`` signed integers (entry 0 is 0) and
    ``scale``, the real value of one codebook unit.
    """

    family: ClassVar[str] = "kmeans"
    BITS: ClassVar[range] = range(2, 9)
    CODEBOOK_BITS: ClassVar[int] = 8
    PARAMS: ClassVar[tuple[str, ...]] = ("codebook", "scale")
    #: Pruning plan (first conv densest, the classifier sparsest), as for focusedN.
    default_density: ClassVar[str] = "first=0.6,last=0.12,*=0.35"
    finetune_epochs: ClassVar[int] = 20
    codebook: tuple | None = None
    scale: float | None = None

    def __post_init__(self):
        q = (1 << (self.CODEBOOK_BITS - 1)) - 1
        check_int_list(self.name, "codebook", self.codebook, 1 << self.bits, -q, q)
        if self.codebook is not None and self.codebook[0] != 0:
            raise ValueError(f"{self.name}: codebook entry 0 is the pruned weight and must be 0, got {self.codebook[0]}")
        check_scale(self.name, self.scale)

    @property
    def centroids(self) -> int:
        return (1 << self.bits) - 1

    def from_centroids(self, centroids) -> "KMeansFormat":
        """The fitted format whose codebook holds ``centroids`` quantized to integers."""
        ints, scale = quantize_coefficients(centroids, self.CODEBOOK_BITS)
        return KMeansFormat(bits=self.bits, codebook=(0,) + ints, scale=scale)

    def fit(self, w):
        c, _ = kmeans_linear(w[w != 0], self.centroids)
        return self.from_centroids(c)

    def _encode(self, w):
        real = self.scale * np.asarray(self.codebook[1:], dtype=np.float64)
        codes = 1 + np.abs(w[..., None] - real).argmin(axis=-1)
        codes = np.where(w == 0, 0, codes)
        return codes, np.full(w.shape[0], self.scale)

    def _decode(self, codes):
        return np.asarray(self.codebook, dtype=np.int64)[codes]

    def storage(self, codes):
        return {"codes": int(np.asarray(codes).size) * self.bits, "params": len(self.codebook) * self.CODEBOOK_BITS}
