"""Kept for ``from dpnn.tensorboard import TensorBoard``: the callback lives in
:mod:`dpnn.callbacks.tensorboard`."""
from .callbacks.tensorboard import INSTALL_HINT, TensorBoard  # noqa: F401
