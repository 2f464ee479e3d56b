"""Learning-rate callbacks: Keras's ``ReduceLROnPlateau`` and ``LearningRateScheduler``, and
dpnn's own ``fit(lr_schedule='plateau'|'cosine')`` (:class:`LRScheduler`).

They read and write the optimizer's learning rate (``optimizer.lr``); the new value is sent to
the workers with the next step, so every engine trains with it."""
from __future__ import annotations

import inspect
import math

import numpy as np

from .base import Callback
from .monitor import MonitorCallback, monitored


def get_lr(optimizer) -> float:
    return float(optimizer.lr)


def set_lr(optimizer, value: float) -> None:
    optimizer.lr = float(value)


def check_count(who: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{who}({name}=...) must be an int >= 0, got {value!r}")
    return int(value)


class ReduceLROnPlateau(MonitorCallback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved by
    ``min_delta`` for ``patience`` epochs (never below ``min_lr``), then wait ``cooldown``
    epochs before counting again: Keras's ``ReduceLROnPlateau``, with its defaults.
    ``verbose=1`` prints each cut; every cut is recorded in ``History.events`` either way."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 verbose: int = 0, mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0,
                 min_lr: float = 0.0) -> None:
        super().__init__(monitor, mode, min_delta)
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor outside (0, 1): the new "
                             f"learning rate is lr * factor. Received factor={factor}")
        if not min_lr >= 0:
            raise ValueError(f"ReduceLROnPlateau(min_lr=...) must be >= 0, got {min_lr!r}")
        self.factor, self.min_lr, self.verbose = float(factor), float(min_lr), verbose
        self.patience = check_count("ReduceLROnPlateau", "patience", patience)
        self.cooldown = check_count("ReduceLROnPlateau", "cooldown", cooldown)
        self._reset()

    def _reset(self) -> None:
        self.best, self.cooldown_counter, self.wait = None, 0, 0

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = get_lr(self.model.optimizer)
        current = self.get_monitor_value(logs, "Learning rate reduction is conditioned")
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best, self.wait = current, 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and self._reduce(epoch):
                self.cooldown_counter, self.wait = self.cooldown, 0

    def _reduce(self, epoch: int) -> bool:
        opt = self.model.optimizer
        old = get_lr(opt)
        if not old > np.float32(self.min_lr):
            return False
        new = max(old * self.factor, self.min_lr)
        set_lr(opt, new)
        self.announce(epoch, "reduce_lr", f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning "
                      f"rate to {new}.", self.verbose)
        return True


class LearningRateScheduler(Callback):
    """At the start of every epoch, ``lr = schedule(epoch, lr)`` (``epoch`` 0-based; a
    one-argument ``schedule(epoch)`` works too), as Keras's ``LearningRateScheduler``."""

    def __init__(self, schedule, verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler(schedule) needs a function schedule(epoch, lr) -> lr, "
                            f"got {type(schedule).__name__}")
        self.schedule, self.verbose = schedule, verbose
        self._takes_lr = takes_two_arguments(schedule)

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        lr = self.schedule(epoch, get_lr(opt)) if self._takes_lr else self.schedule(epoch)
        if isinstance(lr, bool) or not isinstance(lr, (float, np.floating)):
            raise ValueError(f"The output of the `schedule` function should be a float. Got: {lr!r}")
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"the `schedule` function returned the learning rate {lr} at epoch {epoch}; "
                             "it must be a finite number >= 0")
        set_lr(opt, lr)
        self.announce(epoch, "lr_schedule", f"Epoch {epoch + 1}: LearningRateScheduler setting learning "
                      f"rate to {float(lr)}.", self.verbose)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = logs["lr"] = get_lr(self.model.optimizer)


def takes_two_arguments(fn) -> bool:
    """Whether ``fn`` can be called as fn(epoch, lr) (Keras's new API) rather than fn(epoch)."""
    try:
        inspect.signature(fn).bind(0, 0.1)
    except TypeError:
        return False
    except ValueError:            # no signature (a builtin): try the new API
        return True
    return True


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

    def on_train_begin(self, logs=None):
        self.best, self.wait = -math.inf, 0
        if self.lr0 is None:
            self.lr0 = get_lr(self.model.optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        if self.kind == "cosine":
            frac = epoch / max(self.epochs, 1)
            set_lr(self.model.optimizer,
                   self.lr_min + 0.5 * (self.lr0 - self.lr_min) * (1 + math.cos(math.pi * frac)))

    def on_epoch_end(self, epoch, logs=None):
        if self.kind != "plateau":
            return
        _, value = monitored(logs)
        if value > self.best:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            opt = self.model.optimizer
            lr, self.wait = max(get_lr(opt) * self.factor, self.lr_min), 0
            if lr < get_lr(opt):
                set_lr(opt, lr)
                self.announce(epoch, "reduce_lr", f"Epoch {epoch + 1}: ReduceLROnPlateau "
                              f"reducing learning rate to {lr:.4g}.")
