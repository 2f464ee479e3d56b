"""Keras's layer options and utilities held to Keras's tests (output shapes of
keras/src/layers/convolutional/conv_test.py, trainable, initializers, to_categorical) and to
PyTorch (Conv2D with dilation, groups, strides and padding; BatchNorm without affine)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import dpnn
import dpnn.keras as keras
from dpnn import BatchNorm2D, Conv2D, Dense, Flatten, Layer, MaxPool2D, Model, WeightsError
from dpnn.errors import DataError
from dpnn.idx import write_idx
from dpnn.layers import initializers, layer_from_config

from conftest import cnn


# -- Conv2D: Keras's options --------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, input_shape, output_shape", [      # keras conv_test: test_conv2d_basic
    ({"filters": 5, "kernel_size": 2, "strides": 1, "padding": "valid", "dilation_rate": 1, "groups": 1},
     (3, 5, 5, 4), (3, 4, 4, 5)),
    ({"filters": 6, "kernel_size": 2, "strides": 1, "padding": "same", "dilation_rate": (2, 2), "groups": 2},
     (3, 4, 4, 4), (3, 4, 4, 6)),
    ({"filters": 6, "kernel_size": (2, 2), "strides": (2, 1), "padding": "valid", "dilation_rate": (1, 1),
      "groups": 2}, (3, 5, 5, 4), (3, 2, 4, 6)),
])
def test_keras_conv2d_output_shapes_and_weights(kwargs, input_shape, output_shape):
    layer = keras.layers.Conv2D(**kwargs)
    m = Model([layer]).build(input_shape)
    assert m.output_shape == (None, *output_shape[1:])
    assert m.predict(np.ones(input_shape, np.float32)).shape == output_shape
    assert set(layer.params) == {"W", "b"}
    assert layer.params["W"].shape[2] == input_shape[-1] // kwargs["groups"]
    again = layer_from_config(json.loads(json.dumps(layer.to_config())))     # saved and read back
    assert again.get_config() == layer.get_config()


@pytest.mark.parametrize("kwargs", [
    {"dilation_rate": 2}, {"dilation_rate": (1, 3), "padding": "valid"}, {"groups": 2},
    {"strides": (2, 1)}, {"stride": (1, 2), "padding": "valid"}, {"padding": 1}, {"padding": (2, 0)},
    {"padding": ((0, 1), (2, 1)), "strides": 2, "dilation_rate": 2, "groups": 2},
])
def test_conv2d_options_match_pytorch(kwargs):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 8, 4))
    layer = Conv2D(6, 3, **kwargs)
    Model([layer]).build(x.shape)
    layer.needs_input_grad = True
    W, b = rng.standard_normal(layer.params["W"].shape), rng.standard_normal(6)
    layer.params["W"], layer.params["b"] = W, b
    layer.grads["W"], layer.grads["b"] = np.zeros_like(W), np.zeros_like(b)
    out = layer.forward(x, training=True)
    up = rng.standard_normal(out.shape)
    dx = layer.backward(up)
    oh, ow, (pt, pb, pl, pr) = layer.geometry(9, 8)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    Wt = torch.tensor(W.transpose(3, 2, 0, 1).copy(), requires_grad=True)      # (F, C/groups, KH, KW)
    bt = torch.tensor(b, requires_grad=True)
    ref = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), Wt, bt, stride=layer.strides, dilation=layer.dilation_rate,
                   groups=layer.groups)
    ref.backward(torch.tensor(up.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(out, ref.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], Wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], bt.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("kwargs, message", [
    ({"groups": 4}, "groups must be a positive int that divides filters"),
    ({"groups": 0}, "groups"), ({"dilation_rate": 0}, "dilation_rate"), ({"padding": -1}, "padding"),
    ({"padding": "full"}, "padding"), ({"strides": (1, 0)}, "strides"), ({"kernel_initializer": "glorot"},
                                                                          "unknown initializer"),
])
def test_bad_conv_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Conv2D(6, 3, **kwargs)


def test_groups_must_divide_the_input_channels_and_stride_names_agree():
    with pytest.raises(ValueError, match="must divide the input channels"):
        Model([Conv2D(4, 3, groups=2)]).build((1, 5, 5, 3))
    with pytest.raises(TypeError, match="not both"):
        Conv2D(4, 3, stride=2, strides=3)
    assert Conv2D(4, 3, strides=2).stride == 2 and MaxPool2D(3, strides=1).stride == (1, 1)
    assert keras.layers.MaxPooling2D(pool_size=(2, 2), strides=(1, 1)).stride == (1, 1)
    with pytest.raises(TypeError, match="not both"):
        MaxPool2D(2, stride=1, strides=2)


def test_general_conv_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = Model([Conv2D(4, 3, dilation_rate=2, groups=2, activation="relu"), Conv2D(3, 2, strides=(2, 1), padding=1),
               BatchNorm2D(center=False, scale=False), Flatten(), Dense(5)], seed=0).build((1, 9, 9, 2))
    x = np.random.default_rng(0).random((3, 9, 9, 2), dtype=np.float32)
    path = m.export_onnx(str(tmp_path / "m.onnx"))
    sess = ort.InferenceSession(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, m.predict(x), rtol=1e-4, atol=1e-5)


# -- trainable = False ---------------------------------------------------------------------------
def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n)


def test_a_frozen_layer_is_not_trained_and_its_gradient_is_not_used():
    """Keras: a layer with trainable=False keeps its weights through fit (issue 26: a 'frozen'
    Dense moved by 0.045 in one epoch); compile's L2 decay and clipping skip it too."""
    x, y = _data()
    m = cnn(hidden=16)
    m.compile(optimizer="adam", lr=0.01, weight_decay=0.1, clip_norm=0.5)
    frozen = m.layers[-1]
    frozen.trainable = False
    before = {k: v.copy() for k, v in frozen.params.items()}
    m.fit(x, y, batch_size=16, epochs=2, verbose=0)
    for k, v in before.items():
        assert np.array_equal(frozen.params[k], v)
    a, b = m.frozen_ranges()[0]
    assert not m.grads[a:b].any()                      # counted as zero (so not in the clipping norm)
    assert not np.array_equal(m.layers[0].params["W"], cnn(hidden=16).layers[0].params["W"])   # the rest trained


