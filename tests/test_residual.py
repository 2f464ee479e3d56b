"""dpnn.Residual: a layer holding layers, treated as one by everything that walks a model.

Forward/backward against the same layers composed by hand, its arrays as views into the
flat vectors (here and in the workers), save/load, summary, a user's own (unregistered)
layer inside a block trained bitwise alike on 1, 2 and 3 workers, BatchNorm inside a block
across worker counts, and the ResNet preset.
"""
import warnings

import numpy as np
import pytest

import dpnn
from dpnn import (
    Activation,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    Model,
    Residual,
    register_layer,
)
from dpnn.cli.presets import PRESETS, resnet
from dpnn.engine import LocalEngine
from dpnn.io import list_arrays, model_arrays
from dpnn.layers import walk_layers
from dpnn.layers.normalization import batchnorm_layers
from dpnn.workers import DataParallel

from conftest import batch


class Shift(Layer):
    """A user's layer with a parameter, defined here and never registered: y = x + b (per channel)."""

    def build(self, input_shape):
        self.add_param("b", (input_shape[-1],), lambda shape, rng: rng.normal(0, 0.1, shape))
        super().build(input_shape)

    def forward(self, x, training=False):
        return x + self.params["b"]

    def backward(self, grad):
        self.grads["b"][...] = grad.reshape(-1, grad.shape[-1]).sum(axis=0)
        return grad


@register_layer
class Halve(Layer):
    """A registered user layer without parameters, to load inside a saved block."""

    def forward(self, x, training=False):
        return x * 0.5

    def backward(self, grad):
        return grad * 0.5


def projection_block(filters=6):
    """Conv(s2)-BN-ReLU-Conv-BN, shortcut Conv 1x1 (s2)-BN, ReLU after the sum."""
    return Residual([Conv2D(filters, 3, stride=2, use_bias=False), BatchNorm2D(), Activation("relu"),
                     Conv2D(filters, 3), BatchNorm2D()],
                    shortcut=[Conv2D(filters, 1, stride=2, use_bias=False), BatchNorm2D()], activation="relu")


def res_model(*inside, bn=True, seed=0, lr=0.01, optimizer="adam"):
    """Conv(4) -> Residual([Conv(4), *inside, (BN), ReLU, Conv(4)], relu) -> projection block -> GAP -> Dense(10)."""
    main = [Conv2D(4, 3), *inside, *([BatchNorm2D()] if bn else []), Activation("relu"), Conv2D(4, 3)]
    layers = [Conv2D(4, 3), Residual(main, activation="relu"),
              projection_block() if bn else Residual([Conv2D(6, 3, stride=2)], [Conv2D(6, 1, stride=2)]),
              GlobalAvgPool2D(), Dense(10)]
    model = Model(layers, seed=seed).compile("cce", optimizer, lr=lr)
    return model.build((1, 8, 8, 1))


def run_path(layers, x, training=True):
    for layer in layers:
        x = layer.forward(x, training)
    return x


def back_path(layers, g):
    for layer in reversed(layers):
        g = layer.backward(g)
    return g


# -- the block itself --------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
def test_forward_and_backward_are_the_hand_composition(training):
    block = projection_block()
    block.rng = np.random.default_rng(0)
    block.build((None, 8, 8, 3))
    twin = projection_block()                        # the same layers, composed by hand below
    twin.rng = np.random.default_rng(0)
    twin.build((None, 8, 8, 3))
    rng = np.random.default_rng(1)
    for key, value in block.params.items():          # shared values, not shared arrays
        value[...] = rng.standard_normal(value.shape)
        twin.params[key][...] = value
    x = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
    g = rng.standard_normal((4, 4, 4, 6)).astype(np.float32)

    out = block.forward(x, training)
    dx = block.backward(g.copy())

    z = run_path(twin.layers, x, training) + run_path(twin.shortcut, x, training)
    relu = Activation("relu")
    want = relu.forward(z)
    gz = relu.backward(g.copy())
    dskip = back_path(twin.shortcut, gz)
    want_dx = back_path(twin.layers, gz) + dskip
    assert np.array_equal(out, want)
    assert np.array_equal(dx, want_dx)
    for key in block.grads:
        assert np.array_equal(block.grads[key], twin.grads[key]), key


def test_identity_shortcut_without_activation_adds_the_input():
    block = Residual([Shift()])
    block.build((None, 3, 5))
    block.params["0_Shift_b"][...] = [1, 2, 3, 4, 5]
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    assert np.array_equal(block.forward(x), 2 * x + [1, 2, 3, 4, 5])
    g = np.ones((3, 5), np.float32)
    assert np.array_equal(block.backward(g), 2 * g)
    assert np.array_equal(block.grads["0_Shift_b"], [3] * 5)


