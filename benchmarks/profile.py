"""Where a training step's time goes, and what the machine allows.

    python -m benchmarks.profile --batch-size 32          # one worker's shard at global batch 64
    python -m benchmarks.profile --batch-size 64 --model seed-cnn --json profile.json
    python -m benchmarks.profile --model resnet --image-size 224 --channels 3 --batch-size 16 --steps 3

Three measurements, each a median over repeated runs in this process:

1. the time budget of one training step on one thread, layer by layer, dpnn beside PyTorch
   (``benchmarks.torch_ref``, same model and batch; dpnn alone when torch is not installed):
   each layer's forward and backward, the loss, the optimizer step and what no hook saw,
   with dpnn/PyTorch ratios. dpnn's layers are timed by ``Model.forward``/``backward``'s hook,
   PyTorch's by module and tensor hooks (see ``ClockedTorchStep``); both steps, with hooks
   and without, take turns step by step;
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
from typing import ContextManager, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from dpnn.placement import usable_cores
from dpnn.random import sample_keys
from dpnn.recipe import loss_gradient

from . import peak, torch_ref
from .gemms import gemm_rate, gemm_shapes
from .measure import INPUT, LocalRunner, TorchRunner, interleaved, synthetic_batch
from .models import MODELS, build


class StepClock(Protocol):
    """One framework's training step on a fixed batch, timed part by part.

    ``step(i)`` runs step ``i`` and returns {'forward': [s], 'backward': [s]} by layer index,
    'loss': s (forward and backward) and 'optimizer': s; ``threads_set()`` is the context
    in which steps run on one thread; ``names`` and ``execution_order`` describe the layers.
    """
    batch: int
    names: list[str]
    execution_order: list[int]

    def threads_set(self) -> ContextManager: ...
    def step(self, i: int) -> dict: ...


class DpnnClock:
    """dpnn's training step on one BLAS thread, layers timed by Model's hook (a :class:`StepClock`).

    The engine's step: forward and backward over the pieces of ``Model.micro_batches``, the
    loss gradient of :func:`dpnn.recipe.loss_gradient`, then ``apply_gradients``. A later
    piece's gradient is not added to the first's (timing only: the plain step does that).
    """

    def __init__(self, model_name: str, batch: int, seed: int = 0, shape=INPUT) -> None:
        self.model = build(model_name, (1,) + tuple(shape), seed=seed)
        self.x, self.y = synthetic_batch(batch, seed, shape)
        self.batch, self.seed = batch, seed
        self.names = [repr(layer) for layer in self.model.layers]
        self.execution_order = self.model.execution_order

    def threads_set(self) -> ContextManager:
        return threadpool_limits(limits=1, user_api="blas")

    def step(self, i: int) -> dict:
        m, n, clock = self.model, self.batch, time.perf_counter
        keys = sample_keys(self.seed, i, np.arange(n))
        parts = {"forward": [0.0] * len(m.layers), "backward": [0.0] * len(m.layers), "loss": 0.0}

        def hook(k, layer, phase, seconds):
            parts[phase][k] += seconds
        for a, b in m.micro_batches(n):
            out = m.forward(self.x[a:b], training=True, sample_keys=keys[a:b], hook=hook)
            t0 = clock()
            _, grad = loss_gradient(m.loss, out, self.y[a:b], n)
            parts["loss"] += clock() - t0
            m.backward(grad, hook=hook)
        t0 = clock()
        m.apply_gradients()
        parts["optimizer"] = clock() - t0
        return parts


class Clocked:
    """A :class:`StepClock` as a :func:`measure.interleaved` runner; keeps each timed step's parts."""

    def __init__(self, clock: StepClock, warmup: int) -> None:
        self.clock, self.batch, self.warmup, self.parts = clock, clock.batch, warmup, []

    def turn(self) -> ContextManager:
        return self.clock.threads_set()

    def step(self, i: int) -> dict:
        self.parts.append(self.clock.step(i))
        return {}

    def result(self) -> dict:
        return {"parts": self.parts[self.warmup:]}


