"""Elementwise and shape layers: Activation, Flatten, Dropout."""
from __future__ import annotations

import numpy as np

from ..losses import softmax
from ..random import keyed_uniform
from .base import Layer, register_layer

ACTIVATIONS = ("relu", "sigmoid", "tanh", "softmax", "linear")


def check_activation(func, none_ok: bool = False) -> str | None:
    if func not in ACTIVATIONS and not (none_ok and func is None):
        raise ValueError(f"unknown activation {func!r}; choose one of {', '.join(ACTIVATIONS)}"
                         + (" or None" if none_ok else ""))
    return func


def activate(func: str, x: np.ndarray) -> np.ndarray:
    """The activation ``func`` of ``x`` (softmax over the last axis)."""
    if func == "relu":
        return np.maximum(x, 0)
    if func == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if func == "tanh":
        return np.tanh(x)
    if func == "softmax":
        return softmax(x)
    return x


def activate_in_place(func: str, out: np.ndarray) -> np.ndarray:
    """:func:`activate`, a ReLU written into ``out`` itself (one pass, no new array)."""
    return np.maximum(out, 0, out=out) if func == "relu" else activate(func, out)


def activation_grad(func: str, grad: np.ndarray, y: np.ndarray, fused_with_loss: bool = False) -> np.ndarray:
    """d(loss)/d(input) of activation ``func`` from its output ``y``; a softmax fused with the
    cross-entropy (a sigmoid with the binary one) already got the gradient w.r.t. its input (see
    :mod:`dpnn.losses`)."""
    if func == "relu":
        return np.multiply(grad, y > 0)       # bool mask: grad's dtype, no float64 upcast
    if func == "sigmoid" and not fused_with_loss:
        return grad * y * (1 - y)
    if func == "tanh":
        return grad * (1 - y * y)
    if func == "softmax" and not fused_with_loss:
        return y * (grad - (grad * y).sum(axis=-1, keepdims=True))
    return grad


@register_layer
class Activation(Layer):
    """Elementwise activation: 'relu', 'sigmoid', 'tanh', 'softmax' (last axis) or 'linear'."""

    def __init__(self, func: str = "relu") -> None:
        super().__init__()
        self.func = check_activation(func)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        in_place = self.overwrite_input and self.func == "relu"      # no second (N, ...) array
        self._out = activate_in_place(self.func, x) if in_place else activate(self.func, x)
        return self._out

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return activation_grad(self.func, grad, self._out, self.fused_with_loss)

    @property
    def output_activation(self) -> str:
        return self.func

    def get_config(self) -> dict:
        return {"func": self.func}


@register_layer
class Flatten(Layer):
    """(N, ...) -> (N, prod(...))."""

    def build(self, input_shape: tuple) -> None:
        super().build(input_shape)
        self.output_shape = (input_shape[0], int(np.prod(input_shape[1:])))

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
