"""The one thread policy (dpnn/placement.py): explicit > the user's environment > dpnn's default,
and ranks x workers x threads never above the cores."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from dpnn import Callback, Dense, Flatten, Model, placement

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def after_import(**env) -> dict:
    """The BLAS variables and OpenBLAS's actual thread count in a fresh ``import dpnn``."""
    clean = {k: v for k, v in os.environ.items() if k not in placement.BLAS_THREAD_VARS
             and k not in ("DPNN_DISABLE_AUTO_THREADS",) + placement.LOCAL_RANK_VARS}
    code = ("import os, json, dpnn, numpy; from threadpoolctl import threadpool_info; "
            "blas = [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']; "
            f"print(json.dumps({{'env': {{k: os.environ.get(k) for k in {THREAD_VARS!r}}}, 'blas': blas}}))")
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                         text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def test_import_fills_in_the_usable_cores():
    cores = str(placement.usable_cores())
    got = after_import()
    assert got["env"] == {k: cores for k in THREAD_VARS}
    assert got["blas"] and set(got["blas"]) == {int(cores)}


def test_the_users_own_variable_wins():
    got = after_import(OMP_NUM_THREADS="1")      # OpenBLAS would read OPENBLAS_NUM_THREADS first
    assert got["env"] == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": None, "MKL_NUM_THREADS": None}
    assert set(got["blas"]) == {1}


def test_disabled_sets_nothing():
    assert after_import(DPNN_DISABLE_AUTO_THREADS="1")["env"] == {k: None for k in THREAD_VARS}


def test_mpi_ranks_on_one_node_share_its_cores():
    per_rank = str(max(1, placement.usable_cores() // 4))
    assert after_import(MPI_LOCALNRANKS="4")["env"] == {k: per_rank for k in THREAD_VARS}


def cores(monkeypatch, n):
    monkeypatch.setattr(placement, "usable_cores", lambda: n)


def test_explicit_then_environment_then_default(monkeypatch):
    cores(monkeypatch, 8)
    monkeypatch.setattr(placement, "_user_threads", None)
    assert placement.worker_threads(2, None, False) == (4, False)
    assert placement.worker_threads(2, None, True) == (1, False)          # deterministic
    monkeypatch.setattr(placement, "_user_threads", 3)
    assert placement.worker_threads(2, None, False) == (3, False)
    assert placement.worker_threads(2, 2, False) == (2, False)


def test_ranks_times_workers_times_threads_never_exceed_the_cores(monkeypatch):
    cores(monkeypatch, 2)
    monkeypatch.setattr(placement, "_user_threads", 2)        # e.g. OMP_NUM_THREADS=2 on every rank
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert placement.worker_threads(1, None, False, ranks=2) == (1, False)
        assert not caught
        assert placement.worker_threads(1, None, False, ranks=4) == (1, True)
    assert len(caught) == 1 and "4 ranks x 1 workers x 1 BLAS threads" in str(caught[0].message)


def test_auto_workers_split_the_cores_between_ranks(monkeypatch):
    cores(monkeypatch, 8)
    assert placement.resolve_workers("auto") == 8
    assert placement.resolve_workers("auto", ranks=4) == 2
    assert placement.resolve_workers("auto", ranks=16) == 1


def test_a_thousand_workers_are_refused_unless_insisted_on(monkeypatch):
    cores(monkeypatch, 2)
    with pytest.raises(ValueError, match="would start 1000 processes.*oversubscribe"):
        placement.resolve_workers(1000)
    assert placement.resolve_workers(1000, oversubscribe=True) == 1000
    assert placement.resolve_workers(8) == 8                   # 4 per core is allowed


def test_fit_in_process_honours_threads_per_worker():
    seen = []

    class BlasThreads(Callback):
        def on_batch_end(self, step, logs):
            seen.append(max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"))

    before = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 4, 4, 1)).astype(np.float32), rng.integers(0, 2, 20)
    model = Model([Flatten(), Dense(2)], seed=0).compile("cce", "sgd", lr=0.1)
    model.fit(X, y, epochs=1, batch_size=10, verbose=0, threads_per_worker=1, callbacks=[BlasThreads()])
    assert seen == [1, 1]
    assert max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas") == before


def test_the_cli_refuses_a_thousand_workers_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "launch.train", "--dataset", "synthetic", "--model", "mlp",
                        "--epochs", "1", "--workers", "1000", "--checkpoint-dir", "none"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    if placement.usable_cores() * placement.MAX_WORKERS_PER_CORE >= 1000:
        pytest.skip("this machine has enough cores for 1000 workers")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--oversubscribe" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_only_the_first_rank_of_a_node_warns(monkeypatch):
    cores(monkeypatch, 2)
    monkeypatch.setattr(placement, "_user_threads", None)
    for rank, expected in (("1", 0), ("0", 1)):
        monkeypatch.setenv("MPI_LOCALRANKID", rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert placement.worker_threads(1, None, False, ranks=4) == (1, True)
        assert len(caught) == expected, rank


def test_a_busy_machine_is_named_when_several_blas_threads_would_compete(monkeypatch):
    monkeypatch.setattr(placement, "usable_cores", lambda: 2)
    assert placement.contention_note(2, load=0.2) is None             # the cores are free
    assert placement.contention_note(1, load=8.0) is None             # one thread does not spin
    note = placement.contention_note(2, load=1.1)
    assert "busy (load 1.1 on 2 usable cores)" in note and "threads_per_worker=1" in note


def test_the_run_summary_says_so(monkeypatch, capsys):
    from dpnn import reporting
    monkeypatch.setattr(reporting, "contention_note", lambda threads: f"note: busy, {threads} threads")
    logger = reporting.EpochLogger()
    logger.on_train_begin({"epochs": 1, "initial_epoch": 0, "samples": 10, "engine_text": "here",
                           "threads_per_worker": 2})
    assert "note: busy, 2 threads" in capsys.readouterr().out
