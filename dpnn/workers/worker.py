"""The worker process: bind the user's model to shared buffers, then compute shard gradients.

``worker_main`` is the process entry point (module level, so ``spawn``/``forkserver`` can
import it; the forkserver preloads this module, so a fresh worker starts in milliseconds).
Per step the worker reads its rows of the shared batch, runs forward + backward with the
layers' parameters as views of the shared parameter buffer, and leaves d(sum loss)/dθ / N
in its gradient slot; with the sharded update it then sums and updates its chunk of the
parameters into the *other* parameter set (sharded_update.py). The set it computed with is never
written during a step, so a step can always be redone after a worker dies.
"""
from __future__ import annotations

import ctypes
import gc
import os
import signal
import threading
import time
import traceback

import cloudpickle
import numpy as np

from ..floatmode import set_flush_denormals
from ..layers.normalization import batchnorm_layers
from ..node import Finish
from ..placement import limit_process_threads
from ..recipe import eval_bounds, evaluation_parts, run_shard
from .arena import SharedArena, unlink_prefix
from .barrier import SharedBarrier
from .batches import RowGatherer
from .liveness import process_gone, watch
from .messages import Aborted, Compute, Computed, Evaluate, Evaluated, Failed, Ready, Stop, Update, Updated, WorkerSpec
from .sharded_update import chunk_bounds, sum_chunk, update_chunk
from .syncbn import ShardExchange

COORDINATOR_POLL_S = 0.5    # how often an idle worker checks that its coordinator is alive
NEXT_STEP_SPIN_S = 5e-3     # after a reply, how long a worker waits for the next step awake
EXIT_WAIT_S = 2.0           # after EOF on its pipe, how long a worker waits to see the coordinator gone


class ShardRunner:
    """One worker's model, bound to the shared parameter buffer, and its step computation."""

    def __init__(self, worker_id: int, spec: WorkerSpec) -> None:
        self.worker_id, self.spec = worker_id, spec
        self.arena = SharedArena.attach(spec.layout, spec.prefix)
        model = cloudpickle.loads(spec.model_blob)        # the user's layers and loss, no arrays
        assert model.param_layout.size == self.arena["params"].shape[1], "model does not match the arena"
        self.model, self.exchange = model, None
        coordinator = watch(spec.coordinator_pid)
        barrier = SharedBarrier(self.arena["meet"], worker_id, lambda: not process_gone(coordinator)) \
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
        self.handlers = {Compute: self.compute, Update: self.update, Evaluate: self.evaluate}
        self.cur = self.slot = 0
        self._bind(worker_id if not spec.deterministic else 0)

    def _bind(self, slot: int) -> None:
        """Point the layers at parameter set ``cur`` and at gradient/state slot ``slot``."""
        a, self.slot = self.arena, slot
        self.model.bind(a["params"][self.cur], a["grads"][slot], a["state"][1 + slot], copy=False)

    def compute(self, msg: Compute) -> Computed:
        """Fill this worker's gradient slots, then finish as asked: add this worker's chunk of
        the slots (SUM), and step the optimizer on it (UPDATE)."""
        start = time.perf_counter()           # the clock every process shares (CLOCK_MONOTONIC)
        if msg.layout is not None:
            self.arena.refresh(msg.layout)
        t0 = time.perf_counter()
        if msg.cur != self.cur:
            self.cur = msg.cur
            self._bind(self.slot)
        if self.exchange is not None:
            self.exchange.start_step()
        shards = []
        for slot in range(*msg.slots[self.worker_id]):
            a, b = msg.bounds[slot]
            if b == a and self.exchange is not None:
                self.exchange.take_part_empty(self.bn_layers)
            shards.append(self._shard(slot, a, b, msg))
        compute = time.perf_counter() - t0
        times = None
        if msg.finish is not Finish.SLOTS:
            count = len(msg.bounds)
            times = self.sum_slots(count) if msg.finish is Finish.SUM else self.step_chunk(msg, count)
        return Computed(msg.attempt, shards, compute, times, (start, time.perf_counter()))

    def _shard(self, slot: int, a: int, b: int, msg: Compute):
        if slot != self.slot:
            self._bind(slot)
        arena = self.arena
        x, y = self.rows.gather(arena, a, b) if msg.rows else (arena["x"][a:b], arena["y"][a:b])
        return run_shard(self.model, slot, x, y, msg.denominator, arena["keys"][a:b], arena["state"][0],
                         self.augment)

    def step_chunk(self, msg: Compute, count: int) -> tuple[float, float]:
        """Once every slot is written: sum and update this worker's chunk of the flat vector
        (sharded_update.py); (seconds waiting for the others, seconds updating)."""
        t0 = time.perf_counter()
        self.wait()
        t1 = time.perf_counter()
        update_chunk(self.arena, *self.chunk(), msg.cur, msg.update, self.optimizer, self.wait, count)
        return t1 - t0, time.perf_counter() - t1

    def sum_slots(self, count: int) -> tuple[float, float]:
        """Once every slot is written: sum this worker's chunk of them into grads_sum."""
        t0 = time.perf_counter()
        self.wait()
        t1 = time.perf_counter()
        sum_chunk(self.arena, *self.chunk(), count)
        return t1 - t0, time.perf_counter() - t1

    def update(self, msg: Update) -> Updated:
        """Update this worker's chunk from the gradient already in grads_sum (all-reduced)."""
        t0 = time.perf_counter()
        update_chunk(self.arena, *self.chunk(), msg.cur, msg.args, self.optimizer, self.wait, None)
        return Updated(msg.attempt, time.perf_counter() - t0)

    def chunk(self) -> tuple[int, int]:
        return chunk_bounds(self.arena["grads_sum"].size, self.spec.workers)[self.worker_id]

    def wait(self) -> None:
        """Meet the other workers (BrokenBarrierError if the coordinator aborts the step)."""
        if self.spec.workers > 1:
            self.barrier.wait(self.spec.barrier_timeout)

    def evaluate(self, msg: Evaluate) -> Evaluated:
        """Sums of each batch of this worker's run of eval_x/eval_y (running BN statistics; cut at
        whole batches: eval_bounds); with ``outputs``, its predictions into eval_out instead."""
        if msg.layout is not None:
            self.arena.refresh(msg.layout)
        t0 = time.perf_counter()
        arena, m = self.arena, self.model
        a, b = eval_bounds(msg.n, msg.batch_size, self.spec.workers)[self.worker_id]
        self.cur = msg.cur
        m.bind(arena["params"][msg.cur], m.grads, arena["state"][0], copy=False)
        try:
            if msg.outputs:
                np.copyto(arena["eval_out"][a:b], m.predict(arena["eval_x"][a:b], msg.batch_size))
                sums = []
            else:
                sums = evaluation_parts(m, arena["eval_x"][a:b], arena["eval_y"][a:b], msg.batch_size)
        finally:
            self._bind(self.slot)
        return Evaluated(msg.attempt, sums, time.perf_counter() - t0)


