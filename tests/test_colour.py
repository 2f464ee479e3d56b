"""Colour (C = 3) end to end: every preset builds for any H, W, C; an RGB image folder trains
from the shell, saves, loads and predicts with its class names; the benchmarks count its
FLOPs; the GUI refuses a model that does not take 28x28x1."""
from __future__ import annotations

import numpy as np
import pytest

import dpnn.cli.train as train_cli
from benchmarks.models import build as build_bench
from benchmarks.models import flops_per_sample
from dpnn import Model
from dpnn.cli.presets import PRESETS, build_model
from dpnn.datasets import load
from dpnn.errors import WeightsError

Image = pytest.importorskip("PIL.Image", reason="image folders need Pillow: pip install pillow")


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (20, 24, 3)])
def test_presets_build_for_any_channels(preset, shape):
    model = build_model(preset, num_classes=7, seed=0)
    model.build((2,) + shape)
    assert model.output_shape[1:] == (7,)
    W = next(layer for layer in model.layers if layer.params).params["W"]
    fan_in = W.shape[2] if W.ndim == 4 else W.shape[0]      # Conv2D (KH, KW, C, F) or Dense (D, U)
    assert fan_in == (shape[2] if W.ndim == 4 else int(np.prod(shape)))
    x = np.random.default_rng(0).random((2,) + shape, dtype=np.float32)
    assert model.predict(x).shape == (2, 7)


def write_rgb_folders(root, per_class=8, size=(12, 12)):
    """Two colour classes told apart only by colour: red-ish 'apple', blue-ish 'sea'."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name, channel in (("apple", 0), ("sea", 2)):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 60, size + (3,)).astype(np.uint8)
                img[..., channel] += 150
                Image.fromarray(img, "RGB").save(root / split / name / f"{i}.png")
    return root


def test_rgb_folder_trains_saves_loads_and_predicts_names(tmp_path, monkeypatch, capsys):
    data = write_rgb_folders(tmp_path / "fruit")
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", str(data), "--image-size", "16x16x3", "--model", "seed-cnn", "--epochs", "3",
            "--workers", "1", "--batch-size", "8", "--quiet", "--checkpoint-dir", "none", "--out", "rgb.hdf5"]
    assert train_cli.main(argv) == 0, capsys.readouterr().err
    assert "summary: seed-cnn on fruit" in capsys.readouterr().out
    model = Model.load("rgb.hdf5")
    assert model.input_shape[1:] == (16, 16, 3)
    assert model.metadata["class_names"] == ["apple", "sea"]
    _, test, _ = load(data, image_size="16x16x3")
    names = [model.metadata["class_names"][k] for k in model.predict(test.X).argmax(1)]
    assert set(names) <= {"apple", "sea"} and len(names) == 16


def test_fashion_bn_trains_a_few_steps_on_colour():
    model = build_model("fashion-bn", 10, seed=0)
    model.compile("categorical_crossentropy", "adam", lr=1e-3)
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 16, 16, 3), dtype=np.float32), rng.integers(0, 10, 32)
    history = model.fit(x, y, epochs=2, batch_size=16, workers=1, verbose=0, seed=0)
    assert np.isfinite(history["loss"]).all() and model.input_shape[1:] == (16, 16, 3)


def test_benchmark_flops_follow_the_input():
    gray = flops_per_sample(build_bench("seed-cnn", input_shape=(1, 28, 28, 1)))["total"]
    colour = flops_per_sample(build_bench("seed-cnn", input_shape=(1, 32, 32, 3)))["total"]
    assert 24e6 < gray < 26e6 and colour > gray


def test_gui_refuses_a_colour_model(tmp_path):
    pytest.importorskip("tkinter", reason="the GUI module needs tkinter")
    from dpnn.cli.gui import load_classifier
    model = build_model("mlp", 3, seed=0)
    model.compile("categorical_crossentropy", "adam")
    model.build((1, 32, 32, 3))
    model.save(str(tmp_path / "colour.hdf5"))
    with pytest.raises(WeightsError, match=r"takes inputs of shape \(32, 32, 3\).*28x28x1"):
        load_classifier(str(tmp_path / "colour.hdf5"))
