"""In-memory data sets, deterministic shuffling and threaded mini-batch prefetch.

Shuffling depends only on ``(seed, epoch)`` — never on the number of workers or
threads — so every data-parallel worker count sees the same global batches.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from dpnn.augment import Augment, augment_batch
from dpnn.errors import DataError
from dpnn.idx import read_idx
from dpnn.limits import check_allocation
from dpnn.random import fresh_seed, sample_keys

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _check_finite(X: np.ndarray) -> None:
    if X.dtype.kind != "f" or X.size == 0:
        return
    # Fast path: one float64 sum is finite iff no NaN/inf (float32 data cannot overflow it).
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(X, dtype=np.float64)):
            return
    bad = ~np.isfinite(X.reshape(len(X), -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(f"X has NaN/inf values in {len(rows)} samples (first: index {rows[0]}); "
                        "clean or drop those samples")


def _check_labels(y: np.ndarray, n: int) -> None:
    if y.ndim not in (1, 2) or len(y) != n:
        raise DataError(f"y has shape {y.shape} but X has {n} samples; pass integer labels of "
                        f"shape ({n},) or one-hot labels of shape ({n}, K)")
    if y.ndim == 1:
        if y.dtype.kind not in "iu":
            raise DataError(f"integer labels expected, got dtype {y.dtype}; "
                            "convert with y.astype(np.int64) or pass one-hot (N, K) labels")
        if n and y.min() < 0:
            raise DataError(f"labels must be >= 0, found {y.min()}")
    elif y.dtype.kind not in "iuf" or not np.isfinite(y).all():
        raise DataError(f"one-hot labels must be finite numbers, got dtype {y.dtype}")


class Dataset:
    """Samples ``X`` (N, ...) float or uint8 with labels ``y`` (N,) int or (N, K) one-hot."""

    def __init__(self, X: np.ndarray, y: np.ndarray):
        X, y = np.asarray(X), np.asarray(y)
        if X.ndim < 2:
            raise DataError(f"X must have the sample axis first and at least 2 dimensions, "
                            f"got shape {X.shape}; images are (N, H, W, C)")
        if X.dtype.kind != "f" and X.dtype != np.uint8:
            raise DataError(f"X must be float or uint8, got dtype {X.dtype}; "
                            "convert with X.astype(np.float32)")
        _check_finite(X)
        _check_labels(y, len(X))
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.X)

    def __repr__(self) -> str:
        return f"Dataset(X={self.X.shape} {self.X.dtype}, y={self.y.shape} {self.y.dtype})"

    @property
    def num_classes(self) -> int:
        """Largest label + 1, or the one-hot width."""
        if self.y.ndim == 2:
            return self.y.shape[1]
        return int(self.y.max()) + 1 if len(self.y) else 0

    def _take(self, idx: np.ndarray) -> "Dataset":
        return Dataset(self.X[idx], self.y[idx])

    def split(self, fraction: float, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Hold out ``fraction`` of the samples (chosen by ``seed``) -> (train, val); order is kept."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
        n = len(self)
        if n < 2:
            raise DataError(f"cannot split a data set of {n} samples; it needs at least 2")
        n_val = min(max(int(round(n * fraction)), 1), n - 1)
        keep, held = stratified_split(self.y, n_val / n, seed)
        return self._take(keep), self._take(held)

    def subset(self, n: int, seed: int = 0) -> "Dataset":
        """``n`` samples drawn by ``seed``, stratified by class (every sample when ``n >= len(self)``);
        order is kept."""
        if n < 0:
            raise ValueError(f"subset size must be >= 0, got {n}")
        if n >= len(self):
            return self
        keep, _ = stratified_split(self.y, 1.0 - n / len(self), seed)
        return self._take(keep)

    def batches(self, batch_size: int, shuffle: bool = True, preprocess: Augment | None = None,
                num_threads: int | None = None, seed: int | None = None,
                epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(xb, yb)`` covering every sample once, the last batch possibly smaller:
        exactly the batches ``fit`` trains on in ``epoch`` with this ``seed``.

        ``preprocess(xb, keys) -> xb`` is an augmentation as ``fit(augment=...)`` takes it (see
        :mod:`dpnn.augment`), fed the same per-sample (seed, epoch, index) keys, so a batch is
        a pure function of its rows and keys; it runs on up to ``num_threads`` threads
        (default min(8, cpus); 0 = inline) and the output does not depend on the thread
        count. Batches come out in order.
        """
        if num_threads is None:
            num_threads = min(8, os.cpu_count() or 1)
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        seed = fresh_seed() if seed is None else seed
        idx_iter = batch_indices(len(self), batch_size, shuffle, seed, epoch)  # validates now
        jobs = ((self, idx, preprocess, sample_keys(seed, epoch, idx)) for idx in idx_iter)
        if num_threads == 0:
            return (_make_batch(*job) for job in jobs)
        return _prefetch(jobs, num_threads)


