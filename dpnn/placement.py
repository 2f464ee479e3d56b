"""Where work runs: how many cores, how many workers, how many BLAS threads each, which CPUs.

Precedence for a process's BLAS threads (documented in the README, "Threads")::

    1. an explicit ``threads_per_worker`` (``--threads-per-worker``)         always wins
    2. OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS set by the
       user before ``import dpnn``                                            then this
    3. dpnn's default: usable cores // (workers x MPI ranks on this node),
       1 in deterministic mode (GEMM results can depend on the thread count)

``import dpnn`` applies the default to the environment before NumPy loads (unless the user
set any of the variables, or DPNN_DISABLE_AUTO_THREADS=1). Ranks x workers x threads never
exceed the node's cores: past that, one thread each and one warning. Nothing here imports
NumPy, so it can run first.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
USER_VARS = BLAS_THREAD_VARS[:3]     # the ones users set; any of them counts as the user's choice
LOCAL_RANK_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                   "SLURM_NTASKS_PER_NODE")
LOCAL_ID_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK",
                 "SLURM_LOCALID")
MAX_WORKERS_PER_CORE = 4   # beyond this many workers per core, refuse unless oversubscribe=True
SYSFS_CPU = "/sys/devices/system/cpu"
CGROUP_ROOT = "/sys/fs/cgroup"

_user_threads: int | None = None     # what the user's environment said at import time


# -- cores ----------------------------------------------------------------------------------------
def usable_cpus() -> list[int]:
    """Logical CPUs in this process's affinity mask."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
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
    """Physical cores this process may use: affinity mask, then the cgroup quota (rounded down).

    Hyperthread siblings share one core's floating-point units, so a second NumPy worker on a
    sibling mostly waits: they count once.
    """
    cores = len(physical_cores(usable_cpus()))
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(cores, 1)


def ranks_per_node(environ=os.environ) -> int:
    """MPI ranks sharing this machine, from the launcher's environment (1 outside MPI)."""
    for var in LOCAL_RANK_VARS:
        value = environ.get(var, "")
        if value.strip().isdigit() and int(value) > 0:
            return int(value)
    return 1


def local_rank(environ=os.environ) -> int:
    """This process's rank among the MPI ranks of its node (0 outside MPI)."""
    for var in LOCAL_ID_VARS:
        value = environ.get(var, "")
        if value.strip().isdigit():
            return int(value)
    return 0


# -- counts ---------------------------------------------------------------------------------------
def parse_count(value, name: str = "workers", allow_auto: bool = True) -> int | str:
    """A positive int from an int or its string, or 'auto'; a ValueError naming ``name`` otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        if allow_auto and text == "auto":
            return "auto"
        if text.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        choices = "a positive int or 'auto'" if allow_auto else "a positive int"
        raise ValueError(f"{name} must be {choices}, got {value!r}")
    return value


def resolve_workers(workers, ranks: int = 1, oversubscribe: bool = False) -> int:
    """``'auto'`` -> usable cores // ranks on this node; an int -> itself, refused when it exceeds
    MAX_WORKERS_PER_CORE per core (thousands of processes exhaust memory) unless ``oversubscribe``."""
    n = parse_count(workers)
    cores = usable_cores()
    if n == "auto":
        return max(1, cores // max(ranks, 1))
    if n * max(ranks, 1) > MAX_WORKERS_PER_CORE * cores and not oversubscribe:
        raise ValueError(f"workers={n} on {cores} usable core{'s' * (cores != 1)} would start "
                         f"{n * max(ranks, 1)} processes; use workers='auto' (one per core), or pass "
                         "oversubscribe=True (--oversubscribe) if you really mean it")
    return n


def worker_threads(workers: int, threads_per_worker: int | None, deterministic: bool,
                   ranks: int = 1) -> tuple[int, bool]:
    """(BLAS threads per worker, oversubscribed) for ``workers`` per rank, ``ranks`` per node.

    Explicit ``threads_per_worker`` first, then the user's environment, then
    cores // (workers x ranks). When ranks x workers x threads exceed the cores the
    default drops to one thread each and one warning says so.
    """
    if threads_per_worker is not None:
        threads = parse_count(threads_per_worker, "threads_per_worker", allow_auto=False)
    elif deterministic:
        threads = 1
    else:
        threads = _user_threads or max(1, usable_cores() // (workers * max(ranks, 1)))
    cores, total = usable_cores(), workers * max(ranks, 1) * threads
    if total > cores and threads_per_worker is None and threads > 1:
        threads, total = 1, workers * max(ranks, 1)
    over = total > cores
    if over and local_rank() == 0:          # one warning per node, not one per rank
        who = f"{ranks} ranks x " if ranks > 1 else ""
        warnings.warn(f"{who}{workers} workers x {threads} BLAS threads = {total} threads on {cores} "
                      "usable physical cores: the cores are oversubscribed, expect lower throughput; "
                      "use fewer workers or ranks", RuntimeWarning, stacklevel=user_stacklevel())
    return threads, over


def contention_note(threads: int | None, load: float | None = None) -> str | None:
    """A line for the run summary when ``threads`` BLAS threads per process will compete with
    other jobs: OpenBLAS's threads wait for each other by spinning, so on cores that other
    work occupies a step with 2 threads measured 1.6x to 13x slower than with 1
    (docs/benchmarks/README.md, "One thread under contention"); None when the cores are free."""
    if not threads or threads < 2 or not hasattr(os, "getloadavg"):
        return None
    load = os.getloadavg()[0] if load is None else load
    cores = usable_cores()
    if threads <= max(1, cores - round(load)):
        return None
    return (f"note: this machine is busy (load {load:.1f} on {cores} usable cores): {threads} BLAS threads per "
            "process will compete with other jobs and can run several times slower than 1; pass "
            "threads_per_worker=1 (--threads-per-worker 1) or train with workers")


def local_threads(threads_per_worker: int | None, deterministic: bool) -> int | None:
    """BLAS threads for training in this process: explicit, 1 when deterministic, else None
    (leave BLAS as the environment set it)."""
    if threads_per_worker is not None:
        return parse_count(threads_per_worker, "threads_per_worker", allow_auto=False)
    return 1 if deterministic else None


# -- deterministic mode's micro-shards: how many processes can share a batch -----------------------
DETERMINISTIC_SHARDS = 8   # deterministic mode's micro-shards when neither a count nor a batch size is given
MICRO_SHARD_SAMPLES = 32   # the default count gives micro-shards of this many samples ...
MIN_MICRO_SHARDS = 4       # ... but at least this many of them ...
MAX_MICRO_SHARDS = 64      # ... and at most this many (each is a gradient slot of P floats)


def default_micro_shards(batch_size: int | None) -> int:
    """Deterministic mode's micro-shard count for a run of ``batch_size``: one per 32 samples,
    at least 4, at most 64 (8 when the batch size is not known).

    The count caps how many workers x ranks can share a batch; each micro-shard is a forward
    and backward pass of its own, and small passes cost more per sample: with 2 workers at
    batch 64, 8 micro-shards of 8 samples made seed-cnn's step 13 % slower than the default
    mode, 4 of 16 samples 2 % (docs/engine.md, "Deterministic mode").
    """
    if batch_size is None:
        return DETERMINISTIC_SHARDS
    return min(MAX_MICRO_SHARDS, max(MIN_MICRO_SHARDS, int(batch_size) // MICRO_SHARD_SAMPLES))


def check_micro_shards(micro_shards) -> int:
    """A positive int micro-shard count, or a ValueError that says what to pass."""
    if isinstance(micro_shards, bool) or not isinstance(micro_shards, numbers.Integral) or micro_shards < 1:
        raise ValueError(f"micro_shards must be a positive int (or None: chosen from the batch size), "
                         f"got {micro_shards!r}")
    return int(micro_shards)


def resolve_micro_shards(micro_shards, batch_size: int | None = None) -> int:
    """The run's micro-shard count: ``micro_shards`` when given, else the default for ``batch_size``."""
    return default_micro_shards(batch_size) if micro_shards is None else check_micro_shards(micro_shards)


