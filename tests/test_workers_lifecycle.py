"""Failures and shutdown of the data-parallel engine: nothing hangs, nothing leaks.

A worker that raises, a worker killed with SIGKILL (respawned, the step redone: same result
as an undisturbed run), a worker that keeps dying, Ctrl-C / SIGTERM / SIGKILL on the
coordinator (run as a script in a subprocess). After each: no child process and no
``dpnn_<pid>_*`` segment in /dev/shm.
"""
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

from dpnn import Activation, BatchNorm2D, Conv2D, Dense, Flatten, Layer, MaxPool2D, Model, register_layer
from dpnn.engine import LocalEngine
from dpnn.errors import WorkerError
from dpnn.workers import DataParallel, SharedMemoryError
from dpnn.workers import arena as arena_module

from conftest import SHM, batch, cnn, interruptible, our_segments, subprocess_env, wait_until, workers_alive

pytestmark = pytest.mark.slow


def in_worker() -> bool:
    return multiprocessing.parent_process() is not None


class ExplodeOnMarker(Layer):
    """Raises inside a worker when its shard holds the marker value 7."""

    def forward(self, x, training=False):
        if training and in_worker() and (x == 7).any():
            raise ValueError("marker")
        return x

    def backward(self, grad):
        return grad


@register_layer
class Explode(Layer):
    """Identity in the test process; raises inside a worker."""

    def forward(self, x, training=False):
        if training and in_worker():
            raise ValueError("boom from the Explode layer")
        return x

    def backward(self, grad):
        return grad


@register_layer
class Nap(Layer):
    """Identity that sleeps in a worker, so a step lasts long enough to be interrupted."""

    def __init__(self, seconds=0.05):
        super().__init__()
        self.seconds = seconds

    def forward(self, x, training=False):
        if training and in_worker():
            time.sleep(self.seconds)
        return x

    def backward(self, grad):
        return grad

    def get_config(self):
        return {"seconds": self.seconds}


@register_layer
class SelfDestruct(Layer):
    """Kills its own (worker) process with SIGKILL."""

    def forward(self, x, training=False):
        if training and in_worker():
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    def backward(self, grad):
        return grad


def test_a_worker_that_raises_stops_everything_and_names_itself():
    m = cnn(Explode())
    x, y, k = batch(0)
    with pytest.raises(WorkerError) as info:
        with DataParallel(m, workers=2) as dp:
            dp.train_step(x, y, k)
    text = str(info.value)
    assert re.match(r"worker [01] \(pid \d+\) raised", text), text     # both raise: the first one heard
    assert "Traceback" in text and "ValueError: boom from the Explode layer" in text
    assert dp.node.pool is None or all(p is None for p in dp.node.pool.procs)
    assert m.predict(x).shape == (16, 10)        # the model left shared memory and still works


def test_a_killed_worker_is_respawned_and_the_step_redone():
    """Kill worker 1 between steps and worker 0 in the middle of one: bitwise the undisturbed
    result (with the optimizer step on the workers, so the respawned ones take part in it)."""
    data = [batch(s) for s in range(4)]
    ref = cnn(Nap())
    engine = LocalEngine(ref, deterministic=True)
    for x, y, k in data:
        engine.train_step(x, y, k)
    m = cnn(Nap())
    with DataParallel(m, workers=2, deterministic=True, shard_optimizer=True) as dp:
        dp.train_step(*data[0])
        first = dp.worker_pids
        os.kill(first[1], signal.SIGKILL)
        dp.train_step(*data[1])
        noticed = []

        def kill_worker_0():
            os.kill(victim, signal.SIGKILL)
            noticed.append(wait_until(lambda: dp.restarts[0] == 1, 10))

        victim = dp.worker_pids[0]
        killer = threading.Timer(0.1, kill_worker_0)
        killer.start()
        dp.train_step(*data[2])      # each worker naps 4 x 0.05 s: the kill lands mid-step
        dp.train_step(*data[3])      # (on a very busy machine it may land after: noticed here)
        killer.join()
        assert noticed == [True], "the death was not noticed promptly"
        assert dp.restarts == [1, 1]
        assert set(dp.worker_pids).isdisjoint(first)
    assert np.array_equal(m.params, ref.params)


