"""The worker process: bind the user's model to shared buffers, then compute shard gradients.

``worker_main`` is the process entry point (module level, so ``spawn``/``forkserver`` can
import it; the forkserver preloads this module, so a fresh worker starts in milliseconds).
Per step the worker reads its rows of the shared batch, runs forward + backward with the
layers' parameters as views of the shared parameter buffer, and leaves d(sum loss)/dθ / N
in its gradient slot; with the sharded update it then sums and updates its chunk of the
parameters into the *other* parameter set (update.py). The set it computed with is never
written during a step, so a step can always be redone after a worker dies.
"""
from __future__ import annotations

import gc
import os
import signal
import threading
import time
import traceback

import cloudpickle
import numpy as np
import psutil

from ..engine import evaluation_sums
from ..floatmode import set_flush_denormals
from ..recipe import run_shard, shard_bounds
from ..threads import limit_process_threads
from . import protocol as P
from .arena import SharedArena, unlink_prefix
from .batches import RowGatherer
from .meet import SharedBarrier
from .protocol import WorkerSpec, shard_slots
from .syncbn import ShardExchange, batchnorm_layers
from .update import SUM_ONLY, chunk_bounds, sum_chunk, update_chunk

COORDINATOR_POLL_S = 0.5    # how often an idle worker checks that its coordinator is alive
EXIT_WAIT_S = 2.0           # after EOF on its pipe, how long a worker waits to see the coordinator gone


class ShardRunner:
    """One worker's model, bound to the shared parameter buffer, and its step computation."""

    def __init__(self, worker_id: int, spec: WorkerSpec) -> None:
        self.worker_id, self.spec = worker_id, spec
        self.arena = SharedArena.attach(spec.layout, spec.prefix)
        model = cloudpickle.loads(spec.model_blob)        # the user's layers and loss, no arrays
        assert model.param_layout.size == self.arena["params"].shape[1], "model does not match the arena"
        self.model, self.slots = model, shard_slots(spec, worker_id)
        self.exchange = None
        coordinator = watch(spec.coordinator_pid)
        barrier = SharedBarrier(self.arena["meet"], worker_id, lambda: not coordinator_gone(coordinator)) \
            if "meet" in spec.layout else None
        self.bn_layers = batchnorm_layers(model.layers)
        if spec.sync_batchnorm and self.bn_layers:
            self.exchange = ShardExchange(self.arena["exchange"], worker_id, barrier, spec.barrier_timeout)
            for layer in self.bn_layers:
                layer.sync = self.exchange
        self.optimizer = cloudpickle.loads(spec.optimizer_blob) if spec.optimizer_blob else None
        self.augment = cloudpickle.loads(spec.augment_blob) if spec.augment_blob else None
        self.rows = RowGatherer()
        self.barrier = barrier                  # meets the other workers (sync BN, sharded update)
        self.handlers = {P.STEP: self.step, P.UPDATE: self.apply, P.EVAL: self.evaluate}
        self.cur = 0
        self._bind(self.slots[0])

    def _bind(self, slot: int) -> None:
        """Point the layers at parameter set ``cur`` and at gradient/state slot ``slot``."""
        a = self.arena
        self.model.bind(a["params"][self.cur], a["grads"][slot], a["state"][1 + slot], copy=False)

    def _shard(self, slot: int, a: int, b: int, denominator: int, rows: bool):
        if self.spec.deterministic:
            self._bind(slot)
        arena = self.arena
        x, y = self.rows.gather(arena, a, b) if rows else (arena["x"][a:b], arena["y"][a:b])
        return run_shard(self.model, slot, x, y, denominator, arena["keys"][a:b], arena["state"][0],
                         self.augment)

    def step(self, attempt: int, n: int, denominator: int, layout, cur: int, rows: bool,
             update: tuple | None, cuts: tuple | None) -> tuple:
        """Fill this worker's gradient slots for a global batch of ``n`` samples (worker k's
        shard: [cuts[k], cuts[k+1]), or an equal cut); with ``update`` (see update.py), then
        sum and update this worker's chunk of the parameters."""
        start = time.perf_counter()           # the clock every process shares (CLOCK_MONOTONIC)
        if layout is not None:
            self.arena.refresh(layout)
        t0 = time.perf_counter()
        if cur != self.cur:
            self.cur = cur
            self._bind(self.slots[0])
        bounds = shard_bounds(n, self.spec.slots) if cuts is None else list(zip(cuts, cuts[1:]))
        if self.exchange is not None:
            self.exchange.start_step()
        shards = []
        for slot in self.slots:
            a, b = bounds[slot]
            if b == a and self.exchange is not None:
                self.exchange.take_part_empty(self.bn_layers)
            shards.append(tuple(self._shard(slot, a, b, denominator, rows)))
        compute = time.perf_counter() - t0
        if update == SUM_ONLY:
            times = self.sum_slots()
        else:
            times = self.update(cur, *update) if update is not None else None
        return (P.DONE, attempt, shards, compute, times, (start, time.perf_counter()))

    def update(self, cur: int, keys: tuple, weight_decay: float, clip_norm: float | None,
               scalars: dict) -> tuple[float, float]:
        """Once every slot is written: sum and update this worker's chunk of the flat vector
        (dpnn/workers/update.py); (seconds waiting for the others, seconds updating)."""
        t0 = time.perf_counter()
        self.wait()
        t1 = time.perf_counter()
        vars(self.optimizer).update(scalars)
        update_chunk(self.arena, *self.chunk(), cur, keys, weight_decay, clip_norm, self.optimizer, self.wait)
        return t1 - t0, time.perf_counter() - t1

    def sum_slots(self) -> tuple[float, float]:
        """Once every slot is written: sum this worker's chunk of them into grads_sum."""
        t0 = time.perf_counter()
        self.wait()
        t1 = time.perf_counter()
        sum_chunk(self.arena, *self.chunk())
        return t1 - t0, time.perf_counter() - t1

    def apply(self, attempt: int, cur: int, keys: tuple, weight_decay: float, clip_norm: float | None,
              scalars: dict) -> tuple:
        """Update this worker's chunk from the gradient already in grads_sum (all-reduced)."""
        t0 = time.perf_counter()
        vars(self.optimizer).update(scalars)
        update_chunk(self.arena, *self.chunk(), cur, keys, weight_decay, clip_norm, self.optimizer, self.wait,
                     sum_slots=False)
        return (P.DONE, attempt, [], time.perf_counter() - t0)

    def chunk(self) -> tuple[int, int]:
        return chunk_bounds(self.arena["grads_sum"].size, self.spec.workers)[self.worker_id]

    def wait(self) -> None:
        """Meet the other workers (BrokenBarrierError if the coordinator aborts the step)."""
        if self.spec.workers > 1:
            self.barrier.wait(self.spec.barrier_timeout)

    def evaluate(self, attempt: int, n: int, layout, cur: int, batch_size: int, outputs: bool) -> tuple:
        """[loss sum, hits, count] of this worker's slice of eval_x/eval_y (running BN statistics);
        ``outputs``: its predictions into eval_out instead."""
        if layout is not None:
            self.arena.refresh(layout)
        t0 = time.perf_counter()
        arena, m = self.arena, self.model
        a, b = shard_bounds(n, self.spec.workers)[self.worker_id]
        self.cur = cur
        m.bind(arena["params"][cur], m.grads, arena["state"][0], copy=False)
        try:
            if outputs:
                np.copyto(arena["eval_out"][a:b], m.predict(arena["eval_x"][a:b], batch_size))
                sums = np.zeros(3)
            else:
                sums = evaluation_sums(m, arena["eval_x"][a:b], arena["eval_y"][a:b], batch_size)
        finally:
            self._bind(self.slots[0])
        return (P.DONE, attempt, [float(sums[0]), int(sums[1]), int(sums[2])], time.perf_counter() - t0)


