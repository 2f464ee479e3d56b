"""The data-parallel engine computes what one process computes.

Every test compares ``DataParallel`` with the in-process reference ``LocalEngine`` on the
same batches: float32 tolerance in general, bitwise with ``deterministic=True`` (whatever
the worker count, uneven batches, Dropout and BatchNorm included), and the global
full-batch BatchNorm with ``sync_batchnorm=True``.
"""
import warnings

import numpy as np
import pytest

from dpnn.comm import Communicator
from dpnn.engine import LocalEngine
from dpnn.losses import BinaryCrossentropy, CategoricalCrossentropy
from dpnn.node import Batch, Finish
from dpnn.random import sample_keys
from dpnn.recipe import add_sums, shard_gradients
from dpnn.sample_weights import with_weights
from dpnn.workers import DataParallel

from conftest import cnn

pytestmark = pytest.mark.slow


class OneRank(Communicator):
    """A world of one MPI rank without MPI: the step takes its path across ranks, every
    collective being the identity."""

    def allreduce(self, buf):
        return buf

    def bcast(self, buf, root=0):
        return buf

    def allgather(self, buf):
        return np.asarray(buf)[None]

    def bcast_object(self, obj, root=0):
        return obj


def batches(sizes, seed=0, one_hot=False):
    """[(x, y, keys)] with batch sizes ``sizes``; keys as fit makes them (seed, epoch, index)."""
    rng, out, start = np.random.default_rng(seed), [], 0
    for n in sizes:
        x = rng.random((n, 8, 8, 1), dtype=np.float32)
        y = rng.integers(0, 10, n)
        if one_hot:
            y = np.eye(10, dtype=np.float32)[y]
        out.append((x, y, sample_keys(seed, 0, np.arange(start, start + n))))
        start += n
    return out


def train(engine, data):
    return [engine.train_step(x, y, k).loss_sum for x, y, k in data]


def local(data, deterministic, **kw):
    m = cnn(**kw)
    losses = train(LocalEngine(m, deterministic=deterministic), data)
    return m, losses


