"""How many workers this process can usefully run, and which CPUs each one is pinned to.

``resolve_workers('auto')`` counts *physical* cores (hyperthread siblings share one core's
floating-point units, so a second NumPy worker on a sibling mostly waits) that are both in
this process's affinity mask and covered by its cgroup CPU quota (containers, CI runners).
``plan_placement`` then gives worker k its own run of ``threads_per_worker`` cores.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..threads import (cgroup_cpu_limit, physical_cores, resolve_workers, usable_cores,  # noqa: F401
                       usable_cpus, worker_threads)


@dataclass(frozen=True)
class Placement:
    """Where the workers run: ``cpus[k]`` are worker k's logical CPUs (None: not pinned)."""
    workers: int
    threads_per_worker: int                  # BLAS threads inside each worker
    cpus: tuple[tuple[int, ...] | None, ...]
    cores: int                               # physical cores usable by this process
    oversubscribed: bool                     # workers * threads > cores


def plan_placement(workers: int, threads_per_worker: int | None = None,
                   deterministic: bool = False, pin: bool = True, ranks: int = 1) -> Placement:
    """Give worker k cores [k*T, (k+1)*T) of the usable physical cores (with their siblings).

    T comes from the thread policy (:func:`dpnn.threads.worker_threads`). When the cores are
    oversubscribed (it warns once) or several MPI ranks share the node, nothing is pinned, so
    the OS can balance the load; ``pin=False`` never pins.
    """
    count = usable_cores()
    cores = physical_cores(usable_cpus())[:count]
    threads, over = worker_threads(workers, threads_per_worker, deterministic, ranks)
    if over or not pin or ranks > 1:
        cpus: tuple = (None,) * workers
    else:
        cpus = tuple(tuple(c for core in cores[k * threads:(k + 1) * threads] for c in core)
                     for k in range(workers))
    return Placement(workers, threads, cpus, count, over)
