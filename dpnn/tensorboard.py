"""Live curves in TensorBoard: Keras's ``TensorBoard`` callback, written with ``tensorboardX``.

::

    model.fit(x, y, epochs=5, callbacks=[dpnn.TensorBoard("runs/fashion", update_freq=50)])
    dpnn train --tensorboard runs/fashion         # the same from the shell
    tensorboard --logdir runs                                 # then watch

As Keras lays them out: ``LOG_DIR/train`` holds ``epoch_loss``, ``epoch_accuracy``,
``epoch_learning_rate`` and ``epoch_samples_per_s`` per epoch (step = epoch number, 1-based)
and ``batch_loss``, ``batch_accuracy``, ``batch_learning_rate``, ``batch_samples_per_s`` every
``update_freq`` steps (step = steps since the first epoch); ``LOG_DIR/validation`` holds
``epoch_loss`` and ``epoch_accuracy`` of the validation data, so TensorBoard draws both on one
chart. Only rank 0 writes (MPI ranks and workers never do). ``tensorboardX`` is an optional
dependency: ``pip install tensorboardX`` (``pip install -e '.[tensorboard]'``).

Events are written in the training thread, not by tensorboardX's writer thread: when that
thread dies on a write error (a full disk) its queue fills and training would block forever.
A write error here is one :class:`~dpnn.errors.OutputError` naming the folder. Each event file
name ends with the process id, so two runs started in the same second keep their own files.
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
import os
import time

from .atomic import os_reason
from .callbacks import Callback
from .errors import OutputError

_FILES = itertools.count()     # event files opened by this process: part of each file's name

INSTALL_HINT = "pip install tensorboardX (in a dpnn checkout: pip install -e '.[tensorboard]')"


class TensorBoard(Callback):
    """Write training curves for TensorBoard under ``log_dir``; ``update_freq``: 'epoch' (per
    epoch only) or N (also every N training steps)."""

    def __init__(self, log_dir: str = "logs", update_freq: int | str = "epoch") -> None:
        if update_freq != "epoch" and (isinstance(update_freq, bool) or not isinstance(update_freq, int)
                                       or update_freq < 1):
            raise ValueError(f"TensorBoard(update_freq=...) must be 'epoch' or a positive int, got {update_freq!r}")
        if importlib.util.find_spec("tensorboardX") is None:
            raise ImportError(f"the TensorBoard callback needs tensorboardX: {INSTALL_HINT}")
        self.log_dir, self.update_freq = os.fspath(log_dir), update_freq
        self.writers: dict = {}
        self.steps_per_epoch = self.epoch = 0

    def on_train_begin(self, logs):
        if logs.get("rank", 0) != 0:                    # rank 0 alone writes files
            return
        self.writers = {part: self._open(os.path.join(self.log_dir, part)) for part in ("train", "validation")}
        self.steps_per_epoch = logs.get("steps", 0)

    def on_epoch_begin(self, epoch, logs):
        self.epoch = epoch

    def on_batch_end(self, step, logs):
        if not self.writers or self.update_freq == "epoch" or (step + 1) % self.update_freq:
            return
        global_step = self.epoch * self.steps_per_epoch + step + 1
        p = self.session.progress if self.session is not None else None
        figures = {"loss": logs.get("loss"), "accuracy": logs.get("acc"), "learning_rate": logs.get("lr"),
                   "samples_per_s": p.seen / p.elapsed if p is not None and p.elapsed > 0 else None}
        self._scalars("train", "batch_", figures, global_step)

    def on_epoch_end(self, epoch, logs):
        if not self.writers:
            return
        self._scalars("train", "epoch_", {"loss": logs.get("loss"), "accuracy": logs.get("acc"),
                                          "learning_rate": logs.get("lr"),
                                          "samples_per_s": logs.get("samples_per_s")}, epoch + 1)
        self._scalars("validation", "epoch_", {"loss": logs.get("val_loss"), "accuracy": logs.get("val_acc")},
                      epoch + 1)
        for part, writer in self.writers.items():
            with self._writing(part):
                writer.flush()

    def on_train_end(self, logs):
        self.close()

    def close(self) -> None:
        """Flush and close the event files (an error closing one is raised after all are closed)."""
        writers, self.writers = self.writers, {}
        with contextlib.ExitStack() as stack:
            for part, writer in writers.items():
                stack.callback(self._close_one, part, writer)

    def _close_one(self, part: str, writer) -> None:
        with self._writing(part):
            writer.close()

    def _open(self, folder: str):
        from tensorboardX.event_file_writer import EventsWriter
        with self._writing(os.path.basename(folder)):
            os.makedirs(folder, exist_ok=True)
            return EventsWriter(os.path.join(folder, "events"), f".{os.getpid()}.{next(_FILES)}")

    @contextlib.contextmanager
    def _writing(self, part: str):
        """An OSError (full disk, a file in the folder's place) becomes one OutputError."""
        try:
            yield
        except OSError as e:
            folder = os.path.join(self.log_dir, part)
            reason = e.reason if isinstance(e, OutputError) else os_reason(e)
            raise OutputError(f"cannot write TensorBoard events in {folder}: {reason}", folder,
                              "--tensorboard", reason) from None

    def _scalars(self, part: str, prefix: str, figures: dict, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar
        for name, value in figures.items():
            if value is not None and math.isfinite(value):
                event = Event(wall_time=time.time(), step=step, summary=scalar(prefix + name, float(value)))
                with self._writing(part):
                    self.writers[part].write_event(event)
