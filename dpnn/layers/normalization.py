"""BatchNorm2D: per-channel batch normalisation for NHWC (or (N, C)) input."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..optimizers.base import check_flag, check_number
from .base import Layer, check_rank, register_layer, runs_own_forward, walk_layers


@register_layer
class BatchNorm2D(Layer):
    """Normalise over every axis but the last (channels); gamma/beta trainable.

    Running statistics follow ``running = momentum * running + (1 - momentum) * batch``
    (the variance is the unbiased one, like PyTorch) and are saved with the model.
    ``sync`` is a hook the data-parallel engine sets for synchronised batch statistics:
    it takes a 1-D array of per-shard sums and returns the sums over every shard.
    Keras's ``epsilon`` (for ``eps``), ``center`` (learn beta) and ``scale`` (learn gamma) are
    accepted; a batch of no samples leaves the running statistics as they are, and a frozen
    layer (``trainable = False``) normalises with them in training too, as in Keras.
    """

    batch_coupled = True

    @property
    def owns_output(self) -> bool:
        return runs_own_forward(self, BatchNorm2D)          # keeps xhat, not its output

    def __init__(self, momentum: float = 0.9, eps: float | None = None, center: bool = True,
                 scale: bool = True, *, epsilon: float | None = None) -> None:
        super().__init__()
        self.momentum = check_number("BatchNorm2D momentum", momentum, 0.0, 1.0)
        if eps is not None and epsilon is not None:
            raise TypeError("give eps= or epsilon=, not both (they are the same setting)")
        eps = 1e-5 if eps is None and epsilon is None else (eps if eps is not None else epsilon)
        self.eps = check_number("BatchNorm2D eps (epsilon)", eps, low_open=True)
        self.center, self.scale = check_flag("BatchNorm2D center", center), check_flag("BatchNorm2D scale", scale)
        self.sync: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def epsilon(self) -> float:
        return self.eps

    @property
    def channels(self) -> int:
        """C, the number of normalised channels (built layers only)."""
        return self.state["running_mean"].size

    def portable(self) -> "BatchNorm2D":
        clone = super().portable()
        clone.sync = None          # the engine's hook belongs to this process
        return clone

    def build(self, input_shape: tuple) -> None:
        check_rank(self, input_shape, (2, 4), "BatchNorm2D takes (N, H, W, C) or (N, C)")
        C = input_shape[-1]
        if self.scale:
            self.add_param("gamma", (C,), "ones")
        if self.center:
            self.add_param("beta", (C,), "zeros")
        self.add_state("running_mean", np.zeros(C))
        self.add_state("running_var", np.ones(C))
        super().build(input_shape)

    def _batch_moments(self, x2: np.ndarray, xhat: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Mean and biased variance per channel of (M, C) rows, over every shard when synced;
        unsynced, ``xhat`` is left holding x - mean (the variance's second pass)."""
        M, C = x2.shape
        ones = np.ones(M, x2.dtype)
        if self.sync is None:
            if not M:                               # nothing to average: the caller keeps running stats
                return np.zeros(C, x2.dtype), np.ones(C, x2.dtype), 0
            mean = ones @ x2 / np.float32(M)                                  # (C,): one GEMV pass
            np.subtract(x2, mean, out=xhat)                                   # (M, C)
            return mean, np.einsum("ij,ij->j", xhat, xhat) / np.float32(M), M
        total = self.sync(np.concatenate([ones @ x2, np.einsum("ij,ij->j", x2, x2), [M]]).astype(np.float64))
        M = int(round(total[-1]))
        mean = total[:C] / max(M, 1)
        return mean.astype(x2.dtype), np.maximum(total[C:2 * C] / max(M, 1) - mean ** 2, 0).astype(x2.dtype), M

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        C = x.shape[-1]
        x2 = x.reshape(-1, C)                                         # (M, C), M = N*H*W
        training = training and self.trainable       # Keras: a frozen BatchNorm runs in inference mode
        xhat = np.empty_like(x2)                                      # (M, C), kept for backward
        M = 0
        if training:
            mean, var, M = self._batch_moments(x2, xhat)
        if M:               # no sample anywhere (an empty batch): no statistics to learn from
            m = self.momentum
            unbiased = var * (M / max(M - 1, 1))
            rm, rv = self.state["running_mean"], self.state["running_var"]
            rm[...] = m * rm + (1 - m) * mean
            rv[...] = m * rv + (1 - m) * unbiased
        else:
            training = False
            mean, var = self.state["running_mean"], self.state["running_var"]
        if not (M and self.sync is None):                             # x - mean not taken yet
            np.subtract(x2, mean.astype(x.dtype, copy=False), out=xhat)
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)      # (C,)
        xhat *= inv_std                                               # (M, C), in place: no temporaries
        self._xhat, self._inv_std, self._training = xhat, inv_std, training
        out = np.multiply(xhat, self.params["gamma"], out=np.empty_like(xhat)) if self.scale else xhat.copy()
        if self.center:
            out += self.params["beta"]
        return out.reshape(x.shape)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        C = grad.shape[-1]
        g2 = grad.reshape(-1, C)                                      # (M, C)
        xhat = self._xhat
        sum_g, sum_gx = np.ones(len(g2), g2.dtype) @ g2, np.einsum("ij,ij->j", g2, xhat)   # (C,) each
        if self.scale:
            self.grads["gamma"][...] = sum_gx
        if self.center:
            self.grads["beta"][...] = sum_g
        a = self._inv_std * self.params["gamma"] if self.scale else self._inv_std    # (C,)
        if not self._training:                  # fixed running statistics: an affine map
            return np.multiply(g2, a, out=np.empty_like(g2)).reshape(grad.shape)
        sums = np.concatenate([sum_g, sum_gx, [g2.shape[0]]])
        if self.sync is not None:
            sums = self.sync(sums.astype(np.float64))
        M = max(sums[-1], 1)
        m1, m2 = (sums[:C] / M).astype(g2.dtype), (sums[C:2 * C] / M).astype(g2.dtype)
        dx = np.multiply(xhat, m2, out=np.empty_like(g2))             # (M, C): a * (g - m1 - xhat * m2),
        np.subtract(g2, dx, out=dx)                                   # four in-place passes, all float32
        dx -= m1
        dx *= a
        return dx.reshape(grad.shape)

    def get_config(self) -> dict:
        cfg = {"momentum": self.momentum, "eps": self.eps}
        if not (self.center and self.scale):
            cfg.update(center=self.center, scale=self.scale)
        return cfg


def batchnorm_layers(layers) -> list[BatchNorm2D]:
    """Every BatchNorm2D of ``layers``, those inside containers too, in the order forward runs them."""
    return [layer for layer in walk_layers(layers) if isinstance(layer, BatchNorm2D)]
