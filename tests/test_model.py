"""Model: nn's README API, fit options (validation, early stopping, LR schedules, callbacks,
seeds), custom layers, BatchNorm state, thread configuration and in-process determinism."""
import json
import math
import os

import numpy as np
import pytest

import dpnn
from dpnn import Activation, BatchNorm2D, Callback, Conv2D, Dense, Flatten, Layer, MaxPool2D, Model
from dpnn.data import Dataset, stratified_split

from conftest import cnn


def blobs(n, size=8, classes=3, seed=0):
    """Learnable images (n, size, size, 1): class k lights up its own square, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.uniform(0, 0.3, (n, size, size, 1)).astype(np.float32)
    step = size // classes
    for k in range(classes):
        X[y == k, k * step:k * step + step, k * step:k * step + step, 0] += 0.7
    return X, y


def small_cnn(classes=3, seed=0, dropout=False, batchnorm=False):
    """The suite's CNN with a Dense(16) hidden layer [and Dropout(0.25)], neither compiled nor built."""
    return cnn(classes=classes, hidden=16, dropout=0.25 if dropout else 0.0, batchnorm=batchnorm,
               seed=seed, lr=None, input_shape=None)


class Recorder(Callback):
    """Records every hook call and the parameters at each epoch end."""

    def __init__(self):
        self.calls, self.params, self.logs = [], [], []

    def on_train_begin(self, logs):
        self.calls.append("train_begin")
        self.start_params = self.model.params.copy()

    def on_epoch_begin(self, epoch, logs):
        self.calls.append(f"epoch_begin {epoch}")

    def on_batch_end(self, step, logs):
        self.calls.append(f"batch_end {step}")

    def on_epoch_end(self, epoch, logs):
        self.calls.append(f"epoch_end {epoch}")
        self.params.append(self.model.params.copy())
        self.logs.append(dict(logs))

    def on_train_end(self, logs):
        self.calls.append("train_end")


# -- nn's README, section 6.1 ----------------------------------------------------------------
def test_seed_readme_section_6_1_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    X_all, y_all = blobs(96, size=28, classes=10)
    dataset = Dataset(X_all[:64], y_all[:64])
    X_val, y_val = X_all[64:], y_all[64:]
    X = X_val
    layers_list = [Conv2D(4, (3, 3)), Activation("relu"), MaxPool2D((2, 2)), Flatten(), Dense(10)]

    from dpnn import Model
    model = Model(layers_list)      # or create empty and call model.add(...)
    model.compile(loss='categorical_crossentropy', optimizer='adam', lr=1e-3, weight_decay=1e-4, clip_norm=5.0)
    history = model.fit(dataset, epochs=5, batch_size=64, num_classes=10, val_data=(X_val, y_val), early_stopping=True)
    preds = model.predict(X)        # (N, num_classes)
    model.save('my.hdf5')
    loaded = Model.load('my.hdf5')
    loaded.build((1, 28, 28, 1))    # ensure shapes before predict if not trained in-session

    assert preds.shape == (len(X), 10)
    assert set(history) >= {"loss", "acc", "val_acc", "lr"}
    assert 1 <= len(history["loss"]) <= 5
    assert os.path.isfile("my.hdf5") and os.path.isfile("my.json")
    np.testing.assert_array_equal(loaded.predict(X), preds)


def test_model_add_builds_the_same_network():
    a = small_cnn(seed=3)
    b = Model(seed=3)
    for layer in small_cnn(seed=3).layers:
        b.add(layer)
    x, _ = blobs(5)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