def test_mismatched_paths_say_how_to_fix_them():
    with pytest.raises(ValueError, match="projection shortcut"):
        Model([Residual([Conv2D(8, 3, stride=2)])]).build((1, 8, 8, 4))
    with pytest.raises(ValueError, match="unknown activation"):
        Residual([Conv2D(4, 3)], activation="gelu")
    with pytest.raises(ValueError, match="at least one layer"):
        Residual([])
    with pytest.raises(TypeError, match="dpnn Layers"):
        Residual([np.zeros(3)])


def test_its_arrays_are_views_into_the_models_flat_vectors():
    model = res_model(Dropout(0.2))
    inner = [layer for layer in walk_layers(model.layers) if layer.params and not layer.sublayers()]
    assert len(inner) == 11           # 2 top-level + 3 in the first block + 6 in the projection block
    for layer in inner:
        for name in layer.params:
            assert np.shares_memory(layer.params[name], model.params), (layer, name)
            assert np.shares_memory(layer.grads[name], model.grads), (layer, name)
    for bn in batchnorm_layers(model.layers):
        assert np.shares_memory(bn.state["running_mean"], model.state)
    assert len(batchnorm_layers(model.layers)) == 4 and model.layers[1].batch_coupled
    model.params[...] = 0.25                       # one write reaches every child
    assert all((layer.params[name] == 0.25).all() for layer in inner for name in layer.params)


def test_a_portable_copy_binds_its_children_to_new_buffers():
    model = res_model()
    clone = model.portable()
    block, copy = model.layers[2], clone.layers[2]
    assert copy is not block and copy.layers[0] is not block.layers[0]
    assert not copy.layers[0].params and not copy.shortcut[1].state
    params, grads, state = model.params.copy(), np.zeros_like(model.grads), model.state.copy()
    clone.bind(params, grads, state, copy=False)
    assert np.shares_memory(copy.shortcut[0].params["W"], params)
    assert np.array_equal(copy.shortcut[0].params["W"], block.shortcut[0].params["W"])
    x = batch(0, n=6)[0]
    assert np.array_equal(clone.predict(x), model.predict(x))


