"""Losses: softmax cross-entropy (from logits, or fused with a softmax output) and mean squared error.

``forward(y_pred, y_true)`` returns the mean loss and keeps what ``backward`` needs;
``backward(denominator=None)`` returns d(sum of per-sample losses)/d(y_pred) divided by
``denominator`` (default: this batch's size). A data-parallel worker passes the *global*
batch size, so the shard gradients simply add up to the full-batch gradient.
"""
from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in z's dtype: the one formula of the Activation layer, the
    fused activation of Dense/Conv2D and the cross-entropy (so both ways of writing a softmax
    classifier train bitwise alike)."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


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
    """Cross-entropy of a softmax over K classes; labels are integers (N,) or one-hot (N, K).

    ``from_logits``: None (the default) lets ``Model.compile`` decide from the last layer: a
    model ending in a softmax (``Activation('softmax')`` or ``activation='softmax'``) outputs
    probabilities, any other outputs logits. On probabilities the gradient is the fused
    softmax-cross-entropy one, p - onehot, handed to the softmax's input (the softmax layer
    passes it through), so both ways train alike; True/False insist and are checked there.
    """
    name = "categorical_crossentropy"
    TINY = np.float32(np.finfo(np.float32).tiny)      # log(0) guard for a probability output

    def __init__(self, from_logits: bool | None = None) -> None:
        self.from_logits = from_logits
        self.on_probabilities = from_logits is False   # the decision compile made

    def forward(self, y_pred: np.ndarray, y_true: np.ndarray) -> float:
        N, K = y_pred.shape
        if len(y_true) != N:
            raise ValueError(f"got {len(y_true)} labels for {N} samples")
        labels = _labels_to_index(y_true, K)
        rows = np.arange(N)
        if self.on_probabilities:
            self._probs = y_pred                                      # (N, K) the softmax's output
            self.per_sample = -np.log(np.maximum(y_pred[rows, labels], self.TINY))   # (N,)
        else:
            z = y_pred - y_pred.max(axis=1, keepdims=True)           # (N, K)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (N, K) log-softmax
            self._probs = softmax(y_pred)                             # (N, K)
            self.per_sample = -logp[rows, labels]                     # (N,)
        self._labels = labels
        return float(self.per_sample.mean()) if N else 0.0

    def backward(self, denominator: float | None = None) -> np.ndarray:
        """d(sum of losses)/d(logits) / denominator: on probabilities too, the softmax's input."""
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


def fit_loss_to_output(loss, last_layer) -> None:
    """Match the loss to what the model outputs (``Model.compile``), or refuse the pair.

    Cross-entropy on a softmax output reads probabilities, and the softmax layer is told to pass
    the loss's gradient (taken w.r.t. its input) straight through; on any other output it reads
    logits. A pair that cannot train right is one ValueError naming both.
    """
    act = last_layer.output_activation if last_layer is not None else None
    fused = False
    if isinstance(loss, CategoricalCrossentropy):
        where = f"the model ends in {type(last_layer).__name__}" + (f"({act!r})" if act else "")
        if act == "softmax":
            if loss.from_logits:
                raise ValueError(f"compile(): {where}, so it outputs probabilities, but the loss was "
                                 "given from_logits=True (a second softmax); use "
                                 "CategoricalCrossentropy() or drop the softmax")
            fused = True
        elif loss.from_logits is False:
            raise ValueError(f"compile(): CategoricalCrossentropy(from_logits=False) needs probabilities, "
                             f"but {where}; end the model with activation='softmax' or use from_logits=None")
        elif act in ("sigmoid", "tanh", "relu"):
            raise ValueError(f"compile(): categorical_crossentropy needs logits or a softmax output, but "
                             f"{where}, whose outputs are neither; end the model with Dense(K) (logits) "
                             "or Dense(K, activation='softmax')")
        loss.on_probabilities = fused
    if last_layer is not None:
        last_layer.fused_with_loss = fused


def check_metrics(metrics) -> None:
    """Keras's ``metrics=['accuracy']`` is fine (dpnn always reports accuracy); nothing else exists."""
    if metrics is None:
        return
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if str(m).lower() not in ("accuracy", "acc", "categorical_accuracy")]
    if unknown:
        raise ValueError(f"compile(metrics=...): unknown metric(s) {unknown}; dpnn reports loss and "
                         "accuracy (for classifiers) by itself, so pass metrics=['accuracy'] or nothing")
