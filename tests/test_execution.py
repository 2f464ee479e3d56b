"""How a model executes a shard: ReLU moved after max pooling, micro-batches, reused buffers.

Each of these changes how the work is done, never what is computed: the tests compare
against the plain layer-by-layer, whole-shard computation.
"""
import numpy as np
import pytest

from dpnn import Activation, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Model
from dpnn.im2col import scratch
from dpnn.model import execution_order
from dpnn.random import sample_keys
from dpnn.recipe import shard_gradients


def cnn(seed=0, bn=False):
    layers = [Conv2D(6, 3, padding="same"), Activation("relu"), MaxPool2D(2),
              Conv2D(8, 3, padding="same"), *([BatchNorm2D()] if bn else []), Activation("relu"),
              MaxPool2D(2, padding="same"), Flatten(), Dense(16), Activation("relu"), Dropout(0.3),
              Dense(5)]
    m = Model(layers, seed=seed)
    m.compile("categorical_crossentropy", "adam", lr=1e-3, micro_batch=None)
    return m.build((1, 14, 14, 1))


def data(n=24, seed=1):
    rng = np.random.default_rng(seed)
    # small integers: many exact ties inside pooling windows, the case the reordering must get right
    x = rng.integers(-3, 4, (n, 14, 14, 1)).astype(np.float32)
    return x, rng.integers(0, 5, n), sample_keys(7, 1, np.arange(n))


def test_relu_runs_after_the_max_pool_that_follows_it():
    m = cnn()
    assert [type(m.layers[i]).__name__ for i in m._order] == [
        "Conv2D", "MaxPool2D", "Activation", "Conv2D", "MaxPool2D", "Activation", "Flatten",
        "Dense", "Activation", "Dropout", "Dense"]
    assert m.get_config()[1]["class"] == "Activation"          # saved as written
    other = [Dense(4), Activation("tanh"), MaxPool2D(2)]
    assert execution_order(other) == [0, 1, 2]                 # only ReLU commutes with max


def test_reordered_relu_gives_bitwise_the_same_outputs_and_gradients():
    x, y, keys = data()
    fast, plain = cnn(), cnn()
    plain._order = list(range(len(plain.layers)))
    for m in (fast, plain):
        shard_gradients(m, x, y, len(x), keys)
    np.testing.assert_array_equal(fast.forward(x), plain.forward(x))
    np.testing.assert_array_equal(fast.grads, plain.grads)
    assert np.abs(fast.grads).max() > 0


def test_micro_batches_cut_a_shard_and_add_up_to_the_whole_shard_gradient():
    x, y, keys = data(23)
    whole, pieces = cnn(), cnn()
    pieces.micro_batch = 5
    assert pieces.micro_batches(23) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    lw = shard_gradients(whole, x, y, 40, keys)
    grads_buffer = pieces.grads
    lp = shard_gradients(pieces, x, y, 40, keys)
    assert pieces.grads is grads_buffer                        # bound back to the caller's buffer
    assert lp.hits == lw.hits and lp.loss == pytest.approx(lw.loss, rel=1e-6)
    np.testing.assert_allclose(pieces.grads, whole.grads, rtol=1e-4, atol=1e-7)
    assert np.abs(whole.grads).max() > 0


def test_batchnorm_models_are_never_cut():
    m = cnn(bn=True)
    m.micro_batch = 4
    assert m.micro_batches(16) == [(0, 16)]


def test_micro_batch_is_validated_and_auto_resolves():
    m = cnn()
    m.compile("categorical_crossentropy", "adam", micro_batch="auto")
    assert isinstance(m.micro_batch, int) and m.micro_batch > 0
    for bad in (0, -2, 1.5, "big", True):
        with pytest.raises(ValueError, match="micro_batch"):
            m.compile("categorical_crossentropy", "adam", micro_batch=bad)


def test_scratch_buffers_reuse_memory_for_smaller_shapes():
    a = scratch(None, (8, 10), np.float32)
    b = scratch(a, (3, 10), np.float32)
    assert b.shape == (3, 10) and np.shares_memory(a, b)
    c = scratch(b, (9, 10), np.float32)                        # larger: new memory
    assert c.shape == (9, 10) and not np.shares_memory(a, c)
    assert scratch(c, (2, 5), np.float64).dtype == np.float64


