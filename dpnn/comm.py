"""Communicators: the few collective operations data-parallel training needs across processes.

The interface is named after MPI (as in ChainerMN): ``rank``, ``size``, ``allreduce``,
``bcast``, ``allgather``, ``send``/``recv`` (deterministic mode passes its ordered sum along
the ranks: :mod:`dpnn.chain`), ``bcast_object``, ``barrier``, ``abort``. ``LocalComm`` is the
single-process world (every collective is the identity); ``MPIComm`` wraps ``mpi4py``
with buffer-based, in-place operations on NumPy arrays, so nothing is pickled per step.
``get_communicator('local' | 'mpi')`` picks one; ``mpi4py`` is imported only when asked for.
"""
from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
import time
import traceback
from contextlib import contextmanager

import numpy as np

from . import janitor

INSTALL_HINT = ("pip install mpi4py mpich   (a working MPI without a compiler; or, in a dpnn checkout, "
                "pip install -e '.[mpi]')")
DEFAULT_TIMEOUT_S = 600.0    # a collective blocked this long means a peer is stuck: abort the job
ABORT_GRACE_S = 0.5          # time for the launcher to forward our last words before MPI_Abort


class Communicator:
    """A group of ``size`` processes; this one is ``rank``. Array collectives work in place."""
    rank: int = 0
    size: int = 1
    local_size: int = 1      # ranks on this machine

    def allreduce(self, buf: np.ndarray) -> np.ndarray:
        """buf <- elementwise sum of every rank's buf (in place); returns buf."""
        raise NotImplementedError

    def bcast(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """buf <- root's buf (in place); returns buf."""
        raise NotImplementedError

    def allgather(self, buf: np.ndarray) -> np.ndarray:
        """Every rank's buf stacked in rank order: (size, *buf.shape)."""
        raise NotImplementedError

    def send(self, buf: np.ndarray, dest: int) -> None:
        """Send ``buf`` to rank ``dest`` (blocking until it may be reused)."""
        raise NotImplementedError

    def recv(self, buf: np.ndarray, source: int) -> np.ndarray:
        """buf <- what rank ``source`` sent (in place); returns buf."""
        raise NotImplementedError

    def bcast_object(self, obj, root: int = 0):
        """root's picklable ``obj`` on every rank (start-up and resume only, never per step)."""
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every process of the job now (after this rank cleaned up what it owns)."""
        raise NotImplementedError


class LocalComm(Communicator):
    """The world of one process: every collective returns its input."""

    def allreduce(self, buf):
        return buf

    def bcast(self, buf, root=0):
        return buf

    def allgather(self, buf):
        return np.asarray(buf)[None].copy()

    def send(self, buf, dest):
        raise ValueError(f"a one-process world has no rank {dest} to send to")

    def recv(self, buf, source):
        raise ValueError(f"a one-process world has no rank {source} to receive from")

    def bcast_object(self, obj, root=0):
        return obj

    def barrier(self):
        pass

    def abort(self, code=1):
        os._exit(code)


def import_mpi():
    """``mpi4py.MPI``, or an ImportError that says how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"the MPI backend needs mpi4py and an MPI library ({e}); install them "
                          f"with: {INSTALL_HINT}") from e
    return MPI


def _check_buffer(buf: np.ndarray) -> None:
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
        raise TypeError("MPI collectives need a C-contiguous NumPy array")


class Traffic:
    """Bytes this rank sent and received: point-to-point exactly, collectives as the
    bandwidth-optimal algorithms move them (ring all-gather: (p-1) x n each way; all-reduce
    and broadcast as reduce-scatter/scatter + all-gather: 2 (p-1)/p x n each way), which is
    what MPICH chooses for large messages. A model of the traffic, not a wire count."""

    def __init__(self) -> None:
        self.sent = self.received = 0.0

    def collective(self, nbytes: float) -> None:
        self.sent += nbytes
        self.received += nbytes


