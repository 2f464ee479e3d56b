"""Losses by name (Keras's strings), and the match between a loss and the model's last layer."""
from __future__ import annotations

from .base import TRAINING_REDUCTIONS, Loss
from .binary import BinaryCrossentropy
from .crossentropy import CategoricalCrossentropy, SparseCategoricalCrossentropy
from .regression import MeanSquaredError

LOSSES = {"categorical_crossentropy": CategoricalCrossentropy, "cce": CategoricalCrossentropy,
          "crossentropy": CategoricalCrossentropy,
          "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
          "scce": SparseCategoricalCrossentropy,
          "binary_crossentropy": BinaryCrossentropy, "bce": BinaryCrossentropy,
          "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError}


def get_loss(loss) -> Loss:
    """A Loss instance from a name ('categorical_crossentropy'/'cce', 'sparse_categorical_crossentropy',
    'binary_crossentropy', 'mse'), one of the functions of that name in dpnn.losses, a Loss class
    or an instance."""
    if isinstance(loss, type) and issubclass(loss, Loss):
        loss = loss()
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in LOSSES:
        return LOSSES[loss.lower()]()
    if callable(loss) and getattr(loss, "__module__", "") == "dpnn.losses" and loss.__name__ in LOSSES:
        return LOSSES[loss.__name__]()       # Keras's compile(loss=keras.losses.binary_crossentropy)
    if hasattr(loss, "forward") and hasattr(loss, "backward"):
        return loss
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(sorted(LOSSES))} "
                     "or pass an object with forward(y_pred, y_true) and backward()")


def check_trainable(loss) -> None:
    """What fit needs of a Loss: its mean over the batch, and a gradient (dpnn has no autodiff)."""
    if not isinstance(loss, Loss):
        return
    if getattr(loss, "reduction", None) not in TRAINING_REDUCTIONS:
        raise ValueError(f"compile(): {type(loss).__name__}(reduction={loss.reduction!r}) cannot train: fit "
                         "minimises the mean over the batch ('sum_over_batch_size'); use the default")
    if type(loss).backward is Loss.backward:
        raise TypeError(f"compile(): {type(loss).__name__} has no backward(denominator): dpnn has no "
                        "automatic differentiation, so a loss that trains writes forward(y_pred, y_true) "
                        "and backward(denominator) (see docs/keras.md)")


def fit_loss_to_output(loss, last_layer) -> None:
    """Match the loss to what the model outputs (``Model.compile``), or refuse the pair.

    Cross-entropy on a softmax output (binary cross-entropy on a sigmoid one) reads
    probabilities, and that activation is told to pass the loss's gradient (taken w.r.t. its
    input) straight through; on any other output it reads logits. A pair that cannot train
    right is one ValueError naming both.
    """
    check_trainable(loss)
    act = last_layer.output_activation if last_layer is not None else None
    fused = False
    if isinstance(loss, (CategoricalCrossentropy, BinaryCrossentropy)):
        fused = _fused(loss, act, last_layer)
        loss.on_probabilities, loss.decided = fused, True
    if last_layer is not None:
        last_layer.fused_with_loss = fused


def _fused(loss, act: str | None, last_layer) -> bool:
    """Whether ``loss`` reads the probabilities of a ``act`` output (else logits), or a ValueError."""
    binary = isinstance(loss, BinaryCrossentropy)
    own, kind = ("sigmoid", "binary_crossentropy") if binary else ("softmax", "categorical_crossentropy")
    cls = type(loss).__name__
    where = f"the model ends in {type(last_layer).__name__}" + (f"({act!r})" if act else "")
    if act == own:
        if loss.from_logits:
            raise ValueError(f"compile(): {where}, so it outputs probabilities, but the loss was given "
                             f"from_logits=True (a second {own}); use {cls}() or drop the {own}")
        return True
    if loss.from_logits is False:
        raise ValueError(f"compile(): {cls}(from_logits=False) needs probabilities, but {where}; end the "
                         f"model with activation='{own}' or use from_logits=None")
    if act in ("sigmoid", "tanh", "relu", "softmax"):
        raise ValueError(f"compile(): {kind} needs logits or a {own} output, but {where}, whose outputs "
                         f"are neither; end the model with Dense(K) (logits) or Dense(K, activation='{own}')")
    return False


def check_metrics(metrics) -> None:
    """Keras's ``metrics=['accuracy']`` is fine (dpnn always reports accuracy); nothing else exists."""
    if metrics is None:
        return
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if str(m).lower() not in ("accuracy", "acc", "categorical_accuracy",
                                                          "sparse_categorical_accuracy")]
    if unknown:
        raise ValueError(f"compile(metrics=...): unknown metric(s) {unknown}; dpnn reports loss and "
                         "accuracy (for classifiers) by itself, so pass metrics=['accuracy'] or nothing")
