"""Per-epoch checkpoints for ``launch.train``: write atomically, find the newest, resume exactly.

A checkpoint is ``DIR/epoch-0003.hdf5`` (``.npz`` without h5py) plus the architecture JSON
beside it, written by :func:`dpnn.io.save_model`, so ``Model.load`` (and the GUI) can read
it like any saved model. Besides the weights it holds:

- ``optimizer/<key>``: the optimizer's ``state_dict()`` (step count, lr, Adam moments...),
  with ``/`` in slot keys written as ``.``;
- ``callbacks/best_params``, ``callbacks/best_state``: the best-weights tracker's copy;
- metadata ``checkpoint``: completed epochs, seed, history, the full command
  configuration and the scalar state of the LR schedule and early stopping.

Shuffling and dropout are functions of (seed, epoch, sample index), so the seed *is* the
RNG state. The weights file is the commit point: the JSON is written before it (and again,
identically, after it), and SIGINT/SIGTERM are held back while a checkpoint is written.
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import signal

import numpy as np

from dpnn import Callback, EarlyStopping, Model
from dpnn.callbacks import LRScheduler
from dpnn.errors import WeightsError
from dpnn.io import architecture_path, atomic_write, save_model

FORMAT = 1
KEEP = 3                                     # newest checkpoints kept; older ones are deleted
_NAME = re.compile(r"^epoch-(\d{4,})\.(hdf5|npz)$")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (stop, keep the last checkpoint) but exiting with 143."""


@contextlib.contextmanager
def deferred_interrupts():
    """Hold SIGINT/SIGTERM back inside the block; raise the held one when it ends."""
    held: list[int] = []
    previous = {s: signal.signal(s, lambda sig, frame: held.append(sig))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            raise Terminated() if held[0] == signal.SIGTERM else KeyboardInterrupt()


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """(completed epochs, weights path) of every complete checkpoint in ``directory``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), "epoch-*")):
        m = _NAME.match(os.path.basename(path))
        if m and os.path.isfile(architecture_path(path)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str) -> str | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def json_safe(value):
    """JSON-safe copy: NaN/inf floats become None (strict JSON readers reject them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _scalar_state(cb) -> dict:
    keys = {LRScheduler: ("best", "wait", "lr0"), EarlyStopping: ("best", "wait")}[type(cb)]
    return {k: getattr(cb, k) for k in keys}


class Checkpointer(Callback):
    """Writes a checkpoint after every epoch; on resume, restores what ``fit`` cannot.

    Put it *last* in ``callbacks`` so that its ``on_train_begin`` runs after the schedule
    and early stopping reset themselves, and its ``on_epoch_end`` after they update.
    """

    def __init__(self, directory: str | None, config: dict, seed: int, history: dict,
                 resume_state: dict | None = None, write: bool = True) -> None:
        self.directory, self.config, self.seed, self.history = directory, config, seed, history
        self.resume_state, self.write = resume_state, write

    def _stateful(self) -> list:
        return [cb for cb in self.model.callbacks.callbacks if type(cb) in (LRScheduler, EarlyStopping)]

    def on_train_begin(self, logs):
        state = self.resume_state
        if not state:
            return
        for cb, saved in zip(self._stateful(), state.get("callbacks", [])):
            for k, v in saved.items():
                setattr(cb, k, -math.inf if v is None and k == "best" else v)
        best = self.model.callbacks.best_weights
        best.best = -math.inf if state.get("best") is None else state["best"]
        if "best_params" in state:
            np.copyto(best.params, state["best_params"])
            np.copyto(best.state, state["best_state"])

    def on_epoch_end(self, epoch, logs):
        if self.directory is None or not self.write:
            return
        with deferred_interrupts():
            self.save(epoch + 1)
            self._prune()

    def save(self, epochs_done: int) -> str:
        """Write ``epoch-NNNN`` for ``epochs_done`` completed epochs; returns the weights path."""
        model, best = self.model, self.model.callbacks.best_weights
        info = {"format": FORMAT, "epoch": epochs_done, "seed": self.seed, "config": self.config,
                "history": json_safe(self.history),
                "best": None if not math.isfinite(best.best) else best.best,
                "callbacks": [_scalar_state(cb) for cb in self._stateful()]}
        arrays = {"optimizer/" + k.replace("/", "."): np.asarray(v)
                  for k, v in model.optimizer.state_dict().items()}
        arrays.update({"callbacks/best_params": best.params, "callbacks/best_state": best.state})
        path = os.path.join(self.directory, f"epoch-{epochs_done:04d}.hdf5")
        _write_json(architecture_path(path), model)
        metadata = model.metadata
        model.metadata = {**metadata, "checkpoint": info}
        try:
            return save_model(model, path, extra_arrays=arrays)
        finally:
            model.metadata = metadata

    def _prune(self) -> None:
        for _, path in list_checkpoints(self.directory)[:-KEEP]:
            for p in (path, architecture_path(path)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)


def _write_json(path: str, model) -> None:
    import json
    text = json.dumps(model.get_config(), indent=2) + "\n"

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def load_checkpoint(path: str) -> tuple[Model, dict, dict]:
    """(model with weights, checkpoint info, resume state for :class:`Checkpointer`).

    The model is built but not compiled; compile it, then
    ``model.optimizer.load_state_dict(info["optimizer"])``.
    """
    model = Model.load(path)
    info = model.metadata.pop("checkpoint", None)
    if not isinstance(info, dict) or info.get("format") != FORMAT or "config" not in info:
        raise WeightsError(f"{path} is not a launch.train checkpoint (no checkpoint metadata); "
                           "point --checkpoint-dir at the directory a training run wrote")
    extra = model.extra_arrays
    info["optimizer"] = {k[len("optimizer/"):].replace(".", "/"): v
                         for k, v in extra.items() if k.startswith("optimizer/")}
    state = {"best": info.get("best"), "callbacks": info.get("callbacks", [])}
    if "callbacks/best_params" in extra:
        state["best_params"] = extra["callbacks/best_params"]
        state["best_state"] = extra["callbacks/best_state"]
    return model, info, state
