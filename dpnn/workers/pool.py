"""The worker processes themselves: start, watch, respawn and stop them.

Waiting never blocks on one pipe: :meth:`WorkerPool.gather` waits on every worker's
connection *and* its process sentinel with ``multiprocessing.connection.wait``, so a worker
that dies (SIGKILL, out of memory) is noticed at once, not after a timeout.

Whether a worker lives is decided by a psutil handle on its pid (which notices pid reuse),
not by multiprocessing alone: with ``forkserver`` a worker's sentinel and exit code come from
the fork server, so when the fork server dies every sentinel fires although the workers run
on. Such a sentinel is then ignored (the pipe's EOF still tells a death), and a new fork
server is started at once (one log line).
A worker silent for more than ``timeout`` seconds (stopped with SIGSTOP, stuck) is killed and
reported dead like any other, so the coordinator respawns it and redoes the step.
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from dataclasses import replace
from multiprocessing import connection
from multiprocessing.reduction import ForkingPickler

import psutil

from ..errors import WorkerError
from ..signals import blocked_signals
from .liveness import process_gone, watch
from .messages import REPLIES, Failed, Ready, Stop, WorkerSpec
from .startup import blas_environment, ensure_forkserver, forkserver_alive, forkserver_pid, start_context
from .worker import worker_main

START_TIMEOUT_S = 120.0     # a worker must import, rebuild the model and attach within this
STOP_GRACE_S = 2.0          # an idle worker gets this long to leave on its own
WAIT_SLICE_S = 1.0          # longest single wait, so timeouts are checked
AWAKE_MARGIN_S = 5e-4       # awake this long (plus 5 %, at most AWAKE_MAX_S) before an expected
AWAKE_MAX_S = 2e-3          # reply, and as long after it
GONE = "gone"               # what _receive returns for a worker that died

log = logging.getLogger("dpnn.workers")


class WorkerPool:
    """``workers`` processes running :func:`dpnn.workers.worker.worker_main`."""

    def __init__(self, spec: WorkerSpec, start_method: str, arrivals=None) -> None:
        self.spec, self.start_method = spec, start_method
        self.ctx = start_context(start_method)
        # the workers meet inside a step (barrier.py): synchronised BatchNorm, the sharded update
        self.meets = "meet" in spec.layout
        self.arrivals = arrivals        # () -> each worker's arrivals at that barrier, if any
        self.procs: list = [None] * spec.workers
        self.conns: list = [None] * spec.workers
        self.pids: list[int] = [0] * spec.workers
        self.handles: list = [None] * spec.workers    # psutil.Process: the truth about who lives
        self.stale: set[int] = set()                  # sentinel spoke for a dead fork server
        self.silent: dict[int, float] = {}            # killed for silence: seconds waited
        self.servers: list = [None] * spec.workers    # pid of the fork server that forked each

    # -- start-up -------------------------------------------------------------------------
    def start(self, ids=None) -> None:
        """Start workers ``ids`` (default: all) and wait until each reports ready."""
        ids = list(range(self.spec.workers) if ids is None else ids)
        self.check_forkserver()
        for k in ids:
            parent, child = self.ctx.Pipe(duplex=True)
            proc = self.ctx.Process(target=worker_main, args=(k, self.spec, child),
                                    name=f"dpnn-worker-{k}", daemon=True)
            with blocked_signals(), blas_environment(self.spec.threads, self.start_method == "spawn"):
                proc.start()       # an interrupt waits until the worker is on our books
                child.close()      # so the worker's death reads as EOF here
                self.procs[k], self.conns[k], self.pids[k] = proc, parent, proc.pid
                self.handles[k] = watch(proc.pid)
                self.servers[k] = forkserver_pid() if self.start_method == "forkserver" else None
                self.stale.discard(k)
                self.silent.pop(k, None)
        self._await_ready(ids)

    def _await_ready(self, ids: list[int]) -> None:
        pending, deadline = set(ids), time.monotonic() + START_TIMEOUT_S
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"worker(s) {sorted(pending)} did not start within {START_TIMEOUT_S:.0f} s")
            ready = set(connection.wait(self._waitables(pending), min(left, WAIT_SLICE_S)))
            for k in sorted(pending):
                msg = self._receive(k, ready)
                if msg == GONE:
                    raise WorkerError(f"worker {k} (pid {self.pids[k]}) exited during start-up "
                                      f"({self.exit_reason(k)}). Workers import your main module: if "
                                      "your script trains at import time, put that code under "
                                      "`if __name__ == '__main__':`")
                if isinstance(msg, Failed):
                    raise WorkerError(f"worker {k} (pid {self.pids[k]}) failed to start:\n{msg.traceback}")
                if isinstance(msg, Ready):
                    pending.discard(k)

    def _waitables(self, ids) -> list:
        return [self.conns[k] for k in ids] + [self.procs[k].sentinel for k in ids if k not in self.stale]

    def _receive(self, k: int, ready: set):
        """Worker k's next message; GONE if it died; None if nothing (yet)."""
        sentinel = self.procs[k].sentinel
        if self.conns[k] not in ready and sentinel not in ready:
            return None
        msg = self._poll(k)
        if msg is not None:
            return msg
        if not self.running(k):
            return GONE
        if sentinel in ready:          # the worker lives: its fork server died
            self.stale.add(k)
            self.check_forkserver()
        return None

    def _poll(self, k: int):
        """The next message from worker k, or None (nothing there, or its pipe is closed)."""
        try:
            return self.conns[k].recv() if self.conns[k].poll(0) else None
        except (EOFError, OSError):
            return None

    def check_forkserver(self) -> None:
        """Start a new fork server if ours died (it forks every new worker); one log line."""
        if self.start_method != "forkserver" or forkserver_alive():
            return
        old = forkserver_pid()
        new = ensure_forkserver()
        if old is not None:
            log.warning("dpnn: the fork server (pid %d) died; started a new one (pid %s)", old, new)

    def respawn(self, ids: list[int], layout) -> None:
        """Replace dead workers by fresh ones that see the current shared buffers.

        When the workers meet inside a step (synchronised BatchNorm, the sharded update)
        every worker is replaced: the survivors may be stuck waiting for the dead one, and
        the new ones start the barrier's count together (barrier.py).
        """
        if self.meets:
            self.stop(graceful=False)
            ids = range(self.spec.workers)
        for k in ids:
            self._reap(k)
        self.spec = replace(self.spec, layout=layout)
        self.start(list(ids))

    # -- per step -------------------------------------------------------------------------
    def send_all(self, msg) -> None:
        """Send ``msg`` to every worker, the one pinned to the CPU we run on last.

        Waking that worker first would let it preempt us on our own CPU before the other
        workers have their message, while their CPUs sit idle.
        """
        data = ForkingPickler.dumps(msg)              # pickled once, what Connection.send does
        cpu = current_cpu()
        order = sorted(range(len(self.conns)), key=lambda k: cpu in (self.spec.cpus[k] or ()))
        for k in order:
            if self.conns[k] is not None:
                with contextlib.suppress(OSError):     # a dead worker: its sentinel will tell
                    self.conns[k].send_bytes(data)

    def gather(self, attempt: int, timeout: float | None = None,
               expect: float | None = None) -> tuple[dict, set, dict]:
        """Replies of ``attempt``: ({worker: its reply}, {dead workers}, {worker: traceback}).

        A worker silent for more than ``timeout`` seconds (None: no limit) is killed and
        counted dead. When the workers wait for each other inside a step (at a barrier),
        after a death or an error the others may never answer: stop waiting at once (the
        caller then restarts or stops the whole pool). ``expect``: the seconds the first
        reply should take, to be awake when it comes (:meth:`_awake_for`).
        """
        pending = set(range(self.spec.workers))
        if expect is not None:
            self._awake_for(pending, expect)
        done, dead, errors, aborted = {}, set(), {}, set()
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending and not (self.meets and (dead or errors)):
            left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
            ready = set(connection.wait(self._waitables(pending), max(0.0, left)))
            for k in sorted(pending):
                msg = self._receive(k, ready)
                if msg is None or (msg != GONE and msg.attempt != attempt):
                    continue              # nothing yet, or a late reply to an abandoned attempt
                pending.discard(k)
                if msg == GONE:
                    dead.add(k)
                elif isinstance(msg, REPLIES):
                    done[k] = msg
                elif isinstance(msg, Failed):
                    errors[k] = msg.traceback
                else:
                    aborted.add(k)
            if pending and deadline is not None and time.monotonic() >= deadline:
                stuck = self._laggards(pending)
                self._silence(stuck, timeout)
                dead |= stuck
                pending.clear()
        if aborted and not dead and not errors:
            errors[min(aborted)] = ("timed out waiting for the other workers at the step's barrier "
                                    f"(barrier_timeout={self.spec.barrier_timeout} s)")
        return done, dead, errors

    def _awake_for(self, pending: set[int], expect: float) -> None:
        """Sleep through most of ``expect`` seconds, then check the pipes without sleeping
        (yielding the CPU) until a reply is there or the time is well past: an idle vCPU takes
        0.2-0.3 ms to wake on a VM. Only for a coordinator with a core of its own."""
        margin = min(0.05 * expect, AWAKE_MAX_S) + AWAKE_MARGIN_S     # a long step wakes the same
        connection.wait(self._waitables(pending), max(0.0, expect - margin))
        conns = [self.conns[k] for k in pending if self.conns[k] is not None]
        end = time.perf_counter() + 2 * margin
        with contextlib.suppress(OSError):
            while time.perf_counter() < end and not any(c.poll(0) for c in conns):
                os.sched_yield()

    def _laggards(self, pending: set[int]) -> set[int]:
        """Of the silent workers, those the others wait for: behind at the barrier (a worker
        waiting there for a stopped peer is silent too, but not at fault). All if none is behind."""
        if not self.meets or self.arrivals is None:
            return set(pending)
        arrived = self.arrivals()
        behind = {k for k in pending if arrived[k] < arrived.max()}
        return behind or set(pending)

    def _silence(self, ids, timeout: float) -> None:
        """Kill workers that stayed silent for ``timeout`` seconds (stopped or stuck)."""
        for k in ids:
            self.silent[k] = timeout
            self._signal(k, signal.SIGKILL)

    def running(self, k: int) -> bool:
        """Whether worker k's process is alive (a zombie is not)."""
        return not process_gone(self.handles[k])

    def dead_workers(self) -> list[int]:
        """Workers that died. Asked before every step, so cheap: one select on the sentinels of
        the live workers; only those whose sentinel spoke (or whose fork server died, so the
        sentinel cannot tell) are looked up in /proc."""
        live = [k for k, p in enumerate(self.procs) if p is not None]
        watched = {self.procs[k].sentinel: k for k in live if k not in self.stale}
        poller = select.poll()
        for fd in watched:
            poller.register(fd, select.POLLIN)
        suspects = {watched[fd] for fd, _ in poller.poll(0)} | (self.stale & set(live))
        return [k for k in sorted(suspects) if not self.running(k)]

    def exit_reason(self, k: int) -> str:
        """How worker k ended, e.g. 'killed by SIGKILL'."""
        if k in self.silent:
            return f"silent for more than {self.silent[k]:g} s (stopped or stuck), so killed"
        if self.servers[k] is not None and (self.servers[k] != forkserver_pid() or not forkserver_alive()):
            return "exit status unknown: the fork server that started it died"
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
        ids = [k for k, p in enumerate(self.procs) if p is not None]
        if graceful:
            self.send_all(Stop())
            self._wait_gone(ids, STOP_GRACE_S)
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 1.0)):
            live = [k for k in ids if self.running(k)]
            for k in live:
                self._signal(k, sig)
                self._signal(k, signal.SIGCONT)     # a stopped worker gets to act on SIGTERM
            self._wait_gone(live, grace)
        for k in range(len(self.procs)):
            self._reap(k)

    def _signal(self, k: int, sig: int) -> None:
        with contextlib.suppress(psutil.Error, AttributeError):
            self.handles[k].send_signal(sig)

    def _wait_gone(self, ids, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while any(self.running(k) for k in ids) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _reap(self, k: int) -> None:
        if self.conns[k] is not None:
            self.conns[k].close()
        proc = self.procs[k]
        if proc is not None:
            proc.join(0.1)
            if self.running(k):
                self._signal(k, signal.SIGKILL)
                self._wait_gone([k], 1.0)
            proc.join(0.1)
            with contextlib.suppress(ValueError):
                proc.close()
        self.procs[k] = self.conns[k] = self.handles[k] = None


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
