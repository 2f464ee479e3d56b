"""How a global batch becomes one optimizer step, in one process.

The same arithmetic runs in the data-parallel engine (``dpnn.workers``): a batch is cut
into shards, each shard's gradient of (sum of its losses) / (global batch size) is
computed, the shard gradients are summed in a fixed order, then weight decay, clipping
and the optimizer step follow. ``LocalEngine`` is the in-process version that
``Model.fit(workers=1)`` uses; ``dpnn.workers.DataParallel`` has the same ``train_step``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


DETERMINISTIC_SHARDS = 8   # fixed decomposition of every batch in deterministic mode


@dataclass
class StepStats:
    """What one training step reports (sums, so shards and steps add up exactly)."""
    loss_sum: float                  # sum of per-sample losses over the global batch
    correct: int                     # samples whose argmax matched the label (-1: no accuracy)
    count: int                       # samples in the global batch
    grad_norm: float = 0.0           # global gradient norm before clipping
    times: dict = field(default_factory=dict)   # seconds: compute, wait, reduce, optimizer


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Split range(n) into ``parts`` contiguous (start, stop) pieces, sizes differing by <= 1."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for k in range(parts):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def count_correct(logits: np.ndarray, y: np.ndarray) -> int:
    """Number of argmax hits, for integer labels (N,) or one-hot (N, K); -1 if not a classifier."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        return -1
    y = np.asarray(y)
    labels = y.argmax(axis=1) if y.ndim == 2 and y.shape[1] == logits.shape[1] else y.reshape(-1)
    return int((logits.argmax(axis=1) == labels).sum())


def shard_gradients(model, x: np.ndarray, y: np.ndarray, denominator: int,
                    keys: np.ndarray | None) -> tuple[float, int]:
    """Forward + backward on one shard; the model's grads get d(sum loss)/d(params) / denominator.

    The shard runs in the pieces :meth:`Model.micro_batches` gives (cache blocking); every
    piece divides by the same ``denominator``, so their gradients simply add up.
    """
    parts = model.micro_batches(len(x))
    if len(parts) == 1:
        return _piece_gradients(model, x, y, denominator, keys)
    if keys is None:
        keys = model.next_sample_keys(len(x))
    dest, loss_sum, correct = model.grads, 0.0, 0
    try:
        for k, (a, b) in enumerate(parts):
            if k == 1:                                 # later pieces: into scratch, then added
                model.bind_grads(model.grad_scratch())
            ls, c = _piece_gradients(model, x[a:b], y[a:b], denominator, keys[a:b])
            if k:
                dest += model.grads
            loss_sum, correct = loss_sum + ls, add_correct(correct, c)
    finally:
        model.bind_grads(dest)
    return loss_sum, correct


def _piece_gradients(model, x, y, denominator, keys) -> tuple[float, int]:
    out = model.forward(x, training=True, sample_keys=keys)
    model.loss.forward(out, y)
    model.backward(model.loss.backward(denominator))
    return float(model.loss.per_sample.astype(np.float64).sum()), count_correct(out, y)


def sum_in_order(slots: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = slots[0] + slots[1] + ... in this fixed order (the order makes results bitwise stable)."""
    np.copyto(out, slots[0])
    for s in slots[1:]:
        out += s
    return out


def average_state(slots: np.ndarray, counts, out: np.ndarray) -> np.ndarray:
    """out = sum_k counts[k]/sum(counts) * slots[k], in order: per-shard BatchNorm running stats.

    Each shard started from the same running statistics and the update is linear in the
    batch statistics, so this equals one update with the sample-weighted shard statistics.
    """
    total = float(sum(counts))
    out[...] = 0
    for s, c in zip(slots, counts):
        if c:
            out += np.float32(c / total) * s
    return out


def add_correct(a: int, b: int) -> int:
    """Accumulate argmax hits; -1 (not a classifier) is sticky."""
    return -1 if a < 0 or b < 0 else a + b


class LocalEngine:
    """In-process training steps; deterministic mode uses the same shard decomposition as workers."""

    def __init__(self, model, deterministic: bool = False) -> None:
        self.model, self.deterministic = model, deterministic
        self._slots: np.ndarray | None = None
        self._blas = None      # threadpoolctl controller, created on the first deterministic step

    def train_step(self, x: np.ndarray, y: np.ndarray, keys: np.ndarray | None = None) -> StepStats:
        m, n = self.model, len(x)
        t0 = time.perf_counter()
        if not self.deterministic:
            loss_sum, correct = shard_gradients(m, x, y, n, keys)
        else:
            parts = shard_bounds(n, DETERMINISTIC_SHARDS)
            if self._slots is None:
                self._slots = np.zeros((DETERMINISTIC_SHARDS, m.grads.size), np.float32)
                self._state_slots = np.zeros((DETERMINISTIC_SHARDS, m.state.size), np.float32)
            state0 = m.state.copy()
            loss_sum, correct = 0.0, 0
            with self._one_blas_thread():
                for k, (a, b) in enumerate(parts):
                    self._slots[k] = 0
                    if b > a:
                        m.state[...] = state0
                        ls, c = shard_gradients(m, x[a:b], y[a:b], n, None if keys is None else keys[a:b])
                        self._slots[k], self._state_slots[k] = m.grads, m.state
                        loss_sum, correct = loss_sum + ls, add_correct(correct, c)
            sum_in_order(self._slots, m.grads)
            if m.state.size:
                average_state(self._state_slots, [b - a for a, b in parts], m.state)
        t1 = time.perf_counter()
        norm = m.apply_gradients()
        t2 = time.perf_counter()
        return StepStats(loss_sum, correct, n, norm,
                         {"compute": t1 - t0, "wait": 0.0, "reduce": 0.0, "optimizer": t2 - t1})

    def _one_blas_thread(self):
        """Limit BLAS to one thread, like every deterministic worker: GEMM results (not only their
        speed) can depend on the thread count, and deterministic results must not."""
        if self._blas is None:
            from threadpoolctl import ThreadpoolController
            self._blas = ThreadpoolController()
        return self._blas.limit(limits=1, user_api="blas")

    def sync_state(self) -> None:
        """Nothing to gather in one process (the model's state is already current)."""

    def close(self) -> None:
        pass
