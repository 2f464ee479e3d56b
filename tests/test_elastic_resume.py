"""A checkpoint resumes bitwise on another worker count or backend (issue 21, point "say what
already works"): 2 epochs on 2 workers with --deterministic, then epoch 3 on 1 worker, on 3
workers and on 2 MPI ranks, each bitwise equal to 3 epochs straight. The README's Checkpoints
section says so."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import dpnn.cli.train as train_cli
from dpnn.io import read_arrays

from conftest import HAVE_MPI, MPIEXEC, TINY_CNN, mpi_env, subprocess_env

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not train_cli.engine_available(), reason="dpnn.workers is not available")]


def cli(*args, cwd, env=None, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "launch.train", *map(str, args)], cwd=cwd,
                          env=env or subprocess_env(), capture_output=True, text=True, timeout=300)


def same_weights(a, b) -> bool:
    wa, _ = read_arrays(str(a))
    wb, _ = read_arrays(str(b))
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def accuracy_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if "test accuracy" in line)


def test_a_checkpoint_resumes_bitwise_on_1_3_workers_and_2_mpi_ranks(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CNN))
    common = ["--dataset", "synthetic", "--limit", 96, "--model", "tiny.json", "--batch-size", 16, "--seed", 3,
              "--deterministic", "--quiet", "--val-split", 0.25]
    straight = cli(*common, "--epochs", 3, "--workers", 2, "--checkpoint-dir", "s", "--out", "straight.hdf5",
                   cwd=tmp_path)
    first = cli(*common, "--epochs", 2, "--workers", 2, "--checkpoint-dir", "w1", "--out", "two.hdf5", cwd=tmp_path)
    assert straight.returncode == 0 and first.returncode == 0, straight.stderr + first.stderr
    for other in ("w3", "mpi"):
        shutil.copytree(tmp_path / "w1", tmp_path / other)
    resumes = {"w1": ["--workers", 1], "w3": ["--workers", 3]}
    for folder, flags in resumes.items():
        r = cli("--resume", "--checkpoint-dir", folder, "--epochs", 3, *flags, "--out", f"{folder}.hdf5",
                cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert same_weights(tmp_path / "straight.hdf5", tmp_path / f"{folder}.hdf5"), folder
        assert accuracy_line(r.stdout) == accuracy_line(straight.stdout)
    if not HAVE_MPI:
        pytest.skip("the MPI case needs mpi4py and mpiexec: pip install mpi4py mpich")
    r = cli("--resume", "--checkpoint-dir", "mpi", "--epochs", 3, "--backend", "mpi", "--workers", 1,
            "--out", "mpi.hdf5", cwd=tmp_path, env=mpi_env(tmp_path), prefix=(MPIEXEC, "-n", "2"))
    assert r.returncode == 0, r.stderr
    assert same_weights(tmp_path / "straight.hdf5", tmp_path / "mpi.hdf5")
