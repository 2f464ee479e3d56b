"""Saving and loading: HDF5 and NPZ round trips, no unpickling, broken or mismatched files,
and saves that fail without damaging what was already on disk."""
import json
import os

import h5py
import numpy as np
import pytest

import dpnn.hdf5read
import dpnn.io
from dpnn import Activation, BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, Model, WeightsError


def make_model(seed=0, units=3):
    model = Model([Conv2D(4, 3), BatchNorm2D(), Activation("relu"), MaxPool2D(2), Flatten(),
                   Dense(units)], seed=seed)
    model.build((1, 6, 6, 2))
    for v in model.layers[1].state.values():                        # running stats off their defaults
        v[...] = np.random.default_rng(seed).uniform(0.5, 1.5, v.shape)
    return model


def inputs(n=5):
    return np.random.default_rng(1).uniform(0, 1, (n, 6, 6, 2)).astype(np.float32)


def expected_keys(model):
    """nn's key format, <layer index>_<Class>_<array name>."""
    return {f"{i}_{type(layer).__name__}_{name}" for i, layer in enumerate(model.layers)
            for name in (*layer.params, *layer.state)}


@pytest.fixture
def saved(tmp_path):
    """A saved HDF5 model: (model, path)."""
    model = make_model()
    path = str(tmp_path / "weights.hdf5")
    model.save(path)
    return model, path


# -- round trips ----------------------------------------------------------------------------
def test_hdf5_round_trip_gives_identical_predictions(saved):
    model, path = saved
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == expected_keys(model)
        np.testing.assert_array_equal(f["0_Conv2D_W"][()], model.layers[0].params["W"])
    with open(path[:-5] + ".json") as f:
        arch = json.load(f)
    assert [entry["class"] for entry in arch] == [type(layer).__name__ for layer in model.layers]
    loaded = Model.load(path)
    assert loaded.built and loaded.input_shape[1:] == (6, 6, 2)
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded.predict(inputs()), model.predict(inputs()))


def test_npz_fallback_without_h5py(tmp_path, monkeypatch):
    monkeypatch.setattr(dpnn.io, "h5py", None)
    model = make_model()
    path = str(tmp_path / "weights.hdf5")
    model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["weights.hdf5.npz", "weights.json"]
    with np.load(path + ".npz", allow_pickle=False) as z:
        assert expected_keys(model) <= set(z.files)
    for name in (path, path + ".npz"):
        loaded = Model.load(name)
        np.testing.assert_array_equal(loaded.predict(inputs()), model.predict(inputs()))


def test_npz_file_loads_when_h5py_is_installed(tmp_path):
    model = make_model()
    path = str(tmp_path / "weights.npz")
    model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["weights.json", "weights.npz"]
    np.testing.assert_array_equal(Model.load(path).predict(inputs()), model.predict(inputs()))


def test_fused_activations_survive_save_and_load(tmp_path):
    model = Model([Conv2D(3, 3, activation="relu"), Flatten(), Dense(2, activation="relu")], seed=0)
    x = inputs()
    before = model.predict(x)
    assert (before == 0).any()                                       # the ReLU is really applied
    path = str(tmp_path / "fused.hdf5")
    model.save(path)
    loaded = Model.load(path)
    assert [getattr(layer, "activation", None) for layer in loaded.layers] == ["relu", None, "relu"]
    np.testing.assert_array_equal(loaded.predict(x), before)


def test_hdf5_file_without_h5py_says_how_to_install_it(saved, monkeypatch):
    monkeypatch.setattr(dpnn.hdf5read, "h5py", None)
    with pytest.raises(WeightsError, match="pip install h5py"):
        Model.load(saved[1])


def test_seed_file_without_input_shape_assigns_weights_on_build(saved):
    """A seed-format file has no input shape: weights wait for build(), as nn's README says."""
    model, path = saved
    with h5py.File(path, "a") as f:
        del f.attrs["dpnn_input_shape"]
    loaded = Model.load(path)
    assert not loaded.built
    loaded.build((1, 6, 6, 2))
    np.testing.assert_array_equal(loaded.predict(inputs()), model.predict(inputs()))


