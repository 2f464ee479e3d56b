"""Data-parallel training across processes (one MPI rank per node): ``fit(..., backend='mpi')``.

Every rank holds the whole model and sees the same global batch (``run_epoch`` draws it
from (seed, epoch) alike on every rank). Per step::

    rank r                                              all ranks
    ------                                              ---------
    take its slice of the global batch (shard_bounds over ranks, from sample positions)
    gradients of sum(loss over its slice) / (global batch size)   -- node-local engine
    pack [grads | BatchNorm state * (slice / batch)]    ──▶ one in-place Allreduce (float32)
    [loss sum, correct, count]                           ──▶ one in-place Allreduce (float64)
    weight decay, clipping, optimizer step               identical on every rank

In ``deterministic`` mode the batch is cut into the same ``DETERMINISTIC_SHARDS`` micro-shards
as ``LocalEngine``; each rank computes the micro-shards it owns, the per-shard slots are
all-gathered and summed in the order 0..7 on every rank, so parameters are bitwise the same
as one process (or one node's workers) would compute.

Parameters, BatchNorm state and optimizer state are broadcast from rank 0 at start (so a
checkpoint read by rank 0 alone resumes everywhere); a checksum of the parameters is
compared across ranks every ``check_every`` steps and at every epoch end, and a mismatch
(or ranks that were fed different batches) raises ``RanksDiverged``.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from . import threads
from .comm import Communicator, get_communicator
from .engine import EngineInfo, evaluation_sums, mean_loss_and_accuracy
from .layers.normalization import BatchNorm2D
from .random import sample_keys as make_sample_keys
from .recipe import (DETERMINISTIC_SHARDS, ShardResult, StepStats, combine_shards, owned_slots,
                     run_shard, shard_bounds)


class RanksDiverged(RuntimeError):
    """Ranks hold different parameters, or were fed different batches: the run cannot go on."""


class DistributedEngine:
    """``train_step``/``sync_state``/``evaluate``/``close`` over the ranks of ``comm``.

    ``workers`` > 1 runs each rank's slice on that node's shared-memory ``DataParallel``
    workers; ``workers`` = 1 computes it in the rank's own process, and so does deterministic
    mode (its micro-shards must be cut from the global batch, which ``DataParallel`` does not
    do for a slice). As in ``DataParallel``, BatchNorm uses each rank's slice statistics
    unless ``sync_batchnorm=True`` (one worker per rank): batch sums are then all-reduced
    across ranks, so the statistics are those of the global batch, as in one process.
    """

    def __init__(self, model, comm: Communicator | str = "mpi", workers=1,
                 threads_per_worker: int | None = None, deterministic: bool = False,
                 check_every: int = 50, sync_batchnorm: bool | None = None, seed: int | None = None,
                 augment=None, **local_options) -> None:
        if not model.built:
            raise ValueError("build the model before creating its engine: model.build(input_shape)")
        self.model, self.deterministic, self.augment = model, deterministic, augment
        self._data: tuple[np.ndarray, np.ndarray] | None = None
        self.comm = get_communicator(comm)
        self.rank, self.size = self.comm.rank, self.comm.size
        self.check_every, self.steps = max(int(check_every), 1), 0
        self.sync_batchnorm = bool(sync_batchnorm)
        if self.sync_batchnorm and (deterministic or workers not in (1, None)):
            raise ValueError("sync_batchnorm=True across MPI ranks needs workers=1 per rank and "
                             "deterministic=False")
        self.local = self._local_engine(workers, threads_per_worker, local_options)
        self._blas = threads.blas_limit(None)
        if self.local is not None:
            self.workers, self.threads_per_worker = self.local.workers, self.local.threads_per_worker
        else:                  # computing in this process: ranks x threads never exceed the cores
            self.workers = 1
            self.threads_per_worker, _ = threads.worker_threads(1, threads_per_worker, deterministic,
                                                                self.comm.local_size)
            self._blas = threads.blas_limit(self.threads_per_worker)
        self._bn = [layer for layer in model.layers if isinstance(layer, BatchNorm2D)]
        for layer in self._bn if self.sync_batchnorm else []:
            layer.sync = self._allreduce_sums
        self.broadcast_model(root=0)
        self.seed = self.comm.bcast_object(seed)          # shuffling and dropout agree on every rank
        P, S = model.params.size, model.state.size
        slots = -(-DETERMINISTIC_SHARDS // self.size) if deterministic else 1
        self._pack = np.zeros((slots, P + S), np.float32)      # (slots, P+S): grads | state
        self._stats = np.zeros((slots, 3), np.float64)         # (slots, 3): loss sum, correct, count
        self._grads = model.grads

    def describe(self) -> EngineInfo:
        return EngineInfo("mpi", self.workers, self.threads_per_worker, self.size, self.deterministic,
                          self.rank, self.seed)

    def _local_engine(self, workers, threads_per_worker, options):
        workers = threads.resolve_workers(1 if workers is None else workers, self.comm.local_size,
                                          options.pop("oversubscribe", False))
        if workers == 1:
            return None
        if self.deterministic:
            if self.rank == 0 and workers != "auto":
                warnings.warn("deterministic mode over MPI computes each rank's micro-shards in the "
                              f"rank's own process; workers={workers!r} is ignored", stacklevel=4)
            return None
        from .workers import DataParallel
        return DataParallel(self.model, workers=workers, threads_per_worker=threads_per_worker,
                            deterministic=self.deterministic, ranks=self.comm.local_size,
                            oversubscribe=True, augment=self.augment, **options)

    # -- start-up / resume --------------------------------------------------------------
    def broadcast_model(self, root: int = 0) -> None:
        """Parameters, BatchNorm state and optimizer state (step count, lr, moments) from root."""
        m = self.model
        self.comm.bcast(m.params, root)
        self.comm.bcast(m.state, root)
        if m.optimizer is not None:
            m.optimizer.load_state_dict(self.comm.bcast_object(m.optimizer.state_dict(), root))

    # -- one step -----------------------------------------------------------------------
    def train_step(self, x: np.ndarray, y: np.ndarray, keys: np.ndarray | None = None) -> StepStats:
        """One optimizer step on the GLOBAL batch (N, ...); returns global sums on every rank."""
        return self._step(Batch(x, y), keys)

    def place_data(self, X: np.ndarray, Y: np.ndarray) -> None:
        """The training set, identical on every rank; the node's pool keeps it in shared memory."""
        self._data = (X, Y)
        if self.local is not None:
            self.local.place_data(X, Y)

    def train_rows(self, indices: np.ndarray, keys: np.ndarray | None = None) -> StepStats:
        """:meth:`train_step` on rows ``indices`` of the placed data (each rank gathers its own)."""
        return self._step(Batch(*self._data, np.asarray(indices, np.int64)), keys)

    def _step(self, batch: "Batch", keys) -> StepStats:
        m, n = self.model, len(batch)
        t0 = time.perf_counter()
        if keys is None:               # Dropout keys of the global batch, alike on every rank
            keys = make_sample_keys(m.seed or 0, self.steps + 1, np.arange(n))
        if self.deterministic:
            owned = self._owned_micro_shards(n)
        else:
            a, b = shard_bounds(n, self.size)[self.rank]
            owned = [(a, b)]
        for j, (a, b) in enumerate(owned):
            self._compute(j, batch, keys, a, b, n)
        t1 = time.perf_counter()
        stats = self._reduce(n)
        t2 = time.perf_counter()
        norm = m.apply_gradients() if self.local is None else self.local.apply_gradients()
        t3 = time.perf_counter()
        self.steps += 1
        if self.steps == 1 or self.steps % self.check_every == 0:
            self.check_in_sync(batch.fingerprint(), keys)
        stats.grad_norm = norm
        stats.times = {"compute": t1 - t0, "wait": 0.0, "reduce": t2 - t1, "optimizer": t3 - t2}
        return stats

    def _owned_micro_shards(self, n: int) -> list[tuple[int, int]]:
        return [shard_bounds(n, DETERMINISTIC_SHARDS)[k]
                for k in owned_slots(DETERMINISTIC_SHARDS, self.size, self.rank)]

    def _compute(self, j: int, batch: "Batch", keys, a: int, b: int, n: int) -> None:
        """Slot j <- [grads of sum(loss on samples a:b) / n | BN state after them] and its stats."""
        m, P = self.model, self.model.params.size
        slot, stats = self._pack[j], self._stats[j]
        state0 = m.state.copy()
        k = None if keys is None else keys[a:b]
        if b <= a and self.sync_batchnorm:
            for layer in self._bn + self._bn[::-1]:
                self._allreduce_sums(np.zeros(2 * layer.params["gamma"].size + 1))   # join every exchange
        if self.local is None or b <= a:          # the recipe's shard, in this process
            m.bind_grads(slot[:P])
            try:
                result = run_shard(m, j, *batch.take(a, b), n, k, state0, self.augment)
            finally:
                m.bind_grads(self._grads)
        else:                  # the node's workers: merged grads and state, no optimizer step
            local = (self.local.compute_gradients(*batch.take(a, b), k, denominator=n) if batch.rows is None
                     else self.local.compute_rows(batch.rows[a:b], k, denominator=n))
            result = ShardResult(j, local.loss_sum, local.correct, b - a)
            slot[:P] = m.grads
        slot[P:] = m.state
        stats[:] = result[1:]
        m.state[...] = state0          # the next micro-shard starts from the same statistics

    def _reduce(self, n: int) -> StepStats:
        """Sum the ranks' slots into model.grads/state; the global loss/correct/count."""
        m, P = self.model, self.model.params.size
        if not self.deterministic:
            pack, stats = self._pack[0], self._stats[0]
            if self.sync_batchnorm:                    # every rank has the same statistics
                pack[P:] *= np.float32(self.rank == 0)
            else:                                      # sample-weighted shard statistics
                pack[P:] *= np.float32(stats[2] / n)
            self.comm.allreduce(pack)
            self.comm.allreduce(stats)
            m.grads[...] = pack[:P]
            m.state[...] = pack[P:]
            return StepStats(float(stats[0]), -1 if stats[1] < 0 else int(stats[1]), int(stats[2]))
        packs = self.comm.allgather(self._pack)        # (size, slots, P+S)
        stats = self.comm.allgather(self._stats)       # (size, slots, 3)
        order = [(r, j) for r in range(self.size)
                 for j in range(len(owned_slots(DETERMINISTIC_SHARDS, self.size, r)))]
        results = [ShardResult(k, float(stats[r, j, 0]), int(stats[r, j, 1]), int(stats[r, j, 2]))
                   for k, (r, j) in enumerate(order)]
        loss_sum, correct = combine_shards(results, [packs[r, j, :P] for r, j in order],
                                           [packs[r, j, P:] for r, j in order], m.grads, m.state)
        return StepStats(float(loss_sum), correct, n)

    def _allreduce_sums(self, sums: np.ndarray) -> np.ndarray:
        """BatchNorm's ``sync`` hook: per-rank float64 sums -> sums over the global batch."""
        return self.comm.allreduce(np.array(sums, np.float64))

    # -- agreement across ranks ---------------------------------------------------------
    def checksum(self, x: np.ndarray | None = None, keys: np.ndarray | None = None) -> np.ndarray:
        """(6,) uint64 fingerprints of this rank's parameters, state, optimizer step and batch.

        Integer sums of the raw bits: exact and order-free, so equal arrays give equal
        fingerprints on any CPU (a float sum could round differently on another machine).
        """
        m = self.model
        bits = m.params.view(np.uint32).astype(np.uint64)                      # (P,)
        weights = np.arange(1, bits.size + 1, dtype=np.uint64) % np.uint64(1009)
        batch = 0 if x is None else np.ascontiguousarray(x).reshape(-1).view(np.uint8).sum(dtype=np.uint64)
        key = 0 if keys is None else np.bitwise_xor.reduce(np.asarray(keys, np.uint64))
        return np.array([bits.sum(dtype=np.uint64), (bits * weights).sum(dtype=np.uint64),
                         m.state.view(np.uint32).sum(dtype=np.uint64), getattr(m.optimizer, "t", 0),
                         batch, key], np.uint64)

    def check_in_sync(self, x: np.ndarray | None = None, keys: np.ndarray | None = None) -> None:
        """Raise RanksDiverged on every rank if any rank's checksum differs from rank 0's."""
        sums = self.comm.allgather(self.checksum(x, keys))               # (size, 6)
        bad = [r for r in range(self.size) if not np.array_equal(sums[r], sums[0])]
        if bad:
            fed_differently = any(not np.array_equal(sums[r, 4:], sums[0, 4:]) for r in bad)
            what = "batches (different data or seed)" if fed_differently else "parameters"
            raise RanksDiverged(f"ranks {bad} hold different {what} than rank 0 after step "
                                f"{self.steps}; every rank must load the same data and use the same seed")

    def sync_state(self) -> None:
        """End of epoch: let the node-local engine settle, then verify every rank agrees."""
        if self.local is not None:
            self.local.sync_state()
        self.check_in_sync()

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]:
        """(mean loss, accuracy) of the model on (x, y): each rank scores a slice (on the node's
        workers when it has a pool), the sums are all-reduced."""
        a, b = shard_bounds(len(x), self.size)[self.rank]
        if self.local is not None:
            sums = self.local.evaluation_sums(x[a:b], y[a:b], batch_size)  # loss sum, hits, count
        else:
            sums = evaluation_sums(self.model, x[a:b], y[a:b], batch_size)
        self.comm.allreduce(sums)                        # hits < 0: not a classifier
        return mean_loss_and_accuracy(sums)

    def close(self) -> None:
        for layer in self._bn:
            layer.sync = None
        self._blas.close()
        if self.local is not None:
            self.local.close()
            self.local = None


class Batch:
    """The global batch: arrays (x, y), or rows ``rows`` of the placed training set (X, Y)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.x, self.y, self.rows = x, y, rows

    def __len__(self) -> int:
        return len(self.x) if self.rows is None else len(self.rows)

    def take(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples a:b of the batch as arrays."""
        if self.rows is None:
            return self.x[a:b], self.y[a:b]
        return self.x[self.rows[a:b]], self.y[self.rows[a:b]]

    def fingerprint(self) -> np.ndarray:
        """What ranks compare to know they were fed the same batch: the samples or their indices."""
        return self.x if self.rows is None else self.rows


def on_root(comm: Communicator, fn, *args, root: int = 0):
    """``fn(*args)`` run on ``root`` alone; its result, or the exception it raised, on every rank.

    For start-up work only rank 0 should do (read a checkpoint, check output paths): every
    rank then succeeds or fails alike, so no rank is left waiting for the others.
    """
    result = error = None
    if comm.rank == root:
        try:
            result = fn(*args)
        except Exception as e:         # noqa: BLE001 -- re-raised on every rank below
            error = e
    error, result = comm.bcast_object((error, result), root)
    if error is not None:
        raise error
    return result
