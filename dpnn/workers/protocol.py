"""What the coordinator and a worker tell each other.

Once, at start-up, each worker receives a :class:`WorkerSpec` (pickled with the Process).
Per step only small tuples cross its Pipe; the parameters, gradients and the batch are in
shared memory (:mod:`dpnn.workers.arena`)::

    coordinator -> worker   ("step", attempt, n, denominator, layout | None, cur, rows, update, cuts)
                            n = global batch size; gradients are d(sum loss)/dθ / denominator,
                            computed with parameter set ``cur`` (see dpnn/workers/update.py);
                            rows: the samples are rows[a:b] of the placed data (batches.py),
                            else the copied batch x[a:b]; update: None, or (slot keys,
                            weight decay, clip norm, optimizer scalars): then sum the slots
                            and update this worker's chunk into set 1 - cur; or "sum": only
                            sum the slots of its chunk (the MPI engine all-reduces them next);
                            cuts: None (equal shards) or (0, c1, ..., n), worker k's shard
                            [c_k, c_(k+1)) sized to its speed (balance.py)
                            ("update", attempt, cur, slot keys, weight decay, clip norm, scalars)
                            update its chunk from grads_sum as it is (all-reduced), into 1 - cur
                            ("eval", attempt, n, layout | None, cur, batch_size, outputs)
                            score rows [a:b] of eval_x/eval_y (a, b: this worker's slice),
                            or (outputs) write their predictions to eval_out[a:b]
                            ("stop",)
    worker -> coordinator   ("ready", pid)
                            ("done", attempt, shards, compute_seconds, None | (barrier
                                    wait seconds, update seconds), (start, end))   after "step"
                            ("done", attempt, [], seconds)                 after "update"
                            (start, end: time.perf_counter() when the worker took the
                            message and when it replied; the clock is system-wide)
                            ("done", attempt, [loss sum, hits, count], s)  after "eval"
                            ("error", attempt, traceback_text)
                            ("aborted", attempt)                     a peer died mid-step

``shards`` lists ``(slot, loss_sum, correct, count)`` for every gradient slot the worker
filled, so the coordinator adds losses in slot order whoever computed them. ``attempt``
numbers every send, so a reply from an abandoned attempt is recognised and ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cloudpickle

from ..floatmode import flush_denormals_enabled
from .arena import Region

STEP, UPDATE, EVAL, STOP = "step", "update", "eval", "stop"
READY, DONE, ERROR, ABORTED = "ready", "done", "error", "aborted"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to run the user's model and find the shared buffers."""
    workers: int                        # how many workers share each batch
    model_blob: bytes                   # cloudpickle of Model.portable(): the user's own objects
    optimizer_blob: bytes | None        # cloudpickle of an array-free optimizer copy, or None
    layout: dict[str, Region]           # arena regions: params, grads, state, x, y, keys, ...
    prefix: str                         # every segment name starts with this
    slots: int                          # gradient slots: 8 (deterministic) or workers
    deterministic: bool                 # fixed micro-shards, slot per micro-shard
    sync_batchnorm: bool                # BatchNorm statistics over the global batch
    threads: int                        # BLAS threads per worker
    cpus: tuple                         # cpus[k]: logical CPUs of worker k, or None
    coordinator_pid: int                # the process to watch
    barrier_timeout: float = 600.0      # seconds a worker waits for its peers (sync BN, update)
    augment_blob: bytes | None = None   # cloudpickle of fit's augment fn(x, keys), or None
    flush_denormals: bool = field(default_factory=flush_denormals_enabled)   # the coordinator's mode


def shard_slots(spec: WorkerSpec, worker_id: int) -> range:
    """The gradient slots worker ``worker_id`` fills: one, or a contiguous run of micro-shards."""
    if not spec.deterministic:
        return range(worker_id, worker_id + 1)
    from ..recipe import owned_slots
    return owned_slots(spec.slots, spec.workers, worker_id)


def step_times(replies: list, updated: bool) -> dict:
    """Seconds of one step from the workers' "done" replies: ``compute`` (the slowest forward
    + backward), ``straggler`` (slowest minus mean), ``busy`` (first start to last reply: some
    worker computes), ``update`` (the slowest slot sum + optimizer chunk), ``sync`` (what the
    barrier added on the critical path) and ``handler`` (the longest time a worker spent on
    the message: the coordinator's wait beyond it is signalling)."""
    compute = [r[3] for r in replies]
    slowest = max(compute)
    sync, update = (max(r[4][i] for r in replies) if updated else 0.0 for i in (0, 1))
    handler = max(r[3] + (sum(r[4]) if updated else 0.0) for r in replies)
    spans = [r[5] for r in replies]
    return {"compute": slowest, "straggler": slowest - sum(compute) / len(compute),
            "busy": max(e for _, e in spans) - min(s for s, _ in spans),
            "sync": max(0.0, handler - slowest - update), "update": update, "handler": handler}


def portable_blob(model) -> bytes:
    """cloudpickle of ``model.portable()``; a layer or loss that cannot travel is named."""
    try:
        return cloudpickle.dumps(model.portable())
    except Exception as e:       # noqa: BLE001 -- find the culprit for the message
        parts = [(f"layer {i} ({type(layer).__name__})", layer.portable())
                 for i, layer in enumerate(model.layers)] + [(f"loss ({type(model.loss).__name__})", model.loss)]
        for name, obj in parts:
            try:
                cloudpickle.dumps(obj)
            except Exception as inner:     # noqa: BLE001
                e = inner
                break
        else:
            name = "the model"
        raise TypeError(f"{name} cannot be sent to the worker processes ({type(e).__name__}: {e}); "
                        "keep only picklable attributes on it (arrays, numbers, strings), or train "
                        "with workers=1") from None


def augment_blob(augment) -> bytes | None:
    """cloudpickle of the augmentation function, or None; one that cannot travel is named."""
    if augment is None:
        return None
    if not callable(augment):
        raise TypeError(f"augment must be a callable fn(x, keys) -> x, got {type(augment).__name__}")
    try:
        return cloudpickle.dumps(augment)
    except Exception as e:       # noqa: BLE001
        raise TypeError(f"augment ({augment!r}) cannot be sent to the worker processes "
                        f"({type(e).__name__}: {e}); use a module-level function or class") from None
