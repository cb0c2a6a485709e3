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
#: Images in the fixed test split (20 % of 1797, stratified): what image indices are checked against.
TEST_IMAGES = 360
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


class ImageError(ValueError):
    """An image file that cannot become a digits-model input."""


#: The data set's source bitmaps (UCI optdigits): 32×32, reduced by counting the ink
#: pixels of each non-overlapping 4×4 block.
BITMAP_SHAPE = (32, 32)
#: An 8-bit gray pixel at or above this is ink when a 32×32 image is read as a bitmap.
INK_THRESHOLD = 128


def bitmap_to_digits(bitmap: np.ndarray) -> np.ndarray:
    """A 32×32 boolean bitmap (True = ink) → the (1, 8, 8) input: ink pixels per 4×4 block."""
    b = np.asarray(bitmap, dtype=bool)
    if b.shape != BITMAP_SHAPE:
        raise ImageError(f"bitmap shape {b.shape}, expected {BITMAP_SHAPE}")
    return b.reshape(8, 4, 8, 4).sum(axis=(1, 3)).astype(np.int64).reshape(INPUT_SHAPE)


def load_image(path) -> np.ndarray:
    """A user image as the quantized model input: integers 0..16, shape (1, 8, 8).

    * ``.npy``: an (8, 8) or (1, 8, 8) array in the digits value range 0..16 (integers,
      or floats that are whole numbers);
    * ``.png``/``.jpg``/``.jpeg``: an 8×8 image; RGB(A) becomes luminance
      ``0.299 R + 0.587 G + 0.114 B``; 8-bit gray ``g`` maps to ``round(g * 16 / 255)``.
      Bright is ink, as in the digits data (a black digit on white must be inverted first);
    * a 32×32 bitmap (``.npy`` of 0/1, or an image whose pixels with gray ``>= 128`` are
      ink): reduced the way the data set itself was made from its 32×32 bitmaps, by
      counting the ink pixels of each 4×4 block (0..16; :func:`bitmap_to_digits`).
    """
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: image not found")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except Exception as e:
            raise ImageError(f"{p}: unreadable .npy file ({e})") from None
        a = np.asarray(a)
        if a.shape == BITMAP_SHAPE:
            if a.dtype.kind not in "iub" or not np.isin(a, (0, 1)).all():
                raise ImageError(f"{p}: a 32×32 array must be a bitmap of 0 and 1")
            return bitmap_to_digits(a.astype(bool))
        if a.shape not in ((8, 8), INPUT_SHAPE):
            raise ImageError(f"{p}: array shape {a.shape}, expected (8, 8), (1, 8, 8) or a 32×32 bitmap")
        if a.dtype.kind not in "iuf" or not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ImageError(f"{p}: values must be whole numbers in 0..{PIXEL_MAX}")
        if a.min() < 0 or a.max() > PIXEL_MAX:
            raise ImageError(f"{p}: values must lie in 0..{PIXEL_MAX}, got {a.min()}..{a.max()}")
        return a.astype(np.int64).reshape(INPUT_SHAPE)
    if suffix in (".png", ".jpg", ".jpeg"):
        try:
            from PIL import Image

            with Image.open(p) as im:
                im.load()
                img = np.asarray(im.convert("L") if im.mode not in ("L", "I;16", "I") else im)
        except Exception as e:
            raise ImageError(f"{p}: unreadable image ({e})") from None
        if img.shape not in ((8, 8), BITMAP_SHAPE):
            raise ImageError(f"{p}: image is {img.shape[1] if img.ndim > 1 else '?'}×{img.shape[0]} pixels, "
                             "expected 8×8 (digits) or 32×32 (a bitmap, reduced by 4×4 ink counts)")
        if img.dtype != np.uint8:
            raise ImageError(f"{p}: expected an 8-bit image, got {img.dtype}")
        if img.shape == BITMAP_SHAPE:
            return bitmap_to_digits(img >= INK_THRESHOLD)
        return np.rint(img.astype(np.float64) * PIXEL_MAX / 255).astype(np.int64).reshape(INPUT_SHAPE)
    raise ImageError(f"{p}: unsupported image type {suffix!r} (use .png, .jpg, .jpeg or .npy)")
