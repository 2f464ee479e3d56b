"""Cleans up after an MPI rank that was killed: its shared-memory workers and segments.

When one rank dies, MPI's launcher (hydra) SIGKILLs the process group of every other rank:
the coordinator *and* its workers, so neither can unlink the node's shared memory. A
janitor runs in its own session (out of reach of that kill), waits for EOF on its stdin (a
pipe whose write end only the rank holds) and then, unless the rank said ``done`` first,
SIGKILLs what is left of the rank's process group and unlinks ``/dev/shm/dpnn_<pid>_*``.

Run as a script (``python dpnn/janitor.py PID PGID [SEGMENT...]``), so it starts without importing NumPy.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

SHM_DIR = "/dev/shm"


def mapped_segments(pid: int, prefix: str) -> list[str]:
    """Names of the /dev/shm files starting with ``prefix`` that process ``pid`` has mapped."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if f"{SHM_DIR}/{prefix}" in line}
    except OSError:
        return []
    return sorted(os.path.basename(p) for p in paths if not p.endswith("(deleted)"))


def start(pid: int | None = None) -> subprocess.Popen:
    """A janitor for this process (``pid``): write b'done' to its stdin on a clean exit.

    Besides dpnn's segments it removes MPICH's own (``mpich_shm_*``, mapped by the rank at
    start), which MPICH leaves behind when its processes are killed.
    """
    pid = os.getpid() if pid is None else pid
    pgid = pid if os.getpgid(pid) == pid else 0      # only a group we lead is safe to kill wholesale
    args = [sys.executable, os.path.abspath(__file__), str(pid), str(pgid), *mapped_segments(pid, "mpich_shm_")]
    return subprocess.Popen(args, stdin=subprocess.PIPE, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(janitor: subprocess.Popen) -> None:
    """Tell the janitor that everything was cleaned up normally, and let it go."""
    try:
        janitor.stdin.write(b"done")
        janitor.stdin.close()
        janitor.wait(timeout=5)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass


def clean(pid: int, pgid: int, extra: list[str] = ()) -> int:
    """SIGKILL the rank's leftover process group, unlink its segments; returns segments removed."""
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    removed = 0
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(f"dpnn_{pid}_")]
    except OSError:
        names = []
    names += [n for n in extra if "/" not in n]
    for name in names:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            removed += 1
        except OSError:
            pass
    return removed


def main(argv: list[str]) -> int:
    pid, pgid, extra = int(argv[0]), int(argv[1]), argv[2:]
    said = sys.stdin.buffer.read()          # returns at EOF: the rank closed it, or died
    if said != b"done":
        clean(pid, pgid, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
