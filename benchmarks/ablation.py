"""What each of dpnn's execution choices is worth: every variant of a training step, measured
in turns in one process (one BLAS thread), against the default.

    python -m benchmarks.ablation                     # seed-cnn, shards of 32, 64 and 256
    python -m benchmarks.ablation --batch-size 64 --steps 40

Variants (each changes one thing; results are the same up to float rounding):
- ``relu before pool``: layers run in the written order (the default runs a ReLU that
  precedes a max pool after the pool, ``dpnn.model.execution_order``);
- ``im2col input grad``: stride-1 input gradients through im2col + one GEMM instead of one
  GEMM per window offset added at its shift (``Conv2D.shifted_dx_from = None``);
- ``whole shard``: no micro-batches (``micro_batch=None``; the default cuts shards above 64).
- ``whole-batch conv backward``: a wide stride-1 Conv2D's backward (ReLU mask, weight and
  input gradient) on the whole micro-batch at once instead of pieces of
  ``Conv2D.backward_chunk`` samples (``backward_chunk = None``).
Per kernel: im2col of a one-channel input as one strided copy vs one copy per window offset.
Also the gradient norm (block sums of squares added exactly, as the sharded step needs, vs
one float64 accumulation), the Adam update (pass after pass over cache-sized blocks vs each
pass over the whole vector), and (``--workers N``) the update inside the step, sharded over N
workers, vs the coordinator's update after it, both pools taking turns: samples/s, the
update's time and the serial fraction (step time in which no worker computes).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from dpnn import Conv2D
from dpnn.im2col import im2col_padded, windows
from dpnn.optim import Adam, sum_of_squares
from dpnn.random import sample_keys
from dpnn.recipe import shard_gradients

from .measure import DataParallelRunner, interleaved, synthetic_batch
from .models import MODELS, build
from .scaling_report import serial_fraction


def _set_conv(m, **attrs) -> None:
    for layer in m.layers:
        if isinstance(layer, Conv2D):
            for k, v in attrs.items():
                setattr(layer, k, v)


VARIANTS = {   # name: how the model differs from the default
    "default": lambda m: None,
    "relu before pool": lambda m: setattr(m, "execution_order", list(range(len(m.layers)))),
    "im2col input grad": lambda m: _set_conv(m, shifted_dx_from=None),
    "whole shard": lambda m: setattr(m, "micro_batch", None),
    "whole-batch conv backward": lambda m: _set_conv(m, backward_chunk=None),
}


def variant(model_name: str, name: str):
    """A built seed-cnn-like model with one execution choice switched off (or none: 'default')."""
    m = build(model_name)
    VARIANTS[name](m)
    return m


def step_rates(model_name: str, batch: int, names: list[str], steps: int, rounds: int) -> dict:
    """{variant: [samples/s of each round]}: each round's median step, variants in turns."""
    x, y = synthetic_batch(batch)
    keys = sample_keys(0, 0, np.arange(batch))
    models = {n: variant(model_name, n) for n in names}
    per_round = {n: [] for n in names}
    with threadpool_limits(limits=1, user_api="blas"):
        for m in models.values():
            for _ in range(2):
                shard_gradients(m, x, y, batch, keys)
        for r in range(rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                walls = []
                for _ in range(steps):
                    t0 = time.perf_counter()
                    shard_gradients(models[n], x, y, batch, keys)
                    walls.append(time.perf_counter() - t0)
                per_round[n].append(batch / statistics.median(walls))
    return per_round


def speedup(default: list[float], other: list[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of the per-round ratios default / other."""
    ratios = [d / o for d, o in zip(default, other)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q = statistics.quantiles(ratios, n=4)
    return q[1], q[0], q[2]


def one_channel_im2col_times(batch: int, repeats: int = 100) -> dict:
    """Median seconds of seed-cnn's first im2col (one channel, 28x28, 3x3): one strided copy
    of every window vs :func:`im2col_padded` (one copy per window offset)."""
    xp = np.random.default_rng(0).random((batch, 30, 30, 1), dtype=np.float32)
    cols = np.empty((batch * 28 * 28, 9), np.float32)

    def one_copy():
        cols.reshape(batch, 28, 28, 3, 3, 1)[...] = windows(xp, 3, 3, 1, 28, 28)

    ways = {"one strided copy": one_copy,
            "per window offset (dpnn)": lambda: im2col_padded(xp, 3, 3, 1, 28, 28, out=cols)}
    return median_turns(ways, repeats)


def median_turns(ways: dict, repeats: int) -> dict:
    """Median seconds of each callable in ``ways``, the callables taking turns ``repeats`` times."""
    out = {k: [] for k in ways}
    for _ in range(repeats):
        for k, f in ways.items():
            t0 = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in out.items()}


def norm_times(size: int, repeats: int = 200) -> dict:
    """Median seconds of the gradient norm's sum of squares over ``size`` float32 values."""
    g = np.random.default_rng(0).standard_normal(size, dtype=np.float32)
    ways = {"float32 block sums, added exactly (dpnn)": lambda: sum_of_squares(g),
            "float64 accumulation": lambda: float(np.einsum("i,i->", g, g, dtype=np.float64))}
    return median_turns(ways, repeats)


def adam_times(size: int, repeats: int = 100) -> dict:
    """Median seconds of one Adam update of ``size`` float32 parameters: dpnn's, pass after pass
    over cache-sized blocks, against the same passes each over the whole vector."""
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(size, dtype=np.float32), rng.standard_normal(size, dtype=np.float32)
    opt, slot = Adam(), {"m": np.zeros(size, np.float32), "v": np.zeros(size, np.float32)}
    opt.t, tmp = 1, np.empty(size, np.float32)
    whole = (np.float32(opt.lr * np.sqrt(1 - opt.beta2) / (1 - opt.beta1)),
             np.float32(opt.eps * np.sqrt(1 - opt.beta2)))
    m, v = slot["m"], slot["v"]
    ways = {"cache blocks (dpnn)": lambda: opt.update(p, g, slot),
            "whole vector per pass": lambda: opt._update_block(p, g, m, v, p, m, v, tmp, *whole)}
    return median_turns(ways, repeats)


def optimizer_placement(model_name: str, workers: int, batch: int, steps: int, rounds: int) -> dict:
    """{'coordinator'|'sharded': row} for ``workers`` workers, the two pools in turns."""
    runners = {}
    try:
        for name, shard in (("coordinator", False), ("sharded", True)):
            runners[name] = DataParallelRunner(model_name, workers, 1, batch, shard_optimizer=shard)
        return interleaved(runners, steps * rounds, 3, rounds)
    finally:
        for r in runners.values():
            r.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="seed-cnn", choices=sorted(MODELS), help="model (default seed-cnn)")
    p.add_argument("--batch-size", default="32,64,256", help="shard sizes, comma-separated (default 32,64,256)")
    p.add_argument("--steps", type=int, default=2, help="steps per variant per round (default 2)")
    p.add_argument("--rounds", type=int, default=40,
                   help="rounds of turns (default 40): short turns, so drift hits every variant alike")
    p.add_argument("--workers", type=int, default=2, help="workers for the optimizer-placement "
                   "comparison at global batch 64; 0 skips it (default 2)")
    a = p.parse_args(argv)
    try:
        batches = [int(b) for b in a.batch_size.split(",")]
    except ValueError:
        p.error(f"--batch-size must be comma-separated ints, got {a.batch_size!r}")
    if min(batches) < 1 or a.steps < 1 or a.rounds < 1 or a.workers < 0:
        p.error("--batch-size, --steps and --rounds must be >= 1, --workers >= 0")
    names = list(VARIANTS)
    print(f"{a.model}, one thread, samples/s (median of {a.rounds} rounds of {a.steps} steps, in turns)")
    for b in batches:
        per_round = step_rates(a.model, b, names, a.steps, a.rounds)
        rate = {n: statistics.median(v) for n, v in per_round.items()}
        cells = []
        for n in names[1:]:
            med, lo, hi = speedup(per_round["default"], per_round[n])
            cells.append(f"{n} {rate[n]:,.0f} ({med:.2f}x, {lo:.2f}-{hi:.2f})")
        same = "; 'whole shard' runs the default's code at this size: its x is the noise" \
            if b <= (build(a.model).micro_batch or 0) else ""
        print(f"  shard {b:>4}: default {rate['default']:,.0f}; {'; '.join(cells)}{same}")
    print("  (x = the default's speed over the variant's: median and quartiles of the per-round ratios)")
    t = one_channel_im2col_times(64)
    print("one-channel im2col, batch 64: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in t.items()))
    size = build(a.model).params.size
    t = norm_times(size)
    print(f"gradient norm over {size:,} floats: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in t.items()))
    t = adam_times(size)
    print(f"Adam update of {size:,} floats: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in t.items()))
    if a.workers:
        rows = optimizer_placement(a.model, a.workers, 64, a.steps, a.rounds)
        print(f"the update with {a.workers} workers, batch 64: " + "; ".join(
            f"{k}: {r['samples_per_s']:,.0f} samples/s, slot sum + optimizer "
            f"{(r['times']['update'] + r['times']['reduce'] + r['times']['optimizer']) * 1e3:.2f} ms, "
            f"serial {serial_fraction(r['step_mean_s'], r['times']):.1%}" for k, r in rows.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
