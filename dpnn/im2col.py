"""im2col / col2im for NHWC tensors: convolution and pooling as matrix products.

A convolution over an (N, H, W, C) input with a (KH, KW) window becomes one GEMM once
every window is laid out as a row: ``cols`` has shape (N*OH*OW, KH*KW*C). ``im2col``
builds it from a strided *view* of the padded input and copies it exactly once;
``col2im`` is its adjoint (sums overlapping windows back), looping over the KH*KW
window offsets only, each iteration a vectorised slice-add over the whole batch.
"""
from __future__ import annotations

import numpy as np


def conv_output_size(size: int, k: int, stride: int, padding: str) -> tuple[int, int, int]:
    """Return (out, pad_before, pad_after) along one axis (TensorFlow's 'same'/'valid' rules)."""
    if padding == "same":
        out = -(-size // stride)                               # ceil(size / stride)
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2, total - total // 2
    if padding == "valid":
        if size < k:
            raise ValueError(f"window {k} is larger than the input ({size}) with padding='valid'; "
                             "use padding='same' or a smaller kernel")
        return (size - k) // stride + 1, 0, 0
    raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")


def pad_nhwc(x: np.ndarray, pads: tuple[int, int, int, int], value: float = 0.0) -> np.ndarray:
    """Pad H and W of an (N, H, W, C) array by (top, bottom, left, right)."""
    top, bottom, left, right = pads
    if not any(pads):
        return x
    N, H, W, C = x.shape
    out = np.full((N, H + top + bottom, W + left + right, C), value, dtype=x.dtype)
    out[:, top:top + H, left:left + W, :] = x
    return out


def windows(xp: np.ndarray, kh: int, kw: int, stride: int, oh: int, ow: int) -> np.ndarray:
    """Strided read-only view (N, OH, OW, KH, KW, C) of every window of a padded input."""
    N, H, W, C = xp.shape
    sN, sH, sW, sC = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(N, oh, ow, kh, kw, C),
        strides=(sN, sH * stride, sW * stride, sH, sW, sC), writeable=False)


def im2col(x: np.ndarray, kh: int, kw: int, stride: int, padding: str,
           out: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(N, H, W, C) -> cols (N*OH*OW, KH*KW*C) and the pads used.

    ``out`` may be a preallocated buffer of the right shape and dtype; it is reused.
    """
    N, H, W, C = x.shape
    oh, pt, pb = conv_output_size(H, kh, stride, padding)
    ow, pl, pr = conv_output_size(W, kw, stride, padding)
    pads = (pt, pb, pl, pr)
    view = windows(pad_nhwc(x, pads), kh, kw, stride, oh, ow)       # (N, OH, OW, KH, KW, C)
    shape = (N * oh * ow, kh * kw * C)
    if out is None or out.shape != shape or out.dtype != x.dtype:
        out = np.empty(shape, dtype=x.dtype)
    out.reshape(N, oh, ow, kh, kw, C)[...] = view                   # the one copy
    return out, pads


def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int,
           stride: int, pads: tuple[int, int, int, int]) -> np.ndarray:
    """Adjoint of im2col: cols (N*OH*OW, KH*KW*C) -> (N, H, W, C), overlaps summed."""
    N, H, W, C = x_shape
    pt, pb, pl, pr = pads
    Hp, Wp = H + pt + pb, W + pl + pr
    oh, ow = (Hp - kh) // stride + 1, (Wp - kw) // stride + 1
    c6 = cols.reshape(N, oh, ow, kh, kw, C)
    dxp = np.zeros((N, Hp, Wp, C), dtype=cols.dtype)                  # (N, Hp, Wp, C)
    for i in range(kh):
        hi = i + stride * oh
        for j in range(kw):
            dxp[:, i:hi:stride, j:j + stride * ow:stride, :] += c6[:, :, :, i, j, :]
    return dxp[:, pt:pt + H, pl:pl + W, :]
