"""Pooling layers: MaxPool2D, AvgPool2D, GlobalAvgPool2D (NHWC).

Max and average pooling loop over the KH*KW window offsets; each iteration is one
vectorised operation over a strided slice of the whole batch. Max pooling remembers
the *index* of the winning offset (first maximum, like argmax), not an equality mask,
so ties route the gradient to exactly one input; for non-overlapping windows its
backward writes every input cell exactly once (no scatter-add, no zero fill when the
windows tile the input).
"""
from __future__ import annotations

import numpy as np

from ..im2col import conv_output_size, pad_nhwc
from .base import Layer, check_rank, register_layer, runs_own_forward
from .conv import _pair

# A window larger than the input covers the whole input and padding (Keras allows it with
# 'same'); past this many cells the padding is only work: one pass per window offset over an
# input padded to the window's size (pool_size 5000 on 28x28: 25 million passes).
MAX_WINDOW_PAST_INPUT = 64


class _Pool2D(Layer):
    def __init__(self, pool_size=(2, 2), stride=None, padding: str = "valid", *, strides=None) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.pool_size = _pair(pool_size, "pool_size")
        if stride is not None and strides is not None and _pair(stride, "stride") != _pair(strides, "strides"):
            raise TypeError("give stride= or strides= (Keras's name), not both")
        stride = strides if strides is not None else stride
        self.stride = _pair(stride if stride is not None else self.pool_size, "stride")
        self.padding = padding

    def build(self, input_shape: tuple) -> None:
        check_rank(self, input_shape, (4,), "pooling takes NHWC images (N, H, W, C)")
        N, H, W, C = input_shape
        for size, side, name in zip(self.pool_size, (H, W), ("height", "width")):
            if size > max(side, MAX_WINDOW_PAST_INPUT):   # before the work: an offset per window cell
                raise ValueError(f"{type(self).__name__}: pool_size {size} is larger than the input's "
                                 f"{name} {side}; a window covers at most the whole input (use "
                                 f"pool_size <= {side}, or GlobalAvgPool2D)")
        oh = conv_output_size(H, self.pool_size[0], self.stride[0], self.padding)[0]
        ow = conv_output_size(W, self.pool_size[1], self.stride[1], self.padding)[0]
        self.input_shape, self.output_shape = tuple(input_shape), (N, oh, ow, C)
        self.built = True

    def _geometry(self, x_shape):
        N, H, W, C = x_shape
        (kh, kw), (sh, sw) = self.pool_size, self.stride
        oh, pt, pb = conv_output_size(H, kh, sh, self.padding)
        ow, pl, pr = conv_output_size(W, kw, sw, self.padding)
        return oh, ow, (pt, pb, pl, pr)

    def _offsets(self, oh: int, ow: int):
        """Yield (k, slice_h, slice_w) for every window offset."""
        (kh, kw), (sh, sw) = self.pool_size, self.stride
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, slice(i, i + sh * oh, sh), slice(j, j + sw * ow, sw)

    def get_config(self) -> dict:
        return {"pool_size": list(self.pool_size), "stride": list(self.stride), "padding": self.padding}


@register_layer
class MaxPool2D(_Pool2D):
    """Max over each window; stride defaults to the pool size."""

    @property
    def owns_output(self) -> bool:
        return runs_own_forward(self, MaxPool2D)            # keeps the argmax, not its output

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        N, H, W, C = x.shape
        oh, ow, pads = self._geometry(x.shape)
        xp = pad_nhwc(x, pads, value=-np.inf)                          # (N, Hp, Wp, C)
        offsets = self._offsets(oh, ow)
        _, sh0, sw0 = next(offsets)
        out = xp[:, sh0, sw0, :].copy()                                # (N, OH, OW, C)
        idx = np.zeros(out.shape, np.min_scalar_type(self.pool_size[0] * self.pool_size[1] - 1))
        better = np.empty(out.shape, bool)
        winner = np.empty(out.shape, idx.dtype)
        for k, sh, sw in offsets:       # k increases, so "idx = k where better" is a maximum
            v = xp[:, sh, sw, :]                                       # (N, OH, OW, C)
            np.greater(v, out, out=better)                             # strictly: first max wins
            np.maximum(out, v, out=out)                                # one pass, no masked copy
            np.multiply(better, idx.dtype.type(k), out=winner)
            np.maximum(idx, winner, out=idx)
        self._idx, self._x_shape, self._pads = idx, x.shape, pads
        return out

    def backward(self, grad: np.ndarray) -> np.ndarray:
        N, H, W, C = self._x_shape
        pt, pb, pl, pr = self._pads
        oh, ow = grad.shape[1:3]
        (kh, kw), (sh, sw) = self.pool_size, self.stride
        Hp, Wp = H + pt + pb, W + pl + pr
        overlap = sh < kh or sw < kw                                   # else each input cell is written once
        tiled = (sh, sw) == (kh, kw) and (Hp, Wp) == (kh * oh, kw * ow)
        dxp = (np.empty if tiled else np.zeros)((N, Hp, Wp, C), grad.dtype)   # (N, Hp, Wp, C)
        for k, s_h, s_w in self._offsets(oh, ow):
            if overlap:
                dxp[:, s_h, s_w, :] += np.multiply(grad, self._idx == k)
            else:
                np.multiply(grad, self._idx == k, out=dxp[:, s_h, s_w, :])
        return dxp[:, pt:pt + H, pl:pl + W, :]


@register_layer
class AvgPool2D(_Pool2D):
    """Mean over each window (padding, if any, counts as zeros)."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        oh, ow, pads = self._geometry(x.shape)
        xp = pad_nhwc(x, pads)
        out = None
        for _, sh, sw in self._offsets(oh, ow):
            out = xp[:, sh, sw, :].copy() if out is None else out + xp[:, sh, sw, :]
        self._x_shape, self._pads = x.shape, pads
        return out * x.dtype.type(1.0 / (self.pool_size[0] * self.pool_size[1]))

    def backward(self, grad: np.ndarray) -> np.ndarray:
        N, H, W, C = self._x_shape
        pt, pb, pl, pr = self._pads
        oh, ow = grad.shape[1:3]
        g = grad * grad.dtype.type(1.0 / (self.pool_size[0] * self.pool_size[1]))
        dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), grad.dtype)
        for _, sh, sw in self._offsets(oh, ow):
            dxp[:, sh, sw, :] += g
        return dxp[:, pt:pt + H, pl:pl + W, :]


@register_layer
class GlobalAvgPool2D(Layer):
    """(N, H, W, C) -> (N, C), the mean over H and W."""

    def build(self, input_shape: tuple) -> None:
        check_rank(self, input_shape, (4,), "GlobalAvgPool2D takes NHWC images (N, H, W, C)")
        self.input_shape, self.output_shape = tuple(input_shape), (input_shape[0], input_shape[3])
        self.built = True

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        N, H, W, C = x.shape
        self._x_shape = x.shape
        return x.mean(axis=(1, 2))                                    # (N, C)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        N, H, W, C = self._x_shape
        g = grad * grad.dtype.type(1.0 / (H * W))                     # (N, C)
        return np.broadcast_to(g[:, None, None, :], (N, H, W, C)).copy()