# -- loading never executes code --------------------------------------------------------------
class Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_npz_with_an_object_array_is_rejected_not_unpickled(saved, tmp_path):
    model, path = saved
    marker = str(tmp_path / "code-ran")
    arrays = {k: np.asarray(v) for k, v in dpnn.io.model_arrays(model).items()}
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(marker)
    npz = str(tmp_path / "weights.npz")
    with open(npz, "wb") as f:
        np.savez(f, **{**arrays, "0_Conv2D_W": evil})
    with pytest.raises(WeightsError, match=r"allow_pickle") as info:
        Model.load(npz)
    assert "weights.npz" in str(info.value)
    assert not os.path.exists(marker)


# -- missing, truncated, corrupt ---------------------------------------------------------------
def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file .*nothere\.hdf5.* not found"):
        dpnn.io.read_arrays(str(tmp_path / "nothere.hdf5"))
    (tmp_path / "nothere.json").write_text(json.dumps(make_model().get_config()))
    with pytest.raises(WeightsError, match=r"not found; train a model first"):
        Model.load(str(tmp_path / "nothere.hdf5"))


def test_missing_architecture_file(saved):
    model, path = saved
    os.remove(path[:-5] + ".json")                  # a file of today's save holds its architecture
    assert np.array_equal(Model.load(path).params, model.params)
    model.save_weights(path)                        # weights only, as files written before 2026-12
    with pytest.raises(WeightsError, match=r"architecture file .*weights\.json not found"):
        Model.load(path)


