"""``keras.utils``: ``to_categorical``."""
from __future__ import annotations

import numpy as np

from ..data import one_hot


def to_categorical(y, num_classes: int | None = None, dtype: str = "float32") -> np.ndarray:
    """Integer class labels of any shape (...) as one-hot arrays (..., num_classes), Keras's
    ``utils.to_categorical``; a trailing axis of length 1 is dropped first, as Keras does."""
    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.dtype.kind not in "iuf" or (y.size and not np.all(y == np.round(y))):
        raise ValueError(f"to_categorical needs whole-number class labels, got shape {y.shape} "
                         f"of {y.dtype}")
    y = y.astype(np.int64)
    k = int(y.max()) + 1 if num_classes is None and y.size else int(num_classes or 0)
    flat = one_hot(y.reshape(-1), k)                  # which refuses labels outside 0..k-1
    return flat.reshape(*y.shape, k).astype(dtype)
