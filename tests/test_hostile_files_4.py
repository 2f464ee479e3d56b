"""Hostile users, fourth round (issue 30): the table of round three (tests/test_hostile_files_3.py:
a capped child process, its exit status, its one stderr line, nothing left behind), on the
surfaces round three added: outputs against inputs, broken symbolic links where folders must
be, --tensorboard, launch.predict's --out and pixels, --resume's saved configuration."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from hostile_makers import TINY, checkpoint, csv_file, csv_rows, npz_dir, outputs, saved, train_on
from test_hostile_files_3 import refused_cleanly, run_capped

pytest.importorskip("h5py")
pytestmark = pytest.mark.slow


def predict(*flags):
    def make(tmp: Path) -> list[str]:
        saved(tmp)
        np.savez(tmp / "x.npz", x=np.random.default_rng(0).uniform(0, 1, (3, 28, 28, 1)).astype("f4"))
        return ["launch.predict", "--weights", "w.hdf5", "x.npz", *flags]
    make.__name__ = "predict_" + "_".join(flags)
    return make


def broken_link(name: str, *flags):
    """``name`` is a symbolic link to nothing, then ``outputs(*flags)``."""
    def make(tmp: Path) -> list[str]:
        os.symlink(tmp / "nowhere" / "x", tmp / name)
        return outputs(*flags)(tmp)
    return make


def file_at(name: str, *flags):
    def make(tmp: Path) -> list[str]:
        (tmp / name).write_text("a file, not a folder")
        return outputs(*flags)(tmp)
    return make


def out_is_training_data(tmp: Path) -> list[str]:
    d = npz_dir(tmp)
    return train_on(d, "--out", str(d / "train.npz"))


def history_is_model(tmp: Path) -> list[str]:
    (tmp / "m.json").write_text('[{"class": "Flatten", "config": {}}, {"class": "Dense", "config": {"units": 10}}]')
    flags = [f for f in TINY if f not in ("mlp",)]
    flags[flags.index("--model") + 1:flags.index("--model") + 1] = ["m.json"]
    return ["launch.train", "--dataset", "synthetic", "--limit", "32", *flags, "--history", "m.json"]


def predict_nan_csv(tmp: Path) -> list[str]:
    saved(tmp)
    rows = [",".join(["128"] * 784) for _ in range(3)]
    rows[1] = rows[1].replace("128", "nan", 1)          # the whole file then reads as floats
    (tmp / "x.csv").write_text("\n".join(rows) + "\n")
    return ["launch.predict", "--weights", "w.hdf5", "x.csv"]


def train_nan_csv(tmp: Path) -> list[str]:
    rows = csv_rows([0, 1] * 10).splitlines()
    rows[3] = "nan," + rows[3].split(",", 1)[1]
    return train_on(csv_file(tmp, "\n".join(rows) + "\n"), "--label-column", "-1")


def augment_text(info, f, tmp):
    info["config"]["augment"] = "spin:9000"


def image_size_text(info, f, tmp):
    info["config"]["image_size"] = "huge"


def pooled_model(pool: list[int]):
    """A saved model whose MaxPool2D window becomes ``pool`` ('same' padding): the arrays still
    fit (one output cell per image either way), so only the window itself is hostile."""
    def make(tmp: Path) -> list[str]:
        import json

        from dpnn import Dense, Flatten, MaxPool2D, Model
        Model([MaxPool2D(28, padding="same"), Flatten(), Dense(10)], seed=0).build((1, 28, 28, 1)).save(
            str(tmp / "w.hdf5"))
        arch = json.loads((tmp / "w.json").read_text())
        arch[0]["config"].update(pool_size=pool, stride=pool)
        (tmp / "w.json").write_text(json.dumps(arch))
        np.savez(tmp / "x.npz", x=np.zeros((1, 28, 28, 1), "f4"))
        return ["launch.predict", "--weights", "w.hdf5", "x.npz"]
    make.__name__ = f"pool_{pool[0]}x{pool[1]}"
    return make


def npz_bomb(tmp: Path) -> list[str]:
    """62 MB of zero pixels in 60 KB: the check of the declared size against free memory passed."""
    saved(tmp)
    np.savez_compressed(tmp / "x.npz", x=np.zeros((20_000, 28, 28, 1), "f4"))
    return ["launch.predict", "--weights", "w.hdf5", "x.npz"]


LOCKED_LAYER = """
import threading
from dpnn import Layer, register_layer

