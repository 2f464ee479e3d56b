"""Model files: architecture JSON + weights in HDF5 (NPZ when h5py is missing), as plain data.

Format (the nn framework's): ``weights.json`` is a list of ``{"class": ..., "config": {...}}``;
the weights file holds one dataset per array named ``<layer index>_<Class>_<name>``
(``7_Dense_W``, ``2_BatchNorm2D_running_mean``). dpnn adds attributes ``dpnn_input_shape``,
``dpnn_metadata`` and ``dpnn_architecture`` (the JSON's text, so that the weights file alone is a
whole model), and checkpoints add arrays in groups (``optimizer/t``). The JSON beside the
file is read when it exists (``save`` writes both); without it, the attribute. A file without
the attribute (nn's, and dpnn's before 2026-12) needs its JSON.

This module reads and writes layer configs, named arrays and attributes; it never imports
the model, which builds itself from them (:meth:`dpnn.Model.load`, :meth:`dpnn.Model.save`).
Reading is hostile-file safe: every array's name, shape and dtype is checked from the
file's headers before any data is read, JSON is bounded in size and depth, and nothing is
unpickled. Writing goes to a temporary file renamed over the target, so a failed write
(full disk...) leaves the old file intact and raises one :class:`dpnn.errors.OutputError`.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Callable

import numpy as np

from .atomic import atomic_write, check_output_path, commit, temp_beside
from .errors import WeightsError
from .files import input_problem, open_regular
from .hdf5read import MAX_ATTRIBUTE_BYTES, Listing, h5py, read_hdf5
from .limits import MAX_JSON_BYTES, check_allocation, check_json_text, format_bytes

FORMAT_VERSION = "1"
MAX_INPUT_RANK = 4                 # (H, W, C) images or (D,) vectors; batch axis not stored


# -- writing ---------------------------------------------------------------------------------
def weights_path(path: str) -> str:
    """The file :func:`write_arrays` really writes: ``path``, or ``path.npz`` without h5py."""
    return path if path.endswith(".npz") or h5py is not None else path + ".npz"


def _array_writer(path: str, arrays: dict[str, np.ndarray], attrs: dict[str, str]):
    if path.endswith(".npz"):
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, **{f"__attr__{k}": np.array(v) for k, v in attrs.items()})
    else:
        def write(tmp):
            # HDF5 is built in memory, then written with plain file I/O: HDF5 writing to disk
            # itself turns a full disk (ENOSPC, EFBIG) into RuntimeErrors raised from
            # destructors, or a crash, never one OSError naming the file.
            image = io.BytesIO()
            with h5py.File(image, "w") as f:
                for k, v in arrays.items():
                    f.create_dataset(k, data=v)
                for k, v in attrs.items():
                    f.attrs[k] = v
            write_bytes(tmp, image.getbuffer())
    return write


def write_bytes(path: str, data) -> None:
    """``data`` into a new file ``path`` (an OSError such as ENOSPC propagates)."""
    with open(path, "wb") as out:
        out.write(data)


def write_arrays(path: str, arrays: dict[str, np.ndarray], attrs: dict[str, str]) -> str:
    """Atomically write named arrays and string attributes; returns the path actually written."""
    path = weights_path(path)
    atomic_write(path, _array_writer(path, arrays, attrs))
    return path


def model_attributes(input_shape: tuple, metadata: dict, architecture: list[dict] | None = None) -> dict[str, str]:
    """The attributes dpnn stores beside the arrays; ``input_shape`` has no batch axis."""
    attrs = {"dpnn_format": FORMAT_VERSION, "dpnn_input_shape": json.dumps(list(input_shape)),
             "dpnn_metadata": json.dumps(metadata)}
    if architecture is not None:
        attrs["dpnn_architecture"] = json.dumps(architecture)
    return attrs


def write_model(path: str, architecture: list[dict], arrays: dict[str, np.ndarray],
                attrs: dict[str, str]) -> str:
    """Write the weights file and the architecture JSON beside it; returns the weights path.

    Both go to temporary files first, so a failure on either leaves the old pair untouched;
    the two renames at the end are the only window of mismatch.
    """
    path, arch_path = weights_path(path), architecture_path(path)
    check_output_path(arch_path)
    check_output_path(path)
    text = json.dumps(architecture, indent=2) + "\n"
    with temp_beside(arch_path) as arch_tmp, temp_beside(path) as tmp:
        with open(arch_tmp, "w") as f:
            f.write(text)
        _array_writer(path, arrays, attrs)(tmp)
        commit(tmp, path)
        commit(arch_tmp, arch_path)
    return path


def save_model(model, path: str, extra_arrays: dict[str, np.ndarray] | None = None) -> str:
    """``model.save(path, extra_arrays)``: kept for callers of the old io-level function."""
    return model.save(path, extra_arrays)


# -- reading: architecture and attributes ---------------------------------------------------
def architecture_path(path: str) -> str:
    """weights.hdf5 -> weights.json (weights.hdf5.npz -> weights.json too)."""
    base = path[:-4] if path.endswith(".npz") else path
    return os.path.splitext(base)[0] + ".json"


def _load_json(text: str, name: str, max_bytes: int):
    try:
        check_json_text(text, name, max_bytes)
    except ValueError as e:
        raise WeightsError(str(e)) from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:   # JSONDecodeError; a 5,000-digit integer
        raise WeightsError(f"{name} is not valid JSON ({e}); pass what model.save() wrote") from None


def _layer_list(arch, name: str) -> list[dict]:
    if isinstance(arch, dict):
        arch = arch.get("layers")
    if not isinstance(arch, list) or not arch:
        raise WeightsError(f"{name} must hold a non-empty list of {{'class', 'config'}} objects")
    return arch


def read_architecture_file(arch_path: str) -> list[dict]:
    """The layer list of an architecture JSON (nn's format: a list of {"class", "config"})."""
    problem = input_problem(arch_path)
    if problem is not None:
        raise WeightsError(f"architecture file {arch_path} {problem}; pass the JSON file model.save() wrote")
    if os.path.getsize(arch_path) > MAX_JSON_BYTES:
        raise WeightsError(f"architecture file {arch_path} is {format_bytes(os.path.getsize(arch_path))}, "
                           f"more than the {format_bytes(MAX_JSON_BYTES)} an architecture can need; "
                           "pass the JSON file model.save() wrote")
    try:
        with open_regular(arch_path) as f:
            text = f.read(MAX_JSON_BYTES + 1).decode("utf-8")
    except UnicodeDecodeError as e:
        raise WeightsError(f"architecture file {arch_path} is not valid JSON ({e})") from None
    except OSError as e:
        raise WeightsError(f"architecture file {arch_path} {e.strerror}") from None
    return _layer_list(_load_json(text, f"architecture file {arch_path}", MAX_JSON_BYTES), arch_path)


def read_architecture(path: str) -> list[dict]:
    """The architecture saved beside the weights file ``path``."""
    arch_path = architecture_path(path)
    if input_problem(arch_path) == "not found":
        raise WeightsError(f"architecture file {arch_path} not found beside {path}; "
                           "model.save() writes both, keep them together")
    return read_architecture_file(arch_path)


def _input_shape(path: str, attrs: dict[str, str]) -> tuple[int, ...] | None:
    if "dpnn_input_shape" not in attrs:
        return None                      # a file in nn's format: the shape comes with build()
    shape = _load_json(attrs["dpnn_input_shape"], f"{path}: dpnn_input_shape", MAX_JSON_BYTES)
    if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_INPUT_RANK
            or not all(type(d) is int and d > 0 for d in shape)):
        raise WeightsError(f"{path}: dpnn_input_shape {attrs['dpnn_input_shape'][:80]} is not a "
                           f"list of 1 to {MAX_INPUT_RANK} positive integers; re-save the model")
    return tuple(shape)


