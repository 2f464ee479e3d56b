"""The ``dpnn`` command: one implementation behind ``dpnn <command>``, ``python -m dpnn`` and
``python -m launch.<command>``; it runs from any folder, its hints work when pasted, and the
wheel stands alone (built, installed into a fresh venv outside the checkout, trained with)."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile

import pytest

import dpnn
from dpnn import cli
from dpnn.cli import main as dpnn_main

from conftest import MPIEXEC, ROOT, needs_mpi, wait_until

SCRIPT = os.path.join(os.path.dirname(sys.executable), "dpnn")      # make test's editable install
needs_script = pytest.mark.skipif(not os.path.exists(SCRIPT),
                                  reason="the dpnn console script is not installed (pip install -e .)")
TINY = ["--dataset", "synthetic", "--limit", "256", "--model", "mlp", "--batch-size", "64"]


def outside_env(**extra) -> dict:
    """An environment without the checkout on PYTHONPATH and without the venv on PATH: the
    command must stand on its own script."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if os.path.abspath(p) != os.path.dirname(SCRIPT))
    return dict(env, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **extra)


# -- the dispatcher -------------------------------------------------------------------------------
def test_help_lists_every_command(capsys):
    assert dpnn_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "predict", "export", "data", "gui", "digits"):
        assert f"\n  {name} " in out, name
    assert dpnn_main.main([]) == 2                         # no command: the list, and a usage status


def test_version_is_the_package_version(capsys):
    assert dpnn_main.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dpnn {dpnn.__version__}"


def test_an_unknown_command_is_one_line(capsys):
    assert dpnn_main.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'trian'" in err and "train" in err


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_each_command_takes_exactly_the_arguments_of_its_launch_module(name):
    """dpnn NAME --help and python -m launch.NAME --help list the same options (one parser)."""
    via = [sys.executable, "-m", "dpnn", name, "--help"]
    launch = [sys.executable, "-m", f"launch.{name}", "--help"]
    a, b = (subprocess.run(c, cwd=ROOT, capture_output=True, text=True, timeout=60) for c in (via, launch))
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout.startswith(f"usage: python -m dpnn {name}")
    assert b.stdout.startswith(f"usage: python -m launch.{name}")
    assert a.stdout.split("\n\n", 1)[1] == b.stdout.split("\n\n", 1)[1]      # past the usage block


def test_the_names_a_command_prints_are_how_it_was_started(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "venv" / "bin" / "dpnn")])
    monkeypatch.setenv("PATH", "/usr/bin")
    assert cli.prog("train") == "dpnn train"
    assert cli.runnable("train") == "venv/bin/dpnn train"      # not on PATH: the script's own path
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, "launch", "train.py")])
    assert cli.prog("train") == "python -m launch.train"
    assert cli.runnable("train").endswith(" -m launch.train")
    assert cli.runnable("train").startswith(shlex.quote(sys.executable))     # the venv's interpreter


# -- from the user's own folder ------------------------------------------------------------------------
@needs_script
@pytest.mark.slow
def test_dpnn_train_from_an_empty_folder_writes_there(tmp_path):
    """Relative --out and --checkpoint-dir are the user's folder's; nothing of the checkout is needed."""
    work = tmp_path / "my project"
    work.mkdir()
    r = subprocess.run([SCRIPT, "train", *TINY, "--epochs", "1", "--workers", "2", "--out", "w.hdf5",
                        "--checkpoint-dir", "ck", "--quiet"], cwd=work, env=outside_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(work)) == ["ck", "w.hdf5", "w.json"]
    assert any(f.endswith(".hdf5") for f in os.listdir(work / "ck"))
    p = subprocess.run([SCRIPT, "predict", "--weights", "w.hdf5", "--help"], cwd=work, env=outside_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("usage: dpnn predict")


@needs_script
@pytest.mark.slow
def test_the_resume_hint_works_when_pasted(tmp_path):
    """Ctrl-C: the hint names a command that runs in a shell where the venv is not active."""
    proc = subprocess.Popen([SCRIPT, "train", "--dataset", "synthetic", "--model", "mlp", "--epochs", "40",
                             "--workers", "1", "--verbose", "2", "--checkpoint-dir", "ck", "--out", "w.hdf5"],
                            cwd=tmp_path, env=outside_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert wait_until(lambda: any(f.startswith("epoch-") for f in os.listdir(tmp_path / "ck"))
                          if (tmp_path / "ck").is_dir() else False, 120), "no checkpoint was written"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    (hint,) = [ln.split("resume with: ", 1)[1] for ln in err.splitlines() if "resume with: " in ln]
    assert hint.startswith(shlex.quote(SCRIPT) + " train --resume"), hint
    done = subprocess.run(hint + " --epochs 2 --quiet", shell=True, cwd=tmp_path, env=outside_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "w.hdf5").exists()


@needs_script
@needs_mpi
def test_mpiexec_runs_the_dpnn_command(tmp_path):
    r = subprocess.run([MPIEXEC, "-n", "2", SCRIPT, "train", *TINY, "--epochs", "1", "--workers", "1",
                        "--backend", "mpi", "--out", "w.hdf5", "--checkpoint-dir", "none", "--quiet"],
                       cwd=tmp_path, env=dict(outside_env(), HYDRA_LAUNCHER="fork", DPNN_MPI_TIMEOUT="60"),
                       capture_output=True, text=True, timeout=300, start_new_session=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 MPI ranks x 1" in r.stdout and (tmp_path / "w.hdf5").exists()


# -- the wheel ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_trains(tmp_path):
    """pip wheel . -> a venv outside the checkout -> dpnn train --workers 2 from an empty folder."""
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                            "-q", "-w", str(wheels), ROOT], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("dpnn-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"dpnn"}, f"only the library goes in: {top}"
    assert "dpnn/cli/train.py" in names and "dpnn = dpnn.cli.main:main" in entry
    for extra in ("mpi", "plot", "images", "onnx", "tensorboard", "all"):
        assert f"Provides-Extra: {extra}" in meta, extra
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                          "-q", str(wheel)], capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr
    work = tmp_path / "empty"
    work.mkdir()
    env = outside_env()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import dpnn; print(dpnn.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr      # not the checkout
    t0 = time.monotonic()
    r = subprocess.run([str(venv / "bin" / "dpnn"), "train", *TINY, "--epochs", "1", "--workers", "2",
                        "--out", "w.hdf5", "--checkpoint-dir", "none"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr + f" ({time.monotonic() - t0:.0f} s)"
    assert "2 x 1 thread" in r.stdout and sorted(os.listdir(work)) == ["w.hdf5", "w.json"]


# -- Ctrl-C while the command still imports --------------------------------------------------------------
class _Interrupting:
    """A module whose names raise KeyboardInterrupt: Ctrl-C landing while it is imported."""

    def __getattr__(self, name):
        raise KeyboardInterrupt


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_ctrl_c_while_a_launch_module_imports_exits_130(name, monkeypatch):
    import runpy
    monkeypatch.setitem(sys.modules, f"dpnn.cli.{name}", _Interrupting())
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(ROOT, "launch", f"{name}.py"), run_name="__main__")
    assert e.value.code == 130


def test_ctrl_c_while_the_dpnn_command_imports_exits_130(monkeypatch):
    def interrupted(module):
        raise KeyboardInterrupt
    monkeypatch.setattr(dpnn_main.importlib, "import_module", interrupted)
    assert dpnn_main.main(["train", "--help"]) == 130
