"""Keyed image augmentations: ``op(x, keys) -> new array``, a pure function of each image and its key.

``x`` is (N, H, W, C) images (C = 1 or 3 or any), ``keys`` is (N,) uint64 from
``dpnn.random.sample_keys(seed, epoch, indices)``. Row n of the output depends only on
``x[n]`` and ``keys[n]``: augmenting rows [0:7] and [7:20] separately equals augmenting
[0:20] at once, bitwise, so a batch cut into shards on 1, 2 or 3 workers is augmented the
same way (the worker-count invariance of DESIGN.md). ``x`` is never modified; the output
is a new float32 array.

Every op is a module-level class (picklable, so it travels to the workers) drawing its
random numbers with ``keyed_uniform(keys, salt)``, one salt per class. ``Compose`` gives
the op at each position keys of its own, so its ops' draws are independent.

``parse_spec`` builds a ``Compose`` from the command-line grammar below and
``describe()`` writes it back (``parse_spec(c.describe()) == c``).

Modules: ``base`` (the op contract, ``Compose``, keys), ``ops`` (the ops), ``spec`` (the grammar).
"""
from .base import Augment, Augmentation, Compose, augment_batch, op_keys  # noqa: F401 (re-exported)
from .ops import (  # noqa: F401
    BrightnessContrast,
    Clip,
    Cutout,
    RandomAffine,
    RandomCrop,
    RandomFlip,
    RandomShift,
    StrokeWidth,
    shift_images,
)
from .spec import SPEC_HELP, TOKENS, parse_spec  # noqa: F401

__doc__ += "\n" + SPEC_HELP + "\n"
