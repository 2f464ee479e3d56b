"""im2col / col2im for NHWC tensors: convolution and pooling as matrix products.

A convolution over an (N, H, W, C) input with a (KH, KW) window becomes one GEMM once
every window is laid out as a row: ``cols`` has shape (N*OH*OW, KH*KW*C). ``im2col``
builds it from a strided *view* of the padded input and copies it exactly once, into a
buffer the caller may reuse across steps; Conv2D builds it in blocks of rows instead
(:func:`row_blocks`, :func:`im2col_block`), so that one block fits a memory budget whatever the
image size. ``col2im`` is its adjoint (sums overlapping windows back, :func:`col2im_add` for one
block); a stride-1 convolution never needs it, because its input gradient is
itself a convolution (``conv_input_grad_cols``: im2col of the padded output gradient,
then one GEMM with the flipped kernel; or ``conv_input_grad_taps``: one GEMM per window
offset on the output gradient as it is, each product added into its shifted place).
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


def _reuse(buf: np.ndarray | None, shape: tuple, dtype) -> np.ndarray | None:
    """``buf`` itself if it has this shape and dtype; else a view of the memory it came from,
    when that was allocated by :func:`scratch` and is large enough; else None."""
    if buf is None or np.dtype(dtype) != buf.dtype:
        return None
    if buf.shape == shape:
        return buf
    owner, size = buf.base, int(np.prod(shape))
    if isinstance(owner, np.ndarray) and owner.ndim == 1 and owner.dtype == buf.dtype \
            and owner.size >= size and owner.flags.c_contiguous:
        return owner[:size].reshape(shape)
    return None


def scratch(buf: np.ndarray | None, shape: tuple, dtype) -> np.ndarray:
    """An uninitialised (shape) array that reuses ``buf``'s memory when it has room.

    Buffers a layer keeps across steps are requested through this, so they are allocated
    once, for the largest batch seen: a smaller micro-batch or last batch of an epoch then
    costs no allocation and no fresh page faults.
    """
    out = _reuse(buf, tuple(shape), dtype)
    if out is None:
        out = np.empty(int(np.prod(shape)), dtype).reshape(shape)
    return out


def pad_nhwc(x: np.ndarray, pads: tuple[int, int, int, int], value: float = 0.0,
             out: np.ndarray | None = None) -> np.ndarray:
    """Pad H and W of an (N, H, W, C) array by (top, bottom, left, right).

    ``out`` may be a buffer of the padded shape and dtype (from an earlier call); it is reused.
    """
    top, bottom, left, right = pads
    if not any(pads):
        return x
    N, H, W, C = x.shape
    shape = (N, H + top + bottom, W + left + right, C)
    buf = scratch(out, shape, x.dtype)                                    # (N, Hp, Wp, C)
    buf[:, :top], buf[:, top + H:] = value, value                         # border strips only
    buf[:, top:top + H, :left], buf[:, top:top + H, left + W:] = value, value
    buf[:, top:top + H, left:left + W, :] = x
    return buf


def windows(xp: np.ndarray, kh: int, kw: int, stride: int, oh: int, ow: int) -> np.ndarray:
    """Strided read-only view (N, OH, OW, KH, KW, C) of every window of a padded input."""
    N, H, W, C = xp.shape
    sN, sH, sW, sC = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(N, oh, ow, kh, kw, C),
        strides=(sN, sH * stride, sW * stride, sH, sW, sC), writeable=False)


def im2col(x: np.ndarray, kh: int, kw: int, stride: int, padding: str,
           out: np.ndarray | None = None, pad_buf: np.ndarray | None = None
           ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(N, H, W, C) -> cols (N*OH*OW, KH*KW*C) and the pads used.

    ``out`` and ``pad_buf`` may be buffers from an earlier call (cols and the zero-padded
    input); they are reused when shape and dtype match. Read the padded input back from
    :func:`pad_nhwc` with the same ``pad_buf`` if it must be kept.
    """
    N, H, W, C = x.shape
    oh, pt, pb = conv_output_size(H, kh, stride, padding)
    ow, pl, pr = conv_output_size(W, kw, stride, padding)
    pads = (pt, pb, pl, pr)
    return im2col_padded(pad_nhwc(x, pads, out=pad_buf), kh, kw, stride, oh, ow, out), pads


