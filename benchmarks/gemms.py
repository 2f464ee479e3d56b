"""The GEMMs a training step runs for a model's Conv2D and Dense layers, and their rates alone
(:mod:`benchmarks.profile`'s second measurement)."""
from __future__ import annotations

import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from dpnn import Conv2D, Dense
from dpnn.im2col import block_rows, row_blocks
from dpnn.layers import walk_layers
from dpnn.layers.conv import SHIFTED_DX_FROM

from .measure import INPUT
from .models import build


def first_block(layer: Conv2D, n: int, k: int) -> int:
    """im2col rows of the first block a built Conv2D cuts n samples into (k float32 columns)."""
    _, oh, ow, _ = layer.output_shape
    rows = block_rows(row_blocks(n, oh, ow, 4 * k, layer.im2col_budget or 1 << 62)[0], oh, ow)
    return rows.stop - rows.start


def gemm_shapes(model_name: str, batch: int, shape=INPUT) -> list[tuple[str, int, int, int, int]]:
    """(what, M, K, N, FLOPs in the step) of every GEMM a training step runs for the model's Conv2D
    and Dense layers (those inside a Residual block too, numbered in the order they run).

    A Conv2D's im2col GEMMs are listed at the size of its first block (``im2col_budget``) and a wide
    stride-1 Conv2D's backward at the size of one piece of ``backward_chunk`` samples: the step
    runs them once per block or piece, and the last figure counts them all."""
    m = build(model_name, (1,) + tuple(shape))
    layers = list(walk_layers(m.layers))
    first = next(i for i, layer in enumerate(layers) if layer.params and not layer.sublayers())
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Conv2D):
            _, oh, ow, f = layer.output_shape
            kh, kw, c, _ = layer.params["W"].shape
            k = kh * kw * c + layer._fold_bias(kh * kw * c)     # the bias rides in the GEMM as a ones column
            rows = batch * oh * ow                              # im2col rows of the whole shard
            out.append((f"{i} Conv2D forward", first_block(layer, batch, k), k, f, 2 * rows * k * f))
            _, h, w, _ = layer.input_shape
            if i != first and layer.stride == 1 and f >= SHIFTED_DX_FROM:
                fit = (layer.im2col_budget or 1 << 62) // (oh * ow * max(f, c) * 4)
                n = min(batch, layer.backward_chunk or batch, max(1, fit))    # backward in pieces of n samples
                out += [(f"{i} Conv2D weight grad", k, first_block(layer, n, k), f, 2 * rows * k * f),
                        (f"{i} Conv2D input grad, {kh * kw}x", n * oh * ow, f, c, 2 * kh * kw * rows * f * c)]
            else:
                out.append((f"{i} Conv2D weight grad", k, first_block(layer, batch, k), f, 2 * rows * k * f))
                if i != first and layer.stride == 1:
                    out.append((f"{i} Conv2D input grad", batch * h * w, kh * kw * f, c,
                                2 * batch * h * w * kh * kw * f * c))
                elif i != first:
                    out.append((f"{i} Conv2D input grad", first_block(layer, batch, k), f, k, 2 * rows * f * k))
        elif isinstance(layer, Dense):
            d, u = layer.params["W"].shape
            out += [(f"{i} Dense forward", batch, d, u, 2 * batch * d * u),
                    (f"{i} Dense weight grad", d, batch, u, 2 * batch * d * u)]
            if i != first:
                out.append((f"{i} Dense input grad", batch, u, d, 2 * batch * d * u))
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
