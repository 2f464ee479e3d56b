"""Saving and loading models: architecture JSON + weights in HDF5 (NPZ when h5py is missing).

Format (the seed's): ``weights.json`` is a list of ``{"class": ..., "config": {...}}``;
the weights file holds one dataset per array named ``<layer index>_<Class>_<name>``
(``7_Dense_W``, ``2_BatchNorm2D_running_mean``). dpnn adds attributes ``dpnn_input_shape``
and ``dpnn_metadata`` (JSON text). Nothing here unpickles: HDF5 holds plain arrays and
NPZ files are read with ``allow_pickle=False``. Writes go to a temporary file that is
renamed over the target, so an existing file is never left half-written.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import WeightsError
from .layers.base import layer_from_config

try:
    import h5py
except ImportError:          # the NPZ fallback keeps the library usable without h5py
    h5py = None


def architecture_path(path: str) -> str:
    """weights.hdf5 -> weights.json (weights.hdf5.npz -> weights.json too)."""
    base = path[:-4] if path.endswith(".npz") else path
    return os.path.splitext(base)[0] + ".json"


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_arrays(path: str, arrays: dict[str, np.ndarray], attrs: dict[str, str]) -> str:
    """Atomically write named arrays and string attributes; returns the path actually written."""
    if h5py is None or path.endswith(".npz"):
        path = path if path.endswith(".npz") else path + ".npz"

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, **{f"__attr__{k}": np.array(v) for k, v in attrs.items()})
    else:
        def write(tmp):
            with h5py.File(tmp, "w") as f:
                for k, v in arrays.items():
                    f.create_dataset(k, data=v)
                for k, v in attrs.items():
                    f.attrs[k] = v
    atomic_write(path, write)
    return path


def read_arrays(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a file written by :func:`write_arrays` (HDF5 or NPZ, detected by content)."""
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path = path + ".npz"
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path!r} not found; train a model first "
                           "(python -m launch.train --out PATH) or check the path")
    with open(path, "rb") as f:
        head = f.read(8)
    try:
        if head.startswith(b"\x89HDF"):
            if h5py is None:
                raise WeightsError(f"{path} is HDF5 but h5py is not installed: pip install h5py")
            with h5py.File(path, "r") as f:
                arrays = {k: np.array(f[k]) for k in f.keys() if isinstance(f[k], h5py.Dataset)}
                for g in (k for k in f.keys() if isinstance(f[k], h5py.Group)):
                    arrays.update({f"{g}/{k}": np.array(f[g][k]) for k in f[g].keys()})
                attrs = {k: str(v) for k, v in f.attrs.items()}
            return arrays, attrs
        if head.startswith(b"PK"):
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            attrs = {k[8:]: str(v) for k, v in data.items() if k.startswith("__attr__")}
            return {k: v for k, v in data.items() if not k.startswith("__attr__")}, attrs
    except WeightsError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise WeightsError(f"{path} contains pickled Python objects; dpnn never unpickles "
                               "(allow_pickle=False: loading must not run code); save weights with model.save()") from None
        raise WeightsError(f"weights file {path} is corrupt or truncated ({e}); "
                           "re-create it with model.save()") from None
    except (OSError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise WeightsError(f"weights file {path} is corrupt or truncated ({e}); "
                           "re-create it with model.save()") from None
    raise WeightsError(f"{path} is neither an HDF5 nor an NPZ weights file; "
                       "pass the file written by model.save()")


def weight_key(index: int, layer, name: str) -> str:
    return f"{index}_{type(layer).__name__}_{name}"


def model_arrays(model) -> dict[str, np.ndarray]:
    """Every parameter and state array of a built model under its seed-format key."""
    out = {}
    for i, layer in enumerate(model.layers):
        for name, arr in (*layer.params.items(), *layer.state.items()):
            out[weight_key(i, layer, name)] = np.asarray(arr)
    return out


def assign_weights(model, weights: dict[str, np.ndarray]) -> None:
    """Copy saved arrays into a built model, after checking every name and shape first."""
    expected = model_arrays(model)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise WeightsError("the weights do not match the architecture: "
                           + (f"missing {', '.join(missing[:5])}" if missing else "")
                           + ("; " if missing and extra else "")
                           + (f"unexpected {', '.join(extra[:5])}" if extra else "")
                           + "; load weights saved from the same architecture")
    for k, target in expected.items():
        if weights[k].shape != target.shape:
            raise WeightsError(f"weights {k} have shape {weights[k].shape} but the model needs "
                               f"{target.shape}; load weights saved from the same architecture")
    for k, target in expected.items():
        target[...] = weights[k]


def save_model(model, path: str, extra_arrays: dict[str, np.ndarray] | None = None) -> str:
    """Write the weights file and the architecture JSON beside it; returns the weights path."""
    if not model.built:
        raise ValueError("the model is not built yet: call build(input_shape) or fit() before save()")
    attrs = {"dpnn_format": "1", "dpnn_input_shape": json.dumps(list(model.input_shape[1:])),
             "dpnn_metadata": json.dumps(model.metadata)}
    arrays = {**model_arrays(model), **(extra_arrays or {})}
    arch = json.dumps(model.get_config(), indent=2) + "\n"
    arch_path = architecture_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(arch_path)), exist_ok=True)
    # The JSON goes to a temporary file first, so a failure on either file leaves the old
    # pair untouched; the two renames at the end are the only window of mismatch.
    fd, arch_tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(arch_path)),
                                    prefix=".tmp-", suffix=os.path.basename(arch_path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(arch)
        written = write_arrays(path, arrays, attrs)
        os.replace(arch_tmp, arch_path)
    finally:
        if os.path.exists(arch_tmp):
            os.unlink(arch_tmp)
    return written


def read_architecture_file(arch_path: str) -> list[dict]:
    """The layer list of an architecture JSON (seed format: a list of {"class", "config"})."""
    try:
        with open(arch_path) as f:
            arch = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"architecture file {arch_path} is not valid JSON ({e})") from None
    if isinstance(arch, dict):
        arch = arch.get("layers")
    if not isinstance(arch, list) or not arch:
        raise WeightsError(f"{arch_path} must hold a non-empty list of {{'class', 'config'}} objects")
    return arch


def read_architecture(path: str) -> list[dict]:
    """The architecture saved beside the weights file ``path``."""
    arch_path = architecture_path(path)
    if not os.path.isfile(arch_path):
        raise WeightsError(f"architecture file {arch_path} not found beside {path}; "
                           "model.save() writes both, keep them together")
    return read_architecture_file(arch_path)


def load_model(path: str):
    """Rebuild a Model from ``path`` and its architecture JSON; built when the input shape is known."""
    from .model import Model
    arch = read_architecture(path)
    arrays, attrs = read_arrays(path)
    try:
        layers = [layer_from_config(entry) for entry in arch]
    except ValueError as e:
        raise WeightsError(f"{architecture_path(path)}: {e}") from None
    model = Model(layers)
    try:
        model.metadata = json.loads(attrs.get("dpnn_metadata", "{}"))
        shape = json.loads(attrs["dpnn_input_shape"]) if "dpnn_input_shape" in attrs else None
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: corrupt dpnn metadata attribute ({e}); re-save the model") from None
    model.extra_arrays = {k: v for k, v in arrays.items() if "/" in k}
    model._pending_weights = {k: v for k, v in arrays.items() if "/" not in k}
    if shape is not None:
        try:
            model.build((1, *shape))
        except ValueError as e:
            raise WeightsError(f"{path}: {e}") from None
    return model
