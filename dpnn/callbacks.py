"""Keras-like callbacks, plus the two built into fit: early stopping and LR schedules."""
from __future__ import annotations

import math

import numpy as np


class Callback:
    """Override any hook; ``self.model`` (the model) and ``self.session`` (the
    :class:`dpnn.training.TrainingSession`: engine, callbacks, progress) are set before training."""
    model = None
    session = None

    def on_train_begin(self, logs: dict) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict) -> None: ...
    def on_batch_end(self, step: int, logs: dict) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...
    def on_train_end(self, logs: dict) -> None: ...


MONITOR_ALIASES = {"val_accuracy": "val_acc", "accuracy": "acc"}     # Keras's names


def monitored(logs: dict, monitor: str | None = None) -> tuple[str, float]:
    """The figure schedules watch, higher is better: ``monitor`` (a loss is negated), else
    val_acc, else acc, else -loss."""
    if monitor is not None:
        key = MONITOR_ALIASES.get(monitor, monitor)
        value = float(logs.get(key, math.nan))
        return key, -value if key.endswith("loss") else value
    for key in ("val_acc", "acc"):
        v = logs.get(key)
        if v is not None and not math.isnan(v):
            return key, float(v)
    key = "val_loss" if logs.get("val_loss") is not None else "loss"
    return key, -float(logs[key])


class BestWeights(Callback):
    """Remembers the parameters of the best epoch so far (and the start, before any epoch),
    with the optimizer state that goes with them (restored only after a divergence)."""

    def on_train_begin(self, logs):
        self.best, self.params, self.state = -math.inf, self.model.params.copy(), self.model.state.copy()
        self.optimizer_state = self._optimizer_state()

    def on_epoch_end(self, epoch, logs):
        _, value = monitored(logs)
        if value > self.best:
            self.best = value
            np.copyto(self.params, self.model.params)
            np.copyto(self.state, self.model.state)
            self.optimizer_state = self._optimizer_state()

    def _optimizer_state(self):
        state_dict = getattr(self.model.optimizer, "state_dict", None)
        return state_dict() if state_dict is not None else None

    def restore(self, optimizer: bool = False) -> None:
        np.copyto(self.model.params, self.params)
        np.copyto(self.model.state, self.state)
        if optimizer and self.optimizer_state is not None:
            self.model.optimizer.load_state_dict(self.optimizer_state)


class EarlyStopping(Callback):
    """Stop when the monitored figure has not improved by ``min_delta`` for ``patience`` epochs;
    the best weights are restored.

    ``monitor``: 'val_loss', 'val_acc' ('val_accuracy'), 'loss' or 'acc' ('accuracy'); by
    default val_acc if there is validation data, else acc. ``restore_best_weights`` is
    Keras's name for ``restore_best``.
    """
    MONITORS = ("val_loss", "val_acc", "val_accuracy", "loss", "acc", "accuracy")

    def __init__(self, patience: int = 3, min_delta: float = 0.0, restore_best: bool = True,
                 monitor: str | None = None, restore_best_weights: bool | None = None) -> None:
        if monitor is not None and monitor not in self.MONITORS:
            raise ValueError(f"EarlyStopping(monitor={monitor!r}): choose one of {', '.join(self.MONITORS)}")
        if restore_best_weights is not None:
            restore_best = bool(restore_best_weights)
        self.patience, self.min_delta, self.restore_best = patience, min_delta, restore_best
        self.monitor = monitor

    def on_train_begin(self, logs):
        self.best, self.wait, self.stopped_epoch = -math.inf, 0, None

    def on_epoch_end(self, epoch, logs):
        _, value = monitored(logs, self.monitor)
        if value > self.best + self.min_delta:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True

    def on_train_end(self, logs):
        if self.restore_best and self.stopped_epoch is not None:
            self.session.callbacks.best_weights.restore()


class LRScheduler(Callback):
    """'plateau': lr *= factor after ``patience`` epochs without improvement (not below lr_min);
    'cosine': lr follows a half cosine from its start value to lr_min over ``epochs``."""

    def __init__(self, kind: str, epochs: int, factor: float = 0.5, patience: int = 2,
                 lr_min: float = 1e-6) -> None:
        if kind not in ("plateau", "cosine"):
            raise ValueError(f"lr_schedule must be 'plateau', 'cosine' or None, got {kind!r}")
        if not 0 < factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1), got {factor}")
        self.kind, self.epochs, self.factor, self.patience, self.lr_min = kind, epochs, factor, patience, lr_min
        self.lr0 = None

    def on_train_begin(self, logs):
        self.best, self.wait = -math.inf, 0
        if self.lr0 is None:
            self.lr0 = self.model.optimizer.lr

    def on_epoch_begin(self, epoch, logs):
        if self.kind == "cosine":
            frac = epoch / max(self.epochs, 1)
            self.model.optimizer.lr = self.lr_min + 0.5 * (self.lr0 - self.lr_min) * (1 + math.cos(math.pi * frac))

    def on_epoch_end(self, epoch, logs):
        if self.kind != "plateau":
            return
        _, value = monitored(logs)
        if value > self.best:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            opt = self.model.optimizer
            opt.lr, self.wait = max(opt.lr * self.factor, self.lr_min), 0


class CallbackList:
    """Calls each hook on every callback, after the built-in best-weights tracker."""

    def __init__(self, callbacks: list[Callback], model) -> None:
        self.best_weights = BestWeights()
        self.callbacks = [self.best_weights] + list(callbacks)
        for cb in self.callbacks:
            cb.model = model

    def set_session(self, session) -> None:
        for cb in self.callbacks:
            cb.session = session

    def __getattr__(self, hook: str):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args):
            for cb in self.callbacks:
                getattr(cb, hook, lambda *a: None)(*args)
        return call

    def on_diverged(self) -> None:
        """The loss went NaN/inf: put the best weights seen so far back into the model, and the
        optimizer state of that moment (its moments now hold NaN/inf too)."""
        self.best_weights.restore(optimizer=True)
