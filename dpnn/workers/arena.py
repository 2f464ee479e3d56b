"""Named shared-memory segments that the coordinator and its workers see as NumPy arrays.

The coordinator *owns* the arena: it creates every segment (after checking that /dev/shm
has room), and unlinks them all on every way out (``unlink``, also run by a finalizer at
interpreter exit). Workers *attach* to the same names. If the coordinator is killed with
SIGKILL it cannot unlink, so a worker that notices calls :func:`unlink_prefix`: every
segment name starts with ``dpnn_<coordinator pid>_...`` (:func:`dpnn.janitor.run_prefix`).
If the workers were killed too, the next arena created on this machine removes the
leftovers (:func:`dpnn.janitor.sweep_stale`: only segments whose owner is dead).

Resource tracker, Python < 3.13: a process that attaches to a segment registers it with the
resource tracker, which would unlink it when that process exits. Workers started by
``spawn``/``forkserver`` share the coordinator's tracker, whose record is a *set* of names, so
their registrations are harmless duplicates and must not be "undone" (a second unregister
makes the tracker print a KeyError). On 3.13+ workers attach with ``track=False``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import weakref
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

try:
    import _posixshmem
except ImportError:        # Windows: no POSIX shared memory names to unlink
    _posixshmem = None

import numpy as np

from ..janitor import SHM_DIR, run_prefix, sweep_stale

log = logging.getLogger("dpnn.workers")


class SharedMemoryError(OSError):
    """There is not enough shared memory (/dev/shm) for the data-parallel engine."""


def dtype_spec(dtype) -> str | tuple:
    """A dtype as a region records it: its string, or for records (weighted targets,
    :mod:`dpnn.sample_weights`) its field description, which the string would lose."""
    dtype = np.dtype(dtype)
    return dtype.str if dtype.names is None else tuple(dtype.descr)


def spec_dtype(spec: str | tuple) -> np.dtype:
    return np.dtype(list(spec) if isinstance(spec, tuple) else spec)


@dataclass(frozen=True)
class Region:
    """One array in shared memory: which segment, and how to view it."""
    segment: str        # shared-memory name (no leading slash)
    shape: tuple
    dtype: str | tuple  # dtype_spec: a dtype string, or the fields of a record dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * spec_dtype(self.dtype).itemsize


def shm_free_bytes(path: str = SHM_DIR) -> int | None:
    """Bytes available to this user in the shared-memory file system, None if unknown."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def check_room(nbytes: int, what: str, path: str = SHM_DIR) -> None:
    """Raise SharedMemoryError if ``path`` cannot hold ``nbytes`` more bytes."""
    free = shm_free_bytes(path)
    if free is not None and nbytes > free:
        mib = 1024 * 1024
        raise SharedMemoryError(
            f"the data-parallel engine needs {nbytes / mib:.1f} MiB of shared memory for {what}, "
            f"but {path} has only {free / mib:.1f} MiB free. Free some space, enlarge {path} "
            "(e.g. `docker run --shm-size=1g`), or use fewer workers or a smaller batch")


def _attach(name: str) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name, track=False)
    return shared_memory.SharedMemory(name)


def _view(shm: shared_memory.SharedMemory, region: Region) -> np.ndarray:
    count = int(np.prod(region.shape, dtype=np.int64))
    return np.frombuffer(shm.buf, spec_dtype(region.dtype), count).reshape(region.shape)


def _release(segments: dict, owner: bool) -> None:
    """Unlink (owner) and close every segment.

    Closing fails while a NumPy view of the segment is alive (say, a layer still holds the
    previous batch); such a mapping is freed with its last view (see ``_forget_mapping``).
    """
    for shm in segments.values() if owner else ():
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()
    pending = list(segments.values())
    segments.clear()
    for shm in pending:
        try:
            shm.close()
        except BufferError:
            _forget_mapping(shm)


def _forget_mapping(shm: shared_memory.SharedMemory) -> None:
    """NumPy views still export the mapping (a traceback can hold them): close the file
    descriptor now and let the mapping go with the last view. Without this,
    ``SharedMemory.__del__`` retries ``close`` later and prints a BufferError."""
    if getattr(shm, "_fd", -1) >= 0:
        os.close(shm._fd)
        shm._fd = -1
    shm._buf = shm._mmap = None


