"""What one machine does in a training step: the node contract, and the in-process node.

The step (:class:`dpnn.step.Step`) hands a *node* the shards of the global batch that this
machine computes; the node runs the recipe (:mod:`dpnn.recipe`) on them, as far as
:class:`Finish` asks. :class:`InProcessNode` and :class:`dpnn.workers.PoolNode` (worker
processes) implement :class:`NodeBackend`; neither knows about MPI, the step's business.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

import numpy as np

from . import floatmode, placement
from .recipe import ShardResult, StepStats, Sums, combine_shards, evaluation_parts, run_shard

if TYPE_CHECKING:
    from .model import Model


class Finish(Enum):
    """How far a node takes a step after every shard's gradient is in its slot."""
    SLOTS = "slots"      # no further: MPI's deterministic mode gathers the slots themselves
    SUM = "sum"          # model.grads = its slots added in order (MPI all-reduces it next)
    UPDATE = "update"    # and weight decay, clipping and the optimizer step


@dataclass(frozen=True)
class EngineInfo:
    """What actually runs: printed by ``fit`` before training, passed to ``on_train_begin``."""
    kind: str                        # 'in-process', 'shared-memory' or 'mpi'
    workers: int                     # worker processes per rank (1: the rank's own process)
    threads_per_worker: int | None   # BLAS threads per worker (None: BLAS's own default)
    ranks: int = 1                   # MPI ranks
    deterministic: bool = False
    rank: int = 0                    # this process's MPI rank (0 prints and writes files)
    seed: int | None = None          # MPI: the seed every rank uses (rank 0's); else None
    denormals: str = field(default_factory=floatmode.describe)   # this process's mode (floatmode.py)
    micro_shards: int | None = None  # deterministic mode: fixed micro-shards per batch (a checkpoint keeps it)

    def __str__(self) -> str:
        t = self.threads_per_worker
        blas = f"{t} BLAS thread{'s' * (t != 1)}" if t else "BLAS default threads"
        where = "in this process" if self.kind == "in-process" else (
            f"{self.workers} worker process{'es' * (self.workers != 1)}")
        text = f"{where} x {blas}"
        if self.ranks > 1:
            text = f"{self.ranks} MPI ranks, each {text}"
        return text + (f", deterministic ({self.micro_shards} micro-shards)" if self.deterministic else "") \
            + f", {self.denormals}"

    def as_logs(self) -> dict:
        return {"engine": self.kind, "workers": self.workers, "threads_per_worker": self.threads_per_worker,
                "ranks": self.ranks, "denormals": self.denormals, "micro_shards": self.micro_shards}


class Engine(Protocol):
    """How ``fit`` trains, whoever computes: every engine is a :class:`dpnn.step.Step`
    (docs/engine.md tabulates the methods)."""

    model: Model

    def train_step(self, x: np.ndarray, y: np.ndarray, keys: np.ndarray | None = None) -> StepStats: ...
    def place_data(self, X: np.ndarray, Y: np.ndarray) -> None: ...
    def train_rows(self, indices: np.ndarray, keys: np.ndarray | None = None) -> StepStats: ...
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]: ...
    def sync_state(self) -> None: ...
    def close(self) -> None: ...
    def describe(self) -> EngineInfo: ...


class Batch:
    """The global batch: arrays (x, y), or rows ``rows`` of the placed training set (X, Y)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.x, self.y, self.rows = x, y, rows

    def __len__(self) -> int:
        return len(self.x) if self.rows is None else len(self.rows)

    def take(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples a:b of the batch as arrays."""
        if self.rows is None:
            return self.x[a:b], self.y[a:b]
        return self.x[self.rows[a:b]], self.y[self.rows[a:b]]


@dataclass
class NodeResult:
    shards: list[ShardResult]        # one per slot, in slot order
    grad_norm: float | None          # after Finish.UPDATE: the global norm before clipping
    times: dict = field(default_factory=dict)   # seconds: compute, wait, reduce, optimizer...


