"""Sample weights that travel with their targets: ``fit(sample_weight=)``, ``fit(class_weight=)``.

Weighted targets are one structured array, fields ``y`` (the targets as given: labels (N,),
rows (N, K)...) and ``w`` (float32, one weight per sample)::

    Y = with_weights(y, w)            (N,) records; Y[rows] keeps each weight with its sample
    targets, w = split_weights(Y[a:b])

so every engine moves them as it moves labels (row gathering, the workers' shared dataset,
MPI ranks, validation sets) and the recipe (:mod:`dpnn.recipe`) weights each sample's loss
and gradient row where the loss is computed. As in Keras 3, the weighted losses are summed
and divided by the number of samples (``'sum_over_batch_size'``), not by the sum of weights,
so shards and uneven last batches add up exactly, whoever computed them.
"""
from __future__ import annotations

import numpy as np

FIELDS = ("y", "w")


def is_weighted(y: np.ndarray) -> bool:
    return getattr(getattr(y, "dtype", None), "names", None) == FIELDS


def with_weights(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Targets ``y`` (N, ...) and weights ``w`` (N,) as one (N,) structured array."""
    y = np.asarray(y)
    out = np.empty(len(y), dtype=[("y", y.dtype, y.shape[1:]), ("w", np.float32)])
    out["y"], out["w"] = y, w
    return out


def split_weights(y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(targets, weights (N,) float32) of weighted targets; (y, None) of plain ones."""
    if is_weighted(y):
        return y["y"], y["w"]
    return y, None


def weighted_sum(per_sample: np.ndarray, weights: np.ndarray | None) -> float:
    """sum_i weights[i] * per_sample[i] in float64 (the plain sum without weights)."""
    per = np.asarray(per_sample).astype(np.float64)
    return float(per.sum() if weights is None else (per * weights.astype(np.float64)).sum())


def scale_rows(grad: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Row i of d(losses)/d(outputs) (N, ...) times weights[i]; ``grad`` itself without weights."""
    if weights is None:
        return grad
    return grad * weights.astype(grad.dtype).reshape((len(grad),) + (1,) * (grad.ndim - 1))


def check_sample_weight(sample_weight, n: int, what: str = "sample_weight") -> np.ndarray:
    """One finite weight >= 0 per sample, (N,) or (N, 1), as float32 (N,)."""
    w = np.asarray(sample_weight)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be numbers, one per sample; got dtype {w.dtype}")
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.shape != (n,):
        raise ValueError(f"{what} must hold one weight per sample, shape ({n},); got shape {w.shape}")
    w = w.astype(np.float32)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{what} must be finite and >= 0; found values in [{w.min()}, {w.max()}]")
    return w


def class_weight_to_sample_weights(y: np.ndarray, class_weight) -> np.ndarray:
    """Keras 3's ``class_weight_to_sample_weights``: each sample weighs its class's weight
    (1.0 for a class not in the dict); the class of a row (N, K) is its argmax."""
    if not hasattr(class_weight, "items") or not hasattr(class_weight, "get"):
        raise ValueError(f"class_weight must be a dict-like mapping of class indices to weights, e.g. "
                         f"{{0: 1.0, 1: 5.0}}; got {type(class_weight).__name__}")
    cleaned = {}
    for key, value in class_weight.items():
        try:
            cleaned[int(key)] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"class_weight must be a dict with integer keys (class indices) and numbers "
                             f"as values; got the entry {key!r}: {value!r}") from None
    y = np.asarray(y)
    if y.ndim > 1:
        y = y.argmax(axis=-1) if y.shape[-1] != 1 else y[..., 0]
    classes = np.round(y).astype(np.int64).tolist()
    w = np.array([cleaned.get(c, 1.0) for c in classes], np.float64)
    return check_sample_weight(w, len(y), "class_weight")


def sample_weights(y: np.ndarray, sample_weight=None, class_weight=None) -> np.ndarray | None:
    """The weights (N,) float32 fit trains with, from one of ``sample_weight``/``class_weight``."""
    if sample_weight is not None and class_weight is not None:
        raise ValueError("fit() got both sample_weight and class_weight; as in Keras, pass one of them "
                         "(multiply the class weights into sample_weight yourself to combine them)")
    if class_weight is not None:
        return class_weight_to_sample_weights(y, class_weight)
    if sample_weight is not None:
        return check_sample_weight(sample_weight, len(y))
    return None


def attach(y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """``with_weights(y, w)``, or ``y`` itself when there are no weights."""
    return y if w is None else with_weights(y, w)
