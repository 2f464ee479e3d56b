"""Every split and subset dpnn takes is a seeded shuffle stratified by class (issue 21, point 1):
``fit(validation_split=)``, ``--val-split``, ``--limit`` and the held-out test split, on data that
arrive sorted by class (image folders, CSV, npz)."""
from __future__ import annotations

import numpy as np
import pytest

import dpnn.cli.train as train_cli
from dpnn.data import Dataset, sorted_by_class, stratified_split
from dpnn.datasets import load
from dpnn.training import TrainingSession

from conftest import cnn

Image = pytest.importorskip("PIL.Image", reason="image folders need Pillow: pip install pillow")


def sorted_labels(counts) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)            # (N,) 0 0 0 1 1 2 2 2 ...


# -- the function -------------------------------------------------------------------------------
@pytest.mark.parametrize("counts, fraction", [((50, 50, 50), 0.1), ((97, 3, 40, 60), 0.25),
                                              ((1, 1, 1, 1, 1, 1, 1, 1, 1, 1), 0.1), ((10,), 0.5)])
def test_stratified_split_is_exact_disjoint_proportional_and_seeded(counts, fraction):
    y = sorted_labels(counts)
    keep, held = stratified_split(y, fraction, seed=3)
    assert len(held) == round(len(y) * fraction) and len(keep) + len(held) == len(y)
    np.testing.assert_array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(y)))
    assert np.all(np.diff(keep) > 0) and np.all(np.diff(held) > 0)          # order kept
    per_class = np.bincount(y[held], minlength=len(counts))
    assert np.all(np.abs(per_class - np.array(counts) * fraction) < 1)      # largest remainder
    again = stratified_split(y, fraction, seed=3)
    np.testing.assert_array_equal(held, again[1])                           # a function of the seed
    if min(counts) > 5:
        assert not np.array_equal(held, stratified_split(y, fraction, seed=4)[1])


def test_one_hot_labels_are_stratified_and_targets_are_not_refused():
    y = sorted_labels((20, 20))
    one_hot = np.eye(2, dtype=np.float32)[y]
    np.testing.assert_array_equal(stratified_split(one_hot, 0.2, 0)[1], stratified_split(y, 0.2, 0)[1])
    keep, held = stratified_split(np.linspace(0, 1, 40), 0.25, 0)           # regression targets
    assert len(held) == 10 and len(keep) == 30


def test_sorted_by_class():
    assert sorted_by_class(sorted_labels((3, 3, 3)))
    assert not sorted_by_class(np.arange(9) % 3)
    assert not sorted_by_class(np.zeros(5, dtype=int))


def test_dataset_split_and_subset_cover_every_class():
    y = sorted_labels((30, 30, 30))
    ds = Dataset(np.arange(90, dtype=np.float32).reshape(90, 1), y)
    train, val = ds.split(0.1, seed=0)
    assert np.bincount(val.y).tolist() == [3, 3, 3] and len(train) == 81
    sub = ds.subset(30, seed=0)
    assert np.bincount(sub.y).tolist() == [10, 10, 10]
    assert ds.subset(200) is ds


# -- fit(validation_split=) ---------------------------------------------------------------------
def capture_training_sets(monkeypatch) -> dict:
    """Record what TrainingSession.train gets: the training labels and the validation set."""
    seen, real = {}, TrainingSession.train

    def spy(self, X, Y, val_data, *args, **kwargs):
        seen.update(Y=np.asarray(Y).copy(), val=val_data)
        return real(self, X, Y, val_data, *args, **kwargs)
    monkeypatch.setattr(TrainingSession, "train", spy)
    return seen


def test_fit_validation_split_is_stratified_on_sorted_data(monkeypatch):
    seen = capture_training_sets(monkeypatch)
    y = sorted_labels((20, 20, 20, 20, 20))
    X = np.random.default_rng(0).random((100, 8, 8, 1)).astype(np.float32)
    model = cnn(classes=5, lr=1e-3)
    history = model.fit(X, y, epochs=1, batch_size=16, validation_split=0.2, seed=7, verbose=0)
    keep, held = stratified_split(y, 0.2, 7)
    assert np.bincount(seen["val"][1], minlength=5).tolist() == [4, 4, 4, 4, 4]
    np.testing.assert_array_equal(seen["val"][1], y[held])
    np.testing.assert_array_equal(seen["Y"], y[keep])
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(X[held], y[held])[0], rel=1e-6)


