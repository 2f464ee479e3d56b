"""One flat buffer, many named views: how a model's parameters, gradients and state are stored.

Every layer's ``W``/``b`` (and BatchNorm's running statistics) is a view into one
contiguous float32 vector. Copying all parameters, putting them in shared memory,
all-reducing the gradients or taking an optimizer step is then one operation on one array.
A container (``dpnn.Residual``) needs nothing special here: its ``params``/``grads``/``state`` are
its children's arrays under prefixed names, so binding the container binds its children.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALIGN = 16      # floats: every view starts on a 64-byte boundary (cache line, SIMD loads)


@dataclass(frozen=True)
class Entry:
    layer: int          # index of the layer in the model
    name: str           # key in the layer's dict ('W', 'b', 'running_mean', ...)
    shape: tuple
    offset: int         # first element in the flat buffer
    size: int


class FlatLayout:
    """Where each array of each layer lives inside a flat vector of ``size`` floats."""

    def __init__(self, layers, attr: str) -> None:
        self.attr, self.entries, offset = attr, [], 0
        for i, layer in enumerate(layers):
            for name, arr in getattr(layer, attr).items():
                self.entries.append(Entry(i, name, tuple(arr.shape), offset, int(arr.size)))
                offset += -(-int(arr.size) // ALIGN) * ALIGN
        self.size = offset

    def views(self, flat: np.ndarray):
        """Yield (entry, view) for every array: each view is a reshaped slice of ``flat``."""
        for e in self.entries:
            yield e, flat[e.offset:e.offset + e.size].reshape(e.shape)

    def bind(self, layers, flat: np.ndarray, attr: str | None = None, copy: bool = True) -> None:
        """Point each layer's arrays at their slice of ``flat`` (copying current values in first)."""
        assert flat.shape == (self.size,), (flat.shape, self.size)
        attr = attr or self.attr
        for e, view in self.views(flat):
            arrays = getattr(layers[e.layer], attr)
            if copy and e.name in arrays and arrays[e.name] is not view:
                view[...] = arrays[e.name]
            arrays[e.name] = view

    def sync_back(self, layers, flat: np.ndarray, attr: str | None = None) -> None:
        """Copy arrays a layer rebound (instead of writing in place) back into ``flat``."""
        attr = attr or self.attr
        for e, view in self.views(flat):
            arrays = getattr(layers[e.layer], attr)
            if arrays[e.name] is not view:
                view[...] = arrays[e.name]
                arrays[e.name] = view
