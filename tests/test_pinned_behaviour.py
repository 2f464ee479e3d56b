"""Behaviour no other test pinned down (issue 30): each test here fails when the code makes the
mistake its docstring names, a mistake a user would only see as a worse model.

- BatchNorm running statistics merged from uneven shards are weighted per sample (as one
  process computing the whole batch), in one process, on workers and across MPI ranks;
- Dropout layers draw independent masks; ``fit(shuffle=False)`` keeps the order; an infinite
  loss is divergence like NaN; the last partial batch holds exactly the samples left over.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dpnn import Dense, Dropout, Flatten, Model

from conftest import MPIEXEC, finish, mpi_env, needs_mpi

try:
    from dpnn.workers import DataParallel  # noqa: F401
    HAVE_ENGINE = True
except ImportError:
    HAVE_ENGINE = False


# -- BatchNorm statistics from uneven shards -------------------------------------------------------
BN_MODEL = textwrap.dedent('''
    import numpy as np
    from dpnn import BatchNorm2D, Conv2D, Dense, Flatten, Model

    def make():
        layers = [Conv2D(3, (1, 1)), BatchNorm2D(momentum=0.5), Flatten(), Dense(3)]
        return Model(layers, seed=0).compile(optimizer="sgd", lr=0.01)

    def data():
        """29 samples whose channel means drift with the index: shards of different sizes have
        different means, so a per-shard average is far from the batch's."""
        rng = np.random.default_rng(0)
        drift = np.arange(29, dtype=np.float32)[:, None, None, None] / 5
        return rng.normal(size=(29, 3, 3, 1)).astype(np.float32) + drift, rng.integers(0, 3, 29)

    def running_mean(**options):
        """Batches of 13, 13 and the last partial 3, in order."""
        model = make()
        model.fit(*data(), epochs=1, batch_size=13, shuffle=False, seed=0, verbose=0, **options)
        return np.array(model.layers[1].state["running_mean"])
''')


@pytest.fixture(scope="module")
def bn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bn")
    (folder / "bn_model.py").write_text(BN_MODEL)
    sys.path.insert(0, str(folder))
    import bn_model
    sys.path.pop(0)
    yield bn_model, folder
    sys.modules.pop("bn_model", None)


def one_shard(bn_model) -> np.ndarray:
    """The reference: one process computing every batch whole."""
    return bn_model.running_mean()


@pytest.mark.parametrize("options", [{"deterministic": True},
                                     pytest.param({"workers": 2}, marks=pytest.mark.slow),
                                     pytest.param({"workers": 2, "deterministic": True}, marks=pytest.mark.slow)],
                         ids=["micro-shards in process", "2 workers", "2 workers, micro-shards"])
def test_batchnorm_statistics_of_uneven_shards_are_weighted_per_sample(bn, options):
    """Shards of 4, 3, 3, 3 (13 in deterministic mode's 4 micro-shards), 7 and 6 (13 on 2 workers),
    1, 1, 1 or 2 and 1 (the last batch): weighting each shard alike moves the running mean by ~0.07."""
    bn_model, _ = bn
    if options.get("workers", 1) > 1 and not HAVE_ENGINE:
        pytest.skip("dpnn.workers (the shared-memory engine) is not available")
    np.testing.assert_allclose(bn_model.running_mean(**options), one_shard(bn_model), atol=2e-4)


BN_RUN = textwrap.dedent('''
    import sys
    import numpy as np
    from dpnn.comm import get_communicator
    from bn_model import running_mean

    if __name__ == "__main__":
        comm = get_communicator("mpi")
        mean = running_mean(backend=comm, deterministic=sys.argv[2] == "det")
        np.save(f"{sys.argv[1]}/mean-{comm.rank}.npy", mean)
