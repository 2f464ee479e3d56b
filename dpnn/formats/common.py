"""What every on-disk format shares: image sizes, pixel scaling, memory checks, held-out splits.

A format module reads its files into :class:`Splits` (uint8 or float pixels, int labels,
class names); :func:`dpnn.formats.load` turns that into the float32 ``(train, test, info)``
every loader in :mod:`dpnn.datasets` returns.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from dpnn.data import Dataset
from dpnn.errors import DataError
from dpnn.files import input_problem
from dpnn.limits import FLOAT_BYTES, MAX_CLASSES, MAX_FLOAT_PIXEL, check_allocation

HOLDOUT_FRACTION = 0.1      # of train, held out as the test set when a directory has no test split
HOLDOUT_SEED = 20240601     # fixed: the same directory always gives the same split

ImageSize = tuple[int, int, int | None]     # (H, W, C or None: C from the data)


@dataclass
class Splits:
    """What a format module read: raw pixels (N, H, W, C) uint8/float, labels (N,) int64."""
    fmt: str                                    # "idx", "npz", "csv", "images"
    train: tuple[np.ndarray, np.ndarray]        # (x (N, H, W, C), y (N,))
    test: tuple[np.ndarray, np.ndarray] | None  # None: the directory has no test split
    class_names: list[str] | None = None        # None: str(k) for k in range(K)
    files: dict[str, str] = field(default_factory=dict)   # split -> file or folder it came from
    details: list[str] = field(default_factory=list)      # how it was read, for --inspect
    source_dtype: str | None = None                       # the file's pixel dtype; None: train x's
    notes: list[str] = field(default_factory=list)        # what a user should be told (a file left out)


def parse_image_size(text: str | tuple | None) -> ImageSize | None:
    """'28x28' -> (28, 28, None); '32x32x3' -> (32, 32, 3); a tuple of 2 or 3 ints likewise."""
    if text is None:
        return None
    if isinstance(text, str):
        if not re.fullmatch(r"\d+x\d+(x\d+)?", text.strip()):
            raise ValueError(f"image size must be HxW or HxWxC (e.g. 28x28 or 32x32x3), got {text!r}")
        text = tuple(int(v) for v in text.strip().split("x"))
    dims = tuple(int(v) for v in text)
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise ValueError(f"image size must be 2 or 3 positive integers (H, W[, C]), got {text!r}")
    if len(dims) == 3 and dims[2] not in (1, 3):
        raise ValueError(f"image size channels must be 1 (grayscale) or 3 (RGB), got {dims[2]}")
    return (dims[0], dims[1], dims[2] if len(dims) == 3 else None)


def row_image_shape(values: int, size: ImageSize | None, path: str) -> tuple[int, int, int]:
    """The (H, W, C) of a flat row of ``values`` pixels: ``size`` if given, else a square grayscale."""
    if size is None:
        side = math.isqrt(values)
        if side * side != values:
            raise DataError(f"{path}: {values} pixels per row is not a square grayscale image; "
                            "pass --image-size HxW or HxWxC (e.g. 32x32x3)")
        return side, side, 1
    h, w, c = size
    c = c or 1
    if h * w * c != values:
        raise DataError(f"{path}: {values} pixels per row, but --image-size {h}x{w}x{c} needs "
                        f"{h * w * c}; pass the image size the file holds")
    return h, w, c


def check_input(path: str, todo: str = "pass a regular file") -> None:
    """DataError when ``path`` is not a regular file ("is a FIFO, not a regular file"); nothing is opened."""
    problem = input_problem(path)
    if problem is not None:
        raise DataError(f"{path} {problem}; {todo}")


def check_memory(path: str, nbytes: int, what: str) -> None:
    """DataError naming ``path`` when ``nbytes`` for ``what`` do not fit in free memory."""
    check_allocation(nbytes, f"{path}: {what}", "free memory or use a smaller data set", error=DataError)


def to_unit_float(x: np.ndarray, path: str) -> np.ndarray:
    """Pixels -> float32 of the same shape: bytes 0..255 (any integer dtype) are divided by 255,
    floats are kept as they are (assumed already scaled); NaN or infinity is a DataError (a CSV
    with one ``nan`` cell reads as floats, and its byte pixels would go in unscaled)."""
    check_memory(path, x.size * FLOAT_BYTES, f"its {x.shape} pixels as float32")
    if x.dtype.kind == "f":
        bad = np.count_nonzero(~np.isfinite(x))
        if bad:
            raise DataError(f"{path}: {bad:,} pixel{'s are' if bad > 1 else ' is'} NaN or infinite; "
                            "fix or drop those images (or rows)")
        peak = max(-float(x.min()), float(x.max())) if x.size else 0.0
        if peak > MAX_FLOAT_PIXEL:
            raise DataError(f"{path}: float pixels reach {peak:.3g}; they are taken as they are "
                            f"(at most {MAX_FLOAT_PIXEL:g} in size, usually [0, 1]) and these would "
                            "overflow in training: rescale them")
        return x.astype(np.float32, copy=False)
    if x.dtype.kind not in "iub":
        raise DataError(f"{path}: pixels have dtype {x.dtype}, not numbers; store them as uint8 "
                        "0..255 or float in [0, 1]")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise DataError(f"{path}: integer pixels must be 0..255, found {x.min()}..{x.max()}; "
                        "rescale them to bytes, or store floats in [0, 1]")
    return np.divide(x, 255.0, dtype=np.float32)


def check_labels(y: np.ndarray, path: str) -> np.ndarray:
    """Labels (N,) as int64 >= 0, or a DataError naming ``path``."""
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be 1-D integers, got shape {y.shape} dtype {y.dtype}; "
                        "store one class index per sample")
    if y.size and y.min() < 0:
        raise DataError(f"{path}: labels must be >= 0, found {y.min()}")
    if y.size and y.max() >= MAX_CLASSES:
        raise DataError(f"{path}: label {y.max()} is more than the {MAX_CLASSES:,} classes dpnn "
                        "accepts; labels are class indices 0..K-1")
    return y.astype(np.int64, copy=False)


def to_dataset(x: np.ndarray, y: np.ndarray, path: str) -> Dataset:
    """Raw (N, H, W, C) pixels and (N,) labels -> a float32 Dataset in [0, 1]."""
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels; both must hold one entry "
                        "per sample")
    if len(x) == 0:
        raise DataError(f"{path}: holds no samples")
    return Dataset(to_unit_float(x, path), check_labels(y, path))


def hold_out(train: Dataset, fraction: float = HOLDOUT_FRACTION) -> tuple[Dataset, Dataset]:
    """(train, test): ``fraction`` of ``train``, stratified by class (fixed seed), becomes the test
    set; 0 keeps every sample for training and leaves the test set empty."""
    if fraction == 0:
        return train, Dataset(train.X[:0], train.y[:0])
    return train.split(fraction, seed=HOLDOUT_SEED)
