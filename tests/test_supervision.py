"""Supervision: nothing lost, nothing hung, nothing exhausted.

One table of faults, each run in a subprocess of its own session (so every process it
starts can be found afterwards, even one re-parented to init) with its expected outcome:
the exit status or the recovery (bitwise the undisturbed result), exactly the expected
lines on stderr and no traceback, no process left, no ``dpnn_*`` segment left.

    kill the fork server            the workers train on, a new fork server, 1 line
    kill fork server + a worker     the worker respawned, bitwise, 2 lines (one per process)
    SIGKILL a worker mid-step       respawned, step redone, bitwise, 1 line
    SIGSTOP a worker                killed after worker_timeout, respawned, bitwise, 1 line
    kill -9 the whole group         the next run removes the leftovers, 1 line
    SIGTERM during start-up         exit 143, no traceback from any worker
    MPI run with a bad argument     the error once, MPICH's segment removed
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dpnn.janitor import run_prefix, segment_owner, sweep_stale

from conftest import (
    HAVE_MPI,
    MPIEXEC,
    ROOT,
    TINY_CNN,
    finish,
    mpich_segments,
    our_segments,
    subprocess_env,
    unmapped,
    wait_until,
)

pytestmark = pytest.mark.slow


# -- helpers ----------------------------------------------------------------------------------
def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid`` (a run started with start_new_session)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] not in "ZX":
            out.append(int(entry))
    return out


def assert_nothing_left(proc: subprocess.Popen) -> None:
    assert wait_until(lambda: not session_members(proc.pid), 10), \
        f"processes left: {session_members(proc.pid)}"
    assert wait_until(lambda: not our_segments(proc.pid), 5), f"segments left: {our_segments(proc.pid)}"


# -- training-level faults --------------------------------------------------------------------
FAULTS = textwrap.dedent('''
    import os, signal, sys, threading, time
    import numpy as np
    from multiprocessing import forkserver
    from dpnn import Activation, Conv2D, Dense, Flatten, Layer, MaxPool2D, Model, register_layer
    from dpnn.engine import LocalEngine
    from dpnn.random import sample_keys
    from dpnn.workers import DataParallel

    @register_layer
    class Nap(Layer):
        """Identity that sleeps in a worker, so a kill lands in the middle of a step."""
        def forward(self, x, training=False):
            if training and os.getpid() != COORDINATOR:
                time.sleep(0.05)
            return x
        def backward(self, grad):
            return grad

    def cnn():
        m = Model([Conv2D(4, 3), Activation("relu"), Nap(), MaxPool2D(2), Flatten(), Dense(10)], seed=0)
        m.compile(optimizer="adam", lr=0.01)
        m.build((1, 8, 8, 1))
        return m

    def batch(step, n=16):
        rng = np.random.default_rng(step)
        return (rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n),
                sample_keys(0, step, np.arange(n)))

    def disturb(fault, dp):
        server, (w0, w1) = forkserver._forkserver._forkserver_pid, dp.worker_pids
        if fault in ("forkserver", "forkserver+worker"):
            os.kill(server, signal.SIGKILL)
        if fault == "forkserver+worker":
            os.kill(w1, signal.SIGKILL)
        if fault == "worker":           # each step naps 4 x 0.05 s per worker: lands mid-step
            threading.Timer(0.1, os.kill, (w1, signal.SIGKILL)).start()
        if fault == "sigstop":
            os.kill(w1, signal.SIGSTOP)
        time.sleep(0.05 if fault != "worker" else 0)

    COORDINATOR = os.getpid()
    if __name__ == "__main__":
        data = [batch(s) for s in range(3)]
        ref = cnn()
        engine = LocalEngine(ref, deterministic=True)
        for b in data:
            engine.train_step(*b)
        m = cnn()
        with DataParallel(m, workers=2, deterministic=True, worker_timeout=1.5) as dp:
            dp.train_step(*data[0])
            disturb(sys.argv[1], dp)
            for b in data[1:]:
                dp.train_step(*b)
            restarts = dp.restarts
        print("RESULT", restarts, np.array_equal(m.params, ref.params), flush=True)
''')

COORDINATOR = textwrap.dedent('''
    import sys
    import numpy as np
    from dpnn import Activation, Callback, Conv2D, Dense, Flatten, MaxPool2D, Model

    class Ready(Callback):
        def on_batch_end(self, step, logs):
            open(sys.argv[1], "w").write("ready")

    if __name__ == "__main__":
        m = Model([Conv2D(4, 3), Activation("relu"), MaxPool2D(2), Flatten(), Dense(10)], seed=0)
        m.compile(optimizer="adam")
        rng = np.random.default_rng(0)
        X, y = rng.random((64, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 64)
        m.fit(X, y, epochs=10**6, batch_size=16, workers=2, verbose=0, callbacks=[Ready()])
''')


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A --dataset directory of tiny synthetic IDX files and a tiny model JSON."""

    from dpnn.datasets import make_synthetic
    from dpnn.idx import write_idx
    d = tmp_path_factory.mktemp("toy")
    for prefix, n, seed in (("train", 96, 0), ("t10k", 32, 1)):
        ds = make_synthetic(n, seed)
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", (ds.X[..., 0] * 255).round().astype(np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", ds.y.astype(np.uint8))
    (d / "tiny.json").write_text(json.dumps(TINY_CNN))
    return d


