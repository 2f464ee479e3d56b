"""The same model and training step in PyTorch (CPU), for the comparison column.

Skipped with a note when torch is not installed (``pip install torch==2.13.0``); torch is
imported lazily so that worker processes started by ``spawn`` never load it.
"""
from __future__ import annotations

import contextlib

import numpy as np


def available() -> tuple[bool, str]:
    """(True, version) when torch imports, else (False, why)."""
    try:
        import torch
    except Exception as e:           # ImportError, or a broken install
        return False, f"PyTorch not available ({type(e).__name__}: {e}); pip install torch==2.13.0"
    return True, torch.__version__


def seed_cnn(num_classes: int = 10, shape=(28, 28, 1)):
    """seed-cnn in PyTorch (NCHW) for NHWC images of ``shape``: the same layers and shapes."""
    import torch.nn as nn
    H, W, C = shape
    return nn.Sequential(
        nn.Conv2d(C, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * (H // 4) * (W // 4), 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, num_classes))


class TorchStep:
    """seed-cnn training steps in PyTorch on one NHWC batch, ``threads`` intra-op threads.

    Each :meth:`step` is one Adam step (softmax cross-entropy, lr 1e-3), as for the dpnn
    rows, with the thread count :meth:`threads_set` establishes (so several instances, and
    dpnn's own runners, can take turns in one process).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, threads: int, seed: int = 0) -> None:
        import torch
        self.torch, self.threads, self.batch = torch, threads, len(x)
        torch.manual_seed(seed)
        self.net = seed_cnn(int(y.max()) + 1 if y.size else 10, x.shape[1:])
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))       # NHWC -> NCHW
        self.yt = torch.from_numpy(y.astype(np.int64))
        self.net.train()

    @contextlib.contextmanager
    def threads_set(self):
        """torch.set_num_threads(threads) for a run of steps, the old count restored after."""
        old = self.torch.get_num_threads()
        self.torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            self.torch.set_num_threads(old)

    def step(self, i: int = 0) -> dict:
        self.opt.zero_grad(set_to_none=True)
        self.loss_fn(self.net(self.xt), self.yt).backward()
        self.opt.step()
        return {}

