"""Interpolation baselines: what a neural field's queries must beat.

Patterns at unmeasured scan points estimated from measured neighbours by
nearest-neighbour or (bi)linear interpolation, per detector pixel. Used by the
super-resolution benchmark and tutorial as the reference that continuous
queries are compared with.
"""

from __future__ import annotations

import numpy as np

__all__ = ["interpolate_missing", "sparse_grid_mask"]

METHODS = ("nearest", "linear")
# Interpolated float64 values per chunk of points (bounds memory).
_CHUNK_VALUES = 2**23


def sparse_grid_mask(nav_shape: tuple[int, int], every: int = 2) -> np.ndarray:
    """Boolean mask of every ``every``-th scan point along both axes.

    With ``every=2`` it selects a quarter of the grid (the points with even
    row and column): the training points of the super-resolution protocol.
    """
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    if len(nav_shape) != 2:
        raise ValueError(f"nav_shape must be (rows, columns), got {nav_shape!r}")
    mask = np.zeros(nav_shape, bool)
    mask[::every, ::every] = True
    return mask


def _subgrid(known: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows and columns if ``known`` is exactly their outer product."""
    rows = np.flatnonzero(known.any(axis=1))
    cols = np.flatnonzero(known.any(axis=0))
    product = np.zeros_like(known)
    product[np.ix_(rows, cols)] = True
    return (rows, cols) if np.array_equal(product, known) else None


def interpolate_missing(data, known: np.ndarray, method: str = "linear") -> np.ndarray:
    """Patterns at the unknown scan points interpolated from the known ones.

    Parameters
    ----------
    data
        ``(ny, nx, rows, columns)`` patterns (numpy or anything
        ``np.asarray`` reads); only the known points are read.
    known
        Boolean ``(ny, nx)``, True at the points to interpolate from.
    method
        ``"nearest"`` (the pattern of the nearest known point) or
        ``"linear"``. When the known points form a sub-grid (rows x
        columns, e.g. :func:`sparse_grid_mask`) interpolation is on that
        grid, bilinear for ``"linear"``; otherwise on the Delaunay
        triangulation of the known points, with nearest-neighbour values
        outside their convex hull.

    Returns
    -------
    patterns
        float32 ``(ny, nx, rows, columns)``: the known patterns unchanged,
        the others interpolated. Positions are in scan-index units, so
        distances are isotropic for square steps.
    """
    from scipy.interpolate import (
        LinearNDInterpolator,
        NearestNDInterpolator,
        RegularGridInterpolator,
    )

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    known = np.asarray(known)
    if known.dtype != bool or known.ndim != 2:
        raise ValueError("known must be a 2D boolean array (the navigation shape)")
    shape = known.shape
    if tuple(data.shape[:2]) != shape or len(data.shape) != 4:
        raise ValueError(
            f"data must have shape {shape} + (rows, columns), got {tuple(data.shape)}"
        )
    if known.sum() < 1:
        raise ValueError("known selects no point to interpolate from")
    sig_shape = tuple(data.shape[2:])
    n_pixels = int(np.prod(sig_shape))
    out = np.empty(data.shape, np.float32)
    out[known] = np.asarray(data[known], dtype=np.float32)
    todo = np.argwhere(~known).astype(np.float64)
    if len(todo) == 0:
        return out

    grid = _subgrid(known)
    if grid is not None and min(len(grid[0]), len(grid[1])) >= 2:
        rows, cols = grid
        values = np.asarray(data[np.ix_(rows, cols)], dtype=np.float32)
        interpolator = RegularGridInterpolator(
            (rows.astype(float), cols.astype(float)),
            values.reshape(len(rows), len(cols), n_pixels),
            method=method,
            bounds_error=False,
            fill_value=None,
        )
        if method == "linear":
            # Points beyond the sub-grid take the nearest known pattern
            # instead of an extrapolated one.
            todo_clipped = np.column_stack(
                [
                    np.clip(todo[:, 0], rows[0], rows[-1]),
                    np.clip(todo[:, 1], cols[0], cols[-1]),
                ]
            )
        else:
            todo_clipped = todo
    else:
        points = np.argwhere(known).astype(np.float64)
        values = np.asarray(data[known], dtype=np.float32).reshape(
            len(points), n_pixels
        )
        nearest = NearestNDInterpolator(points, values)
        if method == "nearest" or len(points) < 3:
            interpolator = nearest
        else:
            linear = LinearNDInterpolator(points, values)

            def interpolator(p):
                result = linear(p)
                outside = np.isnan(result).any(axis=1)
                if outside.any():
                    result[outside] = nearest(p[outside])
                return result

        todo_clipped = todo
    step = max(1, _CHUNK_VALUES // n_pixels)
    idx = np.argwhere(~known)
    for start in range(0, len(todo), step):
        sl = slice(start, start + step)
        values = interpolator(todo_clipped[sl]).astype(np.float32)
        out[idx[sl, 0], idx[sl, 1]] = values.reshape(-1, *sig_shape)
    return out
