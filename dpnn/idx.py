"""Read and write IDX files (the MNIST container format), gzip-compressed or raw.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim``
big-endian uint32 dimensions, then the big-endian payload in C order. Every way a
file can be wrong raises :class:`dpnn.errors.DataError` with one line that names
the file, the problem and what to do.
"""
from __future__ import annotations

import gzip as _gzip
import os
import zlib

import numpy as np

from dpnn.errors import DataError

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


def _fail(path: str, problem: str, todo: str = _FIX) -> DataError:
    return DataError(f"{path}: {problem}; {todo}")


def _read_bytes(path: str) -> bytes:
    """Whole file contents, gunzipped when the file starts with the gzip magic."""
    if not os.path.exists(path):
        raise _fail(path, "file not found", "check the path or download the file")
    if not os.path.isfile(path):
        raise _fail(path, "is not a regular file", "pass the path of an IDX file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror})", "check its permissions") from e
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return _gzip.decompress(data)
    except EOFError as e:
        raise _fail(path, "gzip stream is truncated (incomplete download?)") from e
    except (OSError, zlib.error) as e:
        raise _fail(path, f"gzip stream is corrupt ({e})") from e


def _parse_header(path: str, data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (big-endian dtype, dims, header length) after validating the header."""
    if len(data) == 0:
        raise _fail(path, "file is empty")
    if len(data) < 4:
        raise _fail(path, f"file is only {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        magic = data[:4].hex(" ")
        raise _fail(path, f"not an IDX file (starts {magic}, expected 00 00 <dtype> <ndim>)",
                    "pass an IDX file such as train-images-idx3-ubyte[.gz]")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise _fail(path, f"unknown IDX dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise _fail(path, "IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise _fail(path, f"header truncated: {ndim} dimensions need {header_len} bytes, "
                          f"file has {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if any(d == 0 for d in dims):
        raise _fail(path, f"IDX header declares an empty dimension {dims}")
    return IDX_DTYPES[code], dims, header_len


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or raw, told apart by magic bytes) -> native-endian array of shape dims."""
    path = os.fspath(path)
    data = _read_bytes(path)
    dtype, dims, offset = _parse_header(path, data)
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - offset
    if actual < expected:
        raise _fail(path, f"payload truncated: dims {dims} need {expected} bytes, file has {actual}")
    if actual > expected:
        raise _fail(path, f"{actual - expected} trailing bytes after the {dims} payload")
    arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # copy: writable, native byte order


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
    if gzip:
        with _gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime=0: byte-identical output
            f.write(header + payload)
    else:
        with open(path, "wb") as f:
            f.write(header + payload)
