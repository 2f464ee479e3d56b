"""Keras's callbacks held to Keras 3's own tests (keras/src/callbacks/*_test.py, translated: the
Keras names, arguments and expected values; dpnn's model and data): EarlyStopping, ReduceLROnPlateau,
LearningRateScheduler, CSVLogger, ModelCheckpoint, batch hooks and the history's Keras names."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

import dpnn
from dpnn import Callback, Dense, EarlyStopping, Model
from dpnn.callbacks import CSVLogger, History, LearningRateScheduler, ModelCheckpoint, ReduceLROnPlateau

from conftest import blobs, tiny


def dense_model(lr=0.1, optimizer="adam", seed=0) -> Model:
    """Keras's test model, Sequential([Dense(5), Dense(2)]), on 3 features."""
    model = Model([Dense(5), Dense(2)], seed=seed)
    model.compile("mse", optimizer, lr=lr)
    model.build((1, 3))
    return model


def features(n=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3), dtype=np.float32)
    return x, dpnn.utils.to_categorical(rng.integers(0, 2, n), 2)


def fit(model, *callbacks, epochs=2, validation=True, **kw):
    X, y = features(10, 0)
    kw.setdefault("validation_data", features(10, 1) if validation else None)
    return model.fit(X, y, epochs=epochs, batch_size=kw.pop("batch_size", 4), callbacks=list(callbacks),
                     verbose=kw.pop("verbose", 0), seed=0, **kw)


# -- EarlyStopping (early_stopping_test.py) -----------------------------------------------------
@pytest.mark.parametrize("mode, monitor, expected", [
    ("max", "val_loss", np.greater), ("min", "val_loss", np.less), ("auto", "val_loss", np.less),
    ("auto", "loss", np.less), ("auto", "acc", np.greater), ("auto", "val_accuracy", np.greater),
    ("auto", "accuracy", np.greater)])
def test_early_stopping_mode_sets_the_direction(mode, monitor, expected):
    stop = EarlyStopping(patience=0, monitor=monitor, mode=mode)
    X, y = blobs(40)
    tiny().fit(X, y, epochs=2, batch_size=10, validation_data=blobs(20, 1), callbacks=[stop], verbose=0)
    assert stop.monitor_op is expected


def test_early_stopping_unknown_monitor_or_mode_is_refused():
    with pytest.raises(ValueError, match="mode='max' or mode='min'"):
        EarlyStopping(monitor="unknown")
    with pytest.raises(ValueError, match="choose one of auto, min, max"):
        EarlyStopping(monitor="loss", mode="up")
    EarlyStopping(monitor="f1_score", mode="max")          # any name, once the direction is given


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_early_stopping_patience(patience):
    losses = [10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5]
    stopper = EarlyStopping(monitor="loss", patience=patience)
    stopper.set_model(dense_model())
    stopper.on_train_begin()
    for epoch, loss in enumerate(losses):
        stopper.on_epoch_end(epoch=epoch, logs={"loss": loss})
        if stopper.model.stop_training:
            break
    assert stopper.stopped_epoch == max(patience, 1) + 2


def test_early_stopping_default_patience_is_keras_zero():
    assert EarlyStopping().patience == 0


def test_early_stopping_defaults_are_keras_s():
    """Keras's class, Keras's defaults: val_loss, no restore (dpnn's own option asks for more)."""
    stopper = EarlyStopping()
    assert stopper.monitor == "val_loss" and stopper.restore_best_weights is False


def test_early_stopping_reuse():
    stopper = EarlyStopping(monitor="loss", patience=3, min_delta=1.0)
    model = tiny()
    X, y = blobs(40)
    for _ in range(2):
        history = model.fit(X, y, epochs=20, batch_size=10, callbacks=[stopper], verbose=0, seed=0)
        assert len(history.epoch) >= 3


def test_state_reset_across_fit_calls():
    stopper = EarlyStopping(monitor="loss", patience=3)
    stopper.set_model(dense_model())
    stopper.on_train_begin()
    stopper.best, stopper.wait, stopper.stopped_epoch, stopper.best_epoch = 0.1, 3, 5, 5
    stopper.on_train_begin()
    assert stopper.best is None and stopper.wait == 0 and stopper.stopped_epoch == 0 and stopper.best_epoch == 0


def test_early_stopping_with_baseline():
    stopper = EarlyStopping(monitor="loss", patience=3, baseline=1e-9)      # never beaten
    X, y = blobs(40)
    history = tiny().fit(X, y, epochs=20, batch_size=10, callbacks=[stopper], verbose=0, seed=0)
    assert len(history.epoch) >= 3


