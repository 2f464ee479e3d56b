"""The shared-memory data-parallel engine (see docs/engine.md): ``PoolNode``, the node whose
shards run in worker processes, and ``DataParallel``, the engine a user opens on one machine.
"""
from ..step import Step
from .arena import SharedArena, SharedMemoryError  # noqa: F401 (re-exported)
from .coordinator import PoolNode


class DataParallel(Step):
    """Train ``model`` with ``workers`` processes sharing its parameters: ``Step(PoolNode)``.

    >>> with DataParallel(model, workers=4) as dp:
    ...     loss, acc = dp.train_on_batch(x, y)

    Every option is :class:`PoolNode`'s (``micro_shards``, ``batch_size``: deterministic mode's
    fixed cut of every batch). The model must be compiled; it is built on the first batch if
    needed. ``close`` copies parameters back, so the model stays usable afterwards.
    """

    def __init__(self, model, workers: int | str = "auto", deterministic: bool = False, **options) -> None:
        node = PoolNode(model, workers, deterministic=deterministic, **options)
        super().__init__(node, deterministic=deterministic, micro_shards=node.micro_shards)
        self.workers = self.node.workers
        self.threads_per_worker = self.node.threads_per_worker

    def __enter__(self) -> "DataParallel":
        if self.model.built:
            self.node.start()
        return self

    def start(self, x=None, y=None) -> None:
        """Start the workers now instead of on the first step (``x``, ``y``: a first batch, which
        builds the model if needed and sizes the batch buffers)."""
        self.node.start(x, y)

    @property
    def worker_pids(self) -> list[int]:
        return self.node.worker_pids

    @property
    def restarts(self) -> list[int]:
        return self.node.restarts

    @property
    def startup_time(self) -> float | None:
        return self.node.startup_time