def _make_batch(ds: Dataset, idx: np.ndarray, preprocess: Augment | None,
                keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xb, yb = ds.X[idx], ds.y[idx]
    if preprocess is not None:
        xb = augment_batch(preprocess, xb, keys)
    return xb, yb


def _prefetch(jobs: Iterator[tuple], num_threads: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Run jobs on a thread pool keeping 2 * num_threads in flight; yield results in order."""
    pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="dpnn-batch")
    pending: deque = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(_make_batch, *job))
            if len(pending) >= 2 * num_threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # also runs when the consumer stops early (generator close)
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)


def class_labels(y: np.ndarray) -> np.ndarray | None:
    """The class of each sample: integer labels (N,) as they are, one-hot rows (N, K) by argmax;
    None for anything else (regression targets): those are split without strata."""
    y = np.asarray(y)
    if y.ndim == 1 and y.dtype.kind in "iub":
        return y
    if y.ndim == 2 and y.shape[1] > 1 and y.dtype.kind in "iufb":
        return np.argmax(y, axis=1)
    return None


def sorted_by_class(y: np.ndarray) -> bool:
    """Whether the samples arrive grouped by class (each class in one run, >= 2 classes): then the
    last fraction or the first N would hold some classes only."""
    labels = class_labels(y)
    if labels is None or len(labels) < 2:
        return False
    runs = 1 + int(np.count_nonzero(labels[1:] != labels[:-1]))
    return 1 < runs == len(np.unique(labels))


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held) (N - M,), (M,) int64, each in ascending order, M = round(N * fraction):
    a seeded shuffle within each class, every class held out in proportion to its size.

    One function for every split and subset dpnn takes (``fit(validation_split=)``, ``--val-split``,
    ``--limit``, the held-out test split), so none of them depends on the order the data arrive in.
    The classes' shares are rounded by largest remainder (ties: the lower class), so the total is
    exact; the result depends only on the labels and ``seed``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"split fraction must be in [0, 1], got {fraction}")
    n = len(y)
    n_held = int(round(n * fraction))
    labels = class_labels(y)
    if labels is None:                                 # no classes: one stratum
        labels = np.zeros(n, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)   # (K,), (K,)
    quota = counts * (n_held / max(n, 1))               # (K,) float shares
    take = np.floor(quota).astype(np.int64)
    extra = np.argsort(-(quota - take), kind="stable")[:n_held - int(take.sum())]
    take[extra] += 1
    held = []
    for k, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        held.append(np.random.default_rng([seed, k]).permutation(members)[:take[k]])
    mask = np.zeros(n, dtype=bool)
    mask[np.concatenate(held) if held else []] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Sample order (n,) int64 for ``epoch``; depends only on ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, shuffle: bool = True, seed: int | None = None,
                  epoch: int = 0) -> Iterator[np.ndarray]:
    """Index arrays (<= batch_size,) int64 covering range(n) once; the last may be short."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not shuffle:
        order = np.arange(n, dtype=np.int64)
    elif seed is None:
        order = np.random.default_rng().permutation(n)
    else:
        order = epoch_permutation(n, seed, epoch)
    return (order[start:start + batch_size] for start in range(0, n, batch_size))


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels (N,) -> float32 one-hot (N, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"one_hot needs 1-D integer labels, got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(f"label {labels[bad][0]} at index {np.flatnonzero(bad)[0]} is outside "
                        f"0..{num_classes - 1}; pass the right num_classes")
    out = np.zeros((len(labels), num_classes), dtype=np.float32)  # (N, K)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def find_mnist_file(directory: str, stem: str) -> str | None:
    """Path of ``stem`` in ``directory`` accepting .gz or raw and the ``-idx`` / ``.idx`` spellings."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        path = os.path.join(directory, name)
        if os.path.lexists(path):       # a FIFO or a link loop too: read_idx refuses it as what it is
            return path
    return None


def _mnist_paths(directory: str) -> dict[str, str]:
    expected = ", ".join(f"{s}[.gz]" for s in MNIST_FILES.values())
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: directory not found; create it and put the four IDX files "
                        f"in it: {expected}")
    paths = {key: find_mnist_file(directory, stem) for key, stem in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{directory}: missing {', '.join(missing)} (gz or raw); the directory "
                        f"needs all four IDX files: {expected}")
    return paths


def _load_split(images_path: str, labels_path: str, num_classes: int) -> Dataset:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: images must be 3-D (N, H, W), got shape {images.shape}; "
                        "check that images and labels files are not swapped")
    if images.dtype != np.uint8:
        raise DataError(f"{images_path}: images must be unsigned bytes (IDX code 0x08), "
                        f"got {images.dtype}; convert the pixels to 0..255 bytes")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{labels_path}: labels must be 1-D integers, got shape {labels.shape} "
                        f"dtype {labels.dtype}; check that images and labels files are not swapped")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has "
                        f"{len(labels)} labels; the pair must come from the same release")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(f"{labels_path}: label {labels[bad][0]} at index {np.flatnonzero(bad)[0]} "
                        f"is outside 0..{num_classes - 1}; the file is corrupt or not a label file")
    check_allocation(images.size * 4, f"{images_path}: its images as float32",
                     "free memory or use a smaller data set", error=DataError)
    X = np.divide(images[..., None], 255.0, dtype=np.float32)  # (N, H, W, 1) in [0, 1]
    return Dataset(X, labels.astype(np.int64))


def load_mnist_gz(directory: str | os.PathLike, num_classes: int = 10) -> tuple[Dataset, Dataset]:
    """Load the four MNIST-style IDX files in ``directory`` -> (train, test).

    X is float32 (N, H, W, 1) scaled to [0, 1] here, once; y is int64 in 0..num_classes-1.
    """
    directory = os.fspath(directory)
    paths = _mnist_paths(directory)
    train = _load_split(paths["train_images"], paths["train_labels"], num_classes)
    test = _load_split(paths["test_images"], paths["test_labels"], num_classes)
    if train.X.shape[1:] != test.X.shape[1:]:
        raise DataError(f"{directory}: train images are {train.X.shape[1:3]} but test images are "
                        f"{test.X.shape[1:3]}; both files must come from the same data set")
    return train, test


def as_arrays(x, y=None) -> tuple[np.ndarray, np.ndarray]:
    """Accept a Dataset (``.X``/``.y``), an (X, y) tuple, or X and y arrays; checked, not converted."""
    if y is None and hasattr(x, "X") and hasattr(x, "y"):
        x, y = x.X, x.y
    elif y is None and isinstance(x, (tuple, list)) and len(x) == 2:
        x, y = x
    if y is None:
        raise ValueError("no labels: pass fit(dataset), fit((X, y)) or fit(X, y)")
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind not in "fiub":              # e.g. an object array of ragged rows
        raise TypeError(f"inputs must be numeric arrays, got dtype {x.dtype}; stack them into one array")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels; they must have the same length")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError("the inputs contain NaN or infinite values; clean the data first")
    if y.dtype.kind not in "iufb":
        raise ValueError(f"labels must be numbers (class indices, one-hot rows or targets), "
                         f"got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError("the labels contain NaN or infinite values; clean the data first")
    return x, y
