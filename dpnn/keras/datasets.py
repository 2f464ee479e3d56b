"""``keras.datasets.mnist`` and ``keras.datasets.fashion_mnist``: ``load_data()`` as Keras returns it,
``((x_train, y_train), (x_test, y_test))`` of uint8 (N, 28, 28) images and uint8 labels, from the
data dpnn already prepares (:func:`dpnn.datasets.load_dataset`); nothing is downloaded."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def _keras_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    x = np.rint(dataset.X[..., 0] * np.float32(255)).astype(np.uint8)    # (N, 28, 28): k/255 -> k exactly
    return x, dataset.y.astype(np.uint8)


def load_data(name: str):
    """((x_train, y_train), (x_test, y_test)) of the named data set ('mnist', 'fashion-mnist');
    a :class:`dpnn.DataError` saying how to install or place the files when they are missing."""
    from ..datasets import load_dataset  # imported on use: ``import dpnn`` stays light
    train, test, _ = load_dataset(name)
    return _keras_arrays(train), _keras_arrays(test)


mnist = SimpleNamespace(load_data=lambda: load_data("mnist"))
fashion_mnist = SimpleNamespace(load_data=lambda: load_data("fashion-mnist"))