class NodeBackend(Protocol):
    """One machine's part of a step. ``run``: shard j = samples ``bounds[j]`` of the global
    batch, d(sum of its losses)/dθ / ``denominator`` into slot j, then ``finish``;
    ``slot_arrays(count)``: (grads (count, P), states (count, S)) as Finish.SLOTS left them;
    ``apply_update``: the optimizer step on ``model.grads`` as it stands -> the norm before clipping;
    ``evaluation_parts``: each batch's sums, in order."""

    model: Model
    kind: str
    workers: int
    threads_per_worker: int | None
    closed: bool

    def place_data(self, X: np.ndarray, Y: np.ndarray) -> None: ...
    def run(self, batch: Batch, bounds: list[tuple[int, int]], denominator: int, keys: np.ndarray,
            finish: Finish) -> NodeResult: ...
    def slot_arrays(self, count: int) -> tuple[np.ndarray, np.ndarray]: ...
    def apply_update(self) -> float: ...
    def evaluation_parts(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> list[Sums]: ...
    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray: ...
    def close(self) -> None: ...


class InProcessNode:
    """Every shard in this process, one after another.

    ``threads_per_worker`` limits this process's BLAS threads while the node is open
    (deterministic mode: 1, because GEMM results can depend on the thread count);
    ``augment`` (fn(x, keys)) transforms each shard before its forward pass.
    """

    kind = "in-process"
    workers = 1

    def __init__(self, model, deterministic: bool = False, threads_per_worker: int | None = None,
                 augment=None) -> None:
        self.model, self.augment, self.closed = model, augment, False
        self._threads = placement.local_threads(threads_per_worker, deterministic)
        self._limit = placement.blas_limit(self._threads)
        self._slots: np.ndarray | None = None
        self._state_slots: np.ndarray | None = None

    @property
    def threads_per_worker(self) -> int:
        return self._threads or placement.current_blas_threads()

    def place_data(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Nothing to place: the step takes the rows from the arrays themselves."""

    def run(self, batch: Batch, bounds: list[tuple[int, int]], denominator: int, keys: np.ndarray,
            finish: Finish) -> NodeResult:
        m = self.model
        t0 = time.perf_counter()
        if len(bounds) == 1 and finish is not Finish.SLOTS:     # straight into model.grads/state
            a, b = bounds[0]
            shards = [run_shard(m, 0, *batch.take(a, b), denominator, keys[a:b], None, self.augment)]
        else:
            shards = self._run_slots(batch, bounds, denominator, keys)
            if finish is not Finish.SLOTS:
                k = len(bounds)
                combine_shards(shards, self._slots[:k], self._state_slots[:k], m.grads, m.state)
        t1 = time.perf_counter()
        norm = m.apply_gradients() if finish is Finish.UPDATE else None
        times = {"compute": t1 - t0, "wait": 0.0, "reduce": 0.0, "optimizer": time.perf_counter() - t1}
        return NodeResult(shards, norm, times)

    def _run_slots(self, batch: Batch, bounds, denominator: int, keys) -> list[ShardResult]:
        """Shard j into slot j, each from the step's BatchNorm state; model.state is left as it was."""
        m = self.model
        if self._slots is None or len(self._slots) < len(bounds) or self._slots.shape[1] != m.grads.size:
            self._slots = np.zeros((len(bounds), m.grads.size), np.float32)
            self._state_slots = np.zeros((len(bounds), m.state.size), np.float32)
        state0, grads = m.state.copy(), m.grads
        shards = []
        try:
            for j, (a, b) in enumerate(bounds):
                m.bind_grads(self._slots[j])
                shards.append(run_shard(m, j, *batch.take(a, b), denominator, keys[a:b], state0, self.augment))
                self._state_slots[j] = m.state
        finally:
            m.bind_grads(grads)
            m.state[...] = state0
        return shards

    def slot_arrays(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        return self._slots[:count], self._state_slots[:count]

    def apply_update(self) -> float:
        return self.model.apply_gradients()

    def evaluation_parts(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> list[Sums]:
        return evaluation_parts(self.model, x, y, batch_size)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.model.predict(x, batch_size)

    def close(self) -> None:
        self.closed = True
        self._limit.close()
