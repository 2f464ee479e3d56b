"""``fit(sample_weight=)``, ``fit(class_weight=)``, ``evaluate(sample_weight=)`` and
``validation_data=(x, y, w)`` with Keras 3's semantics (the weighted sum over the number of
samples), the class-weight cases of Keras's ``data_adapter_utils_test.py``, and the same bits on
every engine: 1, 2, 3 workers, a rank of the MPI path, and two MPI ranks."""
import json
import sys
import textwrap
import warnings

import numpy as np
import pytest

from dpnn import Dense, Flatten, Model
from dpnn.losses import CategoricalCrossentropy
from dpnn.sample_weights import class_weight_to_sample_weights

from conftest import finish, mpi_env, needs_mpi


def data(n=50, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 6, 6, 1), dtype=np.float32), rng.integers(0, classes, n)


def model(seed=0, lr=0.1, optimizer="sgd", loss="cce"):
    return Model([Flatten(), Dense(3)], seed=seed).compile(loss, optimizer, lr=lr)


# -- Keras's class_weight_to_sample_weights cases ----------------------------------------------------
@pytest.mark.parametrize("y, class_weight, expected", [
    (np.array([0, 1, 0, 2]), {0: 1.0, 1: 2.0, 2: 3.0}, [1.0, 2.0, 1.0, 3.0]),
    (np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]]), {0: 1.0, 1: 2.0, 2: 3.0}, [1.0, 2.0, 1.0, 3.0]),
    (np.array([0, 3, 0, 2]), {0: 1.0, 1: 2.0, 2: 3.0}, [1.0, 1.0, 1.0, 3.0]),       # unmapped: 1
    (np.array([[0], [1], [0], [2]]), {0: 1.0, 1: 2.0, 2: 3.0}, [1.0, 2.0, 1.0, 3.0]),
    (np.array([0, 1, 0, 2]), {}, [1.0, 1.0, 1.0, 1.0]),
    (np.array([0, 1, 0, 2]), {"0": 1.0, "1": 2.0, "2": 3.0}, [1.0, 2.0, 1.0, 3.0]),
    (np.array([0, 1, 0, 2]), {0.0: 1.0, 1.0: 2.0, 2.0: 3.0}, [1.0, 2.0, 1.0, 3.0]),
    (np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), {2: 5.0}, [1.0, 5.0]),            # soft rows: argmax
])
def test_class_weight_to_sample_weights(y, class_weight, expected):
    np.testing.assert_allclose(class_weight_to_sample_weights(y, class_weight), expected)


@pytest.mark.parametrize("class_weight, message", [({"invalid": 0.5}, "integer keys"),
                                                   ("not_a_dict", "dict-like mapping"),
                                                   ({None: 0.5}, "integer keys")])
def test_class_weight_to_sample_weights_refuses(class_weight, message):
    with pytest.raises(ValueError, match=message):
        class_weight_to_sample_weights(np.array([0, 1, 0, 2]), class_weight)


# -- Keras's normalisation ----------------------------------------------------------------------------
def test_unit_weights_train_bitwise_like_no_weights():
    X, y = data()
    a, b = model(), model()
    ha = a.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0)
    hb = b.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0, sample_weight=np.ones(len(y)))
    assert np.array_equal(a.params, b.params) and ha["loss"] == hb["loss"]


def test_weights_are_divided_by_the_sample_count_not_their_sum():
    """Keras 3 ('sum_over_batch_size'): weights all 2 double the loss and the SGD step (dividing by
    the sum of the weights would change nothing)."""
    X, y = data()
    plain, double_lr, weighted = model(lr=0.1), model(lr=0.2), model(lr=0.1)
    h0 = plain.fit(X, y, epochs=1, batch_size=50, seed=0, verbose=0, shuffle=False)
    double_lr.fit(X, y, epochs=1, batch_size=50, seed=0, verbose=0, shuffle=False)
    h2 = weighted.fit(X, y, epochs=1, batch_size=50, seed=0, verbose=0, shuffle=False,
                      sample_weight=np.full(len(y), 2.0))
    np.testing.assert_allclose(h2["loss"], 2 * np.array(h0["loss"]), rtol=1e-6)
    np.testing.assert_allclose(weighted.params, double_lr.params, rtol=1e-6, atol=1e-7)
    assert h2["acc"] == h0["acc"]                                      # accuracy is not weighted


