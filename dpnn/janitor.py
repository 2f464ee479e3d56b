"""Cleans up after dead processes: the shared-memory segments they left, and killed MPI ranks.

Segment names are written and read here alone: ``dpnn_<pid>_s<start>n<ns>_<random>_<array>_<n>``,
where ``<pid>`` is the coordinator, ``<start>`` its start time (clock ticks since boot, from
/proc) and ``<ns>`` its PID namespace, so a later run can tell a dead owner's leftovers
(:func:`sweep_stale`) even when the pid was reused. Segments of a live owner, of another PID
namespace (containers sharing /dev/shm) or without these fields are never touched.

When one rank dies, MPI's launcher (hydra) SIGKILLs the process group of every other rank:
the coordinator *and* its workers, so neither can unlink the node's shared memory. A
janitor runs in its own session (out of reach of that kill), waits for EOF on its stdin (a
pipe whose write end only the rank holds) and then, unless the rank said ``done`` first,
SIGKILLs what is left of the rank's process group and unlinks ``/dev/shm/dpnn_<pid>_*``.

Run as a script (``python dpnn/janitor.py PID PGID [SEGMENT...]``), so it starts without importing NumPy.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

SHM_DIR = "/dev/shm"
SEGMENT_PREFIX = "dpnn"


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None if gone or unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19]) if fields[0] not in "ZX" else None     # field 22 of proc(5)


def pid_namespace() -> int:
    """This process's PID namespace (an inode number); 0 if unknown."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def run_prefix(pid: int | None = None) -> str:
    """The start of every segment name of one run coordinated by ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return f"{SEGMENT_PREFIX}_{pid}_s{process_start(pid) or 0}n{pid_namespace()}_{os.urandom(4).hex()}"


def segment_owner(name: str) -> tuple[int, int, int] | None:
    """(pid, start time, PID namespace) of the process that made segment ``name`` (0: unknown);
    None if the name is not dpnn's."""
    parts = name.split("_")
    if len(parts) < 3 or parts[0] != SEGMENT_PREFIX or not parts[1].isdigit():
        return None
    start, _, ns = parts[2][1:].partition("n") if parts[2].startswith("s") else ("", "", "")
    return int(parts[1]), int(start) if start.isdigit() else 0, int(ns) if ns.isdigit() else 0


def owner_alive(pid: int, start: int) -> bool:
    """Whether process ``pid`` (started at ``start``; 0: unknown) still runs; zombies are dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # another user's process: alive, and not ours to judge
        return True
    now = process_start(pid)
    if now is None:
        return not os.path.exists(f"/proc/{pid}")       # a zombie, or no /proc to ask
    return not start or now == start


def sweep_stale(shm_dir: str = SHM_DIR) -> dict[int, int]:
    """Unlink dpnn segments whose owner is dead; returns {owner pid: segments removed}."""
    removed: dict[int, int] = {}
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    here = pid_namespace()
    for name in sorted(names):
        owner = segment_owner(name)
        if owner is None or not here or owner[2] != here or owner_alive(*owner[:2]):
            continue
        try:
            os.unlink(os.path.join(shm_dir, name))
        except OSError:             # someone else swept it first, or not ours to remove
            continue
        removed[owner[0]] = removed.get(owner[0], 0) + 1
    return removed


def mapped_segments(pid: int, prefix: str) -> list[str]:
    """Names of the /dev/shm files starting with ``prefix`` that process ``pid`` has mapped."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if f"{SHM_DIR}/{prefix}" in line}
    except OSError:
        return []
    return sorted(os.path.basename(p) for p in paths if not p.endswith("(deleted)"))


def remove_mpich_segments() -> list[str]:
    """Unlink MPICH's /dev/shm segments that this process maps (so: this job's, no other's).

    MPI_Abort never reaches MPI_Finalize, which would remove them; when every rank aborts at
    once no janitor is left that could read a rank's mappings. The mappings stay valid until
    every rank is gone."""
    removed = []
    for name in mapped_segments(os.getpid(), "mpich_shm_"):
        with contextlib.suppress(OSError):          # another rank of this job was first
            os.unlink(os.path.join(SHM_DIR, name))
            removed.append(name)
    return removed


def start(pid: int | None = None) -> subprocess.Popen:
    """A janitor for this process (``pid``): write b'done' to its stdin on a clean exit.

    Besides dpnn's segments it removes MPICH's own (``mpich_shm_*``, mapped by the rank at
    start), which MPICH leaves behind when its processes are killed.
    """
    pid = os.getpid() if pid is None else pid
    pgid = pid if os.getpgid(pid) == pid else 0      # only a group we lead is safe to kill wholesale
    isolated = ["-P"] if sys.version_info >= (3, 11) else []     # dpnn/random.py must not shadow random
    args = [sys.executable, *isolated, os.path.abspath(__file__), str(pid), str(pgid),
            *mapped_segments(pid, "mpich_shm_")]
    return subprocess.Popen(args, stdin=subprocess.PIPE, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(janitor: subprocess.Popen) -> None:
    """Tell the janitor that everything was cleaned up normally, and let it go."""
    with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
        janitor.stdin.write(b"done")
        janitor.stdin.close()
        janitor.wait(timeout=5)


def clean(pid: int, pgid: int, extra: list[str] = ()) -> int:
    """SIGKILL the rank's leftover process group, unlink its segments; returns segments removed."""
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    removed = 0
    try:
        names = [n for n in os.listdir(SHM_DIR) if (segment_owner(n) or (0,))[0] == pid]
    except OSError:
        names = []
    names += [n for n in extra if "/" not in n]
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM_DIR, name))
            removed += 1
    return removed


def main(argv: list[str]) -> int:
    pid, pgid, extra = int(argv[0]), int(argv[1]), argv[2:]
    said = sys.stdin.buffer.read()          # returns at EOF: the rank closed it, or died
    if said != b"done":
        clean(pid, pgid, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