def test_trainable_is_saved_and_works_for_a_users_layer(tmp_path):
    class Scale(Layer):                 # a user's own layer, defined in the test script
        def build(self, input_shape):
            self.add_param("s", (input_shape[-1],), "ones")
            super().build(input_shape)

        def forward(self, x, training=False):
            self._x = x
            return x * self.params["s"]

        def backward(self, grad):
            self.grads["s"][...] = (grad * self._x).reshape(-1, grad.shape[-1]).sum(0)
            return grad * self.params["s"]

    x, y = _data()
    m = Model([Flatten(), Scale(), Dense(10)], seed=0).compile(optimizer="sgd", lr=0.1)
    m.layers[1].trainable = False
    m.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.array_equal(m.layers[1].params["s"], np.ones(64, np.float32))
    assert m.layers[2].to_config().get("trainable", True) and m.layers[1].to_config()["trainable"] is False
    dpnn.register_layer(Scale)
    try:
        path = m.save(str(tmp_path / "m.h5"))
        loaded = Model.load(path)
    finally:
        dpnn.LAYER_REGISTRY.pop("Scale")
    assert loaded.layers[1].trainable is False and loaded.layers[2].trainable is True
    with pytest.raises(ValueError, match="trainable"):
        layer_from_config({"class": "Dense", "config": {"units": 2}, "trainable": "no"})


def test_a_frozen_batchnorm_keeps_its_statistics_and_uses_them():
    """Keras: BatchNormalization with trainable=False runs in inference mode inside fit."""
    x, y = _data()
    m = cnn(batchnorm=True)
    m.compile(optimizer="adam", lr=0.01)
    bn = next(layer for layer in m.layers if isinstance(layer, BatchNorm2D))
    bn.trainable = False
    state = m.state.copy()
    m.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.array_equal(m.state, state)
    out = bn.forward(np.full((2, 3, 3, bn.channels), 5.0, np.float32), training=True)
    np.testing.assert_allclose(out, bn.forward(np.full((2, 3, 3, bn.channels), 5.0, np.float32)), rtol=1e-6)


# -- BatchNormalization ---------------------------------------------------------------------------
def test_batchnorm_keras_options_match_pytorch_without_affine():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 3, 5))
    bn = BatchNorm2D(epsilon=1e-3, center=False, scale=False, momentum=0.8)
    Model([bn]).build(x.shape)
    assert bn.params == {} and bn.eps == bn.epsilon == 1e-3
    out = bn.forward(x, training=True)
    ref = torch.nn.BatchNorm2d(5, eps=1e-3, momentum=0.2, affine=False, dtype=torch.float64)
    want = ref(torch.tensor(x.transpose(0, 3, 1, 2).copy())).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.state["running_var"], ref.running_var.numpy(), rtol=1e-5)


