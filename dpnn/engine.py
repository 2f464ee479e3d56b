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
    micro-shards as the workers, one after another."""

    def __init__(self, model, deterministic: bool = False, threads_per_worker: int | None = None,
                 augment=None) -> None:
        super().__init__(InProcessNode(model, deterministic, threads_per_worker, augment),
                         deterministic=deterministic)


def make_engine(model, workers=1, threads_per_worker: int | None = None, deterministic: bool = False,
                backend=None, seed: int | None = None, augment=None, **options) -> Step:
    """The engine ``fit`` asked for: MPI ranks when ``backend='mpi'`` (or a Communicator; they
    agree on rank 0's ``seed``), else shared-memory workers for ``workers`` > 1, else this
    process (where the worker-process options have nothing to do)."""
    if backend == "mpi" or isinstance(backend, Communicator):
        return DistributedEngine(model, backend, workers=workers, threads_per_worker=threads_per_worker,
                                 deterministic=deterministic, seed=seed, augment=augment, **options)
    if backend not in (None, "local"):
        raise ValueError(f"backend must be None, 'local' or 'mpi', got {backend!r}")
    n = placement.resolve_workers(1 if workers is None else workers,
                                  oversubscribe=options.get("oversubscribe", False))
    if n == 1:
        return LocalEngine(model, deterministic=deterministic, threads_per_worker=threads_per_worker,
                           augment=augment)
    options.pop("check_every", None)
    return DataParallel(model, workers=n, threads_per_worker=threads_per_worker,
                        deterministic=deterministic, augment=augment, **options)
