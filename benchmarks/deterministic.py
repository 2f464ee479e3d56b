"""What deterministic mode costs: the same 2-worker pool with ``deterministic=True`` and without.

    python -m benchmarks.deterministic                       # seed-cnn, 2 workers, batch 64 and 256
    python -m benchmarks.deterministic --rounds 10 --json docs/benchmarks/deterministic.json

Both engines are ``DataParallel(workers=2, threads_per_worker=1)`` on the same placed data and
the same random rows, as ``fit`` trains (``place_data`` once, then ``train_rows``), in rounds
that take turns, the order alternating every round. Per batch size: each round's ms per step,
deterministic speed / default speed (median over rounds, and over the whole time), and the
median of each phase the engines report (``compute``: the slowest worker's forward + backward;
``update``: its slot sum + optimizer chunk; ``sync``: the barrier; ``reduce``: the
coordinator's merge). ``--micro-shards`` sets the deterministic run's micro-shard count (by
default the engine's own choice for the batch size). The load average is printed beside the
figures: on a shared machine they are only comparable within one run.
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import time

import numpy as np

from benchmarks.args import positive_int, positive_ints
from benchmarks.measure import rows_by_batch_size
from benchmarks.models import build
from dpnn.workers import DataParallel, PoolNode

ROWS = 8192
ENGINES = ("default", "deterministic")
PHASES = ("compute", "straggler", "sync", "update", "wait", "reduce", "scatter")


def open_engines(model: str, workers: int, micro_shards: int | None, batch: int) -> dict:
    det = {"deterministic": True}
    if "micro_shards" in inspect.signature(PoolNode).parameters:   # the old design has no such option
        det["micro_shards"] = micro_shards
        det["batch_size"] = batch
    return {"default": DataParallel(build(model), workers=workers, threads_per_worker=1),
            "deterministic": DataParallel(build(model), workers=workers, threads_per_worker=1, **det)}


def measure(batch: int, steps: int, rounds: int, workers: int = 2, micro_shards: int | None = None,
            model: str = "seed-cnn", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    X = rng.random((ROWS, 28, 28, 1), dtype=np.float32)
    Y = rng.integers(0, 10, ROWS)
    engines = open_engines(model, workers, micro_shards, batch)
    try:
        for e in engines.values():
            e.place_data(X, Y)
            for _ in range(3):                      # buffers grow, the workers start
                e.train_rows(rng.integers(0, ROWS, batch))
        ms = {k: [] for k in engines}
        phases = {k: [] for k in engines}
        for r in range(rounds):                     # the order alternates from round to round
            for name in (ENGINES if r % 2 == 0 else ENGINES[::-1]):
                t0 = time.perf_counter()
                for _ in range(steps):
                    phases[name].append(engines[name].train_rows(rng.integers(0, ROWS, batch)).times)
                ms[name].append(1e3 * (time.perf_counter() - t0) / steps)
        shards = getattr(engines["deterministic"].node, "slots", None)
    finally:
        for e in engines.values():
            e.close()
    ratio = [d / s for d, s in zip(ms["default"], ms["deterministic"])]    # det speed / default speed
    return {"batch": batch, "workers": workers, "micro_shards": shards, "steps": steps, "rounds": rounds,
            "ms_per_step": ms, "speed": {"median": statistics.median(ratio),
                                         "total": sum(ms["default"]) / sum(ms["deterministic"])},
            "phases_ms": {k: {p: 1e3 * statistics.median(t.get(p, 0.0) for t in v) for p in PHASES}
                          for k, v in phases.items()}}


def report(row: dict) -> list[str]:
    lines = [f"batch {row['batch']}, {row['workers']} workers, {row['micro_shards']} micro-shards: "
             f"{row['rounds']} rounds of {row['steps']} steps, taking turns"]
    for name in ENGINES:
        lines.append(f"  {name:<13} ms/step " + " ".join(f"{t:6.2f}" for t in row["ms_per_step"][name]))
    lines.append(f"  deterministic speed / default speed: median of rounds {row['speed']['median']:.3f}, "
                 f"whole time {row['speed']['total']:.3f}")
    for name in ENGINES:
        lines.append(f"  {name:<13} median ms: " + ", ".join(f"{k} {v:.2f}" for k, v in row["phases_ms"][name].items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.deterministic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=positive_ints, default=[64, 256], help="comma-separated batch sizes")
    p.add_argument("--workers", type=positive_int, default=2, help="workers of both pools (default 2)")
    p.add_argument("--micro-shards", type=positive_int, default=None,
                   help="the deterministic run's micro-shard count (default: the engine's choice)")
    p.add_argument("--steps", type=positive_int, default=40,
                   help="steps per turn at batch 64, scaled down for larger batches (default 40)")
    p.add_argument("--rounds", type=positive_int, default=8, help="turns of each engine (default 8)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    rows_by_batch_size(a.batch_size, lambda b: measure(b, max(1, a.steps * 64 // b), a.rounds, a.workers,
                                                       a.micro_shards), report, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
