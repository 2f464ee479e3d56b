"""The shared-memory data-parallel engine (see docs/engine.md).

``DataParallel`` is the coordinator (a context manager with ``train_step``/``train_on_batch``);
``resolve_workers``/``plan_placement`` decide how many workers run where; ``SharedArena`` is
the shared-memory layout they all see.
"""
from ..errors import WorkerError
from .arena import SharedArena, SharedMemoryError, unlink_prefix
from .coordinator import DataParallel
from .topology import Placement, cgroup_cpu_limit, plan_placement, resolve_workers, usable_cores

__all__ = ["DataParallel", "WorkerError", "SharedArena", "SharedMemoryError", "unlink_prefix",
           "resolve_workers", "plan_placement", "Placement", "usable_cores", "cgroup_cpu_limit"]
