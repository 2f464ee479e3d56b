"""``python -m launch.predict`` end to end (issue 21, point 7): image files, folders, npz and CSV
(labelled or not, Kaggle's digit-recognizer test.csv) in, a CSV of file/row, class name and
probability out; one-line errors, exit 2, nothing half-written. And ``--plugin``/``--import``
for launch.train, launch.predict and launch.gui (point 9)."""
from __future__ import annotations

import csv
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dpnn.cli.predict as predict_cli
import dpnn.cli.train as train_cli
from dpnn import Model

from conftest import cnn, subprocess_env

Image = pytest.importorskip("PIL.Image", reason="image files need Pillow: pip install pillow")
NAMES = ["cat", "dog", "bird"]


@pytest.fixture
def weights(tmp_path):
    """A 3-class model of 8x8 grayscale images with class names, saved as tmp_path/m.hdf5."""
    model = cnn(classes=3, input_shape=(8, 8, 1))
    model.metadata["class_names"] = NAMES
    model.save(str(tmp_path / "m.hdf5"))
    return str(tmp_path / "m.hdf5")


def run(argv) -> int:
    try:
        return predict_cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def read(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def images(n, shape=(8, 8), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def test_image_files_and_a_folder(tmp_path, weights, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, img in enumerate(images(3)):
        Image.fromarray(img, "L").save(folder / f"{i}.png")
    Image.fromarray(np.stack([images(1, seed=1)[0]] * 3, axis=-1).repeat(2, 0).repeat(2, 1), "RGB").save(
        folder / "sub" / "big.png")                                   # RGB 16x16: converted, resized
    (folder / "notes.txt").write_text("not an image")
    assert run(["--weights", weights, folder / "0.png", folder, "--out", tmp_path / "p.csv"]) == 0
    rows = read(tmp_path / "p.csv")
    assert [r["file"] for r in rows] == [str(folder / "0.png")] + [str(folder / f"{i}.png") for i in range(3)] \
        + [str(folder / "sub" / "big.png")]
    assert all(r["class"] in NAMES and 0 < float(r["probability"]) <= 1 and r["row"] == "" for r in rows)
    x = images(3)[..., None].astype(np.float32) / 255                 # as training scales bytes
    probs = predict_cli.class_probabilities(Model.load(weights), x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert [r["class"] for r in rows[1:4]] == [NAMES[k] for k in probs.argmax(axis=1)]
    np.testing.assert_allclose([float(r["probability"]) for r in rows[1:4]], probs.max(axis=1), atol=1e-5)
    assert "5 predictions -> " in capsys.readouterr().out


def test_npz_with_and_without_labels(tmp_path, weights, capsys):
    np.savez(tmp_path / "a.npz", x=images(4), y=np.array([0, 1, 2, 1]))
    np.savez(tmp_path / "b.npz", x=images(2).reshape(2, 64))          # flat rows, no labels
    assert run(["--weights", weights, tmp_path / "a.npz", tmp_path / "b.npz", "--out", tmp_path / "p.csv"]) == 0
    rows = read(tmp_path / "p.csv")
    assert [(r["row"], r["label"]) for r in rows] == [("0", "cat"), ("1", "dog"), ("2", "bird"), ("3", "dog"),
                                                      ("0", ""), ("1", "")]
    assert "6 predictions" in (out := capsys.readouterr().out) and "accuracy" in out and "on 4 labelled" in out


def kaggle_test_csv(path, n=5, label=False):
    x = images(n, (784,))
    header = (["label"] if label else []) + [f"pixel{i}" for i in range(784)]
    rows = [([str(i % 10)] if label else []) + [str(v) for v in r] for i, r in enumerate(x)]
    path.write_text("\n".join(",".join(r) for r in [header] + rows) + "\n")


def test_kaggle_digit_recognizer_test_csv(tmp_path, capsys):
    model = cnn(classes=10, input_shape=(28, 28, 1))
    model.save(str(tmp_path / "digits.hdf5"))
    kaggle_test_csv(tmp_path / "test.csv")
    argv = ["--weights", tmp_path / "digits.hdf5", tmp_path / "test.csv", "--label-column", "label",
            "--out", tmp_path / "p.csv"]
    assert run(argv) == 0, capsys.readouterr().err
    rows = read(tmp_path / "p.csv")
    assert [r["row"] for r in rows] == ["0", "1", "2", "3", "4"] and "label" not in rows[0]
    assert all(r["class"] in [str(d) for d in range(10)] for r in rows)


def test_kaggle_layout_trains_and_says_test_csv_has_no_labels(tmp_path, monkeypatch, capsys):
    kaggle_test_csv(tmp_path / "train.csv", n=40, label=True)
    kaggle_test_csv(tmp_path / "test.csv", n=5)
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", str(tmp_path), "--label-column", "label", "--model", "mlp", "--epochs", "1",
            "--workers", "1", "--checkpoint-dir", "none", "--out", "w.hdf5"]
    assert train_cli.main(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "test.csv has no label column" in err and "dpnn predict" in err
    assert "holding out 10% of its training samples (4 of 40" in err and "--test-split 0" in err


def test_kaggle_competition_in_two_commands(tmp_path, monkeypatch, capsys):
    """Train on all of train.csv (--test-split 0: nothing held out, no test score), then write
    Kaggle's submission: ImageId from 1 in test.csv's order, Label the predicted class."""
    kaggle_test_csv(tmp_path / "train.csv", n=40, label=True)
    kaggle_test_csv(tmp_path / "test.csv", n=7)
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", ".", "--label-column", "label", "--test-split", "0", "--model", "mlp", "--epochs", "1",
            "--workers", "1", "--checkpoint-dir", "none", "--out", "model.hdf5", "--quiet"]
    assert train_cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    assert "40 training samples" in out.out and "no test set" in out.out, out
    assert run(["--weights", "model.hdf5", "test.csv", "--format", "kaggle", "--out", "submission.csv"]) == 0
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 8
    model = Model.load("model.hdf5")
    x = np.loadtxt(tmp_path / "test.csv", delimiter=",", skiprows=1).reshape(-1, 28, 28, 1) / 255
    expected = model.predict(x.astype(np.float32)).argmax(1)
    assert lines[1:] == [f"{i},{k}" for i, k in enumerate(expected, start=1)]


@pytest.mark.parametrize("argv, needle", [
    (["--dataset", "synthetic", "--test-split", "0"], "--test-split apply to a directory of your own data"),
    (["--test-split", "1"], "--test-split must be in [0, 1), got 1.0"),
    (["--test-split", "-0.1"], "--test-split must be in [0, 1)"),
])
def test_test_split_is_refused_where_it_cannot_apply(argv, needle, tmp_path, capsys):
    assert train_cli.main(argv + ["--epochs", "1", "--checkpoint-dir", "none", "--out", str(tmp_path / "w.hdf5")]) == 2
    assert needle in capsys.readouterr().err


def test_a_folder_with_its_own_test_split_refuses_test_split(tmp_path, capsys):
    kaggle_test_csv(tmp_path / "train.csv", n=20, label=True)
    kaggle_test_csv(tmp_path / "test.csv", n=10, label=True)
    argv = ["--dataset", str(tmp_path), "--test-split", "0", "--epochs", "1", "--checkpoint-dir", "none"]
    assert train_cli.main(argv) == 2
    assert "has its own test split" in capsys.readouterr().err


@pytest.mark.parametrize("make, needle", [
    (lambda d: (d / "x.csv").write_text("1,2,3\n4,5,6\n"), "3 columns per row, but the model takes 64 pixels"),
    (lambda d: (d / "x.png").write_bytes(b"\x89PNG not really"), "not a readable image"),
    (lambda d: (d / "x.txt").write_text("hello"), "not an image"),
    (lambda d: None, "x.csv not found"),
], ids=["csv-columns", "bad-png", "unknown-kind", "missing"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, weights, capsys, make, needle):
    make(tmp_path)
    (tmp_path / "p.csv").write_text("earlier predictions\n")
    target = next((p for p in tmp_path.iterdir() if p.name.startswith("x.")), tmp_path / "x.csv")
    np.savez(tmp_path / "ok.npz", x=images(2), y=np.array([0, 1]))
    assert run(["--weights", weights, tmp_path / "ok.npz", target, "--out", tmp_path / "p.csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("python -m launch.predict: error:"), err
    assert (tmp_path / "p.csv").read_text() == "earlier predictions\n"


def test_bad_weights_and_out_equal_to_an_input(tmp_path, weights, capsys):
    np.savez(tmp_path / "ok.npz", x=images(2), y=np.array([0, 1]))
    assert run(["--weights", tmp_path / "none.hdf5", tmp_path / "ok.npz"]) == 2
    assert "none.hdf5 not found" in capsys.readouterr().err
    assert run(["--weights", weights, tmp_path / "ok.npz", "--out", tmp_path / "ok.npz"]) == 2
    assert "ok.npz is the input" in capsys.readouterr().err


# -- --plugin / --import ------------------------------------------------------------------------
PLUGIN = textwrap.dedent('''
    import dpnn

    @dpnn.register_layer
    class PluginScale(dpnn.Layer):
        def __init__(self, factor=2.0):
            super().__init__(); self.factor = factor
        def forward(self, x, training=False):
            return x * self.factor
        def backward(self, grad):
            return grad * self.factor
        def get_config(self):
            return {"factor": self.factor}
''')


def cli(module, *args, cwd):
    env = {**subprocess_env(), "DISPLAY": ""}           # launch.gui stops at "no display", never waits
    env.pop("WAYLAND_DISPLAY", None)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_plugin_registers_custom_layers_for_train_predict_and_gui(tmp_path):
    (tmp_path / "my_layers.py").write_text(PLUGIN)
    arch = [{"class": "Flatten", "config": {}}, {"class": "PluginScale", "config": {"factor": 0.5}},
            {"class": "Dense", "config": {"units": 10}}]
    (tmp_path / "arch.json").write_text(__import__("json").dumps(arch))
    common = ["--dataset", "synthetic", "--limit", 128, "--model", "arch.json", "--epochs", 1, "--quiet",
              "--checkpoint-dir", "none", "--out", "w.hdf5"]
    without = cli("launch.train", *common, "--workers", 1, cwd=tmp_path)
    assert without.returncode == 2 and "PluginScale" in without.stderr, without.stderr
    trained = cli("launch.train", *common, "--workers", 2, "--plugin", "my_layers.py", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr                       # the workers get the class too
    np.savez(tmp_path / "x.npz", x=images(3, (28, 28)))
    refused = cli("launch.predict", "--weights", "w.hdf5", "x.npz", cwd=tmp_path)
    assert refused.returncode == 2 and "PluginScale" in refused.stderr
    for flag in (["--plugin", "my_layers.py"], ["--import", "my_layers"]):
        done = cli("launch.predict", *flag, "--weights", "w.hdf5", "x.npz", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert len(read(tmp_path / "predictions.csv")) == 3
    gui = cli("launch.gui", "--plugin", "my_layers.py", "--weights", "w.hdf5", "--error-dialog", "never",
              cwd=tmp_path)
    assert gui.returncode == 2 and "display" in gui.stderr and "PluginScale" not in gui.stderr, gui.stderr
    assert "PluginScale" in cli("launch.gui", "--weights", "w.hdf5", "--error-dialog", "never", cwd=tmp_path).stderr
    broken = cli("launch.gui", "--plugin", "nope.py", "--weights", "w.hdf5", "--error-dialog", "never", cwd=tmp_path)
    assert broken.returncode == 2 and "--plugin nope.py: file not found" in broken.stderr


def test_a_failing_plugin_is_one_line_naming_its_line(tmp_path, capsys):
    (tmp_path / "bad.py").write_text("import dpnn\n\nraise RuntimeError('boom')\n")
    np.savez(tmp_path / "x.npz", x=images(1))
    assert run(["--plugin", tmp_path / "bad.py", "--weights", "w.hdf5", tmp_path / "x.npz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: boom (line 3 of" in err[0], err