def im2col_padded(xp: np.ndarray, kh: int, kw: int, stride: int, oh: int, ow: int,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Already padded (N, Hp, Wp, C) -> cols (N*OH*OW, KH*KW*C), copied once into ``out``.

    ``out`` may be any (N*OH*OW, KH*KW*C) array with unit column stride, e.g. ``buf[:, :K]``.
    """
    N, C = xp.shape[0], xp.shape[3]
    shape = (N * oh * ow, kh * kw * C)
    cols = scratch(out, shape, xp.dtype)
    s0, s1 = cols.strides                     # ``out`` may be a column slice of a wider buffer
    dst = np.lib.stride_tricks.as_strided(cols, (N, oh, ow, kh, kw, C),
                                          (oh * ow * s0, ow * s0, s0, kw * C * s1, C * s1, s1))
    if C > 1:
        dst[...] = windows(xp, kh, kw, stride, oh, ow)                  # the one copy
        return cols
    for i in range(kh):      # one channel: copy per window offset, or NumPy's inner loop is 1 long
        for j in range(kw):
            dst[:, :, :, i, j, :] = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
    return cols


def row_blocks(N: int, OH: int, OW: int, row_bytes: int, budget: int) -> list[tuple[int, int, int, int]]:
    """Blocks ``(a, b, r0, r1)`` (samples a..b, output rows r0..r1) covering an (N, OH, OW) output
    whose im2col rows (``row_bytes`` each) fit in ``budget`` bytes: as many whole samples as fit,
    or, when one sample does not, one sample's rows in equal bands (at least one row each).

    The blocks depend on the shapes and the budget only, so the same shard is always cut alike.
    """
    per_sample = OH * OW * row_bytes
    if per_sample <= budget:
        pieces = -(-N // max(1, budget // per_sample))                    # fewest blocks that fit
        n = -(-N // pieces)                                                 # samples each, evened out
        return [(a, min(N, a + n), 0, OH) for a in range(0, N, n)]
    bands = -(-OH // max(1, budget // (OW * row_bytes)))
    rows = -(-OH // bands)
    return [(a, a + 1, r, min(OH, r + rows)) for a in range(N) for r in range(0, OH, rows)]


def block_rows(block: tuple[int, int, int, int], OH: int, OW: int) -> slice:
    """The rows of the (N*OH*OW, ...) im2col / output matrix that ``block`` covers (contiguous)."""
    a, b, r0, r1 = block
    return slice((a * OH + r0) * OW, ((b - 1) * OH + r1) * OW)


def im2col_block(x: np.ndarray, block: tuple[int, int, int, int], kh: int, kw: int, stride: int,
                 pads: tuple[int, int, int, int], ow: int, out: np.ndarray | None = None,
                 slab_buf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The im2col rows of one :func:`row_blocks` block of an unpadded (N, H, W, C) input:
    cols (n*(r1-r0)*OW, KH*KW*C) into ``out``, and the zero-padded slab of input rows they were
    read from (``slab_buf`` reused; None when no padding is needed and the rows are read in place).
    """
    a, b, r0, r1 = block
    N, H, W, C = x.shape
    pt, pb, pl, pr = pads
    y0, y1 = r0 * stride - pt, (r1 - 1) * stride - pt + kh              # input rows read (may be pads)
    top, bottom = max(0, -y0), max(0, y1 - H)
    if not (top or bottom or pl or pr):
        return im2col_padded(x[a:b, y0:y1], kh, kw, stride, r1 - r0, ow, out), None
    S = y1 - y0
    slab = scratch(slab_buf, (b - a, S, W + pl + pr, C), x.dtype)        # (n, S, Wp, C)
    slab[:, :top], slab[:, S - bottom:] = 0, 0                           # border strips only
    slab[:, top:S - bottom, :pl], slab[:, top:S - bottom, pl + W:] = 0, 0
    slab[:, top:S - bottom, pl:pl + W] = x[a:b, y0 + top:y1 - bottom]
    return im2col_padded(slab, kh, kw, stride, r1 - r0, ow, out), slab


def col2im_add(cols: np.ndarray, dxp: np.ndarray, kh: int, kw: int, stride: int, oh: int, ow: int) -> None:
    """dxp (n, Hp', Wp, C) += the adjoint of im2col of cols (n*OH*OW, KH*KW*C): each window's
    column block added back where it was read (a block's slab of a padded input gradient)."""
    N, C = dxp.shape[0], dxp.shape[3]
    c6 = cols.reshape(N, oh, ow, kh, kw, C)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :] += c6[:, :, :, i, j, :]