def test_the_only_worker_killed_while_its_coordinator_waits_awake():
    """One worker on a machine with a core to spare: the coordinator sleeps through most of the
    step it expects, then checks the pipe awake, and reads the worker's one gradient slot in
    place. A death in that step is noticed at once and the step redone: bitwise the result of
    an undisturbed pool."""
    if os.cpu_count() < 2:
        pytest.skip("the coordinator waits awake only with a core of its own")
    data = [batch(s) for s in range(3)]
    results = []
    for disturb in (False, True):
        m = cnn(Nap(0.2))
        with DataParallel(m, workers=1, threads_per_worker=1, pin=False) as dp:
            if dp.node._awake is False:
                pytest.skip("no core to spare here (cgroup quota or affinity)")
            dp.train_step(*data[0])                       # the step the next one is expected to take
            noticed = []
            victim = dp.worker_pids[0]

            def kill(victim, noticed, dp):
                os.kill(victim, signal.SIGKILL)
                noticed.append(wait_until(lambda: dp.restarts[0] == 1, 10))

            killer = threading.Timer(0.1, kill, (victim, noticed, dp))
            if disturb:
                killer.start()
            dp.train_step(*data[1])                       # the kill lands in the 0.2 s nap
            dp.train_step(*data[2])
            if disturb:
                killer.join()
                assert noticed == [True] and dp.restarts == [1]
        results.append(m.params.copy())
    assert np.array_equal(results[0], results[1])


def test_synchronised_batchnorm_survives_a_death_in_the_middle_of_an_exchange():
    """Worker 1 dies while worker 0 waits for it in a BatchNorm exchange: the whole pool is
    replaced and the step redone, giving what an undisturbed run gives."""
    data = [batch(s) for s in range(3)]
    results = []
    for disturb in (False, True):
        m = cnn(Nap(0.3), BatchNorm2D())
        with DataParallel(m, workers=2, sync_batchnorm=True) as dp:
            for step, b in enumerate(data):
                killer = threading.Timer(0.15, os.kill, (dp.worker_pids[1], signal.SIGKILL))
                if disturb and step == 1:
                    killer.start()
                dp.train_step(*b)
                if killer.is_alive():
                    killer.join()
            restarts = dp.restarts
        results.append((m.params, m.state))
    assert restarts == [0, 1]
    assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])


@pytest.mark.timeout(30)      # a hang fails here, not after the suite's 300 s
def test_an_error_during_synchronised_batchnorm_does_not_hang():
    m = cnn(Explode(), BatchNorm2D())
    with pytest.raises(WorkerError, match="boom"):
        with DataParallel(m, workers=2, sync_batchnorm=True) as dp:
            dp.train_step(*batch(0))


def test_a_worker_that_keeps_dying_ends_with_an_error():
    m = cnn(SelfDestruct())
    # both die in every step; which death the coordinator sees first varies (the survivor
    # waits at the update's barrier and is replaced with the dead one, not counted)
    with pytest.raises(WorkerError, match=r"worker [01] .*died 3 times.*SIGKILL.*max_restarts=2"):
        with DataParallel(m, workers=2, max_restarts=2) as dp:
            dp.train_step(*batch(0))


def test_close_is_idempotent_and_the_model_keeps_its_weights():
    m = cnn()
    dp = DataParallel(m, workers=2)
    dp.train_step(*batch(0))
    trained = m.params.copy()
    assert our_segments(os.getpid())
    dp.close()
    dp.close()
    assert np.array_equal(m.params, trained)
    with pytest.raises(RuntimeError, match="closed"):
        dp.train_step(*batch(1))


def test_too_little_shared_memory_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(arena_module, "shm_free_bytes", lambda path=SHM: 1000)
    with pytest.raises(SharedMemoryError, match=r"needs \d+\.\d MiB of shared memory.*has only 0\.0 MiB"):
        DataParallel(cnn(), workers=2).train_step(*batch(0))


