"""Every way dpnn holds or turns a signal, in one place.

- :class:`DeferredSignals`: during ``fit``, SIGINT/SIGTERM end the current step, then training;
- :func:`held_signals`: hold them across a block (writing a checkpoint), then deliver;
- :func:`blocked_signals`: block them at the thread level while a process is launched;
- :func:`sigterm_as_interrupt`: while worker processes run, SIGTERM raises like Ctrl-C, so
  every ``finally`` gets to clean up (:class:`Terminated`, a KeyboardInterrupt).

A preemptible machine sends SIGTERM with ~30 s notice. Stopped between steps, the parameters
and optimizer state are those of a completed step, which :class:`TrainingInterrupted`'s
:class:`Progress` names: a checkpoint of it resumes bitwise (``fit(..., progress=p)``).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Progress:
    """Where training stands after a completed step: enough to resume inside an epoch."""
    epoch: int                 # the epoch in progress (0-based)
    step: int = 0              # steps of that epoch completed
    loss_sum: float = 0.0      # that epoch's running sums so far
    correct: int = 0           # argmax hits (-1: not a classifier)
    seen: int = 0              # samples
    elapsed: float = 0.0       # seconds spent in the epoch's steps so far


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped ``fit`` between two steps; ``progress`` says after which."""

    def __init__(self, signum: int, progress: Progress) -> None:
        name = signal.Signals(signum).name
        where = (f"after step {progress.step} of epoch {progress.epoch + 1}" if progress.step
                 else f"before epoch {progress.epoch + 1}")
        super().__init__(f"{name} received; training stopped {where}")
        self.signum, self.progress = signum, progress


class DeferredSignals:
    """While open (main thread only), SIGINT/SIGTERM are held until :meth:`check`.

    Signals whose handler is SIG_IGN (or not set from Python) are left alone; a second
    signal runs the handler that was there before (Ctrl-C: KeyboardInterrupt at once).
    """

    def __init__(self, verbose: bool = True) -> None:
        self.verbose, self.pending, self._previous = verbose, None, {}

    def __enter__(self) -> "DeferredSignals":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                old = signal.getsignal(s)
                if old not in (signal.SIG_IGN, None):
                    self._previous[s] = old
                    signal.signal(s, self._hold)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if exc_type is None and self.pending is not None:   # training finished first: deliver it now
            signal.raise_signal(self.pending)

    def _hold(self, signum, frame) -> None:
        if self.pending is not None:                  # asked twice: stop now
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
        self.pending = signum
        if self.verbose:
            say(f"\ndpnn: {signal.Signals(signum).name} received; stopping after this step "
                "(send it again to stop at once)")

    def check(self, progress: Progress, agree=None) -> None:
        """Raise TrainingInterrupted(progress) if a signal arrived since the last check;
        ``agree(signum or None)`` (:func:`agree` over the engine's ranks) makes it the decision
        of every MPI rank: one rank's SIGTERM (a preempted node) stops them all at this step."""
        signum = self.pending if agree is None else agree(self.pending)
        if signum is not None:
            self.pending = None
            raise TrainingInterrupted(signum, progress)


def say(text: str, stream=None) -> None:
    """Print ``text`` (to stderr by default), never raising: under ``... 2>&1 | tee log`` the
    Ctrl-C that stops training also ends ``tee``, and a BrokenPipeError from the notice (inside a
    signal handler, or on the way out) would turn a clean stop into exit 1 with no checkpoint.
    A stream that failed is pointed at /dev/null, so later writes and the flush at exit succeed."""
    stream = sys.stderr if stream is None else stream
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):          # a closed pipe; a closed file object
        _to_devnull(stream)


def _to_devnull(stream) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def agree(comm, signum: int | None) -> int | None:
    """The interrupt every rank of ``comm`` acts on at this step: SIGTERM if any rank holds one,
    else SIGINT if any does, else None (one small all-reduce per step across MPI ranks)."""
    if comm.size == 1:
        return signum
    import numpy as np
    held = np.array([signum == signal.SIGINT, signum == signal.SIGTERM], np.float32)
    comm.allreduce(held)
    return signal.SIGTERM if held[1] else signal.SIGINT if held[0] else None


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (stop, clean up) but known apart: a command exits with 143."""


def raise_terminated(signum, frame) -> None:
    """The SIGTERM handler: stop like Ctrl-C, known apart."""
    raise Terminated(f"received signal {signal.Signals(signum).name}")


def sigterm_as_interrupt():
    """From now on SIGTERM raises :class:`Terminated`; returns the function that undoes it, or
    None when nothing was changed (not the main thread, or the application has its own handler)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL):
        return None
    signal.signal(signal.SIGTERM, raise_terminated)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def held_signals(deliver: bool = True):
    """Hold SIGINT/SIGTERM back inside the block, then hand a held one to the handler that was
    there before; with ``deliver=False`` (already stopping) a held one is dropped."""
    held: list[int] = []
    previous = {s: signal.signal(s, lambda sig, frame: held.append(sig)) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held and deliver:
            signal.raise_signal(held[0])


@contextlib.contextmanager
def blocked_signals(signals=SIGNALS):
    """Block ``signals`` for this thread until the block ends: an interrupt then never lands
    half-way through launching a process (a child reading a truncated start-up message)."""
    if not hasattr(signal, "pthread_sigmask"):      # Windows: no signal masks
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
