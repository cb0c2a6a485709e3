"""Multi-bit binary bases: ``abcnetM`` (ABC-Net) and ``lqnetK`` (LQ-Net).

A weight is ``sum_i alpha_i * e_i`` with ``e_i`` in {-1, +1}: M (or K) binary bases and
per-layer basis scales.  The code has one bit per basis (1 = -1).  The scales are
stored as signed 8-bit integers with one per-layer real scale, so the integer weight
is ``sum_i alpha_int_i * e_i``.

* ABC-Net (Lin et al.): ``B_i = sign(w - mean(w) + u_i * std(w))`` with ``u_i`` spread
  evenly in [-1, 1], the alphas by least squares ``min ||w - B alpha||``.
* LQ-Net (Zhang et al.): the basis ``v`` is learned by alternating least squares:
  codes = the nearest of the ``2**K`` levels ``v . e``, then ``v`` refitted.

Hardware: one add/sub per basis per weight (``e_i * x``), M accumulators, and the
M scale multiplies once per output (``hw/array.py``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantrtl.model.numbers.formats import (ParamFormat, check_int_list, check_scale, quantize_coefficients)

__all__ = ["BasisFormat", "ABCNetFormat", "LQNetFormat"]


@dataclass(frozen=True)
class BasisFormat(ParamFormat):
    """Shared codec of the binary-basis formats; subclasses choose the bases (``fit``)."""

    COEF_BITS: ClassVar[int] = 8
    PARAMS: ClassVar[tuple[str, ...]] = ("alphas", "scale")
    alphas: tuple | None = None
    scale: float | None = None

    def __post_init__(self):
        q = (1 << (self.COEF_BITS - 1)) - 1
        check_int_list(self.name, "alphas", self.alphas, self.bits, -q, q)
        check_scale(self.name, self.scale)

    def signs(self) -> np.ndarray:
        """(2**M, M) basis signs of every code."""
        codes = np.arange(1 << self.bits)
        return 1 - 2 * ((codes[:, None] >> np.arange(self.bits)) & 1)

    def _with_real_alphas(self, alphas) -> "BasisFormat":
        ints, scale = quantize_coefficients(alphas, self.COEF_BITS)
        return type(self)(bits=self.bits, alphas=ints, scale=scale)

    def _encode(self, w):
        """Nearest level (used with fitted alphas; ``fit`` defines the method's codes)."""
        levels = self.scale * (self.signs() @ np.asarray(self.alphas, dtype=np.float64))
        codes = np.abs(w[..., None] - levels).argmin(axis=-1)
        return codes, np.full(w.shape[0], self.scale)

    def _codes_from_signs(self, b: np.ndarray) -> np.ndarray:
        """(..., M) signs → codes."""
        return (((1 - b) // 2) << np.arange(self.bits)).sum(axis=-1)

    def _decode(self, codes):
        return self.signs()[codes] @ np.asarray(self.alphas, dtype=np.int64)

    @property
    def coefficients(self):
        self._require_fitted()
        return tuple(self.alphas)

    def term_values(self, codes):
        codes = np.asarray(codes, dtype=np.int64)
        return np.moveaxis(self.signs()[codes], -1, 0)

    def storage(self, codes):
        return {"codes": int(np.asarray(codes).size) * self.bits, "params": self.bits * self.COEF_BITS}


@dataclass(frozen=True)
class ABCNetFormat(BasisFormat):
    """``abcnetM``: M binary bases ``sign(w - mean + u_i std)``, alphas by least squares."""

    family: ClassVar[str] = "abcnet"
    BITS: ClassVar[range] = range(1, 9)

    def shifts(self) -> np.ndarray:
        return np.linspace(-1.0, 1.0, self.bits) if self.bits > 1 else np.zeros(1)

    def basis_signs(self, w) -> np.ndarray:
        """(..., M) signs of ABC-Net's shifted binarisations (sign(0) = +1)."""
        w = np.asarray(w, dtype=np.float64)
        mean, std = w.mean(), w.std()
        return np.where(w[..., None] - mean + self.shifts() * std >= 0, 1, -1)

    def fit(self, w):
        b = self.basis_signs(w).reshape(-1, self.bits).astype(np.float64)
        alphas = np.linalg.lstsq(b, w.ravel(), rcond=None)[0]
        return self._with_real_alphas(alphas)

    def encode(self, w):
        if self.fitted:
            return super().encode(w)
        from quantrtl.model.numbers.formats import Quantized, check_weights

        w = check_weights(w)
        fitted = self.fit(w)
        codes = self._codes_from_signs(self.basis_signs(w)).astype(np.int64)
        return Quantized(codes=codes, values=fitted.decode(codes), scale=np.full(w.shape[0], fitted.scale),
                         format=fitted)


@dataclass(frozen=True)
class LQNetFormat(BasisFormat):
    """``lqnetK``: K learned bases; codes = nearest level, basis by alternating least squares."""

    family: ClassVar[str] = "lqnet"
    BITS: ClassVar[range] = range(1, 5)
    ITERATIONS: ClassVar[int] = 20

    def fit(self, w):
        x = w.ravel()
        signs = self.signs().astype(np.float64)
        a = np.abs(x).mean() if x.size else 0.0
        v = a * 2.0 ** np.arange(self.bits) / 2 ** (self.bits - 1)  # uniform levels to start
        for _ in range(self.ITERATIONS):
            codes = np.abs(x[:, None] - signs @ v).argmin(axis=1)
            new = np.linalg.lstsq(signs[codes], x, rcond=None)[0]
            if np.allclose(new, v, rtol=0, atol=1e-12):
                break
            v = new
        return self._with_real_alphas(v)
