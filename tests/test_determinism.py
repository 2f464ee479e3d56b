"""Bitwise at any scale (issue 29): deterministic mode's micro-shard count is the run's, any
workers x ranks up to it give the same bits, across ranks the ordered sum travels along the
ranks (O(gradient) per rank), evaluation sums are the same bits for any count, and a run
resumes bitwise on another scale."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpnn import placement
from dpnn.chain import chain_sum
from dpnn.comm import Communicator
from dpnn.engine import LocalEngine, make_engine
from dpnn.placement import default_micro_shards
from dpnn.recipe import add_slots, average_state, eval_bounds
from dpnn.workers import DataParallel, PoolNode

from conftest import HAVE_MPI, MPIEXEC, TINY_CNN, blobs, cnn, mpi_env, needs_mpi, subprocess_env, tiny

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "determinism_script.py")


class ThreadWorld(Communicator):
    """``size`` ranks as threads of this process: send/recv through queues, allgather through a
    barrier; counts the bytes each rank sends and receives."""

    def __init__(self, rank: int, size: int, shared: dict) -> None:
        self.rank, self.size, self.shared = rank, size, shared
        self.sent = self.received = 0

    @classmethod
    def world(cls, size: int) -> list["ThreadWorld"]:
        shared = {"queues": {}, "barrier": threading.Barrier(size), "slots": [None] * size}
        for a in range(size):
            for b in range(size):
                shared["queues"][a, b] = queue.Queue()
        return [cls(r, size, shared) for r in range(size)]

    def send(self, buf, dest):
        self.shared["queues"][self.rank, dest].put(np.array(buf, copy=True))
        self.sent += buf.nbytes

    def recv(self, buf, source):
        buf[...] = self.shared["queues"][source, self.rank].get(timeout=30)
        self.received += buf.nbytes
        return buf

    def allgather(self, buf):
        self.shared["barrier"].wait(30)
        self.shared["slots"][self.rank] = np.array(buf, copy=True)
        self.shared["barrier"].wait(30)
        out = np.stack(self.shared["slots"])
        self.shared["barrier"].wait(30)
        return out


def run_ranks(size: int, fn) -> list:
    """fn(comm) on ``size`` thread-ranks at once; their results in rank order."""
    comms, results, errors = ThreadWorld.world(size), [None] * size, []

    def one(comm):
        try:
            results[comm.rank] = fn(comm)
        except BaseException as e:          # reported below
            errors.append(e)
    threads = [threading.Thread(target=one, args=(c,)) for c in comms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


# -- the ordered sum across ranks --------------------------------------------------------------
@st.composite
def partitions(draw):
    """Micro-shard gradients and states of mixed magnitudes, their sample counts, and a random
    contiguous partition of them over ranks (at least one each), with a random pipeline grain."""
    m = draw(st.integers(1, 12))
    ranks = draw(st.integers(1, m))
    cuts = sorted(draw(st.lists(st.integers(1, m - 1), min_size=ranks - 1, max_size=ranks - 1, unique=True))) \
        if ranks > 1 else []
    seed = draw(st.integers(0, 2**32 - 1))
    counts = draw(st.lists(st.integers(0, 9), min_size=m, max_size=m))
    return m, [0, *cuts, m], seed, counts, draw(st.sampled_from([3, 7, 64, None]))


@settings(max_examples=40, deadline=None)
@given(partitions())
def test_any_partition_of_the_micro_shards_over_ranks_sums_to_the_same_bits(case):
    """Random partitions of the same micro-shard gradients over ranks, each rank's thread running
    whenever the scheduler lets it, in pipeline chunks of any size: every rank ends with
    bitwise the one-process sum (gradients in micro-shard order, states weighted by samples)."""
    m, bounds, seed, counts, grain = case
    rng = np.random.default_rng(seed)
    P, S = 50, 6
    scale = np.float32(10.0) ** rng.integers(-6, 6, (m, 1)).astype(np.float32)
    grads = (rng.standard_normal((m, P)).astype(np.float32) * scale)
    grads[:, ::7] *= -1e-7                                         # sums that cancel and round
    states = rng.standard_normal((m, S)).astype(np.float32)
    total = max(sum(counts), 1)
    expected = np.concatenate([add_slots(grads, np.empty(P, np.float32)),
                               average_state(states, counts, np.empty(S, np.float32), total)])

    def rank_sum(comm):
        a, b = bounds[comm.rank], bounds[comm.rank + 1]
        order = rng.permutation(b - a) if comm.rank % 2 else np.arange(b - a)
        mine_g, mine_s = np.empty((b - a, P), np.float32), np.empty((b - a, S), np.float32)
        for j in order:                                            # the slots filled in any order
            mine_g[j], mine_s[j] = grads[a + j], states[a + j]
        return chain_sum(comm, mine_g, mine_s, counts[a:b], total, np.empty(P + S, np.float32), grain)

    for got in run_ranks(len(bounds) - 1, rank_sum):
        assert got.tobytes() == expected.tobytes()


def test_the_chain_moves_about_twice_the_vector_per_rank_like_an_all_reduce():
    """Bytes per rank per step do not grow with the micro-shard count: each rank sends and receives
    the vector at most twice (an all-reduce moves 2 (p-1)/p of it), whatever the slots."""
    P, size = 1000, 4
    for micro_shards in (4, 16, 64):
        per_rank = micro_shards // size

        def rank_sum(comm, per_rank=per_rank, micro_shards=micro_shards):
            g = np.ones((per_rank, P), np.float32)
            s = np.ones((per_rank, 0), np.float32)
            chain_sum(comm, g, s, [1] * per_rank, micro_shards, np.empty(P, np.float32), 256)
            return comm.sent, comm.received
        traffic = run_ranks(size, rank_sum)
        allreduce = 2 * (size - 1) / size * P * 4
        assert max(max(t) for t in traffic) == 2 * P * 4 <= 1.5 * allreduce, (micro_shards, traffic)


# -- the micro-shard count ----------------------------------------------------------------------
def test_the_default_micro_shard_count_follows_the_batch_size():
    assert [default_micro_shards(b) for b in (None, 1, 64, 128, 256, 512, 1024, 4096)] == \
        [8, 4, 4, 4, 8, 16, 32, 64]


def test_more_workers_than_micro_shards_is_one_error_saying_what_to_change():
    with pytest.raises(ValueError, match=r"micro_shards=8 .*pass micro_shards=12 or more"):
        PoolNode(tiny(), workers=12, deterministic=True, micro_shards=8, oversubscribe=True)
    with pytest.raises(ValueError, match="micro_shards must be a positive int"):
        PoolNode(tiny(), workers=2, deterministic=True, micro_shards=0)
    with pytest.raises(ValueError, match="deterministic=True with it"):
        make_engine(tiny(), workers=2, micro_shards=4)


def test_auto_workers_take_at_most_one_micro_shard_each(monkeypatch):
    """``workers='auto'`` on a 48-core machine with 16 micro-shards: 16 workers, no error."""
    monkeypatch.setattr(placement, "usable_cores", lambda: 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        node = PoolNode(tiny(), workers="auto", deterministic=True, batch_size=512)
        assert node.workers == node.slots == 16
        assert PoolNode(tiny(), workers="auto", deterministic=True).workers == 8
        engine = make_engine(tiny(), workers="auto", deterministic=True, batch_size=64)   # fit's way
        assert engine.describe().workers == 4 and engine.describe().micro_shards == 4
        engine.close()


def test_the_engine_says_its_micro_shard_count():
    info = LocalEngine(tiny(), deterministic=True, batch_size=1024).describe()
    assert info.micro_shards == 32 and info.as_logs()["micro_shards"] == 32
    assert "deterministic (32 micro-shards)" in str(info)


def test_evaluation_batches_are_cut_at_whole_batches():
    assert eval_bounds(100, 32, 3) == [(0, 64), (64, 96), (96, 100)]
    assert eval_bounds(10, 32, 3) == [(0, 10), (10, 10), (10, 10)]


# -- processes ----------------------------------------------------------------------------------
def run_script(tmp_path, *args, launcher=()) -> dict:
    out = subprocess.run([*map(str, launcher), sys.executable, SCRIPT, *map(str, args)], cwd=tmp_path,
                         env=mpi_env(tmp_path) if launcher else subprocess_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return {r["config"]: r for r in map(json.loads, out.stdout.splitlines())}


def same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("params", "state", "loss", "val_loss"))


@pytest.mark.slow
def test_bitwise_on_1_2_3_8_12_16_workers(tmp_path):
    """A user's layer inside a Residual block, BatchNorm and Dropout, 16 micro-shards: weights,
    BatchNorm state, losses and validation losses are the same bits on any worker count
    (12 and 16 oversubscribed on this machine's cores)."""
    results = run_script(tmp_path, "train", 1, 2, 3, 8, 12, 16)
    for config, r in results.items():
        assert same(r, results["w1"]), config


class MeanOnlyLoss:
    """A README-style loss: forward returns the batch mean (so a batch's sum is mean x n, rounded
    differently for other batches), backward() its gradient."""
    def forward(self, y_pred, y_true):
        z = y_pred - y_pred.max(axis=1, keepdims=True)
        self.p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        self.y = np.eye(y_pred.shape[1], dtype=y_pred.dtype)[y_true]
        return float(-(self.y * np.log(self.p + 1e-12)).sum(axis=1).mean())

    def backward(self):
        return (self.p - self.y) / len(self.p)


@pytest.mark.slow
def test_evaluation_sums_are_the_same_bits_on_any_worker_count():
    """The validation loss fit reports (and EarlyStopping reads) does not depend on the count
    (before: each worker scored 300/N samples in its own batches, and the loss differed)."""
    x, y = blobs(n=300)
    model = cnn(filters=2, classes=2, input_shape=(6, 6, 1), lr=None).compile(MeanOnlyLoss(), "adam", lr=0.01)
    scores = [LocalEngine(model, deterministic=True).evaluate(x, y, 64)]
    for workers in (2, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with DataParallel(model, workers=workers, deterministic=True) as dp:
                scores.append(dp.evaluate(x, y, 64))       # 5 batches: 3 + 2, then 2 + 2 + 1 of them
    assert scores[0] == scores[1] == scores[2]


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_bitwise_over_mpi_ranks_with_1_to_3_workers_each(tmp_path, ranks):
    local = run_script(tmp_path, "train", 1)["w1"]
    mpi = run_script(tmp_path, "mpi", 1, 2, 3, launcher=(MPIEXEC, "-n", ranks))
    assert set(mpi) == {"mpi-w1", "mpi-w2", "mpi-w3"}
    for config, r in mpi.items():
        assert same(r, local), config


@pytest.mark.slow
def test_a_2_worker_run_resumes_bitwise_on_16_workers_4_ranks_x_3_and_in_one_process(tmp_path):
    straight = run_script(tmp_path, "straight")["straight"]
    run_script(tmp_path, "first", tmp_path)
    resumed = run_script(tmp_path, "resume", tmp_path, 16) | run_script(tmp_path, "resume", tmp_path, 1)
    if HAVE_MPI:
        resumed |= run_script(tmp_path, "resume-mpi", tmp_path, 3, launcher=(MPIEXEC, "-n", 4))
    for config, r in resumed.items():
        assert r["params"] == straight["params"] and r["state"] == straight["state"], config
        assert r["loss"][-1] == straight["loss"][-1] and r["val_loss"][-1] == straight["val_loss"][-1], config
    if not HAVE_MPI:
        pytest.skip("the MPI resume needs mpi4py and mpiexec: pip install mpi4py mpich")


# -- the command line ---------------------------------------------------------------------------
def train_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dpnn.cli.train", *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_the_checkpoint_keeps_the_micro_shard_count_and_resumes_bitwise_on_16_workers(tmp_path):
    from dpnn.cli.checkpoint import list_checkpoints, load_checkpoint
    from dpnn.io import read_arrays
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CNN))
    common = ["--dataset", "synthetic", "--limit", 96, "--model", "tiny.json", "--batch-size", 16, "--seed", 3,
              "--deterministic", "--quiet", "--micro-shards", 16]
    refused = train_cli(*common[:-2], "--epochs", 1, "--workers", 16, "--oversubscribe", cwd=tmp_path)
    assert refused.returncode == 2 and "--micro-shards 16" in refused.stderr, refused.stderr
    straight = train_cli(*common, "--epochs", 2, "--workers", 1, "--checkpoint-dir", "s", "--out", "s.hdf5",
                         cwd=tmp_path)
    first = train_cli(*common, "--epochs", 1, "--workers", 2, "--checkpoint-dir", "c", cwd=tmp_path)
    assert straight.returncode == 0 and first.returncode == 0, straight.stderr + first.stderr
    _, info, _ = load_checkpoint(list_checkpoints(str(tmp_path / "c"))[-1][1])
    assert info["config"]["micro_shards"] == 16
    resumed = train_cli("--resume", "--checkpoint-dir", "c", "--epochs", 2, "--workers", 16, "--oversubscribe",
                        "--out", "r.hdf5", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    (a, _), (b, _) = read_arrays(str(tmp_path / "s.hdf5")), read_arrays(str(tmp_path / "r.hdf5"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_micro_shards_without_deterministic_is_a_usage_error(tmp_path):
    r = train_cli("--dataset", "synthetic", "--micro-shards", 8, cwd=tmp_path)
    assert r.returncode == 2 and "--micro-shards applies with --deterministic only" in r.stderr


# -- the benchmarks run (they measure nothing here) ----------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("module, args", [
    ("deterministic", ["--batch-size", "16", "--steps", "4", "--rounds", "2", "--micro-shards", "4"]),
    ("exact_sums", ["--batch-size", "8", "--micro-shards", "2,4", "--reps", "1"]),
    ("bn_micro_shards", ["--train", "64", "--test", "32", "--epochs", "1", "--micro-shards", "2"]),
])
def test_the_determinism_benchmarks_run(tmp_path, module, args):
    root = os.path.dirname(HERE)
    r = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args, "--json", str(tmp_path / "o.json")],
                       cwd=root, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["rows"] and "load" in r.stdout
    if module == "exact_sums":            # the fixed-point sum is order-free, as its docstring says
        assert all(row["fixed-point"]["same_bits_in_any_order"] for row in out["rows"])
