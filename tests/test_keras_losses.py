"""Keras's losses as Keras's own tests use them: cases and expected values translated from Keras 3's
``keras/src/losses/losses_test.py`` (``assertAlmostEqual`` there is 3 decimals), then soft targets,
label smoothing and the loss/output matches that ``compile`` makes."""
import numpy as np
import pytest

import dpnn
from dpnn import Activation, Dense, Flatten, Model
from dpnn.losses import (
    BinaryCrossentropy,
    CategoricalCrossentropy,
    Loss,
    MeanSquaredError,
    SparseCategoricalCrossentropy,
    get_loss,
)


def almost(got, want, decimal=3):
    np.testing.assert_almost_equal(got, want, decimal=decimal)


Y3 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
P3 = np.array([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]], dtype="float32")
LOGITS3 = np.array([[8.0, 1.0, 1.0], [0.0, 9.0, 1.0], [2.0, 3.0, 5.0]])


# -- CategoricalCrossentropyTest --------------------------------------------------------------
def test_cce_all_correct_unweighted():
    y_true = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype="int64")
    y_pred = np.eye(3, dtype="float32")
    almost(CategoricalCrossentropy()(y_true, y_pred), 0.0)
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    almost(CategoricalCrossentropy(from_logits=True)(y_true, logits), 0.0)


def test_cce_unweighted():
    almost(CategoricalCrossentropy()(Y3, P3), 0.3239, 4)
    almost(CategoricalCrossentropy(from_logits=True)(Y3, LOGITS3), 0.0573, 4)


def test_cce_scalar_weighted():
    almost(CategoricalCrossentropy()(Y3, P3, sample_weight=2.3), 0.7449)
    almost(CategoricalCrossentropy(from_logits=True)(Y3, LOGITS3, sample_weight=2.3), 0.1317)


def test_cce_sample_weighted():
    sample_weight = np.array([[1.2], [3.4], [5.6]]).reshape((3, 1))
    almost(CategoricalCrossentropy()(Y3, P3, sample_weight=sample_weight), 1.0696, 4)
    almost(CategoricalCrossentropy(from_logits=True)(Y3, LOGITS3, sample_weight=sample_weight), 0.31829, 4)


def test_cce_no_reduction():
    loss = CategoricalCrossentropy(from_logits=True, reduction=None)(Y3, LOGITS3)
    np.testing.assert_allclose(loss, (0.001822, 0.000459, 0.169846), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_cce_label_smoothing(smoothing):
    logits = np.array([[100.0, -100.0, -100.0]])
    loss = CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)(np.array([[1, 0, 0]]), logits)
    almost(loss, 400.0 * smoothing / 3.0)


def test_cce_shape_mismatch():
    with pytest.raises(ValueError, match="must have the same shape"):
        CategoricalCrossentropy()(np.array([[0], [1], [2]]), P3)


def test_cce_on_probabilities_is_renormalised_and_clipped_as_keras():
    """A probability of 0 costs -log(1e-7) = 16.12, not -log(float32 tiny) = 87.3."""
    almost(CategoricalCrossentropy()(np.array([[1, 0, 0]]), np.array([[0.0, 1.0, 0.0]])), 16.118, 3)
    # rows that do not sum to 1 are renormalised first: [2, 1, 1] reads as [0.5, 0.25, 0.25]
    almost(CategoricalCrossentropy()(np.array([[1, 0, 0]]), np.array([[2.0, 1.0, 1.0]])), np.log(2), 6)
    # the same in training: a softmax output that gives the label probability 0
    model = Model([Flatten(), Dense(3, activation="softmax")], seed=0).compile("cce", "sgd")
    model.build((1, 2, 2, 1))
    model.layers[1].params["W"][...] = 0
    model.layers[1].params["b"][...] = [0, 200, 0]                # p = (0, 1, 0) in float32
    loss, _ = model.evaluate(np.zeros((1, 2, 2, 1), np.float32), np.array([0]))
    almost(loss, -np.log(1e-7), 3)


