"""dpnn: a data-parallel trainer for NumPy convolutional networks.

``import dpnn`` gives the single-process library (Model, layers, losses, optimizers,
data, I/O: the names imported below); ``dpnn.workers`` holds the shared-memory data-parallel engine.
"""
from .floatmode import configure_denormals, flush_denormals_enabled, set_flush_denormals  # noqa: F401
from .placement import configure_threads

configure_threads()     # both must run before NumPy is imported to take effect:
configure_denormals()   # OpenBLAS starts its threads when NumPy loads, and they inherit the mode

from . import data, losses, optim, optimizers  # noqa: E402, F401
from .callbacks import Callback, EarlyStopping  # noqa: E402, F401
from .data import Dataset, one_hot  # noqa: E402, F401
from .errors import DataError, WeightsError, WorkerError  # noqa: E402, F401
from .keras import Input, Sequential, utils  # noqa: E402, F401  (Keras's names: see dpnn/keras/)
from .layers import (  # noqa: E402, F401
    LAYER_REGISTRY,
    Activation,
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    Residual,
    register_layer,
)
from .model import Model  # noqa: E402, F401
from .optimizers import SGD, Adam, AdamW, Optimizer, RMSprop, adam, sgd  # noqa: E402, F401
from .tensorboard import TensorBoard  # noqa: E402, F401  (tensorboardX is imported when used)

__version__ = "0.1.0"

# Submodules a user reaches as attributes (dpnn.datasets, dpnn.gradcheck, ...), imported on
# first use so that ``import dpnn`` stays light (the MPI and worker modules pull in more).
_LAZY = ("datasets", "gradcheck", "digits", "comm", "distributed", "workers", "io", "idx",
         "engine", "recipe", "training", "placement", "callbacks", "signals", "limits", "augment",
         "node", "step", "formats", "random", "errors", "flat", "im2col", "layers", "losses")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dpnn' has no attribute {name!r}")
