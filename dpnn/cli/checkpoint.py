"""Checkpoints for ``dpnn train``: write atomically, find the newest whole one, resume exactly;
and the locks that keep two runs from writing the same files.

A checkpoint is ``DIR/epoch-0003.hdf5`` (``.npz`` without h5py; 3 epochs done) or
``DIR/epoch-0003-step-000017.hdf5`` (3 epochs and 17 steps of the 4th done: written when
training is interrupted, or every ``--checkpoint-every`` steps), plus the architecture JSON
beside it, written by :func:`dpnn.io.save_model`, so ``Model.load`` (and the GUI) can read
it like any saved model. Besides the weights it holds:

- ``optimizer/<key>``: the optimizer's ``state_dict()`` (step count, lr, Adam moments...),
  with ``/`` in slot keys written as ``.``;
- ``callbacks/best_params``, ``callbacks/best_state``: the best-weights tracker's copy;
- metadata ``checkpoint``: completed epochs, steps done in the next one with that epoch's
  running sums (:class:`dpnn.training.Progress`), seed, history, the full command
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
import sys

import numpy as np

from dpnn import Callback, EarlyStopping, Model
from dpnn.atomic import os_reason
from dpnn.callbacks import LRScheduler
from dpnn.errors import OutputError, WeightsError
from dpnn.io import architecture_path, atomic_write, save_model
from dpnn.signals import held_signals

from .locks import RunLocks  # noqa: F401  (train and outputs take it from here)

FORMAT = 1
KEEP = 3                                     # newest checkpoints kept; older ones are deleted
RUNS_ROOT = "checkpoints"                    # without --checkpoint-dir: one folder per run in it
_NAME = re.compile(r"^epoch-(\d{4,})(?:-step-(\d{6,}))?\.(hdf5|npz|hdf5\.npz)$")


@contextlib.contextmanager
def writing(what: str, path: str):
    """Turn an OSError (ENOSPC, EIO...) while writing ``path`` into one :class:`OutputError`
    naming ``what`` ("--out", "checkpoint"...)."""
    try:
        yield
    except OSError as e:
        reason = e.reason if isinstance(e, OutputError) else os_reason(e)
        raise OutputError(f"cannot write {what} {path}: {reason}", path, what, reason) from None


# -- naming and finding -------------------------------------------------------------------------
def checkpoint_name(epochs_done: int, step: int = 0) -> str:
    """epoch-0003.hdf5 after 3 epochs; epoch-0003-step-000017.hdf5 17 steps into the 4th."""
    return f"epoch-{epochs_done:04d}" + (f"-step-{step:06d}" if step else "") + ".hdf5"


def named_like_checkpoint(path: str) -> bool:
    """Whether ``path``'s name is a checkpoint's weights or architecture file name."""
    name = os.path.basename(path)
    return bool(_NAME.match(name) or _NAME.match(name[:-5] + ".hdf5" if name.endswith(".json") else ""))


def _position(path: str) -> tuple[int, int] | None:
    m = _NAME.match(os.path.basename(path))
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """(completed epochs, weights path) of every checkpoint in ``directory`` whose two files
    are there, in training order (epoch, then step within the next epoch)."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), "epoch-*")):
        pos = _position(path)
        if pos and os.path.isfile(architecture_path(path)):
            found.append((pos, path))
    return [(pos[0], path) for pos, path in sorted(found)]


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def latest_checkpoint(directory: str, report=warn) -> str | None:
    """The newest checkpoint in ``directory`` that loads; damaged newer ones are skipped,
    each with one ``report``-ed line."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            load_checkpoint(path)
        except (ValueError, OSError) as e:       # WeightsError is a ValueError
            reason = str(e).removeprefix(f"{path}: ")
            report(f"skipping damaged checkpoint {path} ({reason})")
            continue
        return path
    return None


def _newest_file_time(directory: str) -> float:
    return max(os.path.getmtime(p) for _, p in list_checkpoints(directory))


def run_folders(root: str) -> list[str]:
    """The folders directly in ``root`` (runs' checkpoint folders, e.g. ``checkpoints/<date-time>``)."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [os.path.join(root, n) for n in names if not n.startswith(".") and os.path.isdir(os.path.join(root, n))]


def find_run(root: str) -> tuple[str | None, list[str]]:
    """(folder to resume, folders looked in): ``root`` itself when it holds checkpoints, else the
    run folder in it whose newest checkpoint was written last (None when none holds one)."""
    if list_checkpoints(root):
        return root, [root]
    runs = [d for d in run_folders(root) if list_checkpoints(d)]
    looked = [root] + run_folders(root)
    if not runs:
        return None, looked
    return max(runs, key=lambda d: (_newest_file_time(d), d)), looked


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
    """Writes a checkpoint after every epoch (and every ``every`` steps, and at the step where
    training was interrupted); on resume, restores what ``fit`` cannot.

    Put it *last* in ``callbacks`` so that its ``on_train_begin`` runs after the schedule
    and early stopping reset themselves, and its ``on_epoch_end`` after they update.
    """

    def __init__(self, directory: str | None, config: dict, seed: int, history: dict,
                 resume_state: dict | None = None, write: bool = True, every: int | None = None,
                 steps_per_epoch: int | None = None) -> None:
        self.directory, self.config, self.seed, self.history = directory, config, seed, history
        self.resume_state, self.write = resume_state, write and directory is not None
        self.every, self.steps_per_epoch = every, steps_per_epoch

    def _stateful(self) -> list:
        return [cb for cb in self.session.callbacks.callbacks if type(cb) in (LRScheduler, EarlyStopping)]

    def on_train_begin(self, logs):
        state = self.resume_state
        if not state:
            return
        for cb, saved in zip(self._stateful(), state.get("callbacks", [])):
            for k, v in saved.items():
                setattr(cb, k, -math.inf if v is None and k == "best" else v)
        best = self.session.callbacks.best_weights
        best.best = -math.inf if state.get("best") is None else state["best"]
        if "best_params" in state:
            np.copyto(best.params, state["best_params"])
            np.copyto(best.state, state["best_state"])

    def on_batch_end(self, step, logs):
        if not (self.write and self.every):
            return
        progress = self.session.progress
        if progress.step % self.every == 0 and (self.steps_per_epoch is None
                                                or progress.step < self.steps_per_epoch):
            with held_signals():          # not the last step: its epoch checkpoint follows
                self.save(progress.epoch, progress)

    def on_epoch_end(self, epoch, logs):
        if self.write:
            with held_signals():
                self.save(epoch + 1)

    def save_interrupted(self, progress) -> str | None:
        """The checkpoint at the step where ``fit`` stopped (``TrainingInterrupted.progress``);
        None when there is nothing to add (no step taken in the epoch: the epoch checkpoint
        before it is that state) or nothing is written."""
        if not self.write or progress is None or progress.step == 0:
            return None
        with held_signals(deliver=False):
            return self.save(progress.epoch, progress)

    def save(self, epochs_done: int, progress=None) -> str:
        """Write the checkpoint of ``epochs_done`` completed epochs (and ``progress.step`` steps
        of the next one); returns the weights path. Newer ones (an abandoned, damaged future)
        and all but the newest ``KEEP`` are deleted after it."""
        model, best = self.model, self.session.callbacks.best_weights
        step = progress.step if progress is not None else 0
        info = {"format": FORMAT, "epoch": epochs_done, "step": step, "seed": self.seed,
                "config": self.config, "history": json_safe(self.history),
                "best": None if not math.isfinite(best.best) else best.best,
                "callbacks": [_scalar_state(cb) for cb in self._stateful()]}
        if step:
            info["progress"] = {"loss_sum": float(progress.loss_sum), "correct": int(progress.correct),
                                "seen": int(progress.seen), "elapsed": float(progress.elapsed)}
        arrays = {"optimizer/" + k.replace("/", "."): np.asarray(v)
                  for k, v in model.optimizer.state_dict().items()}
        arrays.update({"callbacks/best_params": best.params, "callbacks/best_state": best.state})
        path = os.path.join(self.directory, checkpoint_name(epochs_done, step))
        metadata = model.metadata
        model.metadata = {**metadata, "checkpoint": info}
        try:
            with writing("checkpoint", path):
                _write_json(architecture_path(path), model)
                written = save_model(model, path, extra_arrays=arrays)
        except OutputError:
            if not os.path.exists(path):         # no half pair left behind
                with contextlib.suppress(OSError):
                    os.unlink(architecture_path(path))
            raise
        finally:
            model.metadata = metadata
        self._prune(written)
        return written

    def _prune(self, newest: str) -> None:
        paths = [p for _, p in list_checkpoints(self.directory)]
        keep = paths.index(newest) if newest in paths else len(paths) - 1
        for path in paths[:max(keep + 1 - KEEP, 0)] + paths[keep + 1:]:
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
        raise WeightsError(f"{path} is not a dpnn train checkpoint (no checkpoint metadata); "
                           "point --checkpoint-dir at the directory a training run wrote")
    info.setdefault("step", 0)
    check_info(path, info)
    extra = model.extra_arrays
    info["optimizer"] = {k[len("optimizer/"):].replace(".", "/"): v
                         for k, v in extra.items() if k.startswith("optimizer/")}
    check_optimizer_state(path, info["optimizer"], model)
    state = {"best": info.get("best"), "callbacks": info.get("callbacks", [])}
    if "callbacks/best_params" in extra:
        state["best_params"] = extra["callbacks/best_params"]
        state["best_state"] = extra["callbacks/best_state"]
    return model, info, state


def _whole(v) -> bool:
    return type(v) is int and v >= 0


def _number(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _history(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(xs, list)
                                       and all(x is None or _number(x) for x in xs) for k, xs in v.items())


_PROGRESS = {"loss_sum": _number, "correct": _whole, "seen": _whole, "elapsed": _number}
_FIELDS = {"epoch": (_whole, "a whole number >= 0"), "step": (_whole, "a whole number >= 0"),
           "seed": (_whole, "a whole number >= 0"), "config": (lambda v: isinstance(v, dict), "an object"),
           "history": (_history, "an object of lists of numbers"),
           "best": (lambda v: v is None or _number(v), "a number"),
           "callbacks": (lambda v: isinstance(v, list) and all(isinstance(c, dict) for c in v),
                         "a list of objects"),
           "progress": (lambda v: isinstance(v, dict) and set(v) == set(_PROGRESS)
                        and all(ok(v[k]) for k, ok in _PROGRESS.items()), "the sums of an epoch")}


def check_info(path: str, info: dict) -> None:
    """Every field of a checkpoint's metadata has its type and range (a WeightsError otherwise)."""
    for key, (ok, want) in _FIELDS.items():
        if (key in info or key in ("epoch", "seed", "history") or key == "progress" and info.get("step"))\
                and not ok(info.get(key)):
            raise WeightsError(f"{path}: checkpoint.{key} is {str(repr(info.get(key)))[:60]}, not {want}; "
                               "the checkpoint is damaged")


def check_optimizer_state(path: str, state: dict[str, np.ndarray], model) -> None:
    """The optimizer arrays fit the model: a step count, a learning rate, moments like its parameters."""
    for key, v in state.items():
        scalar = key in ("t", "lr") and v.shape == () and np.isfinite(v)
        moment = key.startswith("0/") and v.shape == model.params.shape
        if not (scalar or moment):
            raise WeightsError(f"{path}: its optimizer state {key} (shape {v.shape}) does not fit this model "
                               f"({model.params.size:,} parameters); the checkpoint is damaged")