def pin(cpus) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:        # CPU vanished from our mask (hotplug, cgroup change): run unpinned
            pass


def watch(pid: int) -> psutil.Process | None:
    """A handle on process ``pid`` that notices if the pid is reused; None if it is gone."""
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def coordinator_gone(coordinator: psutil.Process | None) -> bool:
    """True once the coordinator died (gone, pid reused, or a zombie nobody has reaped yet).

    The coordinator itself is watched, not this process's parent: with ``forkserver`` the
    parent is the fork server, which may die (and be replaced) while the coordinator trains on.
    """
    try:
        return coordinator is None or not coordinator.is_running() or \
            coordinator.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return True


def coordinator_lost(coordinator: psutil.Process | None) -> bool:
    """After EOF on the pipe: True if the coordinator died (it may take a moment to finish
    exiting), False if it is alive and simply let this worker go."""
    deadline = time.monotonic() + EXIT_WAIT_S
    while not coordinator_gone(coordinator):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _send(conn, msg: tuple) -> bool:
    try:
        conn.send(msg)
        return True
    except OSError:         # the coordinator closed its end (or died)
        return False


def serve(conn, runner: ShardRunner, spec: WorkerSpec) -> bool:
    """Answer step messages until told to stop (False) or the coordinator vanishes (True)."""
    coordinator = watch(spec.coordinator_pid)
    while True:
        try:
            if not conn.poll(COORDINATOR_POLL_S):
                if coordinator_gone(coordinator):
                    return True
                continue
            msg = conn.recv()
        except (EOFError, OSError):
            return coordinator_lost(coordinator)
        if msg[0] == P.STOP:
            return False
        attempt = msg[1]
        try:
            reply = runner.handlers[msg[0]](*msg[1:])
        except threading.BrokenBarrierError:
            reply = (P.ABORTED, attempt)
        except Exception:
            reply = (P.ERROR, attempt, traceback.format_exc())
        if not _send(conn, reply):
            return coordinator_lost(coordinator)


def worker_main(worker_id: int, spec: WorkerSpec, conn) -> None:
    """Process entry point of worker ``worker_id``.

    Leaves silently whatever happens to the coordinator meanwhile: an error here goes to the
    coordinator over the pipe, never to stderr (an interrupted start-up prints nothing).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the coordinator's to handle
    if hasattr(signal, "pthread_sigmask"):            # the pool blocks SIGTERM while starting us
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        set_flush_denormals(spec.flush_denormals)     # the fork server's mode need not be the coordinator's
        limit_process_threads(spec.threads)
        pin(spec.cpus[worker_id])
        runner = ShardRunner(worker_id, spec)
    except Exception:
        _send(conn, (P.ERROR, 0, traceback.format_exc()))
        return
    if _send(conn, (P.READY, os.getpid())):
        orphaned = serve(conn, runner, spec)
    else:
        orphaned = coordinator_lost(watch(spec.coordinator_pid))
    arena = runner.arena
    if orphaned:      # the coordinator was killed and cannot unlink: do it for it
        unlink_prefix(spec.prefix, arena.layout())
    del runner        # the model's views of shared memory go with it ...
    gc.collect()
    arena.close()     # ... so the mappings can be closed