def test_one_step_matches_the_weighted_gradient_by_hand():
    """d/dW of sum_i w_i CE_i / N for a Dense layer on logits: x^T (w (p - onehot)) / N."""
    X, y = data(n=8)
    w = np.linspace(0.0, 2.0, 8).astype(np.float32)
    m = model(lr=1.0)
    m.build(X[:1].shape)
    W0, b0 = m.layers[1].params["W"].copy(), m.layers[1].params["b"].copy()
    x = X.reshape(8, -1).astype(np.float64)
    z = x @ W0 + b0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = w[:, None] * (p - np.eye(3)[y]) / 8
    loss, _ = m.train_on_batch(X, y, sample_weight=w)
    np.testing.assert_allclose(loss, np.sum(w * -np.log(p[np.arange(8), y])) / 8, rtol=1e-5)
    np.testing.assert_allclose(m.layers[1].params["W"], W0 - x.T @ g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.layers[1].params["b"], b0 - g.sum(0), rtol=1e-5, atol=1e-6)


def test_class_weight_is_the_sample_weight_of_each_class():
    X, y = data()
    onehot = np.eye(3, dtype=np.float32)[y]
    a, b, c = model(), model(), model()
    a.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0, class_weight={0: 0.5, 2: 3.0})
    b.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0, sample_weight=np.array([0.5, 1.0, 3.0])[y])
    c.fit(X, onehot, epochs=2, batch_size=16, seed=0, verbose=0, class_weight={0: 0.5, 2: 3.0})
    assert np.array_equal(a.params, b.params) and np.array_equal(a.params, c.params)
    loss, _ = model().train_on_batch(X[:8], y[:8], class_weight={1: 0.0, 0: 0.0, 2: 0.0})
    assert loss == 0.0
    with pytest.raises(TypeError, match="sample_weight=w"):          # Keras's train_on_batch(x, y, sw)
        model().train_on_batch(X[:8], y[:8], np.ones(8))


def test_evaluate_and_validation_data_take_sample_weights():
    X, y = data()
    w = np.random.default_rng(1).uniform(0, 2, len(y))
    m = model()
    loss, acc = m.evaluate(X, y)
    wloss, wacc = m.evaluate(X, y, sample_weight=w)
    per = np.array([m.evaluate(X[i:i + 1], y[i:i + 1])[0] for i in range(len(y))])
    np.testing.assert_allclose(wloss, np.sum(w * per) / len(y), rtol=1e-5)
    assert wacc == acc
    h = model().fit(X, y, epochs=1, batch_size=16, seed=0, verbose=0, validation_data=(X, y, w))
    ref = model()
    ref.fit(X, y, epochs=1, batch_size=16, seed=0, verbose=0)
    assert h["val_loss"][0] == pytest.approx(ref.evaluate(X, y, sample_weight=w)[0], rel=1e-6)


def test_validation_split_keeps_sample_weights_but_not_class_weights():
    """As Keras: the held-out part of sample_weight weighs val_loss; class_weight only trains."""
    X, y = data(60)
    w = np.where(y == 0, 0.0, 1.0)
    hs = model().fit(X, y, epochs=1, batch_size=16, seed=0, verbose=0, validation_split=0.25, sample_weight=w)
    hc = model().fit(X, y, epochs=1, batch_size=16, seed=0, verbose=0, validation_split=0.25,
                     class_weight={0: 0.0})
    h1 = model().fit(X, y, epochs=1, batch_size=16, seed=0, verbose=0, validation_split=0.25)
    # the same training either way (class 0 weighs 0), but only sample_weight reaches val_loss
    assert hs["loss"] == hc["loss"] != h1["loss"]
    assert hs["val_loss"][0] < hc["val_loss"][0]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"sample_weight": np.ones(50), "class_weight": {0: 1.0}}, ValueError, "one of them"),
    ({"sample_weight": np.ones(49)}, ValueError, r"one weight per sample, shape \(50,\)"),
    ({"sample_weight": -np.ones(50)}, ValueError, ">= 0"),
    ({"sample_weight": np.full(50, np.nan)}, ValueError, "finite"),
    ({"sample_weight": np.array(["a"] * 50)}, TypeError, "numbers"),
    ({"class_weight": [1.0, 2.0]}, ValueError, "dict-like"),
    ({"validation_data": (np.zeros((4, 6, 6, 1), np.float32), np.zeros(4, int), np.ones(3))}, ValueError,
     "validation sample_weight"),
])
def test_bad_weights_get_one_clear_error(kwargs, error, message):
    X, y = data()
    with pytest.raises(error, match=message):
        model().fit(X, y, epochs=1, verbose=0, **kwargs)


