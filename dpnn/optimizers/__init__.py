"""Optimizers, one a module: SGD (momentum, Nesterov), Adam (AMSGrad), AdamW, RMSprop.

Each takes dpnn's argument names (``lr``, ``beta1``, ``eps``) and Keras's (``learning_rate``,
``beta_1``, ``epsilon``); ``optimizer.learning_rate`` (or ``lr``) may be set between steps.
:mod:`dpnn.optim` is the older import path of the same names.
"""
from __future__ import annotations

from .adam import Adam, AdamW
from .base import BLOCK, NORM_BLOCK, ElementwiseOptimizer, Optimizer, blocks, check_number  # noqa: F401
from .regularization import (  # noqa: F401
    clip_ranges,
    keep_frozen,
    regularize,
    square_sums,
    step_keeping_frozen,
    sum_of_squares,
    zero_ranges,
)
from .rmsprop import RMSprop
from .sgd import SGD

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get_optimizer(optimizer, **kwargs) -> Optimizer:
    """An Optimizer from a name ('sgd', 'adam', 'adamw', 'rmsprop') and its keyword arguments,
    or an instance."""
    if isinstance(optimizer, Optimizer):
        if kwargs:
            raise TypeError(f"optimizer arguments {sorted(kwargs)} were given with an optimizer "
                            "instance; pass them to its constructor instead")
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()](**kwargs)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(map(repr, OPTIMIZERS))} "
                     "or pass an Optimizer")


def sgd(lr: float = 0.01, momentum: float = 0.0) -> SGD:
    return SGD(lr=lr, momentum=momentum)


def adam(lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> Adam:
    return Adam(lr=lr, beta1=beta1, beta2=beta2, eps=eps)


__all__ = ["Optimizer", "ElementwiseOptimizer", "SGD", "Adam", "AdamW", "RMSprop", "OPTIMIZERS",
           "get_optimizer", "sgd", "adam", "regularize", "square_sums", "sum_of_squares",
           "blocks", "BLOCK", "NORM_BLOCK"]
