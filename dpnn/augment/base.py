"""The contract of the keyed augmentations (``Augmentation``), ``Compose``, how keys are made and
``augment_batch``, what training calls; the package docstring states what every op keeps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Sequence

import numpy as np

from dpnn.random import keyed_uniform, splitmix64

Augment = Callable[[np.ndarray, np.ndarray], np.ndarray]  # fn(x (N, H, W, C), keys (N,)) -> x'

_SALT = 0x61756700        # 'aug\0' + n: far from Dropout's salts (layer indices)
_COMPOSE_STREAM = 0x636F6D70  # 'comp' + position: the keys Compose hands to its op there
AUGMENT_STREAM = 0xA06E5A17   # fit's augment gets splitmix64(sample key ^ this), not Dropout's keys


def check_batch(x, keys) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) as float32 (not copied when already so) and keys (N,) uint64."""
    x = np.asarray(x)
    if x.ndim != 4 or x.dtype.kind not in "fiu":
        raise ValueError(f"augmentations take numeric images (N, H, W, C), got shape {x.shape} "
                         f"dtype {x.dtype}; add a channel axis with x[..., None]")
    keys = np.asarray(keys)
    if keys.shape != (len(x),) or keys.dtype.kind not in "iu":
        raise ValueError(f"keys must be ({len(x)},) integers, one per image, got shape {keys.shape} "
                         f"dtype {keys.dtype}; make them with dpnn.random.sample_keys(seed, epoch, indices)")
    return x.astype(np.float32, copy=False), keys.astype(np.uint64, copy=False)


def augment_batch(augment: Augment, x: np.ndarray, sample_keys: np.ndarray) -> np.ndarray:
    """What training sees: ``augment(x, k)``, k = splitmix64(sample_keys ^ AUGMENT_STREAM), as float32.

    x (N, H, W, C), sample_keys (N,) uint64 from ``sample_keys(seed, epoch, indices)`` ->
    (N, H, W, C). The derived keys keep a user's keyed draws apart from Dropout's.
    """
    out = np.asarray(augment(x, splitmix64(np.asarray(sample_keys, np.uint64) ^ np.uint64(AUGMENT_STREAM))))
    if out.shape != x.shape:
        raise ValueError(f"augment returned shape {out.shape} for a batch of shape {x.shape}; it must "
                         "return images of the same shape")
    return out.astype(np.float32, copy=False)


def op_keys(keys: np.ndarray, position: int) -> np.ndarray:
    """Keys (N,) uint64 for the op at ``position`` of a Compose; row n depends on keys[n] only."""
    return splitmix64(keys ^ np.uint64(_COMPOSE_STREAM + position))


def _randint(u: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Uniforms [0, 1) -> integers in [lo, hi] (inclusive), int64."""
    k = np.floor(u.astype(np.float64) * (hi - lo + 1)).astype(np.int64)
    return lo + np.minimum(k, hi - lo)


def _symmetric(u: np.ndarray, r: float) -> np.ndarray:
    """Uniforms [0, 1) -> U[-r, r), float64."""
    return (2.0 * u.astype(np.float64) - 1.0) * r


class Augmentation:
    """Base of the keyed ops: ``op(x (N, H, W, C), keys (N,) uint64) -> float32 (N, H, W, C)``.

    Subclasses are dataclasses whose fields are their settings; they set ``salt``, name their
    spec ``tokens`` and implement ``apply`` on checked inputs. ``describe()`` is the op in the
    spec grammar (``dpnn.augment.spec``).
    """
    salt: ClassVar[int]
    # spec token -> (the fields its VALUE fills, split on ':'; whether VALUE may be left out)
    tokens: ClassVar[dict[str, tuple[tuple[str, ...], bool]]] = {}

    def __call__(self, x, keys) -> np.ndarray:
        return self.apply(*check_batch(x, keys))

    def apply(self, x: np.ndarray, keys: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def uniforms(self, keys: np.ndarray, k: int) -> np.ndarray:
        """(N, k) float32 in [0, 1): this op's k draws per image."""
        return keyed_uniform(keys, self.salt, (k,))

    def describe(self) -> str:
        return describe_op(self)


class Compose(Augmentation):
    """Apply ``ops`` in order, ``op(x, keys) -> x``; the op at position i gets ``op_keys(keys, i)``.

    Ops may be any picklable callables with that signature; ``describe()`` needs them to
    be the ops of this module.
    """
    salt: ClassVar[int] = _SALT

    def __init__(self, ops: Sequence[Augment] = ()):
        for op in ops:
            if not callable(op):
                raise TypeError(f"Compose takes callables op(x, keys) -> x, got {op!r}")
        self.ops = tuple(ops)

    def apply(self, x, keys):
        for i, op in enumerate(self.ops):
            x = op(x, op_keys(keys, i))
        return x if self.ops else x.copy()

    def describe(self) -> str:
        for op in self.ops:
            if not isinstance(op, Augmentation):
                raise ValueError(f"{op!r} has no spec; only dpnn.augment ops can be described")
        return ",".join(op.describe() for op in self.ops) or "none"

    def __eq__(self, other) -> bool:
        return type(other) is Compose and self.ops == other.ops

    def __repr__(self) -> str:
        return f"Compose([{', '.join(map(repr, self.ops))}])"


def _check_int(v, what: str, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{what} must be an integer >= {lo}, got {v!r}")


def _check_float(v, what: str, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) \
            or not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{what} must be a finite number in [{lo:g}, {hi:g}], got {v!r}")


def _fmt(v) -> str:
    text = repr(v) if not isinstance(v, str) else v
    return text[:-2] if text.endswith(".0") else text


def describe_op(op: Augmentation) -> str:
    """The spec tokens of ``op``: its non-default settings (at least one token)."""
    defaults = {f.name: f.default for f in dataclasses.fields(op)}
    tokens = []
    for name, (names, optional) in op.tokens.items():
        values = [getattr(op, f) for f in names]
        while values and values[-1] == defaults[names[len(values) - 1]]:
            values.pop()  # trailing defaults are implied
        if values:
            tokens.append(f"{name}={':'.join(map(_fmt, values))}")
        elif optional:
            tokens.append(name)
    if not tokens:  # every setting at its default, none of them optional: spell the first out
        name, (names, _) = next(iter(op.tokens.items()))
        tokens.append(f"{name}={_fmt(getattr(op, names[0]))}")
    return ",".join(tokens)