def _metadata(path: str, attrs: dict[str, str]) -> dict:
    metadata = _load_json(attrs.get("dpnn_metadata", "{}"), f"{path}: dpnn_metadata",
                          MAX_ATTRIBUTE_BYTES)
    if not isinstance(metadata, dict):
        raise WeightsError(f"{path}: the dpnn_metadata attribute is a JSON "
                           f"{type(metadata).__name__}, not an object; re-save the model")
    return metadata


def read_model_info(path: str) -> tuple[list[dict], tuple[int, ...] | None, dict]:
    """(architecture, input shape without batch axis or None, metadata) of a saved model.

    Reads the weights file's attributes only, no arrays, and the JSON beside it when there is
    one (else the file's ``dpnn_architecture``).
    """
    _, _, attrs = _read(path, None, with_arrays=False)
    if "dpnn_architecture" in attrs and input_problem(architecture_path(path)) == "not found":
        name = f"{path}: dpnn_architecture"
        architecture = _layer_list(_load_json(attrs["dpnn_architecture"], name, MAX_JSON_BYTES), name)
    else:
        architecture = read_architecture(path)
    return architecture, _input_shape(path, attrs), _metadata(path, attrs)


# -- reading: arrays, checked before they are read -------------------------------------------
def _resolve(path: str) -> str:
    if not os.path.lexists(path) and os.path.lexists(path + ".npz"):
        path = path + ".npz"
    problem = input_problem(path)
    if problem == "not found":
        raise WeightsError(f"weights file {path!r} not found; train a model first "
                           "(dpnn train --out PATH) or check the path")
    if problem is not None:
        raise WeightsError(f"weights file {path} {problem}; pass the file model.save() wrote")
    return path


