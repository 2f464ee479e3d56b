"""Train the GUI's digit model: seed-cnn on real MNIST digits, augmented to look hand-drawn.

    dpnn digits                     # full MNIST if found, else mnist-5k; -> weights/digits.hdf5
    dpnn digits --dataset mnist-5k --epochs 20 --workers 2
    dpnn digits --augment shift=2,rotate=10,scale=0.1,clip --model lenet5
    dpnn gui                        # then draw on it
    (also: make digits)

One ``fit`` call trains every epoch on freshly augmented digits: each worker jitters its
own shard of every batch (thicker/thinner strokes, small rotations, scaling, shifts:
``dpnn.digits.digit_augmentation``), keyed per sample by (seed, epoch, index), so the
result does not depend on the worker count. The learning rate follows a cosine schedule.
Held-out accuracy is measured on the data set's test split (mnist-5k: 1,000 digits never
trained on), plain and augmented.
Exit status: 0 done, 2 bad arguments, missing data or engine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from dpnn.augment import SPEC_HELP, Compose, parse_spec
from dpnn.datasets import MNIST_ENV, find_mnist_dir, load_dataset
from dpnn.digits import digit_augmentation
from dpnn.errors import DataError, WeightsError
from dpnn.random import sample_keys

from . import prog, runnable
from .gui import DEFAULT_WEIGHTS
from .outputs import check_writable
from .presets import PRESETS, build_model

EPOCHS = {"mnist": 6, "mnist-5k": 20}   # ~3-6 minutes on 2 cores either way
LR_MIN = 1e-5                           # end of the cosine learning-rate schedule
HELD_OUT_EPOCH = 10**6                  # keys of the augmented test copy: an epoch training never reaches


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("digits"), description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"Full MNIST is looked for in ${MNIST_ENV}, ./data/mnist, "
                                       f"~/.dpnn/mnist.\n\n--augment {SPEC_HELP}")
    p.add_argument("--dataset", default="auto",
                   help="'auto' (mnist when its four IDX files are found, else mnist-5k), "
                        "'mnist', 'mnist-5k' or a directory of IDX files (default: auto)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"passes over the training digits (default: {EPOCHS['mnist-5k']} for mnist-5k, "
                        f"{EPOCHS['mnist']} for mnist)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate at the start of the "
                                                           "cosine schedule (default: 1e-3)")
    p.add_argument("--workers", default="auto", metavar="N|auto",
                   help="data-parallel worker processes passed to fit (default: auto = every core "
                        "when the engine is available, else 1)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, shuffling and augmentation seed")
    p.add_argument("--model", default="seed-cnn", choices=sorted(PRESETS),
                   help="architecture preset (default: seed-cnn)")
    p.add_argument("--augment", default=digit_augmentation().describe(), metavar="SPEC",
                   help="training augmentation in the grammar below, 'none' for none (default: "
                        "dpnn.digits.digit_augmentation(), which is %(default)s)")
    p.add_argument("--out", default=DEFAULT_WEIGHTS,
                   help=f"weights file to write, architecture JSON beside it (default: {DEFAULT_WEIGHTS})")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1 or not args.lr > 0:
        p.error("--batch-size must be >= 1 and --lr > 0")
    if args.workers != "auto":
        if not args.workers.isdigit() or int(args.workers) < 1:
            p.error(f"--workers must be a positive integer or 'auto', got {args.workers!r}")
        args.workers = int(args.workers)
    try:
        args.augment = parse_spec(args.augment)
    except ValueError as e:
        p.error(f"--augment: {e}")
    return args


def resolve_workers(workers):
    """``auto`` falls back to one process when the data-parallel engine is not installed."""
    try:
        from dpnn.workers import DataParallel  # noqa: F401
    except ImportError:
        if workers not in ("auto", 1):
            raise ValueError(f"--workers {workers} needs the data-parallel engine (dpnn.workers), "
                             "which this installation lacks; use --workers 1") from None
        return 1
    return workers


def train_digits(train, epochs: int, batch_size: int, lr: float, seed: int, workers, verbose: bool,
                 augment: Compose | None = None, model_name: str = "seed-cnn"):
    """``model_name`` trained on ``train`` in one fit, each epoch on fresh ``augment`` jitter
    (default: ``digit_augmentation()``), cosine learning rate from ``lr``; returns the model."""
    model = build_model(model_name, 10, seed=seed)
    model.compile(loss="categorical_crossentropy", optimizer="adam", lr=lr)
    model.fit(train.X, train.y, epochs=epochs, batch_size=batch_size, seed=seed, workers=workers,
              augment=augment if augment is not None else digit_augmentation(),
              lr_schedule="cosine", lr_min=LR_MIN, verbose=2 if verbose else 0)   # dpnn train's epoch lines
    return model


def held_out_accuracy(model, test, augment: Compose, seed: int) -> tuple[float, float]:
    """(plain, augmented) accuracy on ``test``; the augmented copy is keyed by HELD_OUT_EPOCH."""
    _, acc = model.evaluate(test)
    keys = sample_keys(seed, HELD_OUT_EPOCH, np.arange(len(test)))  # (N,)
    _, acc_aug = model.evaluate(augment(test.X, keys), test.y)
    return acc, acc_aug


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = args.dataset
    if name == "auto":
        name = "mnist" if find_mnist_dir() else "mnist-5k"
    try:
        check_writable(args.out, "--out", ValueError)        # before minutes of training
        workers = resolve_workers(args.workers)
        train, test, info = load_dataset(name)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if train.X.shape[1:] != (28, 28, 1) or max(train.num_classes, test.num_classes) > 10:
        print(f"error: {name} is not a 28x28 data set of 10 digits", file=sys.stderr)
        return 2
    epochs = args.epochs or EPOCHS.get(info["name"], EPOCHS["mnist"])
    print(f"training {args.model} on {info['name']} ({len(train):,} train / {len(test):,} held-out "
          f"digits), {epochs} epochs, augmentation {args.augment.describe()}, workers={workers}",
          flush=True)
    t0 = time.perf_counter()
    model = train_digits(train, epochs, args.batch_size, args.lr, args.seed, workers, not args.quiet,
                         args.augment, args.model)
    seconds = time.perf_counter() - t0
    acc, acc_aug = held_out_accuracy(model, test, args.augment, args.seed)
    print(f"held-out accuracy {acc:.4f} on {len(test):,} {info['name']} test digits "
          f"({acc_aug:.4f} augmented); trained in {seconds:.0f} s", flush=True)
    model.metadata.update({"class_names": list(info["class_names"]), "dataset": info["name"],
                           "preset": args.model, "augmentation": args.augment.describe(),
                           "epochs": epochs, "test_accuracy": acc, "test_accuracy_augmented": acc_aug})
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        model.save(args.out)
    except (OSError, WeightsError) as e:         # OutputError says which file and why
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}; draw on it with: {runnable('gui')} --weights {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
