"""What the coordinator and a worker tell each other: this module is the schema.

Once, at start-up, each worker receives a :class:`WorkerSpec` (pickled with the Process).
Per step only one small message crosses its Pipe each way; parameters, gradients and the
batch are in shared memory (:mod:`dpnn.workers.arena`)::

    coordinator -> worker            worker -> coordinator
    -----------------------          --------------------------------------------------
                                     Ready(pid)                          once, at start
    Compute(...)                     Computed(shards, compute_s, update_times, span)
    Update(...)                      Updated(seconds)
    Evaluate(...)                    Evaluated(sums, seconds)
    Stop()                           (nothing: the worker leaves)
                                     Failed(traceback) | Aborted()       instead of a reply

Every message to a worker carries ``attempt``, which numbers every send, and every reply
echoes it, so a reply from an abandoned attempt is recognised and ignored.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field

import cloudpickle

from ..errors import NotPortableError
from ..floatmode import flush_denormals_enabled
from ..node import Finish
from .arena import Region


@dataclass(frozen=True)
class UpdateArgs:
    """What the workers' optimizer twins need for one sharded step (sharded_update.py)."""
    keys: tuple[str, ...]           # the optimizer's per-parameter arrays ("m", "v")
    weight_decay: float
    clip_norm: float | None
    hyperparameters: dict           # lr, betas, and t of the step being taken
    frozen: tuple = ()              # [start, stop) ranges of trainable=False layers: left as they are


@dataclass(frozen=True)
class Compute:
    """Fill slots ``slots[k][0]:slots[k][1]`` (worker k), slot j with samples bounds[j] of the
    batch in shared memory (its rows of the placed data when ``rows``, else x/y), gradients of
    sum(loss) / ``denominator`` with parameter set ``cur``; then ``finish`` (SUM: add the
    slots of this worker's chunk; UPDATE: also decay, clip and step it into set 1 - cur)."""
    attempt: int
    bounds: tuple[tuple[int, int], ...]
    slots: tuple[tuple[int, int], ...]
    denominator: int
    layout: dict | None             # the arena layout, when a region changed since the last step
    cur: int
    rows: bool
    finish: Finish
    update: UpdateArgs | None = None


@dataclass(frozen=True)
class Update:
    """Update this worker's chunk from grads_sum as it is (all-reduced across ranks)."""
    attempt: int
    cur: int
    args: UpdateArgs


@dataclass(frozen=True)
class Evaluate:
    """Score this worker's slice of eval_x/eval_y (running BatchNorm statistics), or with
    ``outputs`` write its predictions to eval_out."""
    attempt: int
    n: int
    layout: dict | None
    cur: int
    batch_size: int
    outputs: bool


Stop = namedtuple("Stop", "attempt", defaults=(0,))
Ready = namedtuple("Ready", "pid attempt", defaults=(0,))


@dataclass(frozen=True)
class Computed:
    attempt: int
    shards: list                     # ShardResult of every slot it filled
    compute: float                   # seconds of forward + backward
    update: tuple[float, float] | None   # (barrier wait, slot sum + update) seconds, if finished
    span: tuple[float, float]        # perf_counter when it took the message and replied (system-wide)


Updated = namedtuple("Updated", "attempt seconds")
Evaluated = namedtuple("Evaluated", "attempt sums seconds")         # sums: a recipe.Sums per batch
Failed = namedtuple("Failed", "attempt traceback")
Aborted = namedtuple("Aborted", "attempt")       # a peer died mid-step, so the barrier broke
REPLIES = (Computed, Updated, Evaluated)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to run the user's model and find the shared buffers."""
    workers: int                        # how many workers share each batch
    model_blob: bytes                   # cloudpickle of Model.portable(): the user's own objects
    optimizer_blob: bytes | None        # cloudpickle of an array-free optimizer copy, or None
    layout: dict[str, Region]           # arena regions: params, grads, state, x, y, keys, ...
    prefix: str                         # every segment name starts with this
    slots: int                          # gradient slots: the micro-shards (deterministic) or workers
    deterministic: bool                 # fixed micro-shards, slot per micro-shard
    sync_batchnorm: bool                # BatchNorm statistics over the global batch
    threads: int                        # BLAS threads per worker
    cpus: tuple                         # cpus[k]: logical CPUs of worker k, or None
    coordinator_pid: int                # the process to watch
    barrier_timeout: float = 600.0      # seconds a worker waits for its peers (sync BN, update)
    augment_blob: bytes | None = None   # cloudpickle of fit's augment fn(x, keys), or None
    flush_denormals: bool = field(default_factory=flush_denormals_enabled)   # the coordinator's mode


def step_times(replies: list[Computed], updated: bool) -> dict:
    """Seconds of one step from the workers' "done" replies: ``compute`` (the slowest forward
    + backward), ``straggler`` (slowest minus mean), ``busy`` (first start to last reply: some
    worker computes), ``update`` (the slowest slot sum + optimizer chunk), ``sync`` (what the
    barrier added on the critical path) and ``handler`` (the longest time a worker spent on
    the message: the coordinator's wait beyond it is signalling)."""
    compute = [r.compute for r in replies]
    slowest = max(compute)
    sync, update = (max(r.update[i] for r in replies) if updated else 0.0 for i in (0, 1))
    handler = max(r.compute + (sum(r.update) if updated else 0.0) for r in replies)
    spans = [r.span for r in replies]
    return {"compute": slowest, "straggler": slowest - sum(compute) / len(compute),
            "busy": max(e for _, e in spans) - min(s for s, _ in spans),
            "sync": max(0.0, handler - slowest - update), "update": update, "handler": handler}


def portable_blob(model) -> bytes:
    """cloudpickle of ``model.portable()``; a layer or loss that cannot travel is named."""
    try:
        return cloudpickle.dumps(model.portable())
    except Exception as whole:
        parts = [(f"layer {i} ({type(layer).__name__})", layer.portable())
                 for i, layer in enumerate(model.layers)] + [(f"loss ({type(model.loss).__name__})", model.loss)]
        culprit, error = "the model", whole
        for name, obj in parts:
            try:
                cloudpickle.dumps(obj)
            except Exception as e:
                culprit, error = name, e
                break
        raise NotPortableError(f"{culprit} cannot be sent to the worker processes ({type(error).__name__}: {error}); "
                               "keep only picklable attributes (arrays, numbers, strings), or use workers=1") from None


def augment_blob(augment) -> bytes | None:
    """cloudpickle of the augmentation function, or None; one that cannot travel is named."""
    if augment is None:
        return None
    if not callable(augment):
        raise TypeError(f"augment must be a callable fn(x, keys) -> x, got {type(augment).__name__}")
    try:
        return cloudpickle.dumps(augment)
    except Exception as e:
        raise NotPortableError(f"augment ({augment!r}) cannot be sent to the worker processes "
                               f"({type(e).__name__}: {e}); use a module-level function or class") from None