def budget(clock: StepClock, timed: dict, plain: dict) -> dict:
    """One framework's step part by part: the median of each part over the timed steps.

    ``timed`` is the clocked runner's row of :func:`measure.interleaved`, ``plain`` the row of
    the same step without hooks. ``step_s`` (median hooked step) = the layers' forward and
    backward + ``loss_s`` + ``optimizer_s`` + ``unattributed_s`` (what no hook saw: hook
    calls, gradient zeroing, Python between the layers; a sum of medians, so it may dip below 0).
    """
    parts = timed["parts"]

    def med(key, k=None):
        return statistics.median(p[key] if k is None else p[key][k] for p in parts)
    layers = [{"index": k, "layer": name, "forward_s": med("forward", k), "backward_s": med("backward", k)}
              for k, name in enumerate(clock.names)]
    loss, opt = med("loss"), med("optimizer")
    attributed = sum(r["forward_s"] + r["backward_s"] for r in layers) + loss + opt
    return {"layers": layers, "execution_order": list(clock.execution_order), "loss_s": loss,
            "optimizer_s": opt, "unattributed_s": timed["step_s"] - attributed, "step_s": timed["step_s"],
            "plain_step_s": plain["step_s"], "steps": timed["steps"]}


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def compare(dpnn: dict, torch: dict) -> dict:
    """dpnn/PyTorch per layer index (forward, backward, both) and for each part of the step."""
    layers = []
    for d, t in zip(dpnn["layers"], torch["layers"]):
        layers.append({"index": d["index"], "dpnn_layer": d["layer"], "torch_layer": t["layer"],
                       "forward": ratio(d["forward_s"], t["forward_s"]),
                       "backward": ratio(d["backward_s"], t["backward_s"]),
                       "total": ratio(d["forward_s"] + d["backward_s"], t["forward_s"] + t["backward_s"])})
    parts = {k: ratio(dpnn[k], torch[k]) for k in ("loss_s", "optimizer_s", "step_s", "plain_step_s")}
    return {"layers": layers, **parts}


def step_budgets(model_name: str, batch: int, steps: int = 20, warmup: int = 3,
                 with_torch: bool = True, shape=INPUT) -> dict:
    """{'dpnn': budget, 'torch': budget or None, 'comparison': ... or None}, one thread each.

    dpnn's and PyTorch's steps, with hooks and without, take turns step by step
    (:func:`measure.interleaved`), so that the machine's drift falls on both alike.
    """
    dclock = DpnnClock(model_name, batch, shape=shape)
    runners = {"dpnn": Clocked(dclock, warmup), "dpnn plain": LocalRunner(model_name, 1, batch, shape=shape)}
    if with_torch:
        from .torch_ref import LAYER_PAIRS, ClockedTorchStep
        tclock = ClockedTorchStep(dclock.x, dclock.y, threads=1, model=model_name)
        pairs = [LAYER_PAIRS[type(layer).__name__] for layer in dclock.model.layers]
        assert pairs == [type(m).__name__ for m in tclock.net], (pairs, tclock.net)
        runners.update({"torch": Clocked(tclock, warmup), "torch plain": TorchRunner(1, batch, shape=shape)})
    rows = interleaved(runners, steps, warmup, rounds=steps)
    out = {"dpnn": budget(dclock, rows["dpnn"], rows["dpnn plain"]), "torch": None, "comparison": None}
    if with_torch:
        out["torch"] = budget(tclock, rows["torch"], rows["torch plain"])
        out["comparison"] = compare(out["dpnn"], out["torch"])
    return out


def layer_rows(dpnn: dict) -> list[dict]:
    """dpnn's layers in execution order with their share of the layers' time (the JSON 'layers')."""
    by_index = dpnn["layers"]
    total = sum(r["forward_s"] + r["backward_s"] for r in by_index)
    return [dict(by_index[i], share=(by_index[i]["forward_s"] + by_index[i]["backward_s"]) / total)
            for i in dpnn["execution_order"]]


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


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:8.2f}" if seconds is not None else " " * 8


def _x(r: float | None) -> str:
    return f"{r:6.2f}" if r is not None else f"{'-':>6}"


def print_alone(model_name: str, batch: int, b: dict, pk: float) -> None:
    """dpnn's layers in execution order with their share, then the rest of the step."""
    step = b["plain_step_s"]
    print(f"{model_name}, batch {batch}, one thread: {step * 1e3:.1f} ms per step ({batch / step:,.0f} "
          f"samples/s); float32 GEMM peak {pk:.1f} GFLOP/s per core\n")
    print(f"{'layer (execution order)':<58}{'forward ms':>11}{'backward ms':>12}{'share':>7}")
    for r in layer_rows(b):
        print(f"{r['index']:>2} {r['layer'][:55]:<55}{r['forward_s'] * 1e3:>11.2f}{r['backward_s'] * 1e3:>12.2f}"
              f"{r['share']:>7.0%}")
    print(f"\nloss {b['loss_s'] * 1e3:.2f} ms, optimizer {b['optimizer_s'] * 1e3:.2f} ms, unattributed "
          f"{b['unattributed_s'] * 1e3:.2f} ms: {b['step_s'] * 1e3:.1f} ms per step with the hooks, "
          f"{step * 1e3:.1f} ms without")


