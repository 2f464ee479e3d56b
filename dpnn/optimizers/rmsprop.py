"""RMSprop as Keras computes it (Keras picks it when ``compile`` names no optimizer)."""
from __future__ import annotations

import numpy as np

from .base import ElementwiseOptimizer, check_flag, check_number, pick


class RMSprop(ElementwiseOptimizer):
    """Keras's RMSprop: v = rho v + (1 - rho) g^2; step = lr g / sqrt(v + eps) (centered:
    sqrt(v - mg^2 + eps), mg the running mean of g); with momentum, mom = momentum mom + step
    and p -= mom. Keras's defaults (lr 1e-3, rho 0.9, epsilon 1e-7).

    Keras adds epsilon *inside* the square root; torch.optim.RMSprop adds it to sqrt(v) (and
    calls rho ``alpha``): the two agree when eps is small against v. ``alpha=`` is accepted
    as PyTorch's name for ``rho``.
    """

    def __init__(self, lr: float | None = None, rho: float | None = None, momentum: float = 0.0,
                 epsilon: float | None = None, centered: bool = False, weight_decay: float = 0.0, *,
                 learning_rate: float | None = None, alpha: float | None = None,
                 eps: float | None = None) -> None:
        super().__init__(pick("lr", lr, "learning_rate", learning_rate, 1e-3), weight_decay=weight_decay)
        self.rho = check_number("rho", pick("alpha", alpha, "rho", rho, 0.9), 0.0, 1.0)
        self.momentum = check_number("momentum", momentum, 0.0, 1.0)
        self.eps = check_number("epsilon", pick("eps", eps, "epsilon", epsilon, 1e-7))
        self.centered = check_flag("centered", centered)

    @property
    def epsilon(self) -> float:
        return self.eps

    def slot_names(self) -> tuple[str, ...]:
        return ("v",) + (("mg",) if self.centered else ()) + (("mom",) if self.momentum else ())

    def update_into(self, p, g, slot, p_out, slot_out) -> None:
        names = self.slot_names()
        n, dt = len(names), p.dtype.type
        rho, lr, eps = dt(self.rho), dt(self.lr), dt(self.eps)
        for piece in self.pieces(p, g, slot, p_out, slot_out):    # p, g, slots, p_out, slots_out, tmp
            p_, g_, po, tmp = piece[0], piece[1], piece[2 + n], piece[-1]
            now, new = dict(zip(names, piece[2:2 + n])), dict(zip(names, piece[3 + n:3 + 2 * n]))
            np.multiply(now["v"], rho, out=new["v"])                 # v = rho v + (1 - rho) g^2
            np.multiply(g_, g_, out=tmp)
            tmp *= dt(1 - self.rho)
            new["v"] += tmp
            if self.centered:                                        # mg = rho mg + (1 - rho) g
                np.multiply(now["mg"], rho, out=new["mg"])
                np.multiply(g_, dt(1 - self.rho), out=tmp)
                new["mg"] += tmp
                np.multiply(new["mg"], new["mg"], out=tmp)
                np.subtract(new["v"], tmp, out=tmp)
                tmp += eps
            else:
                np.add(new["v"], eps, out=tmp)
            np.sqrt(tmp, out=tmp)
            np.divide(g_, tmp, out=tmp)
            tmp *= lr                                                # the increment, lr g / sqrt(...)
            if self.momentum:
                np.multiply(now["mom"], dt(self.momentum), out=new["mom"])
                new["mom"] += tmp
                tmp = new["mom"]
            np.subtract(self.decay_into(p_, po), tmp, out=po)

    def get_config(self) -> dict:
        cfg = {**super().get_config(), "rho": self.rho, "epsilon": self.eps}
        if self.momentum:
            cfg["momentum"] = self.momentum
        if self.centered:
            cfg["centered"] = True
        return cfg
