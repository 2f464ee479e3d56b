"""Adam (with AMSGrad) and AdamW: bias-corrected moments, as torch.optim.Adam computes them."""
from __future__ import annotations

import numpy as np

from .base import ElementwiseOptimizer, check_flag, check_number, pick


class Adam(ElementwiseOptimizer):
    """Adam (Kingma & Ba) with bias correction, as in PyTorch; ``amsgrad`` keeps the running
    maximum of v (Reddi et al.). Keras's argument names are accepted too (``learning_rate``,
    ``beta_1``, ``beta_2``, ``epsilon``); ``weight_decay`` is decoupled, as in Keras's Adam.

    The step is ``lr * m_hat / (sqrt(v_hat) + eps)`` (PyTorch's placement of eps); Keras adds
    eps to sqrt(v) before the bias correction, which differs only while v is about eps**2
    (``dpnn.keras.optimizers.Adam`` does that: its ``keras_epsilon`` is True).
    """

    keras_epsilon = False   # True: eps added to sqrt(v) itself, not to the bias-corrected sqrt(v_hat)

    def __init__(self, lr: float | None = None, beta1: float | None = None, beta2: float | None = None,
                 eps: float | None = None, amsgrad: bool = False, weight_decay: float = 0.0, *,
                 learning_rate: float | None = None, beta_1: float | None = None,
                 beta_2: float | None = None, epsilon: float | None = None) -> None:
        super().__init__(pick("lr", lr, "learning_rate", learning_rate, 1e-3), weight_decay=weight_decay)
        self.beta1 = check_number("beta1 (beta_1)", pick("beta1", beta1, "beta_1", beta_1, 0.9), 0.0, 1.0)
        self.beta2 = check_number("beta2 (beta_2)", pick("beta2", beta2, "beta_2", beta_2, 0.999), 0.0, 1.0)
        self.eps = check_number("eps (epsilon)", pick("eps", eps, "epsilon", epsilon, 1e-8))
        self.amsgrad = check_flag("amsgrad", amsgrad)

    @property
    def epsilon(self) -> float:
        return self.eps

    def slot_names(self) -> tuple[str, ...]:
        return ("m", "v", "vhat") if self.amsgrad else ("m", "v")

    def update_into(self, p, g, slot, p_out, slot_out) -> None:
        """The update of (p, slot) written to (p_out, slot_out): no copy first when they differ
        (the sharded step writes the other parameter set); the same arrays update in place."""
        bc1, bc2 = 1 - self.beta1 ** self.t, 1 - self.beta2 ** self.t
        # p -= lr/bc1 * m / (sqrt(v/bc2) + eps), written as lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps*sqrt(bc2))
        step = p.dtype.type(self.lr * np.sqrt(bc2) / bc1)
        eps = p.dtype.type(self.eps if self.keras_epsilon else self.eps * np.sqrt(bc2))
        for piece in self.pieces(p, g, slot, p_out, slot_out):
            if self.amsgrad:
                p_, g_, m, v, vh, po, mo, vo, vho, tmp = piece
            else:
                (p_, g_, m, v, po, mo, vo, tmp), vh, vho = piece, None, None
            self._update_block(p_, g_, m, v, po, mo, vo, tmp, step, eps, vh, vho)

    def _update_block(self, p, g, m, v, p_out, m_out, v_out, tmp, step, eps, vhat=None, vhat_out=None) -> None:
        b1, b2 = self.beta1, self.beta2
        np.multiply(m, b1, out=m_out)                                 # m = b1 m + (1 - b1) g
        np.multiply(g, 1 - b1, out=tmp)
        m_out += tmp
        np.multiply(v, b2, out=v_out)                                 # v = b2 v + (1 - b2) g^2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v_out += tmp
        if vhat is not None:                                          # AMSGrad: the largest v so far
            np.maximum(vhat, v_out, out=vhat_out)
        np.sqrt(v_out if vhat is None else vhat_out, out=tmp)
        tmp += eps
        np.divide(m_out, tmp, out=tmp)
        tmp *= step
        np.subtract(self.decay_into(p, p_out), tmp, out=p_out)

    def get_config(self) -> dict:
        cfg = {**super().get_config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}
        if self.amsgrad:
            cfg["amsgrad"] = True
        return cfg


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr*weight_decay, then
    the Adam step, as torch.optim.AdamW; the decay is not part of the gradient, so it is
    neither clipped nor seen by the moments. The default ``weight_decay`` is Keras's, 0.004."""

    def __init__(self, lr: float | None = None, weight_decay: float = 0.004, beta1: float | None = None,
                 beta2: float | None = None, eps: float | None = None, amsgrad: bool = False, *,
                 learning_rate: float | None = None, beta_1: float | None = None,
                 beta_2: float | None = None, epsilon: float | None = None) -> None:
        if weight_decay is None or isinstance(weight_decay, bool):
            raise ValueError(f"AdamW's weight_decay must be a float, got {weight_decay!r}")
        super().__init__(lr, beta1, beta2, eps, amsgrad, weight_decay, learning_rate=learning_rate,
                         beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)

    def get_config(self) -> dict:
        return {**super().get_config(), "weight_decay": self.weight_decay}
