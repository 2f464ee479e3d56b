"""The training loop behind ``Model.fit``: epochs, validation, schedules, early stopping, callbacks."""
from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from .callbacks import CallbackList, EarlyStopping, LRScheduler
from .engine import LocalEngine
from .random import sample_keys


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the model holds the best weights seen so far."""


def as_arrays(x, y=None) -> tuple[np.ndarray, np.ndarray]:
    """Accept a Dataset (``.X``/``.y``), an (X, y) tuple, or X and y arrays."""
    if y is None and hasattr(x, "X") and hasattr(x, "y"):
        x, y = x.X, x.y
    elif y is None and isinstance(x, (tuple, list)) and len(x) == 2:
        x, y = x
    if y is None:
        raise ValueError("no labels: pass fit(dataset), fit((X, y)) or fit(X, y)")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels; they must have the same length")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError("the inputs contain NaN or infinite values; clean the data first")
    if y.dtype.kind not in "iufb":
        raise ValueError(f"labels must be numbers (class indices, one-hot rows or targets), "
                         f"got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError("the labels contain NaN or infinite values; clean the data first")
    return x.astype(np.float32, copy=False), y


def _check_labels(model, y: np.ndarray, num_classes: int | None) -> None:
    k = num_classes or (model.output_shape[-1] if model.built else None)
    if k and y.ndim == 1 and y.dtype.kind in "iu" and y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must be in [0, {k - 1}]; found values in [{y.min()}, {y.max()}]")


def make_engine(model, workers, threads_per_worker, deterministic, engine_options):
    """The in-process engine for one worker, else the shared-memory data-parallel one;
    ``backend='mpi'`` (or a ``dpnn.comm.Communicator``) spreads batches over MPI ranks."""
    backend = engine_options.get("backend")
    if backend == "mpi" or hasattr(backend, "allreduce"):
        from .distributed import DistributedEngine
        options = {k: v for k, v in engine_options.items() if k != "backend"}
        return DistributedEngine(model, backend, workers=workers, threads_per_worker=threads_per_worker,
                                 deterministic=deterministic, **options)
    if workers == "auto":
        from .workers import resolve_workers
        workers = resolve_workers("auto")
    if workers in (1, None) and not backend:
        return LocalEngine(model, deterministic=deterministic)
    from .workers import DataParallel
    return DataParallel(model, workers=workers, threads_per_worker=threads_per_worker,
                        deterministic=deterministic, **engine_options)


def run_epoch(model, engine, X, y, batch_size, seed, epoch, shuffle, bar) -> dict:
    """One pass over (X, y); returns {'loss', 'acc', 'samples_per_s', 'times'} for the epoch."""
    n = len(X)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
    times = {"compute": 0.0, "wait": 0.0, "reduce": 0.0, "optimizer": 0.0}
    for step, start in enumerate(range(0, n, batch_size)):
        idx = order[start:start + batch_size]
        stats = engine.train_step(X[idx], y[idx], sample_keys(seed, epoch, idx))
        if not math.isfinite(stats.loss_sum):
            raise TrainingDiverged(f"the loss became {stats.loss_sum} at epoch {epoch + 1}, step "
                                   f"{step + 1}; lower the learning rate or set clip_norm")
        loss_sum, seen = loss_sum + stats.loss_sum, seen + stats.count
        correct = -1 if stats.correct < 0 or correct < 0 else correct + stats.correct
        for k in times:
            times[k] += stats.times.get(k, 0.0)
        if bar is not None:
            bar.update(stats.count)
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            post = {"loss": f"{loss_sum / seen:.4f}", "samples/s": f"{rate:,.0f}"}
            if correct >= 0:
                post["acc"] = f"{correct / seen:.4f}"
            if getattr(engine, "workers", 1) > 1:
                total = sum(times.values()) or 1.0
                post["step"] = " ".join(f"{k[:4]} {100 * v / total:.0f}%" for k, v in times.items())
            bar.set_postfix(post, refresh=False)
        model.callbacks.on_batch_end(step, {"loss": stats.loss_sum / stats.count})
    elapsed = time.perf_counter() - t0
    return {"loss": loss_sum / max(seen, 1), "acc": correct / seen if correct >= 0 and seen else float("nan"),
            "samples_per_s": seen / max(elapsed, 1e-9), "time": elapsed, "times": times}


def fit(model, x, y=None, *, epochs: int = 1, batch_size: int = 32, num_classes: int | None = None,
        val_data=None, validation_split: float = 0.0, shuffle: bool = True,
        early_stopping: bool = False, patience: int = 3, min_delta: float = 0.0,
        lr_schedule: str | None = None, lr_factor: float = 0.5, lr_patience: int = 2,
        lr_min: float = 1e-6, callbacks=None, seed: int | None = None, verbose: int = 1,
        workers=1, threads_per_worker: int | None = None, deterministic: bool = False,
        initial_epoch: int = 0, history: dict | None = None, **engine_options) -> dict:
    """Train ``model``; returns ``{'loss', 'acc', 'val_loss', 'val_acc', 'lr'}`` lists per epoch.

    ``workers=N`` (or ``'auto'``) trains with the shared-memory data-parallel engine;
    ``workers=1`` stays in this process. With the same ``seed`` and ``batch_size`` the
    result does not depend on the worker count (bitwise with ``deterministic=True``).
    ``initial_epoch``/``history`` continue an earlier run (used by ``--resume``).
    """
    model._require_compiled()
    X, Y = as_arrays(x, y)
    if not isinstance(epochs, int) or epochs < 0 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("epochs must be an int >= 0 and batch_size an int >= 1")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if val_data is None and validation_split:
        cut = len(X) - int(round(len(X) * validation_split))
        X, Y, val_data = X[:cut], Y[:cut], (X[cut:], Y[cut:])
    if len(X) == 0:
        raise ValueError("no training samples")
    if val_data is not None:
        val_data = as_arrays(val_data)
    X = model.check_input(X)
    model._ensure_built(X[:1])
    _check_labels(model, Y, num_classes)
    seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else int(seed)
    history = history if history is not None else {k: [] for k in ("loss", "acc", "val_loss", "val_acc", "lr")}
    cbs = list(callbacks or [])
    if lr_schedule:
        cbs.append(LRScheduler(lr_schedule, epochs, lr_factor, lr_patience, lr_min))
    if early_stopping:
        cbs.append(EarlyStopping(patience=patience, min_delta=min_delta))
    model.callbacks = CallbackList(cbs, model)
    model.stop_training = False
    engine = make_engine(model, workers, threads_per_worker, deterministic, engine_options)
    try:
        comm = getattr(engine, "comm", None)
        if comm is not None:   # ranks: one shuffle for all (rank 0's seed); rank 0 alone prints
            seed, verbose = comm.bcast_object(seed), verbose if comm.rank == 0 else 0
        _train(model, engine, X, Y, val_data, epochs, batch_size, seed, shuffle, verbose,
               initial_epoch, history)
    finally:
        engine.close()
    return history


def _train(model, engine, X, Y, val_data, epochs, batch_size, seed, shuffle, verbose,
           initial_epoch, history) -> None:
    cbs = model.callbacks
    cbs.on_train_begin({"workers": getattr(engine, "workers", 1),
                        "threads_per_worker": getattr(engine, "threads_per_worker", None),
                        "ranks": getattr(engine, "size", 1)})
    for epoch in range(initial_epoch, epochs):
        cbs.on_epoch_begin(epoch, {})
        bar = tqdm(total=len(X), desc=f"epoch {epoch + 1}/{epochs}", unit="sample",
                   leave=True, disable=not verbose, dynamic_ncols=True)
        try:
            logs = run_epoch(model, engine, X, Y, batch_size, seed, epoch, shuffle, bar)
        except TrainingDiverged:
            cbs.on_diverged()
            raise
        finally:
            bar.close()
        engine.sync_state()
        if val_data is not None:
            logs["val_loss"], logs["val_acc"] = getattr(engine, "evaluate", model.evaluate)(*val_data)
        logs["lr"] = model.optimizer.lr
        for k in ("loss", "acc", "val_loss", "val_acc", "lr"):
            history.setdefault(k, []).append(float(logs.get(k, float("nan"))))
        if verbose:
            extra = f", val_loss {logs['val_loss']:.4f}, val_acc {logs['val_acc']:.4f}" if val_data else ""
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f}, acc {logs['acc']:.4f}"
                       f"{extra}, {logs['samples_per_s']:,.0f} samples/s")
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end({})