def test_conv_layer_with_bias_in_the_gemm_survives_changing_batch_sizes():
    x, y, keys = data(12)
    reused = cnn()
    for n in (5, 12, 3, 12, 7):                 # grow, shrink, regrow; a new model allocates afresh
        np.testing.assert_array_equal(reused.forward(x[:n]), cnn().forward(x[:n]))



@pytest.mark.parametrize("shape, kernel, padding", [
    ((2, 14, 14, 3), (3, 3), "same"), ((3, 9, 7, 2), (5, 5), "same"), ((2, 8, 11, 4), (2, 3), "same"),
    ((2, 10, 9, 3), (3, 3), "valid"), ((1, 6, 6, 2), (1, 1), "same"), ((2, 7, 8, 1), (4, 2), "valid")])
def test_the_per_offset_input_gradient_equals_the_im2col_one(shape, kernel, padding):
    from dpnn.im2col import conv_input_grad_cols, conv_input_grad_taps, conv_output_size, flip_kernel
    N, H, W, C = shape
    (kh, kw), F = kernel, 5
    oh, pt, pb = conv_output_size(H, kh, 1, padding)
    ow, pl, pr = conv_output_size(W, kw, 1, padding)
    rng = np.random.default_rng(0)
    grad, Wk = rng.standard_normal((N, oh, ow, F)), rng.standard_normal((kh, kw, C, F))  # float64
    cols, _ = conv_input_grad_cols(grad, kh, kw, (pt, pb, pl, pr), (H, W))
    expected = (cols @ flip_kernel(Wk)).reshape(N, H, W, C)
    dx, tmp = conv_input_grad_taps(grad, Wk, (pt, pb, pl, pr), (H, W))
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)
    again, _ = conv_input_grad_taps(grad, Wk, (pt, pb, pl, pr), (H, W), out=np.full_like(dx, 7.0), tmp_buf=tmp)
    np.testing.assert_array_equal(again, dx)                    # reused buffers, same result


def test_a_wide_conv_layer_passes_gradcheck_on_the_shifted_path():
    from dpnn.gradcheck import check_layer
    from dpnn.layers.conv import SHIFTED_DX_FROM
    check_layer(Conv2D(SHIFTED_DX_FROM, 3, padding="same"), (2, 5, 6, 3))


def test_every_array_of_a_training_step_is_float32():
    """No silent float64 upcast anywhere in forward, loss or backward (it would double the
    memory traffic of the step)."""
    m = cnn()
    x, y, keys = data(8)
    h = x
    for i in m._order:
        layer = m.layers[i]
        if hasattr(layer, "sample_keys"):
            layer.sample_keys = keys
        h = layer.forward(h, training=True)
        assert h.dtype == np.float32, layer
    m.loss.forward(h, y)
    g = m.loss.backward(8)
    assert g.dtype == np.float32
    for i in reversed(m._order):
        g = m.layers[i].backward(g)
        assert g is None or g.dtype == np.float32, m.layers[i]
        assert all(v.dtype == np.float32 for v in m.layers[i].grads.values())


@pytest.mark.parametrize("kernel, stride, padding", [((3, 3), 1, "same"), ((3, 2), 2, "same"),
                                                     ((2, 2), 2, "valid"), ((3, 3), 2, "valid")])
def test_im2col_rows_are_the_windows_and_col2im_is_its_adjoint(kernel, stride, padding):
    from dpnn.im2col import col2im, im2col
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 3))
    kh, kw = kernel
    cols, (pt, pb, pl, pr) = im2col(x, kh, kw, stride, padding)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    expected = [xp[n, i * stride:i * stride + kh, j * stride:j * stride + kw].reshape(-1)
                for n in range(2) for i in range(oh) for j in range(ow)]       # row-major windows
    np.testing.assert_array_equal(cols, np.array(expected))
    c = rng.standard_normal(cols.shape)                                     # <im2col x, c> = <x, col2im c>
    back = col2im(c, x.shape, kh, kw, stride, (pt, pb, pl, pr))
    assert np.sum(cols * c) == pytest.approx(np.sum(x * back), rel=1e-12)
