"""How a global batch becomes one optimizer step: the one recipe every engine runs.

::

    cut the batch of N samples into shards       (deterministic: the run's M fixed micro-shards)
    every shard, from the step's BatchNorm state:
        forward + backward -> its slot: d(sum of its losses)/dθ / N, its state, its sums
    grads = slot 0 + slot 1 + ...                (this order, whoever computed the slots)
    state = sample-weighted average of the slot states
    loss sum and hits added in slot order
    weight decay, global-norm clip, optimizer step   (Model.apply_gradients)

Every node backend (:mod:`dpnn.node`: this process, or the worker pool) calls
:func:`run_shard` for each of its shards and :func:`combine_shards` to merge them, and the
one :class:`dpnn.step.Step` decides which shards a node computes, so no two engines can drift
apart. :class:`Sums` is the (loss, hits, count) triple every level adds up.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .augment import augment_batch
from .losses.metrics import count_correct
from .sample_weights import scale_rows, split_weights, weighted_sum


class Sums(NamedTuple):
    """Loss sum, argmax hits and sample count of some samples: shards, ranks and steps add up.

    ``hits`` is -1 when the model is not a classifier, and stays -1 in any sum.
    """
    loss: float = 0.0
    hits: int = 0
    count: int = 0

    def __add__(self, other: "Sums") -> "Sums":
        hits = -1 if self.hits < 0 or other.hits < 0 else self.hits + other.hits
        return Sums(self.loss + other.loss, hits, self.count + other.count)

    def mean_loss(self) -> float:
        return self.loss / self.count if self.count else math.nan

    def accuracy(self) -> float:
        return self.hits / self.count if self.hits >= 0 and self.count else math.nan

    def as_array(self) -> np.ndarray:
        """(3,) float64, for an all-reduce across ranks (exact for counts below 2**53)."""
        return np.array(self, np.float64)

    @classmethod
    def of_array(cls, a: np.ndarray) -> "Sums":
        return cls(float(a[0]), -1 if a[1] < 0 else int(a[1]), int(a[2]))


@dataclass
class StepStats:
    """What one training step reports (sums, so shards and steps add up exactly)."""
    loss_sum: float                  # sum of per-sample losses over the global batch
    correct: int                     # samples whose argmax matched the label (-1: no accuracy)
    count: int                       # samples in the global batch
    grad_norm: float = 0.0           # global gradient norm before clipping
    times: dict = field(default_factory=dict)   # seconds: compute, wait, reduce, optimizer

    @classmethod
    def of(cls, sums: Sums, grad_norm: float = 0.0, times: dict | None = None) -> "StepStats":
        return cls(sums.loss, sums.hits, sums.count, grad_norm, times or {})

    @property
    def sums(self) -> Sums:
        return Sums(self.loss_sum, self.correct, self.count)


class ShardResult(NamedTuple):
    """One slot's part of a step: which slot, and its sums."""
    slot: int
    sums: Sums


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Split range(n) into ``parts`` contiguous (start, stop) pieces, sizes differing by <= 1."""
    base, extra = divmod(n, parts)
    cuts = [k * base + min(k, extra) for k in range(parts + 1)]     # the first ``extra`` get one more
    return list(zip(cuts[:-1], cuts[1:]))


def owned_slots(slots: int, owners: int, owner: int) -> range:
    """The contiguous run of ``slots`` that ``owner`` (of ``owners``) computes."""
    a, b = shard_bounds(slots, owners)[owner]
    return range(a, b)


# -- the loss, whatever object the user passed -------------------------------------------------
@functools.lru_cache(maxsize=None)
def _backward_takes_denominator(cls: type) -> bool:
    try:
        params = list(inspect.signature(cls.backward).parameters.values())[1:]   # after self
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def loss_sum(loss, value: float, n: int, weights: np.ndarray | None = None) -> float:
    """Sum of the per-sample losses (times ``weights`` (N,)) of the batch ``loss.forward`` just saw.

    dpnn's losses keep ``per_sample`` (N,); a user's loss that only returns the mean (as the
    README asks) gives ``value`` (its mean) * N, and cannot be weighted.
    """
    per = getattr(loss, "per_sample", None)
    if per is not None and np.ndim(per) == 1 and len(per) == n:
        return weighted_sum(per, weights)
    if weights is not None:
        raise TypeError(f"sample weights need each sample's loss: {type(loss).__name__}.forward must keep "
                        f"self.per_sample, an array ({n},) of the per-sample losses")
    return float(value) * n


def loss_gradient(loss, out: np.ndarray, y: np.ndarray, denominator: int,
                  weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """(sum of losses, d(sum of losses)/d(out) / denominator) for a batch of predictions ``out``.

    ``backward(denominator)`` is called when the loss accepts it (dpnn's losses do); a loss
    whose ``backward()`` takes no argument gives the gradient of its mean, rescaled here.
    ``weights`` (N,) scale each sample's loss and gradient row (its loss sees only its row).
    """
    n = len(out)
    value = loss.forward(out, y)
    total = loss_sum(loss, value, n, weights)
    if _backward_takes_denominator(type(loss)):
        grad = loss.backward(denominator)
    else:
        grad = np.asarray(loss.backward()) * (n / denominator)
    return total, scale_rows(np.asarray(grad, dtype=out.dtype), weights)


# -- one shard ----------------------------------------------------------------------------------
def shard_gradients(model, x: np.ndarray, y: np.ndarray, denominator: int,
                    keys: np.ndarray | None) -> Sums:
    """Forward + backward on one shard; the model's grads get d(sum loss)/d(params) / denominator.

    The shard runs in the pieces :meth:`Model.micro_batches` gives (cache blocking); every
    piece divides by the same ``denominator``, so their gradients simply add up.
    """
    parts = model.micro_batches(len(x))
    if len(parts) == 1:
        return _piece_gradients(model, x, y, denominator, keys)
    if keys is None:
        keys = model.next_sample_keys(len(x))
    dest, sums = model.grads, Sums()
    try:
        for k, (a, b) in enumerate(parts):
            if k == 1:                                 # later pieces: into scratch, then added
                model.bind_grads(model.grad_scratch())
            sums += _piece_gradients(model, x[a:b], y[a:b], denominator, keys[a:b])
            if k:
                dest += model.grads
    finally:
        model.bind_grads(dest)
    return sums


def _piece_gradients(model, x, y, denominator, keys) -> Sums:
    out = model.forward(x, training=True, sample_keys=keys)
    y, weights = split_weights(y)
    total, grad = loss_gradient(model.loss, out, y, denominator, weights)
    model.backward(grad)
    return Sums(total, count_correct(out, y, model.loss), len(x))


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
        return ShardResult(slot, Sums())
    if augment is not None:
        keys = model.next_sample_keys(len(x)) if keys is None else keys
        x = augment_batch(augment, x, keys)      # per-sample keys: the same for any shard cut
    return ShardResult(slot, shard_gradients(model, x, y, denominator, keys))


# -- the slots, in order -------------------------------------------------------------------------
def add_slots(slots, out: np.ndarray, onto: bool = False) -> np.ndarray:
    """out = slots[0] + slots[1] + ... in this fixed order (bitwise stable whoever filled them);
    ``onto``: out = ((out + slots[0]) + slots[1]) + ..., continuing a sum of earlier slots."""
    if not onto and len(slots) == 1:
        np.copyto(out, slots[0])
        return out
    if not onto:
        np.add(slots[0], slots[1], out=out)
    for s in slots if onto else slots[2:]:
        out += s
    return out


def average_state(slots, counts, out: np.ndarray, total: int | None = None, onto: bool = False) -> np.ndarray:
    """out (+)= sum_k counts[k]/total * slots[k] in order (total: sum(counts); ``onto``: continue
    earlier ranks' sum): per-shard BatchNorm running stats. Each shard started from the same
    statistics and the update is linear in them: one update with the weighted shard statistics."""
    total = float(sum(counts) if total is None else total)
    if not onto:
        out[...] = 0
    for s, c in zip(slots, counts):
        if c:
            out += np.float32(c / total) * s
    return out


def combine_shards(results: list[ShardResult], grad_slots, state_slots, grads_out: np.ndarray | None,
                   state_out: np.ndarray, same_state: bool = False) -> Sums:
    """Reduce the slots of one step into ``grads_out``/``state_out``; their added sums.

    ``results`` are in slot order and ``grad_slots[k]``/``state_slots[k]`` belong to
    ``results[k]``. ``grads_out=None`` leaves the gradient sum to someone else (the sharded
    optimizer). ``same_state``: every non-empty slot holds the same statistics (synchronised
    BatchNorm), so one is copied instead of averaged (which could round differently).
    """
    counts = [r.sums.count for r in results]
    if grads_out is not None:
        add_slots(grad_slots, grads_out)
    if state_out.size:
        if same_state:
            np.copyto(state_out, state_slots[next(k for k, c in enumerate(counts) if c)])
        else:
            average_state(state_slots, counts, state_out)
    return add_sums(r.sums for r in results)


def add_sums(parts) -> Sums:
    """The parts' sums added in order (empty parts add nothing, not even a -1 hit count)."""
    total = Sums()
    for part in parts:
        if part.count:
            total += part
    return total


def eval_bounds(n: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """Split range(n) into ``parts`` contiguous pieces cut at multiples of ``batch_size``, so that
    every evaluation batch is the same samples whoever scores it (bitwise sums for any count)."""
    batches = -(-n // batch_size)
    return [(min(n, a * batch_size), min(n, b * batch_size)) for a, b in shard_bounds(batches, parts)]


def evaluation_parts(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> list[Sums]:
    """The model's sums on (x, y) in inference mode, one per batch of ``batch_size``, in order."""
    parts = []
    for a in range(0, len(x), batch_size):
        out = model.predict(x[a:a + batch_size], batch_size)
        y_part, weights = split_weights(y[a:a + batch_size])
        value = model.loss.forward(out, y_part)
        parts.append(Sums(loss_sum(model.loss, value, len(out), weights), count_correct(out, y_part, model.loss),
                          len(out)))
    return parts


def evaluation_sums(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> Sums:
    """The model's sums on (x, y) in inference mode, batch by batch, added in batch order."""
    return add_sums(evaluation_parts(model, x, y, batch_size))
