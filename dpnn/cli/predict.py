"""Classify image files, folders, npz or CSV files with a saved model; write the predictions as CSV.

    dpnn predict --weights weights.hdf5 photo.png cat.jpg        # image files
    dpnn predict --weights weights.hdf5 ./photos --out preds.csv # every image in a folder
    dpnn predict --weights weights.hdf5 test.npz                 # x (N, H, W[, C]), y optional
    dpnn predict --weights weights.hdf5 test.csv --format kaggle --out submission.csv  # Kaggle: ImageId,Label
    dpnn predict --plugin my_layers.py --weights custom.hdf5 ./photos

The CSV has one row per image: ``file`` (the image file, or the npz/CSV it came from), ``row``
(its index in that npz/CSV; empty for an image file), ``class`` (the most probable class, by
the name saved with the model), ``probability`` (its softmax probability), and ``label`` when
the input holds labels (then the accuracy is printed too). Images are resized and converted
to the model's input (e.g. 28x28 grayscale); byte pixels 0..255 are scaled to [0, 1] as in
training. A CSV row holds the model's pixels, plus at most one label column.

Exit status: 0 done, 1 the output could not be written, 2 bad arguments, input or weights
(one line naming the file; nothing is written: the CSV is written whole, or not at all).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

from dpnn.atomic import atomic_write
from dpnn.errors import DataError, OutputError, WeightsError
from dpnn.formats import csvrows, images, npz
from dpnn.formats.common import check_input, to_unit_float

from . import plugins, prog

PROG = prog("predict")


class UsageError(ValueError):
    """A bad command line or input; printed as one line, exit status 2."""


def class_probabilities(model, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """(N, K) float64 probabilities: the softmax of the model's outputs, unless it ends in a softmax."""
    out = model.predict(x) if batch_size is None else model.predict(x, batch_size=batch_size)
    out = np.asarray(out, dtype=np.float64)                                        # (N, K)
    last = model.layers[-1] if getattr(model, "layers", None) else None
    if "softmax" in (getattr(last, "func", None), getattr(last, "activation", None)):   # Activation, activation=
        return out
    out = np.exp(out - out.max(axis=1, keepdims=True))
    return out / out.sum(axis=1, keepdims=True)


def load_model(path: str):
    """The saved model, built for its recorded input shape; WeightsError when unusable."""
    from dpnn import Model
    if not os.path.lexists(path) and not os.path.lexists(path + ".npz"):
        raise WeightsError(f"weights file {path} not found; pass --weights PATH (dpnn train's --out)")
    model = Model.load(path)
    if not model.built:
        raise WeightsError(f"{path} does not record its input shape; save it again with dpnn to predict with it")
    if len(model.output_shape) != 2 or model.output_shape[1] < 2:
        raise WeightsError(f"{path}: its output has shape {tuple(model.output_shape[1:])}, not class scores")
    return model


def class_names(model) -> list[str]:
    k = model.output_shape[1]
    names = model.metadata.get("class_names") if isinstance(model.metadata, dict) else None
    return [str(n) for n in names] if isinstance(names, list) and len(names) == k else [str(i) for i in range(k)]


