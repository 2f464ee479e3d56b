"""Counter-based random numbers keyed by (seed, epoch, sample index).

Dropout masks must not depend on which worker handles a sample, nor on how a batch is
split, so they are a pure function of a per-sample 64-bit key (the SplitMix64 mixer,
vectorised over uint64 arrays) instead of a stateful generator.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser applied elementwise to a uint64 array (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """One uint64 key per sample, (N,), from the run seed, the epoch and dataset indices."""
    base = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))
    base = splitmix64(base ^ np.uint64(epoch & 0xFFFFFFFF))
    return splitmix64(base ^ np.asarray(indices, dtype=np.uint64))


def keyed_uniform(keys: np.ndarray, salt: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform [0, 1) float32 of shape (N, *shape); row n depends only on keys[n] and salt."""
    m = int(np.prod(shape, dtype=np.int64))
    salted = splitmix64(np.asarray(keys, np.uint64) ^ splitmix64(np.array([salt], np.uint64)))
    counters = np.arange(m, dtype=np.uint64) * _GOLDEN                          # (m,)
    bits = splitmix64(salted[:, None] + counters[None, :])                      # (N, m)
    return ((bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(
        (len(keys),) + tuple(shape))


def fresh_seed() -> int:
    """A new random seed in [0, 2**31) from the OS, for runs given none (fit, Dataset.batches)."""
    return int(np.random.SeedSequence().entropy % 2**31)
