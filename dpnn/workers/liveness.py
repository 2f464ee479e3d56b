"""Whether a process lives: the one answer the pool, the workers and the fork server check use.

A psutil handle taken while the process runs notices if its pid is later reused; a zombie
(exited, not yet reaped) counts as gone.
"""
from __future__ import annotations

import psutil


def watch(pid: int | None) -> psutil.Process | None:
    """A handle on process ``pid`` that notices if the pid is reused; None if it is gone."""
    try:
        return psutil.Process(pid) if pid is not None else None
    except psutil.Error:
        return None


def process_gone(proc: psutil.Process | None) -> bool:
    """True once ``proc`` died: gone, pid reused, or a zombie nobody has reaped yet."""
    try:
        return proc is None or not proc.is_running() or \
            proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return True