class SharedArena:
    """Named float/int arrays in shared memory: ``arena['params']`` is a NumPy view.

    Coordinator: ``SharedArena.create({'params': ((P,), 'float32'), ...})``; workers:
    ``SharedArena.attach(arena.layout())``. ``ensure`` swaps one region for a bigger one
    (the batch buffer grows); ``refresh`` lets a worker follow such a swap.
    """

    def __init__(self, prefix: str, owner: bool) -> None:
        self.prefix, self.owner = prefix, owner
        self._regions: dict[str, Region] = {}
        self._segments: dict[str, shared_memory.SharedMemory] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self._generation = 0
        self._finalizer = weakref.finalize(self, _release, self._segments, owner)

    @classmethod
    def create(cls, regions: dict[str, tuple[tuple, str]], what: str = "parameters, gradients "
               "and the batch") -> "SharedArena":
        """Allocate every region (zero-filled) after one free-space check for their total.

        First remove what dead runs left in /dev/shm (their owners can no longer do it)."""
        swept = sweep_stale()
        if swept:
            log.warning("dpnn: removed %d shared-memory segment(s) left in %s by dead process(es) %s",
                        sum(swept.values()), SHM_DIR, ", ".join(map(str, sorted(swept))))
        arena = cls(run_prefix(), owner=True)
        check_room(sum(Region("", tuple(s), d).nbytes for s, d in regions.values()), what)
        try:
            for name, (shape, dtype) in regions.items():
                arena._allocate(name, tuple(shape), dtype)
        except BaseException:
            arena.unlink()
            raise
        return arena

    @classmethod
    def attach(cls, layout: dict[str, Region], prefix: str) -> "SharedArena":
        arena = cls(prefix, owner=False)
        arena.refresh(layout)
        return arena

    def _allocate(self, name: str, shape: tuple, dtype: str) -> None:
        region = Region(f"{self.prefix}_{name}_{self._generation}", shape, dtype_spec(dtype))
        self._generation += 1
        shm = shared_memory.SharedMemory(region.segment, create=True, size=max(region.nbytes, 1))
        self._segments[name], self._regions[name] = shm, region
        self._arrays[name] = _view(shm, region)

    def ensure(self, name: str, shape: tuple, dtype: str) -> None:
        """Owner: a new segment for ``name`` with this shape and dtype (any old one is unlinked)."""
        old, new = self._regions.get(name), Region("", tuple(shape), dtype_spec(dtype))
        check_room(new.nbytes - (old.nbytes if old else 0), f"the {name} buffer of {shape}")
        if old is not None:
            self._arrays.pop(name)
            _release({name: self._segments.pop(name)}, True)
        self._allocate(name, tuple(shape), dtype)

    def refresh(self, layout: dict[str, Region]) -> None:
        """Worker: attach to every region whose segment is new in ``layout``."""
        for name, region in layout.items():
            if self._regions.get(name) == region:
                continue
            if name in self._segments:
                self._arrays.pop(name)
                _release({name: self._segments.pop(name)}, False)
            shm = _attach(region.segment)
            self._segments[name], self._regions[name] = shm, region
            self._arrays[name] = _view(shm, region)

    def layout(self) -> dict[str, Region]:
        return dict(self._regions)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def close(self) -> None:
        """Drop this process's mappings (owner: unlink first)."""
        self._arrays.clear()
        self._finalizer()

    unlink = close    # for the owner, closing is unlinking


def unlink_prefix(prefix: str, layout: dict[str, Region] | None = None, shm_dir: str = SHM_DIR) -> int:
    """Unlink every segment of a run whose coordinator is gone; returns how many were removed.

    Uses the known ``layout`` plus every name in ``shm_dir`` starting with ``prefix`` (a
    segment created after the layout was sent). Several workers may call it at once: the
    kernel lets exactly one ``shm_unlink`` of a name succeed, and only that caller removes
    the coordinator's record from the shared resource tracker.
    """
    names = {r.segment for r in (layout or {}).values()}
    with contextlib.suppress(OSError):
        names |= {n for n in os.listdir(shm_dir) if n.startswith(prefix + "_")}
    removed = 0
    for name in sorted(names) if _posixshmem is not None else ():
        try:
            _posixshmem.shm_unlink("/" + name)
        except FileNotFoundError:
            continue
        removed += 1
        with contextlib.suppress(Exception):       # tracker already gone: nothing left to balance
            resource_tracker.unregister("/" + name, "shared_memory")
    return removed
