"""The same model and training step in PyTorch (CPU), for the comparison column.

Skipped with a note when torch is not installed (``pip install torch==2.13.0``); torch is
imported lazily so that worker processes started by ``spawn`` never load it.
"""
from __future__ import annotations

import statistics
import time

import numpy as np


def available() -> tuple[bool, str]:
    """(True, version) when torch imports, else (False, why)."""
    try:
        import torch
    except Exception as e:           # ImportError, or a broken install
        return False, f"PyTorch not available ({type(e).__name__}: {e}); pip install torch==2.13.0"
    return True, torch.__version__


def seed_cnn(num_classes: int = 10):
    """seed-cnn in PyTorch (NCHW): the same layers, shapes and initialisation scale."""
    import torch.nn as nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, num_classes))


def throughput(x: np.ndarray, y: np.ndarray, threads: int, steps: int, warmup: int = 3,
               seed: int = 0) -> dict:
    """Train seed-cnn on the NHWC batch (x, y) with ``threads`` intra-op threads.

    Returns {'samples_per_s', 'step_s', 'step_mean_s', 'threads'}: the batch over the median
    wall time of ``steps`` Adam steps (softmax cross-entropy, lr 1e-3) after ``warmup``
    untimed ones, as for the dpnn rows.
    """
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        net = seed_cnn(int(y.max()) + 1 if y.size else 10)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))       # NHWC -> NCHW
        yt = torch.from_numpy(y.astype(np.int64))
        net.train()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xt), yt).backward()
            opt.step()

        for _ in range(warmup):
            step()
        walls = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            walls.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    med = statistics.median(walls)
    return {"samples_per_s": len(x) / med, "step_s": med, "step_mean_s": sum(walls) / steps,
            "threads": threads}