# -- the command line on class-ordered folders, CSV and npz --------------------------------------
def write_class_folders(root, classes=3, per_class=100, shape=(8, 8, 3)):
    """root/train/<class>/<i>.png, RGB, class k a solid colour of its own (+ noise): sorted by class."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        folder = root / "train" / f"class{k}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = np.zeros(shape, np.uint8)
            img[..., k % 3] = 200
            img = np.clip(img + rng.integers(0, 30, shape), 0, 255).astype(np.uint8)
            Image.fromarray(img, "RGB").save(folder / f"{i}.png")
    return root


def test_readme_command_on_sorted_image_folders_validates_on_every_class(tmp_path, monkeypatch, capsys):
    """The README's own command: ``--dataset ./my_photos --image-size 32x32x3 --model seed-cnn
    --val-split 0.1`` on three classes; every class in validation, training and the test split."""
    write_class_folders(tmp_path / "my_photos", per_class=40)
    monkeypatch.chdir(tmp_path)
    seen = capture_training_sets(monkeypatch)
    argv = ["--dataset", "./my_photos", "--image-size", "32x32x3", "--model", "seed-cnn", "--val-split", "0.1",
            "--epochs", "1", "--workers", "1", "--checkpoint-dir", "none", "--out", "w.hdf5"]
    assert train_cli.main(argv) == 0
    assert np.bincount(seen["val"][1], minlength=3).tolist() == [4, 4, 3]   # 11 of 108 (36 a class)
    assert np.bincount(seen["Y"], minlength=3).tolist() == [32, 32, 33]
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "sorted by class" in line]
    assert len(notes) == 1 and "stratified, seeded" in notes[0] and "my_photos" in notes[0]
    _, test, _ = load(tmp_path / "my_photos", "8x8x3")
    assert np.bincount(test.y).tolist() == [4, 4, 4]                       # the held-out 10 %


def write_sorted_csv(path, counts=(30, 30, 30, 30), header=True):
    y = sorted_labels(counts)
    x = np.random.default_rng(0).integers(0, 256, (len(y), 16))
    lines = ([",".join(["label"] + [f"p{i}" for i in range(16)])] if header else [])
    lines += [",".join(map(str, [lab, *row])) for lab, row in zip(y, x)]
    path.write_text("\n".join(lines) + "\n")


def test_limit_and_val_split_on_sorted_csv(tmp_path, monkeypatch, capsys):
    write_sorted_csv(tmp_path / "train.csv")
    monkeypatch.chdir(tmp_path)
    seen = capture_training_sets(monkeypatch)
    argv = ["--dataset", str(tmp_path), "--model", "mlp", "--epochs", "1", "--workers", "1", "--limit", "40",
            "--val-split", "0.2", "--checkpoint-dir", "none", "--out", "w.hdf5"]
    assert train_cli.main(argv) == 0
    assert np.bincount(seen["Y"], minlength=4).tolist() == [8, 8, 8, 8]    # 40 of 108, then 8 validate
    assert np.bincount(seen["val"][1], minlength=4).tolist() == [2, 2, 2, 2]
    err = capsys.readouterr().err
    assert "train.csv is sorted by class: validation and --limit take a stratified, seeded sample" in err


def test_npz_sorted_by_class_holds_out_every_class(tmp_path):
    y = sorted_labels((40, 40, 20))
    np.savez(tmp_path / "train.npz", x=np.random.default_rng(0).integers(0, 256, (100, 4, 4), np.uint8), y=y)
    train, test, info = load(tmp_path)
    assert np.bincount(test.y).tolist() == [4, 4, 2] and len(train) == 90
    assert info["sorted_by_class"] and "stratified" in info["notes"][0]
    np.savez(tmp_path / "train.npz", x=np.zeros((30, 4, 4), np.uint8), y=np.arange(30) % 3)
    assert not load(tmp_path)[2]["sorted_by_class"]
