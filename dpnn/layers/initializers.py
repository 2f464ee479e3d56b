"""Initial weights by Keras's names ('glorot_uniform', 'he_normal', 'zeros'...) or objects.

dpnn's own layers start from ``'he'`` (He-normal, untruncated: nn's choice) unless given a
``kernel_initializer``; Keras's layers start from 'glorot_uniform'. An initializer is called
as ``init(shape, rng, fan_in, fan_out)`` and returns a float32 array; a plain function
``f(shape, rng)`` (dpnn's older form) works too. The fans are Keras's: for a kernel
(KH, KW, C, F), fan_in = KH*KW*C and fan_out = KH*KW*F; for (D, units), D and units.
"""
from __future__ import annotations

import inspect

import numpy as np


def fans(shape: tuple) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of ``shape``, as Keras computes them."""
    if len(shape) < 2:
        return (int(shape[0]),) * 2 if shape else (1, 1)
    receptive = int(np.prod(shape[:-2]))
    return receptive * int(shape[-2]), receptive * int(shape[-1])


class Initializer:
    """Keras's VarianceScaling: variance ``scale / n`` (n the fan ``mode`` names), drawn from
    ``distribution``. The named subclasses fix the three; Keras's ``seed`` is accepted."""

    name = "variance_scaling"
    scale, mode, distribution = 1.0, "fan_in", "truncated_normal"

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def __call__(self, shape, rng: np.random.Generator, fan_in: int | None = None,
                 fan_out: int | None = None) -> np.ndarray:
        k_in, k_out = fans(shape)
        fan_in, fan_out = fan_in or k_in, fan_out or k_out
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        var = self.scale / max(1.0, n)
        if self.seed is not None:
            rng = np.random.default_rng(self.seed)
        if self.distribution == "uniform":
            limit = np.sqrt(3.0 * var)
            return rng.uniform(-limit, limit, shape).astype(np.float32)
        std = np.sqrt(var)
        if self.distribution == "truncated_normal":             # Keras: std of the truncated draw
            return (truncated_normal(rng, shape) * (std / 0.87962566103423978)).astype(np.float32)
        return (rng.standard_normal(shape) * std).astype(np.float32)


def truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal draws, those beyond 2 standard deviations drawn again."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return out


class GlorotUniform(Initializer):
    """Keras's default 'glorot_uniform': uniform, limit sqrt(6 / (fan_in + fan_out))."""
    name, scale, mode, distribution = "glorot_uniform", 1.0, "fan_avg", "uniform"


class GlorotNormal(Initializer):
    name, scale, mode, distribution = "glorot_normal", 1.0, "fan_avg", "truncated_normal"


class HeNormal(Initializer):
    """Keras's 'he_normal': truncated normal, std sqrt(2 / fan_in)."""
    name, scale, mode, distribution = "he_normal", 2.0, "fan_in", "truncated_normal"


class HeUniform(Initializer):
    name, scale, mode, distribution = "he_uniform", 2.0, "fan_in", "uniform"


class LecunNormal(Initializer):
    name, scale, mode, distribution = "lecun_normal", 1.0, "fan_in", "truncated_normal"


class LecunUniform(Initializer):
    name, scale, mode, distribution = "lecun_uniform", 1.0, "fan_in", "uniform"


class DpnnHe(Initializer):
    """dpnn's default 'he' (nn's): normal, std sqrt(2 / fan_in), not truncated."""
    name, scale, mode, distribution = "he", 2.0, "fan_in", "normal"


class Constant:
    """Every element ``value`` (Keras's 'zeros', 'ones', ``Constant(v)``)."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)
        self.name = {0.0: "zeros", 1.0: "ones"}.get(self.value)     # what a config can store

    def __call__(self, shape, rng, fan_in=None, fan_out=None) -> np.ndarray:
        return np.full(shape, self.value, np.float32)


class RandomNormal(Initializer):
    """Keras's 'random_normal': mean 0, stddev 0.05."""

    name = "random_normal"

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None) -> None:
        self.mean, self.stddev, self.seed = float(mean), float(stddev), seed

    def __call__(self, shape, rng, fan_in=None, fan_out=None) -> np.ndarray:
        rng = np.random.default_rng(self.seed) if self.seed is not None else rng
        return (self.mean + self.stddev * rng.standard_normal(shape)).astype(np.float32)


class RandomUniform(Initializer):
    """Keras's 'random_uniform': uniform in [-0.05, 0.05)."""

    name = "random_uniform"

    def __init__(self, minval: float = -0.05, maxval: float = 0.05, seed: int | None = None) -> None:
        self.minval, self.maxval, self.seed = float(minval), float(maxval), seed

    def __call__(self, shape, rng, fan_in=None, fan_out=None) -> np.ndarray:
        rng = np.random.default_rng(self.seed) if self.seed is not None else rng
        return rng.uniform(self.minval, self.maxval, shape).astype(np.float32)


INITIALIZERS = {cls.name: cls for cls in (GlorotUniform, GlorotNormal, HeNormal, HeUniform, LecunNormal,
                                          LecunUniform, RandomNormal, RandomUniform, DpnnHe)}
INITIALIZERS.update(zeros=lambda: Constant(0.0), ones=lambda: Constant(1.0))


def get(init):
    """An initializer from a Keras name, an Initializer, or a function ``f(shape, rng)``."""
    if isinstance(init, str):
        key = init.lower()
        if key not in INITIALIZERS:
            raise ValueError(f"unknown initializer {init!r}; use one of {', '.join(sorted(INITIALIZERS))}, "
                             "an initializer object, or a function f(shape, rng)")
        return INITIALIZERS[key]()
    if isinstance(init, (Initializer, Constant)):
        return init
    if callable(init):
        if len(inspect.signature(init).parameters) >= 4:
            return init
        return lambda shape, rng, fan_in=None, fan_out=None: init(shape, rng)
    raise TypeError(f"an initializer is a name such as 'glorot_uniform', an initializer object or a "
                    f"function f(shape, rng); got {type(init).__name__}")


def config_name(init) -> str | None:
    """What a layer's config stores: the name, or None for an initializer it cannot name."""
    if isinstance(init, str):
        return init
    return getattr(init, "name", None) if isinstance(init, (Initializer, Constant)) else None