@register_layer
class Locked(Layer):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()

    def forward(self, x, training=False):
        return x

    def backward(self, grad):
        return grad
"""


def plugin_layer_with_a_lock(tmp: Path) -> list[str]:
    """A --plugin layer holding a lock, on 2 workers: documented as a one-line TypeError."""
    import json
    (tmp / "locked.py").write_text(LOCKED_LAYER)
    (tmp / "arch.json").write_text(json.dumps([{"class": "Locked", "config": {}}, {"class": "Flatten", "config": {}},
                                               {"class": "Dense", "config": {"units": 10}}]))
    flags = [f for f in TINY if f != "mlp"]
    flags[flags.index("--model") + 1:flags.index("--model") + 1] = ["arch.json"]
    flags[flags.index("--workers") + 1] = "2"
    return ["launch.train", "--dataset", "synthetic", "--limit", "32", *flags, "--plugin", "locked.py",
            "--checkpoint-dir", "none"]


# id: (maker, exit status, stderr regex, stderr lines)
CASES = {
    # hangs that were: a broken symbolic link where a folder must be
    "--checkpoint-dir a broken link": (broken_link("ck", "--checkpoint-dir", "ck"), 2,
                                       r"--checkpoint-dir ck is a broken symbolic link; give a folder", 1),
    "folder of --out a broken link": (broken_link("o", "--out", "o/w.hdf5"), 2,
                                      r"--out o/w\.hdf5: .*/o is a broken symbolic link \(to .*nowhere/x\)", 1),
    "./checkpoints a broken link": (broken_link("checkpoints"), 2,
                                    r"the run folder in checkpoints: .*/checkpoints is a broken symbolic link", 1),
    "./checkpoints a file": (file_at("checkpoints"), 2,
                             r"the run folder in checkpoints: .*/checkpoints is not a directory", 1),
    "MaxPool2D pool 5000 'same' (predict)": (pooled_model([5000, 5000]), 2,
                                             r"MaxPool2D: pool_size 5000 is larger than the input's height 28", 1),
    "MaxPool2D pool 1x1e9 'same' (predict)": (pooled_model([1, 10**9]), 2,
                                              r"pool_size 1000000000 is larger than the input's width 28", 1),
    "compressed npz 1000x (predict)": (npz_bomb, 2, r"x\.npz: x\.npy expands more than 200 times its "
                                                    r"compressed size", 1),
    # outputs that replaced inputs
    "--out is the training data": (out_is_training_data, 2,
                                   r"--out .*data/train\.npz is in the data set --dataset .*data, which this "
                                   r"run reads", 1),
    "--history is the --model file": (history_is_model, 2, r"--history m\.json is --model m\.json, which this "
                                                           r"run reads", 1),
    "--tensorboard is --out": (outputs("--out", "w.hdf5", "--tensorboard", "w.hdf5"), 2,
                               r"--tensorboard w\.hdf5 is also --out", 1),
    "--tensorboard a file": (file_at("tb", "--tensorboard", "tb"), 2,
                             r"--tensorboard tb exists and is not a directory; give a folder", 1),
    "--tensorboard a broken link": (broken_link("tb", "--tensorboard", "tb"), 2,
                                    r"--tensorboard tb is a broken symbolic link; give a folder", 1),
    "predict --out is --weights": (predict("--out", "w.hdf5"), 2,
                                   r"--out w\.hdf5 is --weights w\.hdf5, which this command reads", 1),
    "predict --out is the architecture": (predict("--out", "./w.json"), 2,
                                          r"--out \./w\.json is the architecture file of --weights", 1),
    # wrong answers with exit 0 that were
    "predict a csv with a nan cell": (predict_nan_csv, 2, r"x\.csv: 1 pixel is NaN or infinite", 1),
    "train on a csv with a nan cell": (train_nan_csv, 2, r"train\.csv: 1 pixel is NaN or infinite", 1),
    # tracebacks that were
    "a --plugin layer holding a lock, 2 workers": (plugin_layer_with_a_lock, 2,
                                                   r"error: layer 0 \(Locked\) cannot be sent to the worker", 1),
    "checkpoint augment unparsable": (checkpoint(augment_text), 2,
                                      r"config\.augment is 'spin:9000', not a valid --augment", 1),
    "checkpoint image size unparsable": (checkpoint(image_size_text), 2,
                                         r"config\.image_size is 'huge', not a valid --image-size", 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_case(case, tmp_path):
    make, status, pattern, lines = CASES[case]
    refused_cleanly(make(tmp_path), tmp_path, status, pattern, lines)


# -- outside the table ------------------------------------------------------------------------------
SAVE_ON_A_FULL_DISK = """
from dpnn import Dense, Flatten, Model
from dpnn.errors import OutputError
model = Model([Flatten(), Dense(100)], seed=0).build((1, 28, 28, 1))
try:
    model.save("big.hdf5")
