"""The MPI backend: communicators, the distributed engine, and real `mpiexec -n 2` runs on localhost.

The mpiexec tests run scripts written to tmp_path (so spawned workers can import their
main module) and compare what rank 0 saved with an in-process run of the same training.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dpnn import Activation, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Model
from dpnn.comm import LocalComm, get_communicator
from dpnn.distributed import DistributedEngine, RanksDiverged, on_root
from dpnn.node import Batch
from dpnn.step import data_fingerprint

from conftest import (
    MPIEXEC,
    TINY_CNN,
    finish,
    launch_two_ranks,
    mpi_env,
    mpich_segments,
    needs_mpi,
    unmapped,
    wait_until,
)


def workers_available() -> bool:
    try:
        from dpnn.workers import DataParallel  # noqa: F401 -- imported only to learn whether it imports
    except ImportError:
        return False
    return True


# -- the workload: tiny models, 90 samples, 3 steps per epoch ---------------------------------
MODELS = textwrap.dedent('''
    import numpy as np
    from dpnn import (Activation, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D,
                      Model, Residual)

    def make(kind):
        if kind == "residual":   # BatchNorm and Dropout inside blocks, a projection shortcut
            block = [Conv2D(4, (3, 3), use_bias=False), BatchNorm2D(), Activation("relu"), Dropout(0.25),
                     Conv2D(4, (3, 3)), BatchNorm2D()]
            down = Residual([Conv2D(6, (3, 3), stride=2), BatchNorm2D()],
                            shortcut=[Conv2D(6, (1, 1), stride=2), BatchNorm2D()], activation="relu")
            layers = [Conv2D(4, (3, 3)), Residual(block, activation="relu"), down, GlobalAvgPool2D(), Dense(3)]
            return Model(layers, seed=1).compile(optimizer="adam", lr=1e-2, clip_norm=1.0)
        if kind == "bn":     # BatchNorm + Dropout, Adam, decay and clipping: every path of a step
            layers = [Conv2D(4, (3, 3), padding="same"), BatchNorm2D(), Activation("relu"),
                      MaxPool2D((2, 2)), Flatten(), Dense(16), Activation("relu"), Dropout(0.25), Dense(3)]
            m = Model(layers, seed=1)
            return m.compile(optimizer="adam", lr=1e-2, weight_decay=1e-4, clip_norm=1.0)
        layers = [Conv2D(4, (3, 3), padding="same"), Activation("relu"), MaxPool2D((2, 2)),
                  Flatten(), Dense(16), Activation("relu"), Dropout(0.25), Dense(3)]
        return Model(layers, seed=1).compile(optimizer="sgd", lr=0.05, momentum=0.9)

    def data():
        rng = np.random.default_rng(0)
        X = rng.normal(size=(90, 8, 8, 1)).astype(np.float32)
        return X, rng.integers(0, 3, 90)

    CASES = [("plain", "plain", {}),                                 # (key, model, fit options)
             ("bn-det", "bn", {"deterministic": True}),
             ("bn", "bn", {}),
             ("bn-sync", "bn", {"sync_batchnorm": True}),
             ("plain-2workers", "plain", {"workers": 2}),
             ("bn-det-2workers", "bn", {"deterministic": True, "workers": 2}),
             ("residual-det", "residual", {"deterministic": True}),
             ("residual-det-2workers", "residual", {"deterministic": True, "workers": 2})]

    def engine_available():
        try:
            from dpnn.workers import DataParallel  # noqa: F401
        except ImportError:
            return False
        return True

    def train(model, **kwargs):
        X, y = data()
        return model.fit(X, y, epochs=2, batch_size=32, seed=5, verbose=0,
                         val_data=(X[:20], y[:20]), **kwargs)
''')

RUN = textwrap.dedent('''
    import json, os, sys, time
    import numpy as np
    from dpnn import Callback
    from dpnn.comm import get_communicator
    from models import CASES, data, engine_available, make, train


    class Fail(Callback):                # the failure tests: rank 1 raises / waits to be killed
        def __init__(self, mode, out, rank):
            self.mode, self.out, self.rank = mode, out, rank

        def on_batch_end(self, step, logs):
            if self.mode == "raise" and self.rank == 1 and step == 1:
                raise ValueError("rank 1 was told to fail")
            if self.mode == "hang" and self.rank == 1 and step == 1:
                time.sleep(600)
            ready = f"{self.out}/ready-{self.rank}"
            if not os.path.exists(ready):
                with open(ready + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.rename(ready + ".tmp", ready)
            time.sleep(0.05)


    def main(mode, out, workers=1):
        comm = get_communicator("mpi")
        if mode == "other-data":           # each node loaded a different file of the same size
            X, y = data()
            make("plain").fit(X + np.float32(comm.rank), y, epochs=1, batch_size=32, seed=5, verbose=0,
                              backend=comm)
            return
        if mode in ("raise", "kill", "hang"):
            make("plain").fit(*data(), epochs=1000, batch_size=16, seed=5, verbose=0, backend=comm,
                              workers=int(workers), callbacks=[Fail(mode, out, comm.rank)])
            return
        for key, kind, options in CASES:
            if options.get("workers", 1) > 1 and not engine_available():
                continue
            model = make(kind)
            history = train(model, backend=comm, **options)
            np.save(f"{out}/{key}-params-{comm.rank}.npy", model.params)
            np.save(f"{out}/{key}-state-{comm.rank}.npy", model.state)
            with open(f"{out}/{key}-history-{comm.rank}.json", "w") as f:
                json.dump(history, f)


    if __name__ == "__main__":         # spawned workers import this module: no MPI for them
        main(*sys.argv[1:])
''')


def write_scripts(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "run.py").write_text(RUN)
    sys.path.insert(0, str(tmp_path))
    import models
    sys.path.pop(0)
    return models


def mpiexec(tmp_path, *args, n: int = 2, timeout: float = 60, **popen):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, *args]
    return subprocess.Popen(cmd, cwd=tmp_path, env=mpi_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)


def our_shm(prefix: str = "dpnn") -> set[str]:
    """Shared-memory segments in /dev/shm whose names start with ``prefix``."""
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)} if os.path.isdir("/dev/shm") else set()


# -- communicators, in process ----------------------------------------------------------------
def test_local_comm_is_the_identity():
    c = get_communicator("local")
    a = np.arange(4, dtype=np.float32)
    assert (c.rank, c.size) == (0, 1)
    assert c.allreduce(a) is a and c.bcast(a) is a and np.array_equal(c.allgather(a), a[None])
    assert c.bcast_object({"k": 1}) == {"k": 1}
    assert on_root(c, lambda: 7) == 7
    with pytest.raises(ValueError, match="unknown communicator"):
        get_communicator("nccl")


def test_missing_mpi4py_says_how_to_install(monkeypatch):
    import threading
    monkeypatch.setitem(sys.modules, "mpi4py", None)      # "import mpi4py" now raises ImportError
    with pytest.raises(ImportError, match=r"pip install mpi4py mpich"):
        get_communicator("mpi")
    assert wait_until(lambda: not any(t.name == "dpnn-mpi-watchdog" for t in threading.enumerate()), 5), \
        "the watchdog outlived it"


def tiny_bn_model():
    layers = [Conv2D(3, (3, 3), padding="same"), BatchNorm2D(), Activation("relu"), MaxPool2D((2, 2)),
              Flatten(), Dense(8), Activation("relu"), Dropout(0.25), Dense(3)]
    return Model(layers, seed=2).compile(optimizer="adam", lr=1e-2)


def test_one_rank_is_bitwise_local_engine():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(50, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, 50)
    for det in (True, False):
        a, b = tiny_bn_model(), tiny_bn_model()
        ha = a.fit(X, y, epochs=2, batch_size=16, seed=3, deterministic=det, verbose=0)
        hb = b.fit(X, y, epochs=2, batch_size=16, seed=3, deterministic=det, verbose=0, backend=LocalComm())
        assert np.array_equal(a.params, b.params) and np.array_equal(a.state, b.state)
        assert ha["loss"] == hb["loss"]


class SkewedComm(LocalComm):
    """A two-rank world seen from rank 0, where rank 1 reports ``skew`` added to a checksum."""
    size = 2

    def __init__(self, column: int) -> None:
        self.column = column

    def allgather(self, buf):
        rows = np.stack([buf, buf])
        rows[1, self.column] += np.uint64(1)
        return rows


@pytest.mark.parametrize("column, what", [(0, "parameters"), (4, "batches"), (6, "training data")])
def test_divergent_ranks_are_an_error(column, what):
    model = tiny_bn_model()
    model.build((1, 6, 6, 1))
    engine = DistributedEngine(model, SkewedComm(column))
    x = np.zeros((4, 6, 6, 1), np.float32)
    try:
        with pytest.raises(RanksDiverged, match=rf"ranks \[1\] hold different {what}"):
            engine.check_in_sync(Batch(x, np.zeros(4)), np.arange(4, dtype=np.uint64))
    finally:
        engine.close()


def test_the_data_fingerprint_sees_every_byte():
    X, y = np.zeros((10, 4, 4, 1), np.float32), np.zeros(10, np.int64)
    other = X.copy()
    other[9, 3, 3, 0] = 1e-3
    assert data_fingerprint(X, y) == data_fingerprint(X.copy(), y.copy())
    assert data_fingerprint(X, y) != data_fingerprint(other, y)
    assert data_fingerprint(X, y) != data_fingerprint(X, y + 1)


# -- two ranks with mpiexec -------------------------------------------------------------------
@needs_mpi
def test_ranks_that_loaded_different_data_stop_at_the_first_step(tmp_path):
    """Same row count, different bytes (another file on one node): RanksDiverged, not silent
    training on two data sets. Every rank aborts at once: MPICH's own segment goes too."""
    write_scripts(tmp_path)
    before = mpich_segments()
    code, out, err = finish(mpiexec(tmp_path, "run.py", "other-data", str(tmp_path)), timeout=60)
    assert code != 0
    assert "RanksDiverged" in err and "different training data" in err, err
    assert wait_until(lambda: not unmapped(mpich_segments() - before), 5), \
        f"MPICH's segments were left: {unmapped(mpich_segments() - before)}"



