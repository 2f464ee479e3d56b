"""Timed training runs: the data-parallel engine, single-process BLAS, and PyTorch.

Each runner trains the same model on the same synthetic batch; :func:`interleaved` runs
``warmup`` untimed and ``steps`` timed steps of every runner *in turns* and returns one
JSON-ready dict per runner. Throughput is the global batch divided by the *median* step
time (robust to the odd disturbed step on a shared machine); the step breakdown is the
mean of what the engine reports.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections import defaultdict

import numpy as np
from threadpoolctl import threadpool_limits

from dpnn.engine import LocalEngine
from dpnn.random import sample_keys

from .models import build

INPUT = (28, 28, 1)     # the reference workload's image shape (H, W, C)


def synthetic_batch(n: int, seed: int = 0, shape=INPUT, classes: int = 10):
    """(x float32 (n, H, W, C) in [0, 1), y int64 (n,)) drawn from a fixed seed."""
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


class LocalRunner:
    """Single-process baseline: LocalEngine with ``threads`` BLAS threads (the nn framework's approach)."""

    def __init__(self, model_name: str, threads: int, batch: int, seed: int = 0, shape=INPUT) -> None:
        self.x, self.y = synthetic_batch(batch, seed, shape)
        self.engine = LocalEngine(build(model_name, (1,) + tuple(shape), seed=seed))
        self.threads, self.batch, self.seed = threads, batch, seed

    def turn(self):
        return threadpool_limits(limits=self.threads, user_api="blas")

    def step(self, i: int) -> dict:
        return self.engine.train_step(self.x, self.y, sample_keys(self.seed, i, np.arange(self.batch))).times

    def result(self) -> dict:
        return {"threads": self.threads}

    def close(self) -> None:
        pass


class DataParallelRunner:
    """``DataParallel(workers, threads_per_worker)`` with its pool started; reports start-up and memory."""

    def __init__(self, model_name: str, workers: int, threads: int, batch: int, backend: str = "shm",
                 seed: int = 0, shard_optimizer: bool | str = "auto", shape=INPUT) -> None:
        from dpnn.workers import DataParallel
        self.x, self.y = synthetic_batch(batch, seed, shape)
        self.workers, self.threads, self.batch, self.seed = workers, threads, batch, seed
        kwargs = {"shard_optimizer": shard_optimizer} if backend == "shm" else {"backend": backend}
        t0 = time.perf_counter()
        self.dp = DataParallel(build(model_name, (1,) + tuple(shape), seed=seed), workers=workers,
                               threads_per_worker=threads,
                               deterministic=False, **kwargs)
        try:
            self.dp.start(self.x, self.y)
        except BaseException:
            self.dp.close()
            raise
        self.startup = self.dp.startup_time if self.dp.startup_time is not None else time.perf_counter() - t0

    def turn(self):
        return contextlib.nullcontext()

    def step(self, i: int) -> dict:
        return self.dp.train_step(self.x, self.y, sample_keys(self.seed, i, np.arange(self.batch))).times

    def result(self) -> dict:
        return {"workers": self.workers, "threads": self.threads, "startup_s": self.startup,
                "sharded_optimizer": bool(getattr(self.dp, "shard_optimizer", False)),
                "worker_peak_mb": [peak_rss_mb(p) for p in self.dp.worker_pids],
                "coordinator_rss_mb": _rss_mb(os.getpid())}

    def close(self) -> None:
        self.dp.close()


class TorchRunner:
    """PyTorch CPU with ``torch.set_num_threads(threads)`` on the same batch."""

    def __init__(self, threads: int, batch: int, seed: int = 0, shape=INPUT) -> None:
        from .torch_ref import TorchStep
        x, y = synthetic_batch(batch, seed, shape)
        self.impl, self.threads, self.batch = TorchStep(x, y, threads, seed), threads, batch

    def turn(self):
        return self.impl.threads_set()

    def step(self, i: int) -> dict:
        return self.impl.step(i)

    def result(self) -> dict:
        return {"threads": self.threads}

    def close(self) -> None:
        pass


def interleaved(runners: dict, steps: int, warmup: int, rounds: int = 5) -> dict:
    """Time every runner in turns: ``rounds`` rounds, each running every runner for its share
    of ``steps``; {name: row}.

    On a shared machine the speed drifts by tens of percent over minutes. Measured one after
    another, two configurations see different machines; taking turns, every configuration
    sees the same mix of quiet and busy moments, so their ratios are fair. The order rotates
    from round to round, so whatever one runner leaves behind (cold caches, a thread pool
    still spinning) does not always land on the same next runner.
    """
    for r in runners.values():
        with r.turn():          # thread settings change once per turn, never inside the timing
            for i in range(warmup):
                r.step(i)
    walls = {name: [] for name in runners}
    sums = {name: defaultdict(float) for name in runners}
    rounds = max(1, min(rounds, steps))
    share = [steps // rounds + (1 if k < steps % rounds else 0) for k in range(rounds)]
    names = list(runners)
    i = warmup
    for rnd, n in enumerate(share):     # the order rotates, so no runner always follows the same one
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            r = runners[name]
            with r.turn():
                for j in range(i, i + n):
                    t0 = time.perf_counter()
                    times = r.step(j)
                    walls[name].append(time.perf_counter() - t0)
                    for k, v in times.items():
                        sums[name][k] += v
        i += n
    out = {}
    for name, r in runners.items():
        out[name] = _summary(walls[name], {k: v / steps for k, v in sums[name].items()}, r.batch)
        out[name].update(r.result())
    return out


def _summary(walls: list[float], times: dict, batch: int) -> dict:
    med = statistics.median(walls)
    return {"batch": batch, "steps": len(walls), "step_s": med, "step_mean_s": sum(walls) / len(walls),
            "samples_per_s": batch / med, "times": times}


def data_parallel(model_name: str, workers: int, threads: int, batch: int, steps: int, warmup: int,
                  backend: str = "shm", seed: int = 0, shape=INPUT) -> dict:
    """One DataParallel configuration measured on its own (calibration, MPI ranks)."""
    runner = DataParallelRunner(model_name, workers, threads, batch, backend, seed, shape=shape)
    try:
        return interleaved({"dp": runner}, steps, warmup, rounds=1)["dp"]
    finally:
        runner.close()


def _rss_mb(pid: int) -> float:
    import psutil
    return psutil.Process(pid).memory_info().rss / 2**20


def rows_by_batch_size(batch_sizes, measure_one, report, json_path: str | None) -> list[dict]:
    """``measure_one(b)`` for each batch size, each row's ``report(row)`` lines printed as it comes;
    then the load average before and after, and every row written to ``json_path`` (if given)."""
    load, rows = os.getloadavg(), []
    for b in batch_sizes:
        rows.append(measure_one(b))
        print("\n".join(report(rows[-1])), flush=True)
    after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {' '.join(f'{x:.2f}' for x in load)}, "
          f"after {' '.join(f'{x:.2f}' for x in after)}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"rows": rows, "load_before": load, "load_after": after}, f, indent=1)
    return rows
