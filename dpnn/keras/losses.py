"""``keras.losses``: dpnn's losses (:mod:`dpnn.losses`), every public name it has."""
from ..losses import *  # noqa: F403
