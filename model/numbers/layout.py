"""Stream order of feature maps in hardware (pure NumPy, no Amaranth).

The golden model and the artifact use PyTorch's (C, H, W) layout.  Hardware streams a
feature map **channel fastest** (H, W, C order, "HWC"): an engine that computes several
output channels of one pixel emits them back to back, and a linear layer after a
feature map receives it in HWC order (its weight columns are permuted to match at
generation time).  Vectors (F,) stream in index order.
"""
from __future__ import annotations

import numpy as np

__all__ = ["to_stream", "from_stream", "stream_to_chw_index"]


def to_stream(x, shape: tuple[int, ...]) -> np.ndarray:
    """(…, *shape) in CHW → (…, size) in stream (HWC) order."""
    x = np.asarray(x)
    lead = x.shape[:x.ndim - len(shape)]
    if len(shape) == 3:
        x = np.moveaxis(x, -3, -1)
    return x.reshape(*lead, -1)


def from_stream(s, shape: tuple[int, ...]) -> np.ndarray:
    """(…, size) in stream order → (…, *shape) in CHW."""
    s = np.asarray(s)
    lead = s.shape[:-1]
    if len(shape) == 3:
        c, h, w = shape
        return np.moveaxis(s.reshape(*lead, h, w, c), -1, -3)
    return s.reshape(*lead, *shape)


def stream_to_chw_index(shape: tuple[int, ...]) -> np.ndarray:
    """For each stream position, the flat CHW index of the same element."""
    n = int(np.prod(shape))
    return to_stream(np.arange(n).reshape(shape), shape)