def _object_kind(dtype: np.dtype) -> str:
    """What an array of dtype object holds: HDF5 text or references, else pickled objects."""
    if h5py is not None and h5py.check_string_dtype(dtype) is not None:
        return "text (an HDF5 string dataset)"
    if h5py is not None and h5py.check_ref_dtype(dtype) is not None:
        return "HDF5 object references"
    return "pickled Python objects (dpnn reads with allow_pickle=False: loading must not run code)"


def _check_dtypes(path: str, listing: Listing) -> None:
    for name, (_, dtype) in listing.items():
        if dtype.hasobject:
            raise WeightsError(f"{path}: array {name} holds {_object_kind(dtype)}, not numbers; "
                               "save weights with model.save()")
        if dtype.kind not in "fiub":
            raise WeightsError(f"{path}: array {name} has dtype {dtype}, not numbers; "
                               "load a file written by model.save()")


def check_arrays(path: str, listing: Listing, expected: dict[str, tuple] | None,
                 extra_limit: int = 0) -> None:
    """Refuse arrays that do not match ``expected`` ({name: shape}) before any is read.

    Names with a '/' (a checkpoint's optimizer state) are extras: numeric, at most
    ``extra_limit`` values of 8 bytes each. Without ``expected``, only the total size is bounded.
    """
    _check_dtypes(path, listing)
    sizes = {k: int(np.prod(shape, dtype=object)) * dtype.itemsize for k, (shape, dtype) in listing.items()}
    if expected is None:
        check_allocation(sum(sizes.values()), f"{path}: its arrays", "load a smaller file",
                         error=WeightsError)
        return
    _check_names(path, {k for k in listing if "/" not in k}, set(expected))
    for k, want in expected.items():
        shape, dtype = listing[k]
        if tuple(shape) != tuple(want):
            raise WeightsError(f"{path}: weights {k} have shape {tuple(shape)} but the model needs "
                               f"{tuple(want)}; load weights saved from the same architecture")
        if dtype.kind != "f":
            raise WeightsError(f"{path}: weights {k} have dtype {dtype}, not floating point; "
                               "load weights saved by model.save()")
    for k in (k for k in listing if "/" in k):
        if sizes[k] > max(extra_limit, 1) * 8:
            raise WeightsError(f"{path}: array {k} declares shape {listing[k][0]} "
                               f"({format_bytes(sizes[k])}), more than this model's state can "
                               "hold; the file is corrupt or not from this model")


def _check_names(path: str, found: set[str], expected: set[str]) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        raise WeightsError(f"{path}: the weights do not match the architecture: "
                           + (f"missing {', '.join(missing[:5])}" if missing else "")
                           + ("; " if missing and extra else "")
                           + (f"unexpected {', '.join(extra[:5])}" if extra else "")
                           + "; load weights saved from the same architecture")


def _npy_header(path: str, z: zipfile.ZipFile, member: str) -> tuple[tuple, np.dtype]:
    if not member.endswith(".npy"):
        raise WeightsError(f"{path}: member {member} is not a .npy array; "
                           "pass the file written by model.save()")
    with z.open(member) as m:
        version = np.lib.format.read_magic(m)
        if version not in ((1, 0), (2, 0)):
            raise WeightsError(f"{path}: member {member} has .npy format {version}, "
                               "which dpnn does not read; re-save the model")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(m)
    return shape, dtype


