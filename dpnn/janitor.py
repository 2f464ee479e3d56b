"""Cleans up after an MPI rank that was killed: its shared-memory workers and segments.

When one rank dies, MPI's launcher (hydra) SIGKILLs the process group of every other rank:
the coordinator *and* its workers, so neither can unlink the node's shared memory. A
janitor runs in its own session (out of reach of that kill), waits for EOF on its stdin (a
pipe whose write end only the rank holds) and then, unless the rank said ``done`` first,
SIGKILLs what is left of the rank's process group and unlinks ``/dev/shm/dpnn_<pid>_*``.

Run as a script (``python dpnn/janitor.py PID [PGID]``), so it starts without importing NumPy.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

SHM_DIR = "/dev/shm"


def start(pid: int | None = None) -> subprocess.Popen:
    """A janitor for this process (``pid``): write b'done' to its stdin on a clean exit."""
    pid = os.getpid() if pid is None else pid
    args = [sys.executable, os.path.abspath(__file__), str(pid)]
    if os.getpgid(pid) == pid:          # only a group we lead is safe to kill wholesale
        args.append(str(pid))
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


def clean(pid: int, pgid: int | None) -> int:
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
    for name in names:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            removed += 1
        except OSError:
            pass
    return removed


def main(argv: list[str]) -> int:
    pid = int(argv[0])
    pgid = int(argv[1]) if len(argv) > 1 else None
    said = sys.stdin.buffer.read()          # returns at EOF: the rank closed it, or died
    if said != b"done":
        clean(pid, pgid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
