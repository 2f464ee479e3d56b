"""``train.csv`` / ``test.csv`` (optionally ``.gz``): one image per row plus a label column.

The label column is the first or the last: named by a header (``label``, ``class``, ``target``,
``y``), given (``label_column``: an index, negative from the end, or a header name), or
detected (text labels, else the edge column of few distinct integers). Pixels form a square
grayscale image unless an image size says otherwise (784 columns are 28x28: the MNIST CSV
convention). Rows and columns are counted, streamed, before anything is parsed.
"""
from __future__ import annotations

import csv
import io
import os
import re
import warnings
import zlib

import numpy as np

from dpnn.errors import DataError
from dpnn.files import open_maybe_gzip

from .common import FLOAT_BYTES, ImageSize, Splits, check_input, check_memory, row_image_shape

NAME = "csv"
LAYOUT = "DIR/train.csv[.gz] [DIR/test.csv[.gz]], one image per row, the label first or last"
LABEL_NAMES = ("label", "labels", "class", "target", "y", "category")
MAX_LINE_BYTES = 64 << 20       # a 4096x4096 RGB row is ~200 MB of text; one line never beyond this
CHUNK = 1 << 18          # lines are counted 256 KB at a time


def files(directory: str) -> dict[str, str]:
    out = {}
    for split in ("train", "test"):
        for name in (f"{split}.csv", f"{split}.csv.gz"):
            if os.path.lexists(os.path.join(directory, name)):     # a FIFO too: refused as one
                out.setdefault(split, os.path.join(directory, name))
    return out


def detect(directory: str) -> bool:
    return "train" in files(directory)


def _first_lines(path: str, f, n: int = 2) -> list[list[str]]:
    rows = []
    for _ in range(n):
        line = f.readline(MAX_LINE_BYTES)
        if len(line) >= MAX_LINE_BYTES and not line.endswith(b"\n"):
            raise DataError(f"{path}: a line is longer than {MAX_LINE_BYTES >> 20} MB; "
                            "store one image per line, values separated by commas")
        if line.strip():
            rows.append(next(csv.reader([line.decode("utf-8", "replace")]), []))
    return rows


def _count_lines(f) -> int:
    n, last = 0, b"\n"
    while chunk := f.read(CHUNK):
        n, last = n + chunk.count(b"\n"), chunk[-1:]
    return n + (last != b"\n")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def scan(path: str) -> tuple[list[str] | None, int, int]:
    """(header or None, number of data rows, number of columns), streamed without parsing."""
    check_input(path, "pass a CSV file")
    try:
        with open_maybe_gzip(path) as f:     # a .gz stream bounded: no header says its size
            first = _first_lines(path, f)
            f.seek(0)
            lines = _count_lines(f)
    except (OSError, EOFError, zlib.error, csv.Error) as e:
        reason = getattr(e, "strerror", None) or e
        raise DataError(f"{path}: cannot be read ({reason}); check the file or re-create it") from None
    if not first:
        raise DataError(f"{path}: is empty; put one image per row, with its label")
    row, numeric = first[0], [_is_number(v) for v in first[0]]
    second = [_is_number(v) for v in first[1]] if len(first) > 1 else [True] * len(row)
    header = row if sum(not n for n in numeric) >= 2 or \
        any(not a and b for a, b in zip(numeric, second)) else None
    return header, lines - (header is not None), len(row)


def _column_index(spec, header: list[str] | None, ncols: int, path: str) -> int:
    """An index in range(ncols) from an int, a digit string or a header name."""
    if isinstance(spec, str) and re.fullmatch(r"-?\d+", spec.strip()):
        spec = int(spec)
    if isinstance(spec, int):
        if not -ncols <= spec < ncols:
            raise DataError(f"{path}: label column {spec} is outside its {ncols} columns")
        return spec % ncols
    if header is None or spec not in header:
        where = f"its header has {', '.join(header[:3])}..." if header else "it has no header row"
        raise DataError(f"{path}: no column named {spec!r} ({where}); pass the label column's "
                        "index (0 first, -1 last)")
    return header.index(spec)


def _loadtxt(path: str, **kwargs) -> np.ndarray:
    with open_maybe_gzip(path) as f, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Input line .* contained no data")    # blank lines: skipped
        return np.loadtxt(io.TextIOWrapper(f, encoding="utf-8"), delimiter=",", quotechar='"', **kwargs)


def _read_column(path: str, col: int, skip: int) -> np.ndarray:
    return _loadtxt(path, skiprows=skip, usecols=(col,), dtype=str, ndmin=1)


def _label_score(values: np.ndarray) -> tuple[int, int]:
    """(kind, distinct): kind 2 text, 1 integers with >= 2 values, 0 cannot be labels."""
    try:
        numbers = values.astype(np.float64)
    except ValueError:
        return 2, len(np.unique(values))
    distinct = len(np.unique(numbers))
    ok = distinct >= 2 and np.all(numbers == np.round(numbers)) and numbers.min() >= 0
    return (1 if ok else 0), distinct


def detect_label_column(path: str, header: list[str] | None, ncols: int) -> tuple[int, str]:
    """(index, how it was found) of the label column of ``path``."""
    if header:
        named = [i for i, h in enumerate(header) if h.strip().lower() in LABEL_NAMES]
        if len(named) == 1:
            return named[0], f"named {header[named[0]]!r}"
    skip = int(header is not None)
    first, last = (_label_score(_read_column(path, c, skip)) for c in (0, ncols - 1))
    if first[0] != last[0] and max(first[0], last[0]) > 0:
        return (0, "first, detected") if first[0] > last[0] else (ncols - 1, "last, detected")
    if first[0] == last[0] == 1 and first[1] != last[1]:
        return (0, "first, detected") if first[1] < last[1] else (ncols - 1, "last, detected")
    raise DataError(f"{path}: cannot tell whether the first or the last column holds the labels; "
                    "pass --label-column 0 (first), -1 (last) or its header name")


