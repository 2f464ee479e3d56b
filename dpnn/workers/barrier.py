"""Where the workers of one pool wait for each other inside a step: a barrier in shared memory.

Synchronised BatchNorm exchanges batch sums, and the sharded update (update.py) may sum
the gradient slots only once every worker has written its own; both wait here. The barrier
is one int64 per worker in the arena (region ``meet``): worker k arriving for the g-th time
writes g to its own entry and waits until every entry is at least g. Nobody else writes
that entry, so no lock or atomic add is needed, and nothing outlives the arena (a
``multiprocessing.Barrier`` is made of named semaphores, which a killed coordinator leaves
to the resource tracker to clean up, with a warning).

A worker can be at most one arrival ahead of another (it cannot pass the next barrier before
the other arrives there), so ">= g" is the right test. The writes a worker makes before it
arrives (its gradient slot) must be visible to the others once its entry is, and their
reads must not run ahead of the entry: x86-64 keeps stores and loads in order (and the
entry is written by a separate NumPy call, so the compiler cannot move it); on other CPUs
(ARM) :func:`fence` puts a full memory barrier (C11 ``atomic_thread_fence``) before the
entry is written and after the wait ends.

Waiting spins for a few microseconds (the usual case: the last worker is about to arrive),
then yields the CPU for up to 50 ms, then sleeps in short naps, so an oversubscribed machine
is not burnt by waiters. Workers all start together (the pool replaces every worker when one dies,
see pool.py), each from the largest entry left by the previous ones.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
import time

import numpy as np

SPIN_S = 50e-6        # busy-check this long first
YIELD_S = 50e-3       # then give up the CPU between checks until this long
NAP_S = 100e-6        # then sleep this long between checks
ALIVE_S = 0.5         # and every this long ask whether the run still exists


def _fence():
    """A full memory barrier, or None where the CPU keeps memory order itself (x86)."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return None
    for name, symbol, args in (("atomic", "atomic_thread_fence", (5,)),   # memory_order_seq_cst
                               ("System", "OSMemoryBarrier", ())):        # macOS
        path = ctypes.util.find_library(name)
        fn = getattr(ctypes.CDLL(path), symbol, None) if path else None
        if fn is not None:
            return lambda: fn(*args)
    lock = threading.Lock()                 # POSIX: mutex operations synchronise memory

    def locked():
        with lock:
            pass
    return locked


fence = _fence()


class SharedBarrier:
    """``wait(timeout)`` until every worker of the pool has called it as often as this one."""

    def __init__(self, entries: np.ndarray, worker_id: int, alive=None) -> None:
        self.entries, self.me = entries, worker_id
        self.arrivals = int(entries.max())          # where the previous workers left off
        self.alive = alive                          # () -> False once the coordinator is gone

    def wait(self, timeout: float | None = None) -> None:
        """Block until all arrived; BrokenBarrierError after ``timeout`` seconds, or as soon as
        ``alive()`` says the coordinator is gone (a peer it took down with it never comes)."""
        self.arrivals += 1
        g, entries = self.arrivals, self.entries
        if fence is not None:
            fence()                                 # what this worker wrote, before its entry
        entries[self.me] = g
        self._wait_for(g, timeout)
        if fence is not None:
            fence()                                 # the others' writes, before anything is read

    def _wait_for(self, g: int, timeout: float | None) -> None:
        entries = self.entries
        if entries.min() >= g:
            return
        t0 = time.perf_counter()
        asked = t0
        while True:
            if entries.min() >= g:
                return
            now = time.perf_counter()
            if timeout is not None and now - t0 > timeout:
                raise threading.BrokenBarrierError(f"the other workers did not arrive within {timeout} s")
            if now - t0 > YIELD_S:
                if self.alive is not None and now - asked > ALIVE_S:
                    asked = now
                    if not self.alive():
                        raise threading.BrokenBarrierError("the coordinator is gone")
                time.sleep(NAP_S)
            elif now - t0 > SPIN_S:
                os.sched_yield()