def parallel(data, workers, deterministic, sync_batchnorm=False, **kw):
    m = cnn(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # 3 workers on a 2-core machine
        with DataParallel(m, workers=workers, deterministic=deterministic,
                          sync_batchnorm=sync_batchnorm) as dp:
            losses = train(dp, data)
    return m, losses


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_same_parameters_as_one_process_to_float32_rounding(workers):
    data = batches([24] * 4)
    ref, ref_losses = local(data, deterministic=False)
    m, losses = parallel(data, workers, deterministic=False)
    np.testing.assert_allclose(m.params, ref.params, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_deterministic_mode_is_bitwise_identical_for_any_worker_count(workers):
    data = batches([24] * 4)
    ref, ref_losses = local(data, deterministic=True)
    m, losses = parallel(data, workers, deterministic=True)
    assert np.array_equal(m.params, ref.params)
    assert losses == ref_losses


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_deterministic_with_dropout_and_batchnorm(workers):
    data = batches([24] * 4)
    ref, ref_losses = local(data, deterministic=True, dropout=0.3, batchnorm=True)
    m, losses = parallel(data, workers, deterministic=True, dropout=0.3, batchnorm=True)
    assert np.array_equal(m.params, ref.params)
    assert np.array_equal(m.state, ref.state), "BatchNorm running statistics differ"
    assert not np.array_equal(m.state, cnn(batchnorm=True).state), "the statistics were updated"
    assert losses == ref_losses


@pytest.mark.parametrize("deterministic", [True, False])
def test_uneven_batches_and_more_workers_than_samples(deterministic):
    """7 samples on 3 workers (3+2+2), then 2 samples on 3 workers (one worker has none)."""
    data = batches([7, 2, 7, 1])
    ref, ref_losses = local(data, deterministic, batchnorm=True)
    m, losses = parallel(data, 3, deterministic, batchnorm=True)
    if deterministic:
        assert np.array_equal(m.params, ref.params) and np.array_equal(m.state, ref.state)
        assert losses == ref_losses
    else:   # per-shard BatchNorm statistics (like DDP): 1-sample shards differ from one process
        assert np.isfinite(m.params).all() and np.isfinite(m.state).all()


def targets_as(kind, data, seed=3):
    """The batches' labels turned into soft targets, weighted targets, or both (Keras's uses)."""
    rng, out = np.random.default_rng(seed), []
    for x, y, k in data:
        soft = np.eye(10, dtype=np.float32)[y] * 0.8 + rng.dirichlet(np.ones(10), len(y)).astype(np.float32) * 0.2
        w = rng.uniform(0.0, 3.0, len(y)).astype(np.float32)
        t = {"soft": soft, "weighted": with_weights(y, w), "soft-weighted": with_weights(soft, w),
             "smoothing": y, "binary-weighted": with_weights(soft, w)}[kind]
        out.append((x, t, k))
    return out


TARGET_CASES = {                                  # kind: the loss the model is compiled with
    "soft": "categorical_crossentropy",
    "weighted": "categorical_crossentropy",
    "soft-weighted": "categorical_crossentropy",
    "smoothing": CategoricalCrossentropy(label_smoothing=0.1),
    "binary-weighted": BinaryCrossentropy(),
}


@pytest.mark.parametrize("kind", sorted(TARGET_CASES))
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_soft_and_weighted_targets_are_bitwise_for_any_worker_count(kind, workers):
    """Soft targets, label smoothing, sample weights: the same bits on 1, 2, 3 workers as in one
    process (deterministic), uneven shards and a 1-sample last batch included."""
    data = targets_as(kind, batches([24, 7, 24, 1]))
    ref, ref_losses = local(data, deterministic=True, loss=TARGET_CASES[kind])
    m, losses = parallel(data, workers, deterministic=True, loss=TARGET_CASES[kind])
    assert np.array_equal(m.params, ref.params)
    assert losses == ref_losses
    if kind != "soft":
        return
    hard, _ = local(batches([24, 7, 24, 1]), deterministic=True)
    assert not np.array_equal(hard.params, ref.params), "soft targets trained as their argmax"


def test_uneven_batches_without_batchnorm_match_one_process():
    data = batches([7, 2, 7, 1])
    ref, ref_losses = local(data, deterministic=False)
    m, losses = parallel(data, 3, deterministic=False)
    np.testing.assert_allclose(m.params, ref.params, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


def test_synchronised_batchnorm_equals_full_batch_statistics():
    """With sync_batchnorm the shards normalise with the global batch's mean and variance."""
    data = batches([24, 24, 5, 1])          # 5 and 1 samples: uneven shards, an empty worker
    ref, ref_losses = local(data, deterministic=False, batchnorm=True)
    m, losses = parallel(data, 2, deterministic=False, sync_batchnorm=True, batchnorm=True)
    np.testing.assert_allclose(m.params, ref.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.state, ref.state, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


def test_batch_buffer_grows_and_follows_the_label_format():
    """A bigger batch, then one-hot labels: the shared buffers are replaced, results stay exact."""
    data = batches([4, 12]) + batches([12, 3], seed=1, one_hot=True)
    ref, ref_losses = local(data, deterministic=True)
    m, losses = parallel(data, 2, deterministic=True)
    assert np.array_equal(m.params, ref.params)
    assert losses == ref_losses


def test_compute_gradients_leaves_the_parameters_alone():
    (x, y, k), = batches([10])
    ref = cnn()
    shard_gradients(ref, x, y, 5, k)                          # d(sum loss)/dθ / 5
    m = cnn()
    before = m.params.copy()
    with DataParallel(m, workers=2) as dp:
        result = dp.node.run(Batch(x, y), [(0, 10)], 5, k, Finish.SUM)      # what a rank asks of its node
        sums = add_sums(s.sums for s in result.shards)
        assert np.array_equal(m.params, before)
        np.testing.assert_allclose(m.grads, ref.grads, rtol=1e-4, atol=1e-6)
        assert sums.count == 10 and sums.loss == pytest.approx(ref.loss.per_sample.sum())


def test_train_on_batch_reports_global_loss_and_accuracy():
    (x, y, k), = batches([30])
    m = cnn()
    expected_loss, expected_acc = m.evaluate(x, y)
    with DataParallel(m, workers=2) as dp:
        loss, acc = dp.train_on_batch(x, y, k)
        assert loss == pytest.approx(expected_loss, rel=1e-5)     # before the step's update
        assert acc == pytest.approx(expected_acc)
        later = [dp.train_on_batch(x, y)[0] for _ in range(5)]
    assert later[-1] < loss


def test_fit_with_two_workers_matches_fit_in_one_process():
    """End to end through Model.fit: shuffling, keys, a short last batch, history, then predict."""
    rng = np.random.default_rng(3)
    X, y = rng.random((45, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 45)
    histories, models = [], []
    for workers in (1, 2):
        m = cnn(dropout=0.3, batchnorm=True)
        histories.append(m.fit(X, y, epochs=2, batch_size=10, seed=5, verbose=0,
                               workers=workers, deterministic=True))
        models.append(m)
    assert np.array_equal(models[0].params, models[1].params)
    assert np.array_equal(models[0].state, models[1].state)
    assert histories[0]["loss"] == histories[1]["loss"]
    assert np.array_equal(models[0].predict(X[:5]), models[1].predict(X[:5]))   # usable after close


@pytest.mark.parametrize("optimizer, options", [
    ("adam", {}), ("adam", {"weight_decay": 1e-2}), ("sgd", {"momentum": 0.9}), ("sgd", {}),
    ("adam", {"clip_norm": 1e-3}), ("sgd", {"momentum": 0.9, "clip_norm": 1e-3, "weight_decay": 1e-2}),
    ("rmsprop", {}), ("rmsprop", {"momentum": 0.9, "centered": True, "clip_norm": 1e-3}),
    ("adamw", {}), ("adam", {"amsgrad": True, "weight_decay": 1e-2}), ("sgd", {"momentum": 0.9, "nesterov": True}),
])
def test_the_optimizer_step_on_the_workers_is_bitwise_the_single_process_step(optimizer, options):
    """Each worker sums and updates its chunk of the flat vector (elementwise, so exact),
    including the optimizer's own state; the global norm (and so clipping) is an exact sum
    of block sums of squares, so it is bitwise the single-process norm too."""
    data = batches([24] * 4)
    models = []
    for workers in (None, 3):
        m = cnn(hidden=300)           # 14 K parameters: 4 norm blocks, so 3 workers' chunks are 2, 1, 1
        m.compile(optimizer=optimizer, lr=0.01, **options)
        if workers is None:
            norms = [LocalEngine(m, deterministic=True).train_step(*b).grad_norm for b in data]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                with DataParallel(m, workers=workers, deterministic=True, shard_optimizer=True) as dp:
                    norms = [dp.train_step(*b).grad_norm for b in data]
                    sharded = dp.node._sets is not None and dp.node._sets.ready()
            assert sharded
        models.append((m, norms))
    (ref, ref_norms), (m, norms) = models
    assert np.array_equal(m.params, ref.params)
    assert m.optimizer.t == ref.optimizer.t == 4
    state, ref_state = m.optimizer.state_dict(), ref.optimizer.state_dict()
    assert state.keys() == ref_state.keys()
    for key, value in ref_state.items():
        assert np.array_equal(state[key], value), key
    assert norms == ref_norms


@pytest.mark.parametrize("options", [{}, {"clip_norm": 1e-3}])
def test_a_step_with_the_update_can_be_redone(options):
    """After a death the whole step is sent again: it reads only the current parameter set,
    so running it twice (as a redo does) gives what running it once gives."""
    data = batches([24] * 3)
    ref = cnn(hidden=300)
    ref.compile(optimizer="adam", lr=0.01, **options)
    train(LocalEngine(ref, deterministic=True), data)
    m = cnn(hidden=300)
    m.compile(optimizer="adam", lr=0.01, **options)
    with DataParallel(m, workers=2, deterministic=True, shard_optimizer=True) as dp:
        dp.train_step(*data[0])
        dp.train_step(*data[1])
        sets = dp.node._sets
        flip, sets.flip = sets.flip, lambda: None       # the first run is lost, as after a death
        dp.train_step(*data[2])
        sets.flip = flip
        dp.train_step(*data[2])                         # the redo
    assert np.array_equal(m.params, ref.params)


@pytest.mark.parametrize("optimizer", [None, {"optimizer": "rmsprop", "momentum": 0.9, "centered": True},
                                       {"optimizer": "adamw", "amsgrad": True}])
def test_optimizer_state_loaded_between_steps_is_adopted(optimizer):
    """A resumed optimizer (load_state_dict) replaces the slot arrays: the engine copies them in
    (each optimizer's slots: RMSprop's v, mg, mom; AMSGrad's vhat)."""
    data = batches([24] * 4)
    ref = cnn()
    if optimizer:
        ref.compile(**optimizer)
    train(LocalEngine(ref, deterministic=True), data)
    m = cnn()
    if optimizer:
        m.compile(**optimizer)
    with DataParallel(m, workers=2, deterministic=True, shard_optimizer=True) as dp:
        for b in data[:2]:
            dp.train_step(*b)
        saved, params = m.optimizer.state_dict(), m.params.copy()
        dp.train_step(*data[2])                       # a step we then undo, like a rollback
        m.params[...] = params
        m.optimizer.load_state_dict(saved)
        for b in data[2:]:
            dp.train_step(*b)
    assert np.array_equal(m.params, ref.params)


@pytest.mark.parametrize("options", [{"clip_norm": 1e-3, "weight_decay": 1e-2}, {}])
def test_a_ranks_workers_sum_and_update_like_the_fused_step(options):
    """The MPI engine's node: the workers sum their chunk of the slots ("sum" step), the rank
    all-reduces model.grads, then the workers update their chunk from it (an "update"
    message). With one rank that is bitwise DataParallel's step, whose workers do both in one go."""
    from dpnn.distributed import DistributedEngine
    data = batches([24] * 4)
    models = []
    for engine in ("fused", "rank"):
        m = cnn(hidden=300)
        m.compile(optimizer="adam", lr=0.01, **options)
        if engine == "fused":
            with DataParallel(m, workers=2) as dp:
                train(dp, data)
        else:
            e = DistributedEngine(m, OneRank(), workers=2, seed=0)
            try:
                train(e, data)
                assert e.node._sets is not None and e.node._sets.ready()      # the workers updated
            finally:
                e.close()
        models.append(m)
    assert np.array_equal(models[0].params, models[1].params)
    assert models[0].optimizer.t == models[1].optimizer.t == 4


def test_a_ranks_workers_score_its_slice(monkeypatch):
    """DistributedEngine.evaluate hands the rank's slice to the node's workers: scoring in this
    process is made to fail, and the result is still the one-process score."""
    from dpnn.distributed import DistributedEngine
    from dpnn.recipe import evaluation_sums
    x, y, _ = batches([40])[0]
    m = cnn(hidden=300)
    e = DistributedEngine(m, OneRank(), workers=2, seed=0)
    try:
        e.train_step(*batches([24])[0])                       # start the pool
        expected = evaluation_sums(m, x, y, 256)

        def here(*args, **kwargs):
            raise AssertionError("scored in the coordinator")
        monkeypatch.setattr("dpnn.node.evaluation_parts", here)
        monkeypatch.setattr("dpnn.workers.coordinator.evaluation_parts", here)
        loss, acc = e.evaluate(x, y)
    finally:
        e.close()
    assert acc == expected.accuracy()
    assert loss == pytest.approx(expected.mean_loss(), rel=1e-5)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_deterministic_ranks_compute_on_their_nodes_workers(workers):
    """Deterministic mode across ranks runs each rank's micro-shards on the node's workers, a slot
    each; the slots are gathered and added in micro-shard order: bitwise one process."""
    from dpnn.distributed import DistributedEngine
    data = batches([24] * 3)
    ref, _ = local(data, deterministic=True)
    m = cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        e = DistributedEngine(m, OneRank(), workers=workers, deterministic=True, seed=0)
        try:
            train(e, data)
            assert e.describe().workers == workers
        finally:
            e.close()
    assert np.array_equal(m.params, ref.params)


def test_a_users_adam_subclass_steps_as_written_on_the_workers():
    """The sharded step runs only dpnn's own SGD and Adam (``Optimizer.sharded_slots``): a user's
    subclass that changes the update is stepped whole, as in one process, on any worker count."""
    from dpnn.optim import Adam

    class HalfStepAdam(Adam):                    # defined here, the way a user's script would
        def update(self, p, g, slot):
            super().update(p, 0.5 * g, slot)

    data = batches([24] * 3)
    results = []
    for workers in (None, 2):
        m = cnn(hidden=300)
        m.compile(optimizer=HalfStepAdam(lr=0.01))
        assert m.optimizer.sharded_slots() is None and Adam().sharded_slots() == ("m", "v")
        if workers is None:
            train(LocalEngine(m, deterministic=True), data)
        else:
            with DataParallel(m, workers=workers, deterministic=True) as dp:
                train(dp, data)
                assert dp.node._sets is None                      # the coordinator stepped
        results.append(m.params.copy())
    ref = cnn(hidden=300)
    ref.compile(optimizer="adam", lr=0.01)
    train(LocalEngine(ref, deterministic=True), data)
    assert np.array_equal(results[0], results[1])
    assert not np.array_equal(results[0], ref.params)           # the subclass's update ran


@pytest.mark.parametrize("workers", [1, 2, 3, "rank"])
def test_a_frozen_layer_stays_bitwise_on_every_worker_count(workers):
    """layer.trainable = False: the layer's weights and its optimizer slots leave every step
    bitwise as they came (no step, no decoupled or L2 decay, no moment change), its gradient
    counts as zero in the clipping norm; the other layers train bitwise as in one process."""
    data = batches([24] * 4)
    models = []
    for engine in (None, workers):
        m = cnn(hidden=300)
        m.compile(optimizer="adamw", lr=0.01, weight_decay=1e-2, clip_norm=1e-3)   # both decays
        LocalEngine(m, deterministic=True).train_step(*data[0])    # the slots are nonzero now
        m.layers[0].trainable = False
        frozen_w, frozen_m = m.layers[0].params["W"].copy(), m.optimizer.slots[0]["m"].copy()
        if engine is None:
            norms = [LocalEngine(m, deterministic=True).train_step(*b).grad_norm for b in data[1:]]
        else:
            norms = _train_frozen(m, engine, data[1:])
        models.append((m, norms))
        assert np.array_equal(m.layers[0].params["W"], frozen_w)
        a, b = m.frozen_ranges()[0]
        assert np.array_equal(m.optimizer.slots[0]["m"][a:b], frozen_m[a:b])
        assert not np.array_equal(m.optimizer.slots[0]["m"], frozen_m)     # the others moved
    (ref, ref_norms), (m, norms) = models
    assert np.array_equal(m.params, ref.params) and norms == ref_norms


def _train_frozen(m, workers, data):
    """Gradient norms of training ``data`` on ``workers`` (a count, or "rank": a rank of an MPI
    job whose 2 workers sum their chunks and then update from the all-reduced gradient)."""
    from dpnn.distributed import DistributedEngine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if workers == "rank":
            e = DistributedEngine(m, OneRank(), workers=2, deterministic=True, seed=0, shard_optimizer=True)
            try:
                norms = [e.train_step(*b).grad_norm for b in data]
                assert e.node._sets is not None and e.node._sets.ready()   # the workers updated
                return norms
            finally:
                e.close()
        with DataParallel(m, workers=workers, deterministic=True, shard_optimizer=True) as dp:
            norms = [dp.train_step(*b).grad_norm for b in data]
            assert dp.node._sets is not None and dp.node._sets.ready()   # the workers stepped
            return norms


def test_a_frozen_batchnorm_with_synchronised_statistics_and_an_empty_shard():
    """A frozen BatchNorm exchanges no statistics (it normalises with its running ones), so a
    worker with no samples must not wait for its exchange: 3 workers, a batch of 2."""
    data = batches([2, 24])
    models = []
    for workers in (None, 3):
        m = cnn(batchnorm=True)
        next(layer for layer in m.layers if type(layer).__name__ == "BatchNorm2D").trainable = False
        state = m.state.copy()
        if workers is None:
            train(LocalEngine(m, deterministic=False), data)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                with DataParallel(m, workers=workers, sync_batchnorm=True) as dp:
                    train(dp, data)
        assert np.array_equal(m.state, state)
        models.append(m)
    np.testing.assert_allclose(models[1].params, models[0].params, rtol=1e-4, atol=1e-6)
