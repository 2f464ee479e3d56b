"""The locks that keep two runs of ``dpnn train`` from writing the same files, and the folder
each run's checkpoints go to when ``--checkpoint-dir`` is not given."""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time

RETRIES = 100           # times a lock file's folder may vanish under us (another run finishing)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class RunLocks:
    """Exclusive ``flock`` locks on lock files holding this run's PID (``weights.hdf5.lock``,
    ``checkpoints/.lock``), so two runs never write the same files.

    The kernel drops a lock when its process dies, so a file left by a killed run is no
    obstacle. ``release`` (every exit path of ``dpnn train``) deletes the lock files and the
    directories that were created for them and stayed empty.
    """

    def __init__(self) -> None:
        self._held: dict[str, int] = {}        # lock file -> open descriptor
        self._created: list[str] = []          # directories made for the lock files, outer first

    def acquire(self, lock_path: str, what: str, error=RuntimeError) -> None:
        """Lock ``lock_path``; ``error(message)`` is raised when another run holds it, or when its
        folder cannot be made (a broken symbolic link, a file in the way)."""
        lock_path = os.path.abspath(lock_path)
        for _ in range(RETRIES):
            if lock_path in self._held:
                return
            self._make_parents(os.path.dirname(lock_path), what, error)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:          # a finishing run removed the directory: again
                continue
            except OSError as e:
                raise error(f"{what}: cannot create the lock file {lock_path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(fd)
                os.close(fd)
                raise error(f"{what} is in use by another run (pid {pid}); wait for it to "
                            "finish or choose another path") from None
            except OSError as e:               # a file system without locks: say so, go on
                warn(f"{what}: cannot lock {lock_path} ({e.strerror}); nothing stops another "
                     "run from writing the same files")
                os.close(fd)
                return
            if _still_linked(fd, lock_path):   # else its holder deleted it as we opened it
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._held[lock_path] = fd
            else:
                os.close(fd)
        if lock_path not in self._held:        # its folder vanished RETRIES times in a row
            raise error(f"{what}: the folder of {lock_path} keeps disappearing; is another program "
                        "deleting it?")

    def new_run_folder(self, root: str, error=RuntimeError) -> str:
        """Create ``root/<date-time>`` (``-2``, ``-3``... when taken: mkdir is atomic, so two runs
        started in the same second get different folders) for one run's checkpoints; it is
        removed by :meth:`release` if it stays empty; ``error(message)`` when it cannot be."""
        self._make_parents(os.path.abspath(root), f"the run folder in {root}", error)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1, 10_000):
            path = os.path.join(root, stamp if n == 1 else f"{stamp}-{n}")
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            except OSError as e:
                raise error(f"cannot create the run folder {path}: {e.strerror}") from None
            self._created.append(os.path.abspath(path))
            return path
        raise FileExistsError(f"{root}: no free run folder named {stamp}-N")

    def _make_parents(self, directory: str, what: str, error) -> None:
        """Create ``directory`` and the folders above it that are missing; ``error(message)``
        when a broken symbolic link or a file stands where a folder must be (mkdir would say
        "exists" and open "not found" forever)."""
        missing = []
        while not os.path.exists(directory):
            if os.path.lexists(directory):
                raise error(f"{what}: {directory} is a broken symbolic link (to {os.readlink(directory)}); "
                            "create its target or give another path")
            missing.append(directory)
            directory = os.path.dirname(directory)
        if not os.path.isdir(directory):
            raise error(f"{what}: {directory} is not a directory; give another path")
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:            # made by another run at the same moment
                continue
            except OSError as e:
                raise error(f"{what}: cannot create the folder {d}: {e.strerror}") from None
            self._created.append(d)

    def release(self) -> None:
        """Unlock (deleting each lock file first, while still holding it) and tidy up."""
        for path, fd in self._held.items():
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
        self._held.clear()
        for d in reversed(self._created):       # innermost first; only if left empty
            with contextlib.suppress(OSError):
                os.rmdir(d)
        self._created.clear()


def _holder(fd: int) -> str:
    """The PID written in a lock file by the run holding it (it writes it just after locking)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


def _still_linked(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
