"""Keyed augmentations: shapes, purity, determinism, shard invariance, the spec grammar, pickling."""
import pickle

import numpy as np
import pytest

from dpnn.augment import (
    SPEC_HELP,
    TOKENS,
    BrightnessContrast,
    Clip,
    Compose,
    Cutout,
    RandomAffine,
    RandomCrop,
    RandomFlip,
    RandomShift,
    StrokeWidth,
    augment_batch,
    op_keys,
    parse_spec,
    shift_images,
)
from dpnn.random import sample_keys

FULL_SPEC = "shift=2,flip,rotate=10,scale=0.1,cutout=8,crop=4,brightness=0.2,contrast=0.2"

OPS = {
    "shift": RandomShift(3),
    "crop": RandomCrop(4),
    "crop-edge": RandomCrop(2, "edge"),
    "crop-reflect": RandomCrop(5, "reflect"),
    "flip": RandomFlip(),
    "affine": RandomAffine(rotate=15, scale=0.2, shift=1.5),
    "cutout": Cutout(8),
    "brightness-contrast": BrightnessContrast(0.2, 0.3),
    "stroke": StrokeWidth(0.4, 0.4),
    "clip": Clip(0.2, 0.8),
    "compose": parse_spec(FULL_SPEC + ",stroke=0.3:0.3,translate=1,clip"),
}


def images(n=20, c=1, h=12, w=10, seed=0):
    """(n, h, w, c) float32 in [0, 1]: smooth noise, so every op changes something."""
    return np.random.default_rng(seed).random((n, h, w, c), dtype=np.float32)


def keys(n=20, epoch=0):
    return sample_keys(7, epoch, np.arange(n))  # (n,) uint64


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", OPS)
def test_shape_dtype_purity_and_determinism(name, c):
    op, x, k = OPS[name], images(c=c), keys()
    before = x.copy()
    out = op(x, k)
    assert out.shape == x.shape and out.dtype == np.float32
    assert out is not x and not np.shares_memory(out, x)
    np.testing.assert_array_equal(x, before)  # x untouched
    np.testing.assert_array_equal(op(x, k), out)  # same keys: bitwise the same
    if name != "clip":  # clip draws nothing; every other op depends on the keys
        assert not np.array_equal(op(x, keys(epoch=1)), out)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", OPS)
def test_shard_invariance(name, c):
    """Any split of a batch (the workers' shards), in any order, gives the same rows bitwise."""
    op, x, k = OPS[name], images(c=c), keys()
    whole = op(x, k)
    for cuts in ([7], [1, 2, 19], list(range(1, 20))):
        parts = [op(x[a:b], k[a:b]) for a, b in zip([0] + cuts, cuts + [20])]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    perm = np.random.default_rng(1).permutation(20)
    np.testing.assert_array_equal(op(x[perm], k[perm]), whole[perm])


@pytest.mark.parametrize("name", OPS)
def test_pickle_round_trip(name):
    cloudpickle = pytest.importorskip("cloudpickle")
    op, x, k = OPS[name], images(c=3), keys()
    for dumps in (pickle.dumps, cloudpickle.dumps):
        again = pickle.loads(dumps(op))
        assert again == op
        np.testing.assert_array_equal(again(x, k), op(x, k))


def test_compose_ops_draw_independently():
    """Two identical ops in a Compose get different keys, so they do not repeat one draw."""
    x, k = images(n=200), keys(200)
    twice = Compose([RandomFlip(), RandomFlip()])(x, k)
    flipped = ~np.all(twice == x, axis=(1, 2, 3))
    assert 0.3 < flipped.mean() < 0.7  # one flip in half the images, not 0 or 2 in all
    assert not np.array_equal(op_keys(k, 0), op_keys(k, 1))


def test_empty_compose_is_a_copy():
    x = images()
    for op in (Compose([]), parse_spec(""), parse_spec("none")):
        out = op(x, keys())
        np.testing.assert_array_equal(out, x)
        assert not np.shares_memory(out, x)


