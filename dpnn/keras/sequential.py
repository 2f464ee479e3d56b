"""``keras.Sequential`` and ``keras.Input``: a dpnn Model built the way Keras builds one.

::

    import dpnn as keras                 # was: import keras
    from dpnn import layers              # was: from keras import layers

    model = keras.Sequential([keras.Input(shape=(28, 28, 1)),
                              layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
                              layers.MaxPooling2D(pool_size=(2, 2)),
                              layers.Flatten(), layers.Dropout(0.5),
                              layers.Dense(10, activation="softmax")])
    model.summary()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    model.fit(x, keras.utils.to_categorical(y, 10), batch_size=128, epochs=1, validation_split=0.1)

The layer aliases (``MaxPooling2D``...) live with the layers (:mod:`dpnn.layers`). Where dpnn's
defaults differ on purpose (Conv2D's padding is 'same', as in the nn framework; BatchNorm's
momentum 0.9), docs/keras.md says so.
"""
from __future__ import annotations

import numpy as np

from ..layers.base import Layer
from ..model import Model


class Input:
    """``keras.Input(shape=(28, 28, 1))``: the first item of a :class:`Sequential`, which then
    builds at once (``summary()`` works before ``fit``). ``shape`` has no batch axis."""

    def __init__(self, shape: tuple, batch_size: int | None = None, name: str | None = None) -> None:
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        if not shape or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
            raise ValueError(f"Input(shape=...) must be positive integers without the batch axis, "
                             f"such as (28, 28, 1); got {shape!r}")
        self.shape, self.name = tuple(int(d) for d in shape), name

    def __repr__(self) -> str:
        return f"Input(shape={self.shape})"


class Sequential(Model):
    """A :class:`dpnn.Model` that also takes ``Input(shape=...)`` as its first item (then it is
    built for that shape at once) and a ``name``, as Keras's ``Sequential`` does."""

    def __init__(self, layers: list | None = None, name: str | None = None, seed: int | None = None) -> None:
        self.input_spec: Input | None = None
        self.name = name
        super().__init__(None, seed=seed)
        for item in layers or []:
            self.add(item)

    def add(self, layer) -> "Sequential":
        """Append a layer, or take an ``Input`` first; with an Input the model is (re)built."""
        if isinstance(layer, Input):
            if self.layers or self.input_spec is not None:
                raise ValueError("keras.Input(shape=...) must be the first item of a Sequential")
            self.input_spec = layer
            return self
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a dpnn Layer or Input, got {type(layer).__name__}")
        shape = getattr(layer, "declared_input_shape", None)
        if shape is not None and not self.layers and self.input_spec is None:
            self.input_spec = Input(shape)     # Keras's Dense(64, input_shape=(784,)) on the first layer
        if self.built and self.input_spec is not None and self.loss is None:
            self.built = False             # built from the Input only: build again with the new layer
        super().add(layer)
        if self.input_spec is not None:
            self.build((1, *self.input_spec.shape))
        return self
