"""Early stopping (Keras's ``EarlyStopping``) and the best-weights tracker it restores from."""
from __future__ import annotations

import math

import numpy as np

from .history import best_in_history
from .monitor import MonitorCallback


class BestWeights(MonitorCallback):
    """Remembers the parameters of the best epoch so far (and the start, before any epoch),
    with the optimizer state that goes with them (restored only after a divergence).
    ``monitor``, ``mode``, ``min_delta`` and ``start_from_epoch`` as :class:`EarlyStopping`'s;
    ``best`` is -inf until an epoch is monitored; ``best_epoch`` is 0-based (None: none yet)."""

    def __init__(self, monitor: str | None = None, min_delta: float = 0.0, mode: str = "auto",
                 start_from_epoch: int = 0) -> None:
        super().__init__(monitor, mode, min_delta)
        self.start_from_epoch = start_from_epoch

    def on_train_begin(self, logs=None):
        self.best, self.params, self.state = -math.inf, self.model.params.copy(), self.model.state.copy()
        opt = self.model.optimizer
        self.optimizer_state, self.best_epoch = opt.state_dict() if opt is not None else None, None

    def on_epoch_end(self, epoch, logs=None):
        value = self.get_monitor_value(logs)
        if value is None or epoch < self.start_from_epoch or not self._is_improvement(value, self.best):
            return
        self.best, self.best_epoch = value, epoch
        np.copyto(self.params, self.model.params)
        np.copyto(self.state, self.model.state)
        if self.model.optimizer is not None:
            self.optimizer_state = self.model.optimizer.state_dict()

    def restore(self, optimizer: bool = False) -> None:
        np.copyto(self.model.params, self.params)
        np.copyto(self.model.state, self.state)
        if optimizer:
            self.model.optimizer.load_state_dict(self.optimizer_state)


class EarlyStopping(MonitorCallback):
    """Stop training when the monitored figure has stopped improving, as Keras's
    ``EarlyStopping`` does: after ``patience`` epochs without an improvement of at least
    ``min_delta`` (and none beating ``baseline``, if given), counting from ``start_from_epoch``.

    ``monitor``: a name in the epoch logs ('val_loss', Keras's default, 'val_accuracy', 'loss',
    'accuracy', or any with ``mode='min'``/``'max'``); a name missing from the logs gets Keras's
    warning and training goes on. ``monitor=None`` is dpnn's own figure (what
    ``fit(early_stopping=True)`` and ``dpnn train --early-stopping`` watch): val_accuracy with
    validation data, else accuracy.
    ``restore_best_weights`` (Keras's default False; ``restore_best`` is dpnn's name for it): the
    weights of the best epoch are put back when training ends, however it ends (epochs ran out,
    this or another callback stopped it). ``verbose``: None (dpnn's default) says what happened
    when fit is verbose; 0 never; 1 always.
    """

    def __init__(self, monitor: str | None = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 verbose: int | None = None, mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool | None = None, start_from_epoch: int = 0,
                 restore_best: bool = False) -> None:
        super().__init__(monitor, mode, min_delta)
        for name, value in (("patience", patience), ("start_from_epoch", start_from_epoch)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"EarlyStopping({name}=...) must be an int >= 0, got {value!r}")
        self.patience, self.verbose, self.baseline = int(patience), verbose, baseline
        self.start_from_epoch = int(start_from_epoch)
        self.restore_best = bool(restore_best if restore_best_weights is None else restore_best_weights)
        self.wait, self.stopped_epoch, self.best_epoch, self.best = 0, 0, 0, None
        self.restored_epoch = None

    @property
    def restore_best_weights(self) -> bool:
        return self.restore_best

    def on_train_begin(self, logs=None):
        # reset: the same instance may serve several fit calls
        self.wait, self.stopped_epoch, self.best_epoch, self.best, self.restored_epoch = 0, 0, 0, None, None
        shared = self.session.callbacks.best_weights if self.session is not None else None
        self.own_tracker = not (shared is not None and self.monitor is None and not self.min_delta
                                and not self.start_from_epoch)
        if not self.own_tracker:
            self.tracker = shared       # the loop's watches this very figure (and is resumed with it)
        else:
            self.tracker = BestWeights(self.monitor, self.min_delta, self.mode, self.start_from_epoch)
            self.tracker.model = self.model
            self.tracker.on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.own_tracker:
            self.tracker.on_epoch_end(epoch, logs)
        current = self.get_monitor_value(logs, "Early stopping conditioned")
        if current is None or epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0         # restart only past both the baseline and the best so far
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            self.announce(epoch, "early_stopping", f"Epoch {epoch + 1}: early stopping", self.verbose)

    def on_train_end(self, logs=None):
        if not self.restore_best:
            return
        best = self.tracker.best_epoch
        if best is None and math.isfinite(self.tracker.best) and self.session is not None:
            # a resumed run's best came before it: find it in the history
            best = best_in_history(self.session.history, self.tracker.best, self.monitor)
        if best is None and not math.isfinite(self.tracker.best):
            return                    # nothing was ever monitored: keep the weights as they are
        self.tracker.restore()
        self.restored_epoch = best
        self.announce(self.stopped_epoch if best is None else best, "restored_best_weights",
                      "Restoring model weights from the end of the best epoch"
                      + (f": {best + 1}." if best is not None else "."), self.verbose)
