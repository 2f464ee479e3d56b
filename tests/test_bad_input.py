"""User mistakes get one readable error that says what to do (issue 2, "Bad input")."""
import numpy as np
import pytest

import dpnn
from dpnn import Activation, BatchNorm2D, Callback, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Model
from dpnn.errors import DataError
from dpnn.training import TrainingDiverged

from conftest import cnn


def images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, n)


def bare_cnn(seed=0):
    """The suite's CNN with 3 classes, neither compiled nor built."""
    return cnn(classes=3, seed=seed, lr=None, input_shape=None)


def compiled(**kwargs):
    return bare_cnn().compile("cce", kwargs.pop("optimizer", "adam"), **kwargs)


# -- architecture and shapes --------------------------------------------------------------------
def test_dense_on_images_says_insert_flatten():
    model = Model([Conv2D(4, 3), Dense(10)])
    with pytest.raises(ValueError, match=r"Dense expects a 2-D input .* got shape \(None, 8, 8, 4\); "
                                         r"insert Flatten\(\) before Dense"):
        model.build((1, 8, 8, 1))
    with pytest.raises(ValueError, match=r"insert Flatten\(\)"):
        Model([Dense(10)]).predict(images()[0])
    with pytest.raises(ValueError, match=r"insert Flatten\(\)"):
        Model([Dense(3)]).compile("cce", "sgd").fit(*images(), verbose=0)


def test_conv_on_flat_input_names_the_expected_layout():
    with pytest.raises(ValueError, match=r"Conv2D expects a 4-D input .* NHWC images \(N, H, W, C\)"):
        Model([Conv2D(4, 3)]).build((1, 64))


def test_valid_window_larger_than_the_input():
    with pytest.raises(ValueError, match=r"window 5 is larger than the input \(4\) with padding='valid'"):
        Model([Conv2D(2, 5, padding="valid")]).build((1, 4, 4, 1))


@pytest.mark.parametrize("bad_shape, message", [
    ((5, 8, 8), r"input of shape \(5, 8, 8\) does not match the model, which expects \(N, 8, 8, 1\); "
                r"add the channel axis with x\[\.\.\., None\]"),
    ((5, 9, 8, 1), r"input of shape \(5, 9, 8, 1\) does not match the model, which expects \(N, 8, 8, 1\)"),
    ((5, 8, 8, 3), r"expects \(N, 8, 8, 1\)"),
])
def test_predict_input_shape_mismatch(bad_shape, message):
    model = bare_cnn().build((1, 8, 8, 1))
    with pytest.raises(ValueError, match=message):
        model.predict(np.zeros(bad_shape, np.float32))


def test_predict_non_numeric_input():
    model = bare_cnn().build((1, 8, 8, 1))
    with pytest.raises(TypeError, match=r"inputs must be numeric arrays, got dtype <U1"):
        model.predict(np.full((2, 8, 8, 1), "a"))


def test_fit_input_shape_mismatch_on_a_built_model():
    model = compiled()
    model.build((1, 8, 8, 1))
    with pytest.raises(ValueError, match=r"which expects \(N, 8, 8, 1\)"):
        model.fit(np.zeros((4, 7, 7, 1), np.float32), np.zeros(4, int), verbose=0)


def test_build_of_a_built_model_for_another_shape():
    model = bare_cnn().build((1, 8, 8, 1))
    with pytest.raises(ValueError,
                       match=r"built for inputs \(8, 8, 1\), not \(9, 9, 1\); create a new Model"):
        model.build((1, 9, 9, 1))


def test_model_structure_mistakes():
    with pytest.raises(TypeError, match=r"Model.add expects a dpnn Layer, got str"):
        Model().add("Dense")
    with pytest.raises(ValueError, match=r"the model has no layers"):
        Model().build((1, 4))
    model = bare_cnn().build((1, 8, 8, 1))
    with pytest.raises(ValueError, match=r"cannot add layers to a built model"):
        model.add(Dense(2))


# -- labels -------------------------------------------------------------------------------------
def test_labels_out_of_range():
    X, y = images()
    y[3] = 3
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]; found values in \[0, 3\]"):
        compiled().fit(X, y, verbose=0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] for a model with 3 outputs; "
                                         r"found values in \[0, 3\]"):
        compiled().train_on_batch(X, y)
    y[3] = -1
    with pytest.raises(ValueError, match=r"found values in \[-1, 2\]"):
        compiled().fit(X, y, verbose=0)
    with pytest.raises(DataError, match=r"labels must be >= 0, found -1"):
        dpnn.Dataset(X, y)


def test_labels_out_of_range_for_num_classes():
    X, y = images()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        compiled().fit(X, y, num_classes=2, verbose=0)


