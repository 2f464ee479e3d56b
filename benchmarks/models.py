"""Reference models for the benchmarks and their FLOP counts from layer shapes.

The layer lists come from :mod:`launch.presets` (the same models ``launch.train`` runs). The
order in which a model executes its layers (ReLU after a max pool) is ``Model``'s own
business (``dpnn.model.execution_order``), so no rewritten variant is needed here.
"""
from __future__ import annotations

from typing import Callable

from dpnn import Conv2D, Dense, Layer, Model
from dpnn.cli.presets import PRESETS
from dpnn.layers import walk_layers

MODELS: dict[str, Callable[[int], list[Layer]]] = dict(PRESETS)


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
    layers = list(walk_layers(model.layers))            # a residual block's layers too
    first = next((i for i, layer in enumerate(layers) if layer.params and not layer.sublayers()), 0)
    for i, layer in enumerate(layers):
        f, b = layer_flops(layer, i == first)
        fwd, bwd = fwd + f, bwd + b
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}