@needs_mpi
def test_two_ranks_train_like_one_process(tmp_path):
    """2 ranks == 1 process (bitwise in deterministic mode) == 1 rank with 2 shared-memory workers."""
    models = write_scripts(tmp_path)
    code, out, err = finish(mpiexec(tmp_path, "run.py", "train", str(tmp_path)), timeout=60)
    assert code == 0, err
    for key, kind, options in models.CASES:
        if not (tmp_path / f"{key}-params-0.npy").exists():
            assert options.get("workers", 1) > 1 and not workers_available(), key
            continue
        p0, p1 = (np.load(tmp_path / f"{key}-params-{r}.npy") for r in (0, 1))
        assert np.array_equal(p0, p1), f"{key}: the ranks ended with different parameters"
        h0 = json.loads((tmp_path / f"{key}-history-0.json").read_text())
        local = models.make(kind)
        history = models.train(local, **{k: v for k, v in options.items() if k != "workers"})
        if options.get("deterministic"):       # same micro-shards, same summation order
            assert np.array_equal(p0, local.params), key
            assert np.array_equal(np.load(tmp_path / f"{key}-state-0.npy"), local.state), key
            assert h0["loss"] == history["loss"] and h0["acc"] == history["acc"], key
        elif kind == "plain":                  # no BatchNorm: the same function, float32 rounding apart
            np.testing.assert_allclose(p0, local.params, rtol=1e-4, atol=1e-5, err_msg=key)
            np.testing.assert_allclose(h0["loss"], history["loss"], rtol=1e-5, err_msg=key)
        if not options.get("deterministic") and workers_available():    # 2 ranks x 1 == 1 rank x 2 workers
            shm = models.make(kind)
            models.train(shm, workers=2, **{k: v for k, v in options.items() if k != "workers"})
            np.testing.assert_allclose(p0, shm.params, rtol=1e-4, atol=1e-5, err_msg=key)


