"""BatchNorm2D: per-channel batch normalisation for NHWC (or (N, C)) input."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..optimizers.base import check_number
from .base import Layer, check_rank, register_layer, walk_layers


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

    def __init__(self, momentum: float = 0.9, eps: float | None = None, center: bool = True,
                 scale: bool = True, *, epsilon: float | None = None) -> None:
        super().__init__()
        self.momentum = check_number("BatchNorm2D momentum", momentum, 0.0, 1.0)
        if eps is not None and epsilon is not None:
            raise TypeError("give eps= or epsilon=, not both (they are the same setting)")
        eps = 1e-5 if eps is None and epsilon is None else (eps if eps is not None else epsilon)
        self.eps = check_number("BatchNorm2D eps (epsilon)", eps, low_open=True)
        for name, flag in (("center", center), ("scale", scale)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"BatchNorm2D {name} must be True or False, got {flag!r}")
        self.center, self.scale = bool(center), bool(scale)
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

    def _batch_moments(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Mean and biased variance per channel of (M, C) rows, over every shard when synced."""
        M = x2.shape[0]
        if self.sync is None:
            if not M:                               # nothing to average: the caller keeps running stats
                return np.zeros(x2.shape[1], x2.dtype), np.ones(x2.shape[1], x2.dtype), 0
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
        training = training and self.trainable       # Keras: a frozen BatchNorm runs in inference mode
        M = 0
        if training:
            mean, var, M = self._batch_moments(x2)
        if M:               # no sample anywhere (an empty batch): no statistics to learn from
            m = self.momentum
            unbiased = var * (M / max(M - 1, 1))
            rm, rv = self.state["running_mean"], self.state["running_var"]
            rm[...] = m * rm + (1 - m) * mean
            rv[...] = m * rv + (1 - m) * unbiased
        else:
            training = False
            mean, var = self.state["running_mean"], self.state["running_var"]
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)      # (C,)
        xhat = (x2 - mean) * inv_std                                  # (M, C)
        self._xhat, self._inv_std, self._training = xhat, inv_std, training
        out = xhat * self.params["gamma"] if self.scale else xhat.astype(x.dtype, copy=False)
        if self.center:
            out = out + self.params["beta"]
        return out.reshape(x.shape)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        C = grad.shape[-1]
        g2 = grad.reshape(-1, C)                                      # (M, C)
        xhat = self._xhat
        if self.scale:
            self.grads["gamma"][...] = (g2 * xhat).sum(axis=0)
        if self.center:
            self.grads["beta"][...] = g2.sum(axis=0)
        gamma = self.params["gamma"] if self.scale else np.ones(C, g2.dtype)
        if not self._training:                  # fixed running statistics: an affine map
            dx = g2 * (gamma * self._inv_std)
            return dx.astype(grad.dtype, copy=False).reshape(grad.shape)
        sums = np.concatenate([g2.sum(0), (g2 * xhat).sum(0), [g2.shape[0]]])
        if self.sync is not None:
            sums = self.sync(sums.astype(np.float64)).astype(g2.dtype)
        M = sums[-1]
        dxhat_mean, dxhat_xhat_mean = sums[:C] / M, sums[C:2 * C] / M
        dx = (g2 - dxhat_mean - xhat * dxhat_xhat_mean) * (gamma * self._inv_std)
        return dx.astype(grad.dtype, copy=False).reshape(grad.shape)

    def get_config(self) -> dict:
        cfg = {"momentum": self.momentum, "eps": self.eps}
        if not (self.center and self.scale):
            cfg.update(center=self.center, scale=self.scale)
        return cfg


def batchnorm_layers(layers) -> list[BatchNorm2D]:
    """Every BatchNorm2D of ``layers``, those inside containers too, in the order forward runs them."""
    return [layer for layer in walk_layers(layers) if isinstance(layer, BatchNorm2D)]
