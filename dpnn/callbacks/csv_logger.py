"""Keras's ``CSVLogger``: one row of epoch results per epoch, written by rank 0 alone."""
from __future__ import annotations

import csv
import os

from .base import KERAS_NAMES, Callback


class CSVLogger(Callback):
    """Stream the epoch logs to the CSV file ``filename`` (``separator`` between fields): a header
    ``epoch,accuracy,learning_rate,loss,samples_per_s,time,val_accuracy,val_loss`` (Keras's names;
    the columns are the first epoch's keys, sorted, with ``val_loss``/``val_accuracy`` added when
    that epoch had no validation figures; a missing value reads ``NA``), then one row per epoch
    (0-based, as in Keras). ``append=True`` continues an existing file (no second header).
    Only rank 0 writes (MPI ranks and workers never do)."""

    def __init__(self, filename, separator: str = ",", append: bool = False) -> None:
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger(separator=...) must be one character, got {separator!r}")
        self.filename, self.sep, self.append = os.fspath(filename), separator, bool(append)
        self.csv_file = self.writer = self.keys = None
        self.append_header = True

    def on_train_begin(self, logs=None):
        self.close()
        self.keys = None
        if (logs or {}).get("rank", 0) != 0:          # rank 0 alone writes files
            return
        if self.append and os.path.exists(self.filename):
            with open(self.filename) as f:
                self.append_header = not f.readline()
        else:
            self.append_header = True
        self.csv_file = open(self.filename, "a" if self.append else "w", newline="")

    def on_epoch_end(self, epoch, logs=None):
        if self.csv_file is None:
            return
        logs = {k: v for k, v in (logs or {}).items() if k not in KERAS_NAMES.values()}   # Keras's names only
        if self.keys is None:
            self.keys = sorted(logs)
            if not any(k.startswith("val_") for k in self.keys):
                self.keys += [f"val_{k}" for k in ("accuracy", "loss") if k in self.keys]
        if self.writer is None:
            class Dialect(csv.excel):
                delimiter = self.sep
            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys, dialect=Dialect,
                                         extrasaction="ignore")
            if self.append_header:
                self.writer.writeheader()
        self.writer.writerow({"epoch": epoch, **{k: logs.get(k, "NA") for k in self.keys}})
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = self.writer = None
