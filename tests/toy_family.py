"""A toy quantizer family, registered in one place (:func:`register_toy`).

``toyN`` stores sign and magnitude: the top bit is the sign, the low ``N - 1`` bits the
magnitude, so values are ``-(2**(N-1)-1) .. 2**(N-1)-1`` with a redundant negative zero
(code ``2**(N-1)``) that decodes to 0.  Its PE multiplies the magnitude and negates.  It
trains with the standard procedure.  Loaded as a pytest plugin (``-p tests.toy_family``),
it registers itself before collection, so every registry-driven parametrization includes
it; nothing else in the tests names it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from amaranth.hdl import Mux

from quantrtl.hw.pe import ProcessingElement
from quantrtl.model.numbers import families
from quantrtl.model.numbers.formats import WeightFormat
from quantrtl.model.training import procedures


@dataclass(frozen=True)
class ToyFormat(WeightFormat):
    """Sign-magnitude integers with a per-channel scale ``max|w| / (2**(N-1) - 1)``."""

    family: ClassVar[str] = "toy"
    BITS: ClassVar[range] = range(2, 5)

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def _encode(self, w):
        flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        scale = np.where(flat > 0, flat / self.qmax, 1.0)
        q = np.clip(np.rint(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -self.qmax, self.qmax).astype(np.int64)
        return np.where(q < 0, (1 << (self.bits - 1)) | -q, q), scale

    def _decode(self, codes):
        mag = codes & self.qmax
        return np.where(codes >> (self.bits - 1), -mag, mag)


class ToyPE(ProcessingElement):
    """``±(magnitude * act)``: a small multiplier and a conditional negate."""

    def _product(self, m):
        n = self.fmt.bits
        mag = self.code[:n - 1] * self.act
        return Mux(self.code[n - 1], -mag, mag)


TOY = families.Family("toy", ToyFormat, ToyPE, procedures.standard, ToyFormat.BITS, ("toy3", "toy2", "toy4"),
                      "sign-magnitude integers (a test's toy family)")


def register_toy() -> None:
    """The one place the toy family is registered."""
    if "toy" not in {f.name for f in families.families()}:
        families.register(TOY)


def pytest_configure(config):
    register_toy()
