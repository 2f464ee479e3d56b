"""Softmax cross-entropy: ``CategoricalCrossentropy`` (one-hot, soft or integer targets) and
``SparseCategoricalCrossentropy`` (integer class labels), with Keras's semantics.

Targets are never reduced to their argmax: a row of probabilities (label smoothing by hand,
mixup, a teacher's outputs) enters the loss as it is, -sum_k y_k log p_k, and the gradient
w.r.t. the logits is softmax(z) * sum_k y_k - y (PyTorch's ``CrossEntropyLoss`` with
probability targets; p - y when the row sums to 1). On probabilities (``from_logits=False``)
the value is Keras's: p renormalised to sum 1 and clipped to [1e-7, 1 - 1e-7].
"""
from __future__ import annotations

import numpy as np

from .base import EPSILON, Loss, check_keras_options, log_softmax, softmax


def labels_to_index(y_true: np.ndarray, K: int) -> np.ndarray:
    """Integer labels (N,) or (N, 1) -> integer labels (N,), validated against K classes."""
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"labels must be integers (N,) or one-hot/probability rows (N, {K}); got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(y == np.round(y)):
            raise ValueError("labels must be whole numbers (class indices) or one-hot rows")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "biu":
        raise TypeError(f"labels must be numbers, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"labels must be in [0, {K - 1}] for a model with {K} outputs; "
                         f"found values in [{y.min()}, {y.max()}]")
    return y


def is_dense(y: np.ndarray, K: int) -> bool:
    """Rows of K class weights (one-hot or probabilities), rather than class indices."""
    return y.ndim == 2 and y.shape[1] == K and K > 1


def log_probabilities(y_pred: np.ndarray, on_probabilities: bool) -> np.ndarray:
    """(M, K) log-probabilities: log-softmax of logits, or Keras's log of renormalised, clipped p."""
    if not on_probabilities:
        return log_softmax(y_pred)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = y_pred / y_pred.sum(axis=-1, keepdims=True)
    return np.log(np.clip(p, EPSILON, 1.0 - EPSILON))