# -- build, summary, predict, weights ----------------------------------------------------------
def test_build_shapes_and_summary_counts():
    model = Model([Conv2D(6, 3, stride=2), Activation("relu"), MaxPool2D(2), Flatten(),
                   Dense(7), BatchNorm2D(), Dense(3, use_bias=False)]).build((1, 9, 11, 2))
    conv_out = (-(-9 // 2), -(-11 // 2), 6)                             # 'same', stride 2: ceil
    pool_out = (conv_out[0] // 2, conv_out[1] // 2, 6)
    flat = int(np.prod(pool_out))
    shapes = [conv_out, conv_out, pool_out, (flat,), (7,), (7,), (3,)]
    counts = [3 * 3 * 2 * 6 + 6, 0, 0, 0, flat * 7 + 7, 2 * 7, 7 * 3]
    assert [tuple(layer.output_shape[1:]) for layer in model.layers] == shapes
    assert [layer.param_count() for layer in model.layers] == counts
    text = model.summary(print_fn=None)
    lines = text.splitlines()
    for i, (layer, shape, count) in enumerate(zip(model.layers, shapes, counts)):
        row = next(line for line in lines if line.split()[:2] == [str(i), type(layer).__name__])
        assert "(None, " + ", ".join(map(str, shape)) + ")" in row
        assert row.split()[-1] == f"{count:,}"
    assert f"Total params: {sum(counts):,}" in text
    assert model.param_count() == sum(counts)


def test_summary_before_build_says_what_to_do():
    with pytest.raises(ValueError, match=r"build the model first"):
        small_cnn().summary()


def test_predict_is_batched_and_in_inference_mode():
    model = small_cnn(dropout=True, batchnorm=True)
    x, _ = blobs(23)
    model.build(x.shape)
    model.state[:] = np.random.default_rng(0).uniform(0.5, 1.5, model.state.size)  # running stats
    full = model.forward(x, training=False)
    for batch_size in (1, 4, 23, 100):
        np.testing.assert_allclose(model.predict(x, batch_size=batch_size), full, rtol=1e-6, atol=1e-6)
    assert model.predict(x[:0]).shape == (0, 3)


def test_predict_batches_do_not_alias_when_the_last_layer_is_not_dense():
    """Layers reuse work buffers between calls; no returned batch may be overwritten by the next."""
    model = Model([Conv2D(3, 3, activation="relu"), MaxPool2D(2)], seed=0)
    x, _ = blobs(9)
    x_before = x.copy()
    full = model.predict(x, batch_size=9)
    np.testing.assert_allclose(model.predict(x, batch_size=2), full, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(x, x_before)                       # inputs are never written


def test_get_and_set_weights_round_trip():
    a, b = small_cnn(seed=1, batchnorm=True), small_cnn(seed=2, batchnorm=True)
    x, _ = blobs(6)
    a.build(x.shape)
    b.build(x.shape)
    a.state[:] = np.random.default_rng(0).uniform(0.5, 1.5, a.state.size)
    weights = a.get_weights()
    assert len(weights) == sum(len(layer.params) + len(layer.state) for layer in a.layers)
    assert not np.array_equal(a.predict(x), b.predict(x))
    b.set_weights(weights)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    weights[0][...] += 1                                             # copies, not views
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    with pytest.raises(ValueError, match="expected 10 arrays, got 9"):
        b.set_weights(weights[:-1])
    with pytest.raises(ValueError, match=r"array 0: shape \(3, 3, 1, 5\) does not match"):
        b.set_weights([np.zeros((3, 3, 1, 5))] + weights[1:])


# -- training ----------------------------------------------------------------------------------
def test_train_on_batch_lowers_the_loss():
    model = small_cnn().compile("cce", "adam", lr=1e-2)
    x, y = blobs(32)
    losses = [model.train_on_batch(x, y)[0] for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]
    loss, acc = model.evaluate(x, y)
    assert loss < losses[0] and acc > 0.8


def test_fit_returns_history_and_learns():
    model = small_cnn().compile("cce", "adam", lr=1e-2)
    X, y = blobs(120, seed=1)
    Xv, yv = blobs(30, seed=2)
    history = model.fit(X, y, epochs=4, batch_size=16, val_data=(Xv, yv), seed=0, verbose=0)
    assert set(history) == {"loss", "acc", "val_loss", "val_acc", "lr",     # and Keras's names:
                            "accuracy", "val_accuracy", "learning_rate"}      # the same lists
    assert all(len(v) == 4 for v in history.values())
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_acc"][-1] > 0.8
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(Xv, yv)[0], rel=1e-6)
    assert history["lr"] == [1e-2] * 4


def test_fit_without_validation_has_no_val_keys():
    model = small_cnn().compile("cce", "sgd", lr=0.05)
    history = model.fit(blobs(20), epochs=2, batch_size=8, verbose=0)
    assert set(history) == {"loss", "acc", "lr", "accuracy", "learning_rate"}
    assert "val_loss" not in history.history and "val_accuracy" not in history.history
    assert len(history["loss"]) == 2


def test_validation_split_holds_out_a_stratified_sample():
    model = small_cnn().compile("cce", "adam", lr=1e-2)
    X, y = blobs(50)
    rec = Recorder()
    history = model.fit(X, y, epochs=2, batch_size=10, validation_split=0.2, callbacks=[rec],
                        seed=0, verbose=0)
    assert rec.calls.count("batch_end 3") == 2 and "batch_end 4" not in rec.calls   # 40 samples
    held = stratified_split(y, 0.2, 0)[1]                   # 10 samples, as many of each class
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(X[held], y[held])[0], rel=1e-6)
    assert history["val_acc"][-1] == pytest.approx(model.evaluate(X[held], y[held])[1])


def test_callback_hooks_are_called_in_order():
    model = small_cnn().compile("cce", "sgd", lr=0.01)
    rec = Recorder()
    model.fit(blobs(20), epochs=2, batch_size=8, callbacks=[rec], verbose=0)

    def epoch(e):
        return [f"epoch_begin {e}", "batch_end 0", "batch_end 1", "batch_end 2", f"epoch_end {e}"]
    assert rec.calls == ["train_begin", *epoch(0), *epoch(1), "train_end"]
    assert rec.model is model


def monitored_value(logs):
    """nn's README rule: validation accuracy if there is validation data, else accuracy."""
    return logs["val_acc"] if not math.isnan(logs.get("val_acc", math.nan)) else logs["acc"]


def noisy_fit(model, epochs, **kwargs):
    """Fit on learnable data, validating on labels of which half are random: val_acc rises, then stalls."""
    X, y = blobs(48, seed=1)
    Xv, yv = blobs(24, seed=2)
    yv[12:] = np.random.default_rng(0).integers(0, 3, 12)
    rec = Recorder()
    history = model.fit(X, y, epochs=epochs, batch_size=16, val_data=(Xv, yv), callbacks=[rec],
                        seed=0, verbose=0, **kwargs)
    return history, rec


def test_early_stopping_stops_and_restores_the_best_weights():
    model = small_cnn().compile("cce", "adam", lr=3e-3)
    history, rec = noisy_fit(model, 30, early_stopping=True, patience=2)
    n = len(history["loss"])
    assert n < 30, "the monitored accuracy on half-random labels should stall"
    values = [monitored_value(logs) for logs in rec.logs]
    best = int(np.argmax(values))                                    # first of equal maxima
    assert best > 0
    assert n - 1 - best == 2                                         # stopped after `patience` epochs
    np.testing.assert_array_equal(model.params, rec.params[best])
    assert not np.array_equal(model.params, rec.params[-1])


def test_early_stopping_min_delta():
    model = small_cnn().compile("cce", "adam", lr=3e-3)
    history, _ = noisy_fit(model, 10, early_stopping=True, patience=3, min_delta=1.0)
    assert len(history["loss"]) == 4                    # accuracy can never improve by 1.0


def test_plateau_schedule_reduces_lr_as_specified():
    model = small_cnn().compile("cce", "adam", lr=3e-3)
    factor, patience, lr_min = 0.5, 1, 1e-3
    history, rec = noisy_fit(model, 8, lr_schedule="plateau", lr_factor=factor,
                             lr_patience=patience, lr_min=lr_min)
    expected, lr, best, wait = [], 3e-3, -math.inf, 0
    for logs in rec.logs:
        expected.append(lr)                             # lr in force during this epoch
        value = monitored_value(logs)
        if value > best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                lr, wait = max(lr * factor, lr_min), 0
    assert history["lr"] == pytest.approx(expected)
    assert len(set(history["lr"])) > 1, "the schedule never fired; the test proves nothing"
    assert min(history["lr"]) >= lr_min


def test_cosine_schedule_follows_half_a_cosine():
    model = small_cnn().compile("cce", "sgd", lr=0.1)
    epochs, lr_min = 5, 0.01
    history = model.fit(blobs(16), epochs=epochs, batch_size=8, lr_schedule="cosine", lr_min=lr_min,
                        verbose=0)
    expected = [lr_min + (0.1 - lr_min) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert history["lr"] == pytest.approx(expected)
    assert history["lr"][0] == pytest.approx(0.1)


def test_unknown_lr_schedule_is_rejected():
    model = small_cnn().compile("cce", "adam")
    with pytest.raises(ValueError, match=r"lr_schedule must be 'plateau', 'cosine' or None"):
        model.fit(blobs(8), epochs=1, lr_schedule="step", verbose=0)


def test_same_seed_gives_identical_parameters():
    def run():
        model = small_cnn(seed=4, dropout=True).compile("cce", "adam", lr=1e-2)
        model.fit(blobs(40), epochs=2, batch_size=8, seed=11, verbose=0)
        return model.params.copy()

    first, second = run(), run()
    np.testing.assert_array_equal(first, second)
    other = small_cnn(seed=4, dropout=True).compile("cce", "adam", lr=1e-2)
    other.fit(blobs(40), epochs=2, batch_size=8, seed=12, verbose=0)
    assert not np.array_equal(first, other.params)


# -- custom layers, BatchNorm state -------------------------------------------------------------
def test_custom_layer_registered_with_the_decorator_saves_and_loads(tmp_path):
    @dpnn.register_layer
    class Scale(Layer):                     # nn's README example, registered
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def build(self, input_shape):
            self.output_shape = input_shape
            self.built = True

        def forward(self, x, training=False):
            return x * self.factor

        def backward(self, grad):
            return grad * self.factor

        def to_config(self):
            return {"class": "Scale", "config": {"factor": self.factor}}

    try:
        model = Model([Flatten(), Scale(2.5), Dense(3)], seed=0)
        x, _ = blobs(4)
        before = model.predict(x)
        path = str(tmp_path / "scaled.hdf5")
        model.save(path)
        with open(tmp_path / "scaled.json") as f:
            assert json.load(f)[1] == {"class": "Scale", "config": {"factor": 2.5}}
        loaded = Model.load(path)
        assert isinstance(loaded.layers[1], Scale) and loaded.layers[1].factor == 2.5
        np.testing.assert_array_equal(loaded.predict(x), before)
    finally:
        dpnn.LAYER_REGISTRY.pop("Scale", None)


def test_batchnorm_running_statistics_are_trained_saved_and_loaded(tmp_path):
    model = small_cnn(batchnorm=True).compile("cce", "adam", lr=1e-2)
    X, y = blobs(32)
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    bn = model.layers[2]
    assert not np.allclose(bn.state["running_mean"], 0) and not np.allclose(bn.state["running_var"], 1)
    path = str(tmp_path / "bn.hdf5")
    model.save(path)
    loaded = Model.load(path)
    for name in ("running_mean", "running_var"):
        np.testing.assert_array_equal(loaded.layers[2].state[name], bn.state[name])
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


# -- determinism ---------------------------------------------------------------------------------
def test_deterministic_mode_in_process():
    psutil = pytest.importorskip("psutil")

    before = {p.pid for p in psutil.Process().children(recursive=True)}   # e.g. an earlier forkserver

    class NoChildren(Callback):
        def on_batch_end(self, step, logs):
            assert {p.pid for p in psutil.Process().children(recursive=True)} <= before

    def run(**kwargs):
        model = small_cnn(seed=1, dropout=True).compile("cce", "adam", lr=1e-2)
        model.fit(blobs(50), epochs=2, batch_size=13, seed=3, verbose=0, callbacks=[NoChildren()],
                  **kwargs)
        return model.params.copy()

    det = run(deterministic=True)
    np.testing.assert_array_equal(det, run(deterministic=True, workers=1))
    default = run()
    np.testing.assert_array_equal(default, run(workers=1))
    np.testing.assert_allclose(det, default, rtol=1e-4, atol=1e-5)
