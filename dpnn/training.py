"""The training loop behind ``Model.fit``: epochs, validation, schedules, early stopping, callbacks."""
from __future__ import annotations

import difflib
import math
import time
import warnings
from contextlib import closing, nullcontext
from functools import partial

import numpy as np

from . import reporting
from .callbacks import CallbackList, CSVLogger, EarlyStopping, History, LRScheduler, TensorBoard, with_keras_names
from .data import as_arrays, epoch_permutation, stratified_split
from .default_workers import default_workers
from .engine import Engine, make_engine
from .random import fresh_seed, sample_keys
from .recipe import Sums
from .sample_weights import attach, check_sample_weight, sample_weights
from .signals import DeferredSignals, Progress, TrainingInterrupted, agree  # noqa: F401 (part of the API)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the model holds the best weights seen so far."""


def check_labels(model, y: np.ndarray, num_classes: int | None) -> None:
    """Labels against the model's output, before any worker starts: class indices in range,
    one-hot rows or targets as wide as the output (one output: 0/1 or regression targets)."""
    k = num_classes or (model.output_shape[-1] if model.built else None)
    if k and k > 1 and y.ndim == 1 and y.dtype.kind in "iu" and y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must be in [0, {k - 1}]; found values in [{y.min()}, {y.max()}]")
    out = tuple(model.output_shape[1:])
    if y.ndim >= 2 and tuple(y.shape[1:]) not in (out, (1,)):
        raise ValueError(f"labels of shape {y.shape} do not match the model's output (N, "
                         f"{', '.join(map(str, out))}); pass one-hot rows of width {out[-1]} or "
                         "integer class labels (N,)")


def check_targets(model, y: np.ndarray) -> None:
    """dpnn's own loss reads the first target now, so targets of the wrong kind for it (rows for
    sparse_categorical_crossentropy, a shape binary_crossentropy cannot match) fail here."""
    if len(y) and type(model.loss).__module__.startswith("dpnn.losses"):
        with np.errstate(all="ignore"):
            model.loss.forward(np.full((1,) + tuple(model.output_shape[1:]), 0.5, np.float32), y[:1])


def warn_unscaled(x: np.ndarray) -> None:
    """Integer images in 0-255 train, but slowly and unstably: say so once."""
    if x.dtype.kind in "iu" and x.size and x.max() > 1:
        warnings.warn(f"the inputs are {x.dtype} with values up to {x.max()}: dpnn trains on them as "
                      "given; scale them first (e.g. X / 255.0) for faster, stabler training",
                      UserWarning, stacklevel=4)


# Options of the engines that fit passes on (DataParallel's, then DistributedEngine's).
ENGINE_OPTIONS = frozenset({"backend", "sync_batchnorm", "start_method", "max_restarts", "pin",
                            "shard_optimizer", "oversubscribe", "worker_timeout", "check_every",
                            "balance", "micro_shards"})
FIT_ALIASES = {"validation_data": "val_data"}          # Keras's names