@pytest.mark.parametrize("eps", [math.nan, -1e-5, math.inf, 0.0])
def test_batchnorm_eps_is_checked_in_the_constructor_and_in_a_stored_architecture(eps, tmp_path):
    """Issue 30: NaN/negative/infinite eps in a stored architecture gave NaN predictions."""
    with pytest.raises(ValueError, match="eps"):
        BatchNorm2D(eps=eps)
    m = Model([Flatten(), BatchNorm2D(), Dense(3)], seed=0).build((1, 4, 4, 1))
    path = m.save(str(tmp_path / "m.h5"))
    arch = os.path.splitext(path)[0] + ".json"
    entries = json.load(open(arch))
    entries[1]["config"]["eps"] = eps
    with open(arch, "w") as f:
        json.dump(entries, f)
    with pytest.raises((ValueError, WeightsError), match="eps"):
        Model.load(arch)


def test_an_empty_batch_leaves_the_running_statistics():
    bn = BatchNorm2D()
    Model([bn]).build((1, 3, 3, 2))
    bn.forward(np.ones((4, 3, 3, 2), np.float32), training=True)
    before = bn.state["running_mean"].copy(), bn.state["running_var"].copy()
    out = bn.forward(np.zeros((0, 3, 3, 2), np.float32), training=True)
    assert out.shape == (0, 3, 3, 2)
    assert np.array_equal(bn.state["running_mean"], before[0]) and np.array_equal(bn.state["running_var"], before[1])
    assert np.isfinite(bn.state["running_var"]).all()


# -- input_shape= and initializers ------------------------------------------------------------------
def test_input_shape_on_the_first_layer_builds_the_model():
    model = keras.Sequential([keras.layers.Dense(64, activation="relu", input_shape=(784,)),
                              keras.layers.Dense(10, activation="softmax")])
    assert model.built and model.input_shape == (None, 784) and model.output_shape == (None, 10)
    conv = keras.models.Sequential([keras.layers.Conv2D(4, 3, input_shape=(8, 8, 1)), keras.layers.Flatten()])
    assert conv.output_shape == (None, 256)


@pytest.mark.parametrize("name, check", [
    ("glorot_uniform", lambda w, fi, fo: np.abs(w).max() <= math.sqrt(6 / (fi + fo))),
    ("he_normal", lambda w, fi, fo: abs(w.std() / math.sqrt(2 / fi) - 1) < 0.05
     and np.abs(w).max() <= 2 * math.sqrt(2 / fi) / 0.8796 + 1e-6),
    ("he_uniform", lambda w, fi, fo: np.abs(w).max() <= math.sqrt(6 / fi)),
    ("lecun_normal", lambda w, fi, fo: abs(w.std() / math.sqrt(1 / fi) - 1) < 0.05),
    ("glorot_normal", lambda w, fi, fo: abs(w.std() / math.sqrt(2 / (fi + fo)) - 1) < 0.05),
    ("random_normal", lambda w, fi, fo: abs(w.std() / 0.05 - 1) < 0.05),
    ("random_uniform", lambda w, fi, fo: np.abs(w).max() <= 0.05),
    ("zeros", lambda w, fi, fo: not w.any()), ("ones", lambda w, fi, fo: (w == 1).all()),
])
def test_kernel_initializer_by_keras_name(name, check):
    """Keras's initializer statistics (keras/src/initializers/random_initializers_test.py)."""
    layer = Conv2D(64, 3, kernel_initializer=name, bias_initializer="ones")
    Model([layer], seed=0).build((1, 5, 5, 16))
    assert check(layer.params["W"], 3 * 3 * 16, 3 * 3 * 64)
    assert (layer.params["b"] == 1).all() and layer.get_config()["kernel_initializer"] == name
    dense = Dense(300, kernel_initializer=name)
    Model([dense], seed=0).build((1, 200))
    assert check(dense.params["W"], 200, 300)


def test_initializer_objects_and_functions():
    layer = Dense(4, kernel_initializer=initializers.RandomNormal(stddev=2.0, seed=1))
    Model([layer]).build((1, 3))
    again = Dense(4, kernel_initializer=initializers.RandomNormal(stddev=2.0, seed=1))
    Model([again]).build((1, 3))
    assert np.array_equal(layer.params["W"], again.params["W"])           # the seed decides
    f = Dense(2, kernel_initializer=lambda shape, rng: np.full(shape, 0.5))
    Model([f]).build((1, 3))
    assert (f.params["W"] == 0.5).all()
    with pytest.raises(TypeError, match="initializer"):
        Dense(2, kernel_initializer=3)


