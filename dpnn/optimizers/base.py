"""The Optimizer base class, hyperparameter checks, and the cache-block walk every update uses.

Inside a Model all parameters are one flat float32 vector, so ``step`` usually sees a single
(param, grad) pair and updates it in place with a handful of vectorised operations. Those
run on ``BLOCK``-element pieces, so the dozen passes Adam makes over a piece stay in the
core's cache instead of streaming the whole vector from memory a dozen times (every
operation is elementwise, so the result is bitwise the same as one pass over the vector).
"""
from __future__ import annotations

import copy
import math

import numpy as np

BLOCK = 1 << 15       # elements per cache block (128 KiB of float32)
NORM_BLOCK = 1 << 12  # elements per partial sum of squares (divides BLOCK)


def blocks(a: int, b: int, size: int = BLOCK):
    """(start, stop) pieces of range(a, b), cut at multiples of ``size``."""
    start = a
    while start < b:
        stop = min(b, (start // size + 1) * size)
        yield start, stop
        start = stop


def check_flag(name: str, value) -> bool:
    """``value`` as a bool if it is True or False (NumPy's too), else one TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_number(name: str, value, low: float = 0.0, high: float = math.inf,
                 low_open: bool = False, high_open: bool = True) -> float:
    """``value`` as a float if it is finite and inside the interval, else one ValueError."""
    if high < math.inf:
        where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    else:
        where = "positive" if low_open and low == 0 else f"{'>' if low_open else '>='} {low:g}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number {where}, got {value!r} (a learning-rate schedule is "
                         "a callback here, e.g. LearningRateScheduler)") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number {where}, got {value!r}")
    if v < low or v > high or (low_open and v == low) or (high_open and v == high):
        raise ValueError(f"{name} must be {where}, got {value!r}")
    return v


def pick(dpnn_name: str, dpnn_value, keras_name: str, keras_value, default):
    """One hyperparameter given under dpnn's name (``lr``) or Keras's (``learning_rate``)."""
    if dpnn_value is not None and keras_value is not None:
        raise TypeError(f"give {dpnn_name}= or {keras_name}=, not both (they are the same setting)")
    value = keras_value if keras_value is not None else dpnn_value
    return default if value is None else value


class Optimizer:
    """Base class: ``step(params_and_grads)`` updates each param in place from its grad.

    ``learning_rate`` (Keras's name) and ``lr`` read and set the same rate; the next step,
    on every engine, uses the value set. ``weight_decay`` here is *decoupled* (AdamW's and
    Keras's optimizers': ``p -= lr * weight_decay * p`` beside the step), unlike
    ``Model.compile(weight_decay=)``, which adds ``weight_decay * p`` to the gradient.
    """

    def __init__(self, lr: float | None = None, learning_rate: float | None = None,
                 weight_decay: float = 0.0) -> None:
        self.lr = check_number("learning rate", pick("lr", lr, "learning_rate", learning_rate, None),
                               low_open=True)
        self.weight_decay = check_number("weight_decay", 0.0 if weight_decay is None else weight_decay)
        self.t = 0
        self.slots: list[dict[str, np.ndarray]] = []

    @property
    def learning_rate(self) -> float:
        """The rate the next step uses (Keras's name for ``lr``)."""
        return self.lr

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self.lr = check_number("learning rate", value, low_open=True)

    @property
    def iterations(self) -> int:
        """Steps taken (Keras's name for ``t``)."""
        return self.t

    def _slot(self, i: int, p: np.ndarray) -> dict[str, np.ndarray]:
        while len(self.slots) <= i:
            self.slots.append({})
        return self.slots[i]

    def step(self, params_and_grads) -> None:
        self.t += 1
        for i, (p, g) in enumerate(params_and_grads):
            self.update(p, g, self._slot(i, p))

    def update(self, p: np.ndarray, g: np.ndarray, slot: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def update_into(self, p, g, slot, p_out, slot_out) -> None:
        """``update`` whose result goes to ``p_out``/``slot_out`` (same keys), leaving p and slot
        as they were unless they are the same arrays. This default copies, then updates."""
        if p_out is not p:
            np.copyto(p_out, p)
        for k, v in slot.items():
            if slot_out[k] is not v:
                np.copyto(slot_out[k], v)
        self.update(p_out, g, slot_out)

    def get_config(self) -> dict:
        return {"lr": self.lr}

    # -- sharding: what the worker pool needs to step a chunk of the parameters ---------------
    def sharded_slots(self) -> tuple[str, ...] | None:
        """The per-parameter arrays of an elementwise update (``update_into`` on any chunk gives
        that chunk of the whole update), or None: the step then runs whole, in one process.
        Only dpnn's own optimizers say so; a subclass may do anything in ``step``."""
        return None

    def hyperparameters(self) -> dict:
        """The scalars a step reads (lr, t, betas...): sent to the workers' twins every step."""
        return {k: v for k, v in vars(self).items() if isinstance(v, (bool, int, float, str))}

    def set_hyperparameters(self, values: dict) -> None:
        for k, v in values.items():
            setattr(self, k, v)

    def twin(self) -> "Optimizer":
        """A copy without arrays (slots, scratch): a worker's own instance for its chunk."""
        twin = copy.copy(self)
        for k, v in list(vars(twin).items()):
            if isinstance(v, (np.ndarray, list, dict)):
                setattr(twin, k, None if isinstance(v, np.ndarray) else type(v)())
        return twin

    def count_step(self) -> None:
        """One step was taken outside :meth:`step` (every chunk of a sharded update is done)."""
        self.t += 1

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays only (so it saves to HDF5/NPZ without pickle): step count, lr and every slot."""
        out = {"t": np.array(self.t, np.int64), "lr": np.array(self.lr, np.float64)}
        for i, slot in enumerate(self.slots):
            out.update({f"{i}/{k}": v.copy() for k, v in slot.items()})
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.t, self.lr = int(state["t"]), float(state["lr"])
        self.slots = []
        for key, v in state.items():
            if "/" in key:
                i, name = key.split("/", 1)
                self._slot(int(i), v)[name] = np.array(v, copy=True)


class ElementwiseOptimizer(Optimizer):
    """dpnn's own optimizers: every slot is an array like the parameter (zeros at first) and the
    update is elementwise, so the worker pool may run it chunk by chunk (bitwise the same).

    A subclass names its slots in :meth:`slot_names` and writes :meth:`update_into`.
    """

    def slot_names(self) -> tuple[str, ...]:
        return ()

    def sharded_slots(self) -> tuple[str, ...] | None:
        # a user's subclass (defined outside dpnn) may do anything in step: it runs whole
        return self.slot_names() if type(self).__module__.startswith("dpnn.") else None

    def update(self, p, g, slot) -> None:
        for k in self.slot_names():
            if k not in slot:
                slot[k] = np.zeros_like(p)
        self.update_into(p, g, slot, p, slot)

    def pieces(self, p, g, slot, p_out, slot_out):
        """Yield (p, g, slots..., p_out, slots_out..., tmp) views of each cache block, flat."""
        keys = self.slot_names()
        flat = [a.reshape(-1) for a in (p, g, *(slot[k] for k in keys), p_out, *(slot_out[k] for k in keys))]
        tmp = self._scratch(min(p.size, BLOCK), p.dtype)   # reused: no temporaries, no page faults
        for a, b in blocks(0, flat[0].size):
            yield (*(x[a:b] for x in flat), tmp[:b - a])

    def decay_into(self, p: np.ndarray, p_out: np.ndarray) -> np.ndarray:
        """p_out = p * (1 - lr * weight_decay) (decoupled, as torch.optim.AdamW); the array the
        update then subtracts its step from (p itself without decay)."""
        if not self.weight_decay:
            return p
        np.multiply(p, p.dtype.type(1 - self.lr * self.weight_decay), out=p_out)
        return p_out

    def _scratch(self, size: int, dtype) -> np.ndarray:
        work = getattr(self, "_work", None)
        if work is None or work.size < size or work.dtype != dtype:
            work = self._work = np.empty(size, dtype)
        return work

    def get_config(self) -> dict:
        cfg = {"lr": self.lr}
        if self.weight_decay:
            cfg["weight_decay"] = self.weight_decay
        return cfg
