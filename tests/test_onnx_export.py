"""ONNX export: for every preset, every layer and its options, and residual blocks, onnx's checker
accepts the exported model and onnxruntime's predictions on real images equal ``model.predict``
within 1e-5; a layer without a translation is refused in one error; ``python -m launch.export``."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpnn import (
    Activation,
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    Model,
    Residual,
)
from dpnn.cli import export
from dpnn.cli.presets import PRESETS
from dpnn.datasets import available_datasets, load_dataset
from dpnn.layers import walk_layers

from conftest import ROOT

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-5
N_IMAGES = 48


@pytest.fixture(scope="module")
def digits():
    """(x (48, 28, 28, 1) float32 in [0, 1], labels): real test images, Fashion-MNIST or MNIST digits."""
    ready = {name for name, ok, _ in available_datasets() if ok}
    name = next((n for n in ("fashion-mnist", "mnist", "mnist-5k") if n in ready), None)
    if name is None:
        pytest.skip("no real images installed: python -m launch.data --prepare fashion-mnist (or mnist-5k)")
    _, test, _ = load_dataset(name)
    rows = np.random.default_rng(0).choice(len(test.X), N_IMAGES, replace=False)   # every class
    x = test.X[np.sort(rows)].astype(np.float32)
    return (x / 255 if test.X.dtype == np.uint8 else x), test.y[np.sort(rows)]


def images(digits, shape):
    """Real images of ``shape`` (H, W, C): cropped, padded or with extra channels made from them."""
    x = digits[0]
    H, W, C = shape
    x = np.pad(x, ((0, 0), (0, max(H - 28, 0)), (0, max(W - 28, 0)), (0, 0)))[:, :H, :W]
    chans = [x, x[:, :, ::-1], x[:, ::-1]]                     # the image, mirrored, upside down
    return np.ascontiguousarray(np.concatenate([chans[c % 3] for c in range(C)], axis=-1))


def unusual_batchnorm(model, x, seed=0):
    """Every BatchNorm2D's running statistics set from the data ``x`` (a training forward with
    momentum 0), then moved off them, and gamma and beta far from their defaults."""
    bns = [layer for layer in walk_layers(model.layers) if isinstance(layer, BatchNorm2D)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model.forward(x, training=True)
    rng = np.random.default_rng(seed)
    for bn, momentum in zip(bns, momenta):
        C, bn.momentum = bn.state["running_mean"].shape[0], momentum
        bn.state["running_mean"][...] += rng.normal(0, 0.2, C) * np.sqrt(bn.state["running_var"])
        bn.state["running_var"][...] *= rng.uniform(0.7, 1.4, C)
        bn.params["gamma"][...] = rng.uniform(0.5, 1.5, C)
        bn.params["beta"][...] = rng.normal(0, 0.2, C)


def onnx_predict(path, x, name="input_nhwc"):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [name]
    assert [o.name for o in session.get_outputs()] == ["output"]
    return session.run(None, {name: x})[0]


def assert_exports(model, x, tmp_path, name="model.onnx"):
    """Export, check with onnx's checker, and compare onnxruntime with dpnn; returns the max difference."""
    path = model.export_onnx(str(tmp_path / name))
    onnx.checker.check_model(onnx.load(path), full_check=True)
    want = model.predict(x)
    got = onnx_predict(path, x, "input_nhwc" if x.ndim == 4 else "input")
    assert got.shape == want.shape
    diff = float(np.abs(got - want).max())
    assert diff <= TOLERANCE, f"onnxruntime differs from dpnn by {diff:.3g} (outputs up to {np.abs(want).max():.3g})"
    return diff


def built(layers, x, seed=0):
    return Model(layers, seed=seed).build(x.shape)


# -- every preset, trained a step, at its real input sizes ------------------------------------
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)], ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_matches_onnxruntime(preset, shape, digits, tmp_path):
    x, y = images(digits, shape), digits[1]
    model = Model(PRESETS[preset](10), seed=1).compile("cce", "adam", lr=1e-3)
    model.train_on_batch(x[:32], y[:32])          # moves weights and running statistics off their start
    unusual_batchnorm(model, x)
    diff = assert_exports(model, x, tmp_path)
    print(f"{preset} {shape}: max |onnxruntime - dpnn| = {diff:.2e}")


