"""The fast paths of Conv2D and MaxPool2D against plain float64 references.

Each fast path (the shifted input gradient computed in pieces of samples, max pooling's
argmax as window offsets) changes how the work is done, never what is computed: every case
is checked against a direct loop-over-window-offsets formulation in float64, over odd
shapes, strides, paddings and batch sizes 1, 7 and 64.
"""
import numpy as np
import pytest

from dpnn import Conv2D
from dpnn.gradcheck import check_layer
from dpnn.im2col import conv_output_size


def _to64(layer):
    for d in (layer.params, layer.grads):
        for k in d:
            d[k] = d[k].astype(np.float64)


def conv_reference(x, W, b, stride, padding, relu, G):
    """(out, dx, dW, db) of a convolution by one loop over window offsets (float64)."""
    N, H, Wd, C = x.shape
    KH, KW, _, F = W.shape
    oh, pt, pb = conv_output_size(H, KH, stride, padding)
    ow, pl, pr = conv_output_size(Wd, KW, stride, padding)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = np.zeros((N, oh, ow, F)) + b
    for i in range(KH):
        for j in range(KW):
            out += xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride] @ W[i, j]
    if relu:
        out = np.maximum(out, 0)
        G = G * (out > 0)
    dxp, dW = np.zeros_like(xp), np.zeros_like(W)
    for i in range(KH):
        for j in range(KW):
            win = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride]     # (N, OH, OW, C)
            dW[i, j] = np.einsum("nhwc,nhwf->cf", win, G)
            dxp[:, i:i + stride * oh:stride, j:j + stride * ow:stride] += G @ W[i, j].T
    return out, dxp[:, pt:pt + H, pl:pl + Wd], dW, G.sum(axis=(0, 1, 2))


CONV_CASES = [  # (filters, kernel, stride, padding, relu, (N, H, W, C), backward_chunk)
    (32, 3, 1, "same", False, (7, 14, 14, 8), 4),
    (32, 3, 1, "same", True, (7, 9, 11, 3), 4),       # fused ReLU, bias folded into the GEMM
    (40, (3, 2), 1, "valid", False, (5, 8, 7, 4), 2),
    (32, 5, 1, "same", False, (3, 7, 6, 2), 1),
    (33, 3, 1, "same", True, (1, 5, 5, 2), 4),        # batch 1: one short piece
    (32, 3, 1, "same", False, (7, 6, 5, 2), None),    # whole batch in one piece
    (36, 3, 2, "same", False, (7, 7, 9, 3), 4),       # stride 2: the col2im path
    (32, 2, 2, "valid", False, (2, 6, 6, 3), 4),
    (8, 3, 1, "same", False, (7, 6, 6, 3), 4),        # narrow: the im2col input gradient
    (32, 3, 1, "same", True, (7, 10, 9, 1), 4),       # one input channel: im2col per offset
    (4, 3, 2, "valid", False, (7, 9, 8, 1), None),
    (5, (2, 3), 1, "same", False, (1, 5, 6, 1), 4),
]


@pytest.mark.parametrize("budget", [None, 1, 3000], ids=["whole", "one-row-blocks", "some-rows-or-samples"])
@pytest.mark.parametrize("F, k, stride, padding, relu, shape, chunk", CONV_CASES)
def test_conv_matches_the_loop_reference(F, k, stride, padding, relu, shape, chunk, budget):
    """Every path, with im2col built at once, one output row at a time, or in blocks of a few
    rows or samples (``im2col_budget``): the blocks change how the work is cut, not its result."""
    rng = np.random.default_rng(0)
    layer = Conv2D(F, k, stride=stride, padding=padding, activation="relu" if relu else None)
    layer.backward_chunk, layer.im2col_budget = chunk, budget
    layer.build((None,) + shape[1:])
    _to64(layer)
    layer.params["W"][...] = rng.standard_normal(layer.params["W"].shape)
    layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape)
    for n in (shape[0], max(1, shape[0] - 3), shape[0]):         # buffers shrink and regrow
        x = rng.standard_normal((n,) + shape[1:])
        out = layer.forward(x, training=True)
        G = rng.standard_normal(out.shape)
        dx = layer.backward(G)
        ref = conv_reference(x, layer.params["W"], layer.params["b"], stride, padding, relu, G)
        np.testing.assert_allclose(out, ref[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, ref[1], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.grads["W"], ref[2], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.grads["b"], ref[3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 7, 64])
def test_seed_cnn_second_conv_at_real_batch_sizes(n):
    """seed-cnn's second convolution (14x14x32 -> 64 filters) in float32 against float64."""
    rng = np.random.default_rng(n)
    layer = Conv2D(64, 3)
    layer.build((None, 14, 14, 32))
    x = rng.standard_normal((n, 14, 14, 32), dtype=np.float32)
    out = layer.forward(x, training=True)
    G = rng.standard_normal(out.shape, dtype=np.float32)
    dx = layer.backward(G)
    assert out.dtype == dx.dtype == np.float32
    W, b = layer.params["W"].astype(np.float64), layer.params["b"].astype(np.float64)
    ref = conv_reference(x.astype(np.float64), W, b, 1, "same", False, G.astype(np.float64))
    for got, want in zip((out, dx, layer.grads["W"], layer.grads["b"]), ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_pieced_shifted_backward_passes_gradcheck(chunk):
    layer = Conv2D(32, 3, padding="same", activation="relu")
    layer.backward_chunk, layer.im2col_budget = chunk, 1 if chunk == 1 else None
    check_layer(layer, (5, 4, 5, 2))