def drive(stopper, losses, stop_at=None) -> tuple[int, float]:
    """Keras's DummyModel test with a dpnn model: the weights of epoch e are all e."""
    model = dense_model()
    stopper.set_model(model)
    stopper.on_train_begin()
    trained = 0
    for epoch, loss in enumerate(losses):
        trained += 1
        model.params[:] = epoch
        stopper.on_epoch_end(epoch, logs={"val_loss": loss})
        if epoch == stop_at:
            model.stop_training = True
        if model.stop_training:
            break
    stopper.on_train_end()
    assert np.all(model.params == model.params[0])
    return trained, float(model.params[0])


def test_early_stopping_final_weights_when_restoring_model_weights():
    stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    assert drive(stop, [0.2, 0.15, 0.1, 0.11, 0.12])[1] == 2
    # no epoch beats the baseline: patience epochs, then the best of them
    stop = EarlyStopping(monitor="val_loss", patience=5, baseline=0.5, restore_best_weights=True)
    assert drive(stop, [0.9, 0.8, 0.7, 0.71, 0.72, 0.73]) == (5, 2)
    # another callback stops: the best is restored all the same (Keras 3)
    stop = EarlyStopping(monitor="val_loss", patience=5, baseline=0.5, restore_best_weights=True)
    assert drive(stop, [0.9, 0.8, 0.7, 0.71, 0.72, 0.73], stop_at=3) == (4, 2)


def test_early_stopping_with_start_from_epoch():
    X, y = blobs(40)
    for start, patience in ((2, 3), (2, 0)):
        stopper = EarlyStopping(monitor="loss", mode="max", patience=patience, start_from_epoch=start)
        history = tiny().fit(X, y, epochs=20, batch_size=10, callbacks=[stopper], verbose=0, seed=0)
        assert len(history.epoch) >= patience + start


class Snapshots(Callback):
    """The parameters and logs at each epoch end."""

    def on_train_begin(self, logs=None):
        self.params_at, self.logs_at = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.params_at.append(self.model.params.copy())
        self.logs_at.append(dict(logs))


class StopAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.stop_training = True


@pytest.mark.parametrize("stop_at", [None, 2])
def test_best_weights_restored_however_training_ends(stop_at):
    # 'loss' in mode 'max': the best epoch is the worst one, the first, never the last
    model, snaps = tiny(), Snapshots()
    stop = EarlyStopping(monitor="loss", mode="max", patience=100, restore_best_weights=True)
    extra = [StopAt(stop_at)] if stop_at is not None else []
    X, y = blobs(40)
    history = model.fit(X, y, epochs=4, batch_size=10, callbacks=[snaps, stop] + extra, verbose=0, seed=0)
    best = int(np.argmax(history["loss"]))
    assert len(history["loss"]) == (4 if stop_at is None else 3) and best != len(history["loss"]) - 1
    np.testing.assert_array_equal(model.params, snaps.params_at[best])
    assert stop.stopped_epoch == 0 and history.events[-1]["event"] == "restored_best_weights"


def test_missing_metric_warns_as_keras_and_trains_on():
    model, snaps = tiny(), Snapshots()
    stop = EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    X, y = blobs(40)
    with pytest.warns(UserWarning, match="Early stopping conditioned on metric `val_loss` which is not "
                                         "available. Available metrics are: loss,acc"):
        history = model.fit(X, y, epochs=4, batch_size=10, callbacks=[snaps, stop], verbose=0, seed=0)
    assert len(history["loss"]) == 4 and history.events == []
    np.testing.assert_array_equal(model.params, snaps.params_at[-1])     # not the untrained weights


def test_early_stopping_verbose_is_its_own(capsys):
    X, y = blobs(40)
    tiny().fit(X, y, epochs=4, batch_size=10, verbose=0, seed=0,
               callbacks=[EarlyStopping(monitor="loss", min_delta=10.0, verbose=1)])
    assert "Epoch 2: early stopping" in capsys.readouterr().out
    tiny().fit(X, y, epochs=4, batch_size=10, verbose=2, seed=0,
               callbacks=[EarlyStopping(monitor="loss", min_delta=10.0, verbose=0)])
    assert "early stopping" not in capsys.readouterr().out


