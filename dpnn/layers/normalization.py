"""BatchNorm2D: per-channel batch normalisation for NHWC (or (N, C)) input."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .base import Layer, check_rank, register_layer, walk_layers


@register_layer
class BatchNorm2D(Layer):
    """Normalise over every axis but the last (channels); gamma/beta trainable.

    Running statistics follow ``running = momentum * running + (1 - momentum) * batch``
    (the variance is the unbiased one, like PyTorch) and are saved with the model.
    ``sync`` is a hook the data-parallel engine sets for synchronised batch statistics:
    it takes a 1-D array of per-shard sums and returns the sums over every shard.
    """

    batch_coupled = True

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"BatchNorm2D momentum must be in [0, 1), got {momentum!r}")
        self.momentum, self.eps = float(momentum), float(eps)
        self.sync: Callable[[np.ndarray], np.ndarray] | None = None

    def portable(self) -> "BatchNorm2D":
        clone = super().portable()
        clone.sync = None          # the engine's hook belongs to this process
        return clone

    def build(self, input_shape: tuple) -> None:
        check_rank(self, input_shape, (2, 4), "BatchNorm2D takes (N, H, W, C) or (N, C)")
        C = input_shape[-1]
        self.add_param("gamma", (C,), "ones")
        self.add_param("beta", (C,), "zeros")
        self.add_state("running_mean", np.zeros(C))
        self.add_state("running_var", np.ones(C))
        super().build(input_shape)

    def _batch_moments(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Mean and biased variance per channel of (M, C) rows, over every shard when synced."""
        M = x2.shape[0]
        if self.sync is None:
            mean = x2.mean(axis=0)
            return mean, ((x2 - mean) ** 2).mean(axis=0), M
        C = x2.shape[1]
        total = self.sync(np.concatenate([x2.sum(0), (x2 * x2).sum(0), [M]]).astype(np.float64))
        M = int(round(total[-1]))
        mean = total[:C] / M
        return mean.astype(x2.dtype), np.maximum(total[C:2 * C] / M - mean ** 2, 0).astype(x2.dtype), M

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        C = x.shape[-1]
        x2 = x.reshape(-1, C)                                         # (M, C), M = N*H*W
        if training:
            mean, var, M = self._batch_moments(x2)
            m = self.momentum
            unbiased = var * (M / max(M - 1, 1))
            rm, rv = self.state["running_mean"], self.state["running_var"]
            rm[...] = m * rm + (1 - m) * mean
            rv[...] = m * rv + (1 - m) * unbiased
        else:
            mean, var = self.state["running_mean"], self.state["running_var"]
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)      # (C,)
        xhat = (x2 - mean) * inv_std                                  # (M, C)
        self._xhat, self._inv_std, self._training = xhat, inv_std, training
        return (xhat * self.params["gamma"] + self.params["beta"]).reshape(x.shape)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        C = grad.shape[-1]
        g2 = grad.reshape(-1, C)                                      # (M, C)
        xhat = self._xhat
        self.grads["gamma"][...] = (g2 * xhat).sum(axis=0)
        self.grads["beta"][...] = g2.sum(axis=0)
        if not self._training:                  # fixed running statistics: an affine map
            dx = g2 * (self.params["gamma"] * self._inv_std)
            return dx.astype(grad.dtype, copy=False).reshape(grad.shape)
        sums = np.concatenate([g2.sum(0), (g2 * xhat).sum(0), [g2.shape[0]]])
        if self.sync is not None:
            sums = self.sync(sums.astype(np.float64)).astype(g2.dtype)
        M = sums[-1]
        dxhat_mean, dxhat_xhat_mean = sums[:C] / M, sums[C:2 * C] / M
        dx = (g2 - dxhat_mean - xhat * dxhat_xhat_mean) * (self.params["gamma"] * self._inv_std)
        return dx.astype(grad.dtype, copy=False).reshape(grad.shape)

    def get_config(self) -> dict:
        return {"momentum": self.momentum, "eps": self.eps}


def batchnorm_layers(layers) -> list[BatchNorm2D]:
    """Every BatchNorm2D of ``layers``, those inside containers too, in the order forward runs them."""
    return [layer for layer in walk_layers(layers) if isinstance(layer, BatchNorm2D)]