@pytest.mark.parametrize("kwargs, message", [
    ({"workers": 9, "deterministic": True, "oversubscribe": True}, "pass micro_shards=9 or more"),
    ({"workers": 2, "deterministic": True, "sync_batchnorm": True}, "cannot be combined"),
    ({"workers": 0}, "positive int"),
    ({"workers": 2, "max_restarts": -1}, "max_restarts"),
    ({"workers": 2, "shard_optimizer": "yes"}, "shard_optimizer"),
])
def test_bad_options_are_refused_before_anything_starts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataParallel(cnn(), **kwargs)


def test_fork_is_refused():
    with pytest.raises(ValueError, match="fork"):
        DataParallel(cnn(), workers=2, start_method="fork").train_step(*batch(0))


# -- the coordinator in a subprocess ------------------------------------------------------
SCRIPT = """
import sys
import numpy as np
from dpnn import Activation, Callback, Conv2D, Dense, Flatten, MaxPool2D, Model

class Ready(Callback):
    def on_batch_end(self, step, logs):
        if step == 1 and not self.done:
            open(sys.argv[1], "w").write("ready")
            self.done = True
    done = False

if __name__ == "__main__":
    m = Model([Conv2D(4, 3), Activation("relu"), MaxPool2D(2), Flatten(), Dense(10)], seed=0)
    m.compile(optimizer="adam")
    rng = np.random.default_rng(0)
    X, y = rng.random((64, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 64)
    try:
        m.fit(X, y, epochs=10**6, batch_size=16, workers=2, verbose=0, callbacks=[Ready()])
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        raise
"""


def start_coordinator(tmp_path):
    """Run SCRIPT; returns (process, its descendants once it trains, stderr file)."""
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT))
    ready, err = tmp_path / "ready", open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([sys.executable, str(tmp_path / "train.py"), str(ready)],
                            stdout=subprocess.PIPE, stderr=err, text=True, cwd=tmp_path, preexec_fn=interruptible)
    if not wait_until(lambda: ready.exists() or proc.poll() is not None, 120) or not ready.exists():
        proc.kill()
        err.seek(0)
        pytest.fail(f"the coordinator did not start training:\n{err.read()}")
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers_alive(proc.pid)) == 2
    return proc, family, err


def gone(family):
    return not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupting_the_coordinator_stops_every_worker(tmp_path, sig):
    proc, family, err = start_coordinator(tmp_path)
    try:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:                           # a signal that did nothing must not leave a training run behind
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err.seek(0)
    stderr = err.read()
    assert "INTERRUPTED" in out and "TrainingInterrupted" in stderr    # a KeyboardInterrupt
    assert wait_until(lambda: gone(family), 10), "processes outlived the coordinator"
    assert our_segments(proc.pid) == set()
    assert "leaked" not in stderr


def test_the_interrupt_test_holds_when_pytest_runs_with_sigint_ignored(tmp_path):
    """Started in the background (``make test &``), pytest and every child inherit SIGINT ignored:
    the SIGINT case above then waited 30 s, failed, and left the training run and its shared
    memory behind. Run it that way and check it passes and leaves nothing."""
    here = os.path.dirname(os.path.abspath(__file__))
    test = f"{os.path.basename(__file__)}::test_interrupting_the_coordinator_stops_every_worker[SIGINT]"
    before = {p.pid for p in psutil.process_iter()}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test,
                          "--basetemp", str(tmp_path / "inner")], cwd=here, env=subprocess_env(),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:]
    started = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before
               and any("train.py" in a for a in (p.info["cmdline"] or []))]
    assert started == [], "a training run outlived the test"


