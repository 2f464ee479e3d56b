"""``keras.optimizers``: Keras's classes with Keras's defaults and arithmetic.

``Adam`` and ``AdamW`` here add epsilon to sqrt(v) before the bias correction (Keras's
placement; :class:`dpnn.Adam` puts it after, as PyTorch does) and default to epsilon 1e-7;
``RMSprop`` is dpnn's, which is Keras's already; ``SGD`` is dpnn's (the same steps as
Keras's while the learning rate is constant). ``weight_decay`` is decoupled in all of them.
"""
from __future__ import annotations

from .. import optimizers as _dpnn
from ..optimizers import SGD, Optimizer, RMSprop, get_optimizer  # noqa: F401


class Adam(_dpnn.Adam):
    """``keras.optimizers.Adam``: p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)."""

    keras_epsilon = True

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, amsgrad: bool = False, weight_decay: float | None = None) -> None:
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         amsgrad=amsgrad, weight_decay=weight_decay)


class AdamW(_dpnn.AdamW):
    """``keras.optimizers.AdamW``: Keras's Adam step after a decoupled decay of 0.004 by default."""

    keras_epsilon = True

    def __init__(self, learning_rate: float = 0.001, weight_decay: float = 0.004, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad)
