"""What the test modules share: model and data builders, subprocess helpers, waiting by polling,
and the leak check every test runs under.

pytest puts ``tests/`` on ``sys.path`` (the default import mode), so a test module imports these
with ``from conftest import cnn, batch, wait_until``; ``pythonpath = ["."]`` in pyproject.toml
makes the checkout's ``launch`` and ``benchmarks`` importable, as ``python -m`` from the root does.
"""
from __future__ import annotations

import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from dpnn import Activation, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Model
from dpnn.janitor import SEGMENT_PREFIX, segment_owner
from dpnn.random import sample_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# fit's default (workers=None) is every core under a script's __main__ guard, which pytest's own
# entry point is: the suite keeps fit in one process unless a test asks (test_default_workers.py
# clears this to test the default itself)
os.environ.setdefault("DPNN_FIT_WORKERS", "1")
SHM = "/dev/shm"
MP_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


# -- waiting ------------------------------------------------------------------------------------
def wait_until(condition, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` s have passed; its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(interval)
    return bool(condition())


# -- models and data ----------------------------------------------------------------------------
def cnn(*extra, filters=4, classes=10, hidden=0, batchnorm=False, dropout=0.0, seed=0,
        loss="categorical_crossentropy", lr: float | None = 0.01,
        input_shape: tuple | None = (8, 8, 1)) -> Model:
    """The suite's small CNN: Conv2D(filters, 3) -> ReLU [-> *extra] [-> BatchNorm2D] -> MaxPool2D(2)
    -> Flatten [-> Dense(hidden) -> ReLU] [-> Dropout(dropout)] -> Dense(classes).

    Compiled with Adam at ``lr`` (``lr=None``: not compiled) and built for ``(1, *input_shape)``
    (``input_shape=None``: built by the first call).
    """
    layers = [Conv2D(filters, 3), Activation("relu"), *extra]
    layers += [BatchNorm2D()] if batchnorm else []
    layers += [MaxPool2D(2), Flatten()]
    layers += [Dense(hidden), Activation("relu")] if hidden else []
    layers += [Dropout(dropout)] if dropout else []
    model = Model(layers + [Dense(classes)], seed=seed)
    if lr is not None:
        model.compile(loss, "adam", lr=lr)
    if input_shape is not None:
        model.build((1, *input_shape))
    return model


def tiny(seed=0) -> Model:
    """Conv2D(2, 3) -> ReLU -> MaxPool2D(2) -> Flatten -> Dense(2), compiled, for :func:`blobs`."""
    return cnn(filters=2, classes=2, seed=seed, loss="cce", lr=1e-2, input_shape=None)


def batch(step, n=16, classes=10):
    """One training batch (x (n, 8, 8, 1) float32, labels, sample keys) drawn from ``step``."""
    rng = np.random.default_rng(step)
    return (rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, classes, n),
            sample_keys(0, step, np.arange(n)))


def blobs(n=40, seed=0):
    """(X (n, 6, 6, 1) float32, y): the label says whether the image's mean is positive."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6, 6, 1)).astype(np.float32)
    return X, (X.mean(axis=(1, 2, 3)) > 0).astype(np.int64)


# A small CNN with dropout in nn's JSON format, so resume also covers the dropout masks.
TINY_CNN = [{"class": "Conv2D", "config": {"filters": 4, "kernel_size": [3, 3], "padding": "same"}},
            {"class": "Activation", "config": {"func": "relu"}},
            {"class": "MaxPool2D", "config": {"pool_size": [4, 4]}},
            {"class": "Flatten", "config": {}},
            {"class": "Dense", "config": {"units": 16}},
            {"class": "Activation", "config": {"func": "relu"}},
            {"class": "Dropout", "config": {"rate": 0.25}},
            {"class": "Dense", "config": {"units": 10}}]


def ellipse(cx, cy, rx, ry, n=16):
    """A closed stroke starting at the top, clockwise."""
    return [(cx + rx * math.sin(2 * math.pi * k / n), cy - ry * math.cos(2 * math.pi * k / n))
            for k in range(n + 1)]


# Digits as polylines in the GUI's drawing buffer (280 x 280), shaped the way people draw them.
DIGITS = {
    "1": [[(150, 40), (140, 140), (140, 245)]],
    "0": [ellipse(140, 140, 62, 95)],
    "7": [[(70, 50), (210, 50), (165, 140), (125, 240)]],
    "4": [[(85, 40), (75, 160), (215, 160)], [(180, 45), (180, 245)]],
    "3": [[(80, 60), (140, 40), (195, 70), (190, 115), (130, 135), (195, 160), (200, 210),
           (140, 240), (80, 220)]],
}


def draw_through(view, strokes):
    """The DrawingBuffer after a user drew ``strokes`` (buffer coordinates) on a widget seen
    through ``view`` (a ``launch.drawing.Viewport``)."""
    from dpnn.cli.drawing import DrawingBuffer
    buf = DrawingBuffer()
    for stroke in strokes:
        widget = [view.to_widget(x, y) for x, y in stroke]
        buf.draw_polyline([view.to_buffer(round(x), round(y)) for x, y in widget])
    return buf


# -- subprocesses -------------------------------------------------------------------------------
def subprocess_env(*paths) -> dict:
    """This environment with one BLAS thread and ``paths`` then the checkout on PYTHONPATH, so
    ``python -m launch.train`` works from any directory."""
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([*map(str, paths), ROOT, os.environ.get("PYTHONPATH", "")]))


def interruptible() -> None:
    """``preexec_fn`` for a child the test will interrupt: SIGINT back to its default, so Python
    installs its KeyboardInterrupt handler even when pytest itself runs with SIGINT ignored (a
    background job of a non-interactive shell: ``make test &``, CI), which the child inherits."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``proc``, started with ``start_new_session=True``; its
    whole session is killed and the test fails if it runs past ``timeout``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the run did not end within {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def find_mpiexec() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and MPIEXEC is not None


def needs_mpi(test):
    """An mpiexec test: slow, and skipped with the way to install MPI where it is missing."""
    skip = pytest.mark.skipif(not HAVE_MPI, reason="mpi4py or mpiexec not found; install them with "
                                                   "pip install mpi4py mpich (make test does)")
    return pytest.mark.slow(skip(test))


def mpi_env(tmp_path) -> dict:
    """The environment of an mpiexec job whose scripts live in ``tmp_path``."""
    return dict(subprocess_env(tmp_path), HYDRA_LAUNCHER="fork", DPNN_MPI_TIMEOUT="60")


def launch_two_ranks(tmp_path, *args) -> subprocess.Popen:
    """mpiexec with rank 0 in tmp/r0 and rank 1 in tmp/r1: relative paths name different dirs."""
    cmd = [MPIEXEC]
    for r in (0, 1):
        (tmp_path / f"r{r}").mkdir(exist_ok=True)
        cmd += [":"] * (r > 0) + ["-n", "1", "-wdir", str(tmp_path / f"r{r}"),
                                  sys.executable, "-m", "launch.train", *map(str, args)]
    return subprocess.Popen(cmd, env=mpi_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


# -- leaks --------------------------------------------------------------------------------------
def workers_alive(root_pid: int | None = None) -> list[psutil.Process]:
    """Live descendants of ``root_pid`` (default: this process) except multiprocessing's own
    long-lived helpers (the fork server and the resource tracker, children of the root that
    outlive a pool)."""
    root = psutil.Process(root_pid)
    out = []
    for p in root.children(recursive=True):
        try:
            helper = p.ppid() == root.pid and any(h in " ".join(p.cmdline()) for h in MP_HELPERS)
            if not helper and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def our_segments(pid: int | None = None) -> set[str]:
    """dpnn's shared-memory segments in /dev/shm made by process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    if not os.path.isdir(SHM):
        return set()
    return {n for n in os.listdir(SHM) if (segment_owner(n) or (0,))[0] == pid}


def mpich_segments() -> set[str]:
    return {n for n in os.listdir(SHM) if n.startswith("mpich_shm_")}


def unmapped(names: set[str]) -> set[str]:
    """The MPICH segments among ``names`` that no live process maps (those of running jobs are)."""
    from dpnn.janitor import mapped_segments
    mapped = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        mapped.update(mapped_segments(int(pid), "mpich_shm_"))
    return names - mapped


def dpnn_segments() -> set[str]:
    return {n for n in os.listdir(SHM) if n.startswith(SEGMENT_PREFIX + "_")} if os.path.isdir(SHM) else set()


@pytest.fixture(autouse=True)
def no_leaks():
    """After every test: no process it started is still running (multiprocessing's fork server
    and resource tracker live for the session) and no dpnn segment made by this process or one
    of its children is left in /dev/shm. Costs two listings unless the test left something;
    then it polls for up to 5 s, as a pool's close and the janitors take a moment."""
    children = {p.pid for p in workers_alive()}
    segments = dpnn_segments()
    yield

    def left() -> tuple[list, set]:
        procs = [p for p in workers_alive() if p.pid not in children]
        pids = {os.getpid(), *children, *(p.pid for p in procs)}
        new = {n for n in dpnn_segments() - segments if (segment_owner(n) or (0,))[0] in pids}
        return procs, new

    if left() != ([], set()) and not wait_until(lambda: left() == ([], set()), 5):
        procs, new = left()
        pytest.fail(f"the test left processes {[p.pid for p in procs]} "
                    f"and shared-memory segments {sorted(new)}", pytrace=False)


# -- the PyTorch lane -------------------------------------------------------------------------------
TORCH_NEEDLES = ('importorskip("torch"', 'find_spec("torch")')


def pytest_collection_modifyitems(config, items):
    """Mark every test that reads PyTorch (``pytest.importorskip("torch")`` or ``find_spec("torch")``
    in the test, in a helper function of its module that it calls, or at its module's top)
    ``torch``, so ``pytest -m torch`` is the PyTorch lane: ``make test`` runs them too, skipped where
    PyTorch is absent (it is a reference, never a dependency); ``make test-torch`` installs it and
    runs them alone."""
    import inspect

    def reads_torch(obj) -> bool:
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError):                # made at run time (exec, a lambda's module...)
            return False
        return any(n in source for n in TORCH_NEEDLES)

    modules: dict = {}
    for item in items:
        fn = getattr(item, "function", None)
        if fn is None:
            continue
        module = item.module
        if module not in modules:
            top = [ln for ln in inspect.getsource(module).splitlines() if not ln.startswith((" ", "\t"))]
            helpers = {name for name, obj in vars(module).items() if inspect.isfunction(obj)
                       and obj.__module__ == module.__name__ and not name.startswith("test_") and reads_torch(obj)}
            modules[module] = (any(n in ln for ln in top for n in TORCH_NEEDLES), helpers)
        at_top, helpers = modules[module]
        if at_top or reads_torch(fn) or helpers & set(fn.__code__.co_names):
            item.add_marker(pytest.mark.torch)
