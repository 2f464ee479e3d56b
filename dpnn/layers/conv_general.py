"""Convolution with any stride pair, dilation, groups and explicit padding (Conv2D's general path).

Conv2D's default options (a square stride, no dilation, one group, 'same'/'valid') run its
tuned path; any other option runs these plain im2col functions: one strided view of every
(dilated) window, copied once, then one GEMM per group; backward is the transposed GEMMs
and a scatter-add of the window gradients back onto the padded input.
"""
from __future__ import annotations

import numpy as np

from ..im2col import conv_output_size, pad_nhwc


def padding_pairs(padding) -> tuple[tuple[int, int], tuple[int, int]] | str:
    """'same'/'valid' as they are; an int p, a pair (ph, pw) or ((top, bottom), (left, right)) as
    ((top, bottom), (left, right)) of non-negative ints."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
        return padding
    p = padding
    if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
        p = ((p, p), (p, p))
    elif isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(v, (int, np.integer)) for v in p):
        p = ((p[0], p[0]), (p[1], p[1]))
    ok = isinstance(p, (tuple, list)) and len(p) == 2 and all(
        isinstance(q, (tuple, list)) and len(q) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in q) for q in p)
    if not ok:
        raise ValueError(f"padding must be 'same', 'valid', an int >= 0, a pair (ph, pw) or "
                         f"((top, bottom), (left, right)), got {padding!r}")
    return (int(p[0][0]), int(p[0][1])), (int(p[1][0]), int(p[1][1]))


def geometry(size_hw: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
             dilation: tuple[int, int], padding) -> tuple[int, int, tuple[int, int, int, int]]:
    """(OH, OW, (top, bottom, left, right)) of a convolution over an (H, W) input."""
    outs, pads = [], []
    for axis in range(2):
        size, k, s = size_hw[axis], dilation[axis] * (kernel[axis] - 1) + 1, strides[axis]   # k: dilated
        if isinstance(padding, str):
            out, a, b = conv_output_size(size, k, s, padding)
        else:
            a, b = padding[axis]
            if size + a + b < k:
                raise ValueError(f"the dilated window {k} is larger than the padded input {size + a + b}")
            out = (size + a + b - k) // s + 1
        outs.append(out)
        pads += [a, b]
    return outs[0], outs[1], tuple(pads)


def dilated_windows(xp: np.ndarray, kh: int, kw: int, strides, dilation, oh: int, ow: int) -> np.ndarray:
    """Strided read-only view (N, OH, OW, KH, KW, C) of every dilated window of a padded input."""
    N, _, _, C = xp.shape
    sN, sH, sW, sC = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(N, oh, ow, kh, kw, C),
        strides=(sN, sH * strides[0], sW * strides[1], sH * dilation[0], sW * dilation[1], sC), writeable=False)


def forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, strides, dilation, pads, groups: int,
            out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """x (N, H, W, C), W (KH, KW, C/groups, F) -> out (N*OH*OW, F) and cols (N*OH*OW, KH, KW, C)."""
    N, H, Wd, C = x.shape
    KH, KW, Cg, F = W.shape
    oh, ow = out_hw
    xp = pad_nhwc(x, pads)                                                 # (N, Hp, Wp, C)
    cols = np.ascontiguousarray(dilated_windows(xp, KH, KW, strides, dilation, oh, ow))
    cols = cols.reshape(N * oh * ow, KH, KW, C)                            # (M, KH, KW, C)
    Fg = F // groups
    out = np.empty((N * oh * ow, F), x.dtype)                              # (M, F)
    for g in range(groups):
        cg = cols[..., g * Cg:(g + 1) * Cg].reshape(len(cols), -1)         # (M, KH*KW*Cg)
        np.matmul(cg, W[..., g * Fg:(g + 1) * Fg].reshape(-1, Fg), out=out[:, g * Fg:(g + 1) * Fg])
    if b is not None:
        out += b
    return out, cols


def backward(g2: np.ndarray, cols: np.ndarray, W: np.ndarray, groups: int, x_shape, strides, dilation,
             pads, out_hw, need_dx: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """g2 (M, F) -> dW (KH, KW, C/groups, F), db (F,), dx (N, H, W, C) or None."""
    KH, KW, Cg, F = W.shape
    Fg, M = F // groups, g2.shape[0]
    dW = np.empty_like(W)
    dcols = np.empty_like(cols) if need_dx else None                       # (M, KH, KW, C)
    for g in range(groups):
        gg = g2[:, g * Fg:(g + 1) * Fg]                                     # (M, Fg)
        cg = cols[..., g * Cg:(g + 1) * Cg].reshape(M, -1)                 # (M, KH*KW*Cg)
        dW[..., g * Fg:(g + 1) * Fg] = (cg.T @ gg).reshape(KH, KW, Cg, Fg)
        if need_dx:
            Wg = W[..., g * Fg:(g + 1) * Fg].reshape(-1, Fg)                 # (KH*KW*Cg, Fg)
            dcols[..., g * Cg:(g + 1) * Cg] = (gg @ Wg.T).reshape(M, KH, KW, Cg)
    db = g2.sum(axis=0)
    if not need_dx:
        return dW, db, None
    N, H, Wd, C = x_shape
    pt, pb, pl, pr = pads
    oh, ow = out_hw
    (sh, sw), (dh, dw) = strides, dilation
    d6 = dcols.reshape(N, oh, ow, KH, KW, C)
    dxp = np.zeros((N, H + pt + pb, Wd + pl + pr, C), g2.dtype)            # (N, Hp, Wp, C)
    for i in range(KH):
        for j in range(KW):
            dxp[:, i * dh:i * dh + sh * oh:sh, j * dw:j * dw + sw * ow:sw] += d6[:, :, :, i, j]
    return dW, db, dxp[:, pt:pt + H, pl:pl + Wd]