def test_dropout_inside_gets_the_models_sample_keys():
    model = res_model(Dropout(0.5), bn=False)
    x, _, keys = batch(0, n=6)
    a = model.forward(x, training=True, sample_keys=keys)
    b = model.forward(x, training=True, sample_keys=keys)
    assert model.layers[1].layers[1].sample_keys is keys
    c = model.forward(x, training=True, sample_keys=keys + np.uint64(1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# -- saving, summary ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".hdf5", ".npz"])
def test_save_and_load_round_trip(tmp_path, suffix):
    if suffix == ".hdf5":
        pytest.importorskip("h5py")
    model = res_model(Halve())
    x, y, _ = batch(0, n=16)
    model.fit(x, y, epochs=2, batch_size=8, seed=0, verbose=0)
    path = model.save(str(tmp_path / f"m{suffix}"))
    names = set(list_arrays(path))
    assert {"0_Conv2D_W", "1_Residual_0_Conv2D_W", "1_Residual_2_BatchNorm2D_running_mean",
            "2_Residual_3_Conv2D_b", "2_Residual_shortcut1_BatchNorm2D_running_var"} <= names
    loaded = Model.load(path)
    assert loaded.get_config() == model.get_config()
    assert loaded.layers[2].shortcut[0].stride == 2 and loaded.layers[2].activation == "relu"
    assert np.array_equal(loaded.params, model.params) and np.array_equal(loaded.state, model.state)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert set(model_arrays(loaded)) == set(model_arrays(model))


def test_get_and_set_weights_reach_inside_blocks():
    model, other = res_model(seed=0), res_model(seed=1)
    assert not np.array_equal(model.params, other.params)
    other.set_weights(model.get_weights())
    assert np.array_equal(other.params, model.params) and np.array_equal(other.state, model.state)


def test_an_unknown_layer_inside_a_saved_block_is_named(tmp_path):
    path = Model([Residual([Shift()])], seed=0).build((1, 3, 4)).save(str(tmp_path / "m.npz"))
    with pytest.raises(dpnn.WeightsError, match="unknown layer class 'Shift'.*register_layer"):
        Model.load(path)


def test_memory_is_checked_inside_blocks_before_allocating():
    with pytest.raises(ValueError, match="Residual.*needs .* of parameters"):
        Model([Residual([Conv2D(2_000_000, 3), Conv2D(4, 3)], shortcut=[Conv2D(4, 1)])]).build((1, 8, 8, 4096))


def test_the_config_nests_the_layers():
    config = projection_block(5).to_config()
    assert config["class"] == "Residual" and config["config"]["activation"] == "relu"
    assert [e["class"] for e in config["config"]["layers"]] == ["Conv2D", "BatchNorm2D", "Activation",
                                                                "Conv2D", "BatchNorm2D"]
    assert config["config"]["shortcut"][0]["config"]["stride"] == 2
    assert Residual([Flatten()]).get_config()["shortcut"] is None
    again = dpnn.layers.layer_from_config(config)
    assert again.to_config() == config


def test_summary_shows_the_inside_indented():
    text = res_model().summary(print_fn=None)
    rows = text.splitlines()
    block = next(i for i, row in enumerate(rows) if "Residual" in row and row.lstrip().startswith("2"))
    assert rows[block + 1].startswith(" " * 7 + "Conv2D")
    assert any("shortcut: Conv2D" in row for row in rows)
    assert f"Total params: {res_model().param_count():,}" in text


# -- the engines -------------------------------------------------------------------------------
def data(steps=3, n=24):
    return [batch(step, n=n) for step in range(steps)]


def train(engine, batches):
    return [engine.train_step(x, y, k).loss_sum for x, y, k in batches]


def parallel(model, workers, batches, deterministic=True, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)        # 3 workers on a 2-core machine
        with DataParallel(model, workers=workers, deterministic=deterministic, **options) as dp:
            return train(dp, batches)


@pytest.mark.slow
def test_a_users_layer_inside_a_block_is_bitwise_alike_on_1_2_3_workers():
    batches = data()
    ref = res_model(Shift(), Dropout(0.3), bn=False)
    ref_losses = train(LocalEngine(ref, deterministic=True), batches)
    for workers in (1, 2, 3):
        model = res_model(Shift(), Dropout(0.3), bn=False)
        losses = parallel(model, workers, batches)
        assert np.array_equal(model.params, ref.params), f"{workers} workers"
        assert losses == ref_losses, f"{workers} workers"
    assert not np.array_equal(ref.params, res_model(Shift(), Dropout(0.3), bn=False).params)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_batchnorm_inside_blocks_is_bitwise_alike_across_worker_counts(workers):
    batches = data()
    ref = res_model(Shift())
    ref_losses = train(LocalEngine(ref, deterministic=True), batches)
    model = res_model(Shift())
    losses = parallel(model, workers, batches)
    assert np.array_equal(model.params, ref.params)
    assert np.array_equal(model.state, ref.state), "running statistics differ"
    assert not np.array_equal(model.state, res_model(Shift()).state), "the statistics were updated"
    assert losses == ref_losses


@pytest.mark.slow
def test_synchronised_batchnorm_finds_the_blocks_batchnorms():
    batches = data(steps=2)        # SGD: Adam would blow up the rounding of the biases before
    ref = res_model(optimizer="sgd")   # BatchNorm, whose gradient is 0 up to rounding
    train(LocalEngine(ref), batches)
    model = res_model(optimizer="sgd")
    parallel(model, 2, batches, deterministic=False, sync_batchnorm=True)
    np.testing.assert_allclose(model.params, ref.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.state, ref.state, rtol=1e-4, atol=1e-5)


# -- the preset --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (28, 28, 3)])
def test_the_resnet_preset_builds_for_28_and_32_pixel_images(shape):
    model = Model(PRESETS["resnet"](7), seed=0).build((1, *shape))
    assert model.output_shape == (None, 7)
    blocks = [layer for layer in model.layers if isinstance(layer, Residual)]
    assert [b.output_shape[1:] for b in blocks] == [(shape[0], shape[0], 32), (shape[0] // 2,) * 2 + (64,),
                                                    (-(-shape[0] // 4),) * 2 + (128,)]
    assert blocks[0].shortcut is None and blocks[1].shortcut[0].stride == 2
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    assert model.predict(x).shape == (2, 7)


def test_resnet20_is_a_call_away():
    model = Model(resnet(10, blocks=(3, 3, 3), widths=(16, 32, 64)), seed=0).build((1, 32, 32, 3))
    convs = [layer for layer in walk_layers(model.layers) if isinstance(layer, Conv2D)]
    assert sum(conv.kernel_size == (3, 3) for conv in convs) == 19       # 1 + 3 stages x 3 blocks x 2
    assert sum(conv.kernel_size == (1, 1) for conv in convs) == 2        # the projections
    assert 0.26e6 < model.param_count() < 0.29e6                        # He et al.: 0.27 M


# -- PyTorch -----------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
def test_the_block_matches_pytorch(training):
    """The same projection block in torch.nn, weights copied (HWCF <-> FCHW), NHWC <-> NCHW, float64."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    block = Residual([Conv2D(4, 3, stride=2, use_bias=False), BatchNorm2D(), Activation("relu"),
                      Conv2D(4, 3), BatchNorm2D()],
                     shortcut=[Conv2D(4, 1, stride=2, use_bias=False), BatchNorm2D()], activation="relu")
    block.rng = np.random.default_rng(0)
    block.build((None, 7, 7, 2))              # 7 -> 4 with stride 2: 'same' pads 1 on each side
    rng = np.random.default_rng(1)
    for arrays in (block.params, block.grads, block.state):
        for key in list(arrays):
            arrays[key] = np.array(arrays[key], np.float64)
    for value in block.params.values():
        value[...] = rng.standard_normal(value.shape)
    for bn in batchnorm_layers([block]):
        bn.state["running_mean"][...] = rng.standard_normal(4)
        bn.state["running_var"][...] = rng.uniform(0.5, 2.0, 4)

    def bn(layer):           # dpnn: new = m old + (1-m) batch; torch: new = (1-m') old + m' batch
        ref = nn.BatchNorm2d(4, eps=layer.eps, momentum=1 - layer.momentum, dtype=torch.float64)
        with torch.no_grad():
            pairs = ((ref.weight, layer.params["gamma"]), (ref.bias, layer.params["beta"]),
                     (ref.running_mean, layer.state["running_mean"]), (ref.running_var, layer.state["running_var"]))
            for t, a in pairs:
                t.copy_(torch.tensor(a))
        return ref

    def conv(layer, c_in):
        kh, kw = layer.kernel_size
        ref = nn.Conv2d(c_in, layer.filters, (kh, kw), layer.stride, padding=kh // 2, bias=layer.use_bias,
                        dtype=torch.float64)
        with torch.no_grad():
            ref.weight.copy_(torch.tensor(layer.params["W"].transpose(3, 2, 0, 1)))   # (F, C, KH, KW)
            if layer.use_bias:
                ref.bias.copy_(torch.tensor(layer.params["b"]))
        return ref

    c1, b1, _, c2, b2 = block.layers
    s1, s2 = block.shortcut
    main = nn.Sequential(conv(c1, 2), bn(b1), nn.ReLU(), conv(c2, 4), bn(b2))
    skip = nn.Sequential(conv(s1, 2), bn(s2))
    main.train(training)
    skip.train(training)

    x = rng.standard_normal((3, 7, 7, 2)) * 2 + 0.5
    block.needs_input_grad = True
    out = block.forward(x, training)
    g = rng.standard_normal(out.shape)
    dx = block.backward(g.copy())

    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    yt = torch.relu(main(xt) + skip(xt))
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2).copy()))

    def close(got, want):
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-10)

    close(out, yt.detach().numpy().transpose(0, 2, 3, 1))
    close(dx, xt.grad.numpy().transpose(0, 2, 3, 1))
    for layer, ref in ((c1, main[0]), (c2, main[3]), (s1, skip[0])):
        close(layer.grads["W"], ref.weight.grad.numpy().transpose(2, 3, 1, 0))
        if layer.use_bias:
            close(layer.grads["b"], ref.bias.grad)
    for layer, ref in ((b1, main[1]), (b2, main[4]), (s2, skip[1])):
        close(layer.grads["gamma"], ref.weight.grad)
        close(layer.grads["beta"], ref.bias.grad)
        close(layer.state["running_mean"], ref.running_mean)
        close(layer.state["running_var"], ref.running_var)


def test_a_block_ending_in_softmax_trains_like_a_softmax_layer_after_it():
    """Cross-entropy reads a block's softmax output as probabilities (no second softmax), in this
    process and on 2 workers, exactly like the same block followed by Activation('softmax')."""
    from dpnn import Activation, Dense, Flatten, Model, Residual
    rng = np.random.default_rng(0)
    X, y = rng.random((48, 4, 4, 1), dtype=np.float32), rng.integers(0, 8, 48)

    def model(inside: bool) -> Model:
        block = Residual([Dense(8), Activation("relu"), Dense(8)], activation="softmax" if inside else None)
        m = Model([Flatten(), Dense(8), block] + ([] if inside else [Activation("softmax")]), seed=0)
        return m.compile(loss="categorical_crossentropy", optimizer="adam", lr=1e-2)

    params = []
    for inside, workers in ((False, 1), (True, 1), (True, 2)):
        m = model(inside)
        m.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0, workers=workers, deterministic=True)
        probs = m.predict_proba(X[:4])
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(probs, m.predict(X[:4]), rtol=1e-6)   # no second softmax
        params.append(m.params)
    assert np.array_equal(params[0], params[1]) and np.array_equal(params[1], params[2])
