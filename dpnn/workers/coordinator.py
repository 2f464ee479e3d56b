"""DataParallel: the coordinator of the shared-memory data-parallel engine.

One step (see docs/engine.md for the picture)::

    write the step's rows (or batch) and keys to shared memory; send ("step", n) to every worker
    wait for every worker (or a death)     <- each fills its gradient slot(s), then, from 2
                                              workers, sums the slots and steps the optimizer
                                              on its chunk of the parameters (update.py)
    state = sample-weighted slot average; loss and hits added in slot order
    (1 worker, or an optimizer that is not plain SGD/Adam: the slot sum, weight decay,
    clipping and the optimizer step run here, as ``Model.apply_gradients``)

The workers see the new parameters at the next step without any copy. ``train_step``
has the :class:`dpnn.engine.Engine` contract and runs the recipe of :mod:`dpnn.recipe`, so
it gives the result of one process: to float32 rounding in general, bitwise with
``deterministic=True`` for any worker count. The workers run the user's own layer and
loss objects (``Model.portable``), never copies re-created from a config.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

import cloudpickle
import numpy as np

from ..engine import EngineInfo, evaluation_sums, mean_loss_and_accuracy
from ..errors import WorkerError
from ..recipe import DETERMINISTIC_SHARDS, ShardResult, StepStats, combine_shards
from ..random import sample_keys as make_sample_keys
from . import protocol as P
from ._env import default_start_method
from .arena import SharedArena, SharedMemoryError
from .balance import ShardBalance
from .batches import BatchLoader
from .pool import WorkerPool
from .protocol import WorkerSpec, augment_blob, portable_blob
from .syncbn import exchange_width
from .update import SUM_ONLY, ShardedUpdate, global_norm, norm_blocks, optimizer_twin, slot_keys
from .topology import plan_placement, resolve_workers


# With 2 or more workers the workers sum the gradient slots and step the optimizer, each on
# its chunk, inside the step message (update.py): no serial phase, no extra round trip. One
# worker gains nothing from it (the sum is a copy and nobody shares the update), so there
# the coordinator steps, as one process does. `python -m benchmarks.ablation` compares both.
SHARD_FROM = 2


log = logging.getLogger("dpnn.workers")
WORKER_TIMEOUT_S = 300.0    # default: a worker silent this long in a step is stopped or stuck


class DataParallel:
    """Train ``model`` with ``workers`` processes sharing its parameters; a context manager.

    >>> with DataParallel(model, workers=4) as dp:
    ...     loss, acc = dp.train_on_batch(x, y)

    Options: ``threads_per_worker`` (BLAS threads; default cores // workers, 1 when
    deterministic), ``deterministic`` (bitwise identical for 1..8 workers),
    ``sync_batchnorm`` (global batch statistics), ``start_method`` ('forkserver' or
    'spawn'), ``max_restarts`` (respawns per worker before giving up), ``pin`` (each worker
    on its own cores; turn off on a machine shared with other pinned jobs),
    ``shard_optimizer`` (True: each worker updates its chunk of the parameters, see
    update.py; False: the coordinator updates them all; 'auto': from SHARD_FROM workers),
    ``oversubscribe`` (allow more than MAX_WORKERS_PER_CORE workers per core), ``ranks``
    (MPI ranks sharing this node, set by the MPI engine: the cores are split between them),
    ``balance`` (True: shards sized to each worker's measured speed, for cores that differ
    or are shared, see balance.py; only where the result cannot depend on the cut: no
    per-shard BatchNorm statistics, not deterministic; default False: equal shards, the same
    result run after run).

    ``model`` must be compiled; it is built on the first batch if needed. While the pool
    runs, the model's parameters and BatchNorm statistics live in shared memory (so the
    coordinator's ``model`` is always current); ``close`` copies them back into private
    arrays, so the model stays usable afterwards.
    """

    def __init__(self, model, workers: int | str = "auto", threads_per_worker: int | None = None,
                 deterministic: bool = False, sync_batchnorm: bool = False,
                 start_method: str | None = None, max_restarts: int = 3, pin: bool = True,
                 shard_optimizer: bool | str = "auto", oversubscribe: bool = False,
                 ranks: int = 1, worker_timeout: float | None = WORKER_TIMEOUT_S,
                 augment=None, balance: bool = False) -> None:
        n = resolve_workers(workers, ranks, oversubscribe)
        if deterministic and n > DETERMINISTIC_SHARDS:
            if workers != "auto":
                raise ValueError(f"deterministic=True splits every batch into {DETERMINISTIC_SHARDS} "
                                 f"fixed shards, so it supports at most {DETERMINISTIC_SHARDS} workers; "
                                 f"got workers={workers}")
            n = DETERMINISTIC_SHARDS
        if deterministic and sync_batchnorm:
            raise ValueError("sync_batchnorm=True cannot be combined with deterministic=True "
                             "(deterministic shards are computed one after another)")
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        self.model, self.workers = model, n
        self.deterministic, self.sync_batchnorm = bool(deterministic), bool(sync_batchnorm)
        self.placement = plan_placement(n, threads_per_worker, deterministic, pin, ranks)
        self.threads_per_worker = self.placement.threads_per_worker
        self.start_method = start_method or default_start_method()
        if shard_optimizer not in (True, False, "auto"):
            raise ValueError(f"shard_optimizer must be True, False or 'auto', got {shard_optimizer!r}")
        self.max_restarts = max_restarts
        if worker_timeout is not None and not worker_timeout > 0:
            raise ValueError(f"worker_timeout must be a number of seconds > 0 or None, got {worker_timeout!r}")
        self.worker_timeout = worker_timeout        # a worker silent this long is killed and replaced
        self.shard_optimizer = n >= SHARD_FROM if shard_optimizer == "auto" else shard_optimizer
        self.slots = DETERMINISTIC_SHARDS if deterministic else n
        if balance not in (True, False):
            raise ValueError(f"balance must be True or False, got {balance!r}")
        self.balance = balance
        self._balance: ShardBalance | None = None   # set at start when the cut may follow speed
        self.startup_time: float | None = None      # seconds from start() to every worker ready
        self.restarts = [0] * n                     # deaths seen per worker
        self.arena: SharedArena | None = None
        self.batches: BatchLoader | None = None
        self.augment = augment                      # fn(x, keys) run by each worker on its shard
        self._layout_changed = False
        self._unplaced: tuple | None = None         # the training set, when shared memory had no room
        self.pool: WorkerPool | None = None
        self._sets: ShardedUpdate | None = None    # None: the optimizer always runs here
        self._attempt = self._auto_keys = 0
        self._in_flight = self._closed = False
        self._old_sigterm = None

    def describe(self) -> EngineInfo:
        return EngineInfo("shared-memory", self.workers, self.threads_per_worker, 1, self.deterministic)

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "DataParallel":
        if self.model.built:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, x: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
        """Allocate shared memory and start the workers (``x``/``y``: a first batch, for sizes)."""
        if self.pool is not None:
            return
        if self._closed:
            raise RuntimeError("this DataParallel is closed; create a new one")
        m = self.model
        m._require_compiled()
        if m.owner is not None and m.owner is not self and not m.owner._closed:
            raise RuntimeError("this model already belongs to another open DataParallel; close that "
                               "one first (two pools on one model would train two diverging copies)")
        if not m.built:
            if x is None:
                raise ValueError("the model is not built: call model.build(input_shape) or train a batch")
            m.build(x.shape)
        t0 = time.perf_counter()
        try:
            self.arena = a = SharedArena.create(self._regions(x, y))
            self.batches = BatchLoader(a, m.input_shape[1:])
            keys = slot_keys(m.optimizer) if self.shard_optimizer else None
            self._sets = ShardedUpdate(m, a, keys) if keys is not None else None
            if self.balance and not self.deterministic and self.workers > 1 and \
                    (self.sync_batchnorm or m.state.size == 0):   # per-shard statistics stay equal
                self._balance = ShardBalance(self.workers)
            params = self._sets.current_params() if self._sets else a["params"][0]
            m.bind(params, a["grads_sum"], a["state"][0], copy=True)
            spec = self._spec()
            m.owner = self
            self.pool = WorkerPool(spec, self.start_method, arrivals=lambda: self.arena["meet"])
            self._install_sigterm()
            self.pool.start()
        except BaseException:
            self.close()
            raise
        self.startup_time = time.perf_counter() - t0

    def _regions(self, x, y) -> dict:
        m, S = self.model, self.slots
        cap = len(x) if x is not None else 1
        y_tail, y_dtype = (y.shape[1:], y.dtype.str) if y is not None else ((), "<i8")
        P = m.params.size
        regions = {"params": ((2, P), "float32"),               # two sets: see update.py
                   "grads": ((S, P), "float32"),                # one slot per worker/micro-shard
                   "grads_sum": ((P,), "float32"),              # the reduced gradient
                   "state": ((S + 1, m.state.size), "float32"),  # row 0: the model's state
                   "x": ((cap,) + tuple(m.input_shape[1:]), "float32"),
                   "y": ((cap,) + tuple(y_tail), y_dtype),
                   "keys": ((cap,), "uint64")}
        keys = slot_keys(m.optimizer) if self.shard_optimizer else None
        for k in keys or ():
            regions[f"opt_{k}"] = ((2, P), "float32")          # optimizer slots, two sets
        if keys is not None:
            regions["norm_parts"] = ((norm_blocks(P),), "float64")   # block sums of squares
        width = exchange_width(m.layers) if self.sync_batchnorm else 0
        if width:
            regions["exchange"] = ((2, self.workers, width), "float64")
        if width or keys is not None:
            regions["meet"] = ((self.workers,), "int64")           # the workers' barrier (meet.py)
        return regions

    def _spec(self) -> WorkerSpec:
        m = self.model
        return WorkerSpec(
            workers=self.workers, model_blob=portable_blob(m), augment_blob=augment_blob(self.augment),
            optimizer_blob=cloudpickle.dumps(optimizer_twin(m.optimizer)) if self._sets else None,
            layout=self.arena.layout(), prefix=self.arena.prefix, slots=self.slots,
            deterministic=self.deterministic, sync_batchnorm=self.sync_batchnorm,
            threads=self.threads_per_worker, cpus=self.placement.cpus,
            coordinator_pid=os.getpid())

    def _install_sigterm(self) -> None:
        """While the pool runs, SIGTERM behaves like Ctrl-C, so every ``finally`` gets to clean up.

        Only when SIGTERM still has its default action: an application's own handler is kept.
        """
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)

    def close(self) -> None:
        """Stop the workers, copy parameters/state back to private memory, unlink shared memory."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.pool is not None:
                self.pool.stop(graceful=not self._in_flight)
        finally:
            if self.arena is not None:
                m = self.model
                m.bind(m.params.copy(), m.grads.copy(), m.state.copy(), copy=False)
                slots = m.optimizer.slots if m.optimizer is not None else []
                for slot in slots:                     # Adam's m, v may live in the arena
                    slot.update({k: np.array(v) for k, v in slot.items()})
                self._sets = None
                if m.owner is self:
                    m.owner = None
                self.arena.unlink()
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None

    def sync_state(self) -> None:
        """Nothing to gather: parameters and BatchNorm statistics already live in the model."""

    @property
    def worker_pids(self) -> list[int]:
        return list(self.pool.pids) if self.pool is not None else []

    # -- training -------------------------------------------------------------------------
    def train_step(self, x: np.ndarray, y: np.ndarray, keys: np.ndarray | None = None) -> StepStats:
        """One optimizer step on the global batch (x, y); ``keys`` (N,) uint64 key Dropout masks."""
        return self._step(x, y, keys, None)

    def _step(self, x, y, keys, rows) -> StepStats:
        if self._sets is None or not self._sets.ready():
            stats = self._gradients(x, y, keys, None, True, rows)
            t0 = time.perf_counter()
            stats.grad_norm = self.model.apply_gradients()
            stats.times["optimizer"] = time.perf_counter() - t0
            return stats
        self._sets.adopt()        # the workers sum the slots and update, each its chunk
        stats = self._gradients(x, y, keys, None, False, rows, self._sets.message_args())
        self._sets.flip()
        stats.grad_norm = global_norm(self.arena["norm_parts"])
        return stats

    def compute_gradients(self, x: np.ndarray, y: np.ndarray, keys: np.ndarray | None = None,
                          denominator: int | None = None) -> StepStats:
        """Workers' forward + backward, no optimizer step: ``model.grads`` = d(sum of losses)/dθ
        / ``denominator`` (default: the batch size), ``model.state`` = the merged statistics."""
        return self._gradients(x, y, keys, denominator, reduce_grads=True)

    def apply_gradients(self) -> float:
        """Weight decay, clipping and the optimizer step on ``model.grads`` as it stands (the MPI
        engine all-reduced it): each worker on its chunk (update.py) where the step can run
        there, else ``Model.apply_gradients``; returns the gradient norm before clipping."""
        if self.pool is None or self._sets is None or not self._sets.ready():
            return self.model.apply_gradients()
        self._sets.adopt()
        self._compute((P.UPDATE, self._sets.cur, *self._sets.message_args()))
        self._sets.flip()
        return global_norm(self.arena["norm_parts"])

    def place_data(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Put the training set in shared memory once; then :meth:`train_rows` sends only indices."""
        X, Y = self.model.check_input(X), np.asarray(Y)
        if self.pool is None:
            self.start(X[:1], Y[:1])
        self._unplaced = None
        try:
            self._layout_changed |= self.batches.place(X, Y)
        except SharedMemoryError as e:       # e.g. a container's 64 MB /dev/shm: still train
            log.warning("dpnn: the training set does not fit in shared memory, so the coordinator "
                        "copies each batch instead (%s)", e)
            self._unplaced, self._layout_changed = (X, Y), True

    def train_rows(self, indices: np.ndarray, keys: np.ndarray | None = None) -> StepStats:
        """One optimizer step on rows ``indices`` of the placed data (each worker gathers its own)."""
        indices = np.asarray(indices, np.int64)
        if self._unplaced is not None:
            X, Y = self._unplaced
            return self._step(X[indices], Y[indices], keys, None)
        return self._step(None, None, keys, indices)

    def compute_rows(self, indices: np.ndarray, keys: np.ndarray | None = None,
                     denominator: int | None = None) -> StepStats:
        """:meth:`compute_gradients` on rows ``indices`` of the placed data."""
        indices = np.asarray(indices, np.int64)
        if self._unplaced is not None:
            X, Y = self._unplaced
            return self._gradients(X[indices], Y[indices], keys, denominator, True)
        return self._gradients(None, None, keys, denominator, True, indices)

    def _gradients(self, x, y, keys, denominator, reduce_grads: bool, rows=None,
                   update: tuple | None = None) -> StepStats:
        t0 = time.perf_counter()
        if self._closed:
            raise RuntimeError("this DataParallel is closed; create a new one")
        n = self._check_batch(x, y) if rows is None else len(rows)
        if rows is not None and (self.batches is None or self.batches.placed is None):
            raise RuntimeError("train_rows needs the data placed first: dp.place_data(X, Y)")
        if self.pool is None:
            self.start(x, y)
        if reduce_grads and update is None and self.pool.meets:
            update, reduce_grads = SUM_ONLY, False      # the workers sum the slots, each its chunk
        if keys is None:
            self._auto_keys += 1
            keys = make_sample_keys(self.model.seed or 0, self._auto_keys, np.arange(n))
        if rows is None:
            self._layout_changed |= self.batches.load_arrays(x, y, keys)
        else:
            self._layout_changed |= self.batches.load_rows(rows, keys)
        cur = self._sets.cur if self._sets is not None else 0
        cuts = self._balance.cuts(n) if self._balance is not None else None
        done, t_sent = self._compute((P.STEP, n, denominator or n, self._new_layout(), cur,
                                      rows is not None, update, cuts))
        t2 = time.perf_counter()
        shards = sorted(ShardResult(*s) for msg in done.values() for s in msg[2])     # slot order
        a, m = self.arena, self.model
        loss_sum, correct = combine_shards(shards, a["grads"], a["state"][1:],
                                           m.grads if reduce_grads else None, m.state, self.sync_batchnorm)
        t3 = time.perf_counter()
        if cuts is not None:
            self._balance.observe(cuts, [done[k][3] for k in range(self.workers)])
        times = P.step_times(list(done.values()), update is not None)
        times.update(wait=max(0.0, t2 - t_sent - times.pop("handler")), reduce=t3 - t2, optimizer=0.0,
                     scatter=t_sent - t0)
        return StepStats(loss_sum, correct, n, 0.0, times)

    def _check_batch(self, x, y) -> int:
        x, y = self.model.check_input(x), np.asarray(y)
        if len(x) == 0 or len(y) != len(x):
            raise ValueError(f"a training batch needs at least one sample and as many labels as "
                             f"inputs; got {len(x)} inputs and {len(y)} labels")
        if y.dtype.kind not in "biuf":
            raise TypeError(f"labels must be numeric, got dtype {y.dtype}")
        return len(x)

    def _new_layout(self):
        """The arena layout if a region changed since the workers last saw it, else None."""
        changed, self._layout_changed = self._layout_changed, False
        return self.arena.layout() if changed else None

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]:
        """(mean loss, accuracy) of the current parameters on (x, y), each worker scoring a slice
        (the set is copied to shared memory once; the same arrays again are not copied)."""
        return mean_loss_and_accuracy(self.evaluation_sums(x, y, batch_size))

    def evaluation_sums(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """[loss sum, hits (-1: not a classifier), count] on (x, y), added in worker order (the
        MPI engine all-reduces these); in this process when no pool is open or /dev/shm is full."""
        if self.pool is None or self._closed:
            return evaluation_sums(self.model, x, y, batch_size)
        x, y = self.model.check_input(x), np.asarray(y)
        try:
            self._layout_changed |= self.batches.place_eval(x, y)
        except SharedMemoryError:            # no room for it: score it here instead
            self._layout_changed = True
            return evaluation_sums(self.model, x, y, batch_size)
        cur = self._sets.cur if self._sets is not None else 0
        done, _ = self._compute((P.EVAL, len(x), self._new_layout(), cur, batch_size, False))
        sums = np.zeros(3, np.float64)
        for k in sorted(done):                       # worker order: the same sum every time
            loss, hits, count = done[k][2]
            sums[0] += loss
            sums[1] = -1 if hits < 0 or sums[1] < 0 else sums[1] + hits
            sums[2] += count
        return sums

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Outputs (N, ...) of the current parameters (inference mode), each worker predicting a
        slice; like ``Model.predict``, which runs when no pool is open."""
        m = self.model
        if self.pool is None or self._closed:
            return m.predict(x, batch_size)
        x = m.check_input(x)
        try:
            self._layout_changed |= self.batches.place_eval(x, None, m.output_shape[1:])
        except SharedMemoryError:
            self._layout_changed = True
            return m.predict(x, batch_size)
        cur = self._sets.cur if self._sets is not None else 0
        self._compute((P.EVAL, len(x), self._new_layout(), cur, batch_size, True))
        return self.arena["eval_out"][:len(x)].copy()

    def train_on_batch(self, x, y, sample_keys: np.ndarray | None = None) -> tuple[float, float]:
        """One step on (x, y); returns (mean loss, accuracy or nan), like ``Model.train_on_batch``."""
        stats = self.train_step(x, y, sample_keys)
        acc = stats.correct / stats.count if stats.correct >= 0 else float("nan")
        return stats.loss_sum / stats.count, acc

    def _compute(self, step: tuple) -> tuple[dict, float]:
        """Every worker fills its slots; a dead worker is respawned and the step redone."""
        kind, *args = step
        while True:
            self._respawn_dead(set())
            self._attempt += 1
            self._in_flight = True
            self.pool.send_all((kind, self._attempt, *args))
            t_sent = time.perf_counter()
            done, dead, errors = self.pool.gather(self._attempt, self.worker_timeout)
            # with synchronised BatchNorm, peers of a failed worker may still be mid-step
            self._in_flight = self.pool.meets and bool(dead or errors)
            if errors:
                k = min(errors)
                pid = self.pool.pids[k]
                self.close()
                raise WorkerError(f"worker {k} (pid {pid}) raised an exception; all workers were "
                                  f"stopped. Its traceback:\n{errors[k]}")
            if not dead:
                return done, t_sent
            self._respawn_dead(dead, redo=True)

    def _respawn_dead(self, dead: set[int], redo: bool = False) -> None:
        """Replace dead workers (one log line each), or give up after ``max_restarts`` deaths."""
        dead = sorted(dead | set(self.pool.dead_workers()))
        lost = {k: (self.pool.pids[k], self.pool.exit_reason(k)) for k in dead}
        for k, (pid, reason) in lost.items():
            self.restarts[k] += 1
            if self.restarts[k] > self.max_restarts:
                self.close()
                raise WorkerError(f"worker {k} (pid {pid}) died {self.restarts[k]} times, last "
                                  f"{reason}; gave up after max_restarts={self.max_restarts}")
        if dead:
            self.pool.respawn(dead, self.arena.layout())
            self._in_flight = False
        for k, (pid, reason) in lost.items():
            log.warning("dpnn: worker %d (pid %d) died (%s); respawned as pid %d%s", k, pid, reason,
                        self.pool.pids[k], ", step redone" if redo else "")


def _sigterm_to_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")
