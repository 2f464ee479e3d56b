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

from dpnn import BatchNorm2D, Callback, Conv2D, Dense, Dropout, Flatten, Model

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
                         ids=["8 micro-shards in process", "2 workers", "2 workers, 8 micro-shards"])
def test_batchnorm_statistics_of_uneven_shards_are_weighted_per_sample(bn, options):
    """Shards of 2, 2, 2, 2, 2, 1, 1, 1 (13 in 8 micro-shards), 7 and 6 (13 on 2 workers), 2 and 1
    (the last batch): weighting each shard alike moves the running mean by ~0.07."""
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