def _pixels(values: np.ndarray, path: str) -> np.ndarray:
    """Parsed float32 pixels -> uint8 when they are whole numbers above 1 (bytes), else as they are."""
    if values.size and values.max() > 1 and np.all(values == np.round(values)):
        if values.min() < 0 or values.max() > 255:
            raise DataError(f"{path}: integer pixels must be 0..255, found "
                            f"{values.min():g}..{values.max():g}; rescale them to bytes or to [0, 1]")
        return values.astype(np.uint8)
    return values


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or " ".join(str(e).split())[:200]


def _label_column(path: str, label_column, header: list[str] | None, ncols: int) -> tuple[int, str]:
    if label_column is None:
        return detect_label_column(path, header, ncols)
    return _column_index(label_column, header, ncols, path), "given"


def _read_values(path: str, header: list[str] | None, ncols: int, col: int | None):
    """(pixels (N, ncols or ncols - 1) float32, or uint8 for bytes; column ``col`` as text, or None)."""
    skip = int(header is not None)
    try:
        values = _loadtxt(path, skiprows=skip, usecols=[c for c in range(ncols) if c != col],
                          dtype=np.float32, ndmin=2)       # blank lines skipped
        labels = None if col is None else _read_column(path, col, skip)
    except (ValueError, OSError, EOFError, zlib.error, csv.Error) as e:
        raise DataError(f"{path}: {_reason(e)}; every row needs {ncols} numeric values "
                        "(the label may be text)") from None
    return _pixels(values, path), labels


def read_split(path: str, size: ImageSize | None, label_column):
    """(x (N, H, W, C), labels (N,) as text or int64, label column, how it was found)."""
    try:
        header, rows, ncols = scan(path)
        if ncols < 2:
            raise DataError(f"{path}: one column only; each row needs its pixels and a label")
        shape = row_image_shape(ncols - 1, size, path)
        check_memory(path, rows * ncols * FLOAT_BYTES * 2, f"{rows:,} rows x {ncols:,} columns as float32")
        col, how = _label_column(path, label_column, header, ncols)
        x, labels = _read_values(path, header, ncols, col)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zlib.error, csv.Error) as e:    # UnicodeDecodeError too
        raise DataError(f"{path}: not a CSV of numbers ({_reason(e)}); store one image per row, "
                        "values separated by commas") from None
    return x.reshape((-1,) + shape), labels, col, how


def read_rows(path: str, pixels: int, label_column=None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(x (N, pixels) bytes or floats, labels (N,) as text or None, how) of a CSV to predict: rows of
    ``pixels`` values, or one more column holding a label (given, named by the header or detected).
    Kaggle's ``test.csv`` (a header, 784 pixel columns, no label) is read as unlabelled, whatever
    ``label_column`` says."""
    header, rows, ncols = scan(path)
    if ncols not in (pixels, pixels + 1):
        raise DataError(f"{path}: {ncols} columns per row, but the model takes {pixels} pixels per row "
                        "(and the file may add one label column); pass a file of the model's images")
    check_memory(path, rows * ncols * FLOAT_BYTES * 2, f"{rows:,} rows x {ncols:,} columns as float32")
    col, how = _label_column(path, label_column, header, ncols) if ncols == pixels + 1 \
        else (None, "no label column")
    x, labels = _read_values(path, header, ncols, col)
    return x, labels, f"label column {col} ({how})" if col is not None else how


def label_indices(labels: np.ndarray, names: list[str] | None, path: str) -> tuple[np.ndarray, list | None]:
    """Text or numeric labels -> (int64 indices, class names or None for numeric labels)."""
    try:
        numbers = labels.astype(np.float64)
    except ValueError:
        numbers = None
    if numbers is not None and names is None:
        if not np.all(numbers == np.round(numbers)) or (numbers.size and numbers.min() < 0):
            raise DataError(f"{path}: labels must be whole numbers >= 0 or class names")
        return numbers.astype(np.int64), None
    names = names if names is not None else sorted(set(labels.tolist()))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(labels.tolist()) - set(index))
    if unknown:
        raise DataError(f"{path}: label {unknown[0]!r} is not one of the training classes "
                        f"({', '.join(names[:10])}); use the same class names in both files")
    return np.array([index[v] for v in labels.tolist()], dtype=np.int64), names


def load(directory: str, size: ImageSize | None, label_column=None) -> Splits:
    """Read ``train.csv[.gz]`` and, if present, ``test.csv[.gz]``; the test file uses train's
    label column and class names."""
    paths = files(directory)
    x, labels, col, how = read_split(paths["train"], size, label_column)
    y, names = label_indices(labels, None, paths["train"])
    test, notes = None, []
    if "test" in paths and scan(paths["test"])[2] == x[0].size:       # Kaggle: test.csv has no labels
        notes.append(f"{paths.pop('test')} has no label column (one column fewer than the training "
                     "file), so it cannot score the model; classify it with dpnn predict")
    if "test" in paths:
        tx, tlabels, _, _ = read_split(paths["test"], size, col)
        test = (tx, label_indices(tlabels, names, paths["test"])[0])
    return Splits(NAME, (x, y), test, names, paths, [f"label column {col} ({how})"], notes=notes)