''')


@needs_mpi
@pytest.mark.parametrize("mode", ["plain", "det"])
def test_batchnorm_statistics_across_mpi_ranks_are_weighted_per_sample(bn, tmp_path, mode):
    """2 ranks: 7 and 6 samples of a batch of 13, 2 and 1 of the last: each rank's share is its
    sample count over the batch's, not 1/2."""
    bn_model, folder = bn
    (folder / "bn_run.py").write_text(BN_RUN)
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, str(folder / "bn_run.py"), str(tmp_path), mode],
                            cwd=folder, env=mpi_env(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    code, out, err = finish(proc, timeout=60)
    assert code == 0, err
    reference = one_shard(bn_model)
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"mean-{rank}.npy"), reference, atol=2e-4)


# -- MaxPool2D against PyTorch: ties, and windows that overlap along one axis ----------------------
@pytest.mark.parametrize("pool, stride", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (2, 2)), ((2, 3), (1, 3))],
                         ids=["tiled", "overlapping", "overlap along H only", "overlap along W only"])
def test_maxpool_ties_and_overlaps_match_pytorch(pool, stride):
    """Quantised pixels (4 levels) tie in most windows: the gradient goes to the first maximum in
    the window, as PyTorch's; where windows overlap, the gradients of each window add up."""
    torch = pytest.importorskip("torch")
    from dpnn import MaxPool2D
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (2, 9, 10, 3)).astype(np.float64)                 # (N, H, W, C), many ties
    layer = MaxPool2D(pool, stride=stride)
    layer.build(x.shape)
    out = layer.forward(x, training=True)
    grad = rng.normal(size=out.shape)
    dx = layer.backward(grad)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)         # NCHW
    ot = torch.nn.functional.max_pool2d(xt, pool, stride)
    ot.backward(torch.tensor(grad.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(out, ot.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-12)


# -- Dropout, order, divergence, the last batch ------------------------------------------------------
def test_two_dropout_layers_draw_independent_masks():
    """Each layer's mask is keyed by its position too: with the same mask twice, half the units
    would survive both layers instead of a quarter."""
    model = Model([Dropout(0.5), Dropout(0.5)], seed=0).build((1, 20_000))
    out = model.forward(np.ones((2, 20_000), np.float32), training=True)
    survived = np.count_nonzero(out) / out.size
    assert abs(survived - 0.25) < 0.02, survived


class RecordBatches(Dense):
    """A user's layer that records the sample numbers (pixel 0) of each training batch it sees."""

    def __init__(self, units, log):
        super().__init__(units)
        self.log = log

    def forward(self, x, training=False):
        if training:
            self.log.append(x[:, 0].round().astype(int).tolist())
        return super().forward(x, training)


def batches_seen(n: int, batch_size: int, epochs: int = 1, **options) -> list[list[int]]:
    log: list = []
    x = np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 3))            # sample i reads i
    model = Model([RecordBatches(2, log)], seed=0).compile(optimizer="sgd", lr=1e-6)
    model.fit(x, np.arange(n) % 2, epochs=epochs, batch_size=batch_size, seed=3, verbose=0, **options)
    return log


def test_shuffle_false_keeps_the_order_and_the_last_batch_holds_what_is_left():
    assert batches_seen(10, 4, epochs=2, shuffle=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2


def test_a_shuffled_epoch_sees_every_sample_once_and_the_last_batch_is_not_topped_up():
    seen = batches_seen(10, 4, epochs=2)
    assert [len(b) for b in seen] == [4, 4, 2] * 2
    for epoch in (seen[:3], seen[3:]):
        assert sorted(sum(epoch, [])) == list(range(10))
    assert seen[:3] != seen[3:] and sum(seen[:3], []) != list(range(10))     # shuffled, anew each epoch


def test_an_infinite_loss_is_divergence_like_nan():
    from dpnn.losses import Loss
    from dpnn.training import TrainingDiverged

    class Explodes(Loss):
        """Mean squared output; infinite from the third batch on (a user's loss)."""
        calls = 0

        def forward(self, y_pred, y_true):
            self.y_pred, self.calls = y_pred, self.calls + 1
            return float("inf") if self.calls >= 3 else float(np.mean(y_pred ** 2))

        def backward(self, denominator=None):
            return 2 * self.y_pred / (denominator or len(self.y_pred)) / self.y_pred.shape[1]
    model = Model([Flatten(), Dense(2)], seed=0).compile(loss=Explodes(), optimizer="sgd", lr=0.01)
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    with pytest.raises(TrainingDiverged, match=r"the loss became inf at epoch 1, step 3"):
        model.fit(x, np.zeros(40, int), epochs=2, batch_size=8, verbose=0)


# -- HDF5 attributes are bounded, variable-length strings included ---------------------------------
@pytest.mark.parametrize("kind", ["variable-length string", "fixed-size array", "array of strings"])
def test_an_hdf5_attribute_larger_than_the_limit_is_refused(tmp_path, kind):
    """The limit is what stops a file from making the loader hold an attribute of any size; h5py
    writes a Python str as a variable-length string, whose reported storage size is 16 bytes."""
    h5py = pytest.importorskip("h5py")
    from dpnn import WeightsError
    from dpnn.hdf5read import MAX_ATTRIBUTE_BYTES
    path = str(tmp_path / "w.hdf5")
    Model([Flatten(), Dense(2)], seed=0).build((1, 3)).save(str(tmp_path / "small.hdf5"))
    big = MAX_ATTRIBUTE_BYTES + 1
    with h5py.File(tmp_path / "small.hdf5") as small, h5py.File(path, "w", libver="latest") as f:
        for k in small:                                      # the same model, in a file whose root
            small.copy(k, f)                                 # group stores attributes of any size
        f.attrs.update(small.attrs)
        (tmp_path / "small.json").rename(tmp_path / "w.json")
        if kind == "variable-length string":
            f.attrs["notes"] = "x" * big
        elif kind == "fixed-size array":
            f.attrs.create("notes", np.zeros(big, np.uint8))
        else:
            f.attrs.create("notes", ["x" * (big // 4 + 1)] * 4, dtype=h5py.string_dtype())
    with pytest.raises(WeightsError, match=r"w\.hdf5: attribute notes is larger than 16 MB; re-save the model"):
        Model.load(path)
