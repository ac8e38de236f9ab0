"""Per-point intensity: a gain and an offset per scan point, fitted after training.

Real scans vary in overall intensity from pattern to pattern (beam current,
exposure, background drift) in a way that is not spatially coherent: PCA
scores carry it, a continuous field cannot. With the fit option
``point_intensity=True`` each pattern the fit was allowed to read gets the
least-squares gain ``g`` and offset ``o`` that map the field's pattern onto
the measured one (``measured ~ g * field + o``, over all pixels). The model
stores them (4 bytes per point in reduced precision files) and applies them
wherever it decodes: exactly at scan points, linearly interpolated between
them (:meth:`~kikuchipy_neural.geometry.ScanGeometry.interpolate`). Points the fit could not read
(masked, non-finite) take the values of the nearest point it could. The
diffraction gradient stays that of the field alone: an overall intensity
change does not move a band.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from kikuchipy_neural.geometry import ScanGeometry
from kikuchipy_neural.training.data import HeldPatterns, iter_patterns

__all__ = ["apply_point_intensity", "fit_point_intensity"]


def fit_point_intensity(
    model,
    source,
    readable: np.ndarray,
    held: Sequence[HeldPatterns] = (),
    show_progressbar: bool = False,
) -> np.ndarray:
    """Least-squares gain and offset of every scan point.

    Parameters
    ----------
    model
        The fitted :class:`~kikuchipy_neural.NeuralEBSDModel` (without point
        intensities).
    source
        :class:`~kikuchipy_neural.training.data.PatternSource` of the scan.
    readable
        Flat boolean mask of the points whose patterns may be read.
    held
        Patterns of some of those points already in memory, taken instead of
        reading them from ``source``.
    show_progressbar
        Show a progress bar over the points (the other points are read from
        ``source``: minutes for a large map on disk).

    Returns
    -------
    table
        float32 ``(n_points, 2)``: gain and offset in measured units.
    """
    from tqdm.auto import tqdm

    if model.point_intensity is not None:
        raise ValueError("The model already has per-point intensities")
    g = model.geometry
    table = np.full((g.n_points, 2), np.nan, np.float32)
    xy_all = g.index_to_xy(np.arange(g.n_points))
    with tqdm(
        total=int(np.count_nonzero(readable)),
        desc="point_intensity",
        unit="pattern",
        disable=not show_progressbar,
    ) as bar:
        for idx, raw in iter_patterns(source, readable, held):
            field = model.query(xy_all[idx], extrapolate=True).reshape(len(raw), -1)
            # float64 in blocks of rows: on a whole piece (up to 64 MB of
            # float32) the float64 copies and temporaries would take 0.7 GB.
            for start in range(0, len(raw), _ROWS):
                rows = slice(start, start + _ROWS)
                table[idx[rows]] = _gain_offset(field[rows], raw[rows])
            bar.update(len(idx))
    known = np.isfinite(table[:, 0])
    if not known.any():
        raise ValueError("No readable scan point to fit per-point intensities on")
    if not known.all():
        table[~known] = table[_nearest_known(g, known)][~known]
    return table


# Rows per float64 block of the least-squares fit (about 15 MB per array at
# 120 x 120 px); rows are fitted independently, so the block size does not
# change the result.
_ROWS = 128


def _gain_offset(field: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Least-squares gain and offset, ``(n, 2)``, of ``raw ~ gain * field +
    offset`` row by row."""
    measured = raw.astype(np.float64)
    field = field.astype(np.float64)
    f_mean = field.mean(axis=1, keepdims=True)
    m_mean = measured.mean(axis=1, keepdims=True)
    fc = field - f_mean
    var = (fc**2).sum(axis=1)
    # A flat field pattern has no gain to fit: keep 1.
    gain = np.where(
        var > 0, (fc * (measured - m_mean)).sum(axis=1) / np.maximum(var, 1e-300), 1
    )
    return np.column_stack([gain, m_mean[:, 0] - gain * f_mean[:, 0]])


def _nearest_known(geometry: ScanGeometry, known: np.ndarray) -> np.ndarray:
    """Flat index of the nearest known point for every point."""
    if geometry.scattered:
        from scipy.spatial import cKDTree

        xy = geometry.index_to_xy(np.arange(geometry.n_points))
        index = np.flatnonzero(known)
        return index[cKDTree(xy[known]).query(xy)[1]]
    grid = known.reshape(geometry.nav_shape)
    _, (rows, cols) = ndimage.distance_transform_edt(~grid, return_indices=True)
    return (rows * geometry.nx + cols).ravel()


def apply_point_intensity(
    geometry: ScanGeometry, table: np.ndarray, xy: np.ndarray, patterns: np.ndarray
) -> None:
    """``patterns = gain(xy) * patterns + offset(xy)`` in place.

    ``xy`` ``(n, 2)`` calibrated positions, ``patterns`` ``(n, n_pixels)``.
    Gain and offset are interpolated by :meth:`ScanGeometry.interpolate`
    from positions clamped to the scan's rectangle, so that extrapolated
    queries take the values at the scan's edge.
    """
    (x0, x1), (y0, y1) = geometry.x_range, geometry.y_range
    inside = np.column_stack([np.clip(xy[:, 0], x0, x1), np.clip(xy[:, 1], y0, y1)])
    values = geometry.interpolate(table, inside)
    patterns *= values[:, :1].astype(patterns.dtype)
    patterns += values[:, 1:].astype(patterns.dtype)
