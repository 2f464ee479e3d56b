"""What a training step holds: memory that does not grow with the worst layer (issue 28).

A Conv2D builds its im2col rows in blocks of at most ``im2col_budget`` bytes and keeps its input,
not the whole batch's (N*OH*OW, KH*KW*C) copy; Activation('relu') runs in place on an output that
the layer before it does not keep (a BatchNorm2D's, a pool's), never on the caller's array or on
an output a user's layer keeps.
"""
import tracemalloc

import numpy as np
import pytest

from dpnn import Activation, BatchNorm2D, Conv2D, Dense, GlobalAvgPool2D, MaxPool2D, Model, Residual


def traced_peak(fn) -> int:
    """Bytes NumPy allocated at the peak of ``fn()`` (what existed before is not counted)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("stride", [1, 2])
def test_a_conv_step_holds_its_budget_not_the_whole_im2col(stride):
    """What a Conv2D's first step allocates (its output, input gradient and the buffers it keeps)
    holds the batch's im2col without a budget, and less than half of it with 256 KiB."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 96, 96, 16), dtype=np.float32)
    W = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
    G = rng.standard_normal((2, 96 // stride, 96 // stride, 32), dtype=np.float32)
    whole_cols = 2 * (96 // stride) ** 2 * 3 * 3 * 16 * 4                # the batch's im2col, bytes
    peaks, results = {}, {}
    for budget in (None, 256 << 10):
        layer = Conv2D(32, 3, stride=stride)
        layer.im2col_budget = budget
        layer.build((None, 96, 96, 16))
        layer.params["W"][...] = W
        peaks[budget] = traced_peak(lambda lay=layer, b=budget: results.setdefault(b, conv_step(lay, x, G)))
    assert peaks[None] > whole_cols                                     # the whole batch's rows
    assert peaks[256 << 10] < peaks[None] - whole_cols / 2, (peaks, whole_cols)
    for got, want in zip(results[256 << 10], results[None]):            # the same function
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def conv_step(layer, x, G):
    """(output, input gradient, weight gradient) of one forward and backward."""
    out = layer.forward(x, training=True)
    return out, layer.backward(G), layer.grads["W"].copy()


def small_resnet():
    return [Conv2D(8, 3), BatchNorm2D(), Activation("relu"),
            Residual([Conv2D(8, 3), BatchNorm2D(), Activation("relu"), Conv2D(8, 3), BatchNorm2D()],
                     activation="relu"),
            MaxPool2D(2), Activation("relu"), GlobalAvgPool2D(), Dense(3)]


def trained_arrays(layers, x, y):
    model = Model(layers, seed=1)
    model.compile("categorical_crossentropy", "sgd", lr=0.1)
    model.build((None,) + x.shape[1:])
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, workers=1)
    return model.params.copy(), model.predict(x)


def test_in_place_relu_computes_what_a_copying_relu_computes(monkeypatch):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((8, 12, 12, 3), dtype=np.float32), rng.integers(0, 3, 8)
    in_place = trained_arrays(small_resnet(), x, y)
    for cls in (BatchNorm2D, Conv2D, MaxPool2D, Residual):
        monkeypatch.setattr(cls, "owns_output", False)                  # every ReLU copies
    copying = trained_arrays(small_resnet(), x, y)
    for got, want in zip(in_place, copying):
        assert np.array_equal(got, want)


def test_relu_overwrites_only_arrays_nobody_keeps():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 6, 2), dtype=np.float32)
    before = x.copy()
    model = Model([Activation("relu"), BatchNorm2D(), Activation("relu"), GlobalAvgPool2D(), Dense(2)], seed=0)
    model.build((None, 6, 6, 2))
    model.forward(x, training=True)
    assert np.array_equal(x, before)                                    # the caller's array: untouched
    assert [layer.overwrite_input for layer in model.layers[:3]] == [False, False, True]


def test_a_users_subclass_that_keeps_its_output_is_never_overwritten():
    class KeepingBN(BatchNorm2D):                                       # a user's layer, in the user's script
        def forward(self, x, training=False):
            self.kept = super().forward(x, training)
            self.kept_copy = self.kept.copy()
            return self.kept

    rng = np.random.default_rng(4)
    bn = KeepingBN()
    model = Model([Conv2D(4, 3), bn, Activation("relu"), GlobalAvgPool2D(), Dense(2)], seed=0)
    model.build((None, 6, 6, 2))
    model.forward(rng.standard_normal((3, 6, 6, 2), dtype=np.float32), training=True)
    assert not bn.owns_output and (bn.kept < 0).any()
    assert np.array_equal(bn.kept, bn.kept_copy)


def conv_net(budget):
    layers = [Conv2D(8, 3), BatchNorm2D(), Activation("relu"), Conv2D(16, 3, stride=2), Activation("relu"),
              GlobalAvgPool2D(), Dense(3)]
    for layer in layers[:4:3]:
        layer.im2col_budget = budget                   # on the instance: it travels to the workers
    model = Model(layers, seed=5)
    model.compile("categorical_crossentropy", "sgd", lr=0.05)
    return model.build((None, 10, 10, 2))


@pytest.mark.slow
def test_a_budget_set_on_the_layer_reaches_the_workers_and_stays_bitwise():
    """Deterministic mode: the blocks are a function of the micro-shard's shape and the layer's
    budget, so 2 workers give the one-process weights bitwise with a budget of one output row;
    the default budget (whole micro-shards) gives other float32 roundings."""
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((32, 10, 10, 2), dtype=np.float32), rng.integers(0, 3, 32)
    runs = {}
    for budget, workers in ((1, 1), (1, 2), (None, 1)):
        model = conv_net(budget)
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, workers=workers, deterministic=True)
        runs[budget, workers] = model.params.copy()
    assert np.array_equal(runs[1, 1], runs[1, 2])
    assert not np.array_equal(runs[1, 1], runs[None, 1])
    np.testing.assert_allclose(runs[1, 1], runs[None, 1], rtol=1e-4, atol=1e-5)
