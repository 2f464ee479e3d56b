"""What happens to the gradient before the optimizer: coupled L2 weight decay, global-norm
clipping with an exact norm, and the frozen (``trainable=False``) ranges kept out of the step."""
from __future__ import annotations

import math

import numpy as np

from .base import NORM_BLOCK


def square_sums(a: np.ndarray, out: np.ndarray | None = None, start: int = 0) -> np.ndarray:
    """sum(a**2) of every ``NORM_BLOCK``-element block of a flat vector, in float64.

    ``a`` is the piece of the vector that begins at element ``start`` (a multiple of
    NORM_BLOCK) and ends on a block boundary or at the vector's end; ``out`` is the whole
    vector's array of block sums (one entry per block), of which this piece fills its own.
    Each block is summed by NumPy's pairwise summation in float32, whoever sums it.
    """
    a = a.reshape(-1)
    if out is None:
        out = np.zeros(-(-(start + a.size) // NORM_BLOCK), np.float64)
    first, whole = start // NORM_BLOCK, a.size // NORM_BLOCK
    if whole:
        out[first:first + whole] = np.square(a[:whole * NORM_BLOCK]).reshape(whole, NORM_BLOCK).sum(axis=1)
    if a.size > whole * NORM_BLOCK:
        out[first + whole] = np.square(a[whole * NORM_BLOCK:]).sum()
    return out


def sum_of_squares(a: np.ndarray) -> float:
    """sum(a**2): float32 block sums added exactly (``math.fsum``). Whoever computes which
    blocks -- one process, or each worker its chunk -- the total is bitwise the same, and
    about 1e-8 relative to the exact value (see python -m benchmarks.ablation)."""
    return math.fsum(square_sums(a))


def clip_ranges(ranges, lo: int, hi: int):
    """The parts of ``ranges`` ([(a, b), ...] of the flat vector) inside [lo, hi), relative to lo."""
    for a, b in ranges:
        a, b = max(a, lo), min(b, hi)
        if a < b:
            yield a - lo, b - lo


def zero_ranges(g: np.ndarray, ranges, lo: int = 0) -> None:
    """g[...] = 0 on the parts of ``ranges`` inside the piece of the vector that starts at ``lo``."""
    for a, b in clip_ranges(ranges, lo, lo + g.size):
        g[a:b] = 0


def regularize(params: np.ndarray, grads: np.ndarray, weight_decay: float = 0.0,
               clip_norm: float | None = None, frozen=()) -> float:
    """In place: grads += weight_decay * params, zero on the ``frozen`` ranges, then clip to
    global L2 norm ``clip_norm``. Returns the global gradient norm before clipping."""
    if weight_decay:
        grads += grads.dtype.type(weight_decay) * params
    zero_ranges(grads, frozen)
    norm = float(np.sqrt(sum_of_squares(grads)))
    if clip_norm is not None and norm > clip_norm:
        grads *= grads.dtype.type(clip_norm / (norm + 1e-6))
    return norm


def keep_frozen(frozen, arrays_before: list[np.ndarray], arrays_after: list[np.ndarray],
                lo: int = 0, hi: int | None = None) -> None:
    """Copy the ``frozen`` ranges of each array before the step into the array after it (the
    same array, or the other parameter set): a frozen layer's weights and slots stay bitwise."""
    for before, after in zip(arrays_before, arrays_after):
        if before is after:
            continue
        b, a = before.reshape(-1), after.reshape(-1)
        for x, y in clip_ranges(frozen, lo, b.size + lo if hi is None else hi):
            a[x:y] = b[x:y]


def step_keeping_frozen(optimizer, params: np.ndarray, grads: np.ndarray, frozen) -> None:
    """``optimizer.step`` on the flat vector, after which the ``frozen`` ranges of the parameters
    and of the optimizer's slots (arrays shaped like ``params``) are as before it, bitwise."""
    if not frozen:
        optimizer.step([(params, grads)])
        return
    slots = getattr(optimizer, "slots", None) or [{}]
    arrays = [params, *(v for v in slots[0].values() if isinstance(v, np.ndarray) and v.shape == params.shape)]
    before = [a.copy() for a in arrays]
    optimizer.step([(params, grads)])
    keep_frozen(frozen, before, arrays)
