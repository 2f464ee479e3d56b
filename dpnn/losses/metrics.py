"""Accuracy as Keras's ``metrics=['accuracy']`` reads it for the loss: samples predicted right.

Counts (not means), so shards, ranks and steps add them exactly; unweighted, as Keras's
``metrics=`` are (sample weights reach the loss only).
"""
from __future__ import annotations

import numpy as np

from .binary import BinaryCrossentropy


def count_correct(out: np.ndarray, y: np.ndarray, loss=None) -> int:
    """Samples predicted right, or -1 when accuracy has no meaning here.

    Outputs (N, K >= 2): the argmax agrees with the label (N,) or with the argmax of the target
    row (one-hot or soft). One output (N, 1) trained with binary cross-entropy: Keras's binary
    accuracy, p > 0.5 (a logit > 0) against a target > 0.5. Anything else (regression, several
    binary outputs, whose accuracy is a fraction per sample): -1.
    """
    binary = isinstance(loss, BinaryCrossentropy)
    if out.ndim != 2 or (binary and out.shape[1] > 1):
        return -1
    y = np.asarray(y)
    if out.shape[1] == 1:
        if not binary:
            return -1
        threshold = 0.5 if loss.on_probabilities else 0.0
        return int(((out[:, 0] > threshold) == (y.reshape(len(out), -1)[:, 0] > 0.5)).sum())
    labels = y.argmax(axis=1) if y.ndim == 2 and y.shape[1] == out.shape[1] else y.reshape(-1)
    return int((out.argmax(axis=1) == labels).sum())