def test_labels_of_the_wrong_length():
    X, y = images()
    with pytest.raises(ValueError, match=r"12 inputs but 11 labels; they must have the same length"):
        compiled().fit(X, y[:-1], verbose=0)
    with pytest.raises(ValueError, match=r"got 11 labels for 12 samples"):
        compiled().train_on_batch(X, y[:-1])
    with pytest.raises(ValueError, match=r"4 inputs but 3 labels"):
        compiled().fit(X, y, val_data=(X[:4], y[:3]), verbose=0)
    with pytest.raises(DataError, match=r"y has shape \(11,\) but X has 12 samples"):
        dpnn.Dataset(X, y[:-1])


def test_one_hot_labels_of_the_wrong_width():
    X, y = images()
    with pytest.raises(ValueError, match=r"labels of shape \(12, 5\) do not match the model's "
                                         r"output \(N, 3\); pass one-hot rows of width 3"):
        compiled().fit(X, np.eye(5)[y], verbose=0)


def test_fractional_labels():
    X, y = images()
    with pytest.raises(ValueError, match=r"labels must be whole numbers"):
        compiled().train_on_batch(X, y + 0.5)


def test_mse_targets_of_the_wrong_shape():
    X, _ = images()
    model = bare_cnn().compile("mse", "sgd")
    with pytest.raises(ValueError,
                       match=r"mse targets of shape \(12, 2\) do not match predictions \(12, 3\)"):
        model.train_on_batch(X, np.zeros((12, 2)))


def test_missing_labels():
    with pytest.raises(ValueError, match=r"no labels: pass fit\(dataset\), fit\(\(X, y\)\) or fit\(X, y\)"):
        compiled().fit(images()[0], verbose=0)


# -- names and settings --------------------------------------------------------------------------
def test_unknown_optimizer():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adagrad'; choose one of 'sgd', 'adam', 'adamw', "
                                         r"'rmsprop' or pass an Optimizer"):
        bare_cnn().compile("cce", "adagrad")


def test_optimizer_arguments_it_does_not_take():
    with pytest.raises(TypeError, match=r"bad optimizer arguments for 'sgd'.*beta1"):
        bare_cnn().compile("cce", "sgd", beta1=0.9)


def test_unknown_loss():
    with pytest.raises(ValueError,
                       match=r"unknown loss 'hinge'; choose one of .*categorical_crossentropy.*mse"):
        bare_cnn().compile("hinge", "adam")


def test_unknown_activation():
    with pytest.raises(ValueError,
                       match=r"unknown activation 'gelu'; choose one of relu, sigmoid, tanh, softmax"):
        Activation("gelu")


