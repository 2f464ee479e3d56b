"""``keras.models``: ``Sequential``, ``Model`` and ``load_model``."""
from __future__ import annotations

from ..model import Model
from .sequential import Sequential  # noqa: F401


def load_model(filepath, compile: bool = True) -> Model:
    """A model saved by ``model.save(path)`` (Keras's ``keras.models.load_model``): architecture
    and weights from the one file; every problem is one :class:`dpnn.WeightsError`. ``compile``
    is accepted for Keras's signature: the optimizer state is not in a saved model (a
    checkpoint holds it), so compile the model before training it further."""
    return Model.load(str(filepath))
