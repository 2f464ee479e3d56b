"""Frozen layers: Keras's ``trainable`` switch on a whole model, and where the frozen parameters
lie in the flat vector (what every engine's optimizer step leaves bitwise as it is).

A layer with ``trainable = False`` (:class:`dpnn.layers.base.Layer`) keeps its parameters and
their optimizer slots through every step: ``Model.apply_gradients`` in one process and the
workers' sharded update both read :meth:`Freezing.frozen_ranges` each step, so freezing or
unfreezing between steps takes effect at the next one.
"""
from __future__ import annotations

from .optimizers.base import check_flag


class Freezing:
    """The model side of ``trainable``: mixed into :class:`dpnn.Model` (``layers``, ``built``
    and ``param_layout`` are the model's)."""

    @property
    def trainable(self) -> bool:
        """False when every layer is frozen; setting it sets every layer's (Keras's
        ``model.trainable = False`` on a pretrained base)."""
        return any(getattr(layer, "trainable", True) for layer in self.layers)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        value = check_flag("trainable", value)
        for layer in self.layers:
            layer.trainable = value

    def frozen_ranges(self) -> tuple[tuple[int, int], ...]:
        """[start, stop) of the flat parameter vector held by frozen layers (``trainable = False``,
        also inside a container)."""
        if not self.built:
            return ()
        frozen = [layer.frozen_params() for layer in self.layers]
        return tuple((e.offset, e.offset + e.size) for e in self.param_layout.entries if e.name in frozen[e.layer])
