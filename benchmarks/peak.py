"""The machine's float32 GEMM peak, measured with BLAS limited to a given number of threads.

This is the physical limit the benchmarks compare against: a training step cannot run
faster than its GEMM FLOPs at this rate. Measured on square float32 products, best of
several repeats (the least disturbed run on a shared machine).
"""
from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits


def gemm_gflops(n: int = 1024, threads: int = 1, repeats: int = 5, min_time: float = 0.2) -> float:
    """Best observed GFLOP/s of an (n, n) @ (n, n) float32 matmul with ``threads`` BLAS threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    best = 0.0
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)                                  # warm up: pack buffers, threads
        for _ in range(repeats):
            calls, t0 = 0, time.perf_counter()
            while True:
                np.matmul(a, b, out=out)
                calls += 1
                dt = time.perf_counter() - t0
                if dt >= min_time:
                    break
            best = max(best, 2.0 * n ** 3 * calls / dt / 1e9)
    return best


def peak_per_core(n: int = 1024, repeats: int = 5) -> float:
    """float32 GEMM GFLOP/s of one core (BLAS limited to one thread)."""
    return gemm_gflops(n, threads=1, repeats=repeats)


if __name__ == "__main__":
    print(f"float32 GEMM peak, 1 thread: {peak_per_core():.1f} GFLOP/s")
