"""Keras's ``ModelCheckpoint``: save the model (or its weights) every epoch or every N batches,
or only when the monitored figure improves; rank 0 alone writes, each file atomically."""
from __future__ import annotations

import os
import warnings

import numpy as np

from .monitor import MonitorCallback


class ModelCheckpoint(MonitorCallback):
    """Save the model to ``filepath`` after every epoch (``save_freq='epoch'``) or every
    ``save_freq`` batches. ``filepath`` may hold Python format fields filled from ``epoch``
    (1-based), ``batch`` (1-based) and the logs, e.g. ``'ckpt/{epoch:02d}-{val_loss:.2f}.h5'``.

    ``save_best_only``: save only when ``monitor`` improves on the best so far (``mode``,
    ``initial_value_threshold`` as in Keras). ``save_weights_only``: ``model.save_weights``
    (load with ``model.load_weights``), else ``model.save`` (load with ``Model.load``; its
    architecture JSON is written beside it). dpnn writes HDF5 (NPZ for a ``.npz`` name or without
    h5py) whatever the extension, through temporary files and renames, and only on rank 0.
    """

    def __init__(self, filepath, monitor: str = "val_loss", verbose: int = 0, save_best_only: bool = False,
                 save_weights_only: bool = False, mode: str = "auto", save_freq="epoch",
                 initial_value_threshold: float | None = None) -> None:
        super().__init__(monitor, mode, baseline=initial_value_threshold)
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, (int, np.integer))
                                     or save_freq < 1):
            raise ValueError(f"Unrecognized save_freq: {save_freq!r}. Expected save_freq are 'epoch' or a "
                             "positive integer (a number of batches)")
        self.filepath, self.verbose = os.fspath(filepath), verbose
        self.save_best_only, self.save_weights_only, self.save_freq = save_best_only, save_weights_only, save_freq
        self.initial_value_threshold = initial_value_threshold
        self.epoch, self.rank, self._batches_since_save = 0, 0, 0

    def on_train_begin(self, logs=None):
        self.rank, self._batches_since_save = (logs or {}).get("rank", 0), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self.epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _save(self, epoch: int, batch: int | None, logs: dict | None) -> None:
        logs = dict(logs or {})
        path = self.path_for(epoch, batch, logs)
        if not self._should_save(epoch, logs, path) or self.rank != 0:
            return
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if os.path.isdir(path):
            raise IsADirectoryError(f"Please specify a non-directory filepath for ModelCheckpoint. "
                                    f"Filepath used is an existing directory: {path}")
        written = self.model.save_weights(path) if self.save_weights_only else self.model.save(path)
        self.announce(epoch, None, f"Epoch {epoch + 1}: finished saving model to {written}",
                      self.verbose)

    def path_for(self, epoch: int, batch: int | None, logs: dict) -> str:
        """``filepath`` with its fields filled (epoch and batch 1-based)."""
        fields = {**logs, "epoch": epoch + 1}
        if batch is not None:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(**fields)
        except (KeyError, IndexError, ValueError) as e:
            raise KeyError(f'Failed to format this callback filepath: "{self.filepath}". Reason: {e!r} '
                           f"(the fields are epoch, batch and the logs: {', '.join(sorted(fields))})") from None

    def _should_save(self, epoch: int, logs: dict, path: str) -> bool:
        """Every time, or (``save_best_only``) when the monitored figure improves; Keras's messages."""
        if not self.save_best_only:
            return True
        current = self.get_monitor_value(logs)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.", UserWarning, stacklevel=4)
            return True
        best = "None" if self.best is None else f"{self.best:.5f}"
        if self._is_improvement(current, self.best):
            self.announce(epoch, None, f"Epoch {epoch + 1}: {self.monitor} improved from "
                          f"{best} to {current:.5f}, saving model to {path}", self.verbose)
            self.best = current
            return True
        self.announce(epoch, None, f"Epoch {epoch + 1}: {self.monitor} did not improve "
                      f"from {best}", self.verbose)
        return False