@pytest.mark.parametrize("make, message", [
    (lambda: Conv2D(0), r"filters must be a positive int, got 0"),
    (lambda: Conv2D(4, padding="full"), r"padding must be 'same', 'valid', an int or a pair, got 'full'"),
    (lambda: Conv2D(4, (3, 3, 3)), r"kernel_size must be a positive int or a pair of them"),
    (lambda: Conv2D(4, stride=0), r"stride must be a positive int or a pair of them, got 0"),
    (lambda: Dense(-2), r"units must be a positive int, got -2"),
    (lambda: MaxPool2D(0), r"pool_size must be a positive int or a pair"),
    (lambda: Dropout(1.0), r"Dropout rate must be in \[0, 1\), got 1.0"),
    (lambda: BatchNorm2D(momentum=1.5), r"BatchNorm2D momentum must be in \[0, 1\), got 1.5"),
])
def test_bad_layer_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("compile_kwargs, message", [
    ({"lr": -0.1}, r"learning rate must be positive, got -0.1"),
    ({"optimizer": "sgd", "momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
    ({"weight_decay": -1.0}, r"weight_decay \(L2 added to the gradient\) must be >= 0, got -1.0"),
    ({"clip_norm": 0.0}, r"clip_norm must be positive, got 0.0"),
])
def test_bad_compile_settings(compile_kwargs, message):
    with pytest.raises(ValueError, match=message):
        compiled(**compile_kwargs)


@pytest.mark.parametrize("fit_kwargs, message", [
    ({"validation_split": 1.0}, r"validation_split must be in \[0, 1\), got 1.0"),
    ({"epochs": -1}, r"epochs must be an int >= 0 and batch_size an int >= 1"),
    ({"batch_size": 0}, r"epochs must be an int >= 0 and batch_size an int >= 1"),
    ({"lr_schedule": "plateau", "lr_factor": 2.0}, r"lr_factor must be in \(0, 1\), got 2.0"),
])
def test_bad_fit_settings(fit_kwargs, message):
    with pytest.raises(ValueError, match=message):
        compiled().fit(*images(), verbose=0, **fit_kwargs)


def test_fit_before_compile():
    with pytest.raises(ValueError, match=r"call model.compile\(loss=..., optimizer=...\) before training"):
        bare_cnn().fit(*images(), verbose=0)


# -- NaN data and divergence ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_in_training_data(bad):
    X, y = images()
    X[5, 2, 3, 0] = bad
    with pytest.raises(ValueError, match=r"the inputs contain NaN or infinite values; clean the data first"):
        compiled().fit(X, y, verbose=0)
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        compiled().fit(*images(), val_data=(X, y), verbose=0)
    with pytest.raises(DataError, match=r"X has NaN/inf values in 1 samples \(first: index 5\)"):
        dpnn.Dataset(X, y)


def test_nan_in_labels():
    X, y = images()
    one_hot = np.eye(3)[y]
    one_hot[2, 1] = np.nan
    for model in (compiled(), bare_cnn().compile("mse", "sgd")):
        with pytest.raises(ValueError, match=r"the labels contain NaN or infinite values"):
            model.fit(X, one_hot, verbose=0)
    with pytest.raises(ValueError, match=r"the labels contain NaN or infinite values"):
        compiled().evaluate(X, np.where(y == 0, np.inf, y))


def test_labels_that_are_not_numbers():
    X, _ = images()
    with pytest.raises(ValueError, match=r"labels must be numbers .* got dtype <U3"):
        compiled().fit(X, np.array(["cat"] * 12), verbose=0)


HUGE_LR = 1e38     # one SGD step takes weights near float32's limit: the next forward overflows


def linear_mlp():
    """No ReLU that a huge step could silence: after one such step the logits overflow to inf."""
    return Model([Flatten(), Dense(16), Dense(3)], seed=0).compile("cce", "sgd", lr=0.05)


class RecordParams(Callback):
    """Parameters at the start and at each epoch end; optionally blows up the lr after one epoch."""

    def __init__(self, explode_after=None):
        self.explode_after, self.epoch_params = explode_after, []

    def on_train_begin(self, logs):
        self.start = self.model.params.copy()

    def on_epoch_end(self, epoch, logs):
        self.epoch_params.append(self.model.params.copy())
        if epoch == self.explode_after:
            self.model.optimizer.lr = HUGE_LR


def test_divergence_names_epoch_and_step_and_keeps_the_best_weights():
    model = linear_mlp()
    X, y = images(24)
    rec = RecordParams(explode_after=0)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged) as info:
        model.fit(X, y, epochs=3, batch_size=8, callbacks=[rec], shuffle=False, verbose=0)
    # epoch 2 step 1 still runs on good weights, its update overflows, step 2's loss is not finite
    assert "at epoch 2, step 2" in str(info.value)
    assert "lower the learning rate or set clip_norm" in str(info.value)
    assert isinstance(info.value, FloatingPointError)
    assert np.isfinite(model.params).all()
    np.testing.assert_array_equal(model.params, rec.epoch_params[0])


def test_divergence_in_the_first_epoch_restores_the_initial_weights():
    model = linear_mlp()
    model.optimizer.lr = HUGE_LR
    rec = RecordParams()
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged, match=r"epoch 1, step 2"):
        model.fit(*images(24), epochs=2, batch_size=8, callbacks=[rec], verbose=0)
    assert rec.epoch_params == []
    np.testing.assert_array_equal(model.params, rec.start)


@pytest.mark.parametrize("optimizer, kwargs", [("adam", {}), ("sgd", {"momentum": 0.9})])
def test_training_continues_after_divergence_with_a_lower_lr(optimizer, kwargs):
    """Following the message's advice works: the optimizer's moments are rolled back with the weights."""
    model = Model([Flatten(), Dense(16), Dense(3)], seed=0).compile("cce", optimizer, lr=0.05, **kwargs)
    X, y = images(24)
    rec = RecordParams(explode_after=0)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged):
        model.fit(X, y, epochs=3, batch_size=8, callbacks=[rec], verbose=0)
    slots = model.optimizer.slots[0]
    assert slots and all(np.isfinite(v).all() for v in slots.values())
    assert model.optimizer.t == 3 and model.optimizer.lr == 0.05     # as after epoch 1's 3 steps
    model.optimizer.lr = 1e-3
    history = model.fit(X, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history["loss"]).all() and np.isfinite(model.params).all()


def test_a_diverged_model_can_still_be_saved_and_used(tmp_path):
    model = linear_mlp()
    model.optimizer.lr = HUGE_LR
    X, y = images(24)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged):
        model.fit(X, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(model.predict(X)).all()
    model.save(str(tmp_path / "w.hdf5"))
    np.testing.assert_array_equal(Model.load(str(tmp_path / "w.hdf5")).predict(X), model.predict(X))
