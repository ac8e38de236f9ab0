"""Boundary sharpening: decoded patterns snapped to the grain they lie in.

Near a grain boundary the field decodes a blend of the two grains' patterns,
as a measured pattern is when the beam straddles the boundary. Hough indexing
of a blend can return its minority grain; where orientations matter more than
faithful blends (indexing super-resolved or filled-in points), the blend is
better replaced by the pattern of the grain that dominates it.

Without indexing or thresholds, from the field alone: the boundary normal at
a point is the leading eigenvector of the structure tensor of the field's
spatial Jacobian (:mod:`kikuchipy_neural.analysis.gradient`); the field's
patterns one ``distance`` either side along it, ``a`` and ``b``, stand for the
two sides. The decoded pattern ``p`` is split as ``p = m + r`` with
``m = w a + (1 - w) b`` (``w`` by least squares, clipped to [0, 1]) and
replaced by ``a + r`` when ``w >= 1/2``, else by ``b + r``. Inside a grain
``a``, ``b`` and ``p`` agree, ``a - b`` is small and so is the change; across
a boundary the blend becomes the dominant side's pattern, the residual ``r``
(what neither side explains) kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from kikuchipy_neural.model import NeuralEBSDModel

__all__ = ["sharpen_boundaries"]


def _side_positions(
    model: NeuralEBSDModel, xy: np.ndarray, distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``distance`` either side of each point along the normal.

    ``xy`` is ``(n, 2)``. Positions are clamped to the scanned rectangle
    (widened to hold the point itself, for extrapolated queries): the field
    is fitted inside it only.
    """
    from kikuchipy_neural.analysis.gradient import structure_tensor, tensor_to_normal

    jacobian = model.gradient(xy, extrapolate=True, per_component=True)
    _, normal, _ = tensor_to_normal(structure_tensor(jacobian))
    (x0, x1), (y0, y1) = model.geometry.x_range, model.geometry.y_range
    lo = np.minimum(xy, [x0, y0])
    hi = np.maximum(xy, [x1, y1])
    offset = normal * distance
    return np.clip(xy + offset, lo, hi), np.clip(xy - offset, lo, hi)


def sharpen_boundaries(
    model: NeuralEBSDModel,
    xy: np.ndarray,
    patterns: np.ndarray,
    distance: float | None = None,
) -> np.ndarray:
    """Replace the two-grain blend in decoded patterns by its dominant side.

    Parameters
    ----------
    model
        The fitted model the patterns were decoded from.
    xy
        ``(n, 2)`` calibrated positions of the patterns.
    patterns
        float32 ``(n, n_pixels)`` decoded at ``xy`` (measured intensity
        units, as :meth:`~kikuchipy_neural.NeuralEBSDModel.query` returns
        them); not modified.
    distance
        How far either side of a point the two sides' patterns are taken,
        calibrated units; default one scan step. On the super-resolution
        benchmark's matched map (fits from every other point) 1, 1.5 and 2
        steps left each fit's count of misindexed points within 3 of each
        other (of 3136 held out).

    Returns
    -------
    sharpened
        float32 ``(n, n_pixels)``.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    distance = model.geometry.step if distance is None else float(distance)
    if not np.isfinite(distance) or distance <= 0:
        raise ValueError(f"distance must be a positive number, got {distance}")
    plus, minus = _side_positions(model, xy, distance)
    a = model.query(plus, extrapolate=True).reshape(len(xy), -1)
    b = model.query(minus, extrapolate=True).reshape(len(xy), -1)
    p = np.asarray(patterns, dtype=np.float32).reshape(len(xy), -1)
    difference = a - b
    # float64 sums: patterns of 10^4 pixels at 10^4 counts overflow float32
    # precision in the squared norms.
    norm = np.einsum("ij,ij->i", difference, difference, dtype=np.float64)
    dot = np.einsum("ij,ij->i", p - b, difference, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(norm > 0, dot / norm, 0.5)
    w = np.clip(w, 0.0, 1.0)
    # p - (w a + (1 - w) b) + (a or b), as a move along a - b.
    move = np.where(w >= 0.5, 1.0 - w, -w).astype(np.float32)
    return p + move[:, None] * difference
