"""Model files: what :meth:`dpnn.Model.save`, ``load``, ``save_weights`` and ``load_weights`` do.

The file format, and how reading it stays safe (no code run, arrays checked before they are
read), are :mod:`dpnn.io`'s; here a model is taken apart into it and put back together.
"""
from __future__ import annotations

import os

import numpy as np

from . import io
from .errors import WeightsError
from .layers.base import layer_from_config
from .limits import check_model_memory, dry_build


def save(model, path: str, extra_arrays: dict[str, np.ndarray] | None = None) -> str:
    """Write ``model`` to ``path`` (and its JSON beside it); returns the weights path written."""
    if not model.built:
        raise ValueError("the model is not built yet: call build(input_shape) or fit() before save()")
    arrays = {**io.model_arrays(model), **(extra_arrays or {})}
    config = model.get_config()
    attrs = io.model_attributes(model.input_shape[1:], model.metadata, config)
    return io.write_model(path, config, arrays, attrs)


def load(cls, path: str):
    """A ``cls`` (a Model class) read from ``path``: architecture, metadata and weights."""
    architecture, input_shape, metadata = io.read_model_info(path)
    try:
        model = cls([layer_from_config(entry) for entry in architecture])
    except ValueError as e:
        source = io.architecture_path(path) if os.path.exists(io.architecture_path(path)) else path
        raise WeightsError(f"{source}: {e}") from None
    model.metadata = metadata
    if input_shape is None:
        io.list_arrays(path)            # a corrupt or pickled file is refused now, not on build
        model._pending_weights = path
        return model
    try:
        check_model_memory(model.layers, (1, *input_shape))          # what build checks first
        check_file_holds(path, model.layers, (1, *input_shape))     # before any layer allocates
        model.build((1, *input_shape))
    except ValueError as e:
        raise WeightsError(str(e) if str(e).startswith(f"{path}:") else f"{path}: {e}") from None
    return load_weights(model, path)


def check_file_holds(path: str, layers: list, input_shape: tuple) -> None:
    """The arrays in ``path`` are those the layers will allocate, from the file's headers and a
    build that records shapes (:func:`dpnn.limits.dry_build`): a 1 KB file whose architecture
    says ``Dense(200000)`` is refused before 2 GB are initialised. Arrays are checked by name
    and shape; a container layer's (``Residual``), which it names itself, by their total size."""
    listing, expected, totals = io.list_arrays(path), {}, {}
    shape = input_shape
    for i, layer in enumerate(layers):
        arrays, shape = dry_build(layer, shape)
        if any("/" in name for name in arrays):             # a container: names of its own
            totals[io.weight_key(i, layer, "")] = (layer, sum(_size(s) for s in arrays.values()))
            expected.update({k: v for k, (v, _) in listing.items() if k.startswith(io.weight_key(i, layer, ""))})
        else:
            expected.update({io.weight_key(i, layer, name): s for name, s in arrays.items()})
    io.check_arrays(path, listing, expected, extra_limit=sum(_size(s) for s in expected.values()))
    for prefix, (layer, need) in totals.items():
        have = sum(_size(s) for k, (s, _) in listing.items() if k.startswith(prefix) and "/" not in k)
        if need != have:
            raise WeightsError(f"{path}: {layer!r} has {need:,} weights but the file holds {have:,} "
                               "for it; load weights saved from the same architecture")


def _size(shape) -> int:
    return int(np.prod(shape, dtype=object))


def save_weights(model, path: str) -> str:
    """Only the weights (and input shape, metadata): ``load_weights`` reads them into a built model."""
    if not model.built:
        raise ValueError("the model is not built yet: call build(input_shape) or fit() first")
    attrs = io.model_attributes(model.input_shape[1:], model.metadata)
    return io.write_arrays(path, io.model_arrays(model), attrs)


def load_weights(model, path: str):
    """Copy the weights in ``path`` into the built ``model``; every array is checked by name,
    shape and dtype before any is read; arrays under a group go to ``model.extra_arrays``."""
    if not model.built:
        raise ValueError("build the model before load_weights (model.build((1, 28, 28, 1))), "
                         "or load model and weights together with Model.load(path)")
    expected = {k: v.shape for k, v in io.model_arrays(model).items()}
    limit = max(model.params.size, model.state.size)
    arrays, _ = io.read_arrays(path, expected, extra_limit=limit)
    model.extra_arrays = {k: v for k, v in arrays.items() if "/" in k}
    io.assign_weights(model, {k: v for k, v in arrays.items() if "/" not in k}, path)
    return model
