"""Optimizers (SGD with momentum, Adam) and the gradient regularisation applied before a step.

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


class Optimizer:
    """Base class: ``step(params_and_grads)`` updates each param in place from its grad."""

    def __init__(self, lr: float) -> None:
        if not float(lr) > 0:
            raise ValueError(f"learning rate must be positive, got {lr!r}")
        self.lr = float(lr)
        self.t = 0
        self.slots: list[dict[str, np.ndarray]] = []

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
        Only dpnn's own SGD and Adam say so; a subclass may do anything in ``step``."""
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


class SGD(Optimizer):
    """SGD with (PyTorch-style) momentum: v = m*v + g; p -= lr*v."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0) -> None:
        super().__init__(lr)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def sharded_slots(self) -> tuple[str, ...] | None:
        if type(self) is not SGD:
            return None
        return ("v",) if self.momentum else ()

    def update(self, p, g, slot) -> None:
        if self.momentum:
            v = slot.get("v")
            if v is None:
                v = slot["v"] = g.astype(p.dtype, copy=True)
            else:
                v *= self.momentum
                v += g
            g = v
        p -= p.dtype.type(self.lr) * g

    def get_config(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as in PyTorch."""

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def sharded_slots(self) -> tuple[str, ...] | None:
        return ("m", "v") if type(self) is Adam else None

    def update(self, p, g, slot) -> None:
        if "m" not in slot:
            slot["m"], slot["v"] = np.zeros_like(p), np.zeros_like(p)
        self.update_into(p, g, slot, p, slot)

    def update_into(self, p, g, slot, p_out, slot_out) -> None:
        """The update of (p, slot) written to (p_out, slot_out): no copy first when they differ
        (the sharded step writes the other parameter set); the same arrays update in place."""
        m, v, m_out, v_out = slot["m"], slot["v"], slot_out["m"], slot_out["v"]
        bc1, bc2 = 1 - self.beta1 ** self.t, 1 - self.beta2 ** self.t
        # p -= lr/bc1 * m / (sqrt(v/bc2) + eps), written as lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps*sqrt(bc2))
        step, eps = p.dtype.type(self.lr * np.sqrt(bc2) / bc1), p.dtype.type(self.eps * np.sqrt(bc2))
        tmp = self._scratch(min(p.size, BLOCK), p.dtype)   # reused: no temporaries, no page faults
        flat = [a.reshape(-1) for a in (p, g, m, v, p_out, m_out, v_out)]
        for a, b in blocks(0, flat[0].size):
            self._update_block(*(x[a:b] for x in flat), tmp[:b - a], step, eps)

    def _update_block(self, p, g, m, v, p_out, m_out, v_out, tmp, step, eps) -> None:
        b1, b2 = self.beta1, self.beta2
        np.multiply(m, b1, out=m_out)                                 # m = b1 m + (1 - b1) g
        np.multiply(g, 1 - b1, out=tmp)
        m_out += tmp
        np.multiply(v, b2, out=v_out)                                 # v = b2 v + (1 - b2) g^2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v_out += tmp
        np.sqrt(v_out, out=tmp)
        tmp += eps
        np.divide(m_out, tmp, out=tmp)
        tmp *= step
        np.subtract(p, tmp, out=p_out)

    def _scratch(self, size: int, dtype) -> np.ndarray:
        work = getattr(self, "_work", None)
        if work is None or work.size < size or work.dtype != dtype:
            work = self._work = np.empty(size, dtype)
        return work

    def get_config(self) -> dict:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get_optimizer(optimizer, **kwargs) -> Optimizer:
    """An Optimizer from a name ('sgd', 'adam') and its keyword arguments, or an instance."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()](**kwargs)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose 'sgd' or 'adam' or pass an Optimizer")


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


def regularize(params: np.ndarray, grads: np.ndarray, weight_decay: float = 0.0,
               clip_norm: float | None = None) -> float:
    """In place: grads += weight_decay * params, then clip to global L2 norm ``clip_norm``.

    Returns the global gradient norm before clipping.
    """
    if weight_decay:
        grads += grads.dtype.type(weight_decay) * params
    norm = float(np.sqrt(sum_of_squares(grads)))
    if clip_norm is not None and norm > clip_norm:
        grads *= grads.dtype.type(clip_norm / (norm + 1e-6))
    return norm


def sgd(lr: float = 0.01, momentum: float = 0.0) -> SGD:
    return SGD(lr=lr, momentum=momentum)


def adam(lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> Adam:
    return Adam(lr=lr, beta1=beta1, beta2=beta2, eps=eps)
