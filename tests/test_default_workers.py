"""fit's default worker count (issue 26): every core for a script's training under its
``__main__`` guard; one process, and one line saying how to get every core, where starting
processes is not safe (an unguarded script, no script file at all)."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

from dpnn import default_workers as dw
from dpnn.placement import usable_cores

from conftest import finish, subprocess_env

SCRIPT = '''
import numpy as np
import dpnn

def train():
    rng = np.random.default_rng(0)
    x = rng.random((64, 6, 6, 1), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
    model = dpnn.Model([dpnn.Flatten(), dpnn.Dense(2)], seed=0).compile("cce", "sgd", lr=0.1)

    class Engine(dpnn.Callback):
        def on_train_begin(self, logs=None):
            print("WORKERS", logs["workers"], logs["engine"], flush=True)
    model.fit(x, y, epochs=1, batch_size=16, verbose=2, callbacks=[Engine()])
'''


def run_script(tmp_path, body: str, *args: str):
    (tmp_path / "script.py").write_text(SCRIPT + textwrap.dedent(body))
    env = subprocess_env()
    env.pop(dw.ENV, None)                             # the suite's override: test the default itself
    cmd = [sys.executable, *args] if args else [sys.executable, "script.py"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    code, out, err = finish(proc, timeout=120)
    assert code == 0, err
    return out


many_cores = pytest.mark.skipif(usable_cores() < 2 or "forkserver" not in __import__("multiprocessing")
                                .get_all_start_methods(), reason="needs 2 cores and forkserver")


@pytest.mark.slow
@many_cores
def test_a_guarded_script_trains_on_every_core(tmp_path):
    out = run_script(tmp_path, 'if __name__ == "__main__":\n    train()\n')
    assert f"WORKERS {usable_cores()} " in out and "fit trains in this process" not in out


@pytest.mark.slow
@many_cores
def test_an_unguarded_script_trains_in_one_process_and_says_how(tmp_path):
    out = run_script(tmp_path, "train()\n")
    assert "WORKERS 1 " in out
    assert out.count("put the training in script.py under `if __name__ == '__main__':` to use every core") == 1


@pytest.mark.slow
@many_cores
def test_no_script_file_trains_in_one_process_and_says_how(tmp_path):
    (tmp_path / "lib.py").write_text(SCRIPT)
    out = run_script(tmp_path, "", "-c", "import lib; lib.train()")
    assert "WORKERS 1 " in out and "outside a script file; pass workers='auto' to fit" in out


def test_the_environment_variable_overrides(monkeypatch):
    monkeypatch.setenv(dw.ENV, "3")
    assert dw.default_workers() == (3, None)
    monkeypatch.setenv(dw.ENV, "auto")
    assert dw.default_workers() == ("auto", None)
    monkeypatch.setenv(dw.ENV, "zero")
    with pytest.raises(ValueError, match="DPNN_FIT_WORKERS must be a positive int or 'auto'"):
        dw.default_workers()


def test_mpi_keeps_one_worker_per_rank(monkeypatch):
    monkeypatch.delenv(dw.ENV, raising=False)
    assert dw.default_workers("mpi") == (1, None)


@pytest.mark.parametrize("source, guarded", [
    ("if __name__ == '__main__':\n    main()\n", True),
    ("if '__main__' == __name__:\n    main()\n", True),
    ("if __name__ == '__main__' or True:\n    main()\n", False),
    ("if __name__ != '__main__':\n    main()\n", False),
    ("def f():\n    if __name__ == '__main__':\n        main()\n", False)])
def test_what_counts_as_the_main_guard(tmp_path, source, guarded):
    assert any(dw.is_main_guard(node) for node in ast.parse(source).body) is guarded
    path = tmp_path / "s.py"
    path.write_text(source)
    spans = dw.guarded_lines(str(path), path.stat().st_mtime)
    assert (spans == ((2, 2),)) is guarded