def test_a_users_loss_without_per_sample_values_cannot_be_weighted():
    class MeanOnly:                          # a user's loss as the README shows: mean and gradient
        def forward(self, y_pred, y_true):
            self._d = y_pred - np.eye(y_pred.shape[1], dtype=y_pred.dtype)[y_true]
            return float((self._d ** 2).mean())

        def backward(self):
            return 2 * self._d / self._d.size

    X, y = data()
    m = Model([Flatten(), Dense(3)], seed=0).compile(MeanOnly(), "sgd")
    m.fit(X, y, epochs=1, verbose=0)                                  # unweighted: fine
    with pytest.raises(TypeError, match="per_sample"):
        m.fit(X, y, epochs=1, verbose=0, sample_weight=np.ones(50))


# -- every engine ----------------------------------------------------------------------------------
def soft_weighted(n=50, seed=0):
    X, y = data(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    soft = (np.eye(3)[y] * 0.7 + rng.dirichlet(np.ones(3), n) * 0.3).astype(np.float32)
    return X, soft, rng.uniform(0, 2, n).astype(np.float32)


def fit_weighted(**engine):
    X, soft, w = soft_weighted()
    m = Model([Flatten(), Dense(8), Dense(3)], seed=0).compile(CategoricalCrossentropy(label_smoothing=0.05),
                                                                  "adam", lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)               # 3 workers on a 2-core machine
        h = m.fit(X, soft, epochs=2, batch_size=16, seed=0, verbose=0, sample_weight=w,
                  validation_data=(X[:20], soft[:20], w[:20]), **engine)
    return m, dict(h.history)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_fit_with_weights_and_soft_targets_is_bitwise_on_the_workers(workers):
    """Through fit's placed data (the workers' shared dataset), uneven last batch (50 = 3x16 + 2)
    and the workers' validation: deterministic runs are the same bits as one process."""
    ref, h_ref = fit_weighted(deterministic=True)
    m, h = fit_weighted(deterministic=True, workers=workers)
    assert np.array_equal(m.params, ref.params)
    assert h["loss"] == h_ref["loss"] and h["val_loss"] == h_ref["val_loss"]


@pytest.mark.slow
def test_fit_with_weights_on_the_workers_matches_to_float32_rounding():
    ref, h_ref = fit_weighted()
    m, h = fit_weighted(workers=2)
    np.testing.assert_allclose(m.params, ref.params, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(h["loss"], h_ref["loss"], rtol=1e-5)


def test_the_ranks_path_of_one_rank_is_bitwise():
    """The step's path across MPI ranks (all-gather of the slots), with one rank and no MPI."""
    from test_workers_equivalence import OneRank
    ref, h_ref = fit_weighted(deterministic=True)
    m, h = fit_weighted(deterministic=True, backend=OneRank())
    assert np.array_equal(m.params, ref.params) and h["loss"] == h_ref["loss"]


MPI_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    from dpnn.comm import get_communicator
    from test_sample_weights import fit_weighted

    if __name__ == "__main__":
        comm = get_communicator("mpi")
        workers = int(sys.argv[2])
        m, h = fit_weighted(deterministic=True, backend=comm, workers=workers)
        np.save(f"{sys.argv[1]}/params-{workers}-{comm.rank}.npy", m.params)
        with open(f"{sys.argv[1]}/history-{workers}-{comm.rank}.json", "w") as f:
            json.dump(h, f)
''')


@needs_mpi
@pytest.mark.parametrize("workers", [1, 2])
def test_two_mpi_ranks_train_weighted_soft_targets_like_one_process(tmp_path, workers):
    import subprocess
    from pathlib import Path

    from conftest import MPIEXEC
    (tmp_path / "run_weighted.py").write_text(MPI_SCRIPT)
    here = str(Path(__file__).parent)
    env = dict(mpi_env(tmp_path))
    env["PYTHONPATH"] = here + ":" + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "run_weighted.py", str(tmp_path), str(workers)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    code, out, err = finish(proc, timeout=120)
    assert code == 0, err
    ref, h_ref = fit_weighted(deterministic=True)
    for rank in (0, 1):
        assert np.array_equal(np.load(tmp_path / f"params-{workers}-{rank}.npy"), ref.params)
        h = json.loads((tmp_path / f"history-{workers}-{rank}.json").read_text())
        assert h["loss"] == h_ref["loss"] and h["val_loss"] == h_ref["val_loss"]
