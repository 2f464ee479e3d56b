"""Losses: softmax cross-entropy from logits and mean squared error.

``forward(y_pred, y_true)`` returns the mean loss and keeps what ``backward`` needs;
``backward(denominator=None)`` returns d(sum of per-sample losses)/d(y_pred) divided by
``denominator`` (default: this batch's size). A data-parallel worker passes the *global*
batch size, so the shard gradients simply add up to the full-batch gradient.
"""
from __future__ import annotations

import numpy as np


class Loss:
    name = "loss"

    def forward(self, y_pred: np.ndarray, y_true: np.ndarray) -> float:
        raise NotImplementedError

    def backward(self, denominator: float | None = None) -> np.ndarray:
        raise NotImplementedError

    __call__ = forward


def _labels_to_index(y_true: np.ndarray, K: int) -> np.ndarray:
    """Integer labels (N,) or one-hot (N, K) -> integer labels (N,), validated."""
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == K:
        return y.argmax(axis=1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"labels must be integers (N,) or one-hot (N, {K}); got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(y == np.round(y)):
            raise ValueError("labels must be whole numbers (class indices) or one-hot rows")
        y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"labels must be in [0, {K - 1}] for a model with {K} outputs; "
                         f"found values in [{y.min()}, {y.max()}]")
    return y


class CategoricalCrossentropy(Loss):
    """Softmax + cross-entropy on logits (N, K); labels are integers (N,) or one-hot (N, K)."""
    name = "categorical_crossentropy"

    def forward(self, y_pred: np.ndarray, y_true: np.ndarray) -> float:
        N, K = y_pred.shape
        if len(y_true) != N:
            raise ValueError(f"got {len(y_true)} labels for {N} samples")
        labels = _labels_to_index(y_true, K)
        z = y_pred - y_pred.max(axis=1, keepdims=True)               # (N, K)
        logsum = np.log(np.exp(z).sum(axis=1, keepdims=True))         # (N, 1)
        logp = z - logsum                                             # (N, K) log-softmax
        self._probs, self._labels = np.exp(logp), labels
        self.per_sample = -logp[np.arange(N), labels]                 # (N,)
        return float(self.per_sample.mean()) if N else 0.0

    def backward(self, denominator: float | None = None) -> np.ndarray:
        N = self._probs.shape[0]
        g = self._probs.copy()                                        # (N, K)
        g[np.arange(N), self._labels] -= 1
        return g * g.dtype.type(1.0 / (denominator or N))


class MeanSquaredError(Loss):
    """Mean over every element of (y_pred - y_true)^2; integer labels are one-hot encoded."""
    name = "mse"

    def forward(self, y_pred: np.ndarray, y_true: np.ndarray) -> float:
        N = y_pred.shape[0]
        y = np.asarray(y_true)
        if len(y) != N:
            raise ValueError(f"got {len(y)} targets for {N} samples")
        if y.ndim == 1 and y_pred.ndim == 2 and y_pred.shape[1] > 1:
            y = np.eye(y_pred.shape[1], dtype=y_pred.dtype)[_labels_to_index(y, y_pred.shape[1])]
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


LOSSES = {"categorical_crossentropy": CategoricalCrossentropy, "cce": CategoricalCrossentropy,
          "crossentropy": CategoricalCrossentropy, "mse": MeanSquaredError,
          "mean_squared_error": MeanSquaredError}


def get_loss(loss) -> Loss:
    """A Loss instance from a name ('categorical_crossentropy'/'cce', 'mse') or an instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in LOSSES:
        return LOSSES[loss.lower()]()
    if hasattr(loss, "forward") and hasattr(loss, "backward"):
        return loss
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(sorted(LOSSES))} "
                     "or pass an object with forward(y_pred, y_true) and backward()")


def check_metrics(metrics) -> None:
    """Keras's ``metrics=['accuracy']`` is fine (dpnn always reports accuracy); nothing else exists."""
    if metrics is None:
        return
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if str(m).lower() not in ("accuracy", "acc", "categorical_accuracy")]
    if unknown:
        raise ValueError(f"compile(metrics=...): unknown metric(s) {unknown}; dpnn reports loss and "
                         "accuracy (for classifiers) by itself, so pass metrics=['accuracy'] or nothing")
