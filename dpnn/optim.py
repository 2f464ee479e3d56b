"""The older import path of :mod:`dpnn.optimizers` (every name it had is still here)."""
from .optimizers import (  # noqa: F401
    BLOCK,
    NORM_BLOCK,
    OPTIMIZERS,
    SGD,
    Adam,
    AdamW,
    ElementwiseOptimizer,
    Optimizer,
    RMSprop,
    adam,
    blocks,
    get_optimizer,
    regularize,
    sgd,
    square_sums,
    sum_of_squares,
)