def test_a_killed_coordinator_leaves_no_worker_and_no_shared_memory(tmp_path):
    proc, family, err = start_coordinator(tmp_path)
    assert our_segments(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    assert wait_until(lambda: gone(family) and not our_segments(proc.pid), 10), \
        f"left behind: {[p for p in family if p.is_running()]}, {our_segments(proc.pid)}"
    err.seek(0)
    assert "leaked" not in err.read(), "the resource tracker had to clean up after the workers"


def test_the_shared_barrier_waits_for_everyone_and_times_out_on_a_missing_worker():
    """barrier.SharedBarrier: nobody passes before all arrived; a worker that never arrives makes
    the others' wait end in BrokenBarrierError; new workers continue the old count."""
    from dpnn.workers.barrier import SharedBarrier
    entries = np.zeros(3, np.int64)
    a, b, c = (SharedBarrier(entries, k) for k in range(3))
    passed = []
    waiters = [threading.Thread(target=lambda w=w: (w.wait(5), passed.append(w.me))) for w in (a, b)]
    for t in waiters:
        t.start()
    assert wait_until(lambda: entries[0] == entries[1] == 1, 5)     # a and b arrived
    assert passed == []                                   # c has not: both still wait
    c.wait(5)
    for t in waiters:
        t.join(5)
    assert sorted(passed) == [0, 1]
    with pytest.raises(threading.BrokenBarrierError):
        a.wait(0.05)                                      # b and c never come
    fresh = SharedBarrier(entries, 1)
    assert fresh.arrivals == 2                            # the count the old ones left


def test_a_step_that_fails_leaves_the_parameters_and_the_optimizer_as_they_were():
    """The workers' update writes the other parameter set and the optimizer counts the step
    only when every worker is done: a step that raises half-way costs nothing."""
    m = Model([ExplodeOnMarker(), Conv2D(4, 3), Activation("relu"), MaxPool2D(2), Flatten(), Dense(10)],
              seed=0)
    m.compile(optimizer="adam", lr=0.01)
    m.build((1, 8, 8, 1))
    with DataParallel(m, workers=2) as dp:
        dp.train_step(*batch(0))               # the first step: the coordinator's update
        dp.train_step(*batch(1))               # the workers' update
        assert dp.node._sets is not None and dp.node._sets.ready()
        params, t, moments = m.params.copy(), m.optimizer.t, m.optimizer.state_dict()
        x, y, k = batch(2)
        x[-1, 0, 0, 0] = 7                     # worker 1 raises, worker 0 waits at the barrier
        with pytest.raises(WorkerError, match="marker"):
            dp.train_step(x, y, k)
    assert m.optimizer.t == t == 2
    assert np.array_equal(m.params, params)
    after = m.optimizer.state_dict()
    assert all(np.array_equal(after[key], v) for key, v in moments.items())


def test_the_step_reports_the_span_in_which_some_worker_computes():
    """times['busy'] runs from the first worker taking the step to the last one replying: at
    least the slowest worker's compute plus the update, at most the step's wall time."""
    m = cnn()
    with DataParallel(m, workers=2) as dp:
        dp.train_step(*batch(0))
        for s in range(1, 4):
            t0 = time.perf_counter()
            times = dp.train_step(*batch(s)).times
            wall = time.perf_counter() - t0
            assert times["update"] > 0 and times["optimizer"] == 0      # the workers updated
            assert times["compute"] <= times["busy"] <= wall
            assert times["busy"] >= max(times["compute"], times["update"])


def test_a_barrier_wait_ends_when_the_coordinator_is_gone():
    """A peer that died with its coordinator never arrives: the waiter notices the coordinator
    is gone (about every half second once it naps) and leaves, long before its timeout."""
    from dpnn.workers.barrier import SharedBarrier
    entries = np.zeros(2, np.int64)
    waiter = SharedBarrier(entries, 0, alive=lambda: False)
    raised = []

    def wait():
        try:
            waiter.wait(600)
        except threading.BrokenBarrierError as e:
            raised.append(str(e))
    threading.Thread(target=wait, daemon=True).start()
    assert wait_until(lambda: raised, 5), "still waiting for a peer whose coordinator is gone"
    assert "coordinator" in raised[0]


def test_the_barrier_fences_memory_on_cpus_that_reorder_it(monkeypatch):
    """x86 keeps stores in order (no fence); elsewhere a C11 fence (libatomic, or macOS's
    OSMemoryBarrier), or a lock round trip when neither library exists; each one callable."""
    from dpnn.workers import barrier
    monkeypatch.setattr(barrier.platform, "machine", lambda: "x86_64")
    assert barrier._fence() is None
    monkeypatch.setattr(barrier.platform, "machine", lambda: "aarch64")
    fence = barrier._fence()
    assert fence is not None
    fence()
    monkeypatch.setattr(barrier.ctypes.util, "find_library", lambda name: None)
    fallback = barrier._fence()
    fallback()
    assert fallback is not fence
