"""Losses: categorical / sparse categorical / binary cross-entropy and mean squared error, with
Keras's names and semantics (one concept a module; every name stays importable from here).

- :mod:`.base`: the contract (training ``forward``/``backward``; Keras's ``loss(y_true, y_pred,
  sample_weight)`` and ``reduction``), ``softmax``
- :mod:`.crossentropy`: ``CategoricalCrossentropy`` (soft targets, ``label_smoothing``) and
  ``SparseCategoricalCrossentropy``
- :mod:`.binary`: ``BinaryCrossentropy`` (logits, or fused with a sigmoid output)
- :mod:`.regression`: ``MeanSquaredError``
- :mod:`.registry`: names, ``get_loss`` and the loss/last-layer match made at ``compile``
- :mod:`.metrics`: accuracy as Keras reads it for the loss (argmax, or binary)
"""
from .base import EPSILON, Loss, log_softmax, softmax  # noqa: F401
from .binary import BinaryCrossentropy
from .crossentropy import CategoricalCrossentropy, SparseCategoricalCrossentropy, labels_to_index
from .registry import LOSSES, check_metrics, fit_loss_to_output, get_loss  # noqa: F401
from .regression import MeanSquaredError

_labels_to_index = labels_to_index          # the name the single-module losses.py had

# Keras's function-style aliases
CCE, SCCE, BCE, MSE = CategoricalCrossentropy, SparseCategoricalCrossentropy, BinaryCrossentropy, MeanSquaredError


def categorical_crossentropy(y_true, y_pred, from_logits: bool = False, label_smoothing: float = 0.0):
    """Keras's ``losses.categorical_crossentropy``: per-sample values."""
    return CategoricalCrossentropy(from_logits, label_smoothing).call(y_true, y_pred)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits: bool = False):
    """Keras's ``losses.sparse_categorical_crossentropy``: per-sample values."""
    return SparseCategoricalCrossentropy(from_logits).call(y_true, y_pred)


def binary_crossentropy(y_true, y_pred, from_logits: bool = False, label_smoothing: float = 0.0):
    """Keras's ``losses.binary_crossentropy``: per-sample values (mean over the last axis)."""
    return BinaryCrossentropy(from_logits, label_smoothing).call(y_true, y_pred)


def mean_squared_error(y_true, y_pred):
    """Keras's ``losses.mean_squared_error``: per-sample values (mean over the last axis)."""
    return MeanSquaredError().call(y_true, y_pred)
