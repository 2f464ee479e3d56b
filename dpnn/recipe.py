"""How a global batch becomes one optimizer step: the one recipe every engine runs.

::

    cut the batch of N samples into shards       (deterministic: DETERMINISTIC_SHARDS fixed ones)
    every shard, from the step's BatchNorm state:
        forward + backward -> its slot: d(sum of its losses)/dθ / N, its state, its sums
    grads = slot 0 + slot 1 + ...                (this order, whoever computed the slots)
    state = sample-weighted average of the slot states
    loss sum and hits added in slot order
    weight decay, global-norm clip, optimizer step   (Model.apply_gradients)

``LocalEngine`` runs every shard in one process, ``DataParallel``'s workers each run theirs
into shared-memory slots, ``DistributedEngine``'s ranks run theirs and all-gather the slots.
All of them call :func:`run_shard` and :func:`combine_shards`, so they cannot drift apart.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .augment import augment_batch

DETERMINISTIC_SHARDS = 8   # fixed decomposition of every batch in deterministic mode


@dataclass
class StepStats:
    """What one training step reports (sums, so shards and steps add up exactly)."""
    loss_sum: float                  # sum of per-sample losses over the global batch
    correct: int                     # samples whose argmax matched the label (-1: no accuracy)
    count: int                       # samples in the global batch
    grad_norm: float = 0.0           # global gradient norm before clipping
    times: dict = field(default_factory=dict)   # seconds: compute, wait, reduce, optimizer


class ShardResult(NamedTuple):
    """One slot's sums: which slot, its loss sum, argmax hits (-1: no accuracy), samples."""
    slot: int
    loss_sum: float
    correct: int
    count: int


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Split range(n) into ``parts`` contiguous (start, stop) pieces, sizes differing by <= 1."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for k in range(parts):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def owned_slots(slots: int, owners: int, owner: int) -> range:
    """The contiguous run of ``slots`` that ``owner`` (of ``owners``) computes."""
    a, b = shard_bounds(slots, owners)[owner]
    return range(a, b)


def count_correct(logits: np.ndarray, y: np.ndarray) -> int:
    """Number of argmax hits, for integer labels (N,) or one-hot (N, K); -1 if not a classifier."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        return -1
    y = np.asarray(y)
    labels = y.argmax(axis=1) if y.ndim == 2 and y.shape[1] == logits.shape[1] else y.reshape(-1)
    return int((logits.argmax(axis=1) == labels).sum())


def add_correct(a: int, b: int) -> int:
    """Accumulate argmax hits; -1 (not a classifier) is sticky."""
    return -1 if a < 0 or b < 0 else a + b


# -- the loss, whatever object the user passed -------------------------------------------------
@functools.lru_cache(maxsize=None)
def _backward_takes_denominator(cls: type) -> bool:
    try:
        params = list(inspect.signature(cls.backward).parameters.values())[1:]   # after self
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def loss_sum(loss, value: float, n: int) -> float:
    """Sum of the per-sample losses of the batch ``loss.forward`` just saw (its mean was ``value``).

    dpnn's losses keep ``per_sample`` (N,); a user's loss that only returns the mean (as the
    README asks) gives mean * N.
    """
    per = getattr(loss, "per_sample", None)
    if per is not None and np.ndim(per) == 1 and len(per) == n:
        return float(np.asarray(per).astype(np.float64).sum())
    return float(value) * n


def loss_gradient(loss, out: np.ndarray, y: np.ndarray, denominator: int) -> tuple[float, np.ndarray]:
    """(sum of losses, d(sum of losses)/d(out) / denominator) for a batch of predictions ``out``.

    ``backward(denominator)`` is called when the loss accepts it (dpnn's losses do); a loss
    whose ``backward()`` takes no argument gives the gradient of its mean, rescaled here.
    """
    n = len(out)
    value = loss.forward(out, y)
    total = loss_sum(loss, value, n)
    if _backward_takes_denominator(type(loss)):
        grad = loss.backward(denominator)
    else:
        grad = np.asarray(loss.backward()) * (n / denominator)
    return total, np.asarray(grad, dtype=out.dtype)


# -- one shard ----------------------------------------------------------------------------------
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
    dest, total, correct = model.grads, 0.0, 0
    try:
        for k, (a, b) in enumerate(parts):
            if k == 1:                                 # later pieces: into scratch, then added
                model.bind_grads(model.grad_scratch())
            ls, c = _piece_gradients(model, x[a:b], y[a:b], denominator, keys[a:b])
            if k:
                dest += model.grads
            total, correct = total + ls, add_correct(correct, c)
    finally:
        model.bind_grads(dest)
    return total, correct


def _piece_gradients(model, x, y, denominator, keys) -> tuple[float, int]:
    out = model.forward(x, training=True, sample_keys=keys)
    total, grad = loss_gradient(model.loss, out, y, denominator)
    model.backward(grad)
    return total, count_correct(out, y)


def run_shard(model, slot: int, x: np.ndarray, y: np.ndarray, denominator: int,
              keys: np.ndarray | None, state0: np.ndarray | None, augment=None) -> ShardResult:
    """Slot ``slot``'s part of a step: from BatchNorm state ``state0``, the gradient of the
    shard (x, y) into ``model.grads`` and its statistics into ``model.state``; ``augment``
    (fn(x, keys)) transforms the shard first.

    An empty shard adds exactly zero and leaves ``state0``. The caller has bound the model's
    grads/state to the slot's memory (or copies them there afterwards).
    """
    if state0 is not None and model.state.size and model.state is not state0:
        np.copyto(model.state, state0)       # every shard starts from the step's statistics
    if len(x) == 0:
        model.grads[...] = 0
        return ShardResult(slot, 0.0, 0, 0)
    if augment is not None:
        keys = model.next_sample_keys(len(x)) if keys is None else keys
        x = augment_batch(augment, x, keys)      # per-sample keys: the same for any shard cut
    total, correct = shard_gradients(model, x, y, denominator, keys)
    return ShardResult(slot, total, correct, len(x))


# -- the slots, in order -------------------------------------------------------------------------
def add_slots(slots, out: np.ndarray) -> np.ndarray:
    """out = slots[0] + slots[1] + ... in this fixed order (bitwise stable whoever filled them)."""
    if len(slots) == 1:
        np.copyto(out, slots[0])
        return out
    np.add(slots[0], slots[1], out=out)
    for s in slots[2:]:
        out += s
    return out


def average_state(slots, counts, out: np.ndarray) -> np.ndarray:
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


def combine_shards(results: list[ShardResult], grad_slots, state_slots, grads_out: np.ndarray | None,
                   state_out: np.ndarray, same_state: bool = False) -> tuple[float, int]:
    """Reduce the slots of one step into ``grads_out``/``state_out``; (loss sum, hits).

    ``results`` are in slot order and ``grad_slots[k]``/``state_slots[k]`` belong to
    ``results[k]``. ``grads_out=None`` leaves the gradient sum to someone else (the sharded
    optimizer). ``same_state``: every non-empty slot holds the same statistics (synchronised
    BatchNorm), so one is copied instead of averaged (which could round differently).
    """
    counts = [r.count for r in results]
    if grads_out is not None:
        add_slots(grad_slots, grads_out)
    if state_out.size:
        if same_state:
            np.copyto(state_out, state_slots[next(k for k, c in enumerate(counts) if c)])
        else:
            average_state(state_slots, counts, state_out)
    total, correct = 0.0, 0
    for r in results:
        if r.count:
            total, correct = total + r.loss_sum, add_correct(correct, r.correct)
    return total, correct
