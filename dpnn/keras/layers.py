"""``keras.layers``: every dpnn layer, Keras's aliases (``MaxPooling2D``...) and ``Input``."""
from ..layers import *  # noqa: F403  (the package's own names, whatever it grows)
from ..layers import (  # noqa: F401
    KERAS_ALIASES,
    AveragePooling2D,
    BatchNormalization,
    GlobalAveragePooling2D,
    MaxPooling2D,
)
from .sequential import Input  # noqa: F401
