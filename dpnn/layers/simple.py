"""Elementwise and shape layers: Activation, Flatten, Dropout."""
from __future__ import annotations

import numpy as np

from ..random import keyed_uniform
from .base import Layer, register_layer

ACTIVATIONS = ("relu", "sigmoid", "tanh", "softmax", "linear")


@register_layer
class Activation(Layer):
    """Elementwise activation: 'relu', 'sigmoid', 'tanh', 'softmax' (last axis) or 'linear'."""

    def __init__(self, func: str = "relu") -> None:
        super().__init__()
        if func not in ACTIVATIONS:
            raise ValueError(f"unknown activation {func!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.func = func

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        f = self.func
        if f == "relu":
            out = np.maximum(x, 0)
        elif f == "sigmoid":
            out = 1.0 / (1.0 + np.exp(-x))
        elif f == "tanh":
            out = np.tanh(x)
        elif f == "softmax":
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            out = e / e.sum(axis=-1, keepdims=True)
        else:
            out = x
        self._out = out
        return out

    def backward(self, grad: np.ndarray) -> np.ndarray:
        f, y = self.func, self._out
        if f == "relu":
            return np.multiply(grad, y > 0)       # bool mask: grad's dtype, no float64 upcast
        if f == "sigmoid":
            return grad * y * (1 - y)
        if f == "tanh":
            return grad * (1 - y * y)
        if f == "softmax":
            return y * (grad - (grad * y).sum(axis=-1, keepdims=True))
        return grad

    def get_config(self) -> dict:
        return {"func": self.func}


@register_layer
class Flatten(Layer):
    """(N, ...) -> (N, prod(...))."""

    def build(self, input_shape: tuple) -> None:
        self.input_shape = tuple(input_shape)
        self.output_shape = (input_shape[0], int(np.prod(input_shape[1:])))
        self.built = True

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad.reshape(self._shape)


@register_layer
class Dropout(Layer):
    """Inverted dropout: at training time zero each unit with probability ``rate``, scale the rest.

    The mask of sample n is a function of its key (seed, epoch, dataset index) and of the
    layer's position, so it is the same whichever worker computes it. ``sample_keys`` is
    set by the model before each training forward.
    """

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.salt = 0
        self.sample_keys: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not training or self.rate == 0.0:
            self._mask = None
            return x
        N = x.shape[0]
        keys = self.sample_keys
        if keys is None or len(keys) != N:
            keys = np.random.default_rng().integers(0, 2**63, N, dtype=np.uint64)
        keep = keyed_uniform(keys, self.salt, x.shape[1:]) >= self.rate     # (N, ...)
        self._mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.rate))
        return x * self._mask

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad if self._mask is None else grad * self._mask

    def get_config(self) -> dict:
        return {"rate": self.rate}
