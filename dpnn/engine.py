"""Where engines are chosen: ``LocalEngine`` (this process), ``DataParallel`` (worker processes),
``DistributedEngine`` (MPI ranks), each a :class:`dpnn.step.Step` over a node and a communicator
(docs/engine.md tabulates them), and ``make_engine``, the factory ``fit`` calls.
"""
from __future__ import annotations

from . import placement
from .comm import Communicator
from .distributed import DistributedEngine
from .node import Engine, EngineInfo, InProcessNode  # noqa: F401 (the contract, re-exported)
from .step import Step
from .workers import DataParallel


class LocalEngine(Step):
    """This process alone: ``Step(InProcessNode(...))``; deterministic mode runs the same fixed
    micro-shards as the workers (``micro_shards``, by default chosen from ``batch_size``), one
    after another."""

    def __init__(self, model, deterministic: bool = False, threads_per_worker: int | None = None,
                 augment=None, micro_shards: int | None = None, batch_size: int | None = None) -> None:
        micro = placement.resolve_micro_shards(micro_shards, batch_size) if deterministic else None
        super().__init__(InProcessNode(model, deterministic, threads_per_worker, augment),
                         deterministic=deterministic, micro_shards=micro)


def make_engine(model, workers=1, threads_per_worker: int | None = None, deterministic: bool = False,
                backend=None, seed: int | None = None, augment=None, micro_shards: int | None = None,
                batch_size: int | None = None, **options) -> Step:
    """The engine ``fit`` asked for: MPI ranks when ``backend='mpi'`` (or a Communicator; they
    agree on rank 0's ``seed``), else shared-memory workers for ``workers`` > 1, else this
    process (where the worker-process options have nothing to do).

    Deterministic mode cuts every batch into ``micro_shards`` fixed micro-shards (None: chosen
    from ``batch_size``, :func:`dpnn.placement.default_micro_shards`); any workers x ranks up to
    that count give bitwise the same weights."""
    if micro_shards is not None and not deterministic:
        raise ValueError("micro_shards sets deterministic mode's fixed cut of every batch; pass "
                         "deterministic=True with it (--deterministic), or leave it out")
    if deterministic:
        options.update(micro_shards=placement.resolve_micro_shards(micro_shards, batch_size))
    if backend == "mpi" or isinstance(backend, Communicator):
        return DistributedEngine(model, backend, workers=workers, threads_per_worker=threads_per_worker,
                                 deterministic=deterministic, seed=seed, augment=augment, **options)
    if backend not in (None, "local"):
        raise ValueError(f"backend must be None, 'local' or 'mpi', got {backend!r}")
    n = placement.resolve_workers(1 if workers is None else workers,
                                  oversubscribe=options.get("oversubscribe", False))
    if deterministic and workers is not None and placement.parse_count(workers) == "auto":
        n = min(n, options["micro_shards"])             # one per core, at most one per micro-shard
    if n == 1:
        return LocalEngine(model, deterministic=deterministic, threads_per_worker=threads_per_worker,
                           augment=augment, micro_shards=options.get("micro_shards"))
    options.pop("check_every", None)
    return DataParallel(model, workers=n, threads_per_worker=threads_per_worker,
                        deterministic=deterministic, augment=augment, **options)
