"""Conv2D via im2col -> GEMM, and Dense."""
from __future__ import annotations

import numpy as np

from ..im2col import col2im, conv_output_size, im2col
from .base import Layer, check_rank, register_layer


def _pair(v, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, (int, np.integer)) and i > 0 for i in t):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])


@register_layer
class Conv2D(Layer):
    """2-D convolution on NHWC input; weights W (KH, KW, C, F), bias b (F,)."""

    def __init__(self, filters: int, kernel_size=(3, 3), stride: int = 1,
                 padding: str = "same", use_bias: bool = True) -> None:
        super().__init__()
        if not isinstance(filters, (int, np.integer)) or filters <= 0:
            raise ValueError(f"filters must be a positive int, got {filters!r}")
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if not isinstance(stride, (int, np.integer)) or stride <= 0:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.filters, self.kernel_size = int(filters), _pair(kernel_size, "kernel_size")
        self.stride, self.padding, self.use_bias = int(stride), padding, bool(use_bias)
        self._cols: np.ndarray | None = None

    def build(self, input_shape: tuple) -> None:
        check_rank(self, input_shape, (4,), "Conv2D takes NHWC images (N, H, W, C)")
        N, H, W, C = input_shape
        kh, kw = self.kernel_size
        oh = conv_output_size(H, kh, self.stride, self.padding)[0]
        ow = conv_output_size(W, kw, self.stride, self.padding)[0]
        self.add_param("W", (kh, kw, C, self.filters), "he", fan_in=kh * kw * C)
        if self.use_bias:
            self.add_param("b", (self.filters,), "zeros")
        self.input_shape, self.output_shape = tuple(input_shape), (N, oh, ow, self.filters)
        self.built = True

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        N, H, W, C = x.shape
        kh, kw = self.kernel_size
        W_ = self.params["W"]
        cols, self._pads = im2col(x, kh, kw, self.stride, self.padding, out=self._cols)  # (N*OH*OW, KH*KW*C)
        self._cols, self._x_shape = cols, x.shape
        oh = conv_output_size(H, kh, self.stride, self.padding)[0]
        ow = conv_output_size(W, kw, self.stride, self.padding)[0]
        out = cols @ W_.reshape(-1, self.filters)                    # (N*OH*OW, F)
        if self.use_bias:
            out += self.params["b"]
        return out.reshape(N, oh, ow, self.filters)                   # (N, OH, OW, F)

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        F = self.filters
        g2 = grad.reshape(-1, F)                                      # (N*OH*OW, F)
        dW = self.grads["W"].reshape(-1, F)                           # (KH*KW*C, F), a view
        np.matmul(self._cols.T, g2, out=dW)
        if self.use_bias:
            g2.sum(axis=0, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        dcols = g2 @ self.params["W"].reshape(-1, F).T                # (N*OH*OW, KH*KW*C)
        kh, kw = self.kernel_size
        return col2im(dcols, self._x_shape, kh, kw, self.stride, self._pads)

    def get_config(self) -> dict:
        return {"filters": self.filters, "kernel_size": list(self.kernel_size), "stride": self.stride,
                "padding": self.padding, "use_bias": self.use_bias}


@register_layer
class Dense(Layer):
    """Fully connected layer on (N, D) input; W (D, units), b (units,)."""

    def __init__(self, units: int, use_bias: bool = True) -> None:
        super().__init__()
        if not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"units must be a positive int, got {units!r}")
        self.units, self.use_bias = int(units), bool(use_bias)

    def build(self, input_shape: tuple) -> None:
        check_rank(self, input_shape, (2,), "insert Flatten() before Dense")
        N, D = input_shape
        self.add_param("W", (D, self.units), "he", fan_in=D)
        if self.use_bias:
            self.add_param("b", (self.units,), "zeros")
        self.input_shape, self.output_shape = tuple(input_shape), (N, self.units)
        self.built = True

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        N, D = x.shape
        self._x = x
        out = x @ self.params["W"]                                    # (N, units)
        if self.use_bias:
            out += self.params["b"]
        return out

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        np.matmul(self._x.T, grad, out=self.grads["W"])               # (D, units)
        if self.use_bias:
            grad.sum(axis=0, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        return grad @ self.params["W"].T                              # (N, D)

    def get_config(self) -> dict:
        return {"units": self.units, "use_bias": self.use_bias}
