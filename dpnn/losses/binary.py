"""Binary cross-entropy, as Keras's ``BinaryCrossentropy``: independent yes/no outputs (N, D).

On logits z (``from_logits=True``, or a model not ending in a sigmoid) the loss of one output
is max(z, 0) - z y + log(1 + exp(-|z|)) (exact, no overflow) and its gradient sigmoid(z) - y.
On a sigmoid output the value is Keras's (p clipped to [1e-7, 1 - 1e-7]) and the gradient is
the fused one, p - y, handed to the sigmoid's input (the sigmoid passes it through), as the
softmax with categorical cross-entropy does. A sample's loss is the mean over its D outputs.
"""
from __future__ import annotations

import numpy as np

from .base import EPSILON, Loss, check_keras_options


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def elementwise(y: np.ndarray, y_pred: np.ndarray, on_probabilities: bool) -> np.ndarray:
    """Per-output binary cross-entropy of targets y in [0, 1]."""
    if on_probabilities:
        p = np.clip(y_pred, EPSILON, 1.0 - EPSILON)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return np.maximum(y_pred, 0) - y_pred * y + np.log1p(np.exp(-np.abs(y_pred)))


class BinaryCrossentropy(Loss):
    """Keras's ``BinaryCrossentropy(from_logits, label_smoothing)``: targets y in [0, 1] of the
    outputs' shape ((N,) for one output is fine); ``label_smoothing`` s: y (1 - s) + s / 2.

    ``from_logits``: None (the default) lets ``Model.compile`` decide: a sigmoid output gives
    probabilities (fused gradient), any other logits; called as a function, None means
    probabilities (Keras's default).
    """
    name = "binary_crossentropy"

    def __init__(self, from_logits: bool | None = None, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size", name: str | None = None, axis: int = -1) -> None:
        super().__init__(reduction, name)
        self.label_smoothing = check_keras_options(from_logits, label_smoothing, axis,
                                                   "binary cross-entropy averages the last axis")
        self.from_logits = from_logits
        self.on_probabilities = from_logits is False
        self.decided = from_logits is not None

    def targets(self, y_true, shape: tuple, dtype) -> np.ndarray:
        """Targets in y_pred's shape and dtype, smoothed; one clear error if they cannot fit."""
        y = np.asarray(y_true)
        if y.dtype.kind not in "biuf":
            raise TypeError(f"binary_crossentropy targets must be numbers in [0, 1], got dtype {y.dtype}")
        if y.shape != shape and y.size == int(np.prod(shape)) and len(y) == shape[0]:
            y = y.reshape(shape)                        # (N,) targets of (N, 1) outputs
        if y.shape != shape:
            raise ValueError(f"binary_crossentropy: `target` and `output` must have the same shape; got "
                             f"{y.shape} and {shape} (one target in [0, 1] per output)")
        y = y.astype(dtype, copy=False)
        if self.label_smoothing:
            s = self.label_smoothing
            y = y * dtype.type(1.0 - s) + dtype.type(0.5 * s)
        return y

    def forward(self, y_pred: np.ndarray, y_true: np.ndarray) -> float:
        N = y_pred.shape[0]
        if len(y_true) != N:
            raise ValueError(f"got {len(y_true)} targets for {N} samples")
        self._y = self.targets(y_true, y_pred.shape, y_pred.dtype)
        self._p = y_pred if self.on_probabilities else sigmoid(y_pred)
        values = elementwise(self._y, y_pred, self.on_probabilities)
        self.per_sample = values.reshape(N, -1).mean(axis=1)                 # (N,)
        return float(self.per_sample.mean()) if N else 0.0

    def backward(self, denominator: float | None = None) -> np.ndarray:
        """d(sum of losses)/d(logits) / denominator (on a sigmoid output: the sigmoid's input)."""
        N = self._p.shape[0]
        per = self._p.size // max(N, 1)                       # outputs averaged per sample
        g = self._p - self._y
        return g * g.dtype.type(1.0 / ((denominator or N) * per))

    def call(self, y_true, y_pred) -> np.ndarray:
        """Keras's values: the mean over the last axis of each output's loss."""
        y_pred = np.asarray(y_pred, np.float32)
        y = self.targets(y_true, y_pred.shape, y_pred.dtype)
        probabilities = self.on_probabilities if self.decided else not self.from_logits
        return elementwise(y, y_pred, probabilities).mean(axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}
