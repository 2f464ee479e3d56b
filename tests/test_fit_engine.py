"""An engine the caller opened: ``fit(engine=...)`` trains with it and leaves it open, so the
same workers score a test set afterwards; ``launch.train`` runs its test pass that way and
closes the pool on every way out.

The proof that scoring ran on the workers: ``Model.predict`` and ``Model.evaluate`` are made to
raise in this process (the coordinator); the workers import dpnn afresh and never see that.
"""
import json
import os
from contextlib import closing

import numpy as np
import psutil
import pytest

import dpnn.cli.train as train_cli
from dpnn import Model
from dpnn.datasets import FASHION_DIR, _has_mnist_files, load_dataset
from dpnn.engine import EngineInfo, LocalEngine, make_engine
from dpnn.errors import WorkerError
from dpnn.signals import Terminated

from conftest import blobs, finish, launch_two_ranks, needs_mpi, our_segments, tiny

HAVE_ENGINE = train_cli.engine_available()
needs_engine = pytest.mark.skipif(not HAVE_ENGINE, reason="the data-parallel engine dpnn.workers is not available")


def refuse_in_this_process(monkeypatch):
    """Scoring in the coordinator fails the test; the workers are separate interpreters."""
    def refuse(*args, **kwargs):
        raise AssertionError("scored in the coordinator, not on the workers")
    monkeypatch.setattr(Model, "predict", refuse)
    monkeypatch.setattr(Model, "evaluate", refuse)


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
    model = tiny(seed=None)
    with closing(TwoRanks(model)) as engine:
        with pytest.raises(ValueError, match="pass seed= to make_engine"):
            model.fit(X, y, engine=engine, verbose=0)
        model.fit(X, y, engine=engine, verbose=0, seed=1)      # the same seed given on every rank
        model.seed = 2
        model.fit(X, y, engine=engine, verbose=0)              # Model(seed=...) is fit's seed too


def test_a_misspelt_engine_is_a_type_error_naming_it():
    X, y = blobs(16, 0)
    with pytest.raises(TypeError, match="did you mean engine"):
        tiny().fit(X, y, engin=None, verbose=0)


# -- launch.train's test pass -------------------------------------------------------------------
RUN = ["--model", "mlp", "--batch-size", "32", "--epochs", "1", "--quiet", "--seed", "5"]
TINY = ["--dataset", "synthetic", "--limit", "96"] + RUN       # a 500-sample test set


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def record_evaluate(monkeypatch, raise_after=None) -> list:
    """DataParallel.evaluate, recording (samples, worker pids) of each call; then raising
    ``raise_after`` if given (the pool is open at that moment)."""
    from dpnn.workers import DataParallel
    calls, evaluate = [], DataParallel.evaluate

    def recording(self, x, y, batch_size=256):
        calls.append((len(x), self.worker_pids))
        if raise_after is not None:
            raise raise_after
        return evaluate(self, x, y, batch_size)
    monkeypatch.setattr(DataParallel, "evaluate", recording)
    return calls


def scored(history_path) -> tuple[float, float]:
    """(test loss, test accuracy) as launch.train wrote them to --history."""
    saved = json.loads(open(history_path).read())
    return saved["test_loss"], saved["test_accuracy"]


@pytest.mark.slow
@needs_engine
@pytest.mark.parametrize("dataset, limit", [
    ("synthetic", 96),
    pytest.param("fashion-mnist", 2000, marks=pytest.mark.skipif(    # the 10,000-image test set
        not _has_mnist_files(FASHION_DIR), reason="fashion-mnist not installed"))])
def test_the_test_pass_runs_on_the_training_workers(in_tmp, monkeypatch, capsys, dataset, limit):
    calls = record_evaluate(monkeypatch)
    argv = ["--dataset", dataset, "--limit", str(limit), *RUN, "--workers", "2", "--threads-per-worker", "1",
            "--history", "h.json"]
    with monkeypatch.context() as m:
        refuse_in_this_process(m)
        status = train_cli.main(argv)
    assert status == 0, capsys.readouterr().err
    _, test = load_dataset(dataset)[:2]
    assert [n for n, _ in calls] == [len(test)]                  # the test pass, the only scoring
    assert len(calls[0][1]) == 2 and gone(calls[0][1]) and our_segments() == set()
    assert_same_score(scored("h.json"), Model.load("weights.hdf5").evaluate(test.X, test.y))


@pytest.mark.slow
def test_the_in_process_test_pass_scores_like_model_evaluate(in_tmp, capsys):
    """--workers 1: the in-process engine scores the test set, in this process."""
    assert train_cli.main(TINY + ["--workers", "1", "--history", "h.json"]) == 0, capsys.readouterr().err
    _, test = load_dataset("synthetic")[:2]
    assert_same_score(scored("h.json"), Model.load("weights.hdf5").evaluate(test.X, test.y))


@pytest.mark.slow
@needs_engine
@pytest.mark.parametrize("error, status, needle", [
    (KeyboardInterrupt(), 130, "interrupted while evaluating on the test set"),
    (Terminated(), 143, "interrupted while evaluating on the test set"),
    (WorkerError("worker 1 (pid 1) raised an exception"), 1, "training failed: worker 1"),
    (RuntimeError("unexpected"), None, None),
])
def test_every_way_out_of_the_test_pass_closes_the_pool(in_tmp, monkeypatch, capsys, error, status, needle):
    calls = record_evaluate(monkeypatch, raise_after=error)
    argv = TINY + ["--workers", "2", "--threads-per-worker", "1"]
    if status is None:
        with pytest.raises(type(error)):
            train_cli.main(argv)
    else:
        assert train_cli.main(argv) == status
        assert needle in capsys.readouterr().err
    assert len(calls) == 1 and len(calls[0][1]) == 2
    assert gone(calls[0][1]) and our_segments() == set()
    assert not os.path.exists("weights.hdf5")


@needs_mpi
@needs_engine
def test_the_test_pass_over_two_ranks_with_workers_scores_like_one_process(tmp_path):
    argv = TINY + ["--backend", "mpi", "--workers", "2", "--oversubscribe", "--history", "h.json",
                   "--checkpoint-dir", "none"]
    code, out, err = finish(launch_two_ranks(tmp_path, *argv), timeout=120)
    assert code == 0, err
    assert out.count("summary:") == 1, out
    _, test = load_dataset("synthetic")[:2]
    r0 = tmp_path / "r0"
    assert_same_score(scored(r0 / "h.json"), Model.load(str(r0 / "weights.hdf5")).evaluate(test.X, test.y))