def test_loss_objects_are_called_as_keras_calls_them():
    """loss(y_true, y_pred) raised NotImplementedError: Loss.__call__ was bound to the base forward."""
    for loss in (CategoricalCrossentropy(), dpnn.losses.CategoricalCrossentropy(from_logits=True),
                 get_loss("categorical_crossentropy"), MeanSquaredError()):
        assert isinstance(loss(np.eye(3), np.full((3, 3), 1 / 3, np.float32)), float)

    class MeanAbs(Loss):                        # a user's training loss: forward/backward only
        def forward(self, y_pred, y_true):
            self._d = y_pred - y_true
            self.per_sample = np.abs(self._d).mean(axis=1)
            return float(self.per_sample.mean())

        def backward(self, denominator=None):
            return np.sign(self._d) / (denominator or len(self._d)) / self._d.shape[1]

    almost(MeanAbs()(np.zeros((2, 2)), np.array([[1.0, 3.0], [0.0, 2.0]]), sample_weight=[1.0, 0.5]), (2 + 0.5) / 2)
    per = dpnn.losses.categorical_crossentropy([[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]])
    np.testing.assert_allclose(per, [0.0513, 2.303], atol=1e-3)           # Keras's docstring example


def test_compile_takes_keras_loss_functions_and_classes():
    import dpnn as keras
    for loss, cls in [(keras.losses.sparse_categorical_crossentropy, SparseCategoricalCrossentropy),
                      (keras.losses.categorical_crossentropy, CategoricalCrossentropy),
                      (keras.losses.mean_squared_error, MeanSquaredError),
                      (keras.losses.CategoricalCrossentropy, CategoricalCrossentropy)]:
        assert type(Model([Flatten(), Dense(3)]).compile(loss=loss, optimizer="sgd").loss) is cls
    model = Model([Flatten(), Dense(1, activation="sigmoid")]).compile(keras.losses.binary_crossentropy, "sgd")
    assert isinstance(model.loss, BinaryCrossentropy) and model.loss.on_probabilities


def test_reductions_sum_and_mean_with_sample_weight():
    y_true = np.array([[1, 9, 2], [-5, -2, 6]])
    y_pred = np.array([[4, 8, 12], [8, 1, 3]], dtype="float32")
    almost(MeanSquaredError()(y_true, y_pred), 49.5)                             # MSE test_unweighted
    almost(MeanSquaredError()(y_true, y_pred, sample_weight=2.3), 113.85)         # test_scalar_weighted
    almost(MeanSquaredError()(y_true, y_pred, sample_weight=np.array([[1.2], [3.4]])), 767.8 / 6)
    almost(MeanSquaredError(reduction="sum")(y_true, y_pred, sample_weight=2.3), 227.69998)
    np.testing.assert_allclose(MeanSquaredError(reduction=None)(y_true, y_pred, sample_weight=2.3),
                               [84.3333, 143.3666], rtol=1e-5)
    by_weight = MeanSquaredError(reduction="mean_with_sample_weight")
    w = np.array([[1.2], [3.4]])
    almost(by_weight(y_true, y_pred, sample_weight=w), (110 / 3 * 1.2 + 187 / 3 * 3.4) / (1.2 + 3.4))
    almost(MeanSquaredError()(y_true, y_pred, sample_weight=0), 0.0)              # test_zero_weighted
    with pytest.raises(ValueError, match="reduction"):
        MeanSquaredError(reduction="average")


# -- SparseCategoricalCrossentropyTest ----------------------------------------------------------
def test_scce_all_correct_and_unweighted():
    y_true = np.array([[0], [1], [2]], dtype="int64")
    almost(SparseCategoricalCrossentropy()(y_true, np.eye(3, dtype="float32")), 0.0)
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    almost(SparseCategoricalCrossentropy(from_logits=True)(y_true, logits), 0.0)
    almost(SparseCategoricalCrossentropy()(np.array([0, 1, 2]), P3), 0.3239)
    almost(SparseCategoricalCrossentropy(from_logits=True)(np.array([0, 1, 2]), LOGITS3), 0.0573)


