"""``launch.train``'s outputs: one run per file, special files refused, full disks and damaged
checkpoints reported in one line, numeric flags checked at parse time.

Everything runs ``launch.train.main`` in this process on tiny data (an MLP on 64 synthetic
samples) except the two-runs-at-once test, which needs a second process holding the files.
"""
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import dpnn
import dpnn.cli.train as train_cli
from dpnn.cli.checkpoint import list_checkpoints
from dpnn.engine import LocalEngine
from dpnn.io import read_arrays

from conftest import subprocess_env, wait_until

pytestmark = pytest.mark.slow
TINY = ["--dataset", "synthetic", "--limit", "64", "--model", "mlp", "--batch-size", "32",
        "--workers", "1", "--quiet", "--deterministic", "--checkpoint-dir", "checkpoints"]
h5py = pytest.importorskip("h5py")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def exit_code(argv) -> int:
    try:
        return train_cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def one_line(capsys, *needles) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def temp_files(*dirs) -> list:
    return [f for d in dirs if os.path.isdir(d) for f in os.listdir(d) if f.startswith(".tmp-")]


def hold_lock(path) -> int:
    """Lock ``path`` the way a running launch.train does (flock, our pid inside); returns the fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


# -- two runs never write the same files --------------------------------------------------------
@pytest.mark.parametrize("lock, flags, needle", [
    ("weights.hdf5.lock", [], "--out weights.hdf5 is in use by another run"),
    ("w/out.hdf5.lock", ["--out", "w/out.hdf5"], "--out w/out.hdf5 is in use by another run"),
    ("ck/.lock", ["--checkpoint-dir", "ck"], "--checkpoint-dir ck is in use by another run"),
    # issue 30: run A writes w.json beside --out w.hdf5; run B's --history w.json was not refused
    ("w.json.lock", ["--history", "w.json"], "--history w.json is in use by another run"),
    ("w.json.lock", ["--out", "w.hdf5"], "the architecture file of --out (w.json) is in use by another run"),
    ("tb/.lock", ["--tensorboard", "tb"], "--tensorboard tb is in use by another run"),
])
def test_a_file_in_use_by_another_run_is_refused_naming_its_pid(in_tmp, capsys, lock, flags, needle):
    os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
    fd = hold_lock(lock)
    try:
        assert exit_code(TINY + ["--epochs", 1] + flags) == 2
        one_line(capsys, needle, f"(pid {os.getpid()})")
    finally:
        os.close(fd)
    assert not os.path.exists("weights.hdf5") and list_checkpoints("ck") == []


def test_two_runs_in_one_directory_second_exits_2(in_tmp, capsys):
    env = subprocess_env()
    first = subprocess.Popen([sys.executable, "-m", "launch.train", *TINY, "--epochs", "500"],
                             cwd=in_tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: list_checkpoints("checkpoints") or first.poll() is not None, 60), \
            "the first run wrote no checkpoint in 60 s"
        assert exit_code(["--dataset", "synthetic", "--limit", "64", "--model", "mlp", "--workers", 1,
                          "--quiet", "--resume"]) == 2
        one_line(capsys, "in use by another run", f"(pid {first.pid})")
        assert exit_code(["--dataset", "synthetic", "--limit", "64", "--model", "mlp", "--workers", 1,
                          "--quiet", "--checkpoint-dir", "other"]) == 2
        one_line(capsys, "--out weights.hdf5 is in use by another run", f"(pid {first.pid})")
        assert not os.path.exists("other")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 143
    assert not [f for f in os.listdir(".") + os.listdir("checkpoints") if f.endswith(".lock")]


def test_locks_are_released_on_every_exit_and_a_dead_runs_lock_is_no_obstacle(in_tmp, capsys):
    with open("weights.hdf5.lock", "w") as f:          # left by a run that was SIGKILLed
        f.write("999999999\n")
    assert exit_code(TINY + ["--epochs", 1]) == 0
    assert exit_code(TINY + ["--epochs", 2, "--resume", "--out", "next.hdf5"]) == 0
    assert exit_code(TINY + ["--epochs", 1, "--checkpoint-dir", "c2", "--out", "x.hdf5",
                             "--dataset", "no-such-dir/"]) == 2              # failed after the checks
    capsys.readouterr()
    leftovers = [os.path.join(d, f) for d in (".", "checkpoints") for f in os.listdir(d) if "lock" in f]
    assert leftovers == [] and not os.path.exists("c2")
    for path in ("weights.hdf5.lock", "checkpoints/.lock", "x.hdf5.lock"):
        os.close(hold_lock(path))                    # nobody holds them any more


# -- special files and full disks ---------------------------------------------------------------
def make_special(kind: str) -> str:
    if kind == "directory":
        os.mkdir("d")
        return "d"
    if kind == "fifo":
        os.mkfifo("f")
        return "f"
    if kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind("s")
        return "s"
    return "/dev/null"


@pytest.mark.parametrize("flag", ["--out", "--history", "--plot"])
@pytest.mark.parametrize("kind", ["directory", "fifo", "socket", "device"])
def test_special_files_are_refused_before_training(in_tmp, capsys, flag, kind):
    path = make_special(kind)
    assert exit_code(TINY + ["--epochs", 1, flag, path]) == 2
    one_line(capsys, f"{flag} {path}", "regular file")
    assert not os.path.exists("checkpoints") and not os.path.exists("weights.hdf5")


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(name): writing an HDF5 file whose name contains ``name`` fails with ENOSPC after
    part of it is written (the temporary file, since writes are atomic; dpnn builds the HDF5
    image in memory and writes its bytes with dpnn.io.write_bytes)."""
    import dpnn.io

    def arm(name: str):
        write = dpnn.io.write_bytes

        def half_then_full(path, data):
            if name in os.path.basename(path):
                with open(path, "wb") as f:
                    f.write(bytes(data[:len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write(path, data)
        monkeypatch.setattr(dpnn.io, "write_bytes", half_then_full)
    return arm


def test_a_full_disk_while_checkpointing_stops_with_one_line(in_tmp, capsys, full_disk):
    (in_tmp / "weights.hdf5").write_bytes(b"an earlier model")
    full_disk("epoch-0002")
    assert exit_code(TINY + ["--epochs", 3]) == 1
    line = one_line(capsys, os.path.join("checkpoints", "epoch-0002.hdf5"), "No space left on device")
    assert "resume" in line
    assert [e for e, _ in list_checkpoints("checkpoints")] == [1]
    dpnn.Model.load("checkpoints/epoch-0001.hdf5")
    assert (in_tmp / "weights.hdf5").read_bytes() == b"an earlier model"
    assert temp_files(".", "checkpoints") == []
    assert not os.path.exists("checkpoints/epoch-0002.json")


def test_a_full_disk_while_writing_out_keeps_the_old_file(in_tmp, capsys, full_disk):
    (in_tmp / "weights.hdf5").write_bytes(b"an earlier model")
    (in_tmp / "weights.json").write_text("[]")
    full_disk("weights")
    assert exit_code(TINY + ["--epochs", 1, "--checkpoint-dir", "none"]) == 1
    one_line(capsys, "--out weights.hdf5", "No space left on device")
    assert (in_tmp / "weights.hdf5").read_bytes() == b"an earlier model"
    assert (in_tmp / "weights.json").read_text() == "[]"
    assert temp_files(".") == []


def test_a_full_disk_while_writing_the_history_keeps_the_old_file(in_tmp, capsys, monkeypatch):
    (in_tmp / "h.json").write_text("{}")

    def write_half(path, text):
        with open(path, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("dpnn.cli.outputs._write_text", write_half)
    assert exit_code(TINY + ["--epochs", 1, "--checkpoint-dir", "none", "--history", "h.json"]) == 1
    one_line(capsys, "--history h.json", "No space left on device")
    assert (in_tmp / "h.json").read_text() == "{}" and temp_files(".") == []


# -- damaged checkpoints ------------------------------------------------------------------------
def damage(path: str, how: str) -> None:
    if how == "truncated weights":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 3])
    elif how == "empty weights":
        open(path, "wb").close()
    elif how == "garbage architecture":
        open(path[:-len(".hdf5")] + ".json", "w").write("[{\"class\": ")
    elif how == "not a checkpoint":
        model = dpnn.Model.load(path)
        model.metadata.pop("checkpoint")
        model.save(path)


@pytest.mark.parametrize("how", ["truncated weights", "empty weights", "garbage architecture",
                                 "not a checkpoint"])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(in_tmp, capsys, how):
    assert exit_code(TINY + ["--epochs", 3, "--out", "straight.hdf5", "--checkpoint-dir", "a"]) == 0
    assert exit_code(TINY + ["--epochs", 2, "--out", "resumed.hdf5", "--checkpoint-dir", "b"]) == 0
    damage("b/epoch-0002.hdf5", how)
    capsys.readouterr()
    assert exit_code(["--resume", "--checkpoint-dir", "b", "--epochs", 3, "--out", "resumed.hdf5"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    warnings = [line for line in err if "epoch-0002" in line]
    assert len(warnings) == 1 and "warning" in warnings[0] and "skipping" in warnings[0], err
    assert any("resuming from b/epoch-0001.hdf5" in line for line in err), err
    wa, _ = read_arrays("straight.hdf5")
    wb, _ = read_arrays("resumed.hdf5")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert [e for e, _ in list_checkpoints("b")] == [1, 2, 3]
    dpnn.Model.load("b/epoch-0002.hdf5")                    # written again, whole


def test_only_damaged_checkpoints_is_one_clear_error(in_tmp, capsys):
    assert exit_code(TINY + ["--epochs", 1]) == 0
    damage("checkpoints/epoch-0001.hdf5", "truncated weights")
    capsys.readouterr()
    assert exit_code(["--resume", "--epochs", 2]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "skipping" in err[0] and "no complete checkpoint" in err[-1] and len(err) == 2, err


# -- numeric flags ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "-inf"], "--lr"),
    (["--weight-decay", "inf"], "--weight-decay"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--clip-norm", "inf"], "--clip-norm"), (["--clip-norm", "nan"], "--clip-norm"),
    (["--momentum", "nan", "--optimizer", "sgd"], "--momentum"),
    (["--val-split", "nan"], "--val-split"), (["--min-delta", "inf", "--early-stopping"], "--min-delta"),
    (["--seed", "-5"], "--seed"),
    (["--worker-timeout", "0"], "--worker-timeout"), (["--worker-timeout", "nan"], "--worker-timeout"),
    (["--worker-timeout", "inf"], "--worker-timeout"),
])
def test_non_finite_and_negative_numbers_are_refused_naming_the_flag(in_tmp, capsys, argv, needle):
    assert exit_code(TINY + argv) == 2
    line = one_line(capsys, needle)
    assert "--model" not in line
    assert not os.path.exists("checkpoints")


def test_oversubscribe_and_worker_timeout_reach_the_engine(in_tmp, monkeypatch):
    seen = {}

    def fake_make_engine(model, workers, *args, **options):
        seen.update(options, workers=workers)
        return LocalEngine(model)                     # trains in process, whatever was asked
    monkeypatch.setattr(train_cli, "make_engine", fake_make_engine)
    monkeypatch.setattr(train_cli, "engine_available", lambda: True)
    argv = TINY + ["--epochs", 1, "--checkpoint-dir", "none", "--workers", 2]
    assert exit_code(argv + ["--oversubscribe", "--worker-timeout", "2.5"]) == 0
    assert seen["oversubscribe"] is True and seen["worker_timeout"] == 2.5 and seen["workers"] == 2
    seen.clear()
    assert exit_code(argv + ["--out", "w2.hdf5"]) == 0
    assert "oversubscribe" not in seen and "worker_timeout" not in seen   # the engine's defaults


def test_oversubscribe_and_worker_timeout_train(in_tmp, capsys):
    argv = TINY + ["--epochs", 1, "--checkpoint-dir", "none", "--workers", 2, "--threads-per-worker", 1,
                   "--oversubscribe", "--worker-timeout", "60"]
    assert exit_code(argv) == 0
    assert "summary:" in capsys.readouterr().out


def test_help_mentions_the_new_flags(capsys):
    assert exit_code(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--oversubscribe", "--worker-timeout", "--checkpoint-every"):
        assert flag in text, flag
    json.dumps(train_cli.config_of(train_cli.build_parser().parse_args([])))   # stays JSON-able
