"""The optimizer step, sharded over the workers, inside the step, and still redoable after a death.

Adding gradient slots, weight decay, clipping by a given factor and an SGD/Adam update are
*elementwise*, so worker k can do them for its own contiguous chunk [a, b) of the flat
vector and the result is bitwise what one process computes for the whole vector. The
global norm is not elementwise, but it is a sum of per-block sums of squares
(``dpnn.optimizers.square_sums``) added exactly, so it is bitwise the same too: every worker
writes its blocks' sums to ``norm_parts``, and (when clipping) waits for the others at the
barrier before it reads them all. So a step runs without a serial phase::

    every worker:  forward + backward of its shard -> its gradient slot
                   barrier                           (all slots written)
                   its chunk: slot sum, weight decay, block square sums
                   [barrier; global norm; clip]       (only with clip_norm)
                   its chunk: optimizer update        -> reply "done"
    coordinator:   flip the parameter set; add up losses and BatchNorm statistics

The sum over N slots and the optimizer's passes are split N ways, so the step's serial
part does not grow with the worker count (see docs/engine.md).

Recovery needs one more idea. An in-place update killed half-way leaves some elements
updated and some not, and the old values are gone. So parameters and optimizer slots
(Adam's m and v) have two copies, ``sets`` 0 and 1: a step reads set ``cur`` (never
written during the step) and writes set ``1 - cur``; only when every chunk is done does
the coordinator flip ``cur``. Redoing the step after a death rewrites the same values.

Kept in the coordinator (``Model.apply_gradients``): a user's optimizer and the first step (its
slots are made as in one process). Frozen layers' ranges get a zero gradient and keep set cur's values.
"""
from __future__ import annotations

import math

import numpy as np

from ..optimizers import BLOCK, NORM_BLOCK, blocks, keep_frozen, square_sums, zero_ranges
from ..recipe import add_slots, shard_bounds
from .messages import UpdateArgs


