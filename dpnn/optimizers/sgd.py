"""SGD with PyTorch-style momentum and Nesterov momentum."""
from __future__ import annotations

import numpy as np

from .base import ElementwiseOptimizer, check_flag, check_number, pick


class SGD(ElementwiseOptimizer):
    """SGD: v = momentum*v + g; p -= lr*v (Nesterov: p -= lr*(g + momentum*v)).

    This is torch.optim.SGD's form. Keras keeps ``-lr*v`` in its velocity instead; the two give
    the same steps while the learning rate is constant. ``weight_decay`` is decoupled (Keras's).
    """

    def __init__(self, lr: float | None = None, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, *, learning_rate: float | None = None) -> None:
        super().__init__(pick("lr", lr, "learning_rate", learning_rate, 0.01), weight_decay=weight_decay)
        self.momentum = check_number("momentum", momentum, 0.0, 1.0)
        self.nesterov = check_flag("nesterov", nesterov)
        if self.nesterov and not self.momentum:
            raise ValueError("nesterov=True needs a momentum > 0 (as in Keras and PyTorch)")

    def slot_names(self) -> tuple[str, ...]:
        return ("v",) if self.momentum else ()

    def update_into(self, p, g, slot, p_out, slot_out) -> None:
        lr, mu = p.dtype.type(self.lr), self.momentum
        for piece in self.pieces(p, g, slot, p_out, slot_out):
            if mu:
                p_, g_, v, po, vo, tmp = piece
                np.multiply(v, mu, out=vo)                  # v = mu v + g
                vo += g_
                if self.nesterov:                           # step along g + mu v
                    np.multiply(vo, mu, out=tmp)
                    tmp += g_
                else:
                    np.copyto(tmp, vo)
            else:
                p_, g_, po, tmp = piece
                np.copyto(tmp, g_)
            tmp *= lr
            np.subtract(self.decay_into(p_, po), tmp, out=po)

    def get_config(self) -> dict:
        cfg = {**super().get_config(), "momentum": self.momentum}
        if self.nesterov:
            cfg["nesterov"] = True
        return cfg