def test_compose_runs_a_users_callable_in_order():
    def halve(x, k):
        return x * 0.5
    x = images()
    out = Compose([Clip(0.0, 0.4), halve])(x, keys())
    np.testing.assert_allclose(out, np.clip(x, 0, 0.4) * 0.5)
    with pytest.raises(ValueError, match="no spec"):
        Compose([halve]).describe()
    with pytest.raises(TypeError, match="callables"):
        Compose([3])


# ---- what each op does -------------------------------------------------------------------

def test_flip_really_flips():
    x, k = images(n=100, c=3), keys(100)
    out = RandomFlip()(x, k)
    flipped = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(out == x, axis=(1, 2, 3))
    assert np.all(flipped ^ kept) and 30 < flipped.sum() < 70
    np.testing.assert_array_equal(RandomFlip(1.0)(x, k), x[:, :, ::-1])
    np.testing.assert_array_equal(RandomFlip(0.0)(x, k), x)


@pytest.mark.parametrize("op", [RandomShift(3), RandomCrop(3)])
def test_shift_moves_content_by_the_drawn_amount(op):
    """One bright pixel per image lands exactly dy, dx away, with dy, dx in [-3, 3]."""
    x = np.zeros((50, 15, 15, 2), np.float32)
    x[:, 7, 7] = [1.0, 0.5]
    out = op(x, keys(50))
    moved = []
    for img in out:
        (i, j), = np.argwhere(img[..., 0] == 1.0)
        assert img[i, j, 1] == 0.5 and img.sum() == 1.5  # nothing else, channels together
        moved.append((i - 7, j - 7))
    moved = np.array(moved)
    assert np.abs(moved).max() == 3 and len(np.unique(moved, axis=0)) > 20


