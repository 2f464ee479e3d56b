"""The engine contract the training loop talks to, and the in-process engine.

Three engines implement :class:`Engine`: :class:`LocalEngine` (this process),
``dpnn.workers.DataParallel`` (worker processes sharing memory) and
``dpnn.distributed.DistributedEngine`` (MPI ranks, each with its node's workers). All of
them run the one recipe of :mod:`dpnn.recipe`, so they give the same result: to float32
rounding in general, bitwise with ``deterministic=True`` for any worker or rank count.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from . import floatmode, threads
from .recipe import (DETERMINISTIC_SHARDS, StepStats, combine_shards, count_correct,  # noqa: F401
                     loss_sum, run_shard, shard_bounds, shard_gradients)

if TYPE_CHECKING:
    from .model import Model


@dataclass(frozen=True)
class EngineInfo:
    """What actually runs: printed by ``fit`` before training, passed to ``on_train_begin``."""
    kind: str                        # 'in-process', 'shared-memory' or 'mpi'
    workers: int                     # worker processes per rank (1: the rank's own process)
    threads_per_worker: int | None   # BLAS threads per worker (None: BLAS's own default)
    ranks: int = 1                   # MPI ranks
    deterministic: bool = False
    rank: int = 0                    # this process's MPI rank (0 prints and writes files)
    seed: int | None = None          # MPI: the seed every rank uses (rank 0's); else None
    denormals: str = field(default_factory=floatmode.describe)   # this process's mode (floatmode.py)

    def __str__(self) -> str:
        t = self.threads_per_worker
        blas = f"{t} BLAS thread{'s' * (t != 1)}" if t else "BLAS default threads"
        where = "in this process" if self.kind == "in-process" else (
            f"{self.workers} worker process{'es' * (self.workers != 1)}")
        text = f"{where} x {blas}"
        if self.ranks > 1:
            text = f"{self.ranks} MPI ranks, each {text}"
        return text + (", deterministic" if self.deterministic else "") + f", {self.denormals}"

    def as_logs(self) -> dict:
        return {"engine": self.kind, "workers": self.workers,
                "threads_per_worker": self.threads_per_worker, "ranks": self.ranks, "denormals": self.denormals}


class Engine(Protocol):
    """How ``fit`` trains, whoever computes: every engine has exactly these methods.

    ``model`` the model it trains (``fit(engine=...)`` checks it is fit's own);
    ``train_step(x, y, keys)`` one optimizer step on a global batch (keys: (N,) uint64
    per-sample keys for Dropout and augmentation) -> StepStats of sums;
    ``place_data(X, Y)`` + ``train_rows(indices, keys)`` the same step on rows of a training
    set handed over once (a pool keeps it in shared memory and sends only indices);
    ``evaluate(x, y, batch_size)`` -> (mean loss, accuracy); ``sync_state()`` at an epoch's
    end, bring every copy of the model into agreement; ``close()`` stop processes, free shared
    memory, leave the model usable in this process; ``describe()`` -> EngineInfo.
    """

    model: Model

    def train_step(self, x: np.ndarray, y: np.ndarray, keys: np.ndarray | None = None) -> StepStats: ...
    def place_data(self, X: np.ndarray, Y: np.ndarray) -> None: ...
    def train_rows(self, indices: np.ndarray, keys: np.ndarray | None = None) -> StepStats: ...
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]: ...
    def sync_state(self) -> None: ...
    def close(self) -> None: ...
    def describe(self) -> EngineInfo: ...


def evaluation_sums(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(3,) float64 [loss sum, hits (-1: not a classifier), samples] of the model on (x, y)."""
    sums = np.zeros(3, np.float64)
    for a in range(0, len(x), batch_size):
        out = model.predict(x[a:a + batch_size], batch_size)
        value = model.loss.forward(out, y[a:a + batch_size])
        hits = count_correct(out, y[a:a + batch_size])
        sums[0] += loss_sum(model.loss, value, len(out))
        sums[1] = -1 if hits < 0 or sums[1] < 0 else sums[1] + hits
        sums[2] += len(out)
    return sums


def mean_loss_and_accuracy(sums: np.ndarray) -> tuple[float, float]:
    """(mean loss, accuracy or nan) from :func:`evaluation_sums` (possibly added over ranks)."""
    n = sums[2]
    acc = sums[1] / n if sums[1] >= 0 and n else math.nan
    return float(sums[0] / n) if n else math.nan, float(acc)


class LocalEngine:
    """In-process training steps; deterministic mode runs the same fixed shards as the workers.

    ``threads_per_worker`` limits this process's BLAS threads while the engine is open
    (deterministic mode: 1, because GEMM results can depend on the thread count);
    ``augment`` (fn(x, keys)) transforms each shard before its forward pass.
    """

    def __init__(self, model, deterministic: bool = False, threads_per_worker: int | None = None,
                 augment=None) -> None:
        self.model, self.deterministic, self.augment = model, deterministic, augment
        self._data: tuple[np.ndarray, np.ndarray] | None = None
        self.threads_per_worker = threads.local_threads(threads_per_worker, deterministic)
        self._slots: np.ndarray | None = None
        self._limit = threads.blas_limit(self.threads_per_worker)

    def describe(self) -> EngineInfo:
        return EngineInfo("in-process", 1, self.threads_per_worker or threads.current_blas_threads(),
                          1, self.deterministic)

    def train_step(self, x: np.ndarray, y: np.ndarray, keys: np.ndarray | None = None) -> StepStats:
        m, n = self.model, len(x)
        t0 = time.perf_counter()
        if not self.deterministic:
            _, total, correct, _ = run_shard(m, 0, x, y, n, keys, None, self.augment)
        else:
            total, correct = self._deterministic_gradients(x, y, keys)
        t1 = time.perf_counter()
        norm = m.apply_gradients()
        t2 = time.perf_counter()
        return StepStats(total, correct, n, norm,
                         {"compute": t1 - t0, "wait": 0.0, "reduce": 0.0, "optimizer": t2 - t1})

    def _deterministic_gradients(self, x, y, keys) -> tuple[float, int]:
        m, n = self.model, len(x)
        if self._slots is None or self._slots.shape[1] != m.grads.size:
            self._slots = np.zeros((DETERMINISTIC_SHARDS, m.grads.size), np.float32)
            self._state_slots = np.zeros((DETERMINISTIC_SHARDS, m.state.size), np.float32)
        state0, grads = m.state.copy(), m.grads
        results = []
        try:
            for k, (a, b) in enumerate(shard_bounds(n, DETERMINISTIC_SHARDS)):
                m.bind_grads(self._slots[k])
                results.append(run_shard(m, k, x[a:b], y[a:b], n, None if keys is None else keys[a:b],
                                         state0, self.augment))
                self._state_slots[k] = m.state
        finally:
            m.bind_grads(grads)
        return combine_shards(results, self._slots, self._state_slots, m.grads, m.state)

    def place_data(self, X: np.ndarray, Y: np.ndarray) -> None:
        self._data = (X, Y)

    def train_rows(self, indices: np.ndarray, keys: np.ndarray | None = None) -> StepStats:
        X, Y = self._data
        return self.train_step(X[indices], Y[indices], keys)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]:
        return mean_loss_and_accuracy(evaluation_sums(self.model, x, y, batch_size))

    def sync_state(self) -> None:
        """Nothing to gather in one process (the model's state is already current)."""

    def close(self) -> None:
        self._limit.close()


