"""Shards sized to the workers' measured speed, so no core waits for a slower one.

Equal shards finish together only on equal cores. On a laptop with performance and
efficiency cores, a VM whose vCPUs are not alike, or a machine where another program takes
a core now and then, the slowest worker sets every step's time while the others wait at the
barrier. Each worker's compute time for its shard is in its reply, so the coordinator keeps
a smoothed rate (samples per second) per worker and cuts the next batch in proportion.

The result does not depend on the cut beyond float rounding: every shard's gradient is
divided by the global batch size and the slots are added in worker order, and Dropout masks
follow the samples' keys. What would depend on it are per-shard BatchNorm statistics, so
``DataParallel(balance=True)`` balances only models without state, or with
``sync_batchnorm`` (statistics of the global batch); deterministic mode keeps its 8 fixed
shards. It is opt-in: the cut follows timing, so two runs round differently, and on the
2-vCPU development VM it measured no faster than equal shards (four interleaved runs at
batch 64/256: -4 % to +6 %); its test makes one worker slower on purpose.
"""
from __future__ import annotations

import numpy as np

SMOOTHING = 0.3      # weight of the newest step in a worker's rate
SPREAD = 2.0         # no worker's share is cut below 1/SPREAD or raised above SPREAD x an equal one


class ShardBalance:
    """Each worker's smoothed rate, and the cut of a batch of ``n`` samples they imply."""

    def __init__(self, workers: int) -> None:
        self.rates = np.ones(workers)               # samples/s; alike until measured
        self.measured = np.zeros(workers, bool)

    def cuts(self, n: int) -> tuple[int, ...]:
        """(0, c1, ..., n): worker k takes samples [c_k, c_(k+1)). Proportional to the rates,
        whole samples by largest remainder (ties to the lower worker), at least one sample
        each while there are enough (a worker with none could not be measured again)."""
        w = len(self.rates)
        share = self.rates / self.rates.sum() * n
        sizes = np.floor(share).astype(np.int64)
        left = n - int(sizes.sum())
        order = np.argsort(-(share - sizes), kind="stable")
        sizes[order[:left]] += 1
        if n >= w:
            while (sizes == 0).any():               # take one from the largest for each empty one
                sizes[np.argmax(sizes)] -= 1
                sizes[np.argmin(sizes)] += 1
        return tuple(int(c) for c in np.concatenate([[0], np.cumsum(sizes)]))

    def observe(self, cuts: tuple[int, ...], seconds: list[float]) -> None:
        """Fold one step's per-worker compute time for its shard into the rates."""
        for k, (size, s) in enumerate(zip(np.diff(cuts), seconds)):
            if size > 0 and s > 0:
                rate = size / s
                self.rates[k] = rate if not self.measured[k] else self.rates[k] + SMOOTHING * (rate - self.rates[k])
                self.measured[k] = True
        if self.measured.all():                     # one noisy step moves no share past SPREAD
            mean = self.rates.mean()
            np.clip(self.rates, mean / SPREAD, mean * SPREAD, out=self.rates)
