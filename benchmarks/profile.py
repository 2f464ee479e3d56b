"""Where a training step's time goes, and what the machine allows.

    python -m benchmarks.profile --batch-size 32          # one worker's shard at global batch 64
    python -m benchmarks.profile --batch-size 64 --model seed-cnn --json profile.json

Three measurements, each a median over repeated runs in this process:

1. per layer, in the order the model executes (ReLU after a following max pool), the
   forward and backward time of one training step on one core, and its share of the step;
2. for each GEMM of a Conv2D/Dense layer at this batch, its rate alone (float32, one
   thread) against the machine's square-GEMM peak: how far the layer's shapes allow BLAS
   to get;
3. a memory-bound stream (copy 32 MB) and a cache-resident GEMM, run on 1 core and then on
   every core at once (one process per core, started together): how much of the machine
   scales when all workers compute. Memory-bound layers (im2col, pooling, elementwise) are
   what keeps N workers below N times one.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections import defaultdict

import numpy as np
from threadpoolctl import threadpool_limits

from dpnn import Conv2D, Dense
from dpnn.layers.conv import SHIFTED_DX_FROM
from dpnn.threads import usable_cores
from dpnn.random import sample_keys

from . import peak
from .measure import synthetic_batch
from .models import MODELS, build


def layer_times(model_name: str, batch: int, steps: int = 20) -> list[dict]:
    """Median forward/backward seconds per layer of one training step, one BLAS thread."""
    m = build(model_name)
    x, y = synthetic_batch(batch)
    keys = sample_keys(0, 0, np.arange(batch))
    times = {"forward": defaultdict(list), "backward": defaultdict(list)}
    hook = lambda i, layer, phase, s: times[phase][i].append(s)          # noqa: E731
    fwd, bwd = times["forward"], times["backward"]
    with threadpool_limits(limits=1, user_api="blas"):
        for step in range(steps + 3):
            out = m.forward(x, training=True, sample_keys=keys, hook=hook)
            m.loss.forward(out, y)
            m.backward(m.loss.backward(), hook=hook)
    rows = []
    for i in m.execution_order:
        f, b = statistics.median(fwd[i][3:]), statistics.median(bwd[i][3:]) if bwd[i] else 0.0
        rows.append({"index": i, "layer": repr(m.layers[i]), "forward_s": f, "backward_s": b})
    total = sum(r["forward_s"] + r["backward_s"] for r in rows)
    for r in rows:
        r["share"] = (r["forward_s"] + r["backward_s"]) / total
    return rows


def gemm_shapes(model_name: str, batch: int) -> list[tuple[str, int, int, int]]:
    """(what, M, K, N) of every GEMM a training step runs for the model's Conv2D/Dense layers.

    A wide stride-1 Conv2D's backward GEMMs are listed at the size of one piece of
    ``backward_chunk`` samples (the step runs them once per piece)."""
    m = build(model_name)
    first = next(i for i, layer in enumerate(m.layers) if layer.params)
    out = []
    for i, layer in enumerate(m.layers):
        if isinstance(layer, Conv2D):
            _, oh, ow, f = layer.output_shape
            kh, kw, c, _ = layer.params["W"].shape
            rows, k = batch * oh * ow, kh * kw * c
            k += layer._fold_bias(k)                     # the bias rides in the GEMM as a ones column
            out.append((f"{i} Conv2D forward", rows, k, f))
            _, h, w, _ = layer.input_shape
            if i != first and layer.stride == 1 and f >= SHIFTED_DX_FROM:
                n = min(batch, layer.backward_chunk or batch)    # backward in pieces of n samples
                hq, wq = h + kh - 1, w + kw - 1
                rows_q = n * hq * wq - (kh - 1) * wq - (kw - 1)  # one GEMM per window offset
                out += [(f"{i} Conv2D weight grad", k, n * oh * ow, f),      # per piece
                        (f"{i} Conv2D input grad, {kh * kw}x", rows_q, f, c)]
            else:
                out.append((f"{i} Conv2D weight grad", k, rows, f))
                if i != first:
                    out.append((f"{i} Conv2D input grad", batch * h * w, kh * kw * f, c))
        elif isinstance(layer, Dense):
            d, u = layer.params["W"].shape
            out += [(f"{i} Dense forward", batch, d, u), (f"{i} Dense weight grad", d, batch, u)]
            if i != first:
                out.append((f"{i} Dense input grad", batch, u, d))
    return out


def gemm_rate(M: int, K: int, N: int, min_time: float = 0.1) -> float:
    """GFLOP/s of an (M, K) @ (K, N) float32 product, one thread, median of 5 timed runs."""
    rng = np.random.default_rng(0)
    a, b = rng.random((M, K), dtype=np.float32), rng.random((K, N), dtype=np.float32)
    out = np.empty((M, N), np.float32)
    rates = []
    with threadpool_limits(limits=1, user_api="blas"):
        np.matmul(a, b, out=out)
        for _ in range(5):
            calls, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < min_time:
                np.matmul(a, b, out=out)
                calls += 1
            rates.append(2.0 * M * K * N * calls / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def _kernel(kind: str, cpu: int | None, barrier, results) -> None:
    """One process of the concurrency test: 20 synchronised rounds of a stream or a GEMM."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    rng = np.random.default_rng(cpu or 0)
    if kind == "stream":
        src = rng.random(8_000_000, dtype=np.float32)                     # 32 MB: past the caches
        dst = np.empty_like(src)
        work, amount = (lambda: np.copyto(dst, src)), 2 * src.nbytes / 1e9          # GB moved
    else:
        a, b = rng.random((384, 384), dtype=np.float32), rng.random((384, 384), dtype=np.float32)
        work, amount = (lambda: [a @ b for _ in range(20)]), 20 * 2 * 384 ** 3 / 1e9  # GFLOP, in cache
    times = []
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(20):
            barrier.wait()
            t0 = time.perf_counter()
            work()
            times.append(time.perf_counter() - t0)
    results.put(amount / statistics.median(times[5:]))