def make_engine(model, workers=1, threads_per_worker: int | None = None, deterministic: bool = False,
                backend=None, seed: int | None = None, augment=None, **options) -> Engine:
    """The engine ``fit`` asked for: MPI ranks when ``backend='mpi'`` (or a Communicator; they
    agree on rank 0's ``seed``), else shared-memory workers for ``workers`` > 1, else this
    process (where the worker-process options have nothing to do)."""
    from .comm import Communicator
    if backend == "mpi" or isinstance(backend, Communicator):
        from .distributed import DistributedEngine
        return DistributedEngine(model, backend, workers=workers, threads_per_worker=threads_per_worker,
                                 deterministic=deterministic, seed=seed, augment=augment, **options)
    if backend not in (None, "local"):
        raise ValueError(f"backend must be None, 'local' or 'mpi', got {backend!r}")
    n = threads.resolve_workers(1 if workers is None else workers,
                                oversubscribe=options.get("oversubscribe", False))
    if n == 1:
        return LocalEngine(model, deterministic=deterministic, threads_per_worker=threads_per_worker,
                           augment=augment)
    from .workers import DataParallel
    options.pop("check_every", None)
    return DataParallel(model, workers=n, threads_per_worker=threads_per_worker,
                        deterministic=deterministic, augment=augment, **options)