def check_options(options: dict) -> dict:
    """Keras aliases mapped; an unknown keyword is a TypeError naming fit and close matches."""
    import inspect
    known = set(inspect.signature(fit).parameters) - {"model", "x", "y", "engine_options"}
    out = {}
    for key, value in options.items():
        name = FIT_ALIASES.get(key, key)
        if name in ENGINE_OPTIONS or name in FIT_ALIASES.values():
            out[name] = value
            continue
        close = difflib.get_close_matches(key, sorted(known | ENGINE_OPTIONS | set(FIT_ALIASES)), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise TypeError(f"fit() got an unexpected keyword argument {key!r}{hint}")
    return out


def check_engine(model, engine: Engine | None, seed, workers, threads_per_worker, deterministic,
                 augment, options: dict) -> None:
    """``fit(engine=...)``: the caller's engine is open on this model, and fit is given none of the
    options that choose an engine (they are make_engine's); without one, the model is free."""
    if engine is None:
        model.check_not_owned("fit")
        return
    if engine.model is not model:
        raise ValueError("engine= was opened on another model; open it on this one: "
                         "make_engine(model, ...)")
    given = [name for name, is_given in (("workers", workers is not None),
                                         ("threads_per_worker", threads_per_worker is not None),
                                         ("deterministic", bool(deterministic)),
                                         ("augment", augment is not None))
             if is_given] + sorted(options)
    if given:
        raise TypeError(f"fit() got engine= and {', '.join(given)}, which choose the engine; pass "
                        "them to make_engine(model, ...) instead")
    info = engine.describe()
    if seed is None and info.ranks > 1 and info.seed is None:      # each rank would draw its own
        raise ValueError("fit(engine=...) over MPI ranks needs one seed: pass seed= to make_engine "
                         "(or to fit)")


def validation_set(model, val_data, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) or (x, y, sample_weight) -> checked (x, targets with their weights if any)."""
    vw = None
    if isinstance(val_data, (tuple, list)) and len(val_data) == 3:
        *val_data, vw = val_data
    vx, vy = as_arrays(val_data)
    check_labels(model, vy, num_classes)
    check_targets(model, vy)
    if vw is not None:
        vw = check_sample_weight(vw, len(vy), "the validation sample_weight")
    return model.check_input(vx), attach(vy, vw)


class TrainingSession:
    """One run of ``fit``: the model, the engine it trains with, the callbacks, the progress.

    ``Model`` stays the network; what only exists while training lives here. Callbacks reach it
    as ``self.session`` (``self.model`` is the model, as in Keras); ``progress`` is where training
    stands after each completed step (a checkpoint of it resumes bitwise); ``step_times`` sums
    the engine's split of this epoch's steps; ``history`` is what fit returns.
    """

    def __init__(self, model, engine: Engine, callbacks: CallbackList, signals: DeferredSignals,
                 verbose: int, workers_note: str | None = None) -> None:
        self.model, self.engine, self.callbacks = model, engine, callbacks
        self.signals, self.verbose = signals, verbose
        self.rank = engine.describe().rank
        self.history = callbacks.history
        self.progress: Progress | None = None
        self.params: dict = {}
        self.workers_note = workers_note          # why fit runs in one process on several cores
        self.step_times: dict[str, float] = {}
        callbacks.set_session(self)

    def announce(self, epoch: int, event: str | None, message: str, verbose: int | None = None) -> None:
        """Something the user should know (early stopping...): recorded in ``history.events``
        (``epoch`` 0-based) unless ``event`` is None, printed by rank 0 when ``verbose`` (None:
        fit's own verbose) says so."""
        if event is not None:
            self.history.record(epoch, event, message)
        if (self.verbose if verbose is None else verbose) and self.rank == 0:
            reporting.write(message)

    def train(self, X, Y, val_data, epochs: int, batch_size: int, seed: int, shuffle: bool,
              initial_epoch: int, progress: Progress | None) -> None:
        cbs, engine, info = self.callbacks, self.engine, self.engine.describe()
        steps = -(-len(X) // batch_size)
        self.params = {"epochs": epochs, "steps": steps, "verbose": self.verbose}     # Keras's Callback.params
        cbs.on_train_begin({**info.as_logs(), "rank": info.rank, "engine_text": str(info),
                            "samples": len(X), "epochs": epochs, "initial_epoch": initial_epoch,
                            "batch_size": batch_size, "steps": steps, "validation": val_data is not None,
                            "workers_note": self.workers_note})
        try:
            for epoch in range(initial_epoch, epochs):
                cbs.on_epoch_begin(epoch, {"lr": self.model.optimizer.lr, "epochs": epochs,
                                           "samples": len(X), "steps": steps, "batch_size": batch_size})
                try:
                    logs = self.run_epoch(X, Y, batch_size, seed, epoch, shuffle,
                                          progress if epoch == initial_epoch else None)
                except TrainingDiverged:
                    cbs.on_diverged()
                    raise
                engine.sync_state()
                if val_data is not None:
                    logs["val_loss"], logs["val_acc"] = self.validate(val_data)
                logs["lr"] = self.model.optimizer.lr
                cbs.on_epoch_end(epoch, with_keras_names(logs))
                self.progress = Progress(epoch + 1)
                if self.model.stop_training:
                    break
                if epoch + 1 < epochs:
                    self.signals.check(self.progress, partial(agree, engine.comm))
        finally:
            for cb in cbs.callbacks:          # a bar or open file left by Ctrl-C, a divergence...
                if isinstance(cb, (reporting.ProgressBar, TensorBoard, CSVLogger)):
                    cb.close()
        stopped = next((e["epoch"] for e in self.history.events if e["event"] == "early_stopping"), None)
        last = epoch if epochs > initial_epoch else initial_epoch - 1
        final = logs if epochs > initial_epoch else {}            # Keras: the last epoch's logs
        cbs.on_train_end({**final, "stopped_epoch": stopped, "epochs_run": last + 1})      # 1-based, both

    def validate(self, val_data) -> tuple[float, float]:
        """(val_loss, val_acc), between Keras's ``on_test_begin`` and ``on_test_end``."""
        self.callbacks.on_test_begin({})
        loss, acc = self.engine.evaluate(*val_data)
        self.callbacks.on_test_end(with_keras_names({"loss": loss, "acc": acc}))
        return loss, acc

    def run_epoch(self, X, y, batch_size, seed, epoch, shuffle, start: Progress | None = None) -> dict:
        """One pass over the placed data (X, y), from ``start`` (a step inside this epoch) if given;
        returns {'loss', 'acc', 'samples_per_s', 'time'}; ``progress`` follows every step."""
        n, engine = len(X), self.engine
        order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)   # as Dataset.batches
        p = start or Progress(epoch)
        t0 = time.perf_counter() - p.elapsed
        times = self.step_times = {"compute": 0.0, "update": 0.0, "wait": 0.0, "reduce": 0.0, "optimizer": 0.0}
        self.progress = p
        for step, first in enumerate(range(0, n, batch_size)):
            if step < p.step:
                continue
            self.signals.check(p, partial(agree, self.engine.comm))
            idx = order[first:first + batch_size]
            self.callbacks.on_train_batch_begin(step, {"batch": step, "size": len(idx)})
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # the check below says it
                stats = engine.train_rows(idx, sample_keys(seed, epoch, idx))
            if not math.isfinite(stats.loss_sum):
                raise TrainingDiverged(f"the loss became {stats.loss_sum} at epoch {epoch + 1}, step "
                                       f"{step + 1}; lower the learning rate or set clip_norm")
            seen = Sums(p.loss_sum, p.correct, p.seen) + stats.sums
            p = Progress(epoch, step + 1, seen.loss, seen.hits, seen.count, time.perf_counter() - t0)
            self.progress = p
            for k in times:
                times[k] += stats.times.get(k, 0.0)
            logs = {"batch": step, "size": stats.count, "loss": stats.loss_sum / stats.count,
                    "lr": self.model.optimizer.lr}
            if stats.correct >= 0:
                logs["acc"] = stats.correct / stats.count
            self.callbacks.on_train_batch_end(step, with_keras_names(logs))
            if self.model.stop_training:          # asked for inside the epoch: stop after this batch
                break
        elapsed = time.perf_counter() - t0
        sums = Sums(p.loss_sum, p.correct, p.seen)
        return {"loss": sums.mean_loss(), "acc": sums.accuracy(),
                "samples_per_s": p.seen / max(elapsed, 1e-9), "time": elapsed}


def fit(model, x, y=None, *, epochs: int = 1, batch_size: int = 32, num_classes: int | None = None,
        val_data=None, validation_split: float = 0.0, shuffle: bool = True,
        early_stopping: bool = False, patience: int = 3, min_delta: float = 0.0,
        lr_schedule: str | None = None, lr_factor: float = 0.5, lr_patience: int = 2,
        lr_min: float = 1e-6, callbacks=None, seed: int | None = None, verbose: int = 1,
        workers=None, threads_per_worker: int | None = None, deterministic: bool = False,
        initial_epoch: int = 0, history: dict | None = None, progress: Progress | None = None,
        augment=None, engine: Engine | None = None, show_step_times: bool = False,
        sample_weight=None, class_weight: dict | None = None, **engine_options) -> History:
    """Train ``model``; returns a :class:`dpnn.callbacks.History`: lists per epoch of ``loss``,
    ``acc``, ``lr`` and, with validation data, ``val_loss``, ``val_acc`` (``history.history[k]``
    as in Keras, or ``history[k]``), and ``history.events`` (early stopping...).

    ``verbose``: 0 silent, 1 a progress bar per epoch on a terminal and one line per epoch, 2
    the lines alone (see :mod:`dpnn.reporting`; pass your own ``ProgressBar``/``EpochLogger``
    in ``callbacks`` to replace fit's); ``show_step_times`` adds the engine's split of a step.
    ``seed`` (shuffling, dropout, augmentation) defaults to the model's ``Model(seed=...)``.

    ``workers=N`` (or ``'auto'``) trains with the shared-memory data-parallel engine;
    ``workers=1`` stays in this process. ``workers=None`` (the default) is every core where
    starting processes is safe (a script's training under ``if __name__ == '__main__':``), else
    this process, and the epoch lines say how to get every core (see :mod:`dpnn.default_workers`).
    With the same ``seed`` and ``batch_size`` the result does not depend on the worker count
    (bitwise with ``deterministic=True``).
    ``augment``: fn(x, keys) -> x applied to each shard of every training batch where it is
    computed (in the workers), keys (N,) uint64 being per-sample (seed, epoch, index) keys, so
    that results stay worker-count invariant (see :mod:`dpnn.augment`).
    ``validation_data`` is Keras's name for ``val_data``; either may be (x, y, sample_weight).
    ``sample_weight`` (N,) or ``class_weight`` ({class: weight}, Keras's) weigh each sample's loss
    and gradient; as in Keras 3 the weighted sum is divided by the number of samples (see
    :mod:`dpnn.sample_weights`); accuracy stays unweighted. SIGINT/SIGTERM stop training after
    the step in flight with :class:`TrainingInterrupted`; ``initial_epoch``/``history``/
    ``progress`` continue an earlier run from an epoch or from a step inside it.
    Engine options (``backend='mpi'``, ``sync_batchnorm``, ``start_method``, ``max_restarts``,
    ``pin``, ``shard_optimizer``, ``oversubscribe``, ``worker_timeout``, ``check_every``, ``balance``,
    ``micro_shards``: deterministic mode's fixed cut of every batch, by default chosen from
    ``batch_size``) go to the engine; any other keyword is a TypeError.
    ``engine``: one the caller opened on ``model`` with :func:`dpnn.engine.make_engine`; fit
    trains with it and leaves it open, so the same workers can evaluate and predict afterwards
    (``with closing(make_engine(model, workers=4)) as engine:``). The options that choose an
    engine (``workers``, ``threads_per_worker``, ``deterministic``, ``augment``, the engine
    options) then go to make_engine, and fit refuses them with a TypeError.
    """
    options = check_options(engine_options)
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if seed is None:
        seed = model.seed                  # Model(seed=0) alone makes fit reproducible
    if "val_data" in options:
        if val_data is not None:
            raise TypeError("fit() got both val_data and validation_data; pass one of them")
        val_data = options.pop("val_data")
    check_engine(model, engine, seed, workers, threads_per_worker, deterministic, augment, options)
    workers_note = None
    if engine is None and workers is None:
        workers, workers_note = default_workers(options.get("backend"))
    model.require_compiled()
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be a function fn(x, keys) -> x, got {type(augment).__name__}")
    X, Y = as_arrays(x, y)                 # X as given: check_input makes it float32 below
    warn_unscaled(X)
    if not isinstance(epochs, int) or epochs < 0 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("epochs must be an int >= 0 and batch_size an int >= 1")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if progress is not None and progress.epoch != initial_epoch:
        raise ValueError(f"progress is inside epoch {progress.epoch}, but initial_epoch={initial_epoch}")
    W = sample_weights(Y, sample_weight, class_weight)
    if val_data is None and validation_split:
        # a seeded shuffle stratified by class, not the last fraction: data sorted by class
        # would otherwise validate on the last classes alone (the same split as --val-split);
        # as in Keras, the held-out samples keep their sample_weight, not a class_weight
        keep, held = stratified_split(Y, validation_split, 0 if seed is None else int(seed))
        held_w = None if sample_weight is None else W[held]
        X, Y, val_data = X[keep], Y[keep], (X[held], Y[held], held_w)
        W = None if W is None else W[keep]
    if len(X) == 0:
        raise ValueError("no training samples")
    X = model.check_input(X)
    model.ensure_built(X[:1])
    check_labels(model, Y, num_classes)
    check_targets(model, Y)
    Y = attach(Y, W)
    if val_data is not None:
        val_data = validation_set(model, val_data, num_classes)
    seed = fresh_seed() if seed is None else int(seed)
    hist = history if isinstance(history, History) else History(history)
    hist.expect(("loss", "acc", "lr") + (("val_loss", "val_acc") if val_data is not None else ()))
    cbs = list(callbacks or [])
    if lr_schedule:
        cbs.append(LRScheduler(lr_schedule, epochs, lr_factor, lr_patience, lr_min))
    if early_stopping:
        cbs.append(EarlyStopping(monitor=None, patience=patience, min_delta=min_delta, restore_best_weights=True))
    model.stop_training = False
    with DeferredSignals(verbose=bool(verbose)) as signals:
        opened = nullcontext(engine) if engine is not None else closing(     # the caller's stays open
            make_engine(model, workers, threads_per_worker, deterministic, seed=seed, augment=augment,
                        batch_size=batch_size, **options))
        with opened as engine:
            engine.place_data(X, Y)
            info = engine.describe()
            if info.seed is not None:                  # MPI: every rank uses rank 0's seed
                seed = info.seed
            verbose = verbose if info.rank == 0 else 0    # rank 0 alone prints
            reporter = None if any(isinstance(cb, reporting.EpochLogger) for cb in cbs) \
                else reporting.default_reporter(verbose, show_step_times)
            cbs = ([reporter] if reporter else []) + cbs      # first: its line before the others speak
            session = TrainingSession(model, engine, CallbackList(cbs, model, hist), signals, verbose,
                                      workers_note)
            session.train(X, Y, val_data, epochs, batch_size, seed, shuffle, initial_epoch, progress)
    hist.params = session.params          # Keras's history.params outlive the run
    hist.session = None                   # the engine is closed; the history outlives it
    return hist