class MPIComm(Communicator):
    """``mpi4py`` collectives on contiguous NumPy buffers, plus a hang watchdog.

    Any collective blocked longer than ``timeout_s`` (a peer that is stuck rather than dead:
    MPI's launcher already ends the job when a process dies) aborts the whole job with a
    message naming this rank. ``install_excepthook`` makes an uncaught exception on one
    rank abort every rank instead of leaving them waiting in the next collective. With
    several ranks, a :mod:`dpnn.janitor` process cleans up after this one if it is killed.
    """

    def __init__(self, mpi_comm=None, timeout_s: float | None = None,
                 install_excepthook: bool = True) -> None:
        env = os.environ.get("DPNN_MPI_TIMEOUT")
        self.timeout_s = float(timeout_s if timeout_s is not None else env or DEFAULT_TIMEOUT_S)
        self.comm, self.rank, self.size = None, int(os.environ.get("PMI_RANK", 0)), 0
        self.traffic = Traffic()
        self._busy: tuple[str, float] | None = ("MPI start-up", time.monotonic())
        self._stop_watching = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="dpnn-mpi-watchdog").start()
        try:
            self.MPI = import_mpi()     # MPI_Init: waits for every process mpiexec started
            self.comm = mpi_comm if mpi_comm is not None else self.MPI.COMM_WORLD
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
            node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
            self.local_size = node.Get_size()          # ranks on this node (share its cores)
            node.Free()
        except BaseException:
            self._stop_watching.set()   # no MPI here: nothing to watch
            raise
        finally:
            self._busy = None
        if install_excepthook:
            abort_on_uncaught_exception(self)
        if self.size > 1 and os.path.isdir("/proc"):
            # when a peer dies, the launcher SIGKILLs this rank: the janitor then removes its
            # workers and shared memory (dpnn's and MPICH's own segments)
            atexit.register(janitor.finish, janitor.start())

    @contextmanager
    def _blocking(self, op: str):
        self._busy = (op, time.monotonic())
        try:
            yield
        finally:
            self._busy = None

    def _watch(self) -> None:
        while not self._stop_watching.wait(min(1.0, self.timeout_s / 4)):
            busy = self._busy
            if busy and time.monotonic() - busy[1] > self.timeout_s:
                sys.stderr.write(f"dpnn: rank {self.rank}/{self.size} waited more than {self.timeout_s:.0f} s "
                                 f"in {busy[0]}: another rank is stuck; aborting the job "
                                 f"(set DPNN_MPI_TIMEOUT to wait longer)\n")
                sys.stderr.flush()
                time.sleep(ABORT_GRACE_S)
                self.abort(1)

    def allreduce(self, buf):
        _check_buffer(buf)
        with self._blocking("allreduce"):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        self.traffic.collective(2 * (self.size - 1) / self.size * buf.nbytes)
        return buf

    def bcast(self, buf, root=0):
        _check_buffer(buf)
        with self._blocking("bcast"):
            self.comm.Bcast(buf, root=root)
        self.traffic.collective(2 * (self.size - 1) / self.size * buf.nbytes)
        return buf

    def allgather(self, buf):
        _check_buffer(buf)
        out = np.empty((self.size,) + buf.shape, buf.dtype)
        with self._blocking("allgather"):
            self.comm.Allgather(buf, out)
        self.traffic.collective((self.size - 1) * buf.nbytes)
        return out

    def send(self, buf, dest):
        _check_buffer(buf)
        with self._blocking(f"send to rank {dest}"):
            self.comm.Send(buf, dest=dest)
        self.traffic.sent += buf.nbytes

    def recv(self, buf, source):
        _check_buffer(buf)
        with self._blocking(f"recv from rank {source}"):
            self.comm.Recv(buf, source=source)
        self.traffic.received += buf.nbytes
        return buf

    def bcast_object(self, obj, root=0):
        with self._blocking("bcast_object"):
            return self.comm.bcast(obj, root=root)

    def barrier(self):
        with self._blocking("barrier"):
            self.comm.Barrier()

    def abort(self, code=1):
        if self.comm is None:            # MPI never started: leaving is enough for mpiexec
            os._exit(code)
        janitor.remove_mpich_segments()  # MPI_Abort skips MPI_Finalize, which would remove them
        self.comm.Abort(code)


def abort_on_uncaught_exception(comm: Communicator) -> None:
    """Chain ``sys.excepthook``: print the traceback naming the rank, then abort every rank.

    ``finally`` blocks (engines closing their workers and shared memory) have already run
    on this rank when the hook fires; the other ranks are ended by the MPI launcher.
    """
    def hook(kind, value, tb):
        text = ("interrupted\n" if issubclass(kind, KeyboardInterrupt)
                else "".join(traceback.format_exception(kind, value, tb)))
        sys.stderr.write(f"dpnn: rank {comm.rank}/{comm.size} failed; aborting all ranks\n{text}")
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)      # MPI_Abort can end the job before its output is forwarded
        comm.abort(1)

    sys.excepthook = hook


def get_communicator(name: str = "local", **options) -> Communicator:
    """'local' (this process alone) or 'mpi' (every process started by mpiexec).

    MPI's world is one per process, so ``'mpi'`` without options returns the same
    ``MPIComm`` every time (one watchdog, one excepthook, however many ``fit`` calls).
    """
    if isinstance(name, Communicator):
        return name
    if name == "local":
        return LocalComm()
    if name == "mpi":
        return MPIComm(**options) if options else _world()
    raise ValueError(f"unknown communicator {name!r}; choose 'local' or 'mpi'")


@functools.lru_cache(maxsize=1)
def _world() -> MPIComm:
    return MPIComm()