def test_shift_images_modes():
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 5, 1)  # one row: 0 1 2 3 4

    def row(mode, dx):
        return shift_images(x, np.array([0]), np.array([dx]), mode)[0, 0, :, 0]
    np.testing.assert_array_equal(row("constant", 2), [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(row("edge", 2), [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(row("edge", -2), [2, 3, 4, 4, 4])
    np.testing.assert_array_equal(row("reflect", 2), [2, 1, 0, 1, 2])
    np.testing.assert_array_equal(row("reflect", -2), [2, 3, 4, 3, 2])


def test_affine_identity_is_exact_and_rotation_keeps_the_centre():
    x, k = images(c=3), keys()
    np.testing.assert_array_equal(RandomAffine()(x, k), x)
    img = np.zeros((30, 31, 31, 1), np.float32)
    img[:, 15, 15] = 1.0  # the centre pixel stays put under rotation and zoom alone
    out = RandomAffine(rotate=30, scale=0.2)(img, keys(30))
    assert np.all(out[:, 15, 15, 0] > 0.99)


def test_affine_pure_shift_moves_the_centre_of_mass():
    img = np.zeros((40, 21, 21, 1), np.float32)
    img[:, 8:13, 8:13] = 1.0
    out = RandomAffine(shift=2.0)(img, keys(40))[..., 0]
    grid = np.arange(21)
    cy = out.sum(2) @ grid / out.sum((1, 2))
    cx = out.sum(1) @ grid / out.sum((1, 2))
    d = np.stack([cy - 10, cx - 10], 1)
    assert np.abs(d).max() <= 2.0 + 1e-4 and np.abs(d).max() > 1.5
    np.testing.assert_allclose(out.sum((1, 2)), 25.0, rtol=1e-5)  # bilinear keeps the mass inside


def test_cutout_zeroes_one_square():
    x = np.ones((60, 16, 16, 3), np.float32)
    out = Cutout(4)(x, keys(60))
    holes = (out == 0).all(axis=3)  # (N, H, W): channels cut together
    assert np.all((out == 0) | (out == 1))
    area = holes.sum((1, 2))
    assert area.max() == 16 and area.min() >= 4  # a full square, or clipped by the border
    for h in holes:
        rows, cols = np.flatnonzero(h.any(1)), np.flatnonzero(h.any(0))
        assert h[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # one rectangle


def test_brightness_contrast_ranges():
    x, k = images(n=100), keys(100)
    mean = x.mean((1, 2, 3))
    out = BrightnessContrast(brightness=0.1)(x, k)
    shift = (out - x).mean((1, 2, 3))
    np.testing.assert_allclose(out - x, np.broadcast_to(shift[:, None, None, None], x.shape), atol=1e-6)
    assert np.abs(shift).max() <= 0.1 and np.abs(shift).max() > 0.08
    out = BrightnessContrast(contrast=0.5)(x, k)
    np.testing.assert_allclose(out.mean((1, 2, 3)), mean, atol=1e-5)  # mean kept
    ratio = out.std((1, 2, 3)) / x.std((1, 2, 3))
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4 and np.ptp(ratio) > 0.5


def test_stroke_width_thickens_and_thins():
    x = np.zeros((10, 12, 12, 1), np.float32)
    x[:, 3:9, 4:8] = 1.0  # a bar four pixels wide: a full 2x2 min keeps 15 of its 24 pixels
    ink = x.sum((1, 2, 3))
    assert np.all(StrokeWidth(thick=1.0)(x, keys(10)).sum((1, 2, 3)) > ink)
    thin = StrokeWidth(thin=1.0)(x, keys(10)).sum((1, 2, 3))
    assert np.all(thin < ink) and np.all(thin > 0.6 * ink)
    np.testing.assert_array_equal(StrokeWidth()(x, keys(10)), x)
    line = np.zeros((10, 12, 12, 1), np.float32)
    line[:, 3:9, 5] = 1.0  # one pixel wide: thinning would erase it, so it is left alone
    np.testing.assert_array_equal(StrokeWidth(thin=1.0)(line, keys(10)), line)


def test_clip():
    x = np.linspace(-1, 2, 20 * 12 * 10, dtype=np.float32).reshape(20, 12, 10, 1)
    out = Clip()(x, keys())
    assert out.min() == 0.0 and out.max() == 1.0


def test_integer_images_and_int_keys_are_accepted():
    x = (images() * 255).astype(np.uint8)
    out = RandomShift(1)(x, np.arange(20))
    assert out.dtype == np.float32 and out.max() > 1.0


@pytest.mark.parametrize("x, k, words", [
    (np.zeros((4, 5, 5)), np.arange(4), r"\(N, H, W, C\)"),
    (np.zeros((4, 5, 5, 1)), np.arange(3), r"keys must be \(4,\)"),
    (np.zeros((4, 5, 5, 1)), np.zeros(4), "sample_keys"),
    (np.zeros((4, 5, 5, 1), dtype=bool), np.arange(4), "numeric"),
])
def test_bad_inputs(x, k, words):
    with pytest.raises(ValueError, match=words):
        RandomFlip()(x, k)


# ---- the spec grammar ------------------------------------------------------------------------

def test_parse_full_spec():
    got = parse_spec(FULL_SPEC)
    assert got == Compose([RandomShift(2), RandomFlip(), RandomAffine(rotate=10, scale=0.1), Cutout(8),
                           RandomCrop(4), BrightnessContrast(0.2, 0.2)])
    assert got.describe() == FULL_SPEC
    assert parse_spec(" shift = 2 , flip ") == Compose([RandomShift(2), RandomFlip()])


@pytest.mark.parametrize("spec, ops", [
    ("flip=0.25,clip=-1:2", [RandomFlip(0.25), Clip(-1, 2)]),
    ("crop=3:reflect,stroke=0.2:0.1,stroke=0.3",
     [RandomCrop(3, "reflect"), StrokeWidth(0.2, 0.1), StrokeWidth(0.3)]),
    ("translate=1.5,rotate=5", [RandomAffine(rotate=5, shift=1.5)]),
    ("rotate=5,rotate=6,scale=0.1", [RandomAffine(rotate=5), RandomAffine(rotate=6, scale=0.1)]),
    ("rotate=5,flip,scale=0.1", [RandomAffine(rotate=5), RandomFlip(), RandomAffine(scale=0.1)]),
    ("contrast=0.1,brightness=0.3", [BrightnessContrast(0.3, 0.1)]),
    ("flip,flip", [RandomFlip(), RandomFlip()]),
    ("flip,flip=0.3", [RandomFlip(), RandomFlip(0.3)]),
    ("rotate=0", [RandomAffine()]),
])
def test_spec_table_and_round_trip(spec, ops):
    got = parse_spec(spec)
    assert got == Compose(ops)
    assert parse_spec(got.describe()) == got


def test_every_token_is_documented():
    for name in list(TOKENS) + ["none"]:
        assert f"\n  {name}" in SPEC_HELP
    import dpnn.augment
    assert SPEC_HELP in dpnn.augment.__doc__


@pytest.mark.parametrize("spec, words", [
    ("shift=2,blur=3", r"unknown token 'blur=3'; valid tokens: shift, crop, flip, rotate"),
    ("Flip", r"unknown token 'Flip'"),
    ("shift", r"token 'shift': shift needs a value"),
    ("shift=1.5", r"token 'shift=1.5': '1.5' is not an integer"),
    ("rotate=ten", r"token 'rotate=ten': 'ten' is not a number"),
    ("shift=-1", r"token 'shift=-1': shift pixels must be an integer >= 0"),
    ("flip=1.5", r"token 'flip=1.5': flip probability must be a finite number in \[0, 1\]"),
    ("translate=inf", r"translate pixels must be a finite number"),
    ("brightness=nan", r"brightness must be a finite number"),
    ("crop=2:wrap", r"token 'crop=2:wrap': crop mode 'wrap' is unknown; use one of constant, edge, reflect"),
    ("crop=2:edge:x", r"crop takes at most 2 value\(s\)"),
    ("rotate=5,scale=1.5", r"token 'rotate=5,scale=1.5': scale fraction must be"),
    ("cutout=0", r"cutout size must be an integer >= 1"),
    ("stroke=0.8:0.5", r"keep thick \+ thin <= 1"),
    ("clip=1:0", r"finite LO < HI"),
    ("contrast=2", r"contrast must be a finite number in \[0, 1\]"),
])
def test_spec_errors_name_the_token(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_spec(spec)


# ---- in fit's workers -------------------------------------------------------------------------

def fit_params(workers, augment):
    from dpnn import Activation, Conv2D, Dense, Flatten, MaxPool2D, Model
    x = images(n=30, c=3, h=8, w=8, seed=2)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
    m = Model([Conv2D(4, (3, 3)), Activation("relu"), MaxPool2D((2, 2)), Flatten(), Dense(2)], seed=1)
    m.compile("cce", "adam", lr=1e-2)
    m.fit(x, y, epochs=2, batch_size=16, seed=5, verbose=0, deterministic=True, workers=workers,
          augment=augment)
    return m.params.copy()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*oversubscribed:RuntimeWarning")  # 3 workers on 2 cores
def test_fit_with_a_parsed_spec_is_worker_count_invariant():
    """The Compose travels to the workers (pickled) and each augments its own shard."""
    aug = parse_spec(FULL_SPEC + ",stroke=0.3:0.3,clip")
    ref = fit_params(1, aug)
    np.testing.assert_array_equal(fit_params(3, aug), ref)  # shards of 6, 5, 5 and 5, 5, 4
    assert not np.array_equal(fit_params(1, None), ref), "the augmentation was not applied"


def test_augment_batch_is_what_the_workers_run():
    """One home for fit's key derivation: a step with augment= trains on augment_batch's output."""
    from dpnn import Dense, Flatten, Model
    from dpnn.engine import LocalEngine
    op, x, k = OPS["compose"], images(c=3), keys()
    got = augment_batch(op, x, k)
    assert not np.array_equal(got, op(x, k))  # the keys were derived, not passed through
    y = np.arange(len(x)) % 2
    a, b = (Model([Flatten(), Dense(2)], seed=0).compile("cce", "sgd", lr=0.1) for _ in range(2))
    for m in (a, b):
        m.build(x.shape)
    LocalEngine(a, augment=op).train_step(x, y, k)
    LocalEngine(b).train_step(got, y, k)
    np.testing.assert_array_equal(a.params, b.params)
    with pytest.raises(ValueError, match="augment returned shape"):
        augment_batch(lambda x, k: x[:, :4], x, k)