def test_he_default_spread_against_keras_glorot_uniform():
    """The figure in docs/keras.md: dpnn's He-normal default against Keras's glorot_uniform for a
    3x3 conv on one channel with 32 filters (seed-cnn's first layer)."""
    stds = []
    for init in ("he", "glorot_uniform"):
        layer = Conv2D(32, 3, kernel_initializer=init)
        Model([layer], seed=0).build((1, 28, 28, 1))
        stds.append(float(layer.params["W"].std()))
    ratio = stds[0] / stds[1]
    assert 5.3 < ratio < 6.2, ratio            # exactly sqrt(2/9) / sqrt(2/(9+288)) = 5.74


# -- utilities -------------------------------------------------------------------------------------
def test_to_categorical_of_any_shape():
    """keras/src/utils/numerical_utils_test.py: shapes (1,), (3,), (4, 3), (5, 4, 3), (3, 1), (3, 2, 1)."""
    num_classes = 5
    for shape, want in [((1,), (1, 5)), ((3,), (3, 5)), ((4, 3), (4, 3, 5)), ((5, 4, 3), (5, 4, 3, 5)),
                        ((3, 1), (3, 5)), ((3, 2, 1), (3, 2, 5))]:
        labels = np.random.default_rng(0).integers(0, num_classes, shape)
        one_hot = keras.utils.to_categorical(labels, num_classes)
        assert one_hot.shape == want
        assert np.array_equal(np.argmax(one_hot, -1).reshape(labels.shape), labels)
    assert dpnn.utils.to_categorical is keras.utils.to_categorical


def _write_mnist(directory, n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    arrays = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(os.path.join(directory, f"{stem}-images-idx3-ubyte.gz"), x)
        write_idx(os.path.join(directory, f"{stem}-labels-idx1-ubyte.gz"), y)
        arrays[stem] = (x, y)
    return arrays


def test_keras_datasets_load_data_as_keras_returns_it(tmp_path, monkeypatch):
    want = _write_mnist(str(tmp_path))
    monkeypatch.setenv("DPNN_MNIST_DIR", str(tmp_path))
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    assert x_train.dtype == y_train.dtype == np.uint8 and x_train.shape == (20, 28, 28)
    assert np.array_equal(x_train, want["train"][0]) and np.array_equal(y_test, want["t10k"][1])
    monkeypatch.setenv("DPNN_MNIST_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="mnist not found; put"):
        keras.datasets.mnist.load_data()


def test_fashion_mnist_load_data_says_how_to_install_it_when_missing(monkeypatch):
    import dpnn.datasets
    monkeypatch.setattr(dpnn.datasets, "FASHION_DIR", "/nonexistent/fashion")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        keras.datasets.fashion_mnist.load_data()


def test_keras_models_load_model(tmp_path):
    m = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3)], seed=0)
    path = m.save(str(tmp_path / "m.h5"))
    loaded = keras.models.load_model(path)
    x = np.ones((2, 4), np.float32)
    assert np.array_equal(loaded.predict(x), m.predict(x))


def test_import_dpnn_keras_covers_the_keras_io_namespaces():
    for name in ("layers", "optimizers", "callbacks", "losses", "utils", "datasets", "models"):
        assert hasattr(keras, name), name
    assert keras.layers.BatchNormalization is BatchNorm2D and keras.layers.Input is keras.Input
    assert keras.callbacks.EarlyStopping is dpnn.EarlyStopping
    for name in dir(dpnn.callbacks):            # whatever the callbacks module grows appears here
        if not name.startswith("_") and isinstance(getattr(dpnn.callbacks, name), type):
            assert getattr(keras.callbacks, name) is getattr(dpnn.callbacks, name), name
    for name in dir(dpnn.losses):
        if not name.startswith("_") and isinstance(getattr(dpnn.losses, name), type):
            assert getattr(keras.losses, name) is getattr(dpnn.losses, name), name


def test_freezing_a_layer_inside_a_residual_block_or_the_whole_model():
    from dpnn import Residual
    x, y = _data()
    block = Residual([Conv2D(1, 3), Conv2D(1, 3)])
    m = Model([block, Flatten(), Dense(10)], seed=0).build((1, 8, 8, 1)).compile(optimizer="adam", lr=0.01)
    block.layers[1].trainable = False
    inner = block.layers[1].params["W"].copy()
    m.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.array_equal(block.layers[1].params["W"], inner)
    assert len(m.frozen_ranges()) == 2                              # the inner conv's W and b
    m.trainable = False
    params = m.params.copy()
    m.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.array_equal(m.params, params) and not m.trainable
