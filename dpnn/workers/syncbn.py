"""Synchronised BatchNorm: an all-reduce of small vectors among the workers.

``BatchNorm2D.sync`` is called with a float64 vector of per-shard sums (2C+1 values:
sum x, sum x^2, count in forward; two gradient sums and the count in backward) and must
return the sums over every shard. Every worker writes its vector into its row of a shared
``(2, workers, L)`` area, waits at a barrier, then adds the rows in worker order — so all
workers get bitwise the same totals. Two alternating areas make one barrier per call
enough: a worker can only reuse an area after everybody passed the next barrier, that is,
after everybody finished reading it.
"""
from __future__ import annotations

import numpy as np

from ..layers.normalization import batchnorm_layers
from ..recipe import add_slots


class ShardExchange:
    """The ``sync`` hook of every BatchNorm2D layer in one worker."""

    def __init__(self, area: np.ndarray, worker_id: int, barrier, timeout: float) -> None:
        assert area.ndim == 3 and area.shape[0] == 2, area.shape
        self.area, self.worker_id = area, worker_id           # (2, workers, L) float64
        self.barrier, self.timeout = barrier, timeout
        self.calls = 0

    def start_step(self) -> None:
        """Every worker starts a step at the same area (after an aborted step too)."""
        self.calls = 0

    def __call__(self, sums: np.ndarray) -> np.ndarray:
        rows = self.area[self.calls % 2]                        # (workers, L)
        self.calls += 1
        L = sums.size
        rows[self.worker_id, :L] = sums
        self.barrier.wait(self.timeout)    # BrokenBarrierError if the coordinator aborts the step
        return add_slots(rows[:, :L], np.empty(L))

    def take_part_empty(self, bn_layers) -> None:
        """A worker with no samples still joins every exchange (forward order, then backward)."""
        bn_layers = [layer for layer in bn_layers if layer.trainable]     # a frozen one exchanges nothing
        for layer in bn_layers + bn_layers[::-1]:
            self(np.zeros(2 * layer.channels + 1))


def exchange_width(layers) -> int:
    """Longest vector any BatchNorm2D layer will exchange (2C+1), 0 if there is none."""
    return max((2 * layer.channels + 1 for layer in batchnorm_layers(layers)), default=0)

