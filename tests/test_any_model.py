"""Any model on any number of workers: the user's own layers, loss and optimizer train exactly
as dpnn's do, and the API refuses what it cannot honour instead of ignoring it."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from dpnn import Dense, EarlyStopping, Flatten, Layer, Model
from dpnn.workers import DataParallel

from conftest import MPIEXEC, blobs, mpi_env, needs_mpi, tiny

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "user_model_script.py")


def run_script(tmp_path, *configs, launcher=()) -> dict:
    env = mpi_env(tmp_path)
    out = subprocess.run([*launcher, sys.executable, SCRIPT, *configs], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    return {r["config"]: r for r in map(json.loads, out.stdout.splitlines())}


@pytest.mark.slow
def test_custom_everything_is_bitwise_the_same_on_any_worker_count(tmp_path):
    """Seed section 10's Scale verbatim, a layer with defaults built with another value, a
    layer with parameters, a README-style loss, an optimizer overriding step(), BatchNorm and
    Dropout: in-process and on 1, 2, 3, 8 workers (and with the optimizer 'sharded')."""
    results = run_script(tmp_path, "local", "1", "2", "3", "8", "sharded")
    reference = results["local"]
    assert reference["shift_offset"] == 0.0 and np.isfinite(reference["loss"]).all()
    for config, r in results.items():
        assert r["sha"] == reference["sha"], f"{config}: weights differ from the in-process run"
        assert r["loss"] == reference["loss"], config


@needs_mpi
def test_custom_everything_over_two_mpi_ranks_is_bitwise_the_in_process_run(tmp_path):
    local = run_script(tmp_path, "local")["local"]
    mpi = run_script(tmp_path, "mpi", launcher=(MPIEXEC, "-n", "2"))["mpi"]
    assert mpi["sha"] == local["sha"] and mpi["loss"] == local["loss"]


# -- small models for the API checks ---------------------------------------------------------------
class Doubler(Layer):
    def __init__(self, factor=2.0):
        super().__init__()
        self.factor = factor

    def forward(self, x, training=False):
        return x * self.factor

    def backward(self, grad):
        return grad * self.factor


def test_a_layer_keeps_the_values_it_was_built_with_not_its_defaults():
    model = Model([Flatten(), Doubler(0.0), Dense(2)], seed=0).compile("cce", "sgd", lr=0.1)
    model.build((1, 6, 6, 1))
    clone = model.portable()
    assert clone.layers[1].factor == 0.0 and clone.layers[1] is not model.layers[1]
    assert clone.params is None and all(not layer.params for layer in clone.layers)
    assert model.layers[2].params["W"].shape == (36, 2)      # the original keeps its arrays


@pytest.mark.parametrize("workers", [1, 2])
def test_validation_data_is_the_keras_name_of_val_data(workers):
    X, y = blobs()
    history = tiny().fit(X, y, validation_data=(X[:10], y[:10]), epochs=1, batch_size=10, verbose=0,
                         workers=workers, seed=0)
    assert np.isfinite(history["val_acc"]).all()


@pytest.mark.parametrize("workers", [1, 2])
def test_misspelt_fit_keywords_are_refused_with_a_suggestion(workers):
    X, y = blobs()
    with pytest.raises(TypeError, match=r"fit\(\) got an unexpected keyword argument 'epoch'.*epochs"):
        tiny().fit(X, y, epoch=3, workers=workers, verbose=0)
    with pytest.raises(TypeError, match="both val_data and validation_data"):
        tiny().fit(X, y, val_data=(X, y), validation_data=(X, y), verbose=0)


def test_early_stopping_takes_keras_names():
    X, y = blobs()
    stop = EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=False)
    assert stop.restore_best is False
    tiny().fit(X, y, val_data=(X, y), epochs=3, batch_size=10, verbose=0, callbacks=[stop], seed=0)
    with pytest.raises(ValueError, match="monitor"):
        EarlyStopping(monitor="f1")


def test_a_model_owned_by_an_open_data_parallel_cannot_be_trained_elsewhere():
    X, y = blobs()
    model = tiny()
    model.build(X.shape)
    with DataParallel(model, workers=2) as dp:
        dp.train_step(X[:10], y[:10])
        for action in (lambda: model.fit(X, y, workers=2, verbose=0),
                       lambda: model.train_on_batch(X[:10], y[:10]),
                       lambda: model.set_weights(model.get_weights()),
                       lambda: DataParallel(model, workers=2).start()):
            with pytest.raises(RuntimeError, match="open DataParallel"):
                action()
    model.fit(X, y, epochs=1, verbose=0)        # closed: the model is free again


def test_label_width_is_checked_before_any_worker_starts():
    psutil = pytest.importorskip("psutil")
    X, y = blobs()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match=r"do not match the model's output \(N, 2\)"):
        tiny().fit(X, np.eye(3)[y], workers=2, verbose=0)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_compile_accepts_keras_metrics_and_names_bad_ones():
    tiny().compile("cce", "adam", metrics=["accuracy"])
    with pytest.raises(ValueError, match="metrics"):
        tiny().compile("cce", "adam", metrics=["f1"])


def test_predict_on_one_image_suggests_the_batch_axis():
    X, _ = blobs()
    model = tiny()
    with pytest.raises(ValueError, match=r"x\[None\]"):
        model.predict(X[0])                                  # unbuilt: building fails
    model.build(X.shape)
    with pytest.raises(ValueError, match=r"x\[None\]"):
        model.predict(X[0])


def test_unscaled_integer_images_are_mentioned():
    X, y = blobs()
    images = (np.clip(X, 0, 1) * 255).astype(np.uint8)
    with pytest.warns(UserWarning, match="X / 255"):
        tiny().fit(images, y, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny().fit(X, y, epochs=1, verbose=0)


def test_fit_says_what_it_runs_before_training(capsys):
    X, y = blobs()
    tiny().fit(X, y, epochs=1, batch_size=10, workers=2, threads_per_worker=1, seed=0)
    err = capsys.readouterr()
    text = err.out + err.err
    assert "on 2 worker processes x 1 BLAS thread" in text and "1 epoch," in text


def test_submodules_are_attributes_of_the_package():
    code = ("import dpnn; "
            "print(dpnn.datasets.__name__, dpnn.gradcheck.__name__, dpnn.digits.__name__, dpnn.comm.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["dpnn.datasets", "dpnn.gradcheck", "dpnn.digits", "dpnn.comm"], out.stderr


class Unpicklable(Layer):
    def __init__(self):
        super().__init__()
        import threading
        self.lock = threading.Lock()

    def forward(self, x, training=False):
        return x

    def backward(self, grad):
        return grad


def test_a_layer_that_cannot_travel_is_named():
    X, y = blobs()
    model = Model([Flatten(), Unpicklable(), Dense(2)], seed=0).compile("cce", "sgd", lr=0.1)
    with pytest.raises(TypeError, match=r"layer 1 \(Unpicklable\) cannot be sent to the worker processes"):
        model.fit(X, y, workers=2, verbose=0)


class MeanAbsLoss:
    """README style: forward(y_pred, y_true) -> mean; backward(denominator=None)."""
    def forward(self, y_pred, y_true):
        self.d = y_pred - np.eye(y_pred.shape[1], dtype=y_pred.dtype)[y_true]
        return float(np.abs(self.d).sum(axis=1).mean())

    def backward(self, denominator=None):
        return np.sign(self.d) / (denominator or len(self.d))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_readme_loss_trains_and_reports_its_sum(workers):
    X, y = blobs()
    model = tiny().compile(loss=MeanAbsLoss(), optimizer="sgd", lr=0.05)
    history = model.fit(X, y, epochs=2, batch_size=10, verbose=0, workers=workers, seed=0,
                        deterministic=True)
    assert history["loss"][1] < history["loss"][0]
    reference = tiny().compile(loss=MeanAbsLoss(), optimizer="sgd", lr=0.05)
    reference.fit(X, y, epochs=2, batch_size=10, verbose=0, seed=0, deterministic=True)
    np.testing.assert_array_equal(model.params, reference.params)


def test_every_engine_implements_the_whole_contract():
    import inspect

    from dpnn.distributed import DistributedEngine
    from dpnn.engine import Engine, LocalEngine
    methods = {n for n, v in vars(Engine).items() if callable(v) and not n.startswith("_")}
    assert methods == {"train_step", "place_data", "train_rows", "evaluate", "sync_state", "close", "describe"}
    for cls in (LocalEngine, DataParallel, DistributedEngine):
        for name in methods:
            ours = inspect.signature(getattr(Engine, name))
            theirs = inspect.signature(getattr(cls, name))
            assert list(theirs.parameters)[:len(ours.parameters)] == list(ours.parameters), (cls, name)


def test_fit_passes_on_exactly_the_engines_options():
    import inspect

    from dpnn.distributed import DistributedEngine
    from dpnn.training import ENGINE_OPTIONS
    from dpnn.workers import PoolNode
    fit_own = {"model", "workers", "threads_per_worker", "deterministic", "augment", "seed", "self",
               "comm", "pool_options", "ranks", "batch_size"}          # given by fit itself, or internal
    pool = set(inspect.signature(PoolNode.__init__).parameters) - fit_own
    mpi = set(inspect.signature(DistributedEngine.__init__).parameters) - fit_own
    assert ENGINE_OPTIONS == pool | mpi | {"backend"}