def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int,
           stride: int, pads: tuple[int, int, int, int]) -> np.ndarray:
    """Adjoint of im2col: cols (N*OH*OW, KH*KW*C) -> (N, H, W, C), overlaps summed
    (:func:`col2im_add` into a zero-padded gradient, then the padding cut off)."""
    N, H, W, C = x_shape
    pt, pb, pl, pr = pads
    Hp, Wp = H + pt + pb, W + pl + pr
    dxp = np.zeros((N, Hp, Wp, C), dtype=cols.dtype)                  # (N, Hp, Wp, C)
    col2im_add(cols, dxp, kh, kw, stride, (Hp - kh) // stride + 1, (Wp - kw) // stride + 1)
    return dxp[:, pt:pt + H, pl:pl + W, :]


def conv_input_grad_cols(grad: np.ndarray, kh: int, kw: int, pads: tuple[int, int, int, int],
                         x_hw: tuple[int, int], out: np.ndarray | None = None,
                         pad_buf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stride-1 conv: output gradient (N, OH, OW, F) -> cols (N*H*W, KH*KW*F), padded grad.

    ``cols @ flip_kernel(W)`` is then the input gradient (N*H*W, C): the adjoint of a
    stride-1 correlation is a full correlation with the kernel rotated by 180 degrees, i.e.
    a correlation of the output gradient padded by (KH-1-top, KH-1-bottom, ...). The padded
    gradient is returned so that the caller can pass it back as ``pad_buf`` next time.
    """
    N, OH, OW, F = grad.shape
    pt, pb, pl, pr = pads
    H, W = x_hw
    qt, ql = kh - 1 - pt, kw - 1 - pl
    qb, qr = H + kh - 1 - OH - qt, W + kw - 1 - OW - ql                  # rows/cols past the end
    assert min(qt, ql) >= 0 and min(qb, qr) >= 0, (pads, grad.shape, x_hw)
    gp = pad_nhwc(grad, (qt, qb, ql, qr), out=pad_buf)                  # (N, H+KH-1, W+KW-1, F)
    return im2col_padded(gp, kh, kw, 1, H, W, out), gp


def conv_input_grad_taps(grad: np.ndarray, W: np.ndarray, pads: tuple[int, int, int, int],
                         x_hw: tuple[int, int], out: np.ndarray | None = None,
                         tmp_buf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stride-1 conv: output gradient (N, OH, OW, F), kernel W (KH, KW, C, F) -> input gradient
    (N, H, W, C) into ``out`` (allocated if None), and the scratch product (for reuse).

    The same full correlation as :func:`conv_input_grad_cols`, without its (N*H*W, KH*KW*F)
    copy: window offset (i, j) sent input pixel (y, z) to output pixel (y + pt - i, z + pl - j),
    so its share of the input gradient is ``grad @ W[i, j].T`` (one (N*OH*OW, F) @ (F, C)
    GEMM on the gradient as it is) added at that shift. With 'same' padding the centre
    offset lands exactly on the input, so its product is written straight into ``out``; the
    others are added on the rows and columns they reach. No padded copy, no wasted rows.
    """
    N, OH, OW, F = grad.shape
    KH, KW, C, _ = W.shape
    pt, pb, pl, pr = pads
    H, Wd = x_hw
    if out is None:
        out = np.empty((N, H, Wd, C), grad.dtype)
    assert out.shape == (N, H, Wd, C) and out.flags.c_contiguous, (out.shape, (N, H, Wd, C))
    g2 = grad.reshape(-1, F)                                            # (N*OH*OW, F)
    centre = (pt, pl) if (OH, OW) == (H, Wd) else None                  # lands on every input pixel
    if centre is not None:
        np.matmul(g2, W[centre].T, out=out.reshape(-1, C))
    else:
        out[...] = 0
    tmp = scratch(tmp_buf, (N * OH * OW, C), grad.dtype)
    v = tmp.reshape(N, OH, OW, C)
    for i in range(KH):
        y0, y1 = max(0, i - pt), min(H, OH + i - pt)                   # input rows this offset reaches
        for j in range(KW):
            z0, z1 = max(0, j - pl), min(Wd, OW + j - pl)
            if (i, j) == centre or y1 <= y0 or z1 <= z0:
                continue
            np.matmul(g2, W[i, j].T, out=tmp)                           # (N*OH*OW, C)
            out[:, y0:y1, z0:z1] += v[:, y0 + pt - i:y1 + pt - i, z0 + pl - j:z1 + pl - j]
    return out, tmp


def flip_kernel(W: np.ndarray) -> np.ndarray:
    """(KH, KW, C, F) -> (KH*KW*F, C): rotated by 180 degrees, in and out channels swapped."""
    KH, KW, C, F = W.shape
    return np.ascontiguousarray(W[::-1, ::-1].transpose(0, 1, 3, 2)).reshape(KH * KW * F, C)
