"""The coordinator's share of a step: add the gradient slots, merge BatchNorm state, update.

Everything here is in place on preallocated arrays, and the order of every sum is fixed,
so the result depends only on the slots' contents, never on which worker filled them.

While the coordinator works the workers are idle, so their cores are free: the flat
vector is cut into a few contiguous chunks handled by threads (NumPy releases the GIL in
its loops). That is exact because every operation involved is elementwise — adding slots,
weight decay, and the update of an *elementwise* optimizer (SGD, Adam): a float32 sum or
product does not depend on which other elements share the call. Whatever is not
elementwise (clipping needs the global norm first; an unknown optimizer) runs as
``Model.apply_gradients`` in one thread, exactly as in one process.
"""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..engine import average_state
from ..optim import SGD, Adam

MIN_CHUNK = 1 << 18       # floats per thread: below, waking threads (and waiting for a busy
                          # core) costs more than it saves -- the 421k seed-cnn stays serial
MAX_THREADS = 4           # memory bandwidth, not cores, limits these loops beyond a few
MIN_THREADED_ADDS = 1 << 21   # slot additions worth waking the threads for (8 slots x 421k: yes)


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


def required_slots(optimizer) -> tuple[str, ...] | None:
    """Slot arrays an elementwise optimizer keeps per parameter; None if it is not elementwise."""
    if type(optimizer) is Adam:
        return ("m", "v")
    if type(optimizer) is SGD:
        return ("v",) if optimizer.momentum else ()
    return None


class StepReducer:
    """Reduce ``grad_slots`` (S, P) into ``model.grads`` and ``state_slots[1:]`` into row 0,
    then update ``model.params``; on ``threads`` chunks of at least ``min_chunk`` floats."""

    def __init__(self, model, grad_slots: np.ndarray, state_slots: np.ndarray, threads: int = 1,
                 min_chunk: int = MIN_CHUNK) -> None:
        self.model, self.grad_slots, self.state_slots = model, grad_slots, state_slots
        P = model.params.size
        k = max(1, min(threads, MAX_THREADS, P // max(min_chunk, 1)))
        self.chunks = [(i * P // k, (i + 1) * P // k) for i in range(k)]
        self.pool = ThreadPoolExecutor(k, thread_name_prefix="dpnn-reduce") if k > 1 else None
        self._twins: list = []          # one optimizer copy per chunk: private scratch arrays

    def _map(self, fn) -> list:
        if self.pool is None:
            return [fn(a, b) for a, b in self.chunks]
        return list(self.pool.map(lambda ab: fn(*ab), self.chunks))

    def reduce(self, counts: list[int], same_state: bool = False) -> None:
        """grads = sum of slots in order; state = sample-weighted average of the slot states.

        ``same_state``: every non-empty slot holds the same statistics (synchronised
        BatchNorm), so copy one instead of averaging (which could round differently).
        """
        slots, grads = self.grad_slots, self.model.grads
        if (len(slots) - 1) * grads.size >= MIN_THREADED_ADDS:
            self._map(lambda a, b: add_slots(slots[:, a:b], grads[a:b]))
        else:                                 # a pass or two over memory: threads cost more
            add_slots(slots, grads)
        state = self.state_slots
        if state.shape[1]:
            if same_state:
                np.copyto(state[0], state[1 + next(k for k, c in enumerate(counts) if c)])
            else:
                average_state(state[1:], counts, state[0])

    def apply(self) -> float:
        """Weight decay, clipping and the optimizer step on the shared parameters; the grad norm.

        Chunked when exact; the returned norm then adds float64 partial sums per chunk, so
        it may differ from one process's in the last digits (it only matters for clipping,
        which is never chunked).
        """
        m = self.model
        opt, needs = m.optimizer, required_slots(m.optimizer)
        if (self.pool is None or m.clip_norm is not None or needs is None or len(opt.slots) != 1
                or any(k not in opt.slots[0] for k in needs)):
            return m.apply_gradients()        # also creates the optimizer's slots on step 1
        opt.t += 1                            # what Optimizer.step does before updating
        twins = self._sync_twins(opt)
        slot, wd = opt.slots[0], np.float32(m.weight_decay)
        p, g = m.params, m.grads

        def update(i: int, a: int, b: int) -> float:
            if wd:
                g[a:b] += wd * p[a:b]
            square = np.einsum("i,i->", g[a:b], g[a:b], dtype=np.float64)   # before the update
            twins[i].update(p[a:b], g[a:b], {k: v[a:b] for k, v in slot.items()})
            return float(square)

        if self.pool is None:
            parts = [update(i, a, b) for i, (a, b) in enumerate(self.chunks)]
        else:
            parts = list(self.pool.map(lambda i: update(i, *self.chunks[i]), range(len(self.chunks))))
        return float(np.sqrt(sum(parts)))

    def _sync_twins(self, opt) -> list:
        """Per-chunk copies of the optimizer with its current scalars (lr, t, betas, ...)."""
        if len(self._twins) != len(self.chunks) or type(self._twins[0]) is not type(opt):
            self._twins = []
            for _ in self.chunks:
                twin = copy.copy(opt)
                for k, v in list(vars(twin).items()):
                    if isinstance(v, (np.ndarray, list, dict)):
                        setattr(twin, k, type(v)() if not isinstance(v, np.ndarray) else None)
                self._twins.append(twin)
        scalars = {k: v for k, v in vars(opt).items() if isinstance(v, (bool, int, float, str))}
        for twin in self._twins:
            vars(twin).update(scalars)
        return self._twins

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