# -- each layer and its options ---------------------------------------------------------------
CONVS = [(k, s, p) for k in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 3)] for s in (1, 2, 3) for p in ("same", "valid")]


@pytest.mark.parametrize("kernel,stride,padding", CONVS)
def test_conv_strides_and_padding(kernel, stride, padding, digits, tmp_path):
    x = images(digits, (27, 27, 2))             # odd size: 'same' pads one more after than before
    model = built([Conv2D(5, kernel, stride=stride, padding=padding)], x, seed=2)
    model.layers[0].params["b"][...] = np.linspace(-1, 1, 5)
    assert_exports(model, x, tmp_path)          # ends on the conv: the output is NHWC, as dpnn's


POOLS = [(cls, pool, stride, padding) for cls in (MaxPool2D, AvgPool2D)
         for pool, stride in [((2, 2), None), ((3, 3), None), ((3, 3), 1), ((3, 3), 2), ((2, 3), (1, 2))]
         for padding in ("same", "valid")]


@pytest.mark.parametrize("cls,pool,stride,padding", POOLS,
                         ids=[f"{c.__name__}-{p}-{s}-{q}" for c, p, s, q in POOLS])
@pytest.mark.parametrize("size", [28, 27])
def test_pool_sizes_strides_and_padding(cls, pool, stride, padding, size, digits, tmp_path):
    x = images(digits, (size, size, 1))
    model = built([Conv2D(3, (3, 3), padding="valid"), cls(pool, stride=stride, padding=padding)], x)
    model.layers[0].params["b"][...] = [-0.5, 0.0, 0.5]    # negative maxima: padding must not win
    assert_exports(model, x, tmp_path)


@pytest.mark.parametrize("func", ["relu", "sigmoid", "tanh", "softmax", "linear"])
def test_activations_on_images_and_vectors(func, digits, tmp_path):
    x = images(digits, (32, 32, 3))
    model = built([Activation(func), Conv2D(4, (3, 3), stride=2), Activation(func), Flatten(),
                   Dense(6), Activation(func)], x)        # softmax over the channels of an NHWC image too
    assert_exports(model, x, tmp_path)


def test_fused_activations_no_bias_and_batchnorm_on_vectors(digits, tmp_path):
    x, y = images(digits, (28, 28, 1)), digits[1]
    model = Model([Conv2D(8, (3, 3), activation="relu"), Conv2D(8, (3, 3), stride=2, use_bias=False),
                   BatchNorm2D(), Activation("relu"), Flatten(), Dense(16, use_bias=False), BatchNorm2D(),
                   Activation("relu"), Dense(16, activation="relu"), Dense(10)], seed=3).compile("cce", "sgd", lr=0.01)
    model.train_on_batch(x, y)
    unusual_batchnorm(model, x, seed=3)
    assert model.layers[6].input_shape == (None, 16)        # BatchNorm2D on (N, C)
    assert_exports(model, x, tmp_path)


def test_global_average_pooling(digits, tmp_path):
    x = images(digits, (32, 32, 3))
    assert_exports(built([Conv2D(8, (3, 3)), Activation("relu"), GlobalAvgPool2D(), Dense(10)], x), x, tmp_path)


def test_flatten_keeps_dpnn_feature_order(digits, tmp_path):
    """A Dense after Flatten reads (H, W, C) in dpnn's order, not NCHW's, on a multi-channel image."""
    x = images(digits, (28, 28, 3))
    model = built([Conv2D(4, (3, 3), stride=2), Flatten(), Dense(10)], x)
    assert_exports(model, x, tmp_path)
    assert_exports(built([Flatten(), Dense(10)], x), x, tmp_path, "mlp.onnx")   # no transpose at all


