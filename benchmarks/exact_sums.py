"""Two ways to add micro-shard gradients to the same bits however the work was cut (issue 29).

    python -m benchmarks.exact_sums                          # seed-cnn, batch 64, 8 and 32 micro-shards
    python -m benchmarks.exact_sums --json docs/benchmarks/exact_sums.json

The gradients are seed-cnn's real ones: M micro-shards of a synthetic batch, each computed as a
deterministic worker computes it. Contestants, each adding the same (M, P) float32 slots:

- ``ordered``: float32, slot 0 + slot 1 + ... in index order (what deterministic mode does; across
  ranks the partial sum travels along the ranks, ``dpnn.chain``);
- ``fixed-point``: each value scaled by a power of two chosen per 4096-value block from the
  block's largest magnitude over all slots (the scale every rank would agree on with a MAX
  all-reduce), floored to an integer, the integers added exactly (float64 holding integers below
  2**53: any order, any grouping, any MPI algorithm gives the same bits), scaled back and rounded
  once to float32.

For each: the error against the float64 sum of the same slots, in float32 units in the last place
(ulp) of the exact result (mean, 99.9th percentile, max) and relative to the gradient's norm, and
the time to add the slots in one process with one thread (best of ``--reps``).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks.args import positive_int, positive_ints
from benchmarks.measure import synthetic_batch
from benchmarks.models import build
from dpnn.recipe import add_slots, run_shard, shard_bounds

BLOCK = 4096      # values sharing one fixed-point scale
MANTISSA = 53     # float64 holds integers below 2**53 exactly


def micro_shard_gradients(model_name: str, batch: int, micro_shards: int) -> np.ndarray:
    """(M, P) float32: each micro-shard's d(sum loss)/dθ / batch, as a deterministic worker makes it."""
    model = build(model_name)
    x, y = synthetic_batch(batch)
    keys = np.arange(batch, dtype=np.uint64)
    slots = np.zeros((micro_shards, model.params.size), np.float32)
    grads = model.grads
    for j, (a, b) in enumerate(shard_bounds(batch, micro_shards)):
        model.bind_grads(slots[j])
        run_shard(model, j, x[a:b], y[a:b], batch, keys[a:b], None)
    model.bind_grads(grads)
    return slots


def ordered(slots: np.ndarray, out: np.ndarray) -> np.ndarray:
    return add_slots(slots, out)


def fixed_point(slots: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Exact integer sum at a per-block power-of-two scale, rounded once."""
    M, P = slots.shape
    head = int(np.ceil(np.log2(max(M, 1)))) + 1             # headroom: the sum of M values, and the sign
    work = np.empty((M, BLOCK), np.float64)
    for lo in range(0, P, BLOCK):
        hi = min(P, lo + BLOCK)
        block = slots[:, lo:hi]
        top = float(np.abs(block).max())
        shift = MANTISSA - head - (np.frexp(top)[1] if top > 0 else 0)
        w = work[:, :hi - lo]
        np.multiply(block, np.ldexp(1.0, shift), out=w)       # exact: a power of two
        np.floor(w, out=w)                                    # onto the block's integer grid
        out[lo:hi] = w.sum(axis=0) * np.ldexp(1.0, -shift)    # exact sum, then one rounding
    return out


CONTESTANTS = {"ordered": ordered, "fixed-point": fixed_point}


def errors(got: np.ndarray, exact: np.ndarray) -> dict:
    """Error in float32 ulps of the exact value (where it is a normal float32), and in norm."""
    err = np.abs(got.astype(np.float64) - exact)
    normal = np.abs(exact) >= np.finfo(np.float32).tiny           # zeros (dead ReLUs) and denormals aside
    in_ulps = err[normal] / np.spacing(np.abs(exact[normal]).astype(np.float32)).astype(np.float64)
    return {"mean_ulp": float(in_ulps.mean()), "p999_ulp": float(np.quantile(in_ulps, 0.999)),
            "max_ulp": float(in_ulps.max()), "error_over_norm": float(np.linalg.norm(err) / np.linalg.norm(exact))}


def measure(model_name: str, batch: int, micro_shards: int, reps: int) -> dict:
    slots = micro_shard_gradients(model_name, batch, micro_shards)
    exact = slots.astype(np.float64).sum(axis=0)
    out = np.empty(slots.shape[1], np.float32)
    row = {"model": model_name, "batch": batch, "micro_shards": micro_shards, "P": slots.shape[1]}
    for name, fn in CONTESTANTS.items():
        seconds = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(slots, out)
            seconds.append(time.perf_counter() - t0)
        row[name] = {"ms": 1e3 * min(seconds), **errors(out, exact)}
        perm = np.random.default_rng(0).permutation(micro_shards)
        again = fn(slots[perm], np.empty_like(out))
        row[name]["same_bits_in_any_order"] = bool(np.array_equal(again, out))
    return row


def report(row: dict) -> list[str]:
    lines = [f"{row['model']}, batch {row['batch']}, {row['micro_shards']} micro-shards, P = {row['P']:,}"]
    for name in CONTESTANTS:
        r = row[name]
        lines.append(f"  {name:<12} {r['ms']:7.2f} ms   error vs float64: mean {r['mean_ulp']:.3f} ulp, "
                     f"99.9% {r['p999_ulp']:.2f} ulp, max {r['max_ulp']:.3g} ulp, "
                     f"|err|/|sum| {r['error_over_norm']:.2e}; "
                     f"slots shuffled: {'same' if r['same_bits_in_any_order'] else 'different'} bits")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.exact_sums", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=positive_int, default=64, help="global batch (default 64)")
    p.add_argument("--micro-shards", type=positive_ints, default=[8, 32], help="comma-separated counts")
    p.add_argument("--reps", type=positive_int, default=20, help="timed repetitions, best kept (default 20)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    load = os.getloadavg()
    rows = [measure("seed-cnn", a.batch_size, m, a.reps) for m in a.micro_shards]
    for row in rows:
        print("\n".join(report(row)))
    print(f"load average (1, 5, 15 min) {' '.join(f'{x:.2f}' for x in load)}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "load": load}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