def keep_freed_memory() -> None:
    """Keep freed memory in this process for the next step (glibc; elsewhere nothing changes).

    glibc serves large blocks (im2col's columns, a layer's outputs) with an mmap of their own,
    unmapped at free (always above 32 MiB), and trims the heap's top, so a step faults its
    temporaries in again: 79 minor page faults per seed-cnn step at batch 256 in a worker, 30
    with this. A worker repeats the same step, so it keeps what it freed (its peak, no more).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):     # not glibc
        return
    mallopt(-4, 0)            # M_MMAP_MAX: no block is served by its own mmap
    mallopt(-1, 1 << 30)      # M_TRIM_THRESHOLD: give the heap's free top back above 1 GiB only


def pin(cpus) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:        # CPU vanished from our mask (hotplug, cgroup change): run unpinned
            pass


def coordinator_lost(coordinator) -> bool:
    """After EOF on the pipe: True if the coordinator died (it may take a moment to finish
    exiting), False if it is alive and simply let this worker go."""
    deadline = time.monotonic() + EXIT_WAIT_S
    while not process_gone(coordinator):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _send(conn, msg) -> bool:
    try:
        conn.send(msg)
        return True
    except OSError:         # the coordinator closed its end (or died)
        return False


def message_soon(conn) -> bool:
    """Whether a message comes within NEXT_STEP_SPIN_S, checked without sleeping (yielding the
    CPU to anyone who wants it): a vCPU that goes idle takes 0.2-0.3 ms to wake on a VM, twice
    a step, and the next step usually follows the coordinator's optimizer step at once."""
    end = time.perf_counter() + NEXT_STEP_SPIN_S
    while time.perf_counter() < end:
        if conn.poll(0):
            return True
        os.sched_yield()
    return False


def serve(conn, runner: ShardRunner, spec: WorkerSpec) -> bool:
    """Answer step messages until told to stop (False) or the coordinator vanishes (True)."""
    coordinator, replied = watch(spec.coordinator_pid), False
    while True:
        try:
            if not (replied and message_soon(conn)) and not conn.poll(COORDINATOR_POLL_S):
                replied = False
                if process_gone(coordinator):
                    return True
                continue
            msg = conn.recv()
        except (EOFError, OSError):
            return coordinator_lost(coordinator)
        if isinstance(msg, Stop):
            return False
        try:
            reply = runner.handlers[type(msg)](msg)
        except threading.BrokenBarrierError:
            reply = Aborted(msg.attempt)
        except Exception:
            reply = Failed(msg.attempt, traceback.format_exc())
        if not _send(conn, reply):
            return coordinator_lost(coordinator)
        replied = True


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
        keep_freed_memory()
        pin(spec.cpus[worker_id])
        runner = ShardRunner(worker_id, spec)
    except Exception:
        _send(conn, Failed(0, traceback.format_exc()))
        return
    # A diverging run overflows to inf/NaN here first; the coordinator checks every step's loss
    # and stops with one clear line (TrainingDiverged), so NumPy's own warnings would only add noise.
    np.seterr(over="ignore", invalid="ignore", divide="ignore")
    if _send(conn, Ready(os.getpid())):
        orphaned = serve(conn, runner, spec)
    else:
        orphaned = coordinator_lost(watch(spec.coordinator_pid))
    arena = runner.arena
    if orphaned:      # the coordinator was killed and cannot unlink: do it for it
        unlink_prefix(spec.prefix, arena.layout())
    del runner        # the model's views of shared memory go with it ...
    gc.collect()
    arena.close()     # ... so the mappings can be closed