def test_scce_weighted_and_no_reduction():
    y_true = np.array([[0], [1], [2]])
    almost(SparseCategoricalCrossentropy()(y_true, P3, sample_weight=2.3), 0.7449)
    almost(SparseCategoricalCrossentropy(from_logits=True)(y_true, LOGITS3, sample_weight=2.3), 0.1317)
    sw = np.array([[1.2], [3.4], [5.6]])
    almost(SparseCategoricalCrossentropy()(y_true, P3, sample_weight=sw), 1.0696)
    almost(SparseCategoricalCrossentropy(from_logits=True)(y_true, LOGITS3, sample_weight=sw), 0.31829)
    np.testing.assert_allclose(SparseCategoricalCrossentropy(from_logits=True, reduction=None)(y_true, LOGITS3),
                               (0.001822, 0.000459, 0.169846), rtol=1e-3, atol=1e-6)


def test_scce_binary_segmentation():
    y_true = np.array([[0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]])
    y_pred = np.eye(2)[y_true].astype(np.float32)
    np.testing.assert_allclose(SparseCategoricalCrossentropy()(y_true, y_pred), 0.0, atol=1e-6)
    y_pred[0, 3], y_pred[3, 3] = [0.2, 0.8], [0.6, 0.4]
    expected = np.array([-np.log(0.2), -np.log(0.4)]).sum() / 16.0               # 16 pixels
    np.testing.assert_allclose(SparseCategoricalCrossentropy()(y_true, y_pred), expected, rtol=1e-5)


def test_scce_refuses_rows_and_ignore_class_with_what_to_do():
    with pytest.raises(ValueError, match="categorical_crossentropy"):
        SparseCategoricalCrossentropy().forward(np.zeros((2, 3), np.float32), np.eye(3)[:2])
    with pytest.raises(ValueError, match="sample_weight 0"):
        SparseCategoricalCrossentropy(ignore_class=-1)


# -- BinaryCrossentropyTest ---------------------------------------------------------------------
def test_bce_all_correct_unweighted():
    y_true = np.eye(3, dtype="float32")
    almost(BinaryCrossentropy()(y_true, y_true), 0.0)
    logits = np.where(y_true > 0, 10.0, -10.0)
    almost(BinaryCrossentropy(from_logits=True)(y_true, logits), 0.0)


def test_bce_unweighted():
    y_pred = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.1, 0.2, 0.7]], dtype="float32")
    np.testing.assert_allclose(BinaryCrossentropy()(np.eye(3, dtype="float32"), y_pred), 0.20046903, rtol=1e-5)
    y_true = np.array([1, 0, 1, 0]).reshape([2, 2])
    almost(BinaryCrossentropy()(y_true, np.array([1, 1, 1, 0], dtype=np.float32).reshape([2, 2])), 3.98559)
    logits = np.array([[10.0, -10.0, 10.0], [10.0, 10.0, -10.0]])
    almost(BinaryCrossentropy(from_logits=True)(np.array([[1, 0, 1], [0, 1, 1]]), logits), 3.3333)


def test_bce_weighted_no_reduction_and_smoothing():
    y_true = np.array([1, 0, 1, 0]).reshape([2, 2])
    y_pred = np.array([1, 1, 1, 0], dtype="float32").reshape([2, 2])
    almost(BinaryCrossentropy()(y_true, y_pred, sample_weight=2.3), 9.1668)
    almost(BinaryCrossentropy()(y_true, y_pred, sample_weight=np.array([1.2, 3.4]).reshape((2, 1))), 4.7827)
    yt, logits = np.array([[1, 0, 1], [0, 1, 1]]), np.array([[10.0, -10.0, 10.0], [10.0, 10.0, -10.0]])
    almost(BinaryCrossentropy(from_logits=True)(yt, logits, sample_weight=2.3), 7.666)
    almost(BinaryCrossentropy(from_logits=True)(yt, logits, sample_weight=np.array([4, 3])), 10.0)
    np.testing.assert_allclose(BinaryCrossentropy(from_logits=True, reduction=None)(yt, logits),
                               [0.0, 6.666], atol=1e-3)
    loss = BinaryCrossentropy(from_logits=True, label_smoothing=0.1)(np.array([[1, 0, 1]]),
                                                                      np.array([[10.0, -10.0, -10.0]]))
    almost(loss, (10.0 + 5.0 * 0.1) / 3.0)