# -- ReduceLROnPlateau (reduce_lr_on_plateau_test.py) -------------------------------------------
def test_reduces_lr_with_model_fit():
    model = dense_model(lr=0.1)
    fit(model, ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=100))
    assert model.optimizer.lr == pytest.approx(0.01)


def test_reduce_lr_verbose_logging(capsys):
    model = dense_model(lr=0.1)
    history = fit(model, ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=100, verbose=1))
    assert "ReduceLROnPlateau reducing learning rate to 0.01" in capsys.readouterr().out
    assert [e["event"] for e in history.events] == ["reduce_lr"]


def test_reduce_lr_honors_min_lr():
    model = dense_model(lr=0.1)
    fit(model, ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=10, min_lr=0.005),
        epochs=4)
    assert model.optimizer.lr == pytest.approx(0.005)


def test_reduce_lr_cooldown():
    model = dense_model(lr=0.1)
    fit(model, ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=100, cooldown=2),
        epochs=4)
    assert model.optimizer.lr == pytest.approx(0.001)


def test_reduce_lr_state_reset_across_fit_calls():
    reduce_lr = ReduceLROnPlateau(patience=1, factor=0.1, monitor="loss", min_delta=0, cooldown=2)
    reduce_lr.set_model(dense_model())
    reduce_lr.on_train_begin()
    reduce_lr.best, reduce_lr.wait, reduce_lr.cooldown_counter = 0.5, 3, 2
    reduce_lr.on_train_begin()
    assert reduce_lr.best is None and reduce_lr.wait == 0 and reduce_lr.cooldown_counter == 0


def test_reduce_lr_refuses_a_factor_of_one_and_warns_on_a_missing_metric():
    with pytest.raises(ValueError, match="does not support a factor"):
        ReduceLROnPlateau(factor=1.0)
    model = dense_model(lr=0.1)
    with pytest.warns(UserWarning, match="Learning rate reduction is conditioned on metric `val_loss`"):
        fit(model, ReduceLROnPlateau(patience=0), validation=False)
    assert model.optimizer.lr == pytest.approx(0.1)


# -- LearningRateScheduler (learning_rate_scheduler_test.py) ------------------------------------
def test_scheduler_updates_learning_rate():
    model = dense_model(optimizer="sgd", lr=0.01)
    fit(model, LearningRateScheduler(lambda step: 1.0 / (2.0 + step), verbose=1), epochs=1, validation=False)
    assert model.optimizer.lr == 0.5


def test_scheduler_verbose_logging(capsys):
    model = dense_model(optimizer="sgd", lr=0.01)
    fit(model, LearningRateScheduler(lambda step: 1.0 / (1.0 + step), verbose=1), epochs=1, validation=False)
    assert "LearningRateScheduler setting learning rate to 1.0" in capsys.readouterr().out


def test_schedule_dependent_on_previous_learning_rate():
    model = dense_model(lr=0.03)
    fit(model, LearningRateScheduler(lambda step, lr: lr / 2), epochs=2, validation=False)
    assert model.optimizer.lr == pytest.approx(0.03 / 4.0)


def test_learning_rate_in_history():
    history = fit(dense_model(optimizer="sgd", lr=0.01), LearningRateScheduler(lambda step, lr: 0.5), epochs=1,
                  validation=False)
    assert "learning_rate" in history.history
    assert type(history.history["learning_rate"][0]) is float and history.history["learning_rate"][0] == 0.5


def test_schedule_must_return_a_float():
    with pytest.raises(ValueError, match="should be a float"):
        fit(dense_model(), LearningRateScheduler(lambda step, lr: 1), epochs=1, validation=False)


# -- CSVLogger (csv_logger_test.py) -------------------------------------------------------------
def test_csv_logger(tmp_path):
    path, sep = tmp_path / "log.tsv", "\t"
    fit(dense_model(), CSVLogger(path, separator=sep), epochs=1)
    with open(path) as f:
        assert csv.Sniffer().sniff(f.read()).delimiter == sep
    logger = CSVLogger(path, separator=sep, append=True)
    fit(dense_model(), logger, epochs=1)
    fit(dense_model(), logger, epochs=2)
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and " ".join(lines).count("epoch") == 1        # one header
    assert all(line.count(sep) == lines[0].count(sep) for line in lines)
    assert lines[0].split(sep) == ["epoch", "accuracy", "learning_rate", "loss", "samples_per_s", "time",
                                   "val_accuracy", "val_loss"]


