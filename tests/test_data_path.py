"""Data where the workers reach it, augmentation inside the workers, evaluation across them."""
import numpy as np
import pytest

from dpnn import Activation, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Model
from dpnn.workers import DataParallel
from dpnn.workers.batches import BatchLoader


def data(n=48, shape=(8, 8, 1), seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n,) + shape).astype(np.float32)
    return X, (X.mean(axis=(1, 2, 3)) > 0).astype(np.int64)


def model(channels=1, seed=3):
    return Model([Conv2D(4, (3, 3)), BatchNorm2D(), Activation("relu"), MaxPool2D((2, 2)), Flatten(),
                  Dropout(0.2), Dense(2)], seed=seed).compile("cce", "adam", lr=1e-2)


def flip_some(x, keys):
    """Flip the images whose key is odd: a function of each sample alone."""
    out = x.copy()
    odd = (keys & np.uint64(1)).astype(bool)
    out[odd] = out[odd, :, ::-1]
    return out


def train(workers, augment=None, **kw):
    X, y = data()
    m = model()
    history = m.fit(X, y, epochs=2, batch_size=20, seed=1, verbose=0, deterministic=True,
                    workers=workers, augment=augment, **kw)
    return m.params.copy(), m.state.copy(), history


@pytest.mark.slow
def test_augmentation_in_the_workers_is_worker_count_invariant():
    ref = train(1, flip_some)
    for workers in (2, 3):
        got = train(workers, flip_some)
        np.testing.assert_array_equal(got[0], ref[0], err_msg=f"{workers} workers")
        np.testing.assert_array_equal(got[1], ref[1])
        assert got[2]["loss"] == ref[2]["loss"]
    plain = train(1)
    assert not np.array_equal(plain[0], ref[0]), "the augmentation was not applied"


def test_augment_must_keep_the_shape_and_be_callable():
    X, y = data()
    with pytest.raises(ValueError, match="augment returned shape"):
        model().fit(X, y, epochs=1, verbose=0, augment=lambda x, k: x[:, :4])
    with pytest.raises(TypeError, match="augment must be a function"):
        model().fit(X, y, epochs=1, verbose=0, augment="flip")


def test_fit_never_copies_batch_rows_in_the_coordinator(monkeypatch):
    def refuse(*args):
        raise AssertionError("the coordinator copied a batch")
    monkeypatch.setattr(BatchLoader, "load_arrays", refuse)
    X, y = data()
    m = model()
    m.fit(X, y, epochs=1, batch_size=16, workers=2, verbose=0, val_data=(X[:10], y[:10]))


def test_rows_of_placed_data_train_like_copied_batches():
    X, y = data()
    a, b = model(), model()
    idx = np.array([5, 3, 40, 0, 17, 8, 22, 9, 1])
    keys = np.arange(len(idx), dtype=np.uint64) * 7
    with DataParallel(a, workers=2, deterministic=True) as dp:
        dp.place_data(X, y)
        s1 = dp.train_rows(idx, keys)
        s2 = dp.train_rows(idx[::-1].copy(), keys)
        assert dp.node.batches.rows_copied == 0
    with DataParallel(b, workers=3, deterministic=True) as dp:
        t1 = dp.train_step(X[idx], y[idx], keys)
        t2 = dp.train_step(X[idx[::-1]], y[idx[::-1]], keys)
        assert dp.node.batches.rows_copied == 2 * len(idx)
    np.testing.assert_array_equal(a.params, b.params)
    assert (s1.loss_sum, s2.loss_sum) == (t1.loss_sum, t2.loss_sum)


@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 6, 3)])
def test_evaluation_runs_on_the_workers_and_agrees_with_one_process(shape):
    X, y = data(37, shape)
    m = model()
    m.fit(X, y, epochs=1, batch_size=16, verbose=0, seed=0)
    expected = m.evaluate(X, y)
    with DataParallel(m, workers=2) as dp:
        dp.place_data(X, y)
        got = dp.evaluate(X, y)
        again = dp.evaluate(X, y)                 # the same arrays: not copied again
    assert got == again
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    assert got[1] == expected[1]


def test_a_training_set_too_big_for_shared_memory_still_trains(monkeypatch, caplog):
    from dpnn.workers.arena import SharedMemoryError

    def no_room(self, X, Y):
        raise SharedMemoryError("no room in /dev/shm (simulated)")
    monkeypatch.setattr(BatchLoader, "place", no_room)
    monkeypatch.setattr(BatchLoader, "place_eval", no_room)
    with caplog.at_level("WARNING", logger="dpnn.workers"):
        got = train(2, val_data=(data()[0][:8], data()[1][:8]))
    assert "does not fit in shared memory" in caplog.text
    ref = train(1, val_data=(data()[0][:8], data()[1][:8]))
    np.testing.assert_array_equal(got[0], ref[0])
    assert got[2]["val_loss"] == ref[2]["val_loss"]


def test_predict_runs_on_the_workers_and_agrees_with_one_process():
    X, y = data(29)
    m = model()
    m.fit(X, y, epochs=1, batch_size=16, verbose=0, seed=0)
    expected = m.predict(X)
    with DataParallel(m, workers=2) as dp:
        dp.place_data(X, y)
        got = dp.predict(X)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dp.predict(X[:5]), expected[:5], rtol=1e-5, atol=1e-6)
        assert dp.evaluate(X, y)[1] == m.evaluate(X, y)[1]     # a set placed for predict, then scored
