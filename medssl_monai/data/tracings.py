"""EchoNet-Dynamic tracings: polygons, masks and method-of-discs volumes.

``VolumeTracings.csv`` stores, per traced frame, one long-axis row followed by chords
``(X1, Y1)-(X2, Y2)`` perpendicular to it. The EchoNet reference (Ouyang et al., Nature 2020,
``echonet/datasets/echo.py``) drops the long-axis row and walks ``X1[1:]`` then ``X2[1:]`` reversed to
close the endocardial polygon; we do the same so masks match pixel for pixel.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import polygon as draw_polygon

__all__ = ["tracing_polygon", "polygon_mask", "tracing_mask", "disc_volume", "MIN_TRACING_ROWS"]

MIN_TRACING_ROWS = 4  # the long axis plus at least three chords, or the polygon is degenerate


def tracing_polygon(x1, y1, x2, y2) -> tuple[np.ndarray, np.ndarray]:
    """The closed polygon ``(xs, ys)`` of one traced frame: ``X1[1:]`` then reversed ``X2[1:]``."""
    x1, y1, x2, y2 = (np.asarray(a, dtype=np.float64) for a in (x1, y1, x2, y2))
    xs = np.concatenate([x1[1:], x2[1:][::-1]])
    ys = np.concatenate([y1[1:], y2[1:][::-1]])
    return xs, ys


def polygon_mask(xs, ys, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a polygon to a ``uint8`` ``H x W`` mask, rounding vertices as EchoNet does."""
    mask = np.zeros(shape, dtype=np.uint8)
    rr, cc = draw_polygon(np.rint(ys).astype(int), np.rint(xs).astype(int), shape)
    mask[rr, cc] = 1
    return mask


def tracing_mask(x1, y1, x2, y2, shape: tuple[int, int]) -> np.ndarray:
    """The ``H x W`` LV mask of one traced frame."""
    return polygon_mask(*tracing_polygon(x1, y1, x2, y2), shape)


def disc_volume(x1, y1, x2, y2, pixel_spacing_cm: float = 1.0) -> float:
    """Single-plane method of discs (Simpson's rule) from one tracing, in ``cm^3`` (= mL).

    ``V = pi / 4 * sum(d_i^2) * L / N`` with ``L`` the long axis (row 0) and ``d_i`` the ``N`` chords.
    """
    x1, y1, x2, y2 = (np.asarray(a, dtype=np.float64) * pixel_spacing_cm for a in (x1, y1, x2, y2))
    length = np.hypot(x2[0] - x1[0], y2[0] - y1[0])
    diam = np.hypot(x2[1:] - x1[1:], y2[1:] - y1[1:])
    return float(np.pi / 4.0 * np.sum(diam**2) * length / len(diam))