def test_csv_logger_rows_are_the_history(tmp_path):
    path = tmp_path / "log.csv"
    history = tiny().fit(*blobs(40), epochs=3, batch_size=10, validation_data=blobs(20, 1), verbose=0, seed=0,
                         callbacks=[CSVLogger(path)])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert [float(r[key]) for r in rows] == history.history[key]


# -- ModelCheckpoint (model_checkpoint_test.py) -------------------------------------------------
def classifier():
    model = Model([Dense(5), dpnn.Activation("relu"), Dense(3)], seed=0)
    model.compile("categorical_crossentropy", "sgd", lr=0.05)
    return model


def cls_data(n=30, seed=42):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (rng.standard_normal((n, 3)) + y[:, None]).astype(np.float32), y


def test_model_checkpoint_options(tmp_path):
    model, data, val = classifier(), cls_data(), cls_data(30, 7)
    path = str(tmp_path / "subdir" / "checkpoint.keras")
    for monitor, mode, best_only in (("val_loss", "auto", False), ("val_loss", "min", False),
                                     ("val_acc", "max", False), ("val_acc", "max", True)):
        model.fit(*data, batch_size=5, validation_data=val, epochs=1, verbose=0,
                  callbacks=[ModelCheckpoint(path, monitor=monitor, save_best_only=best_only, mode=mode)])
        assert os.path.exists(path)
        os.remove(path)
    with pytest.warns(UserWarning, match="Can save best model only with unknown available"):
        model.fit(*data, batch_size=5, validation_data=val, epochs=1, verbose=0,
                  callbacks=[ModelCheckpoint(path, monitor="unknown", save_best_only=True, mode="min")])
    assert os.path.exists(path)
    with pytest.raises(ValueError, match="choose one of auto, min, max"):
        ModelCheckpoint(path, mode="unknown")


@pytest.mark.parametrize("weights_only", [False, True])
def test_model_checkpoint_save_freq_in_batches(tmp_path, weights_only):
    model, data, val = classifier(), cls_data(), cls_data(30, 7)
    name = "checkpoint.epoch{epoch:02d}" + (".weights.h5" if weights_only else ".keras")
    path = str(tmp_path / name)
    model.fit(*data, batch_size=6, validation_data=val, epochs=10, verbose=0,   # 5 batches an epoch
              callbacks=[ModelCheckpoint(path, save_freq=15, save_weights_only=weights_only)])
    assert [e for e in range(1, 11) if os.path.exists(path.format(epoch=e))] == [3, 6, 9]
    with pytest.raises(ValueError, match="Unrecognized save_freq"):
        ModelCheckpoint(path, save_freq="invalid_save_freq")


def test_model_checkpoint_names_and_best_only(tmp_path):
    model, data, val = classifier(), cls_data(), cls_data(30, 7)
    path = str(tmp_path / "{epoch:02d}-{val_loss:.2f}.h5")
    history = model.fit(*data, batch_size=5, validation_data=val, epochs=4, verbose=0,
                        callbacks=[ModelCheckpoint(path, monitor="val_loss", save_best_only=True)])
    losses = history.history["val_loss"]
    improved = [e for e in range(4) if losses[e] < min(losses[:e], default=np.inf)]
    written = sorted(p for p in os.listdir(tmp_path) if p.endswith(".h5"))
    assert written == [f"{e + 1:02d}-{losses[e]:.2f}.h5" for e in improved]
    assert sorted(os.listdir(tmp_path)) == sorted(written + [p[:-3] + ".json" for p in written])   # no temp left
    last = Model.load(str(tmp_path / written[-1]))
    if improved[-1] == 3:                                  # the file holds that epoch's weights
        np.testing.assert_array_equal(last.params, model.params)
    np.testing.assert_allclose(last.evaluate(*val)[0], losses[improved[-1]], rtol=1e-5)


def test_model_checkpoint_weights_only_loads_back(tmp_path):
    model, data = classifier(), cls_data()
    path = str(tmp_path / "w.weights.h5")
    model.fit(*data, batch_size=5, epochs=2, verbose=0, callbacks=[ModelCheckpoint(path, save_weights_only=True)])
    other = classifier()
    other.build((1, 3))
    other.load_weights(path)
    np.testing.assert_array_equal(other.params, model.params)


# -- batch hooks (callback_test.py) -------------------------------------------------------------
class Hooks(Callback):
    def __init__(self):
        self.calls, self.batch_logs = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("train_batch_begin", batch))
        super().on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("train_batch_end", batch))
        self.batch_logs.append(dict(logs))
        super().on_train_batch_end(batch, logs)

    def on_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch))

    def on_test_begin(self, logs=None):
        self.calls.append(("test_begin", None))

    def on_test_end(self, logs=None):
        self.calls.append(("test_end", logs["loss"]))

    def on_train_end(self, logs=None):
        self.train_end = dict(logs)


