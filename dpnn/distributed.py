"""Data-parallel training across machines (one MPI rank per node): ``fit(..., backend='mpi')``.

Every rank holds the whole model and draws the same global batch from (seed, epoch); the
step's docstring (:mod:`dpnn.step`) shows what crosses ranks.
"""
from __future__ import annotations

from . import placement
from .comm import Communicator, get_communicator
from .node import InProcessNode
from .step import RanksDiverged, Step  # noqa: F401 (RanksDiverged: part of this module's API)
from .workers import PoolNode


class DistributedEngine(Step):
    """``Step(node, MPI)``: ``workers`` > 1 computes each rank's shards on that machine's
    worker pool (deterministic mode too: its micro-shards, one slot each), ``workers`` = 1 in
    the rank's own process. BatchNorm uses each rank's slice statistics unless
    ``sync_batchnorm=True`` (one worker per rank): batch sums are then all-reduced across ranks.
    Deterministic mode: ``micro_shards`` (None: chosen from ``batch_size``) at least ranks x
    workers; ``workers='auto'`` takes at most micro_shards // ranks per rank.
    """

    def __init__(self, model, comm: Communicator | str = "mpi", workers=1,
                 threads_per_worker: int | None = None, deterministic: bool = False,
                 check_every: int = 50, sync_batchnorm: bool | None = None, seed: int | None = None,
                 augment=None, micro_shards: int | None = None, batch_size: int | None = None,
                 **pool_options) -> None:
        if not model.built:
            raise ValueError("build the model before creating its engine: model.build(input_shape)")
        comm = get_communicator(comm)
        if sync_batchnorm and (deterministic or workers not in (1, None)):
            raise ValueError("sync_batchnorm=True across MPI ranks needs workers=1 per rank and "
                             "deterministic=False")
        n = placement.resolve_workers(1 if workers is None else workers, comm.local_size,
                                      pool_options.pop("oversubscribe", False))
        micro = placement.resolve_micro_shards(micro_shards, batch_size) if deterministic else None
        if deterministic and workers == "auto":      # every worker of every rank needs a micro-shard
            n = max(1, min(n, micro // comm.size))
        if n > 1:
            node = PoolNode(model, workers=n, threads_per_worker=threads_per_worker,
                            deterministic=deterministic, ranks=comm.local_size, oversubscribe=True,
                            augment=augment, micro_shards=micro, **pool_options)
        else:              # computing in this process: ranks x threads never exceed the cores
            threads, _ = placement.worker_threads(1, threads_per_worker, deterministic, comm.local_size)
            node = InProcessNode(model, deterministic, threads, augment)
        super().__init__(node, comm, deterministic, bool(sync_batchnorm), check_every, seed, micro)


def on_root(comm: Communicator, fn, *args, root: int = 0):
    """``fn(*args)`` run on ``root`` alone; its result, or the exception it raised, on every rank.

    For start-up work only rank 0 should do (read a checkpoint, check output paths): every
    rank then succeeds or fails alike, so no rank is left waiting for the others.
    """
    result = error = None
    if comm.rank == root:
        try:
            result = fn(*args)
        except Exception as e:
            error = e
    error, result = comm.bcast_object((error, result), root)
    if error is not None:
        raise error
    return result
