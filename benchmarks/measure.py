"""Timed training runs: the data-parallel engine, single-process BLAS, and PyTorch.

Each function trains the same model on the same synthetic batch for ``warmup`` untimed
and ``steps`` timed steps and returns one JSON-ready dict. Throughput is the global batch
divided by the *median* step time (robust to the odd disturbed step on a shared machine);
the step breakdown is the mean of what the engine reports.
"""
from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict

import numpy as np
from threadpoolctl import threadpool_limits

from dpnn.engine import LocalEngine
from dpnn.random import sample_keys

from .models import build


def synthetic_batch(n: int, seed: int = 0, shape=(28, 28, 1), classes: int = 10):
    """(x float32 (n, 28, 28, 1) in [0, 1), y int64 (n,)) drawn from a fixed seed."""
    rng = np.random.default_rng(seed)
    return rng.random((n,) + tuple(shape), dtype=np.float32), rng.integers(0, classes, n)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of a live process in MB (VmHWM; psutil RSS as a fallback)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil
    return psutil.Process(pid).memory_info().rss / 2**20


def _timed_steps(step, batch: int, steps: int, warmup: int) -> tuple[list[float], dict]:
    """Run ``step(i)`` warmup + steps times; per-step wall times and summed StepStats.times."""
    for i in range(warmup):
        step(i)
    walls, sums = [], defaultdict(float)
    for i in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        stats = step(i)
        walls.append(time.perf_counter() - t0)
        for k, v in stats.times.items():
            sums[k] += v
    return walls, {k: v / steps for k, v in sums.items()}


def _summary(walls: list[float], times: dict, batch: int) -> dict:
    med = statistics.median(walls)
    return {"batch": batch, "steps": len(walls), "step_s": med, "step_mean_s": sum(walls) / len(walls),
            "samples_per_s": batch / med, "times": times}


def data_parallel(model_name: str, workers: int, threads: int, batch: int, steps: int, warmup: int,
                  backend: str = "shm", seed: int = 0) -> dict:
    """Train with ``DataParallel(workers, threads_per_worker)``; throughput, breakdown, memory, start-up."""
    from dpnn.workers import DataParallel
    x, y = synthetic_batch(batch, seed)
    model = build(model_name, seed=seed)
    kwargs = {} if backend == "shm" else {"backend": backend}
    t0 = time.perf_counter()
    with DataParallel(model, workers=workers, threads_per_worker=threads, deterministic=False,
                      **kwargs) as dp:
        if getattr(dp, "pool", None) is None and hasattr(dp, "start"):
            dp.start(x, y)
        startup = dp.startup_time if dp.startup_time is not None else time.perf_counter() - t0
        walls, times = _timed_steps(
            lambda i: dp.train_step(x, y, sample_keys(seed, i, np.arange(batch))), batch, steps, warmup)
        pids = dp.worker_pids() if callable(dp.worker_pids) else dp.worker_pids
        mem = [peak_rss_mb(p) for p in pids]
    row = _summary(walls, times, batch)
    row.update(workers=workers, threads=threads, startup_s=startup, worker_peak_mb=mem,
               coordinator_rss_mb=_rss_mb(os.getpid()))
    return row


def local(model_name: str, threads: int, batch: int, steps: int, warmup: int, seed: int = 0) -> dict:
    """Single-process baseline: LocalEngine with ``threads`` BLAS threads (the seed's approach)."""
    x, y = synthetic_batch(batch, seed)
    model = build(model_name, seed=seed)
    engine = LocalEngine(model)
    with threadpool_limits(limits=threads, user_api="blas"):
        walls, times = _timed_steps(
            lambda i: engine.train_step(x, y, sample_keys(seed, i, np.arange(batch))), batch, steps, warmup)
    row = _summary(walls, times, batch)
    row.update(threads=threads)
    return row


def torch_cpu(threads: int, batch: int, steps: int, warmup: int, seed: int = 0) -> dict:
    """PyTorch CPU with ``torch.set_num_threads(threads)`` on the same batch."""
    from .torch_ref import throughput
    x, y = synthetic_batch(batch, seed)
    out = throughput(x, y, threads, steps, warmup, seed)
    out.update(batch=batch)
    return out


def _rss_mb(pid: int) -> float:
    import psutil
    return psutil.Process(pid).memory_info().rss / 2**20
