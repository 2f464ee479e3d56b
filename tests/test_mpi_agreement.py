"""MPI ranks started with different flags (issue 30): refused in one line where the ranks start,
naming the flag, instead of a deadlock (with and without --deterministic: allreduce against
allgather, until the watchdog), a run whose saved configuration says what rank 0 did (different
--augment), or MPICH's "Message truncated" stack (different --epochs)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import MPIEXEC, finish, mpi_env, mpich_segments, needs_mpi, unmapped

COMMON = ["--dataset", "synthetic", "--limit", "64", "--model", "mlp", "--batch-size", "16", "--workers", "1",
          "--backend", "mpi", "--quiet", "--checkpoint-dir", "none", "--epochs", "1"]


def two_ranks(tmp_path, rank0: list[str], rank1: list[str]) -> subprocess.Popen:
    """mpiexec running launch.train with ``rank0``'s extra flags on rank 0, ``rank1``'s on rank 1."""
    cmd = [MPIEXEC]
    for r, extra in enumerate((rank0, rank1)):
        (tmp_path / f"r{r}").mkdir()
        cmd += [":"] * (r > 0) + ["-n", "1", "-wdir", str(tmp_path / f"r{r}"), sys.executable, "-m",
                                  "launch.train", *COMMON, *extra]
    return subprocess.Popen(cmd, env=mpi_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


@needs_mpi
@pytest.mark.parametrize("rank0, rank1, message", [
    ([], ["--deterministic"], r"MPI rank 1 was started with --deterministic \(given\) but rank 0 with \(not given\)"),
    (["--augment", "shift=2"], [], r"MPI rank 1 was started with --augment 'none' but rank 0 with 'shift=2'"),
    (["--epochs", "2"], ["--epochs", "3"], r"MPI rank 1 was started with --epochs 3 but rank 0 with 2"),
], ids=["deterministic", "augment", "epochs"])
def test_ranks_started_with_different_flags_are_refused_in_one_line(tmp_path, rank0, rank1, message):
    import re
    before = mpich_segments()
    code, out, err = finish(two_ranks(tmp_path, rank0, rank1), timeout=60)
    assert code != 0, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and re.search(message, lines[0]), err
    assert "start every rank with the same command" in lines[0] and "Traceback" not in err, err
    assert not any((tmp_path / f"r{r}" / "weights.hdf5").exists() for r in (0, 1))
    assert unmapped(mpich_segments() - before) == set()


@needs_mpi
def test_a_flag_bad_on_one_rank_alone_ends_the_job(tmp_path):
    """argparse exits on that rank before MPI starts: the other rank waited for it forever."""
    code, out, err = finish(two_ranks(tmp_path, [], ["--augment", "shift:2"]), timeout=60)
    assert code != 0 and "argument --augment: augmentation spec 'shift:2'" in err, err
    assert "Traceback" not in err, err


@needs_mpi
def test_sigterm_to_one_rank_stops_every_rank_at_that_step_with_a_checkpoint(tmp_path):
    """A preempted node: SIGTERM reaches one rank alone. It stopped alone and aborted the job
    with no checkpoint at that step; the ranks now agree on the interrupt at each step."""
    import os
    import signal

    import psutil

    from dpnn.cli.checkpoint import list_checkpoints

    from conftest import launch_two_ranks, wait_until
    before = mpich_segments()
    flags = ["--dataset", "synthetic", "--limit", "256", "--model", "mlp", "--batch-size", "16", "--workers", "1",
             "--backend", "mpi", "--quiet", "--epochs", "1000", "--checkpoint-dir", "ck", "--checkpoint-every", "2"]
    proc = launch_two_ranks(tmp_path, *flags)
    ck = tmp_path / "r0" / "ck"

    def rank1():
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                if p.cwd() == str(tmp_path / "r1") and "launch.train" in " ".join(p.cmdline()):
                    return p
            except psutil.Error:
                continue
        return None
    try:
        assert wait_until(lambda: list_checkpoints(str(ck)) or proc.poll() is not None, 60), "no checkpoint"
        target = rank1()
        assert target is not None and proc.poll() is None
        os.kill(target.pid, signal.SIGTERM)
        code, out, err = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 143, err
    newest = list_checkpoints(str(ck))[-1][1]
    assert "-step-" in newest, newest
    assert f"last complete checkpoint: ck/{os.path.basename(newest)}" in err, err
    assert "Traceback" not in err and "BAD TERMINATION" not in err, err
    assert unmapped(mpich_segments() - before) == set()
