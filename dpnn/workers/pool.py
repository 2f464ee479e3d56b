"""The worker processes themselves: start, watch, respawn and stop them.

Waiting never blocks on one pipe: :meth:`WorkerPool.gather` waits on every worker's
connection *and* its process sentinel with ``multiprocessing.connection.wait``, so a worker
that dies (SIGKILL, out of memory) is noticed at once, not after a timeout.
"""
from __future__ import annotations

import contextlib
import os
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
        self.ctx = start_context(start_method, spec.threads)
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

    def respawn(self, k: int, layout) -> None:
        """Replace dead worker k by a fresh one that sees the current shared buffers."""
        self._reap(k)
        self.spec = replace(self.spec, layout=layout)
        self.start([k])

    # -- per step -------------------------------------------------------------------------
    def send_all(self, msg: tuple) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):     # a dead worker: its sentinel will tell
                conn.send(msg)

    def gather(self, attempt: int) -> tuple[dict, set, dict]:
        """Replies of ``attempt``: ({worker: 'done' msg}, {dead workers}, {worker: traceback})."""
        pending = set(range(self.spec.workers))
        done, dead, errors, aborted = {}, set(), {}, set()
        while pending:
            waitables = [self.conns[k] for k in pending] + [self.procs[k].sentinel for k in pending]
            ready = set(connection.wait(waitables, 1.0))
            for k in sorted(pending):
                conn_ready, died = self.conns[k] in ready, self.procs[k].sentinel in ready
                if not (conn_ready or died):
                    continue
                msg = self._poll(k)
                if msg is None:
                    if died or conn_ready:       # EOF or exit: the worker is gone
                        dead.add(k)
                        pending.discard(k)
                        self.abort_barrier()
                    continue
                if msg[1] != attempt:
                    continue                      # a late reply to an abandoned attempt
                pending.discard(k)
                if msg[0] == P.DONE:
                    done[k] = msg
                elif msg[0] == P.ERROR:
                    errors[k] = msg[2]
                    self.abort_barrier()
                else:
                    aborted.add(k)
        if aborted and not dead and not errors:
            errors[min(aborted)] = ("timed out waiting for the other workers at the synchronised "
                                    f"BatchNorm barrier (barrier_timeout={self.spec.barrier_timeout} s)")
        if self.barrier is not None and (dead or errors or aborted):
            self.barrier.reset()          # every survivor has left the barrier by now
        return done, dead, errors

    def abort_barrier(self) -> None:
        if self.barrier is not None:
            self.barrier.abort()          # peers waiting in a sync-BN exchange give up the step

    def dead_workers(self) -> list[int]:
        return [k for k, p in enumerate(self.procs) if p is not None and not p.is_alive()]

    def exit_reason(self, k: int) -> str:
        proc = self.procs[k]
        proc.join(0.5)
        code = proc.exitcode
        if code is None:
            return "still running"
        if code < 0:
            import signal
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
        if self.procs[k] is not None:
            self.procs[k].join(0.1)
            with contextlib.suppress(ValueError):
                self.procs[k].close()
        self.procs[k] = self.conns[k] = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
