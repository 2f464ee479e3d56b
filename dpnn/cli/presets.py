"""Model presets for ``dpnn train --model NAME`` (or an architecture JSON file).

Every preset takes NHWC images (N, H, W, C) of any size and channel count (the first layer
takes its input channels, and Flatten/Dense their sizes, from the data when the model is
built) and ends in a ``Dense(num_classes)`` of logits (softmax cross-entropy is part of the
loss, not the model). MFLOP per training sample are for 28x28x1 input.

- ``seed-cnn``:   the reference workload of DESIGN.md, ~25 MFLOP per training sample.
- ``lenet5``:     LeCun's LeNet-5 with ReLU and max pooling (~0.4 MFLOP per training sample).
- ``mlp``:        Flatten -> Dense(256) -> ReLU -> Dense(128) -> ReLU -> Dense(K); fast on any data.
- ``fashion-bn``: Conv-BatchNorm-ReLU blocks 32-32-pool-64-64-pool, Dense(128) head with Dropout;
  meant for >= 93 % on Fashion-MNIST in 20 epochs with shift and flip augmentation
  (~111 MFLOP per training sample, 0.47 M parameters).
- ``resnet``:     a wide ResNet-8: a Conv-BN-ReLU stem, three stages of one basic residual block
  (32, 64, 128 channels; the second and third halve the image through a stride-2 projection
  shortcut), global average pooling, Dense(K); ~223 MFLOP per training sample, 0.31 M
  parameters; 93.31 % on Fashion-MNIST in 15 epochs with shift and flip augmentation.
  ``resnet(blocks=(3, 3, 3), widths=(16, 32, 64))`` is the classic ResNet-20.
"""
from __future__ import annotations

import os
from typing import Callable

from dpnn import (
    Activation,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    Model,
    Residual,
)
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


def conv_bn_relu(filters: int) -> list[Layer]:
    """Conv2D(filters, 3x3, same, no bias: BatchNorm's beta is the bias) -> BatchNorm2D -> ReLU."""
    return [Conv2D(filters, (3, 3), padding="same", use_bias=False), BatchNorm2D(), Activation("relu")]


def fashion_bn(num_classes: int = 10) -> list[Layer]:
    """``CBR(32)-CBR(32)-Pool, CBR(64)-CBR(64)-Pool,`` Flatten-Dense(128)-ReLU-Dropout(0.3)-Dense(K):
    VGG-style Conv-BatchNorm-ReLU blocks, ~112 MFLOP per training sample at 28x28x1.

    CBR = Conv2D 3x3 -> BatchNorm2D -> ReLU. For 28x28 input the head sees 7x7x64 features.
    Trained with --augment shift=2,flip and a cosine schedule it is the 93% Fashion-MNIST model.
    """
    return [*conv_bn_relu(32), *conv_bn_relu(32), MaxPool2D((2, 2)),
            *conv_bn_relu(64), *conv_bn_relu(64), MaxPool2D((2, 2)),
            Flatten(), Dense(128), Activation("relu"), Dropout(0.3), Dense(num_classes)]


def basic_block(filters: int, stride: int = 1, project: bool = False) -> Residual:
    """ResNet's basic block: relu(CB(CBR(x)) + x), CB = Conv2D 3x3 (no bias) -> BatchNorm2D.

    ``project``: the shortcut is Conv2D 1x1 (``stride``) -> BatchNorm2D, for a change of stride
    or channels; otherwise the identity.
    """
    main = [Conv2D(filters, 3, stride=stride, use_bias=False), BatchNorm2D(), Activation("relu"),
            Conv2D(filters, 3, use_bias=False), BatchNorm2D()]
    shortcut = [Conv2D(filters, 1, stride=stride, use_bias=False), BatchNorm2D()] if project else None
    return Residual(main, shortcut=shortcut, activation="relu")


def resnet(num_classes: int = 10, blocks: tuple[int, ...] = (1, 1, 1),
           widths: tuple[int, ...] = (32, 64, 128)) -> list[Layer]:
    """CBR(widths[0]) stem, then per stage ``blocks[s]`` basic blocks of ``widths[s]`` channels (every
    stage after the first starts with a stride-2 block and a projection shortcut), global
    average pooling, Dense(K). Defaults: a wide ResNet-8 (~223 MFLOP per training sample at
    28x28x1, twice fashion-bn's); ``blocks=(3, 3, 3), widths=(16, 32, 64)`` is He et al.'s CIFAR ResNet-20.
    """
    layers, channels = [*conv_bn_relu(widths[0])], widths[0]
    for stage, (n, width) in enumerate(zip(blocks, widths)):
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            layers.append(basic_block(width, stride, project=stride != 1 or width != channels))
            channels = width
    return layers + [GlobalAvgPool2D(), Dense(num_classes)]


PRESETS: dict[str, Callable[[int], list[Layer]]] = {"seed-cnn": seed_cnn, "lenet5": lenet5, "mlp": mlp,
                                                    "fashion-bn": fashion_bn, "resnet": resnet}


def _layers_from_json(path: str) -> list[Layer]:
    """Layers from an architecture JSON (a list of {"class", "config"}, as model.save writes)."""
    if not os.path.lexists(path):        # a FIFO too: read_architecture_file says what it is
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


__all__ = ["PRESETS", "build_model", "seed_cnn", "lenet5", "mlp", "fashion_bn", "basic_block", "resnet"]
