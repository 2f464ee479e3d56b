"""``keras.callbacks``: dpnn's callbacks (:mod:`dpnn.callbacks`), every public name it has."""
from ..callbacks import *  # noqa: F403
