"""Turn hand-drawn digits into MNIST-like inputs, and augment digit images.

``preprocess_drawing`` repeats MNIST's own normalisation on a GUI canvas: crop to the
ink, scale the longer side to 20 px keeping the aspect ratio, centre the 28x28 frame on
the centre of mass. ``digit_augmentation()`` jitters training images (stroke width,
rotation, scale, shift; built from ``dpnn.augment``, keyed per sample) so a model trained
on them copes with drawings. Pure NumPy.
"""
from __future__ import annotations

import numpy as np

from dpnn.augment import Clip, Compose, RandomAffine, StrokeWidth

SIZE = 28  # output frame (MNIST)
BOX = 20  # longer side of the digit inside the frame (MNIST)
CENTRE = 14.0  # measured centre of mass of MNIST digits, in pixel indices


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: area averaging when shrinking, bilinear when enlarging."""
    i = np.arange(n_out, dtype=np.float64)[:, None]  # (n_out, 1)
    j = np.arange(n_in, dtype=np.float64)[None, :]  # (1, n_in)
    s = n_in / n_out
    if n_out <= n_in:
        overlap = np.minimum((i + 1) * s, j + 1) - np.maximum(i * s, j)  # (n_out, n_in)
        return np.clip(overlap, 0.0, None) / s
    src = np.clip((i + 0.5) * s - 0.5, 0.0, n_in - 1)  # (n_out, 1) source coordinate
    return np.clip(1.0 - np.abs(src - j), 0.0, None)  # triangle (bilinear) kernel


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D image (H, W) -> (height, width) with separable area/bilinear weights."""
    H, W = img.shape
    return _resample_matrix(H, height) @ img @ _resample_matrix(W, width).T  # (height, width)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes (..., H, W), zero padding."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()  # (2r+1,)
    H, W = img.shape[-2:]
    pad = [(0, 0)] * (img.ndim - 2)
    p = np.pad(img, pad + [(r, r), (0, 0)])  # (..., H+2r, W)
    img = sum(k[t] * p[..., t:t + H, :] for t in range(2 * r + 1))
    p = np.pad(img, pad + [(0, 0), (r, r)])  # (..., H, W+2r)
    return sum(k[t] * p[..., :, t:t + W] for t in range(2 * r + 1))


def _as_unit_float(canvas: np.ndarray) -> np.ndarray:
    canvas = np.asarray(canvas)
    if canvas.ndim == 3 and canvas.shape[-1] == 1:
        canvas = canvas[..., 0]
    if canvas.ndim != 2:
        raise ValueError(f"canvas must be a 2-D (H, W) grey image, got shape {canvas.shape}")
    img = canvas.astype(np.float64)
    if canvas.dtype.kind in "iu":
        img /= 255.0
    elif not np.isfinite(img).all():
        raise ValueError("canvas contains NaN/inf; pass pixel values in [0, 1] or 0..255")
    elif img.max(initial=0.0) > 1.0:
        img /= 255.0  # a float canvas in 0..255 (a bool one is 0/1)
    return np.clip(img, 0.0, 1.0)


def _place_by_mass(patch: np.ndarray) -> np.ndarray:
    """Put ``patch`` (h, w) in a (SIZE, SIZE) frame with its centre of mass at CENTRE."""
    h, w = patch.shape
    mass = patch.sum()
    cy = patch.sum(axis=1) @ np.arange(h) / mass
    cx = patch.sum(axis=0) @ np.arange(w) / mass
    top = int(np.clip(np.floor(CENTRE - cy + 0.5), 0, SIZE - h))  # never cut the digit off
    left = int(np.clip(np.floor(CENTRE - cx + 0.5), 0, SIZE - w))
    out = np.zeros((SIZE, SIZE))
    out[top:top + h, left:left + w] = patch
    return out


def preprocess_drawing(canvas: np.ndarray, threshold: float = 0.1,
                       blur_sigma: float = 0.5) -> np.ndarray | None:
    """Canvas (H, W), ink high -> (1, 28, 28, 1) float32 in [0, 1] like MNIST; None if empty.

    The canvas may be uint8 (0..255), bool, or float in [0, 1] (or 0..255). Pixels at or
    below ``threshold`` (on the [0, 1] scale) are background.
    """
    img = _as_unit_float(canvas)  # (H, W)
    ink = img > threshold
    if not ink.any():
        return None
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = np.where(ink, img, 0.0)[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # (h, w)
    h, w = crop.shape
    scale = BOX / max(h, w)
    patch = resize(crop, max(1, round(h * scale)), max(1, round(w * scale)))  # longer side = BOX
    out = _place_by_mass(patch)  # (28, 28)
    if blur_sigma > 0:
        out = gaussian_blur(out, blur_sigma)
    out /= out.max()  # ink peaks at 1, as in the training data
    return out.astype(np.float32).reshape(1, SIZE, SIZE, 1)


def digit_augmentation(shift: float = 2.0, rotate: float = 12.0, scale: float = 0.15,
                       thick: float = 0.2, thin: float = 0.15) -> Compose:
    """The jitter that makes MNIST digits look drawn with a mouse, as a keyed augmentation.

    Strokes thickened (probability ``thick``) or thinned (``thin``), then rotated by up to
    ``rotate`` degrees, zoomed by 1 +- ``scale`` and shifted by up to ``shift`` px (one
    bilinear resampling), clipped to [0, 1]. Call it as ``fit(augment=...)`` does:
    ``fn(x (N, H, W, C), keys (N,) uint64) -> float32 (N, H, W, C)``; its spec is
    ``fn.describe()``.
    """
    return Compose([StrokeWidth(thick, thin), RandomAffine(rotate, scale, shift), Clip(0.0, 1.0)])


def augment_digits(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``digit_augmentation()`` keyed by draws from ``rng``: X (N, H, W, C) -> float32 (N, H, W, C).

    For callers that hold a Generator, e.g. ``Dataset.batches(preprocess=augment_digits)``;
    training should pass ``digit_augmentation()`` to ``fit(augment=...)`` instead, whose
    per-sample keys make the result independent of how batches are split.
    """
    X = np.asarray(X)
    keys = rng.integers(0, 2**64, size=len(X), dtype=np.uint64, endpoint=False)  # (N,)
    return digit_augmentation()(X, keys)