class CategoricalCrossentropy(Loss):
    """Cross-entropy of a softmax over K classes, as Keras's ``CategoricalCrossentropy``.

    Targets: one-hot or probability rows (N, K), or integer labels (N,) (dpnn's convenience;
    Keras wants SparseCategoricalCrossentropy for those). ``label_smoothing`` s turns every
    target row y into y (1 - s) + s / K, as Keras and PyTorch do.

    ``from_logits``: None (the default) lets ``Model.compile`` decide from the last layer: a
    model ending in a softmax (``Activation('softmax')`` or ``activation='softmax'``) outputs
    probabilities, any other outputs logits; called as a function, None means probabilities
    (Keras's default). On a softmax output the gradient is the fused softmax-cross-entropy one,
    p * sum(y) - y, handed to the softmax's input (the softmax layer passes it through), so
    both ways train alike; True/False insist and are checked at compile.
    """
    name = "categorical_crossentropy"

    def __init__(self, from_logits: bool | None = None, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size", name: str | None = None, axis: int = -1) -> None:
        super().__init__(reduction, name)
        self.label_smoothing = check_keras_options(from_logits, label_smoothing, axis,
                                                   "cross-entropy reads the classes on the last axis")
        self.from_logits = from_logits
        self.on_probabilities = from_logits is False   # the decision compile made
        self.decided = from_logits is not None          # compile decides a None (fit_loss_to_output)

    # -- training ---------------------------------------------------------------------------
    def forward(self, y_pred: np.ndarray, y_true: np.ndarray) -> float:
        if y_pred.ndim != 2:
            raise ValueError(f"{type(self).__name__} needs outputs (N, K); got shape {y_pred.shape}")
        N, K = y_pred.shape
        y = np.asarray(y_true)
        if len(y) != N:
            raise ValueError(f"got {len(y)} labels for {N} samples")
        self._labels, self._y = self.targets(y, K, y_pred.dtype)
        logp = log_probabilities(y_pred, self.on_probabilities)            # (N, K)
        self._probs = y_pred if self.on_probabilities else softmax(y_pred)  # (N, K)
        if self._y is None:
            self.per_sample = -logp[np.arange(N), self._labels]             # (N,)
        else:
            self.per_sample = -(self._y * logp).sum(axis=1)                  # (N,)
        return float(self.per_sample.mean()) if N else 0.0

    def backward(self, denominator: float | None = None) -> np.ndarray:
        """d(sum of losses)/d(logits) / denominator: on probabilities too, the softmax's input."""
        N = self._probs.shape[0]
        if self._y is None:
            g = self._probs.copy()                                           # (N, K)
            g[np.arange(N), self._labels] -= 1
        else:
            g = self._probs * self._y.sum(axis=1, keepdims=True) - self._y   # (N, K)
        return g * g.dtype.type(1.0 / (denominator or N))

    def targets(self, y: np.ndarray, K: int, dtype) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(integer labels, None) or (None, dense target rows (N, K) in ``dtype``, smoothed)."""
        if is_dense(y, K):
            if y.dtype.kind not in "biuf":
                raise TypeError(f"targets must be numbers, got dtype {y.dtype}")
            dense = y.astype(dtype, copy=False)
        else:
            labels = labels_to_index(y, K)
            if not self.label_smoothing:
                return labels, None
            dense = np.zeros((len(labels), K), dtype)
            dense[np.arange(len(labels)), labels] = 1
        if self.label_smoothing:
            s = self.label_smoothing
            dense = dense * dtype.type(1.0 - s) + dtype.type(s / K)
        return None, dense

    # -- Keras ------------------------------------------------------------------------------
    def calls_on_probabilities(self) -> bool:
        return self.on_probabilities if self.decided else not self.from_logits

    def call(self, y_true, y_pred) -> np.ndarray:
        """Per-sample losses (y_pred.shape[:-1]); y_true must have y_pred's shape, as in Keras."""
        y_pred, y_true = np.asarray(y_pred, np.float32), np.asarray(y_true)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"Arguments `target` and `output` must have the same shape: got "
                             f"{y_true.shape} and {y_pred.shape}; integer class labels go to "
                             "SparseCategoricalCrossentropy")
        return self._values(y_true.reshape(-1, y_pred.shape[-1]), y_pred).reshape(y_pred.shape[:-1])

    def _values(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        K = y_pred.shape[-1]
        flat = y_pred.reshape(-1, K)                                          # (M, K)
        logp = log_probabilities(flat, self.calls_on_probabilities())
        labels, dense = self.targets(y_true, K, flat.dtype)
        if dense is None:
            return -logp[np.arange(len(flat)), labels]
        return -(dense * logp).sum(axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Keras's ``SparseCategoricalCrossentropy``: integer class labels (N,) or (N, 1) only;
    for one-hot or probability rows use :class:`CategoricalCrossentropy`."""
    name = "sparse_categorical_crossentropy"

    def __init__(self, from_logits: bool | None = None, reduction: str | None = "sum_over_batch_size",
                 name: str | None = None, ignore_class: int | None = None, axis: int = -1) -> None:
        if ignore_class is not None:
            raise ValueError("SparseCategoricalCrossentropy(ignore_class=...) is not supported by dpnn; "
                             "give the samples to ignore sample_weight 0 instead")
        super().__init__(from_logits, 0.0, reduction, name, axis)

    def targets(self, y: np.ndarray, K: int, dtype):
        if y.ndim == 2 and y.shape[1] > 1:
            raise ValueError(f"sparse_categorical_crossentropy takes integer class labels (N,); got rows "
                             f"of shape {y.shape} (one-hot or probabilities): use categorical_crossentropy")
        return labels_to_index(y, K), None

    def call(self, y_true, y_pred) -> np.ndarray:
        y_pred, y_true = np.asarray(y_pred, np.float32), np.asarray(y_true)
        lead = y_pred.shape[:-1]
        if y_true.shape == lead + (1,):
            y_true = y_true[..., 0]
        if y_true.shape != lead:
            raise ValueError(f"sparse_categorical_crossentropy: labels of shape {y_true.shape} do not "
                             f"fit outputs of shape {y_pred.shape}; pass one class index per output row")
        return self._values(y_true.reshape(-1), y_pred).reshape(lead)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("label_smoothing")
        return config
