"""``train.npz`` / ``test.npz``: arrays ``x`` (N, H, W[, C]) or (N, D) and ``y`` (N,).

Read with ``allow_pickle=False``; every member's shape and dtype come from its ``.npy``
header and are checked against the zip entry's size and the free memory before any
array is read. An optional ``class_names`` array of strings names the classes.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from dpnn.errors import DataError
from dpnn.files import MAX_GZIP_RATIO, open_regular

from .common import FLOAT_BYTES, ImageSize, Splits, check_input, check_memory, row_image_shape

NAME = "npz"
LAYOUT = "DIR/train.npz [DIR/test.npz], arrays x (N, H, W[, C]) or (N, H*W[*C]) and y (N,)"
MAX_NAMES_BYTES = 1 << 20          # class names are a few hundred bytes


def files(directory: str) -> dict[str, str]:
    """{split: path} of the npz files present; 'train' is required to recognise the format."""
    found = {s: os.path.join(directory, f"{s}.npz") for s in ("train", "test")}
    return {s: p for s, p in found.items() if os.path.lexists(p)}    # a FIFO too: refused as one


def detect(directory: str) -> bool:
    return "train" in files(directory)


def _header(path: str, z: zipfile.ZipFile, member: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from a member's .npy header, checked against the zip entry's size, which is
    itself checked against the bytes that hold it (a compressed member may declare any size)."""
    info = z.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_GZIP_RATIO * max(info.compress_size, 1):
        raise DataError(f"{path}: {member} expands more than {MAX_GZIP_RATIO} times its compressed size "
                        f"({info.compress_size:,} bytes declaring {info.file_size:,}); save it with "
                        "np.savez, or np.savez_compressed of real data")
    with z.open(info) as m:
        version = np.lib.format.read_magic(m)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise DataError(f"{path}: {member} has .npy format {version}; save it with np.savez")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(m)
        header_len = m.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: {member} holds pickled Python objects, which dpnn never loads "
                        "(allow_pickle=False); save plain numeric arrays")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes != info.file_size - header_len:
        raise DataError(f"{path}: {member} declares shape {shape} ({nbytes:,} bytes) but holds "
                        f"{info.file_size - header_len:,}; the file is corrupt, save it again")
    return tuple(shape), dtype


def _read(path: str, z: zipfile.ZipFile, member: str) -> np.ndarray:
    with z.open(member) as m:
        return np.lib.format.read_array(m, allow_pickle=False)


def _image_shape(path: str, shape: tuple, size: ImageSize | None) -> tuple[int, ...]:
    """The (N, H, W, C) the x array is read as."""
    if len(shape) == 2:
        return (shape[0],) + row_image_shape(shape[1], size, path)
    if len(shape) == 3:
        return shape + (1,)
    if len(shape) == 4:
        return shape
    raise DataError(f"{path}: x has shape {shape}; store images as (N, H, W), (N, H, W, C) "
                    "or flat rows (N, H*W)")


def read_split(path: str, size: ImageSize | None,
               labelled: bool = True) -> tuple[np.ndarray, np.ndarray | None, list | None]:
    """(x (N, H, W, C), y (N,), class names or None) of one npz file, headers checked first.

    ``labelled=False`` (images to classify): y is optional, None when the file has none."""
    check_input(path, "save the arrays with np.savez")
    try:
        with open_regular(path) as f, zipfile.ZipFile(f) as z:
            members = {name[:-4]: name for name in z.namelist() if name.endswith(".npy")}
            missing = [k for k in ("x", "y") if k not in members and (labelled or k == "x")]
            if missing:
                raise DataError(f"{path}: no array {' or '.join(missing)} (it has "
                                f"{', '.join(sorted(members)) or 'none'}); save with "
                                "np.savez(path, x=images, y=labels)")
            heads = {k: _header(path, z, members[k]) for k in members}
            shape = _image_shape(path, heads["x"][0], size)
            y_shape, y_dtype = heads.get("y", ((shape[0],), np.dtype(np.int64)))
            if len(y_shape) != 1 or y_dtype.kind not in "iu":
                raise DataError(f"{path}: y has shape {y_shape} dtype {y_dtype}; store one "
                                "integer class index per sample, shape (N,)")
            if y_shape[0] != shape[0]:
                raise DataError(f"{path}: x holds {shape[0]} samples but y holds {y_shape[0]}")
            raw = int(np.prod(shape, dtype=object))
            check_memory(path, raw * (heads["x"][1].itemsize + FLOAT_BYTES), f"its x {shape}")
            x = _read(path, z, members["x"]).reshape(shape)
            y = _read(path, z, members["y"]) if "y" in members else None
            names = _class_names(path, z, members, heads)
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DataError(f"{path}: not a readable npz file ({e}); save it with np.savez") from None
    return x, y, names


def _class_names(path, z, members, heads) -> list[str] | None:
    if "class_names" not in members:
        return None
    shape, dtype = heads["class_names"]
    if dtype.kind not in "US" or len(shape) != 1 or \
            int(np.prod(shape, dtype=object)) * dtype.itemsize > MAX_NAMES_BYTES:
        raise DataError(f"{path}: class_names must be a 1-D array of strings, got shape {shape} "
                        f"dtype {dtype}")
    return [str(s) for s in _read(path, z, members["class_names"])]


def load(directory: str, size: ImageSize | None, label_column=None) -> Splits:
    """Read ``train.npz`` and, if present, ``test.npz`` in ``directory``."""
    paths = files(directory)
    x, y, names = read_split(paths["train"], size)
    test = read_split(paths["test"], size)[:2] if "test" in paths else None
    return Splits(NAME, (x, y), test, names, paths)