def job_shm(pids) -> set[str]:
    """dpnn segments of these coordinators (other jobs on this machine may own others)."""
    return {n for n in our_shm() for p in pids if n.startswith(f"dpnn_{p}_")}


def wait_until_clean(pids, segments=(), timeout: float = 10) -> None:
    wait_until(lambda: not (alive(pids) or job_shm(pids) or any(os.path.exists(f"/dev/shm/{n}") for n in segments)),
               timeout)                   # the janitors clean up right after the job ends
    assert alive(pids) == [], "processes of the job survived it"
    assert job_shm(pids) == set(), "the job's shared memory was left in /dev/shm"
    left = [n for n in segments if os.path.exists(f"/dev/shm/{n}")]
    assert left == [], f"MPICH's segments were left: {left} (the janitor removes them)"


@needs_mpi
def test_a_rank_that_raises_ends_the_job(tmp_path):
    workers = 2 if workers_available() else 1
    write_scripts(tmp_path)
    code, out, err = finish(mpiexec(tmp_path, "run.py", "raise", str(tmp_path), str(workers)), timeout=30)
    assert code != 0
    assert "rank 1/2 failed" in err and "rank 1 was told to fail" in err
    ranks = [int((tmp_path / f"ready-{r}").read_text()) for r in (0, 1)]
    wait_until_clean(ranks)