except OutputError as e:
    print("OutputError:", e)
"""


@pytest.mark.parametrize("limit", [1_000, 20_000, 100_000])
def test_an_hdf5_write_error_is_one_output_error_and_no_temporary(tmp_path, limit):
    """EFBIG (a file size limit, as a full disk) at any point of writing the HDF5 file: HDF5's own
    writes raised RuntimeErrors from destructors (or crashed); the image is now built in memory."""
    import resource
    import signal
    import subprocess
    import sys

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # EFBIG instead of death by SIGXFSZ
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", SAVE_ON_A_FULL_DISK], cwd=tmp_path, env=env, preexec_fn=cap,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.strip() == "OutputError: cannot write big.hdf5: File too large; nothing was overwritten"
    assert sorted(os.listdir(tmp_path)) == []


def test_ctrl_c_through_a_pipe_that_closes_still_stops_cleanly(tmp_path):
    """``dpnn train ... 2>&1 | tee log`` and Ctrl-C: tee ends too, and the "stopping after this
    step" notice hit a broken pipe inside the signal handler (exit 1, no step checkpoint)."""
    import signal
    import subprocess
    import sys

    from dpnn.cli.checkpoint import list_checkpoints

    from conftest import subprocess_env, wait_until
    argv = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "50", "--workers", "1", "--batch-size", "16",
            "--checkpoint-dir", "ck", "--checkpoint-every", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "launch.train", *argv], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_until(lambda: list_checkpoints(str(tmp_path / "ck")) or proc.poll() is not None, 60)
        proc.stdout.close()                       # the reader (tee) is gone
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 130
    assert "-step-" in list_checkpoints(str(tmp_path / "ck"))[-1][1]     # the step where it stopped


def test_load_checks_the_arrays_before_any_layer_allocates(tmp_path):
    """A user's layer records what its builds allocated: an architecture saying 200,000 units beside
    a file that holds 10 is refused before that layer allocates and initialises its weights (a
    build that only records shapes, dpnn.limits.dry_build, allocates nothing)."""
    import json

    from dpnn import Dense, Flatten, Model, WeightsError, register_layer

    built = []

    @register_layer
    class RecordingDense(Dense):
        def build(self, input_shape):
            super().build(input_shape)
            built.append(sum(np.asarray(p).size for p in self.params.values()))

    Model([Flatten(), RecordingDense(10)], seed=0).build((1, 28, 28, 1)).save(str(tmp_path / "w.hdf5"))
    built.clear()
    arch = json.loads((tmp_path / "w.json").read_text())
    arch[1]["config"]["units"] = 200_000
    (tmp_path / "w.json").write_text(json.dumps(arch))
    with pytest.raises(WeightsError, match=r"1_RecordingDense_W have shape \(784, 10\) but the model needs "
                                           r"\(784, 200000\)"):
        Model.load(str(tmp_path / "w.hdf5"))
    assert not any(built), built