def norm_blocks(size: int) -> int:
    """Entries of ``norm_parts`` for a flat vector of ``size`` elements."""
    return -(-size // NORM_BLOCK)


def chunk_bounds(size: int, workers: int) -> list[tuple[int, int]]:
    """Each worker's [a, b) of the flat vector, cut at NORM_BLOCK boundaries."""
    return [(a * NORM_BLOCK, min(b * NORM_BLOCK, size)) for a, b in shard_bounds(norm_blocks(size), workers)]


def global_norm(norm_parts: np.ndarray) -> float:
    """The gradient's L2 norm from its block sums of squares (exact sum: any order, same value)."""
    return math.sqrt(math.fsum(norm_parts))


def sum_chunk(arena, a: int, b: int, count: int) -> None:
    """Worker side, elements [a, b): grads_sum = sum of the first ``count`` slots, nothing else."""
    for lo, hi in blocks(a, b):
        add_slots(arena["grads"][:count, lo:hi], arena["grads_sum"][lo:hi])


def update_chunk(arena, a: int, b: int, cur: int, args: UpdateArgs, optimizer, wait,
                 count: int | None) -> None:
    """Worker side, elements [a, b): the gradient (the sum of the first ``count`` slots, into
    grads_sum; or, with ``count=None``, grads_sum as it is, e.g. all-reduced across MPI ranks) plus weight
    decay, its block square sums into ``norm_parts``, then set 1-cur = the optimizer's update
    of set cur. What the step reads (slots, grads_sum as input, set cur) is never written, so
    running it again after a death gives the same result.

    ``wait()`` meets the other workers at the barrier; it is called once, only when clipping
    (the factor needs every chunk's square sums), so every worker calls it, even one whose
    chunk is empty. Without clipping each cache block is summed and updated in one go.
    """
    optimizer.set_hyperparameters(args.hyperparameters)
    scratch = None if count is not None else np.empty(min(BLOCK, max(b - a, 0)), np.float32)

    def gradient(lo: int, hi: int) -> np.ndarray:
        if count is not None:                       # sum the slots into grads_sum
            g = add_slots(arena["grads"][:count, lo:hi], arena["grads_sum"][lo:hi])
        else:                                       # the input stays as it is: work in scratch
            g = scratch[:hi - lo]
            np.copyto(g, arena["grads_sum"][lo:hi])
        if args.weight_decay:
            g += np.float32(args.weight_decay) * arena["params"][cur, lo:hi]
        zero_ranges(g, args.frozen, lo)                     # a frozen layer's gradient counts as 0
        return g

    if args.clip_norm is None:
        for lo, hi in blocks(a, b):
            g = gradient(lo, hi)
            square_sums(g, arena["norm_parts"], lo)
            _update(arena, lo, hi, cur, args, optimizer, g, None)
        return
    for lo, hi in blocks(a, b):
        square_sums(gradient(lo, hi), arena["norm_parts"], lo)
    wait()
    norm = global_norm(arena["norm_parts"])
    factor = np.float32(args.clip_norm / (norm + 1e-6)) if norm > args.clip_norm else None   # as regularize
    for lo, hi in blocks(a, b):
        g = arena["grads_sum"][lo:hi] if count is not None else gradient(lo, hi)   # the same values again
        _update(arena, lo, hi, cur, args, optimizer, g, factor)


def _update(arena, lo: int, hi: int, cur: int, args: UpdateArgs, optimizer, g: np.ndarray, factor) -> None:
    if factor is not None:
        g *= factor
    now, new = ([arena["params"][s, lo:hi], *(arena[f"opt_{k}"][s, lo:hi] for k in args.keys)] for s in (cur, 1 - cur))
    optimizer.update_into(now[0], g, dict(zip(args.keys, now[1:])), new[0], dict(zip(args.keys, new[1:])))
    keep_frozen(args.frozen, now, new, lo, hi)          # as Model.apply_gradients: bitwise kept


class ShardedUpdate:
    """Coordinator side: when the workers may update, and keeping the model on set ``cur``."""

    def __init__(self, model, arena, keys: tuple[str, ...]) -> None:
        self.model, self.arena, self.keys = model, arena, keys
        self.cur = 0
        self._params = [arena["params"][0], arena["params"][1]]       # the views the model holds
        self._slots = {k: [arena[f"opt_{k}"][0], arena[f"opt_{k}"][1]] for k in keys}

    def ready(self) -> bool:
        """True if this step can run on the workers (else: ``Model.apply_gradients``)."""
        opt = self.model.optimizer
        if opt.sharded_slots() != self.keys or len(opt.slots) != 1:
            return False
        return all(k in opt.slots[0] for k in self.keys)

    def adopt(self) -> None:
        """Make set ``cur`` hold the model's parameters and optimizer slots, wherever they are.

        Usually they already are views of it; after ``load_state_dict`` (resume, rollback)
        or a re-bound model they are copied in and the views restored.
        """
        m, slot = self.model, self.model.optimizer.slots[0]
        if m.params is not self._params[self.cur]:
            np.copyto(self._params[self.cur], m.params)
            self.bind()
        for k in self.keys:
            if slot[k] is not self._slots[k][self.cur]:
                np.copyto(self._slots[k][self.cur], slot[k])
                slot[k] = self._slots[k][self.cur]

    def bind(self) -> None:
        m = self.model
        m.bind(self._params[self.cur], m.grads, m.state, copy=False)

    def args(self) -> UpdateArgs:
        """What the workers need for the step about to run (the optimizer's t + 1); the model's
        optimizer counts it only in ``flip``, so a step that never completes leaves it as it was."""
        m, opt = self.model, self.model.optimizer
        return UpdateArgs(self.keys, m.weight_decay, m.clip_norm, dict(opt.hyperparameters(), t=opt.t + 1),
                          m.frozen_ranges())

    def flip(self) -> None:
        """Every chunk is done: set 1-cur becomes current, for the model and its optimizer,
        which counts the step (what Optimizer.step does)."""
        self.model.optimizer.count_step()
        self.cur = 1 - self.cur
        self.bind()
        slot = self.model.optimizer.slots[0]
        for k in self.keys:
            slot[k] = self._slots[k][self.cur]

    def current_params(self) -> np.ndarray:
        return self._params[self.cur]