def test_bce_shape_mismatch():
    with pytest.raises(ValueError, match="must have the same shape"):
        BinaryCrossentropy()(np.array([[0], [1], [2]]), P3)


# -- soft targets: no argmax anywhere --------------------------------------------------------------
def smoothed(labels, k=3, s=0.1):
    return np.eye(k, dtype=np.float32)[labels] * (1 - s) + s / k


def test_soft_targets_are_not_their_argmax():
    """The issue's case: logits [100, -100, -100] against 0.9 one-hot + 0.1/3 is 13.333."""
    loss = CategoricalCrossentropy()
    logits = np.array([[100.0, -100.0, -100.0]], np.float32)
    almost(loss.forward(logits, smoothed([0])), 400 * 0.1 / 3, 4)
    y = smoothed([0])
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(loss.backward(), p - y, atol=1e-7)                  # softmax(z) - y


def test_smoothed_labels_train_to_other_weights_than_hard_ones():
    rng = np.random.default_rng(0)
    X, labels = rng.random((48, 4, 4, 1), dtype=np.float32), rng.integers(0, 3, 48)
    params = {}
    for name, y, loss in [("hard", labels, "cce"), ("soft", smoothed(labels), "cce"),
                          ("smoothing", labels, CategoricalCrossentropy(label_smoothing=0.1))]:
        model = Model([Flatten(), Dense(3)], seed=0).compile(loss, "sgd", lr=0.1)
        history = model.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0)
        params[name] = model.params.copy()
        assert history["acc"][-1] == history["acc"][-1]                           # argmax agreement, not nan
    assert not np.array_equal(params["hard"], params["soft"])
    np.testing.assert_allclose(params["smoothing"], params["soft"], rtol=1e-5, atol=1e-7)


def test_accuracy_with_soft_targets_is_argmax_agreement():
    model = Model([Flatten(), Dense(3)], seed=0).compile("cce", "sgd")
    x = np.random.default_rng(0).random((30, 2, 2, 1), dtype=np.float32)
    pred = model.predict(x).argmax(1)
    soft = smoothed((pred + np.arange(30) % 2) % 3, s=0.3)                         # half agree
    _, acc = model.evaluate(x, soft)
    assert acc == pytest.approx(np.mean(soft.argmax(1) == pred))


def test_soft_targets_through_the_data_pipeline():
    rng = np.random.default_rng(1)
    ds = dpnn.Dataset(rng.random((20, 4, 4, 1), dtype=np.float32), smoothed(rng.integers(0, 3, 20)))
    train, val = ds.split(0.25, seed=0)
    assert train.y.dtype == np.float32 and np.all(train.y.max(1) < 1)
    for _, yb in train.batches(4, seed=0):
        assert yb.shape[1:] == (3,) and np.all(yb.min(1) > 0)       # the rows as given


# -- the loss and the last layer ------------------------------------------------------------------
def sigmoid_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4, 4, 1), dtype=np.float32)
    return x, (x.reshape(n, -1).mean(1) > 0.5).astype(np.float32)


def test_binary_crossentropy_on_a_sigmoid_output_trains_like_logits():
    """'binary_crossentropy' on Dense(1, activation='sigmoid') gets the fused gradient p - y:
    the same steps, bit for bit, as on the logits."""
    x, y = sigmoid_data()
    params = {}
    for name, last in [("logits", [Dense(1)]), ("dense", [Dense(1, activation="sigmoid")]),
                       ("activation", [Dense(1), Activation("sigmoid")])]:
        model = Model([Flatten()] + last, seed=0).compile("binary_crossentropy", "sgd", lr=0.5)
        model.fit(x, y, epochs=3, batch_size=16, seed=0, verbose=0)
        params[name] = model.params.copy()
    np.testing.assert_array_equal(params["dense"], params["logits"])
    np.testing.assert_array_equal(params["activation"], params["logits"])
    model = Model([Flatten(), Dense(1, activation="sigmoid")], seed=0).compile("binary_crossentropy", "sgd", lr=0.5)
    before = model.evaluate(x, y)[0]
    model.fit(x, y, epochs=5, batch_size=16, seed=0, verbose=0)
    assert model.evaluate(x, y)[0] < before


