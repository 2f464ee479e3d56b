"""Process start-up details: the start method, the fork server and the BLAS environment
children inherit."""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal

from ..placement import BLAS_THREAD_VARS
from ..signals import blocked_signals
from .liveness import process_gone, watch

START_METHODS = ("forkserver", "spawn")
PRELOAD = ["dpnn.workers.worker"]      # imported once by the fork server, inherited by workers


def default_start_method() -> str:
    """``forkserver`` where available (fast: NumPy and dpnn are imported once), else ``spawn``."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


@contextlib.contextmanager
def blas_environment(threads: int, active: bool = True):
    """Temporarily set the BLAS thread variables, so a child sees them before importing NumPy."""
    if not active:
        yield
        return
    saved = {k: os.environ.get(k) for k in BLAS_THREAD_VARS}
    os.environ.update({k: str(threads) for k in BLAS_THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_context(method: str):
    """A multiprocessing context for ``method`` ('forkserver' or 'spawn'; never 'fork').

    The fork server imports NumPy with one BLAS thread, so forking it never copies a running
    thread pool; each worker then raises its own limit with threadpoolctl.
    """
    if method not in START_METHODS:
        raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}, got {method!r} "
                         "(fork is unsafe once BLAS has started threads)")
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
        ensure_forkserver()
    return ctx


def forkserver_pid() -> int | None:
    """The pid of this process's fork server (None before the first start)."""
    from multiprocessing import forkserver
    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def forkserver_alive() -> bool:
    return not process_gone(watch(forkserver_pid()))


def ensure_forkserver() -> int | None:
    """Start the fork server, or a new one if it died (multiprocessing reaps the old one); its pid.

    Started with one BLAS thread, so forking it never copies a running thread pool, and with
    SIGINT blocked, which it and every worker it forks inherit: a Ctrl-C from the terminal
    reaches the whole process group, and one landing while the server imports its preload
    (before it ignores SIGINT) or while a worker starts (before ``worker_main`` ignores it) killed
    that process, so the coordinator read EOFError or "exited during start-up" instead of its own
    interrupt. Ctrl-C is the coordinator's to handle; a SIGINT for it meanwhile waits, not lost."""
    from multiprocessing import forkserver
    with blas_environment(1), blocked_signals((signal.SIGINT,)):
        forkserver.ensure_running()
    return forkserver_pid()
