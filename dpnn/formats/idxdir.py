"""The nn framework's format: four MNIST-style IDX files (gzip or raw) in one directory."""
from __future__ import annotations

from dpnn.data import MNIST_FILES, find_mnist_file, load_mnist_gz

from .common import ImageSize, Splits

NAME = "idx"
LAYOUT = ("DIR/train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
          "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")


def detect(directory: str) -> bool:
    """Any of the four files marks the format (load then names the missing ones)."""
    return any(find_mnist_file(directory, stem) for stem in MNIST_FILES.values())


def load(directory: str, size: ImageSize | None, label_column=None) -> Splits:
    """Both splits, already scaled to float32 [0, 1] by :func:`dpnn.data.load_mnist_gz`."""
    train, test = load_mnist_gz(directory)
    files = {s: find_mnist_file(directory, MNIST_FILES[f"{s}_images"]) for s in ("train", "test")}
    return Splits(NAME, (train.X, train.y), (test.X, test.y), None, files,
                  ["uint8 IDX pixels scaled to [0, 1]"], source_dtype="uint8")
