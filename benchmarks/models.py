"""Reference models for the benchmarks and their FLOP counts from layer shapes.

The layer lists come from :mod:`launch.presets` (the same models ``launch.train`` runs);
``seed-cnn-fused`` is seed-cnn rewritten to compute the same function with less memory
traffic (see :func:`fuse_relu`).
"""
from __future__ import annotations

from typing import Callable

from dpnn import Activation, Conv2D, Dense, Layer, MaxPool2D, Model
from launch.presets import PRESETS


def fuse_relu(layers: list[Layer]) -> list[Layer]:
    """The same network with cheaper ReLUs.

    ``Conv2D -> ReLU -> MaxPool2D`` becomes ``Conv2D -> MaxPool2D -> ReLU``: ReLU is monotone,
    so max(relu(z)) = relu(max(z)) and the gradients agree too; the ReLU then runs on 4x
    fewer elements. Any other ReLU after a Conv2D/Dense is folded into it (``activation='relu'``).
    """
    out: list[Layer] = []
    i = 0
    while i < len(layers):
        layer, nxt = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        after = layers[i + 2] if i + 2 < len(layers) else None
        relu = isinstance(nxt, Activation) and nxt.func == "relu"
        if relu and isinstance(layer, Conv2D) and isinstance(after, MaxPool2D):
            out += [layer, after, nxt]
            i += 3
        elif relu and isinstance(layer, (Conv2D, Dense)) and layer.activation is None:
            out.append(type(layer)(**layer.get_config(), activation="relu"))
            i += 2
        else:
            out.append(layer)
            i += 1
    return out


def seed_cnn_fused(num_classes: int = 10) -> list[Layer]:
    """seed-cnn with pool-then-ReLU order and a fused Dense ReLU (same function, same gradients)."""
    return fuse_relu(PRESETS["seed-cnn"](num_classes))


MODELS: dict[str, Callable[[int], list[Layer]]] = {**PRESETS, "seed-cnn-fused": seed_cnn_fused}


def build(name: str, input_shape=(1, 28, 28, 1), num_classes: int = 10, seed: int = 0) -> Model:
    """A built, compiled (softmax cross-entropy, Adam 1e-3) model by name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    model = Model(MODELS[name](num_classes), seed=seed)
    model.compile("categorical_crossentropy", "adam", lr=1e-3)
    return model.build(input_shape)


def layer_flops(layer: Layer, first: bool) -> tuple[int, int]:
    """(forward, backward) multiply-add FLOPs (x2) per sample of one GEMM layer; 0 for others.

    Backward is the weight gradient plus, except for the first layer, the input gradient.
    Elementwise work (bias, activations, pooling) is not counted: it is not GEMM work.
    """
    if isinstance(layer, Conv2D):
        _, oh, ow, f = layer.output_shape
        kh, kw, c, _ = layer.params["W"].shape
        fwd = 2 * oh * ow * kh * kw * c * f
    elif isinstance(layer, Dense):
        d, u = layer.params["W"].shape
        fwd = 2 * d * u
    else:
        return 0, 0
    return fwd, fwd if first else 2 * fwd


def flops_per_sample(model: Model) -> dict[str, int]:
    """Training FLOPs per sample of a built model: {'forward', 'backward', 'total'}."""
    fwd = bwd = 0
    first = next((i for i, layer in enumerate(model.layers) if layer.params), 0)
    for i, layer in enumerate(model.layers):
        f, b = layer_flops(layer, i == first)
        fwd, bwd = fwd + f, bwd + b
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}
