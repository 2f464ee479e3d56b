"""Keyed image augmentations: ``op(x, keys) -> new array``, a pure function of each image and its key.

``x`` is (N, H, W, C) images (C = 1 or 3 or any), ``keys`` is (N,) uint64 from
``dpnn.random.sample_keys(seed, epoch, indices)``. Row n of the output depends only on
``x[n]`` and ``keys[n]``: augmenting rows [0:7] and [7:20] separately equals augmenting
[0:20] at once, bitwise, so a batch cut into shards on 1, 2 or 3 workers is augmented the
same way (the worker-count invariance of DESIGN.md). ``x`` is never modified; the output
is a new float32 array.

Every op is a module-level class (picklable, so it travels to the workers) drawing its
random numbers with ``keyed_uniform(keys, salt)``, one salt per class. ``Compose`` gives
the op at each position keys of its own, so its ops' draws are independent.

``parse_spec`` builds a ``Compose`` from the command-line grammar below and
``describe()`` writes it back (``parse_spec(c.describe()) == c``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np

from dpnn.random import keyed_uniform, splitmix64

Augment = Callable[[np.ndarray, np.ndarray], np.ndarray]  # fn(x (N, H, W, C), keys (N,)) -> x'

SPEC_HELP = """\
augmentation spec: comma-separated tokens NAME or NAME=VALUE, applied left to right
  shift=P          integer shift by U{-P..P} px on each axis, zero fill
  crop=P[:MODE]    pad by P px (MODE: constant (default), edge, reflect), crop a random H x W
  flip[=PROB]      horizontal mirror with probability PROB (default 0.5)
  rotate=DEG       rotate by U[-DEG, DEG] degrees       } adjacent rotate/scale/translate
  scale=F          zoom by U[1-F, 1+F]                   } tokens make one bilinear
  translate=P      sub-pixel shift by U[-P, P] px        } resampling (RandomAffine)
  cutout=S         zero an S x S square at a random centre (it may stick out of the image)
  brightness=B     add U[-B, B]                          } adjacent: one op
  contrast=C       scale about the image mean by U[1-C, 1+C]
  stroke=T[:S]     thicken (2x2 max) with probability T, thin (2x2 min) with S (default 0)
  clip[=LO:HI]     clip values to [LO, HI] (default 0:1)
  none             no augmentation (also the empty spec)
