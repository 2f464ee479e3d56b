"""The GUI's drawing surface without any widgets: a square ink buffer and its on-screen view.

``DrawingBuffer`` rasterises brush strokes with a round, anti-aliased brush into a fixed
(size, size) float32 array (ink = 1, paper = 0) whatever the window size, which is what
``dpnn.digits.preprocess_drawing`` expects. ``Viewport`` maps widget pixels to buffer
pixels: the buffer is shown as the largest centred square that fits the widget.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BUFFER_SIZE = 280     # internal resolution: 10x MNIST's 28 px
BRUSH_RADIUS = 11.0   # in buffer pixels; a 200 px tall digit scaled to 20 px gets ~2 px strokes

Point = tuple[float, float]


def stamp_segment(pixels: np.ndarray, p0: Point, p1: Point, radius: float) -> None:
    """Paint the capsule of ``radius`` around segment p0-p1 into ``pixels`` (H, W), in place.

    Points are (x, y) in pixel units, pixel (row i, column j) has its centre at
    (j + 0.5, i + 0.5). Coverage falls off linearly over one pixel at the edge
    (anti-aliasing); overlapping paint keeps the maximum, so ink never exceeds 1.
    """
    H, W = pixels.shape
    (x0, y0), (x1, y1) = p0, p1
    pad = radius + 1.0
    c0, c1 = max(int(np.floor(min(x0, x1) - pad)), 0), min(int(np.ceil(max(x0, x1) + pad)), W)
    r0, r1 = max(int(np.floor(min(y0, y1) - pad)), 0), min(int(np.ceil(max(y0, y1) + pad)), H)
    if c0 >= c1 or r0 >= r1:
        return                                    # entirely outside the buffer
    px = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5   # (1, w) pixel centres
    py = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5   # (h, 1)
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    if length2 > 0:                               # closest point of the segment, as a fraction t
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / length2, 0.0, 1.0)  # (h, w)
    else:
        t = np.zeros((r1 - r0, c1 - c0))
    dist = np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))  # (h, w)
    coverage = np.clip(radius + 0.5 - dist, 0.0, 1.0).astype(pixels.dtype)
    np.maximum(pixels[r0:r1, c0:c1], coverage, out=pixels[r0:r1, c0:c1])


class DrawingBuffer:
    """A (size, size) float32 ink buffer in [0, 1] plus the strokes drawn into it.

    >>> buf = DrawingBuffer()
    >>> buf.begin_stroke(140, 40); buf.extend_stroke(140, 240); buf.end_stroke()
    >>> buf.pixels.shape, buf.is_empty
    ((280, 280), False)
    """

    def __init__(self, size: int = BUFFER_SIZE, brush_radius: float = BRUSH_RADIUS) -> None:
        if size < 1 or brush_radius <= 0:
            raise ValueError(f"size must be >= 1 and brush_radius > 0, got {size}, {brush_radius}")
        self.size, self.brush_radius = int(size), float(brush_radius)
        self.pixels = np.zeros((self.size, self.size), np.float32)  # (size, size), ink high
        self.strokes: list[list[Point]] = []      # buffer coordinates, for redrawing on resize
        self._drawing = False

    @property
    def is_empty(self) -> bool:
        return not self.pixels.any()

    def begin_stroke(self, x: float, y: float) -> None:
        """Put the brush down at (x, y): paints one dot."""
        self.strokes.append([(float(x), float(y))])
        self._drawing = True
        stamp_segment(self.pixels, (x, y), (x, y), self.brush_radius)

    def extend_stroke(self, x: float, y: float) -> Point | None:
        """Drag the brush to (x, y); returns the previous point (None if no stroke is active)."""
        if not self._drawing:
            return None
        prev = self.strokes[-1][-1]
        self.strokes[-1].append((float(x), float(y)))
        stamp_segment(self.pixels, prev, (x, y), self.brush_radius)
        return prev

    def end_stroke(self) -> bool:
        """Lift the brush; True if a stroke was in progress."""
        was_drawing, self._drawing = self._drawing, False
        return was_drawing

    def draw_polyline(self, points: list[Point]) -> None:
        """One whole stroke through ``points`` (buffer coordinates)."""
        self.begin_stroke(*points[0])
        for x, y in points[1:]:
            self.extend_stroke(x, y)
        self.end_stroke()

    def clear(self) -> None:
        self.pixels[...] = 0.0
        self.strokes.clear()
        self._drawing = False


@dataclass(frozen=True)
class Viewport:
    """Where a (buffer_size, buffer_size) buffer appears in a (width, height) widget."""
    width: int                     # widget size in screen pixels
    height: int
    buffer_size: int = BUFFER_SIZE

    @property
    def side(self) -> int:
        """Side of the drawing square on screen (largest square that fits, at least 1)."""
        return max(min(self.width, self.height), 1)

    @property
    def origin(self) -> Point:
        """Top-left corner of the drawing square in widget pixels."""
        return (self.width - self.side) / 2, (self.height - self.side) / 2

    @property
    def scale(self) -> float:
        """Buffer pixels per screen pixel."""
        return self.buffer_size / self.side

    def to_buffer(self, x: float, y: float) -> Point:
        ox, oy = self.origin
        return (x - ox) * self.scale, (y - oy) * self.scale

    def to_widget(self, x: float, y: float) -> Point:
        ox, oy = self.origin
        return x / self.scale + ox, y / self.scale + oy
