"""Flush-to-zero in every process dpnn computes in (dpnn/floatmode.py), checked by what it does.

With denormals-are-zero on, a float32 denormal *input* reads as 0, so a sum or a GEMM over
denormal values is exactly 0 when the mode holds and nonzero under IEEE arithmetic. The probe
below runs that check in the main thread, in every OpenBLAS thread (a GEMM that uses all of
them: one thread left in the wrong mode leaves nonzero rows), in the worker processes of a
pool (``DataParallel.predict`` with a Dense layer whose weights are denormal), in a worker
respawned after a kill, in one forked by a replacement fork server, and in MPI ranks, each
with the default mode and with IEEE denormals kept (by environment or by the Python switch).
No timing anywhere: the speed is measured by ``python -m benchmarks.steady_state``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dpnn
from dpnn import floatmode

from conftest import MPIEXEC, mpi_env, needs_mpi

pytestmark = pytest.mark.skipif(not floatmode.available(), reason="flush-to-zero is not available here")

DENORMAL_BITS = 0x00100000          # the float32 2**-129: a denormal made without arithmetic


def denormals(shape) -> np.ndarray:
    """float32 denormals (2**-129) written as bits: converting 1e-39 would itself be flushed."""
    return np.full(shape, DENORMAL_BITS, np.uint32).view(np.float32)


PROBE = textwrap.dedent('''
    import json, os, signal, sys, time
    how = sys.argv[1]
    if how == "numpy-first":                     # NumPy (and OpenBLAS's threads) before dpnn
        import numpy as np
        np.ones((256, 256), np.float32) @ np.ones((256, 256), np.float32)
    import dpnn                                  # otherwise dpnn first, as a user's script does
    import numpy as np
    from dpnn import Dense, Model
    from dpnn.workers import DataParallel

    BITS = 0x00100000

    def nonzero_sum():
        return int(np.full(1000, BITS, np.uint32).view(np.float32).sum() != 0)

    def nonzero_gemm():                          # big enough for every OpenBLAS thread to take part
        a = np.full((512, 512), BITS, np.uint32).view(np.float32)
        return int(np.count_nonzero(a @ np.ones((512, 512), np.float32)))

    def wait_dead(pid):
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    if __name__ == "__main__":
        if how == "python-keep":
            dpnn.set_flush_denormals(False)
        elif how == "python-flush":
            dpnn.set_flush_denormals(True)
        m = Model([Dense(8)], seed=0).compile(optimizer="sgd")
        m.build((1, 64))
        m.params.view(np.uint32)[:] = BITS       # every weight and bias a denormal
        x = np.ones((32, 64), np.float32)
        out = {"flushed": dpnn.flush_denormals_enabled(), "main": nonzero_sum(), "blas": nonzero_gemm()}
        method = sys.argv[2]
        with DataParallel(m, workers=2, start_method=method, pin=False) as dp:
            out["engine"] = str(dp.describe())
            out["workers"] = int(np.count_nonzero(dp.predict(x)))
            os.kill(dp.worker_pids[1], signal.SIGKILL)          # respawned from the same fork server
            wait_dead(dp.worker_pids[1])
            out["respawned"] = int(np.count_nonzero(dp.predict(x)))
            if method == "forkserver":                           # a new fork server forks the next
                from multiprocessing import forkserver
                server, w0 = forkserver._forkserver._forkserver_pid, dp.worker_pids[0]
                os.kill(server, signal.SIGKILL)
                os.kill(w0, signal.SIGKILL)
                wait_dead(w0)
                out["new_forkserver"] = int(np.count_nonzero(dp.predict(x)))
            out["restarts"] = dp.restarts
        print("RESULT " + json.dumps(out), flush=True)
''')

# (how the mode is chosen, environment, start method, flushed?)
CASES = {
    "default": ("default", {}, "forkserver", True),
    "DPNN_DENORMALS=keep": ("default", {"DPNN_DENORMALS": "keep"}, "forkserver", False),
    # the fork server imports dpnn with the environment's mode (flush): each worker must take
    # the coordinator's mode from its WorkerSpec
    "set_flush_denormals(False)": ("python-keep", {}, "forkserver", False),
    "set_flush_denormals(True) over keep": ("python-flush", {"DPNN_DENORMALS": "keep"}, "forkserver", True),
    "NumPy imported first": ("numpy-first", {}, "forkserver", True),
    "spawn, keep": ("python-keep", {}, "spawn", False),
}


def run_probe(tmp_path, how: str, env: dict, method: str, threads: int = 4) -> dict:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environ = {k: v for k, v in os.environ.items() if k != floatmode.ENV_VAR}
    environ.update(env, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([root, environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), how, method], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_every_process_and_thread_runs_in_the_coordinators_mode(tmp_path, case):
    how, env, method, flushed = CASES[case]
    res = run_probe(tmp_path, how, env, method)
    assert res["flushed"] is flushed
    checks = {k: res[k] for k in ("main", "blas", "workers", "respawned", "new_forkserver") if k in res}
    if flushed:             # every denormal input read as zero, in every thread and process
        assert checks == dict.fromkeys(checks, 0), res
        assert "denormals flushed (FTZ/DAZ)" in res["engine"]
    else:                   # IEEE: every output nonzero
        assert checks == {"main": 1, "blas": 512 * 512, "workers": 32 * 8, "respawned": 32 * 8,
                          **({"new_forkserver": 32 * 8} if method == "forkserver" else {})}, res
        assert res["engine"].endswith("IEEE denormals")
    assert res["restarts"][1] >= 1 and (method != "forkserver" or res["restarts"][0] >= 1)


def test_import_dpnn_flushes_this_process():
    if os.environ.get(floatmode.ENV_VAR, "").lower() in floatmode.KEEP_VALUES:
        pytest.skip(f"{floatmode.ENV_VAR} keeps IEEE denormals in this test run")
    assert dpnn.flush_denormals_enabled()
    assert denormals(1000).sum() == 0 and np.float32(1e-39) == 0     # inputs and results flushed
    assert floatmode.describe() == "denormals flushed (FTZ/DAZ)"


def test_the_switch_changes_this_process_and_its_blas_threads_and_back():
    a, b = denormals((512, 512)), np.ones((512, 512), np.float32)
    before = dpnn.flush_denormals_enabled()
    try:
        assert dpnn.set_flush_denormals(False) is False
        assert floatmode.describe() == "IEEE denormals"
        assert denormals(10).sum() != 0 and np.count_nonzero(a @ b) == a.size
        assert dpnn.set_flush_denormals(True) is True
        assert denormals(10).sum() == 0 and np.count_nonzero(a @ b) == 0
    finally:
        dpnn.set_flush_denormals(before)


def test_the_mode_reaches_the_run_summary():
    from dpnn.node import EngineInfo
    text = str(EngineInfo("shared-memory", 2, 1))
    assert text.startswith("2 worker processes x 1 BLAS thread, ") and text.endswith(floatmode.describe())
    assert EngineInfo("in-process", 1, 1).as_logs()["denormals"] == floatmode.describe()


@pytest.mark.parametrize("value, flush", [("", True), ("flush", True), ("keep", False), ("KEEP", False),
                                          ("ieee", False), ("0", False)])
def test_the_environment_switch(value, flush):
    assert floatmode.requested_mode({floatmode.ENV_VAR: value}) is flush


def test_an_unknown_environment_value_warns_and_flushes():
    with pytest.warns(RuntimeWarning, match="DPNN_DENORMALS='fast'"):
        assert floatmode.requested_mode({floatmode.ENV_VAR: "fast"}) is True


def test_the_switch_takes_a_bool():
    with pytest.raises(TypeError, match="True or False"):
        dpnn.set_flush_denormals("keep")


# -- MPI ranks --------------------------------------------------------------------------------
RANK_PROBE = textwrap.dedent('''
    import json, sys
    import numpy as np
    import dpnn
    from dpnn import Dense, Model
    from dpnn.comm import get_communicator
    from dpnn.workers import DataParallel

    if __name__ == "__main__":
        comm = get_communicator("mpi")
        bits = np.full((512, 512), 0x00100000, np.uint32).view(np.float32)
        m = Model([Dense(8)], seed=0).compile(optimizer="sgd")
        m.build((1, 64))
        m.params.view(np.uint32)[:] = 0x00100000
        with DataParallel(m, workers=2, pin=False, ranks=comm.size) as dp:
            workers = int(np.count_nonzero(dp.predict(np.ones((16, 64), np.float32))))
        out = {"rank": comm.rank, "flushed": dpnn.flush_denormals_enabled(),
               "blas": int(np.count_nonzero(bits @ np.ones((512, 512), np.float32))), "workers": workers}
        with open(f"result-{comm.rank}.json", "w") as f:    # a file per rank: stdout interleaves
            json.dump(out, f)
''')


@needs_mpi
@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep"])
def test_every_mpi_rank_and_its_workers_run_in_the_mode(tmp_path, keep):
    (tmp_path / "rank.py").write_text(RANK_PROBE)
    env = {k: v for k, v in mpi_env(tmp_path).items() if k != floatmode.ENV_VAR}
    env.update(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", **({floatmode.ENV_VAR: "keep"} if keep else {}))
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "rank.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    expect = {"flushed": False, "blas": 512 * 512, "workers": 16 * 8} if keep else \
        {"flushed": True, "blas": 0, "workers": 0}
    for r in ranks:
        assert {k: r[k] for k in expect} == expect, r