def test_batch_hooks_run_every_step_with_keras_logs():
    hooks = Hooks()
    history = tiny().fit(*blobs(40), epochs=2, batch_size=16, validation_data=blobs(20, 1), verbose=0, seed=0,
                         callbacks=[hooks])
    per_epoch = [c for b in range(3) for c in (("train_batch_begin", b), ("batch_begin", b),
                                                ("train_batch_end", b), ("batch_end", b))]
    tests = [c for c in hooks.calls if c[0].startswith("test")]
    assert [c for c in hooks.calls if not c[0].startswith("test")] == per_epoch * 2
    assert tests == [("test_begin", None), ("test_end", history["val_loss"][0]),
                     ("test_begin", None), ("test_end", history["val_loss"][1])]
    logs = hooks.batch_logs[0]
    assert {"batch", "size", "loss", "accuracy", "acc", "lr"} <= set(logs) and logs["accuracy"] == logs["acc"]
    assert [log["size"] for log in hooks.batch_logs] == [16, 16, 8] * 2
    assert hooks.train_end["val_loss"] == history["val_loss"][-1] and hooks.train_end["epochs_run"] == 2


def test_model_state_is_current_on_batch_end():
    seen = []

    class CBK(Callback):                  # Keras 3's name of the hook
        def on_train_batch_end(self, batch, logs=None):
            seen.append((batch, self.model.optimizer.t, self.model.params.copy()))
    tiny().fit(*blobs(40), epochs=1, batch_size=8, verbose=0, seed=0, callbacks=[CBK()])
    assert [(b, t) for b, t, _ in seen] == [(b, b + 1) for b in range(5)]
    assert all(not np.array_equal(a[2], b[2]) for a, b in zip(seen, seen[1:]))


def test_stop_training_in_a_batch_hook_stops_after_that_batch():
    class StopAtBatch(Callback):
        def __init__(self):
            self.batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if batch == 1:
                self.model.stop_training = True
    stop = StopAtBatch()
    model = tiny()
    history = model.fit(*blobs(40), epochs=5, batch_size=8, verbose=0, seed=0, callbacks=[stop])
    assert stop.batches == 2 and model.optimizer.t == 2 and len(history["loss"]) == 1


def test_params_are_keras_and_own_attribute_wins():
    seen = {}

    class Params(Callback):
        def on_train_begin(self, logs=None):
            seen.update(self.params)

    class Own(Callback):
        def __init__(self):
            self.params = []              # a user's own attribute of that name stays theirs

        def on_epoch_end(self, epoch, logs=None):
            self.params.append(epoch)
    own = Own()
    tiny().fit(*blobs(40), epochs=2, batch_size=16, verbose=0, seed=0, callbacks=[Params(), own])
    assert seen == {"epochs": 2, "steps": 3, "verbose": 0} and own.params == [0, 1]


# -- the history's names ------------------------------------------------------------------------
def test_history_has_keras_names_as_real_keys():
    history = tiny().fit(*blobs(40), epochs=2, batch_size=10, validation_data=blobs(20, 1), verbose=0, seed=0)
    assert history.history.get("accuracy") is history["acc"] and "val_accuracy" in history.history
    assert history.history.get("learning_rate") == [0.01, 0.01] and "val_accuracy" in history.keys()
    back = json.loads(json.dumps(history))          # read back from JSON: two lists, continued as one
    more = tiny().fit(*blobs(40), epochs=3, initial_epoch=2, history=back, verbose=0, seed=0,
                      validation_data=blobs(20, 1))
    assert len(more["accuracy"]) == 3 and more["accuracy"] is more["acc"]
    assert back["accuracy"] is back["acc"] and back["val_accuracy"] is back["val_acc"]
    assert isinstance(more, History) and len(back["val_accuracy"]) == 3
    assert history.params == {"epochs": 2, "steps": 4, "verbose": 0} and history.epoch == [0, 1]


def test_keras_callbacks_namespace():
    import dpnn.keras as keras_module
    for keras in (dpnn, keras_module):
        for name in ("EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint", "CSVLogger", "LearningRateScheduler",
                     "TensorBoard", "Callback", "History"):
            assert getattr(keras.callbacks, name) is getattr(dpnn.callbacks, name)