def test_resume_takes_its_outputs_from_the_command_line_alone(tmp_path):
    """A checkpoint folder from elsewhere, whose saved configuration names files here, does not
    decide which files --resume replaces; the resume hint carries the outputs instead."""
    victim = tmp_path / "victim.json"
    victim.write_text("someone's notes")

    def names_the_victim(info, f, tmp):
        info["config"].update(history=str(victim), plot=None, out=str(tmp / "victim.hdf5"))
    argv = checkpoint(names_the_victim)(tmp_path)
    argv = [a for a in argv if a not in ("--out", str(tmp_path / "second.hdf5"))]      # no outputs given
    out, _ = run_capped(argv, tmp_path, uuid.uuid4().hex)
    assert out.returncode == 0, out.stderr
    assert victim.read_text() == "someone's notes" and not (tmp_path / "victim.hdf5").exists()
    assert (tmp_path / "weights.hdf5").exists()                   # --out's default, as for any run


# -- pixels and labels read as they were meant ---------------------------------------------------
def test_deep_images_are_scaled_by_their_depth_not_clipped(tmp_path):
    """Pillow's convert('L') clips: a 16-bit PNG saturated to white, a [0, 1] float TIFF turned black."""
    from PIL import Image

    from dpnn.formats.images import read_image
    ramp = np.arange(64, dtype=np.float64).reshape(8, 8) / 63                  # 0..1
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(ramp.astype(np.float32), "F").save(tmp_path / "float.tif")
    Image.fromarray((ramp * 200).astype(np.float32), "F").save(tmp_path / "float255.tif")
    want = np.round(ramp * 255)
    for name, expected in (("deep.png", want), ("float.tif", want), ("float255.tif", np.round(ramp * 200))):
        got = read_image(str(tmp_path / name), (8, 8, 1))[..., 0]
        np.testing.assert_allclose(got, expected, atol=1, err_msg=name)


def test_a_csv_with_quoted_text_labels_reads_the_labels_without_quotes(tmp_path):
    """csv.QUOTE_NONNUMERIC quotes the header and every text label: the labels kept their quotes
    and predict scored "accuracy 0.0000" against the model's class names."""
    import csv

    from dpnn.formats import csvrows
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    with open(d / "train.csv", "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(["label"] + [f"p{i}" for i in range(16)])
        for i in range(20):
            w.writerow([["cat", "dog"][i % 2]] + [float(v) for v in rng.integers(0, 256, 16)])
    _, labels, _ = csvrows.read_rows(str(d / "train.csv"), 16)
    assert labels.tolist()[:2] == ["cat", "dog"]
    assert csvrows.load(str(d), None).class_names == ["cat", "dog"]


@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_while_the_pool_starts_is_an_interrupt(tmp_path, attempt):
    """A terminal's Ctrl-C reaches the whole process group: landing while the fork server imports
    its preload, or while a worker starts, it killed that process and the run ended in EOFError or
    "worker exited during start-up" (exit 1) instead of its own interrupt (exit 130)."""
    import signal
    import subprocess
    import sys

    import psutil

    from conftest import interruptible, subprocess_env, wait_until
    argv = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1", "--workers", "2", "--batch-size", "16",
            "--checkpoint-dir", "ck", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "launch.train", *argv], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=interruptible)

    def starting() -> bool:
        if proc.poll() is not None:
            return True
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            return True
        for child in children:
            try:
                if "forkserver" in " ".join(child.cmdline()):
                    return True
            except psutil.Error:                   # a child that just ended
                continue
        return False
    try:
        assert wait_until(starting, 60, interval=0.002)
        time.sleep(0.05 * attempt)                   # the server's preload, then the workers' start
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err
