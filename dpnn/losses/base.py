"""The loss contract: dpnn's training pair ``forward``/``backward`` and Keras's ``loss(y_true, y_pred)``.

Training (every engine, :mod:`dpnn.recipe`)::

    value = loss.forward(y_pred, y_true)     mean loss; keeps per_sample (N,) and what backward needs
    grad = loss.backward(denominator)        d(sum of per-sample losses)/d(y_pred) / denominator

A data-parallel worker passes the *global* batch size as ``denominator``, so the shard
gradients simply add up to the full-batch gradient; sample weights scale each sample's row
(the recipe does it, for any loss that keeps ``per_sample``).

Keras (a loss as a function)::

    loss(y_true, y_pred, sample_weight=None) Keras's argument order, weighting and ``reduction``

A subclass written Keras's way implements ``call(y_true, y_pred) -> per-sample values``; the
built-in losses implement both. Values follow Keras 3 (``keras/src/losses/loss.py``): the
weighted values are summed and divided by their count (``'sum_over_batch_size'``), not by the
sum of the weights.
"""
from __future__ import annotations

import numpy as np

EPSILON = 1e-7          # Keras's backend.epsilon(): probabilities are clipped to [EPSILON, 1 - EPSILON]
REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none", None)
TRAINING_REDUCTIONS = ("sum_over_batch_size", "mean")     # what fit's gradient is the derivative of


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in z's dtype: the one formula of the Activation layer, the
    fused activation of Dense/Conv2D and the cross-entropy (so both ways of writing a softmax
    classifier train bitwise alike)."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log(softmax(z)) over the last axis without overflow, in z's dtype."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def check_reduction(reduction) -> str | None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}")
    return None if reduction == "none" else reduction


def check_keras_options(from_logits, label_smoothing, axis: int, what: str) -> float:
    """The options Keras's cross-entropy classes share, checked; the smoothing as a float."""
    if from_logits not in (None, True, False):
        raise TypeError(f"from_logits must be True, False or None, got {from_logits!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if axis != -1:
        raise ValueError(f"dpnn's {what}; got axis={axis!r}")
    return float(label_smoothing)


def weighted_values(values: np.ndarray, sample_weight) -> tuple[np.ndarray, np.ndarray | None]:
    """(values * sample_weight, the weights) with Keras's broadcasting: a scalar, one weight per
    sample (N,) or (N, 1), or one per value (the shape of ``values``)."""
    if sample_weight is None:
        return values, None
    w = np.asarray(sample_weight, dtype=values.dtype)
    if w.ndim == values.ndim + 1 and w.shape[-1] == 1:
        w = w[..., 0]                                          # (N, 1) weights of (N,) values
    while 0 < w.ndim < values.ndim:
        w = w[..., None]                                       # (N,) weights of (N, T) values
    try:
        return values * w, w
    except ValueError:
        raise ValueError(f"sample_weight of shape {np.shape(sample_weight)} does not fit the losses of "
                         f"shape {values.shape}; pass one weight per sample ({values.shape[0]},)") from None


def reduce_values(values: np.ndarray, weights: np.ndarray | None, reduction: str | None):
    """Keras's ``reduce_values``: 'sum_over_batch_size'/'mean' divide the sum by the number of
    values, 'mean_with_sample_weight' by the sum of the weights, 'sum' keeps the sum."""
    if reduction is None or values.ndim == 0 or values.size == 0:
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    divisor = weights.sum() if reduction == "mean_with_sample_weight" and weights is not None else values.size
    return total / divisor if divisor else total * 0


class Loss:
    """Base class of dpnn's losses and of a user's own.

    Train with it: implement ``forward(y_pred, y_true) -> mean`` (keep ``self.per_sample`` (N,))
    and ``backward(denominator=None) -> d(sum of losses)/d(y_pred) / denominator``. Call it as
    Keras does, ``loss(y_true, y_pred, sample_weight=None)``: from ``call(y_true, y_pred)``
    (per-sample values, Keras's way) if the subclass writes one, else from ``forward``.
    """
    name = "loss"
    reduction = "sum_over_batch_size"

    def __init__(self, reduction: str | None = "sum_over_batch_size", name: str | None = None) -> None:
        self.reduction = check_reduction(reduction)
        if name is not None:
            self.name = name

    def forward(self, y_pred: np.ndarray, y_true: np.ndarray) -> float:
        if type(self).call is Loss.call:
            raise NotImplementedError(f"{type(self).__name__} implements neither forward(y_pred, y_true) "
                                      "nor call(y_true, y_pred)")
        self.per_sample = per_sample(np.asarray(self.call(y_true, y_pred)), len(y_pred))
        return float(self.per_sample.mean()) if len(y_pred) else 0.0

    def backward(self, denominator: float | None = None) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no backward(denominator): dpnn has no "
                                  "automatic differentiation, so a loss that trains writes its gradient "
                                  "d(sum of losses)/d(y_pred) / denominator (see dpnn.losses)")

    def call(self, y_true, y_pred) -> np.ndarray:
        """Per-sample losses, Keras's way (a subclass may write this instead of forward)."""
        y_pred = np.asarray(y_pred, dtype=np.float32)
        self.forward(y_pred, np.asarray(y_true))
        return np.asarray(self.per_sample)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Keras: the ``reduction`` of the (weighted) per-sample losses; a float, or the array
        of values when ``reduction=None``."""
        values = np.asarray(self.call(y_true, y_pred))
        weighted, w = weighted_values(values, sample_weight)
        out = reduce_values(weighted, w, self.reduction)
        return float(out) if np.ndim(out) == 0 else out

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction}


def per_sample(values: np.ndarray, n: int) -> np.ndarray:
    """(N,) one loss per sample: Keras-shaped values (N, ...) averaged over their other axes."""
    return values.reshape(n, -1).mean(axis=1) if values.ndim > 1 else values.reshape(n)
