"""The coordinator's per-step work with copied batches and with data placed in shared memory.

    python -m benchmarks.data_path                      # seed-cnn, batch 256, 28x28x1 and 32x32x3
    python -m benchmarks.data_path --batch-size 64 --steps 40 --inputs 28x28x1,64x64x3

Copied batches (``train_step(X[idx], ...)``, what ``fit`` did before): the coordinator gathers
the rows and copies them into shared memory, so its work grows with the image size. Placed
data (``place_data`` once, then ``train_rows(idx)``, what ``fit`` does now): it writes only
the indices and keys; each worker gathers its own rows. Both run in one interleaved loop
(turns alternate), on the same pool. Two figures per path, medians over the steps, in
milliseconds: ``data``, the coordinator's own work on the batch (gathering the rows and
copying them into shared memory, or writing the indices); ``before send``, everything before
the step's message is on its way (checks, data, layout, the send itself: on a machine with
few cores a woken worker can preempt the coordinator while it sends, which lands here).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.models import build
from benchmarks.scaling import input_shape_arg
from dpnn.workers import DataParallel


def measure(shape: tuple[int, int, int], batch: int, steps: int, workers: int) -> dict:
    """Median coordinator milliseconds per step for both paths at one input shape."""
    rng = np.random.default_rng(0)
    X = rng.random((max(4 * batch, 1024),) + shape, dtype=np.float32)
    Y = rng.integers(0, 10, len(X))
    model = build("seed-cnn", (1,) + shape)
    copied, placed, data = [], [], {"copied": [], "placed": []}
    with DataParallel(model, workers=workers, threads_per_worker=1) as dp:
        dp.place_data(X, Y)
        timed(dp.node.batches, "load_arrays", data["copied"])
        timed(dp.node.batches, "load_rows", data["placed"])
        for step in range(steps + 2):
            idx = rng.choice(len(X), batch, replace=False)
            keys = np.arange(batch, dtype=np.uint64)
            for turn in ((0, 1) if step % 2 else (1, 0)):
                if turn == 0:                          # gather the rows, then train_step copies them
                    t0 = time.perf_counter()
                    xb, yb = X[idx], Y[idx]
                    gather = time.perf_counter() - t0
                    stats = dp.train_step(xb, yb, keys)
                    ms = 1e3 * (gather + stats.times["scatter"])
                    data["copied"][-1] += gather
                else:
                    stats = dp.train_rows(idx, keys)
                    ms = 1e3 * stats.times["scatter"]
                if step >= 2:                          # the first steps grow the buffers
                    (copied if turn == 0 else placed).append(ms)
        assert dp.node.batches.rows_copied == (steps + 2) * batch, "only the copied path copies rows"
    return {"input": "x".join(map(str, shape)), "copied_ms": statistics.median(copied),
            "placed_ms": statistics.median(placed),
            "copied_data_ms": 1e3 * statistics.median(data["copied"][2:]),
            "placed_data_ms": 1e3 * statistics.median(data["placed"][2:])}


def timed(obj, name: str, into: list) -> None:
    """Wrap ``obj.name`` so that each call's seconds are appended to ``into``."""
    method = getattr(obj, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t0)
    setattr(obj, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_path", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", default="28x28x1,32x32x3", help="comma-separated HxWxC input shapes")
    p.add_argument("--batch-size", type=int, default=256, help="global batch size")
    p.add_argument("--steps", type=int, default=30, help="measured steps per path and shape")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    a = p.parse_args(argv)
    try:
        shapes = [input_shape_arg(s) for s in a.inputs.split(",")]
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if a.batch_size < 1 or a.steps < 1 or a.workers < 2:
        p.error("--batch-size and --steps must be >= 1 and --workers >= 2")
    print(f"coordinator ms per step (median of {a.steps}), seed-cnn, batch {a.batch_size}, "
          f"{a.workers} workers")
    print(f"{'input':>10} {'copied: data':>13} {'before send':>12} {'placed: data':>13} {'before send':>12}")
    for shape in shapes:
        r = measure(shape, a.batch_size, a.steps, a.workers)
        print(f"{r['input']:>10} {r['copied_data_ms']:>13.3f} {r['copied_ms']:>12.3f} "
              f"{r['placed_data_ms']:>13.3f} {r['placed_ms']:>12.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
