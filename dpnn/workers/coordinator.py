"""PoolNode: the node whose shards are computed by worker processes sharing memory.

One :meth:`PoolNode.run` (docs/engine.md draws it)::

    write the batch (its rows of the placed data, or a copy) and its keys to shared memory
    send Compute to every worker; wait for every reply (or a death: respawn, send again)
                                           <- each fills its gradient slot(s); then, as far as
                                              ``finish`` asks and from 2 workers, sums the
                                              slots and steps the optimizer for its chunk of
                                              the parameters (sharded_update.py)
    state = sample-weighted slot average; sums added in slot order
    (1 worker, or an optimizer that is not dpnn's SGD/Adam: the slot sum, weight decay,
    clipping and the optimizer step run here, as ``Model.apply_gradients``)

The workers see the new parameters at the next step without any copy. They run the user's
own layer and loss objects (``Model.portable``), never copies re-created from a config.
Starting, watching and respawning the processes is :mod:`dpnn.workers.pool`'s business.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import cloudpickle
import numpy as np

from ..errors import WorkerError
from ..node import Batch, Finish, NodeResult
from ..placement import check_deterministic_workers, plan_placement, resolve_micro_shards, resolve_workers
from ..recipe import Sums, combine_shards, evaluation_parts, owned_slots, shard_bounds
from ..signals import sigterm_as_interrupt
from .arena import SharedArena, SharedMemoryError
from .balance import ShardBalance
from .batches import BatchLoader
from .messages import Compute, Evaluate, Update, WorkerSpec, augment_blob, portable_blob, step_times
from .pool import WorkerPool
from .sharded_update import ShardedUpdate, global_norm, norm_blocks
from .startup import default_start_method
from .syncbn import exchange_width

# With 2 or more workers the workers sum the gradient slots and step the optimizer, each on
# its chunk, inside the step message (sharded_update.py): no serial phase, no extra round
# trip. One worker gains nothing from it (the sum is a copy and nobody shares the update),
# so there the coordinator steps, as one process does. `benchmarks.ablation` compares both.
SHARD_FROM = 2

log = logging.getLogger("dpnn.workers")
WORKER_TIMEOUT_S = 300.0    # default: a worker silent this long in a step is stopped or stuck


class PoolNode:
    """``workers`` processes computing the shards of ``model``'s steps in shared memory.

    Options (README, "Data-parallel training"): ``threads_per_worker``, ``deterministic`` (a slot
    per micro-shard: ``micro_shards``, None: from ``batch_size``), ``sync_batchnorm``, ``start_method``,
    ``max_restarts``, ``pin``, ``shard_optimizer`` (True/False/'auto': from SHARD_FROM workers),
    ``oversubscribe``, ``ranks`` (MPI ranks on this machine), ``worker_timeout``, ``balance``
    (balance.py). While the pool runs, the model's parameters and BatchNorm statistics live in
    shared memory; ``close`` copies them back into private arrays.
    """

    kind = "shared-memory"

    def __init__(self, model, workers: int | str = "auto", threads_per_worker: int | None = None,
                 deterministic: bool = False, sync_batchnorm: bool = False,
                 start_method: str | None = None, max_restarts: int = 3, pin: bool = True,
                 shard_optimizer: bool | str = "auto", oversubscribe: bool = False,
                 ranks: int = 1, worker_timeout: float | None = WORKER_TIMEOUT_S,
                 augment=None, balance: bool = False, micro_shards: int | None = None,
                 batch_size: int | None = None) -> None:
        n = resolve_workers(workers, ranks, oversubscribe)
        self.micro_shards = resolve_micro_shards(micro_shards, batch_size) if deterministic else None
        if deterministic:
            if workers == "auto":                  # one per core, but never more than micro-shards
                n = min(n, self.micro_shards)
            check_deterministic_workers(n, self.micro_shards, f"workers={n}")
        if deterministic and sync_batchnorm:
            raise ValueError("sync_batchnorm=True cannot be combined with deterministic=True "
                             "(deterministic shards are computed one after another)")
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        if shard_optimizer not in (True, False, "auto"):
            raise ValueError(f"shard_optimizer must be True, False or 'auto', got {shard_optimizer!r}")
        if worker_timeout is not None and not worker_timeout > 0:
            raise ValueError(f"worker_timeout must be a number of seconds > 0 or None, got {worker_timeout!r}")
        if balance not in (True, False):
            raise ValueError(f"balance must be True or False, got {balance!r}")
        self.model, self.workers = model, n
        self.deterministic, self.sync_batchnorm = bool(deterministic), bool(sync_batchnorm)
        self.placement = plan_placement(n, threads_per_worker, deterministic, pin, ranks)
        self.threads_per_worker = self.placement.threads_per_worker
        # a core of its own: the coordinator stays awake for the replies it expects (pool.py)
        self._awake = ranks == 1 and n * self.threads_per_worker < self.placement.cores
        self._expect: float | None = None           # when the first reply is due: the last step's quickest worker
        self.start_method = start_method or default_start_method()
        self.max_restarts, self.worker_timeout = max_restarts, worker_timeout
        self.shard_optimizer = n >= SHARD_FROM if shard_optimizer == "auto" else shard_optimizer
        self.slots = self.micro_shards if deterministic else n
        self.balance, self.augment = balance, augment
        self._balance: ShardBalance | None = None   # set at start when the cut may follow speed
        self.startup_time: float | None = None      # seconds from start() to every worker ready
        self.restarts = [0] * n                     # deaths seen per worker
        self.arena: SharedArena | None = None
        self.batches: BatchLoader | None = None
        self.pool: WorkerPool | None = None
        self._sets: ShardedUpdate | None = None     # None: the optimizer always runs here
        self._unplaced: tuple | None = None         # the training set, when shared memory had no room
        self._layout_changed = False
        self._attempt = 0
        self._in_flight = self.closed = False
        self._restore_sigterm = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, x: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
        """Allocate shared memory and start the workers (``x``/``y``: a first batch, for sizes)."""
        if self.pool is not None:
            return
        if self.closed:
            raise RuntimeError("this engine is closed; create a new one")
        m = self.model
        m.require_compiled()
        if m.owner is not None and m.owner is not self and not m.owner.closed:
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
            keys = m.optimizer.sharded_slots() if self.shard_optimizer else None
            self._sets = ShardedUpdate(m, a, keys) if keys is not None else None
            if self.balance and not self.deterministic and self.workers > 1 and \
                    (self.sync_batchnorm or m.state.size == 0):   # per-shard statistics stay equal
                self._balance = ShardBalance(self.workers)
            params = self._sets.current_params() if self._sets else a["params"][0]
            m.bind(params, a["grads"][0] if self._one_slot else a["grads_sum"], a["state"][0], copy=True)
            spec = self._spec()
            m.owner = self
            self.pool = WorkerPool(spec, self.start_method, arrivals=lambda: self.arena["meet"])
            self._restore_sigterm = sigterm_as_interrupt()
            self.pool.start()
        except BaseException:
            self.close()
            raise
        self.startup_time = time.perf_counter() - t0

    def _regions(self, x, y) -> dict:
        m, S, P = self.model, self.slots, self.model.params.size
        cap = len(x) if x is not None else 1
        y_tail, y_dtype = (y.shape[1:], y.dtype.str) if y is not None else ((), "<i8")
        regions = {"params": ((2, P), "float32"),               # two sets: see sharded_update.py
                   "grads": ((S, P), "float32"),                # one slot per worker/micro-shard
                   "grads_sum": ((P,), "float32"),              # the reduced gradient
                   "state": ((S + 1, m.state.size), "float32"),  # row 0: the model's state
                   "x": ((cap,) + tuple(m.input_shape[1:]), "float32"),
                   "y": ((cap,) + tuple(y_tail), y_dtype),
                   "keys": ((cap,), "uint64")}
        keys = m.optimizer.sharded_slots() if self.shard_optimizer else None
        for k in keys or ():
            regions[f"opt_{k}"] = ((2, P), "float32")          # optimizer slots, two sets
        if keys is not None:
            regions["norm_parts"] = ((norm_blocks(P),), "float64")   # block sums of squares
        width = exchange_width(m.layers) if self.sync_batchnorm else 0
        if width:
            regions["exchange"] = ((2, self.workers, width), "float64")
        if width or keys is not None:
            regions["meet"] = ((self.workers,), "int64")           # the workers' barrier (barrier.py)
        return regions

    def _spec(self) -> WorkerSpec:
        m = self.model
        return WorkerSpec(
            workers=self.workers, model_blob=portable_blob(m), augment_blob=augment_blob(self.augment),
            optimizer_blob=cloudpickle.dumps(m.optimizer.twin()) if self._sets else None,
            layout=self.arena.layout(), prefix=self.arena.prefix, slots=self.slots,
            deterministic=self.deterministic, sync_batchnorm=self.sync_batchnorm,
            threads=self.threads_per_worker, cpus=self.placement.cpus, coordinator_pid=os.getpid())

    def close(self) -> None:
        """Stop the workers, copy parameters/state back to private memory, unlink shared memory."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.pool is not None:
                self.pool.stop(graceful=not self._in_flight)
        finally:
            if self.arena is not None:
                m = self.model
                m.bind(m.params.copy(), m.grads.copy(), m.state.copy(), copy=False)
                for slot in m.optimizer.slots if m.optimizer is not None else []:
                    slot.update({k: np.array(v) for k, v in slot.items()})   # Adam's m, v may be shared
                self._sets = None
                if m.owner is self:
                    m.owner = None
                self.arena.unlink()
            if self._restore_sigterm is not None:
                self._restore_sigterm()
                self._restore_sigterm = None

    @property
    def _one_slot(self) -> bool:
        """One slot, summed by nobody: the coordinator reads the worker's gradient in place."""
        return self.slots == 1 and self._sets is None

    @property
    def worker_pids(self) -> list[int]:
        return list(self.pool.pids) if self.pool is not None else []

    # -- the node contract ----------------------------------------------------------------
    def place_data(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Put the training set in shared memory once; steps then send only row indices."""
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

    def run(self, batch: Batch, bounds: list[tuple[int, int]], denominator: int, keys: np.ndarray,
            finish: Finish) -> NodeResult:
        """The workers compute the shards ``bounds`` of ``batch`` (one slot each; a single shard
        of a non-deterministic step is cut among the workers), then ``finish``."""
        t0 = time.perf_counter()
        if self.closed:
            raise RuntimeError("this engine is closed; create a new one")
        lo, hi = bounds[0][0], bounds[-1][1]
        if batch.rows is not None and self._unplaced is not None:
            batch = Batch(*self._unplaced, batch.rows)
        rows = batch.rows is not None and self._unplaced is None
        if self.pool is None:
            self.start(*batch.take(lo, lo + 1))
        if rows and self.batches.placed is None:
            raise RuntimeError("rows of the training set need the data placed first: place_data(X, Y)")
        if rows:
            self._layout_changed |= self.batches.load_rows(batch.rows[lo:hi], keys[lo:hi])
        else:
            self._layout_changed |= self.batches.load_arrays(*batch.take(lo, hi), keys[lo:hi])
        local, cuts = self._cut([(a - lo, b - lo) for a, b in bounds])
        fused = finish is Finish.UPDATE and self._sets is not None and self._sets.ready()
        if fused:
            self._sets.adopt()
            how = Finish.UPDATE
        else:              # the workers add their chunks of the slots when they can meet
            how = Finish.SUM if finish is not Finish.SLOTS and self.pool.meets else Finish.SLOTS
        done, t_sent = self._exchange(Compute(
            0, tuple(local), self._owners(len(local)), denominator, self._new_layout(), self._cur(),
            rows, how, self._sets.args() if fused else None))
        t2 = time.perf_counter()
        replies = [done[k] for k in range(self.workers)]
        self._expect = min(r.span[1] - r.span[0] for r in replies)
        shards = sorted(s for r in replies for s in r.shards)         # slot order
        a, m = self.arena, self.model
        if finish is not Finish.SLOTS:
            combine_shards(shards, a["grads"][:len(local)], a["state"][1:1 + len(local)],
                           m.grads if how is Finish.SLOTS and not self._one_slot else None, m.state,
                           self.sync_batchnorm)
        t3 = time.perf_counter()
        norm, optimizer = None, 0.0            # the coordinator's optimizer time
        if fused:
            self._sets.flip()
            norm = global_norm(a["norm_parts"])
        elif finish is Finish.UPDATE:
            norm = m.apply_gradients()
            optimizer = time.perf_counter() - t3
        if cuts is not None:
            self._balance.observe(cuts, [r.compute for r in replies])
        times = step_times(replies, how is not Finish.SLOTS)
        times.update(wait=max(0.0, t2 - t_sent - times.pop("handler")), reduce=t3 - t2,
                     optimizer=optimizer, scatter=t_sent - t0)
        return NodeResult(shards, norm, times)

    def _cut(self, bounds: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple | None]:
        """One shard of a non-deterministic step: a piece per worker (sized to their speed when
        balancing); deterministic micro-shards stay as they are, a slot each."""
        if self.deterministic or len(bounds) > 1:
            return bounds, None
        a, b = bounds[0]
        if self._balance is not None:
            cuts = self._balance.cuts(b - a)
            return [(a + c, a + d) for c, d in zip(cuts, cuts[1:])], cuts
        return [(a + c, a + d) for c, d in shard_bounds(b - a, self.workers)], None

    def _owners(self, count: int) -> tuple[tuple[int, int], ...]:
        """Worker k fills slots [start, stop): its own one, or a run of micro-shards."""
        if not self.deterministic:
            return tuple((k, k + 1) for k in range(self.workers))
        runs = (owned_slots(count, self.workers, k) for k in range(self.workers))
        return tuple((r.start, r.stop) for r in runs)

    def slot_arrays(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        return self.arena["grads"][:count], self.arena["state"][1:1 + count]

    def apply_update(self) -> float:
        """Weight decay, clipping and the optimizer step on ``model.grads`` as it stands (e.g.
        all-reduced across ranks): each worker on its chunk where it can, else here."""
        if self.pool is None or self._sets is None or not self._sets.ready():
            return self.model.apply_gradients()
        self._sets.adopt()
        self._exchange(Update(0, self._sets.cur, self._sets.args()))
        self._sets.flip()
        return global_norm(self.arena["norm_parts"])

    def evaluation_parts(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> list[Sums]:
        """Sums of each batch of (x, y), each worker scoring a run of the batches, in batch order."""
        done = self._evaluate(x, y, batch_size)
        if done is None:
            return evaluation_parts(self.model, self.model.check_input(x), np.asarray(y), batch_size)
        return [part for k in sorted(done) for part in done[k].sums]    # worker order = batch order

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Outputs (N, ...) of the current parameters, each worker predicting a slice."""
        done = self._evaluate(x, None, batch_size)
        return self.model.predict(x, batch_size) if done is None else self.arena["eval_out"][:len(x)].copy()

    def _evaluate(self, x, y, batch_size: int) -> dict | None:
        """The workers score (x, y), or with ``y=None`` predict x into eval_out; None when no pool
        is open or /dev/shm has no room (the caller then works here). The same arrays again
        are not copied."""
        m = self.model
        if self.pool is None or self.closed:
            return None
        x = m.check_input(x)
        try:
            placed = self.batches.place_eval(x, np.asarray(y)) if y is not None else \
                self.batches.place_eval(x, None, m.output_shape[1:])
            self._layout_changed |= placed
        except SharedMemoryError:
            self._layout_changed = True
            return None
        msg = Evaluate(0, len(x), self._new_layout(), self._cur(), batch_size, y is None)
        return self._exchange(msg)[0]

    # -- talking to the workers -----------------------------------------------------------
    def _cur(self) -> int:
        return self._sets.cur if self._sets is not None else 0

    def _new_layout(self):
        """The arena layout if a region changed since the workers last saw it, else None."""
        changed, self._layout_changed = self._layout_changed, False
        return self.arena.layout() if changed else None

    def _exchange(self, msg) -> tuple[dict, float]:
        """Every worker answers ``msg``; a dead worker is respawned and the message sent again."""
        while True:
            self._respawn_dead(set())
            self._attempt += 1
            self._in_flight = True
            self.pool.send_all(dataclasses.replace(msg, attempt=self._attempt))
            t_sent = time.perf_counter()
            expect = self._expect if self._awake and isinstance(msg, Compute) else None
            done, dead, errors = self.pool.gather(self._attempt, self.worker_timeout, expect)
            # with the workers meeting inside a step, peers of a failed worker may be mid-step
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