def concurrency(kind: str, procs: int) -> float:
    """Per-process rate (GB/s for 'stream', GFLOP/s for 'gemm') with ``procs`` processes at once."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None] * procs
    ps = [ctx.Process(target=_kernel, args=(kind, cpus[k % len(cpus)], barrier, results))
          for k in range(procs)]
    for p in ps:
        p.start()
    try:
        rates = [results.get(timeout=300) for _ in ps]
    finally:
        for p in ps:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return statistics.median(rates)


def all_core_scaling(cores: int) -> dict:
    """{'gemm', 'stream'}: throughput of every core at once over one core's (1.0 to ``cores``)."""
    out = {}
    for kind in ("gemm", "stream"):
        out[kind] = cores * concurrency(kind, cores) / concurrency(kind, 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="seed-cnn", choices=sorted(MODELS), help="model (default seed-cnn)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step on one core (default 32, "
                   "a worker's shard of global batch 64 on 2 workers)")
    p.add_argument("--steps", type=int, default=20, help="timed steps for the layer profile (default 20)")
    p.add_argument("--no-concurrency", action="store_true", help="skip the 1-core vs all-cores test")
    p.add_argument("--json", help="write every measurement to this JSON file")
    a = p.parse_args(argv)
    if a.batch_size < 1 or a.steps < 1:
        p.error("--batch-size and --steps must be >= 1")
    out: dict = {"model": a.model, "batch": a.batch_size}
    pk = out["peak_gflops_per_core"] = peak.peak_per_core()
    rows = out["layers"] = layer_times(a.model, a.batch_size, a.steps)
    step = sum(r["forward_s"] + r["backward_s"] for r in rows)
    print(f"{a.model}, batch {a.batch_size}, one thread: {step * 1e3:.1f} ms per step "
          f"({a.batch_size / step:,.0f} samples/s); float32 GEMM peak {pk:.1f} GFLOP/s per core\n")
    print(f"{'layer (execution order)':<58}{'forward ms':>11}{'backward ms':>12}{'share':>7}")
    for r in rows:
        print(f"{r['index']:>2} {r['layer'][:55]:<55}{r['forward_s'] * 1e3:>11.2f}{r['backward_s'] * 1e3:>12.2f}"
              f"{r['share']:>7.0%}")
    print(f"\n{'GEMM (conv bwd: a piece)':<26}{'M x K x N':>22}{'GFLOP/s':>9}{'% peak':>8}")
    out["gemms"] = []
    for what, M, K, N in gemm_shapes(a.model, a.batch_size):
        rate = gemm_rate(M, K, N)
        out["gemms"].append({"gemm": what, "M": M, "K": K, "N": N, "gflops": rate})
        print(f"{what:<26}{f'{M} x {K} x {N}':>22}{rate:>9.1f}{rate / pk:>8.0%}")
    if not a.no_concurrency:
        cores = usable_cores()
        print(f"\nconcurrency: the same kernel on 1 core, then on all {cores} at once (per-process rate)")
        out["concurrency"] = {}
        for kind, unit in (("stream", "GB/s"), ("gemm", "GFLOP/s")):
            one, every = concurrency(kind, 1), concurrency(kind, cores)
            out["concurrency"][kind] = {"one": one, "all": every, "cores": cores}
            print(f"  {kind:<7} 1 core {one:6.1f} {unit}; {cores} cores {every:6.1f} {unit} each "
                  f"-> {cores * every / one:.2f}x one core in total")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
