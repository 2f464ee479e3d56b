"""Model presets for ``python -m launch.train --model NAME`` (or an architecture JSON file).

Every preset takes NHWC images (N, H, W, 1) and ends in a ``Dense(num_classes)`` of logits
(softmax cross-entropy is part of the loss, not the model).

- ``seed-cnn``: the reference workload of DESIGN.md, ~25 MFLOP per training sample.
- ``lenet5``:   LeCun's LeNet-5 with ReLU and max pooling (~0.4 MFLOP per training sample).
- ``mlp``:      Flatten -> Dense(256) -> ReLU -> Dense(128) -> ReLU -> Dense(K); fast on any data.
"""
from __future__ import annotations

import os
from typing import Callable

from dpnn import Activation, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Model
from dpnn.errors import WeightsError
from dpnn.io import read_architecture_file
from dpnn.layers import Layer, layer_from_config


def seed_cnn(num_classes: int = 10) -> list[Layer]:
    """Conv(32)-ReLU-Pool-Conv(64)-ReLU-Pool-Flatten-Dense(128)-ReLU-Dropout(0.25)-Dense(K)."""
    return [Conv2D(32, (3, 3), padding="same"), Activation("relu"), MaxPool2D((2, 2)),
            Conv2D(64, (3, 3), padding="same"), Activation("relu"), MaxPool2D((2, 2)),
            Flatten(), Dense(128), Activation("relu"), Dropout(0.25), Dense(num_classes)]


def lenet5(num_classes: int = 10) -> list[Layer]:
    """Conv(6, 5x5, same)-Pool-Conv(16, 5x5, valid)-Pool-Dense(120)-Dense(84)-Dense(K), ReLU."""
    return [Conv2D(6, (5, 5), padding="same"), Activation("relu"), MaxPool2D((2, 2)),
            Conv2D(16, (5, 5), padding="valid"), Activation("relu"), MaxPool2D((2, 2)),
            Flatten(), Dense(120), Activation("relu"), Dense(84), Activation("relu"),
            Dense(num_classes)]


def mlp(num_classes: int = 10) -> list[Layer]:
    """Flatten-Dense(256)-ReLU-Dense(128)-ReLU-Dense(K)."""
    return [Flatten(), Dense(256), Activation("relu"), Dense(128), Activation("relu"),
            Dense(num_classes)]


PRESETS: dict[str, Callable[[int], list[Layer]]] = {"seed-cnn": seed_cnn, "lenet5": lenet5, "mlp": mlp}


def _layers_from_json(path: str) -> list[Layer]:
    """Layers from an architecture JSON (a list of {"class", "config"}, as model.save writes)."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: architecture file not found; pass a preset "
                           f"({', '.join(PRESETS)}) or a JSON file written by model.save()")
    arch = read_architecture_file(path)
    try:
        return [layer_from_config(entry) for entry in arch]
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None


def build_model(spec: str, num_classes: int, seed: int | None = None) -> Model:
    """A fresh (unbuilt) Model from a preset name or an architecture JSON path."""
    if spec in PRESETS:
        return Model(PRESETS[spec](num_classes), seed=seed)
    if spec.endswith(".json") or os.sep in spec:
        return Model(_layers_from_json(spec), seed=seed)
    raise ValueError(f"unknown model {spec!r}; use a preset ({', '.join(PRESETS)}) "
                     "or an architecture JSON file (FILE.json)")


__all__ = ["PRESETS", "build_model", "seed_cnn", "lenet5", "mlp"]
