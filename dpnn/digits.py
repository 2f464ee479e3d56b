"""Turn hand-drawn digits into MNIST-like inputs, and augment digit images.

``preprocess_drawing`` repeats MNIST's own normalisation on a GUI canvas: crop to the
ink, scale the longer side to 20 px keeping the aspect ratio, centre the 28x28 frame on
the centre of mass. ``augment_digits`` jitters training images (shift, rotation, scale,
stroke width) so a model trained on them copes with drawings. Pure NumPy.
"""
from __future__ import annotations

import numpy as np

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
    elif canvas.dtype.kind == "b":
        pass
    elif not np.isfinite(img).all():
        raise ValueError("canvas contains NaN/inf; pass pixel values in [0, 1] or 0..255")
    elif img.max(initial=0.0) > 1.0:
        img /= 255.0  # a float canvas in 0..255
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


def _stroke_width(X: np.ndarray, rng: np.random.Generator, p_thick: float,
                  p_thin: float) -> np.ndarray:
    """Per image: towards a 2x2 max (thicker) with prob p_thick, a 2x2 min (thinner) with p_thin.

    The strength is random in [0.5, 1] (1 = the full max/min) so widths vary smoothly.
    """
    p = np.pad(X, ((0, 0), (0, 1), (0, 1)))  # (N, H+1, W+1)
    quads = (p[:, :-1, :-1], p[:, 1:, :-1], p[:, :-1, 1:], p[:, 1:, 1:])
    u = rng.random(len(X))
    strength = rng.uniform(0.5, 1.0, len(X))[:, None, None]
    thick = X + strength * (np.maximum.reduce(quads) - X)  # (N, H, W)
    eroded = np.minimum.reduce(quads)
    thin = X + strength * (eroded - X)
    # A full 2x2 min halves a typical MNIST digit's ink; skip it where it would fade one out.
    thin_ok = thin.sum(axis=(1, 2)) > 0.6 * X.sum(axis=(1, 2))
    use_thick = (u < p_thick)[:, None, None]
    use_thin = ((u >= p_thick) & (u < p_thick + p_thin) & thin_ok)[:, None, None]
    return np.where(use_thick, thick, np.where(use_thin, thin, X))


def _affine_sample(X: np.ndarray, inv: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """out[n, p] = bilinear X[n] at inv[n] @ p + offset[n]; zero outside. X (N, H, W)."""
    N, H, W = X.shape
    gy, gx = np.meshgrid(np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32),
                         indexing="ij")  # (H, W) output pixel coordinates
    sy = inv[:, 0, 0, None, None] * gy + inv[:, 0, 1, None, None] * gx + offset[:, 0, None, None]
    sx = inv[:, 1, 0, None, None] * gy + inv[:, 1, 1, None, None] * gx + offset[:, 1, None, None]
    sy, sx = np.clip(sy, -1, H), np.clip(sx, -1, W)  # (N, H, W); -1 and H land in zero padding
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    P = np.pad(X, ((0, 0), (1, 2), (1, 2))).reshape(N, -1)  # (N, (H+3)*(W+3))
    Wp = W + 3
    base = (y0.astype(np.int64) + 1) * Wp + (x0.astype(np.int64) + 1)  # (N, H, W) flat index
    flat = base.reshape(N, -1)

    def tap(dy: int, dx: int) -> np.ndarray:
        return np.take_along_axis(P, flat + dy * Wp + dx, axis=1).reshape(N, H, W)

    top = (1 - fx) * tap(0, 0) + fx * tap(0, 1)
    bottom = (1 - fx) * tap(1, 0) + fx * tap(1, 1)
    return (1 - fy) * top + fy * bottom


def augment_digits(X: np.ndarray, rng: np.random.Generator, max_shift: float = 2.0,
                   max_degrees: float = 12.0, scale: tuple[float, float] = (0.85, 1.15),
                   p_thick: float = 0.2, p_thin: float = 0.15) -> np.ndarray:
    """Randomly shift, rotate, scale and thicken/thin images X (N, H, W, 1) in [0, 1].

    Returns float32 of the same shape, clipped to [0, 1]; draws from ``rng`` only, so
    it can be passed directly as ``Dataset.batches(preprocess=augment_digits)``.
    """
    X = np.asarray(X)
    if X.ndim != 4 or X.shape[-1] != 1:
        raise ValueError(f"augment_digits needs images of shape (N, H, W, 1), got {X.shape}")
    N, H, W, _ = X.shape
    imgs = _stroke_width(X[..., 0].astype(np.float32), rng, p_thick, p_thin)  # (N, H, W)
    theta = np.deg2rad(rng.uniform(-max_degrees, max_degrees, N))
    s = rng.uniform(scale[0], scale[1], N)
    shift = rng.uniform(-max_shift, max_shift, (N, 2))  # (N, 2) as (dy, dx)
    cos, sin = np.cos(theta) / s, np.sin(theta) / s
    # Inverse map (output pixel -> source pixel): rotate by -theta, scale by 1/s.
    inv = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], 1)  # (N, 2, 2)
    c = np.array([(H - 1) / 2, (W - 1) / 2])
    # source = inv @ (p - c - shift) + c = inv @ p + offset
    offset = c - np.einsum("nij,nj->ni", inv, c + shift)  # (N, 2)
    out = _affine_sample(imgs, inv.astype(np.float32), offset.astype(np.float32))
    return np.clip(out, 0.0, 1.0).astype(np.float32)[..., None]
