"""A 1-worker pool against the same step in this process (issue 22, point 3).

    python -m benchmarks.one_worker                          # seed-cnn, batch 64 and 256
    python -m benchmarks.one_worker --batch-size 64 --steps 40 --rounds 10 --json one_worker.json

Both run one BLAS thread (``LocalEngine(threads_per_worker=1)`` and ``DataParallel(workers=1,
threads_per_worker=1)``) on the same placed data and the same random rows, as ``fit`` trains
(``place_data`` once, then ``train_rows``), in rounds that take turns, the order rotating every
round. A second pool whose coordinator blocks on the pipe until the reply (as before it learnt
to wait awake) shows what waking costs. Per batch size: each round's ms per step, each pool's
speed relative to the process (median over rounds, and over the whole time), the median of each phase the engines report
(``compute``: forward + backward; ``wait``: the coordinator's wait beyond the worker's own time,
that is signalling; ``reduce``, ``optimizer``, ``scatter``), and minor page faults per step in
the process that computes (this one, or the worker).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from benchmarks.args import positive_int, positive_ints
from benchmarks.measure import rows_by_batch_size
from benchmarks.models import build
from dpnn.engine import LocalEngine
from dpnn.workers import DataParallel

ROWS = 8192
POOLS = ("pool", "pool, asleep")     # the second: its coordinator blocks on the pipe (the old wait)


def minor_faults(pid: int) -> int:
    """Minor page faults of process ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def measure(batch: int, steps: int, rounds: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    X = rng.random((ROWS, 28, 28, 1), dtype=np.float32)
    Y = rng.integers(0, 10, ROWS)
    engines = {name: DataParallel(build("seed-cnn"), workers=1, threads_per_worker=1) for name in POOLS}
    engines["process"] = LocalEngine(build("seed-cnn"), threads_per_worker=1)
    try:
        for e in engines.values():
            e.place_data(X, Y)
            for _ in range(3):                      # buffers grow, the worker starts
                e.train_rows(rng.integers(0, ROWS, batch))
        engines["pool, asleep"].node._awake = False     # the coordinator blocks until the reply
        pids = {k: e.node.pool.pids[0] if k in POOLS else os.getpid() for k, e in engines.items()}
        ms = {k: [] for k in engines}
        phases = {k: [] for k in engines}
        faults = dict.fromkeys(engines, 0)
        names = list(engines)
        for r in range(rounds):                     # the order rotates from round to round
            for name in names[r % len(names):] + names[:r % len(names)]:
                f0, t0 = minor_faults(pids[name]), time.perf_counter()
                for _ in range(steps):
                    phases[name].append(engines[name].train_rows(rng.integers(0, ROWS, batch)).times)
                ms[name].append(1e3 * (time.perf_counter() - t0) / steps)
                faults[name] += minor_faults(pids[name]) - f0
    finally:
        for e in engines.values():
            e.close()
    speed = {k: {"median": statistics.median(p / q for p, q in zip(ms["process"], ms[k])),
                 "total": sum(ms["process"]) / sum(ms[k])} for k in POOLS}
    return {"batch": batch, "steps": steps, "rounds": rounds, "ms_per_step": ms, "speed": speed,
            "phases_ms": {k: {p: 1e3 * statistics.median(t.get(p, 0.0) for t in v)
                              for p in ("compute", "wait", "reduce", "optimizer", "scatter")}
                          for k, v in phases.items()},
            "faults_per_step": {k: v / (rounds * steps) for k, v in faults.items()}}


def report(row: dict) -> list[str]:
    lines = [f"batch {row['batch']}: {row['rounds']} rounds of {row['steps']} steps, taking turns"]
    order = ("process", *POOLS)
    for name in order:
        lines.append(f"  {name:<13} ms/step " + " ".join(f"{t:6.2f}" for t in row["ms_per_step"][name]))
    for name in POOLS:
        lines.append(f"  {name} speed / process speed: median of rounds {row['speed'][name]['median']:.3f}, "
                     f"whole time {row['speed'][name]['total']:.3f}")
    for name in order:
        lines.append(f"  {name:<13} median ms: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in row["phases_ms"][name].items())
                     + f"; minor faults/step {row['faults_per_step'][name]:.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.one_worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=positive_ints, default=[64, 256], help="comma-separated batch sizes")
    p.add_argument("--steps", type=positive_int, default=40,
                   help="steps per turn at batch 64, scaled down for larger batches (default 40)")
    p.add_argument("--rounds", type=positive_int, default=10, help="turns of each engine (default 10)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    rows_by_batch_size(a.batch_size, lambda b: measure(b, max(1, a.steps * 64 // b), a.rounds), report, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