def wait_for_fork_server(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until ``proc`` has started its fork server: the pool's start-up has begun."""
    import psutil

    def started() -> bool:
        try:
            return any("forkserver" in " ".join(c.cmdline()) for c in psutil.Process(proc.pid).children())
        except psutil.Error:
            return False
    wait_until(lambda: proc.poll() is not None or started(), timeout, interval=0.005)


# -- the runs: each returns (process, exit status, stdout, stderr) ------------------------------
def start(args, cwd, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, env=kwargs.pop("env", subprocess_env()), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, **kwargs)


def run_training_fault(tmp_path, toy, fault):
    (tmp_path / "faults.py").write_text(FAULTS)
    proc = start([sys.executable, "faults.py", fault], tmp_path)
    return (proc, *finish(proc))


def run_killed_group_then_next(tmp_path, toy, _):
    """kill -9 -- -PGID: nobody of the run can unlink; the next run's pool start-up does."""
    (tmp_path / "train.py").write_text(COORDINATOR)
    ready = tmp_path / "ready"
    first = start([sys.executable, "train.py", str(ready)], tmp_path)
    if not wait_until(lambda: ready.exists() or first.poll() is not None, 60) or not ready.exists():
        pytest.fail(f"the run did not start training: {finish(first, 5)}")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    assert wait_until(lambda: not session_members(first.pid), 10)
    if not our_segments(first.pid):        # a pool started meanwhile by another job on this machine
        pytest.skip("another process swept the killed run's segments first")
    nxt = start([sys.executable, "-c", "from dpnn.workers import SharedArena\n"
                 "SharedArena.create({'params': ((4,), 'float32')}).unlink()"], tmp_path)
    code, out, err = finish(nxt)
    if not re.search(rf"\b{first.pid}\b", err) and not our_segments(first.pid):
        pytest.skip("another process swept the killed run's segments first")
    return first, code, out, re.sub(rf"\b{first.pid}\b", "FIRST", err)


def run_sigterm_at_start_up(tmp_path, toy, delay):
    """SIGTERM ``delay`` s after the fork server appears: while the workers start."""
    proc = start([sys.executable, "-m", "launch.train", "--dataset", str(toy), "--model",
                  str(toy / "tiny.json"), "--workers", "2", "--epochs", "1", "--limit", "64", "--quiet",
                  "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(tmp_path / "w.hdf5")], ROOT)
    wait_for_fork_server(proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    return (proc, *finish(proc))


def run_mpi_bad_argument(tmp_path, toy, flag):
    """--checkpoint-dir holding an earlier run (rank 0's check fails), or a bad ``flag`` (every
    rank's check fails): the job aborts."""
    common = ["-m", "launch.train", "--dataset", str(toy), "--model", str(toy / "tiny.json"),
              "--workers", "1", "--epochs", "1", "--quiet", "--checkpoint-dir", "ck"]
    earlier = subprocess.run([sys.executable, *common, "--out", "a.hdf5"], cwd=tmp_path, env=subprocess_env(),
                             capture_output=True, text=True, timeout=60)
    assert earlier.returncode == 0, earlier.stderr
    before = mpich_segments()
    proc = start([MPIEXEC, "-n", "2", sys.executable, *common, "--backend", "mpi", "--out", "b.hdf5",
                  *(flag or [])], tmp_path, env=dict(subprocess_env(), HYDRA_LAUNCHER="fork"))
    result = (proc, *finish(proc))
    assert wait_until(lambda: not unmapped(mpich_segments() - before), 5), \
        f"MPICH's segments were left: {unmapped(mpich_segments() - before)}"
    return result


# -- the table --------------------------------------------------------------------------------
WORKER_LINE = r"dpnn: worker 1 \(pid \d+\) died \({}\); respawned as pid \d+(, step redone)?"
SERVER_LINE = r"dpnn: the fork server \(pid \d+\) died; started a new one \(pid \d+\)"
SWEPT_LINE = (r"dpnn: removed \d+ shared-memory segment\(s\) left in /dev/shm by dead process\(es\) "
              r"(\d+, )*FIRST(, \d+)*")
MPI_LINE = r"python -m launch\.train: error: ck already holds checkpoints of an earlier run .*"
FLAG_LINE = r"python -m launch\.train: error: --lr must be > 0, got -1\.0"
MPICH_ABORT = r"Abort\(\d+\) on node \d+ \(rank 0 in comm 0\)"  # MPICH's own notice, when it gets out
TERM_CODES = (143, -signal.SIGTERM, 0)  # -15: before Python set its handler (a shell says 143); 0: done first
RECOVERED = "RESULT {} True"           # the restarts per worker, and bitwise the undisturbed run

# case: (run, its argument, exit statuses, the lines stderr holds (any order; None: not
#        counted), what stdout must hold)
FAULT_TABLE = {
    "kill the fork server": (run_training_fault, "forkserver", (0,), [SERVER_LINE], RECOVERED.format([0, 0])),
    "kill the fork server and a worker": (run_training_fault, "forkserver+worker", (0,), [
        SERVER_LINE, WORKER_LINE.format("exit status unknown: the fork server that started it died")],
        RECOVERED.format([0, 1])),
    "SIGKILL a worker mid-step": (run_training_fault, "worker", (0,), [WORKER_LINE.format("killed by SIGKILL")],
                                  RECOVERED.format([0, 1])),
    "SIGSTOP a worker": (run_training_fault, "sigstop", (0,), [WORKER_LINE.format(
        r"silent for more than 1\.5 s \(stopped or stuck\), so killed")], RECOVERED.format([0, 1])),
    "kill -9 the whole group, then a new run": (run_killed_group_then_next, None, (0,), [SWEPT_LINE], ""),
    **{f"SIGTERM {d} s into start-up": (run_sigterm_at_start_up, d, TERM_CODES, None, "")
       for d in (0.0, 0.05, 0.1, 0.2, 0.4)},
    "MPI run with a bad argument": (run_mpi_bad_argument, None, (2,), [MPI_LINE], ""),
    "MPI run with a bad flag": (run_mpi_bad_argument, ["--lr", "-1"], (2,), [FLAG_LINE], ""),
}
@pytest.mark.parametrize("case", list(FAULT_TABLE))
def test_fault_table(tmp_path, tiny_run, case):
    run, arg, codes, lines, stdout = FAULT_TABLE[case]
    if run is run_mpi_bad_argument and not HAVE_MPI:
        pytest.skip("mpi4py or mpiexec not found (pip install mpi4py mpich)")
    proc, code, out, err = run(tmp_path, tiny_run, arg)
    assert code in codes, (code, err)
    assert stdout in out, (out, err)
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines()             # leftovers of other jobs, swept meanwhile
            if not (line.startswith("dpnn: removed") and "FIRST" not in line)
            and not re.match(MPICH_ABORT, line)]
    if lines is not None:
        assert len(said) == len(lines), err
        for pattern in lines:
            assert any(re.fullmatch(pattern, line) for line in said), (pattern, err)
    assert_nothing_left(proc)


def test_only_a_dead_owners_segments_are_swept(tmp_path):
    """Fake leftovers: a dead pid's and a reused pid's go; a live owner's, another PID
    namespace's and an unrecognised name stay."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = os.getpid()
    mine = run_prefix(me)
    reused = re.sub(r"_s\d+n", "_s1n", run_prefix(me))              # this pid, another start time
    foreign = re.sub(r"n\d+_", "n1_", run_prefix(dead.pid))          # another PID namespace
    names = {"dead": f"{run_prefix(dead.pid)}_params_0", "reused": f"{reused}_x_1",
             "live": f"{mine}_grads_0", "foreign": f"{foreign}_x_0", "other": f"dpnn_{dead.pid}_cafe_x_0"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    removed = sweep_stale(str(tmp_path))
    assert removed == {dead.pid: 1, me: 1}
    assert sorted(os.listdir(tmp_path)) == sorted([names["live"], names["foreign"], names["other"]])
    assert segment_owner(names["live"])[:2] == (me, int(mine.split("_")[2][1:].split("n")[0]))
    assert segment_owner("mpich_shm_1234") is None and segment_owner("dpnn_x_1") is None