# -- inputs -------------------------------------------------------------------------------------
def image_files(folder: str) -> list[str]:
    """Every image under ``folder`` (recursively, sorted; hidden files and folders skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(images.EXTENSIONS)]
    return found


def label_names(labels, names: list[str]) -> list[str]:
    """Labels as class names: an integer is an index into ``names``; text is taken as it is."""
    out = []
    for v in np.asarray(labels).tolist():
        text = str(v).strip()
        number = float(text) if text.replace(".", "", 1).isdigit() else None
        out.append(names[int(number)] if number is not None and number == int(number) and int(number) < len(names)
                   else text)
    return out


def read_input(path: str, shape: tuple[int, int, int], names: list[str], label_column):
    """[(file, row or None)], x float32 (N, H, W, C), labels as class names or None."""
    h, w, c = shape
    lower = path.lower()
    if os.path.isdir(path):
        files = image_files(path)
        if not files:
            raise DataError(f"{path}: no images ({', '.join(images.EXTENSIONS)}) in it or its folders")
        x = np.stack([images.read_image(f, shape) for f in files])             # (N, H, W, C) uint8
        return [(f, None) for f in files], to_unit_float(x, path), None
    if lower.endswith(images.EXTENSIONS):
        return [(path, None)], to_unit_float(images.read_image(path, shape)[None], path), None
    if lower.endswith(".npz"):
        x, y, _ = npz.read_split(path, (h, w, c), labelled=False)
        if x.shape[1:] != shape:
            raise DataError(f"{path}: x holds images of {'x'.join(map(str, x.shape[1:]))}, but the model "
                            f"takes {h}x{w}x{c}")
        return [(path, i) for i in range(len(x))], to_unit_float(x, path), \
            None if y is None else label_names(y, names)
    if lower.endswith((".csv", ".csv.gz")):
        check_input(path, "pass a CSV file")
        x, labels, _ = csvrows.read_rows(path, h * w * c, label_column)
        return [(path, i) for i in range(len(x))], to_unit_float(x.reshape((-1,) + shape), path), \
            None if labels is None else label_names(labels, names)
    if not os.path.lexists(path):
        raise DataError(f"{path}: not found")
    raise DataError(f"{path}: not an image ({', '.join(images.EXTENSIONS)}), folder, .npz or .csv[.gz]")


# -- output -------------------------------------------------------------------------------------
def write_csv(path: str, rows: list[list]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    atomic_write(path, write)


def predict_rows(model, inputs: list[str], label_column, batch_size: int) -> tuple[list[list], list[float]]:
    """The CSV's rows (header first) and, per labelled input, whether each prediction was right."""
    names, shape = class_names(model), tuple(model.input_shape[1:])
    read = [read_input(p, shape, names, label_column) for p in inputs]       # every input before predicting
    labelled = any(labels is not None for _, _, labels in read)
    rows = [["file", "row", "class", "probability"] + (["label"] if labelled else [])]
    hits = []
    for where, x, labels in read:
        probs = class_probabilities(model, x, batch_size)                    # (N, K)
        best = probs.argmax(axis=1)
        for i, ((file, row), k) in enumerate(zip(where, best)):
            line = [file, "" if row is None else row, names[k], f"{probs[i, k]:.6f}"]
            if labelled:
                line.append("" if labels is None else labels[i])
            if labels is not None:
                hits.append(float(names[k] == labels[i]))
            rows.append(line)
    return rows, hits


def kaggle_rows(rows: list[list]) -> list[list]:
    """Kaggle's submission format: ``ImageId,Label``, the images numbered from 1 in input order."""
    return [["ImageId", "Label"]] + [[i, row[2]] for i, row in enumerate(rows[1:], start=1)]


def check_out(args) -> None:
    """--out is none of the files this command reads (the inputs, the weights, the architecture
    beside them, a plugin), nor an image inside an input folder: the CSV would replace it."""
    if args.out == "-":
        return
    from dpnn.io import architecture_path, weights_path
    weights = weights_path(args.weights)
    reads = [(f"--weights {args.weights}", weights),
             (f"the architecture file of --weights ({architecture_path(weights)})", architecture_path(weights))]
    reads += [(f"the input {p}", p) for p in args.inputs] + [(f"--plugin {p}", p) for p in args.plugin or []]
    out = os.path.realpath(args.out)
    for what, path in reads:
        read = os.path.realpath(path)
        image = out.lower().endswith(images.EXTENSIONS)
        if out == read or image and os.path.isdir(read) and out.startswith(read + os.sep):
            where = "" if out == read else "inside "
            raise UsageError(f"--out {args.out} is {where}{what}, which this command reads; "
                             "give the predictions their own file")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders of images, .npz files (x, optional y) or .csv[.gz] files")
    p.add_argument("--weights", required=True, metavar="PATH",
                   help="the model: weights written by Model.save or dpnn train --out (its JSON beside it)")
    p.add_argument("--out", default="predictions.csv", metavar="PATH",
                   help="the CSV to write (default: predictions.csv); '-' prints it to stdout")
    p.add_argument("--label-column", default=None, metavar="N|NAME",
                   help="CSV inputs: the label column when a row has one more column than the model's pixels "
                        "(default: named label/class/target/y, or detected)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per forward pass (default: 256)")
    p.add_argument("--format", choices=("detailed", "kaggle"), default="detailed",
                   help="detailed (default): file, row, class, probability[, label]; kaggle: ImageId,Label "
                        "(a competition's submission: images numbered from 1, the class name as the label)")
    plugins.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        check_out(args)
        plugins.load(args)
        model = load_model(args.weights)
        rows, hits = predict_rows(model, args.inputs, args.label_column, args.batch_size)
        rows = kaggle_rows(rows) if args.format == "kaggle" else rows
    except (UsageError, DataError, WeightsError, ValueError) as e:       # ValueError: plugins, a bad model
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.out == "-":
        csv.writer(sys.stdout).writerows(rows)
    else:
        try:
            write_csv(args.out, rows)
        except (OutputError, OSError) as e:
            print(f"{PROG}: error: cannot write --out {args.out}: {e}", file=sys.stderr)
            return 1
    accuracy = f"; accuracy {np.mean(hits):.4f} on {len(hits):,} labelled" if hits else ""
    where = "" if args.out == "-" else f" -> {args.out}"
    print(f"{len(rows) - 1:,} predictions{where}{accuracy}", file=sys.stderr if args.out == "-" else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