def print_side_by_side(model_name: str, batch: int, res: dict, pk: float, version: str) -> None:
    """dpnn's and PyTorch's step layer by layer (rows by layer index), then the rest of the step."""
    d, t, c = res["dpnn"], res["torch"], res["comparison"]
    print(f"{model_name}, batch {batch}, one thread, medians of {d['steps']} steps; dpnn and PyTorch "
          f"{version} take turns step by step")
    print(f"step: dpnn {d['plain_step_s'] * 1e3:.1f} ms ({batch / d['plain_step_s']:,.0f} samples/s), PyTorch "
          f"{t['plain_step_s'] * 1e3:.1f} ms ({batch / t['plain_step_s']:,.0f} samples/s), dpnn/PyTorch "
          f"{c['plain_step_s']:.2f}; float32 GEMM peak {pk:.1f} GFLOP/s per core\n")
    print("Rows by layer index (the model as written), the order PyTorch runs them in.")
    if d["execution_order"] != sorted(d["execution_order"]):
        print(f"dpnn runs {' '.join(map(str, d['execution_order']))} (Model.execution_order): a ReLU "
              "followed by a max pool\nruns after the pool, on the pooled output, so those rows are not the "
              "same work in both frameworks.")
    print(f"\n{'':<25}{'dpnn ms':^24}{'PyTorch ms':^24}{'dpnn / PyTorch':^18}".rstrip())
    print(f"{' #':<3}{'layer (dpnn/PyTorch)':<22}" + f"{'fwd':>8}{'bwd':>8}{'total':>8}" * 2
          + f"{'fwd':>6}{'bwd':>6}{'total':>6}")
    for dr, tr, cr in zip(d["layers"], t["layers"], c["layers"]):
        label = f"{dr['layer'].split('(')[0]}/{tr['layer'].split('(')[0]}"
        ms = "".join(_ms(r["forward_s"]) + _ms(r["backward_s"]) + _ms(r["forward_s"] + r["backward_s"])
                     for r in (dr, tr))
        print(f"{dr['index']:>2} {label:<22}{ms}{_x(cr['forward'])}{_x(cr['backward'])}{_x(cr['total'])}")
    layers = [sum(r["forward_s"] + r["backward_s"] for r in b["layers"]) for b in (d, t)]
    for label, dv, tv in (("layers, sum", *layers),
                          ("loss, fwd + bwd", d["loss_s"], t["loss_s"]),
                          ("optimizer step", d["optimizer_s"], t["optimizer_s"]),
                          ("unattributed", d["unattributed_s"], t["unattributed_s"]),
                          ("= step with the hooks", d["step_s"], t["step_s"]),
                          ("step without hooks", d["plain_step_s"], t["plain_step_s"])):
        print(f"{'':>3}{label:<22}{'':>16}{_ms(dv)}{'':>16}{_ms(tv)}{'':>12}{_x(ratio(dv, tv))}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="seed-cnn", choices=sorted(MODELS), help="model (default seed-cnn)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step on one core (default 32, "
                   "a worker's shard of global batch 64 on 2 workers)")
    p.add_argument("--steps", type=int, default=20, help="timed steps for the layer profile (default 20)")
    p.add_argument("--image-size", type=int, default=INPUT[0], help=f"image height and width in pixels "
                   f"(default {INPUT[0]}; 224 for photos)")
    p.add_argument("--channels", type=int, default=INPUT[2], help=f"image channels (default {INPUT[2]}; 3 for RGB)")
    p.add_argument("--no-concurrency", action="store_true", help="skip the 1-core vs all-cores test")
    p.add_argument("--json", help="write every measurement to this JSON file")
    a = p.parse_args(argv)
    if min(a.batch_size, a.steps, a.image_size, a.channels) < 1:
        p.error("--batch-size, --steps, --image-size and --channels must be >= 1")
    shape = (a.image_size, a.image_size, a.channels)
    has_torch, version = torch_ref.available()
    if has_torch and a.model not in torch_ref.MODELS:
        has_torch, version = False, f"PyTorch: no {a.model} twin in benchmarks.torch_ref (only " \
                                    f"{', '.join(torch_ref.MODELS)}); dpnn alone"
    out: dict = {"model": a.model, "batch": a.batch_size, "shape": list(shape),
                 "torch": version if has_torch else None}
    pk = out["peak_gflops_per_core"] = peak.peak_per_core()
    res = out["step"] = step_budgets(a.model, a.batch_size, a.steps, with_torch=has_torch, shape=shape)
    out["layers"] = layer_rows(res["dpnn"])
    if has_torch:
        print_side_by_side(a.model, a.batch_size, res, pk, version)
    else:
        out["torch_note"] = version
        print(version)
        print_alone(a.model, a.batch_size, res["dpnn"], pk)
    print(f"\n{'GEMM (conv: one block)':<26}{'M x K x N':>22}{'GFLOP/s':>9}{'% peak':>8}")
    out["gemms"], floor = [], 0.0
    for what, M, K, N, flops in gemm_shapes(a.model, a.batch_size, shape):
        rate = gemm_rate(M, K, N)
        floor += flops / rate / 1e9
        out["gemms"].append({"gemm": what, "M": M, "K": K, "N": N, "gflops": rate, "step_flops": flops})
        print(f"{what:<26}{f'{M} x {K} x {N}':>22}{rate:>9.1f}{rate / pk:>8.0%}")
    step = res["dpnn"]["plain_step_s"]
    out["gemm_floor_s"] = floor
    print(f"these GEMMs, every block of them at these rates: {floor * 1e3:.1f} ms of the {step * 1e3:.1f} ms step "
          f"({floor / step:.0%}); the rest is im2col copies, BatchNorm, pooling, activations and Python")
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
