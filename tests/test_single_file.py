"""One file is a whole model (issue 21, point 6): the architecture and metadata inside the HDF5
(or NPZ), read without the JSON, checked like the JSON, never run as code; class names."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dpnn import Model, WeightsError
from dpnn.hdf5read import h5py

from conftest import cnn


@pytest.mark.parametrize("suffix", [".hdf5", ".npz"])
def test_the_weights_file_alone_loads(tmp_path, suffix):
    if suffix == ".hdf5" and h5py is None:
        pytest.skip("h5py not installed")
    model = cnn(classes=3)
    model.class_names = ["cat", "dog", "emu"]
    path = model.save(str(tmp_path / f"m{suffix}"))
    alone = tmp_path / "copy" / f"elsewhere{suffix}"
    alone.parent.mkdir()
    shutil.copy(path, alone)                               # the file alone, no JSON beside it
    again = Model.load(str(alone))
    x = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert again.class_names == ["cat", "dog", "emu"] and again.get_config() == model.get_config()


def test_an_embedded_architecture_is_checked_like_the_json(tmp_path):
    if h5py is None:
        pytest.skip("h5py not installed")
    path = cnn(classes=3).save(str(tmp_path / "m.hdf5"))
    (tmp_path / "m.json").unlink()
    with h5py.File(path, "r+") as f:
        arch = json.loads(f.attrs["dpnn_architecture"])
        arch[0] = {"class": "os.system", "config": {"command": "touch pwned"}}
        f.attrs["dpnn_architecture"] = json.dumps(arch)
    with pytest.raises(WeightsError, match="unknown layer class 'os.system'"):
        Model.load(path)
    assert not (tmp_path / "pwned").exists()
    with h5py.File(path, "r+") as f:
        f.attrs["dpnn_architecture"] = "[" * 100_000         # deep JSON: bounded, one clear error
    with pytest.raises(WeightsError, match="dpnn_architecture"):
        Model.load(path)


def test_class_names_default_to_none():
    model = cnn(classes=3)
    assert model.class_names is None
    model.class_names = range(3)
    assert model.metadata["class_names"] == ["0", "1", "2"]