def test_dropout_is_exported_as_identity(digits, tmp_path):
    x, y = images(digits, (28, 28, 1)), digits[1]
    model = Model([Conv2D(4, (3, 3)), Dropout(0.5), Flatten(), Dense(32), Dropout(0.3), Dense(10)],
                  seed=4).compile("cce", "adam")
    model.train_on_batch(x, y)                      # a training step draws masks; predict uses none
    assert_exports(model, x, tmp_path)
    ops = [node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert "Dropout" not in ops and ops.count("Identity") >= 2


def test_export_writes_metadata_and_a_free_batch_size(digits, tmp_path):
    x = images(digits, (28, 28, 1))
    model = built(PRESETS["lenet5"](10), x)
    model.metadata = {"class_names": list("abcdefghij"), "dataset": "fashion-mnist"}
    proto = onnx.load(model.export_onnx(str(tmp_path / "m.onnx")))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 28, 28, 1]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props == {"class_names": json.dumps(list("abcdefghij")), "dataset": "fashion-mnist"}
    assert onnx_predict(str(tmp_path / "m.onnx"), x[:1]).shape == (1, 10)


# -- residual blocks --------------------------------------------------------------------------
def resnet_like(classes=10):
    """Conv-BN-ReLU stem, an identity block, a projection block with stride 2, a nested block."""
    def cbr(f, stride=1):
        return [Conv2D(f, (3, 3), stride=stride, use_bias=False), BatchNorm2D(), Activation("relu")]
    return [*cbr(8),
            Residual([*cbr(8), Conv2D(8, (3, 3), use_bias=False), BatchNorm2D()], activation="relu"),
            Residual([*cbr(16, 2), Conv2D(16, (3, 3)), BatchNorm2D()],
                     shortcut=[Conv2D(16, (1, 1), stride=2, use_bias=False), BatchNorm2D()], activation="relu"),
            Residual([Residual([Conv2D(16, (3, 3)), Dropout(0.2)], activation="tanh"), AvgPool2D((3, 3), 1, "same")]),
            GlobalAvgPool2D(), Dense(classes)]


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)], ids=["28x28x1", "32x32x3"])
def test_residual_model_matches_onnxruntime(shape, digits, tmp_path):
    x, y = images(digits, shape), digits[1]
    model = Model(resnet_like(), seed=5).compile("cce", "adam")
    model.train_on_batch(x[:32], y[:32])
    unusual_batchnorm(model, x, seed=5)
    diff = assert_exports(model, x, tmp_path)
    print(f"residual {shape}: max |onnxruntime - dpnn| = {diff:.2e}")
    ops = [node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert ops.count("Add") == 4


def test_residual_blocks_on_raw_input_and_on_vectors(digits, tmp_path):
    """A block first (its identity shortcut is the NHWC input itself), softmax after a sum, and a
    block of Dense layers with BatchNorm on (N, C)."""
    x = images(digits, (28, 28, 2))
    model = built([Residual([Conv2D(2, (3, 3))], activation="softmax"), Flatten(), Dense(32),
                   Residual([Dense(32), BatchNorm2D(), Activation("relu"), Dense(32)], activation="tanh"),
                   Dense(10)], x, seed=6)
    unusual_batchnorm(model, x, seed=6)
    assert_exports(model, x, tmp_path)


# -- what cannot be exported ------------------------------------------------------------------
class Scale(Layer):
    """A user's own layer: x * 2."""

    def forward(self, x, training=False):
        return x * 2

    def backward(self, grad):
        return grad * 2


class MyConv(Conv2D):
    """A subclass of a built-in layer may compute something else: refused too."""


def test_a_user_layer_is_refused_in_one_error(digits, tmp_path):
    x = images(digits, (28, 28, 1))
    model = built([Conv2D(4, (3, 3)), Scale(), Residual([MyConv(4, (3, 3)), Scale()]), Flatten(), Dense(10)], x)
    path = tmp_path / "m.onnx"
    with pytest.raises(TypeError) as info:
        model.export_onnx(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert "layer 1 (Scale)" in message
    assert "layer 2 (Residual) main 0 (MyConv)" in message and "layer 2 (Residual) main 1 (Scale)" in message
    assert "Conv2D" in message and "built-in layers" in message          # what it can export instead
    assert not path.exists() and os.listdir(tmp_path) == []


def test_an_unbuilt_model_and_a_bad_opset_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not built"):
        Model(PRESETS["mlp"](10)).export_onnx(str(tmp_path / "m.onnx"))
    model = Model(PRESETS["mlp"](10)).build((1, 28, 28, 1))
    for opset in (9, 10_000, "17"):
        with pytest.raises(ValueError, match="opset must be an integer"):
            model.export_onnx(str(tmp_path / "m.onnx"), opset=opset)
    assert os.listdir(tmp_path) == []


def test_without_onnx_one_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)          # import onnx now raises ImportError
    model = Model(PRESETS["mlp"](10)).build((1, 28, 28, 1))
    with pytest.raises(ImportError, match=r"pip install -e '\.\[onnx\]'"):
        model.export_onnx(str(tmp_path / "m.onnx"))
    model.save(str(tmp_path / "w.hdf5"))
    assert export.main(["--onnx", str(tmp_path / "w.hdf5"), str(tmp_path / "m.onnx")]) == 2
    assert not (tmp_path / "m.onnx").exists()


# -- python -m launch.export ------------------------------------------------------------------
@pytest.fixture
def saved(digits, tmp_path):
    """A trained fashion-bn saved as w.hdf5 + w.json; returns (path, images)."""
    x, y = images(digits, (28, 28, 1)), digits[1]
    model = Model(PRESETS["fashion-bn"](10), seed=7).compile("cce", "adam")
    model.train_on_batch(x[:32], y[:32])
    unusual_batchnorm(model, x, seed=7)
    return model.save(str(tmp_path / "w.hdf5")), x


@pytest.mark.slow
def test_cli_end_to_end(saved, tmp_path):
    weights, x = saved
    out = tmp_path / "exported" / "model.onnx"
    run = subprocess.run([sys.executable, "-m", "launch.export", "--onnx", weights, str(out), "--verify"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and "max |difference|" in run.stdout
    onnx.checker.check_model(onnx.load(str(out)))
    want = Model.load(weights).predict(x)
    assert np.abs(onnx_predict(str(out), x) - want).max() <= TOLERANCE


def test_cli_in_process_and_without_the_onnx_flag(saved, tmp_path, capsys):
    weights, x = saved
    assert export.main([weights, str(tmp_path / "m.onnx")]) == 0       # .onnx implies --onnx
    assert "input input_nhwc (N, 28, 28, 1) float32, output (N, 10)" in capsys.readouterr().out
    assert np.abs(onnx_predict(str(tmp_path / "m.onnx"), x) - Model.load(weights).predict(x)).max() <= TOLERANCE


BAD = {
    "missing weights": (["--onnx", "{d}/nope.hdf5", "{d}/m.onnx"], "nope.hdf5 not found"),
    "weights is a directory": (["--onnx", "{d}", "{d}/m.onnx"], "is a directory"),
    "corrupt weights": (["--onnx", "{d}/bad.hdf5", "{d}/m.onnx"], "bad.hdf5"),
    "out is a directory": (["--onnx", "{d}/w.hdf5", "{d}/sub"], "is a directory"),
    "out ends with /": (["--onnx", "{d}/w.hdf5", "{d}/sub/"], "names a directory"),
    "out is the weights": (["--onnx", "{d}/w.hdf5", "{d}/w.hdf5"], "is the model being exported"),
    "out is the architecture": (["--onnx", "{d}/w.hdf5", "{d}/w.json"], "is the model being exported"),
    "no format": (["{d}/w.hdf5", "{d}/m.bin"], "pass --onnx"),
    "old opset": (["--onnx", "{d}/w.hdf5", "{d}/m.onnx", "--opset", "9"], "opset 15 or newer"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_cli_bad_input_exits_2_with_one_line(case, saved, tmp_path, capsys):
    argv, expected = BAD[case]
    (tmp_path / "sub").mkdir()
    (tmp_path / "bad.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))   # an HDF5 signature, then nothing
    before = sorted(os.listdir(tmp_path))
    capsys.readouterr()
    assert export.main([a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m launch.export: error:") and expected in err, err
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "sub") == []


def test_cli_unparsable_flag_exits_2(saved, capsys):
    with pytest.raises(SystemExit) as info:
        export.main(["--onnx", saved[0], "m.onnx", "--opset", "x"])
    assert info.value.code == 2 and capsys.readouterr().err.count("\n") == 1
