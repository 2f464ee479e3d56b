"""The optimizer step, sharded over the workers and still redoable after a death.

Adding gradient slots, weight decay and an SGD/Adam update are *elementwise*, so worker k
can do them for its own contiguous chunk [a, b) of the flat vector and the result is
bitwise what one process computes for the whole vector. That turns the coordinator's
serial millisecond into 1/N of it on every worker.

Recovery needs one more idea. An in-place update killed half-way leaves some elements
updated and some not, and the old values are gone. So parameters and optimizer slots
(Adam's m and v) have two copies, ``sets`` 0 and 1: a step reads set ``cur`` (never
written during the step) and writes set ``1 - cur``; only when every chunk is done does
the coordinator flip ``cur``. Redoing the phase after a death rewrites the same values.

Not elementwise, hence kept serial in the coordinator (``Model.apply_gradients``):
clipping (it needs the global norm before any update) and unknown optimizers. The first
step also runs there, so the optimizer creates its slots exactly as in one process.
"""
from __future__ import annotations

import copy

import numpy as np

from ..optim import SGD, Adam, sum_of_squares
from ..recipe import add_slots


def slot_keys(optimizer) -> tuple[str, ...] | None:
    """Per-parameter arrays an elementwise optimizer keeps; None if it is not elementwise."""
    if type(optimizer) is Adam:
        return ("m", "v")
    if type(optimizer) is SGD:
        return ("v",) if optimizer.momentum else ()
    return None


def scalars(optimizer) -> dict:
    """The optimizer's hyper-parameters and step count (lr, t, betas...): what changes per step."""
    return {k: v for k, v in vars(optimizer).items() if isinstance(v, (bool, int, float, str))}


def optimizer_twin(optimizer):
    """A copy without arrays (slots, scratch): a worker's own instance for its chunk."""
    twin = copy.copy(optimizer)
    for k, v in list(vars(twin).items()):
        if isinstance(v, (np.ndarray, list, dict)):
            setattr(twin, k, None if isinstance(v, np.ndarray) else type(v)())
    return twin


def update_chunk(arena, a: int, b: int, cur: int, keys: tuple[str, ...], weight_decay: float,
                 optimizer) -> float:
    """Worker side: grads[a:b] = sum of slots, + weight decay; set 1-cur = update of set cur.

    Returns the sum of squares of the chunk's gradient (for the global norm).
    """
    new = 1 - cur
    g = arena["grads_sum"][a:b]
    add_slots(arena["grads"][:, a:b], g)
    p_old, p = arena["params"][cur, a:b], arena["params"][new, a:b]
    if weight_decay:
        g += np.float32(weight_decay) * p_old
    square = sum_of_squares(g)
    np.copyto(p, p_old)
    slot = {}
    for k in keys:
        np.copyto(arena[f"opt_{k}"][new, a:b], arena[f"opt_{k}"][cur, a:b])
        slot[k] = arena[f"opt_{k}"][new, a:b]
    optimizer.update(p, g, slot)
    return square


class ShardedUpdate:
    """Coordinator side: when the workers may update, and keeping the model on set ``cur``."""

    def __init__(self, model, arena, keys: tuple[str, ...]) -> None:
        self.model, self.arena, self.keys = model, arena, keys
        self.cur = 0
        self._params = [arena["params"][0], arena["params"][1]]       # the views the model holds
        self._slots = {k: [arena[f"opt_{k}"][0], arena[f"opt_{k}"][1]] for k in keys}

    def ready(self) -> bool:
        """True if this step can run on the workers (else: ``Model.apply_gradients``)."""
        m, opt = self.model, self.model.optimizer
        if m.clip_norm is not None or slot_keys(opt) != self.keys or len(opt.slots) != 1:
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

    def message_args(self) -> tuple:
        """(cur, keys, weight decay, optimizer scalars) for the workers; counts the step."""
        opt = self.model.optimizer
        opt.t += 1                        # what Optimizer.step does before updating
        return self.cur, self.keys, self.model.weight_decay, scalars(opt)

    def flip(self) -> None:
        """Every chunk is done: set 1-cur becomes current, for the model and its optimizer."""
        self.cur = 1 - self.cur
        self.bind()
        slot = self.model.optimizer.slots[0]
        for k in self.keys:
            slot[k] = self._slots[k][self.cur]

    def current_params(self) -> np.ndarray:
        return self._params[self.cur]
