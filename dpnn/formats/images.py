"""Image folders: ``DIR/train/<class>/*.png|jpg`` and ``DIR/test/<class>/*`` (Pillow).

Class names are the folder names (sorted; numerically when all are numbers). Images are
grayscale or RGB, taken from the first image unless the size says (``HxWx1`` / ``HxWx3``);
every image must share the first one's size unless a size is given, then all are resized.
The file count and the first image's size are checked against free memory before the one
uint8 array is allocated.
"""
from __future__ import annotations

import os

import numpy as np

from dpnn.errors import DataError
from dpnn.files import open_regular

from .common import FLOAT_BYTES, ImageSize, Splits, check_input, check_memory

NAME = "images"
LAYOUT = "DIR/train/<class>/*.png|jpg [DIR/test/<class>/*], grayscale or RGB"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
INSTALL_HINT = "pip install pillow (in a dpnn checkout: pip install -e '.[images]')"


def _visible(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def _class_dirs(split_dir: str) -> list[str]:
    return [n for n in _visible(split_dir) if os.path.isdir(os.path.join(split_dir, n))]


def detect(directory: str) -> bool:
    train = os.path.join(directory, "train")
    return os.path.isdir(train) and bool(_class_dirs(train))


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"image folders need Pillow, which is not installed: {INSTALL_HINT}") from None
    return Image


def sort_classes(names: list[str]) -> list[str]:
    """Folder names in label order: numerically when every name is a number, else by name."""
    return sorted(names, key=int) if all(n.isdigit() for n in names) else sorted(names)


def list_images(split_dir: str, class_names: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(image paths, labels (N,) int64, class names) of one split folder.

    ``class_names``: train's classes (for the test split); a folder not among them is an error.
    """
    found = _class_dirs(split_dir)
    names = class_names if class_names is not None else sort_classes(found)
    unknown = [n for n in found if n not in names]
    if unknown:
        raise DataError(f"{os.path.join(split_dir, unknown[0])}: class {unknown[0]!r} is not among "
                        f"the training classes ({', '.join(names[:10])}); use the same folder names")
    paths, labels = [], []
    for label, name in enumerate(names):
        folder = os.path.join(split_dir, name)
        if not os.path.isdir(folder):
            continue
        files = [os.path.join(folder, f) for f in _visible(folder) if f.lower().endswith(EXTENSIONS)]
        for path in files:                   # before any is opened: a FIFO would block in open()
            check_input(path, "remove it or put an image there")
        if not files and class_names is None:
            raise DataError(f"{folder}: no images ({', '.join(EXTENSIONS)}); put the class's "
                            "images in it or remove the folder")
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"{split_dir}: no images in its class folders")
    return paths, np.array(labels, dtype=np.int64), names


def _probe(path: str) -> tuple[int, int, str]:
    """(height, width, Pillow mode) from the image's header; nothing is decoded."""
    Image = _pil()
    try:
        with open_regular(path) as f, Image.open(f) as im:
            return im.size[1], im.size[0], im.mode
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e}); remove or re-save it") from None


def image_shape(first: str, size: ImageSize | None) -> tuple[int, int, int]:
    """(H, W, C) every image is read as: the size given, else the first image's."""
    h, w, mode = _probe(first)
    c = 1 if mode in GRAY_MODES else 3
    if size is None:
        return h, w, c
    return size[0], size[1], size[2] or c


def _read_one(path: str, shape: tuple[int, int, int], resize: bool, first: str) -> np.ndarray:
    Image = _pil()
    h, w, c = shape
    try:
        with open_regular(path) as f, Image.open(f) as im:
            if im.size != (w, h) and not resize:
                raise DataError(f"{path} is {im.size[1]}x{im.size[0]} but {first} is {h}x{w}; "
                                f"pass --image-size {h}x{w} to resize every image")
            im = to_bytes(im, path)
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            pixels = np.asarray(im.convert("L" if c == 1 else "RGB"))    # (H, W) or (H, W, 3) uint8
    except DataError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e}); remove or re-save it") from None
    return pixels.reshape(h, w, c)


DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")     # 16/32-bit integers, 32-bit floats


def to_bytes(im, path: str):
    """A 16-bit, 32-bit or float grayscale image as 8-bit ``L``, scaled by its depth: Pillow's
    ``convert('L')`` clips, so a 16-bit image saturated to white and a [0, 1] float one turned
    black. Integers are taken as 16-bit (0..65535); floats in [0, 1] as fractions, else 0..255."""
    if im.mode not in DEEP_MODES:
        return im
    a = np.asarray(im, dtype=np.float64)                                  # (H, W)
    if im.mode == "F":
        top = 1.0 if a.size and np.isfinite(a).all() and 0 <= a.min() and a.max() <= 1 else 255.0
    else:
        top = 65535.0
    if not np.isfinite(a).all() or (a.size and (a.min() < 0 or a.max() > top)):
        raise DataError(f"{path}: {im.mode} pixels outside 0..{top:g} (or NaN); save it as 8- or "
                        "16-bit, or as floats in [0, 1]")
    return _pil().fromarray(np.round(a * (255.0 / top)).astype(np.uint8), "L")


def read_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file as uint8 (H, W, C) of ``shape``: resized, converted to grayscale or RGB."""
    check_input(path, "pass an image file")
    return _read_one(path, shape, True, path)


def read_images(paths: list[str], shape: tuple[int, int, int], resize: bool, first: str) -> np.ndarray:
    """uint8 (N, H, W, C) of ``paths``; memory checked before the array is allocated."""
    n = len(paths)
    check_memory(os.path.dirname(os.path.dirname(paths[0])),
                 n * int(np.prod(shape)) * (1 + FLOAT_BYTES), f"its {n:,} images of {shape}")
    out = np.empty((n,) + shape, dtype=np.uint8)        # (N, H, W, C)
    for i, path in enumerate(paths):
        out[i] = _read_one(path, shape, resize, first)
    return out


def load(directory: str, size: ImageSize | None, label_column=None) -> Splits:
    """Read ``DIR/train/<class>/*`` and, if present, ``DIR/test/<class>/*``."""
    train_dir, test_dir = os.path.join(directory, "train"), os.path.join(directory, "test")
    paths, y, names = list_images(train_dir)
    shape = image_shape(paths[0], size)
    x = read_images(paths, shape, size is not None, paths[0])
    test, files = None, {"train": train_dir}
    if os.path.isdir(test_dir):
        test_paths, test_y, _ = list_images(test_dir, names)
        test = (read_images(test_paths, shape, size is not None, paths[0]), test_y)
        files["test"] = test_dir
    detail = f"{'resized to' if size else 'all'} {shape[0]}x{shape[1]}, {'RGB' if shape[2] == 3 else 'grayscale'}"
    return Splits(NAME, (x, y), test, names, files, [detail])
