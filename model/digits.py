"""scikit-learn's bundled digits data: the fixed split and the quantized input mapping.

No torch here: the golden model and the co-simulation read the test images too.

* 1797 grayscale 8×8 images, pixel values 0..16, 10 classes.
* Split: ``train_test_split(test_size=0.2, stratify=labels, random_state=0)``, so
  1437 training and 360 test images, always the same ones.
* Model input: ``x = pixel / 16`` (float, in [0, 1]), shape (1, 8, 8).
* Quantized input: ``q = pixel`` as an integer (0..16) with scale 1/16 and zero
  point 0, which represents ``x`` exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

INPUT_SHAPE = (1, 8, 8)
INPUT_SCALE = 1.0 / 16.0
INPUT_ZERO_POINT = 0
PIXEL_MAX = 16
NUM_CLASSES = 10
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """Integer images (N, 1, 8, 8) in 0..16 and labels (N,)."""

    x: np.ndarray
    y: np.ndarray

    def float_inputs(self) -> np.ndarray:
        return (self.x.astype(np.float32) * np.float32(INPUT_SCALE))


@lru_cache(maxsize=1)
def load_split() -> tuple[Split, Split]:
    """``(train, test)`` of the fixed digits split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.int64).reshape(-1, *INPUT_SHAPE)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    for a in (xtr, xte, ytr, yte):
        a.setflags(write=False)
    return Split(xtr, ytr), Split(xte, yte)
