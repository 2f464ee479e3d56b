"""How many workers this process can usefully run, and which CPUs each one is pinned to.

``resolve_workers('auto')`` counts *physical* cores (hyperthread siblings share one core's
floating-point units, so a second NumPy worker on a sibling mostly waits) that are both in
this process's affinity mask and covered by its cgroup CPU quota (containers, CI runners).
``plan_placement`` then gives worker k its own run of ``threads_per_worker`` cores.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil

SYSFS_CPU = "/sys/devices/system/cpu"
CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class Placement:
    """Where the workers run: ``cpus[k]`` are worker k's logical CPUs (None: not pinned)."""
    workers: int
    threads_per_worker: int                  # BLAS threads inside each worker
    cpus: tuple[tuple[int, ...] | None, ...]
    cores: int                               # physical cores usable by this process
    oversubscribed: bool                     # workers * threads > cores


def usable_cpus() -> list[int]:
    """Logical CPUs in this process's affinity mask."""
    try:
        return sorted(psutil.Process().cpu_affinity())
    except (AttributeError, psutil.Error, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int], sysfs: str = SYSFS_CPU) -> list[tuple[int, ...]]:
    """Group logical CPUs into physical cores (siblings together), ordered by first CPU."""
    groups: dict[tuple[str, str], list[int]] = {}
    for cpu in cpus:
        topo = Path(sysfs) / f"cpu{cpu}" / "topology"
        try:
            key = ((topo / "physical_package_id").read_text().strip(),
                   (topo / "core_id").read_text().strip())
        except OSError:
            key = ("?", str(cpu))       # no topology information: count every CPU as a core
        groups.setdefault(key, []).append(cpu)
    return sorted((tuple(sorted(g)) for g in groups.values()), key=lambda g: g[0])


def _read_quota(directory: Path) -> float | None:
    """CPUs allowed by one cgroup directory (v2 cpu.max or v1 cfs quota), None if unlimited."""
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _cgroup_dirs(proc_cgroup: str, root: str) -> list[Path]:
    """Every directory (the process's cgroup and its ancestors) that may hold a CPU quota."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return [Path(root)]
    dirs = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":                                   # cgroup v2 unified hierarchy
            mounts = [Path(root), Path(root) / "unified"]
        elif "cpu" in controllers.split(","):                   # cgroup v1 cpu controller
            mounts = [Path(root) / controllers, Path(root) / "cpu", Path(root) / "cpu,cpuacct"]
        else:
            continue
        rel = Path(path.lstrip("/"))
        for mount in mounts:
            # in a container the path may be the host's while the mount is the container's own
            # cgroup: walk the path up to the mount, and always look at the mount itself
            dirs += [mount / rel] + [mount / p for p in rel.parents]
    return dirs


def cgroup_cpu_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = CGROUP_ROOT) -> float | None:
    """The tightest CPU quota (in CPUs, e.g. 1.5) over this process's cgroups, None if unlimited."""
    quotas = [q for d in dict.fromkeys(_cgroup_dirs(proc_cgroup, root)) if (q := _read_quota(d))]
    return min(quotas) if quotas else None


def usable_cores() -> int:
    """Physical cores this process may use: affinity mask, then the cgroup quota (rounded down)."""
    cores = len(physical_cores(usable_cpus()))
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(cores, 1)


def resolve_workers(workers: int | str) -> int:
    """``'auto'`` -> :func:`usable_cores`; a positive int (or its string) -> itself."""
    if isinstance(workers, str):
        if workers.strip().lower() == "auto":
            return usable_cores()
        if not workers.strip().isdigit():
            raise ValueError(f"workers must be a positive int or 'auto', got {workers!r}")
        workers = int(workers)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int or 'auto', got {workers!r}")
    return workers


def plan_placement(workers: int, threads_per_worker: int | None = None,
                   deterministic: bool = False, pin: bool = True) -> Placement:
    """Give worker k cores [k*T, (k+1)*T) of the usable physical cores (with their siblings).

    ``threads_per_worker`` defaults to cores // workers, or 1 in deterministic mode (BLAS
    results can depend on the thread count). When workers * threads exceeds the cores,
    warn once and do not pin, so the OS can at least balance the load; ``pin=False``
    never pins.
    """
    count = usable_cores()
    cores = physical_cores(usable_cpus())[:count]
    threads = threads_per_worker
    if threads is None:
        threads = 1 if deterministic else max(1, count // workers)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads_per_worker must be a positive int, got {threads_per_worker!r}")
    over = workers * threads > count
    if over:
        warnings.warn(f"{workers} workers x {threads} BLAS threads = {workers * threads} threads on "
                      f"{count} usable physical cores: the cores are oversubscribed, expect lower "
                      "throughput; use fewer workers or threads_per_worker=1", RuntimeWarning,
                      stacklevel=3)
    if over or not pin:
        cpus: tuple = (None,) * workers
    else:
        cpus = tuple(tuple(c for core in cores[k * threads:(k + 1) * threads] for c in core)
                     for k in range(workers))
    return Placement(workers, threads, cpus, count, over)