@pytest.mark.parametrize("fmt", ["hdf5", "npz"])
def test_truncated_weights_file(tmp_path, fmt):
    path = str(tmp_path / f"weights.{fmt}")
    make_model().save(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(WeightsError, match=r"corrupt or truncated.*re-create it with model\.save\(\)"):
        Model.load(path)


def test_corrupt_weights_files(saved):
    _, path = saved
    with open(path, "wb") as f:
        f.write(os.urandom(4096))
    with pytest.raises(WeightsError, match=r"neither an HDF5 nor an NPZ weights file"):
        Model.load(path)
    with open(path, "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)             # HDF5 signature, garbage after
    with pytest.raises(WeightsError, match=r"corrupt or truncated"):
        Model.load(path)
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04" + b"\x00" * 100)                    # zip signature, garbage after
    with pytest.raises(WeightsError, match=r"corrupt or truncated"):
        Model.load(path)


def test_architecture_that_is_not_json(saved):
    with open(saved[1][:-5] + ".json", "w") as f:
        f.write('[{"class": "Conv2D", "config": {"filters": 4,')
    with pytest.raises(WeightsError, match=r"weights\.json is not valid JSON"):
        Model.load(saved[1])


@pytest.mark.parametrize("arch, message", [
    ([], r"must hold a non-empty list"),
    ({"layers": "Dense"}, r"must hold a non-empty list"),
    ([["Dense", 3]], r"is not an object with a 'class' key"),
    ([{"class": "Dense", "config": {"units": 3, "kernel_regularizer": "l2"}}],
     r"bad config for layer Dense.*kernel_regularizer"),
])
def test_malformed_architecture(saved, arch, message):
    with open(saved[1][:-5] + ".json", "w") as f:
        json.dump(arch, f)
    with pytest.raises(WeightsError, match=message):
        Model.load(saved[1])


def test_architecture_naming_an_unknown_layer_class(saved):
    model, path = saved
    arch = model.get_config()
    arch[2] = {"class": "Swish", "config": {}}
    with open(path[:-5] + ".json", "w") as f:
        json.dump(arch, f)
    with pytest.raises(WeightsError, match=r"unknown layer class 'Swish'.*@dpnn\.register_layer") as info:
        Model.load(path)
    assert "Conv2D" in str(info.value)                           # lists the known classes


# -- weights that do not match the architecture ------------------------------------------------
def test_weights_of_the_wrong_shape(saved):
    _, path = saved
    with open(path[:-5] + ".json", "w") as f:
        json.dump(make_model(units=5).get_config(), f)             # Dense(5) instead of Dense(3)
    with pytest.raises(WeightsError, match=r"5_Dense_W have shape \(36, 3\) but the model needs "
                                           r"\(36, 5\); load weights saved from the same architecture"):
        Model.load(path)


def test_weights_missing_a_key(saved):
    _, path = saved
    with h5py.File(path, "a") as f:
        del f["1_BatchNorm2D_running_var"]
    with pytest.raises(WeightsError,
                       match=r"do not match the architecture: missing 1_BatchNorm2D_running_var"):
        Model.load(path)


def test_weights_with_an_unexpected_key(saved):
    model, path = saved
    with open(path[:-5] + ".json", "w") as f:
        json.dump([c for c in model.get_config() if c["class"] != "BatchNorm2D"], f)
    with pytest.raises(WeightsError, match=r"unexpected 1_BatchNorm2D_beta"):
        Model.load(path)


def test_load_does_not_change_a_model_on_mismatch(saved):
    """Every name and shape is checked before anything is copied."""
    model, path = saved
    other = Model([Conv2D(4, 3), BatchNorm2D(), Activation("relu"), MaxPool2D(2), Flatten(),
                   Dense(2)], seed=9).build((1, 6, 6, 2))
    before = other.params.copy()
    arrays, _ = dpnn.io.read_arrays(path)
    with pytest.raises(WeightsError, match="5_Dense_W"):
        dpnn.io.assign_weights(other, arrays)
    np.testing.assert_array_equal(other.params, before)


# -- a failed save leaves the existing file intact ---------------------------------------------
def snapshot(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_failed_hdf5_save_keeps_the_existing_file(saved, tmp_path, monkeypatch):
    model, path = saved
    before, params = snapshot(tmp_path), model.params.copy()
    real_create, calls = h5py.Group.create_dataset, []

    def failing_create(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return real_create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    model.params[:] += 1
    with pytest.raises(OSError, match="No space left"):
        model.save(path)
    assert snapshot(tmp_path) == before                          # no temp file left either
    monkeypatch.undo()
    np.testing.assert_array_equal(Model.load(path).params, params)


def test_failed_npz_save_keeps_the_existing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(dpnn.io, "h5py", None)
    model = make_model()
    path = str(tmp_path / "weights.npz")
    model.save(path)
    before = snapshot(tmp_path)

    def half_write(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", half_write)
    with pytest.raises(OSError, match="No space left"):
        make_model(seed=1).save(path)
    assert snapshot(tmp_path) == before


# -- weights only, extras, and the io/model boundary -------------------------------------------
@pytest.mark.parametrize("name", ["w.hdf5", "w.npz"])
def test_save_weights_and_load_weights_round_trip(tmp_path, name):
    model = make_model()
    written = model.save_weights(str(tmp_path / name))
    assert os.listdir(tmp_path) == [name] and written.endswith(name)     # no architecture JSON
    other = make_model(seed=5)
    assert other.load_weights(written) is other
    np.testing.assert_array_equal(other.predict(inputs()), model.predict(inputs()))


def test_load_weights_checks_the_architecture_and_needs_a_built_model(tmp_path):
    path = make_model().save_weights(str(tmp_path / "w.hdf5"))
    other = make_model(units=5)
    before = other.params.copy()
    with pytest.raises(WeightsError, match=r"5_Dense_W have shape \(36, 3\) but the model needs \(36, 5\)"):
        other.load_weights(path)
    np.testing.assert_array_equal(other.params, before)
    with pytest.raises(ValueError, match=r"build the model before load_weights"):
        Model([Flatten(), Dense(3)]).load_weights(path)


def test_extra_arrays_round_trip_beside_the_weights(tmp_path):
    model = make_model()
    extra = {"optimizer/t": np.array(7), "callbacks/best_params": model.params + 1}
    path = model.save(str(tmp_path / "ckpt.hdf5"), extra_arrays=extra)
    loaded = Model.load(path)
    assert sorted(loaded.extra_arrays) == sorted(extra)
    np.testing.assert_array_equal(loaded.extra_arrays["callbacks/best_params"], model.params + 1)


def test_list_arrays_reads_shapes_from_headers(saved):
    model, path = saved
    listing = dpnn.io.list_arrays(path)
    assert {k: shape for k, (shape, _) in listing.items()} == \
        {k: v.shape for k, v in dpnn.io.model_arrays(model).items()}


def test_io_never_imports_the_model():
    """Lower layers never import upper ones: io hands plain data to Model.load/save."""
    import ast
    tree = ast.parse(open(dpnn.io.__file__).read())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    assert not {m for m in modules if m and m.split(".")[-1] in ("model", "training", "engine")}
    assert "_pending_weights" not in open(dpnn.io.__file__).read()
