"""Dataset validation, deterministic shuffling, batching with prefetch, MNIST directories."""
import numpy as np
import pytest

from dpnn.data import Dataset, batch_indices, epoch_permutation, load_mnist_gz, one_hot
from dpnn.errors import DataError
from dpnn.idx import write_idx
from dpnn.random import keyed_uniform


def make(n=10, k=3, dtype=np.float32):
    X = np.arange(n * 4, dtype=dtype).reshape(n, 2, 2, 1)
    return Dataset(X, np.arange(n) % k)


# ---- Dataset validation -------------------------------------------------------------

def test_dataset_basics():
    ds = make(10, k=3)
    assert len(ds) == 10 and ds.num_classes == 3
    assert Dataset(np.zeros((4, 3)), np.eye(4, 5)[:4]).num_classes == 5
    assert make(5, dtype=np.uint8).X.dtype == np.uint8


@pytest.mark.parametrize("X, y, words", [
    (np.zeros((4, 2)), np.zeros(3, dtype=int), "X has 4 samples"),
    (np.zeros((4, 2)), np.zeros((4, 2, 2)), "X has 4 samples"),
    (np.zeros(4), np.zeros(4, dtype=int), "at least 2 dimensions"),
    (np.zeros((4, 2), dtype=np.int32), np.zeros(4, dtype=int), "float or uint8"),
    (np.zeros((4, 2)), np.zeros(4), "integer labels expected"),
    (np.zeros((4, 2)), np.array([0, 1, -1, 2]), ">= 0"),
    (np.zeros((4, 2)), np.full((4, 3), np.nan), "finite"),
])
def test_dataset_rejects(X, y, words):
    with pytest.raises(DataError, match=words):
        Dataset(X, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_dataset_rejects_non_finite_pixels(bad):
    X = np.zeros((6, 3, 3, 1), dtype=np.float32)
    X[4, 1, 2, 0] = bad
    with pytest.raises(DataError, match=r"1 samples \(first: index 4\)"):
        Dataset(X, np.zeros(6, dtype=np.int64))


def test_large_finite_float64_values_are_accepted():
    X = np.full((2, 2), 1e308)  # the float64 sum overflows; values are still finite
    assert len(Dataset(X, np.zeros(2, dtype=int))) == 2


def test_split_is_deterministic_disjoint_and_complete():
    ds = make(100)
    tr, va = ds.split(0.2, seed=3)
    tr2, va2 = ds.split(0.2, seed=3)
    assert len(tr) == 80 and len(va) == 20
    np.testing.assert_array_equal(va.X, va2.X)
    ids = np.concatenate([tr.X[:, 0, 0, 0], va.X[:, 0, 0, 0]]) / 4
    np.testing.assert_array_equal(np.sort(ids), np.arange(100))
    assert not np.array_equal(va.X, ds.split(0.2, seed=4)[1].X)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        make().split(fraction)


def test_subset():
    ds = make(10)
    sub = ds.subset(3, seed=1)                  # a seeded, stratified sample (tests/test_splits.py)
    assert len(sub) == 3 and set(sub.X[:, 0, 0, 0].tolist()) <= set(ds.X[:, 0, 0, 0].tolist())
    np.testing.assert_array_equal(sub.X, ds.subset(3, seed=1).X)
    assert len(ds.subset(50)) == 10
    with pytest.raises(ValueError):
        ds.subset(-1)


# ---- Shuffling and batching --------------------------------------------------------

def test_permutation_depends_only_on_seed_and_epoch():
    a = epoch_permutation(1000, seed=7, epoch=2)
    np.random.seed(123)  # global NumPy state must not matter
    np.testing.assert_array_equal(a, epoch_permutation(1000, seed=7, epoch=2))
    np.testing.assert_array_equal(a, np.random.default_rng([7, 2]).permutation(1000))
    assert not np.array_equal(a, epoch_permutation(1000, seed=7, epoch=3))
    assert not np.array_equal(a, epoch_permutation(1000, seed=8, epoch=2))


@pytest.mark.parametrize("n, bs", [(10, 3), (10, 5), (10, 10), (10, 32), (1, 1), (0, 4)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_batch_indices_cover_every_sample_once(n, bs, shuffle):
    batches = list(batch_indices(n, bs, shuffle=shuffle, seed=1, epoch=0))
    sizes = [len(b) for b in batches]
    assert sizes == [bs] * (n // bs) + ([n % bs] if n % bs else [])
    got = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    np.testing.assert_array_equal(np.sort(got), np.arange(n))
    if not shuffle:
        np.testing.assert_array_equal(got, np.arange(n))


def test_batch_indices_follow_epoch_permutation():
    got = np.concatenate(list(batch_indices(50, 8, seed=5, epoch=4)))
    np.testing.assert_array_equal(got, epoch_permutation(50, 5, 4))


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(10, 0)  # raised at the call, not at the first next()
    with pytest.raises(ValueError, match="batch_size"):
        make().batches(0)


def test_batches_cover_every_sample_with_uneven_last_batch():
    ds = make(23, k=5)
    got = list(ds.batches(5, seed=0, epoch=1))
    assert [len(xb) for xb, _ in got] == [5, 5, 5, 5, 3]
    ids = np.concatenate([xb[:, 0, 0, 0] for xb, _ in got]) / 4
    np.testing.assert_array_equal(np.sort(ids), np.arange(23))
    for xb, yb in got:  # labels travel with their samples
        np.testing.assert_array_equal(yb, (xb[:, 0, 0, 0] / 4).astype(int) % 5)


def _noisy(xb, keys):
    return xb + keyed_uniform(keys, 0, xb.shape[1:])


@pytest.mark.parametrize("num_threads", [1, 2, 4, None])
def test_prefetch_matches_inline(num_threads):
    ds = make(103)
    inline = list(ds.batches(8, preprocess=_noisy, num_threads=0, seed=2, epoch=3))
    threaded = list(ds.batches(8, preprocess=_noisy, num_threads=num_threads, seed=2, epoch=3))
    assert len(inline) == len(threaded) == 13
    for (xa, ya), (xb, yb) in zip(inline, threaded):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_preprocess_keys_differ_between_epochs():
    ds = Dataset(np.zeros((8, 2), dtype=np.float32), np.zeros(8, dtype=int))
    e0 = [xb for xb, _ in ds.batches(4, shuffle=False, preprocess=_noisy, seed=0, epoch=0)]
    e1 = [xb for xb, _ in ds.batches(4, shuffle=False, preprocess=_noisy, seed=0, epoch=1)]
    assert not np.array_equal(e0[0], e0[1]) and not np.array_equal(e0[0], e1[0])


def test_preprocess_errors_propagate_and_early_stop_is_clean():
    ds = make(40)

    def boom(xb, keys):
        raise RuntimeError("bad batch")

    with pytest.raises(RuntimeError, match="bad batch"):
        list(ds.batches(4, preprocess=boom, num_threads=2))
    it = ds.batches(4, num_threads=2, seed=0)
    next(it)
    it.close()  # must shut the pool down without hanging


def test_negative_threads_rejected():
    with pytest.raises(ValueError, match="num_threads"):
        make().batches(4, num_threads=-1)


# ---- one_hot -------------------------------------------------------------------------

def test_one_hot():
    out = one_hot(np.array([2, 0, 1, 2]), 3)
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_array_equal(out.argmax(1), [2, 0, 1, 2])
    np.testing.assert_array_equal(out.sum(1), 1.0)


@pytest.mark.parametrize("labels, k, err", [
    ([0, 3], 3, DataError), ([-1, 0], 3, DataError), ([0.5], 3, ValueError),
    ([[0, 1]], 3, ValueError), ([0], 0, ValueError),
])
def test_one_hot_rejects(labels, k, err):
    with pytest.raises(err):
        one_hot(np.array(labels), k)


# ---- MNIST-style directories ---------------------------------------------------------

def write_mnist_dir(d, n_train=12, n_test=5, gz=True, dotted=False, labels=None):
    """Write four small IDX files; returns the image arrays written."""
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    sep = "." if dotted else "-"
    imgs = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs[split] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lab = np.arange(n, dtype=np.uint8) % 10 if labels is None else labels[split]
        write_idx(d / f"{split}-images{sep}idx3-ubyte{ext}", imgs[split], gzip=gz)
        write_idx(d / f"{split}-labels{sep}idx1-ubyte{ext}", lab, gzip=gz)
    return imgs


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dotted", [True, False])
def test_load_mnist_dir(tmp_path, gz, dotted):
    imgs = write_mnist_dir(tmp_path, gz=gz, dotted=dotted)
    train, test = load_mnist_gz(tmp_path)
    assert train.X.shape == (12, 28, 28, 1) and test.X.shape == (5, 28, 28, 1)
    assert train.X.dtype == np.float32 and train.y.dtype == np.int64
    np.testing.assert_allclose(train.X[..., 0] * 255, imgs["train"], atol=1e-4)
    np.testing.assert_array_equal(test.y, np.arange(5) % 10)


def test_missing_directory_lists_expected_files(tmp_path):
    with pytest.raises(DataError, match="directory not found") as err:
        load_mnist_gz(tmp_path / "nowhere")
    assert "train-images-idx3-ubyte" in str(err.value) and "t10k-labels-idx1-ubyte" in str(err.value)


def test_missing_file_is_named(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte") as err:
        load_mnist_gz(tmp_path)
    assert "train-images-idx3-ubyte" in str(err.value)  # the full list of what is expected


def test_count_mismatch(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataError, match="12 images but .*train-labels-idx1-ubyte.gz has 11 labels"):
        load_mnist_gz(tmp_path)


def test_labels_out_of_range(tmp_path):
    labels = {"train": np.array([0] * 11 + [10], dtype=np.uint8), "t10k": np.zeros(5, dtype=np.uint8)}
    write_mnist_dir(tmp_path, labels=labels)
    with pytest.raises(DataError, match=r"train-labels.*label 10 at index 11 is outside 0..9"):
        load_mnist_gz(tmp_path)
    train, _ = load_mnist_gz(tmp_path, num_classes=11)
    assert train.num_classes == 11


def test_swapped_images_and_labels(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(12, dtype=np.uint8))
    with pytest.raises(DataError, match="train-images.*must be 3-D"):
        load_mnist_gz(tmp_path)


def test_corrupt_member_is_named(tmp_path):
    write_mnist_dir(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: gzip stream is truncated"):
        load_mnist_gz(tmp_path)
