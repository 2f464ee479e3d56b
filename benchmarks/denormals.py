"""What denormal optimizer moments cost, with and without flush-to-zero (``benchmarks.steady_state``).

After a few epochs a large share of Adam's first moment is float32 denormals: units that rarely
fire see their moment decay geometrically through the subnormal range (issue 22 counted 166,370
of 421,648 after 5 epochs of seed-cnn). Here the moments are made that way on purpose, 40 % of
the first moment denormal (the second moment, which decays a thousand times slower, stays
normal), and one Adam update and one whole training step (batch 64, one BLAS thread) are timed
against the same with those values zero, in this process, with dpnn's flushing and with IEEE
denormals (``dpnn.set_flush_denormals``), the four cases taking turns.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

import dpnn
from dpnn.engine import LocalEngine
from dpnn.optim import Adam
from dpnn.random import sample_keys

from .measure import synthetic_batch
from .models import build

DENORMAL_SHARE = 0.4


def denormal_moment(size: int, share: float = DENORMAL_SHARE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(m, dead): a first moment with ``share`` of its entries denormal (written as bits, since
    arithmetic would flush them here) and the rest ~1e-4; dead marks the denormal ones."""
    rng = np.random.default_rng(seed)
    dead = rng.random(size) < share
    m = (rng.standard_normal(size) * 1e-4).astype(np.float32)
    bits = rng.integers(1, 1 << 23, size, dtype=np.uint32) | (rng.integers(0, 2, size, dtype=np.uint32) << 31)
    m.view(np.uint32)[dead] = bits[dead]
    return m, dead


def _turns(cases: dict, repeats: int) -> dict:
    """{case: median seconds}: each case's callable (restore, run) timed on run only, in turns."""
    walls = {k: [] for k in cases}
    names = list(cases)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            restore, run, flush = cases[name]
            dpnn.set_flush_denormals(flush)
            restore()
            t0 = time.perf_counter()
            run()
            walls[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in walls.items()}


def denormal_costs(repeats: int = 20, batch: int = 64) -> dict:
    """Median seconds of an Adam update and of a training step, {'adam'|'step': {case: s}}, for
    the cases 'flush, denormal moments', 'flush, zeroed', 'IEEE, denormal moments', 'IEEE, zeroed'."""
    from threadpoolctl import threadpool_limits
    was = dpnn.flush_denormals_enabled()
    model = build("seed-cnn")
    n = model.params.size
    m_den, dead = denormal_moment(n)
    m_zero = np.where(dead, np.float32(0), m_den)
    rng = np.random.default_rng(1)
    v = (rng.random(n, dtype=np.float32) * 1e-8 + 1e-10).astype(np.float32)
    g = np.where(dead, np.float32(0), rng.standard_normal(n).astype(np.float32) * np.float32(1e-3))
    p0 = rng.standard_normal(n).astype(np.float32) * np.float32(0.05)
    opt, p, slot = Adam(), np.empty(n, np.float32), {"m": np.empty(n, np.float32), "v": np.empty(n, np.float32)}
    opt.t = 1000

    def restore_adam(m):
        np.copyto(p, p0), np.copyto(slot["m"], m), np.copyto(slot["v"], v)

    x, y = synthetic_batch(batch)
    keys = sample_keys(0, 0, np.arange(batch))
    engine = LocalEngine(model, threads_per_worker=1)
    out = {}
    try:
        for _ in range(2):
            engine.train_step(x, y, keys)            # creates the optimizer's slots
        params0, state = model.params.copy(), model.optimizer.slots[0]
        v_model = state["v"].copy()

        def restore_step(m):
            np.copyto(model.params, params0), np.copyto(state["m"], m), np.copyto(state["v"], v_model)

        with threadpool_limits(limits=1, user_api="blas"):
            cases = {f"{mode}, {what}": ((lambda mm=mm: restore_adam(mm)), (lambda: opt.update(p, g, slot)), flush)
                     for mode, flush in (("flush", True), ("IEEE", False))
                     for what, mm in (("denormal moments", m_den), ("zeroed", m_zero))}
            out["adam"] = _turns(cases, repeats * 5)
            cases = {name: ((lambda mm=mm: restore_step(mm)), (lambda: engine.train_step(x, y, keys)), flush)
                     for name, mm, flush in (("flush, denormal moments", m_den, True), ("flush, zeroed", m_zero, True),
                                             ("IEEE, denormal moments", m_den, False),
                                             ("IEEE, zeroed", m_zero, False))}
            out["step"] = _turns(cases, repeats)
    finally:
        engine.close()
        dpnn.set_flush_denormals(was)
    out["size"], out["denormal"] = n, int(dead.sum())
    return out


def report(res: dict) -> list[str]:
    """Text lines for the benchmark's output."""
    lines = [f"Denormal moments ({res['denormal']:,} of {res['size']:,} values of Adam's first moment, "
             "one BLAS thread, median ms):"]
    for what, label in (("adam", "Adam update"), ("step", "training step, batch 64")):
        t = res[what]
        lines.append(f"  {label:<26}" + "  ".join(f"{k} {v * 1e3:7.2f}" for k, v in t.items()))
        lines.append(f"  {'':<26}denormal/zeroed: flush {t['flush, denormal moments'] / t['flush, zeroed']:.2f}x, "
                     f"IEEE {t['IEEE, denormal moments'] / t['IEEE, zeroed']:.2f}x")
    return lines
