"""The coordinator's share of a step: add the gradient slots, merge BatchNorm state, update.

Everything here is in place on preallocated arrays, and the order of every sum is fixed,
so the result depends only on the slots' contents, never on which worker filled them.
When the optimizer step can run on the workers (dpnn/workers/update.py) they also add
their chunk of the gradient slots, and the coordinator only merges BatchNorm state.
"""
from __future__ import annotations

import numpy as np

from ..engine import average_state


def add_slots(slots: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = slots[0] + slots[1] + ... in this order: bitwise what ``engine.sum_in_order`` gives,
    with one pass over memory fewer (no initial copy)."""
    if len(slots) == 1:
        np.copyto(out, slots[0])
        return out
    np.add(slots[0], slots[1], out=out)
    for s in slots[2:]:
        out += s
    return out


class StepReducer:
    """Reduce ``grad_slots`` (S, P) into ``model.grads`` and ``state_slots[1:]`` into row 0."""

    def __init__(self, model, grad_slots: np.ndarray, state_slots: np.ndarray) -> None:
        self.model, self.grad_slots, self.state_slots = model, grad_slots, state_slots

    def reduce(self, counts: list[int], same_state: bool = False, grads: bool = True) -> None:
        """grads = sum of slots in order (unless ``grads=False``); state = sample-weighted
        average of the slot states.

        ``same_state``: every non-empty slot holds the same statistics (synchronised
        BatchNorm), so copy one instead of averaging (which could round differently).
        """
        if grads:
            add_slots(self.grad_slots, self.model.grads)
        state = self.state_slots
        if state.shape[1]:
            if same_state:
                np.copyto(state[0], state[1 + next(k for k, c in enumerate(counts) if c)])
            else:
                average_state(state[1:], counts, state[0])

    def apply(self) -> float:
        """Weight decay, clipping and the optimizer step in place, exactly as one process does."""
        return self.model.apply_gradients()
