"""What ``dpnn train --backend mpi`` adds: one communicator, rank-0 file access, no stray ranks.

Every rank runs the same command. Rank 0 alone checks and writes the outputs and reads the
checkpoint to resume from (the other nodes need not see its disk: the checkpoint's files
are broadcast); when such a check fails, rank 0 alone reports it and the others wait for
its abort, so the error is printed once. Any rank that ends with an error aborts the whole
job, so no rank is left waiting in a collective for a peer that has gone, and first
removes MPICH's shared-memory segments (an aborted job leaves them in /dev/shm).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time

from dpnn.comm import ABORT_GRACE_S, INSTALL_HINT, Communicator
from dpnn.distributed import on_root
from dpnn.io import architecture_path

from . import checkpoint as ckpt

ABORT_WAIT_S = 30.0     # how long the other ranks wait for rank 0 to abort after its check failed
REPORT_WAIT_S = 3.0     # how long a rank waits before reporting an error rank 0 may share (a bad
#                         flag): rank 0 aborts ABORT_GRACE_S after reaching it, if it has it too


def launched_ranks(environ=os.environ) -> int:
    """How many processes the MPI launcher started (from its environment); 1 outside mpiexec."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):       # Open MPI; MPICH, Intel MPI, srun
        if environ.get(var, "").isdigit():
            return int(environ[var])
    return 1


def communicator(backend: str, usage_error) -> Communicator | None:
    """The MPI communicator (MPI starts here) for ``--backend mpi``, or when mpiexec started
    several processes (``--resume`` takes the backend from the checkpoint, but every rank must
    join before rank 0 reads it); None otherwise."""
    if backend != "mpi" and launched_ranks() == 1:
        return None
    if importlib.util.find_spec("mpi4py") is None:
        raise usage_error(f"--backend mpi needs mpi4py and an MPI library: {INSTALL_HINT}")
    from dpnn.comm import get_communicator
    return get_communicator("mpi")


def newest_checkpoint(directory: str, comm: Communicator | None, not_found) -> tuple:
    """(path, model, info, state) of the newest checkpoint in ``directory``; rank 0 reads it.

    ``not_found`` is the exception raised (on every rank) when there is none.
    """
    def files():
        path = ckpt.latest_checkpoint(directory) if os.path.isdir(directory) else None
        if path is None:
            raise not_found
        blobs = {}
        for p in (path, architecture_path(path)):
            with open(p, "rb") as f:
                blobs[os.path.basename(p)] = f.read()
        return path, blobs

    if comm is None or comm.size == 1:
        path, _ = files()
        return (path, *ckpt.load_checkpoint(path))
    path, blobs = from_root(comm, files)
    if comm.rank == 0:
        return (path, *ckpt.load_checkpoint(path))
    with tempfile.TemporaryDirectory(prefix="dpnn-resume-") as tmp:
        for name, data in blobs.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        return (path, *ckpt.load_checkpoint(os.path.join(tmp, os.path.basename(path))))


def check_backend(comm: Communicator | None, backend: str, usage_error) -> None:
    """Several ranks must train together: refuse separate runs racing for the same files."""
    if comm is not None and comm.size > 1 and backend != "mpi":
        raise usage_error(f"mpiexec started {comm.size} processes but --backend is {backend}; "
                          "add --backend mpi")


# Flags each rank may set for itself: how it runs on its own node, and what it prints. Every
# other flag defines the computation (or the outputs rank 0 writes) and must be the same on
# every rank: ranks with and without --deterministic wait in different collectives forever.
PER_RANK = frozenset({"workers", "threads_per_worker", "oversubscribe", "worker_timeout", "quiet",
                      "verbose", "show_step_times"})


def check_same_command(comm: Communicator | None, args, usage_error) -> None:
    """Every rank was started with the same flags (but PER_RANK), checked where the ranks start,
    before any collective could pair a rank's call with another kind on its peer; otherwise
    ``usage_error`` naming the first flag that differs, raised on every rank alike."""
    if comm is None or comm.size == 1:
        return
    mine = {k: v for k, v in sorted(vars(args).items()) if k not in PER_RANK}
    every = [comm.bcast_object(mine if comm.rank == r else None, r) for r in range(comm.size)]
    for r, theirs in enumerate(every[1:], start=1):
        differ = [k for k in every[0].keys() | theirs.keys() if every[0].get(k) != theirs.get(k)]
        if differ:
            key = sorted(differ)[0]
            flag = "--" + key.replace("_", "-")
            raise usage_error(f"MPI rank {r} was started with {flag} {_shown(theirs.get(key))} but rank 0 "
                              f"with {_shown(every[0].get(key))}; start every rank with the same command")


def _shown(value) -> str:
    return "(not given)" if value in (None, False) else "(given)" if value is True else repr(value)


def finish(comm: Communicator | None, status: int, together: bool = False) -> int:
    """Exit status for main(); a failed rank aborts every rank instead of leaving them waiting.

    ``together``: every rank stopped at the same step (an interrupt they agreed on), so none is
    waiting: they meet once (rank 0 has written the step's checkpoint) and exit, no abort."""
    if comm is not None and comm.size > 1 and together:
        comm.barrier()
        return status
    if comm is not None and comm.size > 1 and status != 0:
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)      # let mpiexec forward the error message first
        comm.abort(status)
    return status


def from_root(comm: Communicator, fn, *args):
    """``on_root``, except that when ``fn`` fails the other ranks wait for rank 0 to report it and
    abort the job (``finish``), so the error is printed once; they raise it themselves only if
    that abort does not come within ABORT_WAIT_S."""
    try:
        return on_root(comm, fn, *args)
    except Exception:
        if comm.rank != 0:
            time.sleep(ABORT_WAIT_S)
        raise


def report_once(comm: Communicator | None, text: str) -> None:
    """Print ``text``, an error every rank usually hits alike (a bad flag), on rank 0 alone: the
    other ranks wait REPORT_WAIT_S for rank 0's abort (``finish``) and print it themselves only
    if that does not come (the flag was bad on their command line alone), then abort the job."""
    if comm is not None and comm.size > 1 and comm.rank != 0:
        time.sleep(REPORT_WAIT_S)
    print(text, file=sys.stderr)


def rank0_only(comm: Communicator | None, fn, *args):
    """``fn(*args)`` on rank 0 alone (e.g. checking output paths); its result or error everywhere."""
    if comm is None or comm.size == 1:
        return fn(*args)
    return from_root(comm, fn, *args)
