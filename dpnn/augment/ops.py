"""The keyed image augmentations: shift, crop, flip, affine, cutout, brightness/contrast, stroke
width and clip, each a frozen dataclass of its settings (the package docstring says what all keep).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import _SALT, Augmentation, _check_float, _check_int, _randint, _symmetric


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
    tokens: ClassVar[dict] = {"shift": (("pixels",), False)}

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
    tokens: ClassVar[dict] = {"crop": (("padding", "mode"), False)}
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
    tokens: ClassVar[dict] = {"flip": (("p",), True)}

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
    tokens: ClassVar[dict] = {"rotate": (("rotate",), False), "scale": (("scale",), False),
                                 "translate": (("shift",), False)}

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
    tokens: ClassVar[dict] = {"cutout": (("size",), False)}

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
    tokens: ClassVar[dict] = {"brightness": (("brightness",), False), "contrast": (("contrast",), False)}

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
    tokens: ClassVar[dict] = {"stroke": (("thick", "thin"), False)}

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
    tokens: ClassVar[dict] = {"clip": (("lo", "hi"), True)}

    def __post_init__(self):
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"clip needs finite LO < HI, got {self.lo}:{self.hi}")

    def apply(self, x, keys):
        return np.clip(x, np.float32(self.lo), np.float32(self.hi))