example: shift=2,flip,rotate=10,scale=0.1,cutout=8,crop=4,brightness=0.2,contrast=0.2"""

__doc__ += "\n" + SPEC_HELP + "\n"

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

    Subclasses are dataclasses whose fields are their settings; they set ``salt`` and
    implement ``apply`` on checked inputs. ``describe()`` is the op in the spec grammar.
    """
    salt: ClassVar[int]

    def __call__(self, x, keys) -> np.ndarray:
        return self.apply(*check_batch(x, keys))

    def apply(self, x: np.ndarray, keys: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def uniforms(self, keys: np.ndarray, k: int) -> np.ndarray:
        """(N, k) float32 in [0, 1): this op's k draws per image."""
        return keyed_uniform(keys, self.salt, (k,))

    def describe(self) -> str:
        return describe_op(self)


def _fold(idx: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Source indices outside [0, n) mapped inside: mirrored ('reflect') or clamped."""
    if mode == "reflect" and n > 1:
        period = 2 * (n - 1)
        idx = idx % period
        idx = np.where(idx > n - 1, period - idx, idx)
    return np.clip(idx, 0, n - 1)


def shift_images(x: np.ndarray, dy: np.ndarray, dx: np.ndarray, mode: str = "constant") -> np.ndarray:
    """out[n, i, j] = x[n, i - dy[n], j - dx[n]]; outside is 0 ('constant'), 'edge' or 'reflect'.

    x (N, H, W, C), dy and dx (N,) integers -> (N, H, W, C).
    """
    N, H, W, C = x.shape
    rows = np.arange(H)[None, :] - dy[:, None]  # (N, H) source rows
    cols = np.arange(W)[None, :] - dx[:, None]  # (N, W) source columns
    out = x[np.arange(N)[:, None, None], _fold(rows, H, mode)[:, :, None],
            _fold(cols, W, mode)[:, None, :]]  # (N, H, W, C)
    if mode != "constant":
        return out
    inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]  # (N, H, W)
    return np.where(inside[..., None], out, np.float32(0))


@dataclass(frozen=True)
class RandomShift(Augmentation):
    """Shift each image by whole pixels, U{-pixels..pixels} on each axis; zero fill."""
    pixels: int  # largest shift, in pixels
    salt: ClassVar[int] = _SALT + 1

    def __post_init__(self):
        _check_int(self.pixels, "shift pixels", 0)

    def apply(self, x, keys):
        d = _randint(self.uniforms(keys, 2), -self.pixels, self.pixels)  # (N, 2) as (dy, dx)
        return shift_images(x, d[:, 0], d[:, 1])


@dataclass(frozen=True)
class RandomCrop(Augmentation):
    """Pad each image by ``padding`` px on every side, crop a random H x W window (same size out)."""
    padding: int          # pixels added on every side
    mode: str = "constant"  # padding: 'constant' (zeros), 'edge' (repeat) or 'reflect' (mirror)
    salt: ClassVar[int] = _SALT + 2
    MODES: ClassVar[tuple[str, ...]] = ("constant", "edge", "reflect")

    def __post_init__(self):
        _check_int(self.padding, "crop padding", 0)
        if self.mode not in self.MODES:
            raise ValueError(f"crop mode {self.mode!r} is unknown; use one of {', '.join(self.MODES)}")

    def apply(self, x, keys):
        top_left = _randint(self.uniforms(keys, 2), 0, 2 * self.padding)  # (N, 2) in the padded frame
        d = self.padding - top_left  # (N, 2) shift of the content
        return shift_images(x, d[:, 0], d[:, 1], self.mode)


@dataclass(frozen=True)
class RandomFlip(Augmentation):
    """Mirror each image left-right with probability ``p``."""
    p: float = 0.5  # probability of a flip
    salt: ClassVar[int] = _SALT + 3

    def __post_init__(self):
        _check_float(self.p, "flip probability", 0.0, 1.0)

    def apply(self, x, keys):
        flip = self.uniforms(keys, 1)[:, 0] < self.p  # (N,)
        return np.where(flip[:, None, None, None], x[:, :, ::-1], x)


def affine_sample(x: np.ndarray, inv: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """out[n, p] = bilinear x[n] at inv[n] @ p + offset[n] (p = (row, col)); zero outside.

    x (N, H, W, C), inv (N, 2, 2) and offset (N, 2) float32 -> (N, H, W, C). Elementwise
    arithmetic and gathers only, so each row's result does not depend on the others.
    """
    N, H, W, C = x.shape
    gy, gx = np.meshgrid(np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32),
                         indexing="ij")  # (H, W) output pixel coordinates
    sy = inv[:, 0, 0, None, None] * gy + inv[:, 0, 1, None, None] * gx + offset[:, 0, None, None]
    sx = inv[:, 1, 0, None, None] * gy + inv[:, 1, 1, None, None] * gx + offset[:, 1, None, None]
    sy, sx = np.clip(sy, -1, H), np.clip(sx, -1, W)  # (N, H, W); -1 and H land in zero padding
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]  # (N, H, W, 1)
    padded = np.pad(x, ((0, 0), (1, 2), (1, 2), (0, 0))).reshape(-1, C)  # (N*(H+3)*(W+3), C)
    Wp = W + 3
    image = np.arange(N, dtype=np.int64)[:, None, None] * ((H + 3) * Wp)  # (N, 1, 1) first padded row
    flat = image + (y0.astype(np.int64) + 1) * Wp + (x0.astype(np.int64) + 1)  # (N, H, W)

    def tap(dy: int, dx: int) -> np.ndarray:
        return np.take(padded, flat + (dy * Wp + dx), axis=0)  # (N, H, W, C)

    top = (1 - fx) * tap(0, 0) + fx * tap(0, 1)
    bottom = (1 - fx) * tap(1, 0) + fx * tap(1, 1)
    return (1 - fy) * top + fy * bottom


@dataclass(frozen=True)
class RandomAffine(Augmentation):
    """Rotate by U[-rotate, rotate] degrees and zoom by U[1-scale, 1+scale] about the image
    centre, then shift by U[-shift, shift] px on each axis; one bilinear resampling, zero fill."""
    rotate: float = 0.0  # largest rotation, degrees
    scale: float = 0.0   # largest relative zoom, in [0, 1)
    shift: float = 0.0   # largest sub-pixel shift, pixels (the spec's 'translate')
    salt: ClassVar[int] = _SALT + 4

    def __post_init__(self):
        _check_float(self.rotate, "rotate degrees", 0.0, 180.0)
        _check_float(self.scale, "scale fraction", 0.0, 0.99)
        _check_float(self.shift, "translate pixels", 0.0, math.inf)

    def apply(self, x, keys):
        N, H, W, C = x.shape
        u = self.uniforms(keys, 4)  # (N, 4): angle, zoom, dy, dx
        theta = np.deg2rad(_symmetric(u[:, 0], self.rotate))  # (N,)
        s = 1.0 + _symmetric(u[:, 1], self.scale)
        shift = _symmetric(u[:, 2:], self.shift)  # (N, 2) as (dy, dx)
        # libm per scalar: a SIMD cos could round differently at another place in the array.
        cos = np.array([math.cos(t) for t in theta]) / s
        sin = np.array([math.sin(t) for t in theta]) / s
        # Inverse map (output pixel -> source pixel): rotate by -theta, scale by 1/s, about c.
        inv = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], 1)  # (N, 2, 2)
        cy, cx = (H - 1) / 2, (W - 1) / 2
        py, px = cy + shift[:, 0], cx + shift[:, 1]  # (N,) where the centre goes
        # source = inv @ (p - c - shift) + c = inv @ p + offset
        offset = np.stack([cy - (inv[:, 0, 0] * py + inv[:, 0, 1] * px),
                           cx - (inv[:, 1, 0] * py + inv[:, 1, 1] * px)], -1)  # (N, 2)
        return affine_sample(x, inv.astype(np.float32), offset.astype(np.float32))


@dataclass(frozen=True)
class Cutout(Augmentation):
    """Zero a size x size square (all channels) centred on a random pixel; it may stick out."""
    size: int  # side of the square, pixels
    salt: ClassVar[int] = _SALT + 5

    def __post_init__(self):
        _check_int(self.size, "cutout size", 1)

    def apply(self, x, keys):
        N, H, W, C = x.shape
        u = self.uniforms(keys, 2)
        top = _randint(u[:, 0], 0, H - 1) - self.size // 2  # (N,)
        left = _randint(u[:, 1], 0, W - 1) - self.size // 2
        rows = np.arange(H)[None, :] - top[:, None]  # (N, H) row inside the square?
        cols = np.arange(W)[None, :] - left[:, None]  # (N, W)
        hole = ((rows >= 0) & (rows < self.size))[:, :, None] & ((cols >= 0) & (cols < self.size))[:, None, :]
        return np.where(hole[..., None], np.float32(0), x)  # (N, H, W, C)


@dataclass(frozen=True)
class BrightnessContrast(Augmentation):
    """x -> (x - mean) * U[1-contrast, 1+contrast] + mean + U[-brightness, brightness], per image
    (mean over all its pixels and channels). Not clipped: add ``Clip`` for bounded data."""
    brightness: float = 0.0  # largest added offset
    contrast: float = 0.0    # largest relative change of the spread about the mean, in [0, 1]
    salt: ClassVar[int] = _SALT + 6

    def __post_init__(self):
        _check_float(self.brightness, "brightness", 0.0, math.inf)
        _check_float(self.contrast, "contrast", 0.0, 1.0)

    def apply(self, x, keys):
        N = len(x)
        u = self.uniforms(keys, 2)
        b = _symmetric(u[:, 0], self.brightness).astype(np.float32).reshape(N, 1, 1, 1)
        c = (1.0 + _symmetric(u[:, 1], self.contrast)).astype(np.float32).reshape(N, 1, 1, 1)
        mean = x.reshape(N, -1).mean(axis=1).reshape(N, 1, 1, 1)  # (N, 1, 1, 1) float32
        return (x - mean) * c + mean + b


@dataclass(frozen=True)
class StrokeWidth(Augmentation):
    """Thicken strokes towards a 2x2 max with probability ``thick``, thin them towards a 2x2 min
    with probability ``thin``, at a random strength in [0.5, 1]. Thinning is skipped where it
    would leave under 60% of an image's ink (it would fade a digit out)."""
    thick: float = 0.0  # probability of thickening
    thin: float = 0.0   # probability of thinning
    salt: ClassVar[int] = _SALT + 7

    def __post_init__(self):
        _check_float(self.thick, "stroke thicken probability", 0.0, 1.0)
        _check_float(self.thin, "stroke thin probability", 0.0, 1.0)
        if self.thick + self.thin > 1.0:
            raise ValueError(f"stroke probabilities add up to {self.thick + self.thin:g}; "
                             "keep thick + thin <= 1")

    def apply(self, x, keys):
        N = len(x)
        u = self.uniforms(keys, 2)
        strength = (0.5 + 0.5 * u[:, 1]).reshape(N, 1, 1, 1)  # (N, 1, 1, 1) float32
        p = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # (N, H+1, W+1, C)
        quads = (p[:, :-1, :-1], p[:, 1:, :-1], p[:, :-1, 1:], p[:, 1:, 1:])
        thick = x + strength * (np.maximum.reduce(quads) - x)  # (N, H, W, C)
        thin = x + strength * (np.minimum.reduce(quads) - x)
        thin_ok = thin.reshape(N, -1).sum(axis=1) > 0.6 * x.reshape(N, -1).sum(axis=1)  # (N,)
        use_thick = u[:, 0] < self.thick
        use_thin = (u[:, 0] >= self.thick) & (u[:, 0] < self.thick + self.thin) & thin_ok
        out = np.where(use_thin[:, None, None, None], thin, x)
        return np.where(use_thick[:, None, None, None], thick, out)


@dataclass(frozen=True)
class Clip(Augmentation):
    """Clip every value to [lo, hi]; draws nothing."""
    lo: float = 0.0
    hi: float = 1.0
    salt: ClassVar[int] = _SALT + 8

    def __post_init__(self):
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"clip needs finite LO < HI, got {self.lo}:{self.hi}")

    def apply(self, x, keys):
        return np.clip(x, np.float32(self.lo), np.float32(self.hi))


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


# ---- the spec grammar ---------------------------------------------------------------------

# token -> (op class, the fields its VALUE fills, split on ':'; whether VALUE may be left out)
TOKENS: dict[str, tuple[type, tuple[str, ...], bool]] = {
    "shift": (RandomShift, ("pixels",), False),
    "crop": (RandomCrop, ("padding", "mode"), False),
    "flip": (RandomFlip, ("p",), True),
    "rotate": (RandomAffine, ("rotate",), False),
    "scale": (RandomAffine, ("scale",), False),
    "translate": (RandomAffine, ("shift",), False),
    "cutout": (Cutout, ("size",), False),
    "brightness": (BrightnessContrast, ("brightness",), False),
    "contrast": (BrightnessContrast, ("contrast",), False),
    "stroke": (StrokeWidth, ("thick", "thin"), False),
    "clip": (Clip, ("lo", "hi"), True),
}
_SHARED = {cls for cls, _, _ in TOKENS.values() if sum(c is cls for c, _, _ in TOKENS.values()) > 1}
_VALID = f"valid tokens: {', '.join(TOKENS)}, none (grammar: dpnn.augment.SPEC_HELP)"


def _convert(text: str, kind: str):
    """A value of the field type named ``kind`` ('int', 'float' or 'str') from ``text``."""
    if kind == "str":
        return text
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {'an integer' if kind == 'int' else 'a number'}") from None


def _token_fields(name: str, value: str | None) -> dict:
    cls, names, optional = TOKENS[name]
    if value is None:
        if not optional:
            raise ValueError(f"{name} needs a value, e.g. {name}=2")
        return {}
    parts = value.split(":")
    if len(parts) > len(names):
        raise ValueError(f"{name} takes at most {len(names)} value(s) separated by ':'")
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    return {f: _convert(p.strip(), kinds[f]) for f, p in zip(names, parts)}


def parse_spec(spec: str) -> Compose:
    """``'shift=2,flip,rotate=10'`` -> Compose of the ops, in order (grammar: ``SPEC_HELP``).

    Adjacent tokens of one op (rotate/scale/translate; brightness/contrast) fill one op,
    unless a token repeats. Unknown names and bad values raise ValueError naming the token.
    """
    groups: list[tuple[type, dict, list[str]]] = []  # (class, fields, tokens)
    for token in (t.strip() for t in spec.split(",")):
        if token in ("", "none"):
            continue
        name, _, value = token.partition("=")
        name = name.strip()
        if name not in TOKENS:
            raise ValueError(f"augmentation spec {spec!r}: unknown token {token!r}; {_VALID}")
        try:
            fields = _token_fields(name, value if "=" in token else None)
        except ValueError as e:
            raise ValueError(f"augmentation spec {spec!r}: token {token!r}: {e}") from None
        cls = TOKENS[name][0]
        if groups and groups[-1][0] is cls and cls in _SHARED and groups[-1][1].keys().isdisjoint(fields):
            groups[-1][1].update(fields)
            groups[-1][2].append(token)
        else:
            groups.append((cls, fields, [token]))
    return Compose([_build(spec, cls, fields, names) for cls, fields, names in groups])


def _build(spec: str, cls: type, fields: dict, tokens: list[str]) -> Augmentation:
    try:
        return cls(**fields)
    except ValueError as e:
        raise ValueError(f"augmentation spec {spec!r}: token {','.join(tokens)!r}: {e}") from None


def _fmt(v) -> str:
    text = repr(v) if not isinstance(v, str) else v
    return text[:-2] if text.endswith(".0") else text


def describe_op(op: Augmentation) -> str:
    """The spec tokens of ``op``: its non-default settings (at least one token)."""
    defaults = {f.name: f.default for f in dataclasses.fields(op)}
    tokens = []
    for name, (cls, names, optional) in TOKENS.items():
        if cls is not type(op):
            continue
        values = [getattr(op, f) for f in names]
        while values and values[-1] == defaults[names[len(values) - 1]]:
            values.pop()  # trailing defaults are implied
        if values:
            tokens.append(f"{name}={':'.join(map(_fmt, values))}")
        elif optional:
            tokens.append(name)
    if not tokens:  # every setting at its default, none of them optional: spell the first out
        name = next(n for n, (c, _, _) in TOKENS.items() if c is type(op))
        tokens.append(f"{name}={_fmt(getattr(op, TOKENS[name][1][0]))}")
    return ",".join(tokens)


__all__ = ["AUGMENT_STREAM", "Augment", "Augmentation", "BrightnessContrast", "Clip", "Compose", "Cutout",
           "RandomAffine", "RandomCrop", "RandomFlip", "RandomShift", "SPEC_HELP", "StrokeWidth", "TOKENS",
           "affine_sample", "augment_batch", "check_batch", "describe_op", "op_keys", "parse_spec",
           "shift_images"]