def check_deterministic_workers(processes: int, micro_shards: int, what: str = "workers") -> None:
    """Deterministic mode: at most one process per micro-shard; else one error saying what to change."""
    if processes > micro_shards:
        raise ValueError(f"deterministic=True cuts every batch into micro_shards={micro_shards} fixed "
                         f"micro-shards, at most one per process, but {what} make {processes} processes; "
                         f"pass micro_shards={processes} or more (--micro-shards {processes}; each costs a "
                         f"gradient slot), or use at most {micro_shards} processes (workers x ranks)")


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

    Hyperthread siblings share one core's floating-point units, so they go together. When the
    cores are oversubscribed (it warns once) or several MPI ranks share the node, nothing is
    pinned, so the OS can balance the load; ``pin=False`` never pins.
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


# -- applying it ----------------------------------------------------------------------------------
class blas_limit:
    """Limit this process's BLAS threads to ``threads`` until ``close()`` (None: no change)."""

    def __init__(self, threads: int | None) -> None:
        self._limiter = None
        if threads is not None:
            from threadpoolctl import threadpool_limits
            self._limiter = threadpool_limits(limits=threads, user_api="blas")

    def close(self) -> None:
        if self._limiter is not None:
            self._limiter.restore_original_limits()
            self._limiter = None

    def __enter__(self) -> "blas_limit":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def current_blas_threads() -> int:
    """The BLAS thread count this process runs with now (the largest over loaded libraries)."""
    from threadpoolctl import threadpool_info
    return max((p.get("num_threads", 1) for p in threadpool_info() if p.get("user_api") == "blas"),
               default=1)


def limit_process_threads(threads: int) -> None:
    """A worker's own limit: the environment (for libraries loaded later) and the loaded pools."""
    from threadpoolctl import threadpool_limits
    os.environ.update({k: str(threads) for k in BLAS_THREAD_VARS})
    threadpool_limits(limits=threads)


def configure_threads(environ=os.environ) -> dict[str, str]:
    """At ``import dpnn``: fill unset BLAS variables with cores // MPI ranks on this node.

    If the user set any of OMP/OPENBLAS/MKL_NUM_THREADS, nothing is added (OpenBLAS reads
    OPENBLAS_NUM_THREADS before OMP_NUM_THREADS, so filling it in would override the user);
    DPNN_DISABLE_AUTO_THREADS=1 skips this entirely. Returns what was set.
    """
    global _user_threads
    user = [environ[k] for k in USER_VARS if environ.get(k, "").strip().isdigit()]
    _user_threads = int(user[0]) if user and int(user[0]) > 0 else None
    if environ.get("DPNN_DISABLE_AUTO_THREADS") == "1" or any(k in environ for k in USER_VARS):
        return {}
    n = str(max(1, usable_cores() // ranks_per_node(environ)))
    return {k: environ.setdefault(k, n) for k in BLAS_THREAD_VARS if k not in environ}


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the caller's line outside dpnn (the user's
    ``fit(workers=4)``), not at a line of dpnn's own, whichever dpnn path led here."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1          # level 1: the function calling warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level
