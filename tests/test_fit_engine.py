"""An engine the caller opened: ``fit(engine=...)`` trains with it and leaves it open, so the
same workers score a test set afterwards.

The proof that scoring ran on the workers: ``Model.predict`` and ``Model.evaluate`` are made to
raise in this process (the coordinator); the workers import dpnn afresh and never see that.
"""
import os
from contextlib import closing

import numpy as np
import psutil
import pytest

from dpnn import Activation, Conv2D, Dense, Flatten, MaxPool2D, Model
from dpnn.engine import EngineInfo, LocalEngine, make_engine
from dpnn.janitor import segment_owner

try:
    from dpnn.workers import DataParallel  # noqa: F401
    HAVE_ENGINE = True
except ImportError:
    HAVE_ENGINE = False
needs_engine = pytest.mark.skipif(not HAVE_ENGINE, reason="the data-parallel engine dpnn.workers is not available")


def blobs(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6, 6, 1)).astype(np.float32)
    return X, (X.mean(axis=(1, 2, 3)) > 0).astype(np.int64)


def tiny(seed=0):
    return Model([Conv2D(2, (3, 3)), Activation("relu"), MaxPool2D((2, 2)), Flatten(), Dense(2)],
                 seed=seed).compile("cce", "adam", lr=1e-2)


def refuse_in_this_process(monkeypatch):
    """Scoring in the coordinator fails the test; the workers are separate interpreters."""
    def refuse(*args, **kwargs):
        raise AssertionError("scored in the coordinator, not on the workers")
    monkeypatch.setattr(Model, "predict", refuse)
    monkeypatch.setattr(Model, "evaluate", refuse)


def our_segments() -> set:
    return {n for n in os.listdir("/dev/shm") if (segment_owner(n) or (0,))[0] == os.getpid()}


def gone(pids) -> bool:
    def alive(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return not any(alive(p) for p in pids)


def assert_same_score(got, want):
    """Workers add per-slice sums, one process adds per-batch sums: equal up to float rounding."""
    assert got[1] == want[1]
    assert got[0] == pytest.approx(want[0], rel=1e-5)


# -- fit(engine=...) ----------------------------------------------------------------------------
@pytest.mark.slow
@needs_engine
def test_fit_leaves_the_callers_pool_open_and_its_workers_score_the_test_set(monkeypatch):
    X, y = blobs(64, 0)
    Xt, yt = blobs(300, 1)
    model = tiny()
    with closing(make_engine(model, workers=2, threads_per_worker=1, seed=0)) as engine:
        model.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0, engine=engine)
        pids = engine.worker_pids
        assert len(pids) == 2 and not gone(pids), "fit closed the caller's pool"
        with monkeypatch.context() as m:
            refuse_in_this_process(m)
            score = engine.evaluate(Xt, yt)
    assert gone(pids) and our_segments() == set()
    assert_same_score(score, model.evaluate(Xt, yt))        # the model outlives the pool


def test_fit_with_a_callers_in_process_engine_trains_as_fit_alone():
    X, y = blobs(64, 0)
    alone, opened = tiny(), tiny()
    alone.fit(X, y, epochs=2, batch_size=16, seed=3, verbose=0)
    with closing(make_engine(opened, workers=1, seed=3)) as engine:
        history = opened.fit(X, y, epochs=2, batch_size=16, seed=3, verbose=0, engine=engine)
        assert engine.evaluate(X, y) == opened.evaluate(X, y)
    assert len(history["loss"]) == 2
    assert all(np.array_equal(a, b) for a, b in zip(alone.get_weights(), opened.get_weights()))


@pytest.mark.parametrize("options", [{"workers": 2}, {"threads_per_worker": 1}, {"deterministic": True},
                                     {"augment": lambda x, keys: x}, {"max_restarts": 1},
                                     {"backend": "mpi"}])
def test_fit_refuses_engine_options_beside_an_engine(options):
    X, y = blobs(16, 0)
    model = tiny()
    with closing(LocalEngine(model)) as engine:
        with pytest.raises(TypeError, match=f"engine= and {next(iter(options))}.*make_engine"):
            model.fit(X, y, engine=engine, verbose=0, **options)


def test_fit_refuses_an_engine_of_another_model():
    X, y = blobs(16, 0)
    with closing(LocalEngine(tiny())) as engine:
        with pytest.raises(ValueError, match="another model"):
            tiny().fit(X, y, engine=engine, verbose=0)


def test_fit_over_ranks_needs_a_seed_they_share():
    class TwoRanks(LocalEngine):                 # what DistributedEngine(seed=None) says on 2 ranks
        def describe(self):
            return EngineInfo("mpi", 1, 1, ranks=2)
    X, y = blobs(16, 0)
    model = tiny()
    with closing(TwoRanks(model)) as engine:
        with pytest.raises(ValueError, match="pass seed= to make_engine"):
            model.fit(X, y, engine=engine, verbose=0)
        model.fit(X, y, engine=engine, verbose=0, seed=1)      # the same seed given on every rank


def test_a_misspelt_engine_is_a_type_error_naming_it():
    X, y = blobs(16, 0)
    with pytest.raises(TypeError, match="did you mean engine"):
        tiny().fit(X, y, engin=None, verbose=0)
