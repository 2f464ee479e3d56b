"""Keras's names, so that a keras.io ``Sequential`` script runs with its imports changed::

    import dpnn.keras as keras           # was: import keras
    from dpnn.keras import layers        # was: from keras import layers

``keras.layers``, ``keras.optimizers``, ``keras.callbacks``, ``keras.losses``, ``keras.utils``,
``keras.datasets`` and ``keras.models`` are here; callbacks and losses re-export dpnn's own
packages, so a name added there appears here too. ``import dpnn as keras`` keeps working for
``Sequential``, ``Input``, ``layers`` and ``utils``. docs/keras.md lists what still differs.
"""
from ..model import Model  # noqa: F401
from . import callbacks, datasets, layers, losses, models, optimizers, utils  # noqa: F401
from .models import load_model  # noqa: F401
from .sequential import Input, Sequential  # noqa: F401
from .utils import to_categorical  # noqa: F401
