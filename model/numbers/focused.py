"""``focusedN``: Focused Quantization (Zhao et al., seed 000) for pruned layers.

After pruning, a layer's nonzero weights are bimodal.  They are split into two
components by sign (the reference implementation's split), each component's mean
``mu_z`` is quantized, and the residual ``w - mu_z`` is shift-quantized (INQ rounding)::

    q = mu_z + s * 2**e        (or 0 when pruned)

Code layout (N bits, N = 4..6), low to high: ``k`` (N-2 bits, 0 = residual 0, else
``e = e_min + k - 1``), ``s`` (1 = negative residual), ``z`` (1 = the negative
component).  Code 0 is the pruned weight; every other code belongs to its
component.  Values are in units of ``2**e_min`` (the layer's scale); the means are
integers in the same unit (fixed point at the residual's resolution).

The per-layer choice: :meth:`FocusedFormat.fit` also tries plain ``shiftN`` and returns
whichever has the smaller squared quantization error (reported per layer).

Hardware (the recentralized form, ``hw/array.py``):
``y = mu+ * sum_{z=+} x + mu- * sum_{z=-} x + sum s * (x << e)``: per nonzero weight one
shift-add into the residual sum and one add into its component's sum; the two
means multiply once per output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantrtl.model.numbers.formats import ParamFormat, ShiftFormat, inq_emax, pow2_level

__all__ = ["FocusedFormat"]


@dataclass(frozen=True)
class FocusedFormat(ParamFormat):
    """Recentralized shift quantization; parameters ``mu_pos``, ``mu_neg`` (integers in
    units of ``2**e_min``) and ``e_min``."""

    family: ClassVar[str] = "focused"
    BITS: ClassVar[range] = range(4, 7)
    PARAMS: ClassVar[tuple[str, ...]] = ("mu_pos", "mu_neg", "e_min")
    MEAN_BITS: ClassVar[int] = 16
    #: Pruning plan (Deep Compression's sensitivity: first conv densest, the classifier sparsest).
    default_density: ClassVar[str] = "first=0.6,last=0.12,*=0.35"
    finetune_epochs: ClassVar[int] = 20
    finetune_lr: ClassVar[float] = 1e-3
    mu_pos: int | None = None
    mu_neg: int | None = None
    e_min: int | None = None

    def __post_init__(self):
        lim = 1 << (self.MEAN_BITS - 1)
        for name in ("mu_pos", "mu_neg"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and -lim < v < lim):
                raise ValueError(f"{self.name}: {name} must be an integer in ({-lim}, {lim}), got {v!r}")
        if self.e_min is not None and not (isinstance(self.e_min, int) and -1100 < self.e_min < 1100):
            raise ValueError(f"{self.name}: e_min must be an integer exponent, got {self.e_min!r}")

    @property
    def levels(self) -> int:
        """Residual exponents in the window (k = 1..levels)."""
        return (1 << (self.bits - 2)) - 1

    @property
    def kbits(self) -> int:
        return self.bits - 2

    def representation(self) -> str:
        return "recentralized"

    # ---- fitting ----------------------------------------------------------------
    def fit(self, w):
        """The better of recentralized and plain shift for this layer (squared error)."""
        recentral = self.fit_recentralized(w)
        plain = ShiftFormat(bits=self.bits)
        err = lambda f: float(((f.encode(w).dequantize() - w) ** 2).sum())
        return recentral if err(recentral) <= err(plain) else plain

    def fit_recentralized(self, w) -> "FocusedFormat":
        pos, neg = w[w > 0], w[w < 0]
        mu_p = float(pos.mean()) if pos.size else 0.0
        mu_n = float(neg.mean()) if neg.size else 0.0
        resid = np.concatenate([pos - mu_p, neg - mu_n])
        e_max = int(inq_emax(np.abs(resid).max() if resid.size else 0.0))
        if not resid.size or np.abs(resid).max() == 0:  # all weights on the means
            e_max = int(inq_emax(max(abs(mu_p), abs(mu_n), 1e-300))) - 4
        e_min = e_max - (self.levels - 1)
        lim = (1 << (self.MEAN_BITS - 1)) - 1
        mu = lambda v: int(np.clip(np.rint(np.ldexp(v, -e_min)), -lim, lim))
        return FocusedFormat(bits=self.bits, mu_pos=mu(mu_p), mu_neg=mu(mu_n), e_min=e_min)

    # ---- codec ------------------------------------------------------------------
    def _component_codes(self, units: np.ndarray, z: int) -> np.ndarray:
        """Codes of ``units`` (weights in units of ``2**e_min``) as members of component ``z``."""
        r = units - (self.mu_neg if z else self.mu_pos)
        k = pow2_level(np.abs(r), self.levels)
        s = np.where(k > 0, (r < 0).astype(np.int64), 1)  # residual 0 is coded as s = 1
        return k | (s << self.kbits) | (z << (self.kbits + 1))

    def _encode(self, w):
        """Each nonzero weight is coded in its sign's component (the split the means
        were fitted on)."""
        units = np.ldexp(w, -self.e_min)  # exact
        codes = np.where(w < 0, self._component_codes(units, 1), self._component_codes(units, 0))
        codes = np.where(w == 0, 0, codes)
        return codes, np.full(w.shape[0], np.ldexp(1.0, self.e_min))

    def term_values(self, codes):
        codes = np.asarray(codes, dtype=np.int64)
        k = codes & ((1 << self.kbits) - 1)
        s = (codes >> self.kbits) & 1
        z = (codes >> (self.kbits + 1)) & 1
        resid = np.where(k > 0, np.left_shift(np.int64(1), np.maximum(k - 1, 0)), 0) * (1 - 2 * s)
        return np.stack([((z == 0) & (codes != 0)).astype(np.int64), z, resid])

    @property
    def coefficients(self):
        self._require_fitted()
        return (self.mu_pos, self.mu_neg, 1)

    def _decode(self, codes):
        t = self.term_values(codes)
        return self.mu_pos * t[0] + self.mu_neg * t[1] + t[2]

    def storage(self, codes):
        return {"codes": int(np.asarray(codes).size) * self.bits, "params": 2 * self.MEAN_BITS + 8}