def _npz_attrs(path: str, headers: dict, read: Callable[[str], np.ndarray]) -> dict[str, str]:
    """The ``__attr__<name>`` string members, each bounded before it is read."""
    attrs = {}
    for k in (k for k in headers if k.startswith("__attr__")):
        shape, dtype = headers[k]
        if dtype.kind not in "US" or int(np.prod(shape, dtype=object)) * dtype.itemsize > MAX_ATTRIBUTE_BYTES:
            raise WeightsError(f"{path}: attribute {k[8:]} is not a string of at most "
                               f"{format_bytes(MAX_ATTRIBUTE_BYTES)}; re-save the model")
        attrs[k[8:]] = str(read(k))
    return attrs


def _read_npz(path: str, check: Callable[[Listing], None], with_arrays: bool):
    with zipfile.ZipFile(path) as z:
        headers = {name[:-4]: _npy_header(path, z, name) for name in z.namelist()}

        def read(name):
            with z.open(name + ".npy") as m:
                return np.lib.format.read_array(m, allow_pickle=False)
        attrs = _npz_attrs(path, headers, read)
        listing = {k: v for k, v in headers.items() if not k.startswith("__attr__")}
        check(listing)
        arrays = {k: read(k) for k in listing} if with_arrays else {}
    return listing, arrays, attrs


def _read(path: str, check: Callable[[Listing], None] | None, with_arrays: bool):
    """(listing, arrays, attrs) of an HDF5 or NPZ file (told apart by content)."""
    path = _resolve(path)
    check = check or (lambda listing: _check_dtypes(path, listing))
    try:
        with open_regular(path) as f:
            head = f.read(8)
    except OSError as e:
        raise WeightsError(f"weights file {path} {e.strerror}; pass the file model.save() wrote") from None
    reader = read_hdf5 if head.startswith(b"\x89HDF") else _read_npz if head.startswith(b"PK") else None
    if reader is None:
        raise WeightsError(f"{path} is neither an HDF5 nor an NPZ weights file; "
                           "pass the file written by model.save()")
    try:
        return reader(path, check, with_arrays)
    except WeightsError:
        raise
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise WeightsError(f"weights file {path} is corrupt or truncated ({e}); "
                           "re-create it with model.save()") from None


def list_arrays(path: str) -> Listing:
    """{name: (shape, dtype)} of every array in ``path``, from headers only; refuses pickles."""
    return _read(path, None, with_arrays=False)[0]


def read_arrays(path: str, expected: dict[str, tuple] | None = None,
                extra_limit: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(arrays, attributes) of a file written by :func:`write_arrays` (HDF5 or NPZ).

    Every array is checked by :func:`check_arrays` against ``expected`` ({name: shape})
    from the file's headers before any is read.
    """
    _, arrays, attrs = _read(path, lambda listing: check_arrays(path, listing, expected, extra_limit),
                             with_arrays=True)
    check_finite(_resolve(path), arrays)
    return arrays, attrs


def check_finite(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Refuse weights holding NaN or infinity: every prediction from them would be NaN."""
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(a.size - np.isfinite(a).sum())
            raise WeightsError(f"{path}: {name} holds {bad} NaN or infinite value{'s' * (bad > 1)} "
                               f"(of {a.size}); the weights are damaged (did training diverge?): "
                               "load an earlier checkpoint or train again")


# -- nn's array names ------------------------------------------------------------------------
def weight_key(index: int, layer, name: str) -> str:
    return f"{index}_{type(layer).__name__}_{name}"


def model_arrays(model) -> dict[str, np.ndarray]:
    """Every parameter and state array of a built model (anything with ``layers``) by key."""
    out = {}
    for i, layer in enumerate(model.layers):
        for name, arr in (*layer.params.items(), *layer.state.items()):
            out[weight_key(i, layer, name)] = np.asarray(arr)
    return out


def assign_weights(model, weights: dict[str, np.ndarray], path: str = "the weights") -> None:
    """Copy saved arrays into a built model, after checking every name and shape first."""
    expected = model_arrays(model)
    listing = {k: (np.shape(v), np.asarray(v).dtype) for k, v in weights.items()}
    check_arrays(path, listing, {k: v.shape for k, v in expected.items()})
    for k, target in expected.items():
        target[...] = weights[k]
