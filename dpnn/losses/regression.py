"""Mean squared error: the regression loss (and a classifier's, on one-hot rows)."""
from __future__ import annotations

import numpy as np

from .base import Loss
from .crossentropy import labels_to_index


class MeanSquaredError(Loss):
    """Mean over every element of (y_pred - y_true)^2; integer labels are one-hot encoded.

    Called as Keras does, ``loss(y_true, y_pred)`` averages the last axis first (Keras's
    per-sample values), which gives the same mean unless sample weights are per element.
    """
    name = "mse"

    def forward(self, y_pred: np.ndarray, y_true: np.ndarray) -> float:
        N = y_pred.shape[0]
        y = np.asarray(y_true)
        if len(y) != N:
            raise ValueError(f"got {len(y)} targets for {N} samples")
        if y.ndim == 1 and y_pred.ndim == 2 and y_pred.shape[1] > 1:
            y = np.eye(y_pred.shape[1], dtype=y_pred.dtype)[labels_to_index(y, y_pred.shape[1])]
        y = y.reshape(y_pred.shape) if y.size == y_pred.size else y
        if y.shape != y_pred.shape:
            raise ValueError(f"mse targets of shape {y.shape} do not match predictions {y_pred.shape}")
        self._diff = (y_pred - y).astype(y_pred.dtype, copy=False)
        self.per_sample = (self._diff.reshape(N, -1) ** 2).mean(axis=1)
        return float(self.per_sample.mean()) if N else 0.0

    def backward(self, denominator: float | None = None) -> np.ndarray:
        N = self._diff.shape[0]
        per_sample = self._diff.size // max(N, 1)
        return self._diff * self._diff.dtype.type(2.0 / ((denominator or N) * per_sample))

    def call(self, y_true, y_pred) -> np.ndarray:
        y_pred = np.asarray(y_pred, np.float32)
        y = np.asarray(y_true).astype(np.float32)
        if y.shape != y_pred.shape and y.size == y_pred.size:
            y = y.reshape(y_pred.shape)
        if y.shape != y_pred.shape:
            raise ValueError(f"mse: targets of shape {y.shape} do not match predictions {y_pred.shape}")
        return ((y_pred - y) ** 2).mean(axis=-1)