@pytest.mark.parametrize("activation", ["sigmoid", None])
def test_binary_accuracy_of_one_output_from_integer_labels(activation):
    """Keras's 'accuracy' for binary_crossentropy: p > 0.5 (a logit > 0) against 0/1 labels,
    which a one-output model takes as integers (they are targets, not class indices)."""
    x, y = sigmoid_data()
    model = Model([Flatten(), Dense(1, activation=activation)], seed=0).compile("binary_crossentropy", "adam",
                                                                                 metrics=["accuracy"])
    history = model.fit(x, y.astype(int), epochs=2, batch_size=16, seed=0, verbose=0)
    out = model.predict(x)[:, 0]
    _, acc = model.evaluate(x, y.astype(int))
    assert acc == np.mean((out > (0.5 if activation else 0.0)) == (y > 0.5))
    assert all(0 <= a <= 1 for a in history["acc"])
    multi = Model([Flatten(), Dense(3)], seed=0).compile("binary_crossentropy", "adam")
    assert np.isnan(multi.evaluate(x, np.ones((len(x), 3)))[1])      # a fraction per sample: none
    proba = model.predict_proba(x)[:, 0]                             # each output's probability
    np.testing.assert_allclose(proba, out if activation else 1 / (1 + np.exp(-out)), rtol=1e-6)


@pytest.mark.parametrize("last, loss, message", [
    (Activation("sigmoid"), lambda: BinaryCrossentropy(from_logits=True), "a second sigmoid"),
    (Activation("linear"), lambda: BinaryCrossentropy(from_logits=False), "needs probabilities"),
    (Activation("softmax"), lambda: "binary_crossentropy", "neither"),
    (Activation("linear"), lambda: CategoricalCrossentropy(reduction="sum"), "sum_over_batch_size"),
])
def test_a_binary_loss_that_cannot_fit_the_last_layer_is_refused_at_compile(last, loss, message):
    with pytest.raises(ValueError, match=message):
        Model([Flatten(), Dense(3), last]).compile(loss=loss(), optimizer="adam")


def test_sparse_categorical_crossentropy_trains_from_integer_labels():
    rng = np.random.default_rng(0)
    X, y = rng.random((48, 4, 4, 1), dtype=np.float32), rng.integers(0, 3, 48)
    a = Model([Flatten(), Dense(3, activation="softmax")], seed=0).compile("sparse_categorical_crossentropy", "sgd")
    b = Model([Flatten(), Dense(3, activation="softmax")], seed=0).compile("categorical_crossentropy", "sgd")
    for m in (a, b):
        m.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0)
    np.testing.assert_array_equal(a.params, b.params)


@pytest.mark.parametrize("loss, y, message", [
    ("sparse_categorical_crossentropy", np.eye(3)[np.arange(12) % 3], "use categorical_crossentropy"),
    ("binary_crossentropy", np.zeros((12, 1)), "same shape"),
])
def test_targets_of_the_wrong_kind_are_refused_before_the_workers_start(loss, y, message):
    model = Model([Flatten(), Dense(3)], seed=0).compile(loss, "sgd")
    with pytest.raises(ValueError, match=message):
        model.fit(np.zeros((12, 2, 2, 1), np.float32), y, epochs=1, verbose=0, workers=2)


def test_a_keras_style_loss_with_only_call_is_called_but_cannot_train():
    class Huber(Loss):                           # a user's loss written Keras's way
        def call(self, y_true, y_pred):
            d = np.abs(np.asarray(y_pred) - np.asarray(y_true))
            return np.where(d < 1, 0.5 * d * d, d - 0.5).mean(axis=-1)

    almost(Huber()(np.zeros((2, 2)), np.array([[0.5, 2.0], [0.0, 0.0]])), (0.125 + 1.5) / 4)
    with pytest.raises(TypeError, match="backward"):
        Model([Flatten(), Dense(2)]).compile(loss=Huber(), optimizer="sgd")
