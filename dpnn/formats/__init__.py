"""A directory of the user's own data -> ``(train, test, info)``, whatever its format.

Formats (tried in this order; each module has ``NAME``, ``LAYOUT``, ``detect`` and ``load``):

- ``idx``:    the four MNIST-style IDX files (:mod:`dpnn.formats.idxdir`);
- ``npz``:    ``train.npz`` [``test.npz``] with arrays ``x`` and ``y`` (:mod:`dpnn.formats.npz`);
- ``csv``:    ``train.csv`` [``test.csv``], one image per row and a label column
  (:mod:`dpnn.formats.csvrows`);
- ``images``: ``train/<class>/*.png|jpg`` [``test/<class>/*``] (:mod:`dpnn.formats.images`).

Pixels come out float32 (N, H, W, C): bytes 0..255 divided by 255, floats as they are.
Without a test split, a fixed 10 % of train is held out and ``info["notes"]`` says so.
"""
from __future__ import annotations

import os

from dpnn.data import Dataset, sorted_by_class
from dpnn.errors import DataError

from . import csvrows, idxdir, images, npz
from .common import HOLDOUT_FRACTION, ImageSize, Splits, hold_out, parse_image_size, to_dataset

FORMATS = (idxdir, npz, csvrows, images)
RESIZING = (images,)            # formats that resize to an image size; the others must match it


def layouts() -> str:
    """One line per format: its name and directory layout."""
    return "\n".join(f"  {f.NAME:<7} {f.LAYOUT}" for f in FORMATS)


def detect_format(directory: str):
    """The first format module whose files are in ``directory``; DataError listing them otherwise."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: directory not found; pass a directory holding one of the "
                        f"layouts: {'; '.join(f.LAYOUT for f in FORMATS)}")
    for fmt in FORMATS:
        if fmt.detect(directory):
            return fmt
    raise DataError(f"{directory}: no data set found; it needs one of: "
                    f"{'; '.join(f.LAYOUT for f in FORMATS)}")


def _check_size(train: Dataset, size: ImageSize | None, fmt, directory: str) -> None:
    if size is None or fmt in RESIZING:
        return
    h, w, c = train.X.shape[1:] if train.X.ndim == 4 else (None, None, None)
    if (h, w) != size[:2] or (size[2] is not None and c != size[2]):
        raise DataError(f"{directory}: its {fmt.NAME} images are {h}x{w}x{c}, not "
                        f"{'x'.join(str(v) for v in size if v)}; only image folders are resized, "
                        "so drop --image-size or resize the data yourself")


def _class_names(splits: Splits, train: Dataset, test: Dataset, directory: str) -> list[str]:
    k = max(train.num_classes, test.num_classes)
    names = splits.class_names
    if names is None:
        return [str(c) for c in range(k)]
    if len(names) < k:
        raise DataError(f"{directory}: labels go up to {k - 1} but only {len(names)} class "
                        "names are given; give one name per class")
    return list(names)


def _splits_to_datasets(splits: Splits, directory: str,
                        test_split: float | None) -> tuple[Dataset, Dataset, list[str]]:
    train = to_dataset(*splits.train, splits.files["train"])
    if splits.test is not None:
        if test_split is not None:
            raise DataError(f"{directory} has its own test split ({splits.files['test']}); --test-split "
                            "applies to a folder without one, so drop it")
        return train, to_dataset(*splits.test, splits.files["test"]), []
    fraction = HOLDOUT_FRACTION if test_split is None else test_split
    train, test = hold_out(train, fraction)
    if fraction == 0:
        return train, test, [f"{directory} has no test split and --test-split is 0: training on all "
                             f"{len(train):,} samples, no test score"]
    note = (f"{directory} has no test split: holding out {fraction:.0%} of its training "
            f"samples ({len(test):,} of {len(train) + len(test):,}, stratified by class, fixed seed) "
            "as the test set" + (" (--test-split 0 trains on all of them)" if test_split is None else ""))
    return train, test, [note]


def load(directory: str | os.PathLike, image_size: str | tuple | None = None,
         label_column: int | str | None = None, test_split: float | None = None) -> tuple[Dataset, Dataset, dict]:
    """Load the data set in ``directory`` -> (train, test, info).

    ``image_size``: ``"HxW"``/``"HxWxC"`` or a tuple: image folders are resized to it, CSV rows
    and flat npz rows are read as it; IDX and image-shaped npz data must already match it.
    ``label_column`` (CSV only): an index (negative from the end) or a header name.
    ``test_split``: for a folder without a test split, the fraction of train held out as the test
    set (None: 10 %; 0: none, the test set is empty); a folder with one refuses it.
    ``info`` holds ``name``, ``class_names``, ``source``, ``format``, ``source_dtype``,
    ``details`` (how it was read), ``notes`` (what a user should be told, e.g. a held-out split) and
    ``sorted_by_class`` (the training samples arrive grouped by class: every split dpnn takes of
    them is stratified anyway, :func:`dpnn.data.stratified_split`).
    """
    directory = os.fspath(directory)
    size = parse_image_size(image_size)
    fmt = detect_format(directory)
    if label_column is not None and fmt is not csvrows:
        raise DataError(f"{directory}: --label-column applies to CSV files, but it holds "
                        f"{fmt.NAME} data")
    splits = fmt.load(directory, size, label_column)
    source_dtype = splits.source_dtype or str(splits.train[0].dtype)
    train, test, notes = _splits_to_datasets(splits, directory, test_split)
    notes = splits.notes + notes
    _check_size(train, size, fmt, directory)
    if train.X.shape[1:] != test.X.shape[1:]:
        raise DataError(f"{directory}: train images are {train.X.shape[1:]} but test images are "
                        f"{test.X.shape[1:]}; both splits must hold images of one size")
    info = {"name": os.path.basename(os.path.normpath(directory)) or directory,
            "class_names": _class_names(splits, train, test, directory), "source": directory,
            "format": fmt.NAME, "files": splits.files, "source_dtype": source_dtype,
            "details": splits.details, "notes": notes,
            "sorted_by_class": sorted_by_class(splits.train[1])}
    return train, test, info
