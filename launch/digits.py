"""Train the GUI's digit model: seed-cnn on real MNIST digits, augmented to look hand-drawn.

    python -m launch.digits                     # full MNIST if found, else mnist-5k; -> weights/digits.hdf5
    python -m launch.digits --dataset mnist-5k --epochs 20 --workers 2
    python -m launch.gui                        # then draw on it
    (also: make digits)

Every epoch sees freshly augmented copies of the training digits (random shifts, small
rotations, scaling, thicker/thinner strokes: ``dpnn.digits.augment_digits``), so the
model copes with digits drawn with a mouse. Held-out accuracy is measured on the data
set's test split (mnist-5k: 1,000 digits never trained on), plain and augmented.
Exit status: 0 done, 2 bad arguments, missing data or engine.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from dpnn.datasets import MNIST_ENV, find_mnist_dir, load_dataset
from dpnn.digits import augment_digits
from dpnn.errors import DataError, WeightsError
from launch.gui import DEFAULT_WEIGHTS
from launch.presets import build_model

EPOCHS = {"mnist": 6, "mnist-5k": 20}   # ~3-6 minutes on 2 cores either way
LR_MIN = 1e-5                           # end of the cosine learning-rate schedule


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m launch.digits", description=__doc__.split("\n")[0],
                                epilog=f"Full MNIST is looked for in ${MNIST_ENV}, ./data/mnist, "
                                       "~/.dpnn/mnist.")
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


def cosine_lr(lr0: float, epoch: int, epochs: int) -> float:
    return LR_MIN + 0.5 * (lr0 - LR_MIN) * (1 + math.cos(math.pi * epoch / epochs))


def train_digits(train, epochs: int, batch_size: int, lr: float, seed: int, workers, verbose: bool):
    """seed-cnn trained on ``train`` with fresh augmentation every epoch; returns the model."""
    model = build_model("seed-cnn", 10, seed=seed)
    model.compile(loss="categorical_crossentropy", optimizer="adam", lr=lr)
    history: dict = {}
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        X = augment_digits(train.X, rng)  # (N, 28, 28, 1), new jitter every epoch
        model.optimizer.lr = cosine_lr(lr, epoch, epochs)
        t0 = time.perf_counter()
        model.fit(X, train.y, epochs=epoch + 1, initial_epoch=epoch, history=history,
                  batch_size=batch_size, seed=seed, workers=workers, verbose=0)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}, acc "
                  f"{history['acc'][-1]:.4f}, lr {model.optimizer.lr:.2e}, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = args.dataset
    if name == "auto":
        name = "mnist" if find_mnist_dir() else "mnist-5k"
    try:
        workers = resolve_workers(args.workers)
        train, test, info = load_dataset(name)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if train.X.shape[1:] != (28, 28, 1) or max(train.num_classes, test.num_classes) > 10:
        print(f"error: {name} is not a 28x28 data set of 10 digits", file=sys.stderr)
        return 2
    epochs = args.epochs or EPOCHS.get(info["name"], EPOCHS["mnist"])
    print(f"training seed-cnn on {info['name']} ({len(train):,} train / {len(test):,} held-out "
          f"digits), {epochs} epochs with augmentation, workers={workers}", flush=True)
    t0 = time.perf_counter()
    model = train_digits(train, epochs, args.batch_size, args.lr, args.seed, workers, not args.quiet)
    seconds = time.perf_counter() - t0
    _, acc = model.evaluate(test)
    _, acc_aug = model.evaluate(augment_digits(test.X, np.random.default_rng([args.seed, 10**6])), test.y)
    print(f"held-out accuracy {acc:.4f} on {len(test):,} {info['name']} test digits "
          f"({acc_aug:.4f} augmented); trained in {seconds:.0f} s", flush=True)
    model.metadata.update({"class_names": list(info["class_names"]), "dataset": info["name"],
                           "preset": "seed-cnn", "augmentation": "dpnn.digits.augment_digits",
                           "epochs": epochs, "test_accuracy": acc, "test_accuracy_augmented": acc_aug})
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        model.save(args.out)
    except (OSError, WeightsError) as e:
        print(f"error: cannot write {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}; draw on it with: python -m launch.gui --weights {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