@needs_mpi
def test_a_rank_that_hangs_is_caught_by_the_watchdog(tmp_path):
    write_scripts(tmp_path)
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "run.py", "hang", str(tmp_path), "1"],
                            cwd=tmp_path, env={**mpi_env(tmp_path), "DPNN_MPI_TIMEOUT": "3"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    code, out, err = finish(proc, timeout=30)
    assert code != 0
    assert "rank 0/2 waited more than 3 s in allreduce" in err, err


def alive(pids) -> list[int]:
    import psutil
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@needs_mpi
@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_rank_ends_the_job_and_leaves_nothing(tmp_path, workers):
    import psutil
    if workers > 1 and not workers_available():
        pytest.skip("dpnn.workers (the shared-memory engine) is not available")
    from dpnn.janitor import mapped_segments
    write_scripts(tmp_path)
    proc = mpiexec(tmp_path, "run.py", "kill", str(tmp_path), str(workers))
    ready = [tmp_path / f"ready-{r}" for r in (0, 1)]
    if not wait_until(lambda: all(p.exists() for p in ready) or proc.poll() is not None, 40) \
            or not all(p.exists() for p in ready):
        finish(proc, 5)
        pytest.fail(f"the ranks did not start training: {proc.returncode}")
    ranks = [int(p.read_text()) for p in ready]
    family = ranks + [c.pid for r in ranks for c in psutil.Process(r).children(recursive=True)]
    mpich = mapped_segments(ranks[0], "mpich_shm_")
    if workers > 1:
        assert job_shm(ranks[:1]), "rank 0's workers use shared memory"
    os.kill(ranks[1], signal.SIGKILL)
    code, out, err = finish(proc, timeout=20)
    assert code != 0
    wait_until_clean(family + ranks, mpich)


# -- launch.train over two ranks --------------------------------------------------------------
@needs_mpi
def test_launch_train_over_two_ranks_resumes_bitwise(tmp_path):
    from dpnn.datasets import make_synthetic
    from dpnn.idx import write_idx
    from dpnn.io import read_arrays
    data = tmp_path / "toy"
    data.mkdir()
    for prefix, n, seed in (("train", 160, 0), ("t10k", 50, 1)):
        ds = make_synthetic(n, seed)
        write_idx(data / f"{prefix}-images-idx3-ubyte.gz", (ds.X[..., 0] * 255).round().astype(np.uint8))
        write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", ds.y.astype(np.uint8))
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CNN))
    common = ["--dataset", data, "--model", tmp_path / "tiny.json", "--deterministic", "--workers", 1,
              "--batch-size", 32, "--seed", 7, "--val-split", 0.2]
    straight = subprocess.run([sys.executable, "-m", "launch.train", *map(str, common), "--epochs", "3",
                               "--out", "straight.hdf5", "--checkpoint-dir", "a", "--quiet"],
                              cwd=tmp_path, env=mpi_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert straight.returncode == 0, straight.stderr
    code, out, err = finish(launch_two_ranks(tmp_path, *common, "--backend", "mpi", "--epochs", 2,
                                             "--out", "w.hdf5", "--checkpoint-dir", "ck"), timeout=60)
    assert code == 0, err
    assert out.count("summary:") == 1 and out.count("epoch 2/2: loss") == 1, (out, err)  # rank 0 alone prints
    code, out, err = finish(launch_two_ranks(tmp_path, "--resume", "--checkpoint-dir", "ck", "--epochs", 3,
                                             "--quiet", "--out", "w.hdf5"), timeout=60)
    assert code == 0, err        # rank 1 resumed from rank 0's checkpoint: its own ck/ does not exist
    assert list((tmp_path / "r1").iterdir()) == [], "only rank 0 writes files"
    mine, _ = read_arrays(str(tmp_path / "r0" / "w.hdf5"))
    theirs, _ = read_arrays(str(tmp_path / "straight.hdf5"))
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)


@needs_mpi
def test_mpi_scaling_benchmark_prints_a_table(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "benchmarks.mpi_scaling", "--ranks", "1,2", "--model", "mlp",
                        "--batch-size", "16", "--steps", "2", "--warmup", "0", "--json", str(tmp_path / "s.json")],
                       cwd=root, env=mpi_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert [(row["ranks"], row["mode"]) for row in rows] == [(1, "default"), (1, "deterministic"),
                                                             (2, "default"), (2, "deterministic")]
    assert all(row["samples_per_s"] > 0 for row in rows)
    assert "samples/s" in r.stdout and "reduce ms" in r.stdout and "sent MB" in r.stdout
    two = [row for row in rows if row["ranks"] == 2]     # both modes move O(gradient) per rank per step
    assert all(row["sent_mb"] >= row["grad_mb"] for row in two)
    assert two[1]["sent_mb"] <= 1.5 * two[0]["sent_mb"] and two[1]["received_mb"] <= 1.5 * two[0]["received_mb"]


def test_launch_knows_when_mpiexec_started_it():
    from dpnn.cli.mpi import launched_ranks
    assert launched_ranks({}) == 1
    assert launched_ranks({"PMI_SIZE": "4"}) == 4 and launched_ranks({"OMPI_COMM_WORLD_SIZE": "2"}) == 2
