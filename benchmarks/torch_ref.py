"""The same model and training step in PyTorch (CPU), for the comparison column.

Skipped with a note when torch is not installed (``pip install torch==2.13.0``); torch is
imported lazily so that worker processes started by ``spawn`` never load it.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

# dpnn layer class -> the PyTorch module that does the same (benchmarks.profile pairs them by index)
LAYER_PAIRS = {"Conv2D": "Conv2d", "MaxPool2D": "MaxPool2d", "Activation": "ReLU", "Dense": "Linear",
               "Dropout": "Dropout", "Flatten": "Flatten"}


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


MODELS = {"seed-cnn": seed_cnn}      # the benchmark models that have a PyTorch twin here


class TorchStep:
    """A model's (``MODELS``) training steps in PyTorch on one NHWC batch, ``threads`` intra-op threads.

    Each :meth:`step` is one Adam step (softmax cross-entropy, lr 1e-3), as for the dpnn
    rows, with the thread count :meth:`threads_set` establishes (so several instances, and
    dpnn's own runners, can take turns in one process).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, threads: int, seed: int = 0,
                 model: str = "seed-cnn") -> None:
        import torch
        self.torch, self.threads, self.batch = torch, threads, len(x)
        torch.manual_seed(seed)
        self.net = MODELS[model](int(y.max()) + 1 if y.size else 10, x.shape[1:])
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


class ClockedTorchStep(TorchStep):
    """:class:`TorchStep` whose :meth:`step` returns the time of each part of the step.

    Hooks read ``time.perf_counter``. Forward of layer i: its module's forward pre-hook to
    its forward hook. Backward of layer i: from the moment autograd is about to run the node
    that made the layer's output (a ``Tensor.register_hook`` on that output, set by the forward
    hook) to the same moment of the layer that runs next, or to the return of
    ``loss.backward()`` for the layer that runs last. Autograd accumulates a layer's
    parameter gradients right after its node, so they count with the layer.

    Why not ``register_full_backward_pre_hook``/``register_full_backward_hook``: they put two
    identity nodes per module into the graph (time that lands between the layers), and the
    second fires when the gradient of the layer's *input* is ready, which for a first layer
    whose input needs none is before the layer has computed its weight gradient.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, threads: int, seed: int = 0,
                 model: str = "seed-cnn") -> None:
        super().__init__(x, y, threads, seed, model)
        self.names = [repr(m) for m in self.net]
        self.execution_order = list(range(len(self.net)))        # nn.Sequential: as written
        self._forward_start: dict[int, float] = {}
        self._spent: dict[int, float] = {}                       # layer index -> forward seconds
        self._backward_start: dict[int, float] = {}
        for i, module in enumerate(self.net):
            module.register_forward_pre_hook(lambda mod, args, i=i: self._forward_begins(i))
            module.register_forward_hook(lambda mod, args, out, i=i: self._forward_ends(i, out))

    def _forward_begins(self, i: int) -> None:
        self._forward_start[i] = time.perf_counter()

    def _forward_ends(self, i: int, out) -> None:
        self._spent[i] = time.perf_counter() - self._forward_start[i]
        if out.requires_grad:
            out.register_hook(lambda grad: self._backward_begins(i))

    def _backward_begins(self, i: int) -> None:
        self._backward_start[i] = time.perf_counter()

    def step(self, i: int = 0) -> dict:
        """One Adam step: {'forward': [s] and 'backward': [s] by layer index, 'loss': s, 'optimizer': s}."""
        clock, self._spent, self._backward_start = time.perf_counter, {}, {}
        self.opt.zero_grad(set_to_none=True)
        out = self.net(self.xt)
        t0 = clock()
        loss = self.loss_fn(out, self.yt)
        t1 = clock()
        loss.backward()
        t2 = clock()
        self.opt.step()
        t3 = clock()
        order = self.execution_order[::-1]                        # backward runs the layers reversed
        starts = [self._backward_start[k] for k in order] + [t2]
        backward = dict(zip(order, np.diff(starts).tolist()))
        return {"forward": [self._spent[k] for k in range(len(self.net))],
                "backward": [backward[k] for k in range(len(self.net))],
                "loss": (t1 - t0) + (starts[0] - t1), "optimizer": t3 - t2}
