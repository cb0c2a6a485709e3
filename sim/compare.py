"""Bit-exact comparison: equal integers element by element, first mismatch reported."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Mismatch", "first_mismatch", "X_VALUE"]

#: How the testbench records a captured value with X or Z bits (no code is negative).
X_VALUE = -1


@dataclass(frozen=True)
class Mismatch:
    layer: str
    index: int  # position in stream order
    expected: int | None
    got: int | None
    mismatches: int  # how many positions differ (missing/extra values count)

    def __str__(self) -> str:
        got = "X (unknown bits)" if self.got == X_VALUE else self.got
        return (f"layer {self.layer!r}: {self.mismatches} mismatches; first at index {self.index}: "
                f"expected {self.expected}, got {got}")


def first_mismatch(layer: str, expected, got) -> Mismatch | None:
    """``None`` when ``got`` equals ``expected`` exactly (same length, same integers)."""
    e = np.asarray(expected, dtype=np.int64).ravel()
    g = np.asarray(got, dtype=np.int64).ravel()
    n = min(len(e), len(g))
    diff = np.flatnonzero(e[:n] != g[:n])
    count = len(diff) + abs(len(e) - len(g))
    if count == 0:
        return None
    i = int(diff[0]) if len(diff) else n
    return Mismatch(layer=layer, index=i, expected=int(e[i]) if i < len(e) else None,
                    got=int(g[i]) if i < len(g) else None, mismatches=count)

