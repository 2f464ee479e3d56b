"""The digit GUI without a display: its drawing buffer and viewport, the classifier plumbing, when
an error dialog is shown, and model files it refuses. The real window is in test_gui_window.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dpnn.cli.drawing import BUFFER_SIZE, DrawingBuffer, Viewport, stamp_segment
from dpnn.cli.gui import Classifier, class_names_for, format_prediction, load_classifier
from dpnn.datasets import FASHION_CLASSES
from dpnn.digits import preprocess_drawing

from conftest import DIGITS, draw_through


# -- drawing buffer (no display) ------------------------------------------------------------
def test_dot_is_a_round_disc_of_the_brush_radius():
    buf = DrawingBuffer(brush_radius=10)
    buf.begin_stroke(100.5, 120.5)       # centre of pixel (row 120, col 100)
    assert not buf.is_empty and buf.pixels.max() == 1.0
    assert buf.pixels.sum() == pytest.approx(math.pi * 10 ** 2, rel=0.03)
    rows, cols = np.nonzero(buf.pixels)
    assert rows.min() == 120 - 10 and rows.max() == 120 + 10
    assert cols.min() == 100 - 10 and cols.max() == 100 + 10
    patch = buf.pixels[110:131, 90:111]
    np.testing.assert_array_equal(patch, patch[::-1])   # symmetric about the centre
    np.testing.assert_array_equal(patch, patch[:, ::-1])
    np.testing.assert_array_equal(patch, patch.T)


def test_stroke_paints_a_band_of_width_twice_the_radius():
    buf = DrawingBuffer(brush_radius=8)
    buf.draw_polyline([(40, 140), (240, 140)])
    assert buf.strokes == [[(40.0, 140.0), (240.0, 140.0)]]
    band = (buf.pixels[:, 60:220] > 0.5).sum(axis=0)       # inked rows in each column
    np.testing.assert_array_equal(band, 16)
    assert buf.pixels[140, 33:247].min() > 0.9               # round caps reach past both ends
    assert buf.pixels[140, :31].max() == 0.0 and buf.pixels[140, 250:].max() == 0.0
    assert buf.pixels[:120].max() == 0.0 and buf.pixels[160:].max() == 0.0
    assert buf.pixels.dtype == np.float32 and buf.pixels.max() <= 1.0


def test_overlapping_strokes_never_exceed_full_ink():
    buf = DrawingBuffer()
    for _ in range(3):
        buf.draw_polyline([(50, 50), (230, 230)])
    assert buf.pixels.max() == 1.0 and len(buf.strokes) == 3


def test_strokes_leaving_the_buffer_are_clipped():
    buf = DrawingBuffer(brush_radius=5)
    buf.draw_polyline([(-100, -100), (140, 140), (500, 140)])
    buf.draw_polyline([(-50, 300), (-10, 400)])            # entirely outside: no paint, no error
    assert buf.pixels.shape == (BUFFER_SIZE, BUFFER_SIZE)
    assert buf.pixels[140, 279] == 1.0 and buf.pixels[0, 0] == 1.0


def test_drag_without_press_and_clear():
    buf = DrawingBuffer()
    assert buf.extend_stroke(10, 10) is None and not buf.end_stroke() and buf.is_empty
    buf.begin_stroke(10, 10)
    assert buf.extend_stroke(20, 30) == (10.0, 10.0)
    assert buf.end_stroke()
    buf.clear()
    assert buf.is_empty and buf.strokes == [] and buf.extend_stroke(1, 1) is None


def test_stamp_segment_is_antialiased():
    pixels = np.zeros((20, 20), np.float32)
    stamp_segment(pixels, (10, 10), (10, 10), 3.25)
    assert 0.0 < pixels[10, 13] < 1.0                       # the rim is partly covered


@pytest.mark.parametrize("bad", [dict(size=0), dict(brush_radius=0.0)])
def test_bad_buffer_settings(bad):
    with pytest.raises(ValueError):
        DrawingBuffer(**bad)


@pytest.mark.parametrize("width, height, origin, scale", [
    (280, 280, (0, 0), 1.0), (140, 140, (0, 0), 2.0), (700, 560, (70, 0), 0.5), (400, 600, (0, 100), 0.7),
])
def test_viewport_maps_the_largest_centred_square(width, height, origin, scale):
    view = Viewport(width, height)
    assert view.origin == origin and view.scale == pytest.approx(scale)
    assert view.to_buffer(*origin) == (0, 0)
    assert view.to_buffer(*view.to_widget(123.0, 45.0)) == pytest.approx((123.0, 45.0))


def test_buffer_does_not_depend_on_the_widget_size():
    small = draw_through(Viewport(200, 200), DIGITS["7"]).pixels
    large = draw_through(Viewport(900, 700), DIGITS["7"]).pixels
    assert np.abs(small - large).mean() < 0.01
    assert preprocess_drawing(small) is not None


# -- classifier plumbing (no display) ---------------------------------------------------------
def test_format_prediction():
    line = format_prediction([("7", 0.934), ("1", 0.04), ("9", 0.012)])
    assert line == "prediction: 7 0.93 | 1 0.04 | 9 0.01"


@pytest.mark.parametrize("metadata, k, expected", [
    ({}, 10, [str(d) for d in range(10)]),
    ({"class_names": list("abcdefghij")}, 10, list("abcdefghij")),
    ({"dataset": "fashion-mnist"}, 10, FASHION_CLASSES),
    ({"class_names": ["x"]}, 3, ["0", "1", "2"]),            # wrong length: ignored
])
def test_class_names_for(metadata, k, expected):
    assert class_names_for(metadata, k) == expected


class FixedLogits:
    """A stand-in model that scores every input the same."""
    def predict(self, x):
        assert x.shape == (1, 28, 28, 1)
        return np.log(np.array([[0.1, 0.6, 0.05, 0.25]], np.float32))


def test_classifier_ranks_softmax_probabilities():
    clf = Classifier(FixedLogits(), ["a", "b", "c", "d"])
    buf = DrawingBuffer()
    assert clf.classify(buf.pixels) is None                 # empty canvas: no prediction
    buf.draw_polyline(DIGITS["1"][0])
    top = clf.classify(buf.pixels)
    assert [n for n, _ in top] == ["b", "d", "a"]
    assert [p for _, p in top] == pytest.approx([0.6, 0.25, 0.1], abs=1e-6)


@pytest.mark.parametrize("mode, tty, xauthority, expected", [
    ("always", False, "", True), ("never", True, "", False), ("auto", True, "/home/u/.Xauthority", True),
    ("auto", False, "/home/u/.Xauthority", False), ("auto", True, "/tmp/xvfb-run.Ab12/Xauthority", False),
])
def test_error_dialog_only_when_someone_can_close_it(monkeypatch, mode, tty, xauthority, expected):
    from dpnn.cli import gui
    monkeypatch.setenv("XAUTHORITY", xauthority)
    monkeypatch.setattr(gui.sys, "stdin", type("Stdin", (), {"isatty": lambda self: tty})())
    assert gui.wants_dialog(mode) is expected


def small_model_file(tmp_path: Path, input_shape=(28, 28, 1), metadata=None) -> str:
    from dpnn import Dense, Flatten, Model
    model = Model([Flatten(), Dense(10)], seed=0).build((1, *input_shape))
    model.metadata = metadata or {}
    path = str(tmp_path / "model.hdf5")
    model.save(path)
    return path


def test_metadata_that_is_not_an_object_is_a_clear_error(tmp_path):
    import h5py

    from dpnn.errors import WeightsError
    path = small_model_file(tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["dpnn_metadata"] = "[1, 2, 3]"
    with pytest.raises(WeightsError, match=r"dpnn_metadata attribute is a JSON list, not an object"):
        load_classifier(path)
    assert class_names_for(["not", "a", "dict"], 3) == ["0", "1", "2"]


@pytest.mark.parametrize("shape", [(32, 32, 1), (28, 28, 3), (100000, 100000, 1)])
def test_a_model_for_other_inputs_is_refused_before_it_is_built(tmp_path, shape, monkeypatch):
    import h5py

    from dpnn.errors import WeightsError
    path = small_model_file(tmp_path, (28, 28, 1) if shape[0] > 1000 else shape)
    with h5py.File(path, "a") as f:                  # a huge shape is only ever declared, never built
        f.attrs["dpnn_input_shape"] = json.dumps(list(shape))
    with pytest.raises(WeightsError, match=r"takes inputs of shape .*28x28x1 images"):
        load_classifier(path)


def test_main_reports_a_bad_file_in_one_line_and_exits_2(tmp_path, capsys):
    from dpnn.cli.gui import main
    assert main(["--weights", str(tmp_path / "nope.hdf5"), "--error-dialog", "never"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: weights file") and err.count("\n") == 1
