"""Issue 21, point 9: gradcheck says it runs in float64, a diverging run prints dpnn's line
without NumPy's overflow warnings, launch.digits and launch.train print epochs alike, the
summary counts training samples as the start line does."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import dpnn
from dpnn.gradcheck import GradientMismatch, check_layer

from conftest import ROOT, subprocess_env


class Float32Scale(dpnn.Layer):
    """Right gradients, but computed in float32 whatever the input."""

    def forward(self, x, training=False):
        return (x * 3.0).astype(np.float32)

    def backward(self, grad):
        return (grad * 3.0).astype(np.float32)


def test_gradcheck_says_it_runs_in_float64_when_a_layer_returns_float32():
    with pytest.raises(GradientMismatch) as e:
        check_layer(Float32Scale(), (2, 4, 4, 3))
    assert "elements differ" in str(e.value)
    assert "runs in float64" in str(e.value) and "returned float32" in str(e.value)


def train(*args):
    return subprocess.run([sys.executable, "-m", "launch.train", "--dataset", "synthetic", "--limit", "512",
                           "--model", "mlp", "--epochs", "2", "--checkpoint-dir", "none", "--verbose", "2",
                           *map(str, args)], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_diverging_run_prints_dpnn_s_line_alone(tmp_path, workers):
    r = train("--lr", "1e6", "--optimizer", "sgd", "--workers", workers, "--out", tmp_path / "w.hdf5")
    assert r.returncode == 1 and "the loss became nan" in r.stderr
    assert "RuntimeWarning" not in r.stderr, r.stderr


@pytest.mark.slow
def test_summary_counts_the_training_samples_the_start_line_counts(tmp_path):
    r = train("--val-split", "0.25", "--workers", 1, "--out", tmp_path / "w.hdf5")
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert "training 384 samples" in text, text                 # synthetic has a test split: 512 - 128
    assert "384 training samples (128 more held out for validation)" in text


def test_launch_digits_prints_epochs_like_launch_train(monkeypatch, capsys):
    import dpnn.cli.digits as digits
    from dpnn.datasets import make_synthetic
    digits.train_digits(make_synthetic(64, seed=0), epochs=1, batch_size=32, lr=1e-3, seed=0, workers=1,
                        verbose=True, model_name="mlp")
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("epoch 1/1:"))
    assert ", lr 0.001" in line and "samples/s" in line, line   # dpnn.reporting.epoch_line's format
