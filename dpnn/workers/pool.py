"""The worker processes themselves: start, watch, respawn and stop them.

Waiting never blocks on one pipe: :meth:`WorkerPool.gather` waits on every worker's
connection *and* its process sentinel with ``multiprocessing.connection.wait``, so a worker
that dies (SIGKILL, out of memory) is noticed at once, not after a timeout.
"""
from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import replace
from multiprocessing import connection

from ..errors import WorkerError
from . import protocol as P
from ._env import blas_environment, start_context
from .protocol import WorkerSpec
from .worker import worker_main

START_TIMEOUT_S = 120.0     # a worker must import, rebuild the model and attach within this
STOP_GRACE_S = 2.0          # an idle worker gets this long to leave on its own


class WorkerPool:
    """``workers`` processes running :func:`dpnn.workers.worker.worker_main`."""

    def __init__(self, spec: WorkerSpec, start_method: str) -> None:
        self.spec, self.start_method = spec, start_method
        self.ctx = start_context(start_method)
        self.barrier = self.ctx.Barrier(spec.workers) if spec.sync_batchnorm else None
        self.procs: list = [None] * spec.workers
        self.conns: list = [None] * spec.workers
        self.pids: list[int] = [0] * spec.workers

    # -- start-up -------------------------------------------------------------------------
    def start(self, ids=None) -> None:
        """Start workers ``ids`` (default: all) and wait until each reports ready."""
        ids = list(range(self.spec.workers) if ids is None else ids)
        for k in ids:
            parent, child = self.ctx.Pipe(duplex=True)
            proc = self.ctx.Process(target=worker_main, args=(k, self.spec, child, self.barrier),
                                    name=f"dpnn-worker-{k}", daemon=True)
            with blas_environment(self.spec.threads, self.start_method == "spawn"):
                proc.start()
            child.close()          # so the worker's death reads as EOF here
            self.procs[k], self.conns[k] = proc, parent
        self._await_ready(ids)

    def _await_ready(self, ids: list[int]) -> None:
        pending, deadline = set(ids), time.monotonic() + START_TIMEOUT_S
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"worker(s) {sorted(pending)} did not start within {START_TIMEOUT_S:.0f} s")
            ready = set(connection.wait([self.conns[k] for k in pending] +
                                        [self.procs[k].sentinel for k in pending], min(left, 1.0)))
            for k in sorted(pending):
                msg = self._poll(k) if (self.conns[k] in ready or self.procs[k].sentinel in ready) else None
                if msg is None and self.procs[k].sentinel in ready:
                    raise WorkerError(f"worker {k} exited during start-up ({self.exit_reason(k)}). "
                                      "Workers import your main module: if your script trains at "
                                      "import time, put that code under `if __name__ == '__main__':`")
                if msg is not None and msg[0] == P.ERROR:
                    raise WorkerError(f"worker {k} failed to start:\n{msg[2]}")
                if msg is not None and msg[0] == P.READY:
                    self.pids[k] = msg[1]
                    pending.discard(k)

    def _poll(self, k: int):
        """The next message from worker k, or None (nothing there, or its pipe is closed)."""
        try:
            return self.conns[k].recv() if self.conns[k].poll(0) else None
        except (EOFError, OSError):
            return None

    def respawn(self, ids: list[int], layout) -> None:
        """Replace dead workers by fresh ones that see the current shared buffers.

        With synchronised BatchNorm every worker is replaced, with a new barrier: the
        survivors may be stuck in an exchange with the dead one.
        """
        if self.barrier is not None:
            self.stop(graceful=False)
            self.barrier = self.ctx.Barrier(self.spec.workers)
            ids = range(self.spec.workers)
        for k in ids:
            self._reap(k)
        self.spec = replace(self.spec, layout=layout)
        self.start(list(ids))

    # -- per step -------------------------------------------------------------------------
    def send_all(self, msg: tuple) -> None:
        """Send ``msg`` to every worker, the one pinned to the CPU we run on last.

        Waking that worker first would let it preempt us on our own CPU before the other
        workers have their message, while their CPUs sit idle.
        """
        cpu = current_cpu()
        order = sorted(range(len(self.conns)), key=lambda k: cpu in (self.spec.cpus[k] or ()))
        for k in order:
            if self.conns[k] is not None:
                with contextlib.suppress(OSError):     # a dead worker: its sentinel will tell
                    self.conns[k].send(msg)

    def gather(self, attempt: int) -> tuple[dict, set, dict]:
        """Replies of ``attempt``: ({worker: 'done' msg}, {dead workers}, {worker: traceback}).

        With synchronised BatchNorm the workers wait for each other inside a step, so after a
        death or an error the others may never answer: stop waiting at once (the caller then
        restarts or stops the whole pool; a barrier whose lock died with its holder cannot
        be trusted anyway).
        """
        pending = set(range(self.spec.workers))
        done, dead, errors, aborted = {}, set(), {}, set()
        while pending and not (self.barrier is not None and (dead or errors)):
            waitables = [self.conns[k] for k in pending] + [self.procs[k].sentinel for k in pending]
            ready = set(connection.wait(waitables, 1.0))
            for k in sorted(pending):
                if self.conns[k] not in ready and self.procs[k].sentinel not in ready:
                    continue
                msg = self._poll(k)
                if msg is None:           # EOF or exit: the worker is gone
                    dead.add(k)
                    pending.discard(k)
                    continue
                if msg[1] != attempt:
                    continue              # a late reply to an abandoned attempt
                pending.discard(k)
                if msg[0] == P.DONE:
                    done[k] = msg
                elif msg[0] == P.ERROR:
                    errors[k] = msg[2]
                else:
                    aborted.add(k)
        if aborted and not dead and not errors:
            errors[min(aborted)] = ("timed out waiting for the other workers at the synchronised "
                                    f"BatchNorm barrier (barrier_timeout={self.spec.barrier_timeout} s)")
        return done, dead, errors

    def dead_workers(self) -> list[int]:
        return [k for k, p in enumerate(self.procs) if p is not None and not p.is_alive()]

    def exit_reason(self, k: int) -> str:
        proc = self.procs[k]
        proc.join(0.5)
        code = proc.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    # -- shutdown -------------------------------------------------------------------------
    def stop(self, graceful: bool) -> None:
        """Ask idle workers to leave (``graceful``), then terminate and kill whatever remains."""
        live = [p for p in self.procs if p is not None]
        if graceful:
            self.send_all((P.STOP,))
            deadline = time.monotonic() + STOP_GRACE_S
            for p in live:
                p.join(max(0.0, deadline - time.monotonic()))
        for p in live:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for p in live:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
        for k in range(len(self.procs)):
            self._reap(k)

    def _reap(self, k: int) -> None:
        if self.conns[k] is not None:
            self.conns[k].close()
        proc = self.procs[k]
        if proc is not None:
            proc.join(0.1)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
            with contextlib.suppress(ValueError):
                proc.close()
        self.procs[k] = self.conns[k] = None


def _libc_getcpu():
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):
        return None


_SCHED_GETCPU = _libc_getcpu()


def current_cpu() -> int:
    """The CPU this thread runs on (-1 where the C library cannot tell)."""
    return _SCHED_GETCPU() if _SCHED_GETCPU is not None else -1
