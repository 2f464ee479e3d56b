"""Read and write IDX files (the MNIST container format), gzip-compressed or raw.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim``
big-endian uint32 dimensions, then the big-endian payload in C order. The header's
sizes are checked against the file and the free memory before anything is
allocated, and a gzip stream is never decompressed past them. Every way a
file can be wrong raises :class:`dpnn.errors.DataError` with one line that names
the file, the problem and what to do.
"""
from __future__ import annotations

import contextlib
import gzip as _gzip
import os
import zlib
from typing import BinaryIO, Iterator

import numpy as np

from dpnn.errors import DataError
from dpnn.files import input_problem, open_regular
from dpnn.limits import check_allocation, format_bytes

GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),  # unsigned byte
    0x09: np.dtype(">i1"),  # signed byte
    0x0B: np.dtype(">i2"),  # short
    0x0C: np.dtype(">i4"),  # int
    0x0D: np.dtype(">f4"),  # float
    0x0E: np.dtype(">f8"),  # double
}
_CODE_OF_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}

_FIX = "re-download or re-extract it"
MAX_DEFLATE_RATIO = 1032        # deflate's largest expansion: n compressed bytes give <= ~1032 n
MAX_PAYLOAD_BYTES = 2**62       # beyond this, sizes overflow NumPy's int64 indexing
TRAILING_PROBE = 1 << 16        # trailing bytes are counted up to this many, never more


def _fail(path: str, problem: str, todo: str = _FIX) -> DataError:
    return DataError(f"{path}: {problem}; {todo}")


@contextlib.contextmanager
def _gzip_errors(path: str) -> Iterator[None]:
    """Turn the gzip module's errors into one DataError line."""
    try:
        yield
    except EOFError as e:
        raise _fail(path, "gzip stream is truncated (incomplete download?)") from e
    except (OSError, zlib.error) as e:
        raise _fail(path, f"gzip stream is corrupt ({e})") from e


def _open(path: str) -> tuple[BinaryIO, int, bool]:
    """(stream of the IDX bytes, size of the file on disk, whether it is gzip-compressed)."""
    problem = input_problem(path)
    if problem == "not found":
        raise _fail(path, "file not found", "check the path or download the file")
    if problem is not None:
        raise DataError(f"{path} {problem}; pass the path of an IDX file")
    try:
        f = open_regular(path)
        size, magic = os.fstat(f.fileno()).st_size, f.read(2)
        f.seek(0)
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror})", "check its permissions") from e
    if magic != GZIP_MAGIC:
        return f, size, False
    return _gzip.GzipFile(fileobj=f, mode="rb"), size, True


def _read_up_to(f: BinaryIO, n: int) -> bytes:
    """At most ``n`` bytes (fewer only at the end of the stream)."""
    chunks, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _parse_header(path: str, f: BinaryIO) -> tuple[np.dtype, tuple[int, ...], int]:
    """Read and validate the header -> (big-endian dtype, dims, header length in bytes)."""
    head = _read_up_to(f, 4)
    if len(head) == 0:
        raise _fail(path, "file is empty")
    if len(head) < 4:
        raise _fail(path, f"file is only {len(head)} bytes, too short for an IDX header")
    if head[0] != 0 or head[1] != 0:
        raise _fail(path, f"not an IDX file (starts {head.hex(' ')}, expected 00 00 <dtype> <ndim>)",
                    "pass an IDX file such as train-images-idx3-ubyte[.gz]")
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise _fail(path, f"unknown IDX dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise _fail(path, "IDX header declares 0 dimensions")
    raw = _read_up_to(f, 4 * ndim)
    if len(raw) < 4 * ndim:
        raise _fail(path, f"header truncated: {ndim} dimensions need {4 + 4 * ndim} bytes, "
                          f"file has {4 + len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))
    if any(d == 0 for d in dims):
        raise _fail(path, f"IDX header declares an empty dimension {dims}")
    return IDX_DTYPES[code], dims, 4 + 4 * ndim


def _check_payload_size(path: str, nbytes: int, dims: tuple, file_size: int, header_len: int,
                        compressed: bool) -> None:
    """Refuse a declared payload that the file cannot hold or the machine cannot load."""
    if nbytes > MAX_PAYLOAD_BYTES:
        raise _fail(path, f"IDX header declares dims {dims}, {nbytes:,} bytes: more than any "
                          "array can hold", "the header is corrupt; " + _FIX)
    if compressed and nbytes > MAX_DEFLATE_RATIO * file_size:
        raise _fail(path, f"IDX header declares dims {dims} ({format_bytes(nbytes)}) but a gzip "
                          f"file of {file_size:,} bytes holds at most "
                          f"{format_bytes(MAX_DEFLATE_RATIO * file_size)}", "the header is corrupt; " + _FIX)
    actual = file_size - header_len
    if not compressed and actual < nbytes:
        raise _fail(path, f"payload truncated: dims {dims} need {nbytes} bytes, file has {actual}")
    if not compressed and actual > nbytes:
        raise _fail(path, f"{actual - nbytes} trailing bytes after the {dims} payload")
    check_allocation(nbytes, f"{path}: its {dims} payload", "free memory or load a smaller file",
                     error=DataError)


def _read_payload(path: str, f: BinaryIO, dtype: np.dtype, dims: tuple, nbytes: int) -> np.ndarray:
    """Read exactly ``nbytes`` into one preallocated buffer, then refuse trailing bytes."""
    buf = np.empty(nbytes, np.uint8)
    view, got = memoryview(buf), 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            raise _fail(path, f"payload truncated: dims {dims} need {nbytes} bytes, file has {got}")
        got += n
    trailing = len(_read_up_to(f, TRAILING_PROBE))
    if trailing:
        more = "or more " if trailing == TRAILING_PROBE else ""
        raise _fail(path, f"{trailing} {more}trailing bytes after the {dims} payload")
    arr = buf.view(dtype).reshape(dims)
    native = dtype.newbyteorder("=")
    if native != dtype:
        arr.byteswap(inplace=True)
    return arr.view(native)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or raw, told apart by magic bytes) -> native-endian array of shape dims.

    The header is checked against the file size and the available memory before the one
    payload buffer is allocated; a gzip stream is decompressed into it incrementally.
    """
    path = os.fspath(path)
    f, file_size, compressed = _open(path)
    with f, _gzip_errors(path):
        dtype, dims, header_len = _parse_header(path, f)
        nbytes = int(np.prod(dims, dtype=object)) * dtype.itemsize
        _check_payload_size(path, nbytes, dims, file_size, header_len, compressed)
        return _read_payload(path, f, dtype, dims, nbytes)


def write_idx(path: str | os.PathLike, array: np.ndarray, gzip: bool = True) -> None:
    """Write ``array`` (uint8/int8/int16/int32/float32/float64, ndim 1..255) as an IDX file."""
    array = np.asarray(array)
    code = _CODE_OF_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; convert to one of "
                         "uint8, int8, int16, int32, float32, float64")
    if not 1 <= array.ndim <= 255 or any(not 0 < d < 2**32 for d in array.shape):
        raise ValueError(f"IDX needs 1..255 dimensions each in 1..2**32-1, got shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    with _gzip.GzipFile(path, "wb", mtime=0) if gzip else open(path, "wb") as f:  # mtime=0: same bytes
        f.write(header + payload)
