"""Shards sized to the workers' measured speed (dpnn/workers/balance.py)."""
from __future__ import annotations

import multiprocessing
import time
import warnings

import numpy as np
import pytest

from dpnn import BatchNorm2D, Layer
from dpnn.engine import LocalEngine
from dpnn.workers import DataParallel
from dpnn.workers.balance import SPREAD, ShardBalance

from conftest import batch, cnn


def test_cuts_follow_the_rates_in_whole_samples():
    b = ShardBalance(3)
    assert b.cuts(7) == (0, 3, 5, 7)                       # unmeasured: as equal as it gets
    b.observe((0, 3, 5, 7), [0.03, 0.02, 0.04])           # 100, 100, 50 samples/s
    assert b.cuts(100) == (0, 40, 80, 100)
    assert b.cuts(2) == (0, 1, 2, 2)                       # fewer samples than workers: some get none
    b.observe((0, 40, 80, 100), [0.4, 0.4, 10.0])          # a worker stalls once: 2 samples/s
    share = np.diff(b.cuts(300)) / 300
    assert share[2] >= 1 / 3 / SPREAD - 1 / 300            # its share is not cut below 1/SPREAD
    b.observe((0, 1, 1, 2), [0.01, 0.0, 0.01])             # an empty shard tells nothing
    assert all(np.diff(b.cuts(3)) >= 1)                    # everyone keeps a sample to be measured by


class SlowOnWorker1(Layer):
    """Identity; in worker process 1 it also sleeps 1 ms per sample (a slower core)."""

    def forward(self, x, training=False):
        if training and multiprocessing.current_process().name == "dpnn-worker-1":
            time.sleep(1e-3 * len(x))
        return x

    def backward(self, grad):
        return grad


def test_the_slower_worker_gets_the_smaller_shard_and_the_result_stays_the_same():
    ref = cnn(SlowOnWorker1())
    engine = LocalEngine(ref)
    m = cnn(SlowOnWorker1())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with DataParallel(m, workers=2, balance=True) as dp:
            for s in range(8):
                engine.train_step(*batch(s, 48))
                dp.train_step(*batch(s, 48))
            cuts = dp.node._balance.cuts(48)
    assert cuts[1] > 24 + 4, cuts                          # worker 0 takes the larger share
    np.testing.assert_allclose(m.params, ref.params, rtol=1e-4, atol=1e-6)


def test_per_shard_batchnorm_statistics_keep_equal_shards():
    m = cnn(BatchNorm2D())
    with DataParallel(m, workers=2, balance=True) as dp:
        dp.train_step(*batch(0, 48))
        assert dp.node._balance is None
    m = cnn()
    with DataParallel(m, workers=2) as dp:                 # the default: equal shards
        dp.train_step(*batch(0, 48))
        assert dp.node._balance is None
    with pytest.raises(ValueError, match="balance"):
        DataParallel(cnn(), workers=2, balance="yes")
