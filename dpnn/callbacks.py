"""Keras-like callbacks: the history fit returns, early stopping and LR schedules.

The loop (:class:`dpnn.training.TrainingSession`) calls every hook with Keras-style ``logs``:

================  ==========================================================================
on_train_begin    the engine (``engine``, ``workers``, ``ranks``, ``rank``...), ``samples``,
                  ``epochs``, ``initial_epoch``, ``batch_size``, ``steps``, ``validation``
on_epoch_begin    ``lr``, ``epochs``, ``samples``, ``steps``, ``batch_size``
on_batch_end      ``batch``, ``size``, ``loss`` and ``acc`` of that batch, ``lr``
on_epoch_end      ``loss``, ``acc``, ``val_loss``/``val_acc`` (only with validation data),
                  ``lr``, ``samples_per_s``, ``time``
on_train_end      ``epochs_run`` (counting earlier runs), ``stopped_epoch`` (1-based, or None)
================  ==========================================================================

What a callback wants the user to know (early stopping, weights restored, a learning-rate cut)
goes through ``self.session.announce``: printed when fit is verbose, recorded in
``History.events`` either way. Printing itself is a callback too (:mod:`dpnn.reporting`).
"""
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


KERAS_NAMES = {"accuracy": "acc", "val_accuracy": "val_acc", "learning_rate": "lr"}   # -> dpnn's


def monitored(logs: dict, monitor: str | None = None) -> tuple[str, float]:
    """The figure schedules watch, higher is better: ``monitor`` (a loss is negated), else
    val_acc, else acc, else -loss."""
    if monitor is not None:
        key = KERAS_NAMES.get(monitor, monitor)
        value = float(logs.get(key, math.nan))
        return key, -value if key.endswith("loss") else value
    for key in ("val_acc", "acc"):
        v = logs.get(key)
        if v is not None and not math.isnan(v):
            return key, float(v)
    key = "val_loss" if logs.get("val_loss") is not None else "loss"
    return key, -float(logs[key])


class History(dict, Callback):
    """What ``fit`` returns: ``history.history['loss']`` as in Keras, and the same lists as
    ``history['loss']`` (it is the dict itself). Keys: ``loss``, ``acc``, ``lr`` and, with
    validation data only, ``val_loss``, ``val_acc``; Keras's ``accuracy``/``val_accuracy`` read
    the same lists. ``events``: what the callbacks announced, e.g.
    ``{'epoch': 3, 'event': 'early_stopping', 'message': 'Epoch 3: early stopping'}``;
    ``epoch``: the (0-based) epochs recorded.

    ``fit(history=d)`` continues the lists of a dict ``d`` (an earlier run's): they are the
    same list objects, so ``d`` follows too.
    """
    KEYS = ("loss", "acc", "val_loss", "val_acc", "lr")

    def __init__(self, history: dict | None = None) -> None:
        super().__init__(history or {})
        self._mirror = history
        self.epoch: list[int] = []
        self.events: list[dict] = []

    @property
    def history(self) -> "History":
        return self

    def __missing__(self, key):
        if KERAS_NAMES.get(key) in self:
            return self[KERAS_NAMES[key]]
        raise KeyError(key)

    def expect(self, keys) -> None:
        """Start these lists (empty) unless they exist, in the caller's dict too."""
        for key in keys:
            values = self.setdefault(key, [])
            if self._mirror is not None:
                self._mirror[key] = values

    def on_epoch_end(self, epoch, logs):
        self.epoch.append(epoch)
        self.expect(key for key in self.KEYS if key in logs)
        for key in self.KEYS:
            if key in logs:
                self[key].append(float(logs[key]))

    def record(self, epoch: int, event: str, message: str) -> None:
        self.events.append({"epoch": epoch + 1, "event": event, "message": message})


def best_in_history(history: dict, best: float, monitor: str | None = None) -> int | None:
    """The first (0-based) epoch of ``history`` whose monitored figure is ``best``, or None."""
    n = len(history.get("loss", []))
    for epoch in range(n):
        logs = {k: v[epoch] for k, v in history.items() if isinstance(v, list) and len(v) == n}
        if monitored(logs, monitor)[1] == best:
            return epoch
    return None


class BestWeights(Callback):
    """Remembers the parameters of the best epoch so far (and the start, before any epoch),
    with the optimizer state that goes with them (restored only after a divergence).
    ``monitor`` and ``min_delta`` as :class:`EarlyStopping`'s; ``best_epoch`` is 0-based (None:
    none yet)."""

    def __init__(self, monitor: str | None = None, min_delta: float = 0.0) -> None:
        self.monitor, self.min_delta = monitor, min_delta

    def on_train_begin(self, logs):
        self.best, self.params, self.state = -math.inf, self.model.params.copy(), self.model.state.copy()
        self.optimizer_state, self.best_epoch = self.model.optimizer.state_dict(), None

    def on_epoch_end(self, epoch, logs):
        _, value = monitored(logs, self.monitor)
        if value > self.best + self.min_delta:
            self.best, self.best_epoch = value, epoch
            np.copyto(self.params, self.model.params)
            np.copyto(self.state, self.model.state)
            self.optimizer_state = self.model.optimizer.state_dict()

    def restore(self, optimizer: bool = False) -> None:
        np.copyto(self.model.params, self.params)
        np.copyto(self.model.state, self.state)
        if optimizer:
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
        self.best, self.wait, self.stopped_epoch, self.restored_epoch = -math.inf, 0, None, None
        self.tracker = self.session.callbacks.best_weights     # the loop's (it monitors the default)
        if self.monitor is not None or self.min_delta:         # its own figure: its own snapshot
            self.tracker = BestWeights(self.monitor, self.min_delta)
            self.tracker.model = self.model
            self.tracker.on_train_begin(logs)

    def on_epoch_end(self, epoch, logs):
        if self.tracker is not self.session.callbacks.best_weights:
            self.tracker.on_epoch_end(epoch, logs)
        _, value = monitored(logs, self.monitor)
        if value > self.best + self.min_delta:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True
                self.session.announce(epoch, "early_stopping", f"Epoch {epoch + 1}: early stopping")

    def on_train_end(self, logs):
        if not (self.restore_best and self.stopped_epoch is not None):
            return
        self.tracker.restore()
        best = self.tracker.best_epoch
        if best is None:          # a resumed run's best came before it: find it in the history
            best = best_in_history(self.session.history, self.tracker.best, self.monitor)
        self.restored_epoch = best
        self.session.announce(self.stopped_epoch if best is None else best, "restored_best_weights",
                              "Restoring model weights from the end of the best epoch"
                              + (f": {best + 1}." if best is not None else "."))


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
            lr, self.wait = max(opt.lr * self.factor, self.lr_min), 0
            if lr < opt.lr:
                opt.lr = lr
                self.session.announce(epoch, "reduce_lr", f"Epoch {epoch + 1}: ReduceLROnPlateau "
                                      f"reducing learning rate to {lr:.4g}.")


class CallbackList:
    """Calls each hook on every callback, after the built-in best-weights tracker and the
    history (so that the others, a checkpoint writer among them, see this epoch recorded)."""

    def __init__(self, callbacks: list[Callback], model, history: History | None = None) -> None:
        self.best_weights = BestWeights()
        self.history = history if history is not None else History()
        self.callbacks = [self.best_weights, self.history] + list(callbacks)
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

