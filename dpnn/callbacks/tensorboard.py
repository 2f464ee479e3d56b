"""Keras's ``TensorBoard`` callback among the others (``dpnn.callbacks.TensorBoard``); it is
written in :mod:`dpnn.tensorboard`, where ``from dpnn.tensorboard import TensorBoard`` finds it."""
from ..tensorboard import INSTALL_HINT, TensorBoard  # noqa: F401
