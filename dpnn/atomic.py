"""Writing a file so that a failure leaves the old one intact: a temporary file, then a rename.

A target that is not a regular file (a directory, device, socket or FIFO) is refused before
anything is written, since a rename would replace it; any OSError while writing (a full
disk...) removes the temporary file and becomes one :class:`dpnn.errors.OutputError` line.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from typing import Callable, Iterator

from .errors import OutputError
from .files import file_kind


def os_reason(error: OSError) -> str:
    """One short line saying why an OSError happened ('No space left on device'), without the
    several lines of detail HDF5 adds to its own errors."""
    if isinstance(error.errno, int) and error.errno:
        return os.strerror(error.errno)
    text = str(error)
    found = re.search(r"error message = '([^']*)'", text)     # HDF5: "Unable to ... (..., errno = 28,
    return found.group(1) if found else " ".join(text.split("\n", 1)[0].split())   # error message = '...')"


def check_output_path(path: str) -> None:
    """Refuse a path naming a directory, device, socket or FIFO: a rename would replace it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"cannot write {path}: {os_reason(e)}; nothing was written", path,
                          reason=os_reason(e)) from None
    if not stat.S_ISREG(mode):
        kind = f"it is {file_kind(mode)}, not a regular file"
        raise OutputError(f"cannot write {path}: {kind}; pass the path of a file to create or replace",
                          path, reason=kind)


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (other threads may create files)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: str) -> int:
    """A replaced file keeps its mode; a new one gets 0666 & ~umask, as open() would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def temp_beside(path: str) -> Iterator[str]:
    """A temporary path in ``path``'s directory, removed at the end unless renamed onto ``path``.

    Any OSError inside the block becomes one OutputError naming ``path`` and the reason.
    """
    tmp = None
    try:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
        os.close(fd)
        yield tmp
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write {path}: {os_reason(e)}; nothing was overwritten", path,
                          reason=os_reason(e)) from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


def commit(tmp: str, path: str) -> None:
    os.chmod(tmp, _final_mode(path))
    os.replace(tmp, path)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path`` (see the module
    docstring for what is refused and what a failure leaves); the mode is what open() would give."""
    check_output_path(path)
    with temp_beside(path) as tmp:
        write(tmp)
        commit(tmp, path)
