"""Reconstruction metrics: pattern MAE inside the aperture, map MAE, and the
orientation deviation between two pattern sets after Hough indexing.

The map MAE follows the paper's Eqs. 9-10: the mean absolute error over the
pixels inside the circular detector aperture, per pattern, averaged over the
map, in counts and in percent of the dataset's maximum intensity.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MapError",
    "aperture_mask",
    "hough_index",
    "map_mae",
    "orientation_deviation",
    "pattern_mae",
]


def aperture_mask(
    pattern_shape: tuple[int, int], radius: float | None = None
) -> np.ndarray:
    """Pixels inside the circular detector aperture.

    Parameters
    ----------
    pattern_shape
        ``(rows, columns)``.
    radius
        Radius in pixels; default: the inscribed circle, ``min(rows, cols) / 2``.

    Returns
    -------
    mask
        Boolean ``(rows, columns)``, True inside.
    """
    rows, cols = pattern_shape
    r = min(rows, cols) / 2 if radius is None else float(radius)
    v, u = np.mgrid[0:rows, 0:cols]
    return (u + 0.5 - cols / 2) ** 2 + (v + 0.5 - rows / 2) ** 2 <= r**2


def _as_array(x) -> np.ndarray:
    data = getattr(x, "data", x)
    if hasattr(data, "compute"):
        data = data.compute()
    return np.asarray(data)


def pattern_mae(a, b, aperture: np.ndarray | bool | None = True) -> np.ndarray:
    """Mean absolute difference per pattern inside the aperture.

    Parameters
    ----------
    a, b
        Patterns ``(..., rows, columns)`` (arrays or signals) on the same scale.
    aperture
        True: the inscribed circle (:func:`aperture_mask`); False/None: every
        pixel; or a boolean mask of the pattern shape.

    Returns
    -------
    mae
        ``(...)`` float64.
    """
    a, b = _as_array(a), _as_array(b)
    if a.shape != b.shape:
        raise ValueError(f"Shapes differ: {a.shape} and {b.shape}")
    if aperture is True:
        aperture = aperture_mask(a.shape[-2:])
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if aperture is None or aperture is False:
        return diff.mean(axis=(-2, -1))
    aperture = np.asarray(aperture, bool)
    if aperture.shape != a.shape[-2:]:
        raise ValueError(
            f"aperture shape {aperture.shape} != pattern shape {a.shape[-2:]}"
        )
    return diff[..., aperture].mean(axis=-1)


@dataclass(frozen=True)
class MapError:
    """Map-averaged MAE in counts and in percent of the dataset maximum."""

    counts: float
    percent_of_max: float
    per_pattern: np.ndarray

    def __str__(self) -> str:
        return f"MAE {self.counts:.1f} counts ({self.percent_of_max:.3f} % of max)"


def map_mae(
    reconstructed, measured, aperture: np.ndarray | bool | None = True, full_scale=None
) -> MapError:
    """The paper's map MAE (Eqs. 9-10) of ``reconstructed`` against ``measured``.

    ``full_scale`` defaults to the maximum of ``measured``.
    """
    per = pattern_mae(reconstructed, measured, aperture)
    scale = (
        float(_as_array(measured).max()) if full_scale is None else float(full_scale)
    )
    counts = float(per.mean())
    return MapError(counts, 100.0 * counts / scale, per)


def _phase_list(signal, phase_list):
    if phase_list is not None:
        return phase_list
    xmap = getattr(signal, "xmap", None)
    if xmap is not None:
        return xmap.phases
    raise ValueError(
        "No phase list: pass phase_list=orix.crystal_map.PhaseList(...) or give "
        "the signal a crystal map (s.xmap)"
    )


def hough_index(
    signal,
    phase_list=None,
    static_background: np.ndarray | None = None,
    n_bands: int = 9,
    **kwargs,
):
    """Hough-index patterns as a user would, with kikuchipy and PyEBSDIndex.

    The patterns are copied, divided by the static background (the signal's
    own, else ``static_background``, else the map's mean pattern), flattened
    by dynamic background removal, then indexed with the detector's indexer.

    Parameters
    ----------
    signal
        kikuchipy ``EBSD`` with a detector (PC) describing the patterns.
    phase_list
        orix ``PhaseList``; default: the phases of ``signal.xmap``.
    static_background
        Background to divide by; see above for the default.
    n_bands
        Bands per pattern for PyEBSDIndex.
    **kwargs
        Passed to ``EBSD.hough_indexing``; ``verbose=0`` (default) also
        silences kikuchipy's information printout.

    Returns
    -------
    xmap
        orix ``CrystalMap`` of the indexing.
    """
    phase_list = _phase_list(signal, phase_list)
    s = signal.deepcopy()
    if s._lazy:
        s.compute()
    if static_background is None:
        static_background = getattr(signal, "static_background", None)
    if static_background is None:
        nav = tuple(range(s.axes_manager.navigation_dimension))
        static_background = np.asarray(s.data, np.float32).mean(axis=nav)
    s.change_dtype("float32")
    s.remove_static_background(
        static_bg=np.asarray(static_background, np.float32), show_progressbar=False
    )
    s.remove_dynamic_background(show_progressbar=False)
    kwargs.setdefault("verbose", 0)
    with keep_numba_cache_dir():
        indexer = s.detector.get_indexer(phase_list, nBands=n_bands)
        if kwargs["verbose"]:
            return s.hough_indexing(phase_list, indexer, **kwargs)
        # kikuchipy prints an information block even with verbose=0.
        with contextlib.redirect_stdout(io.StringIO()):
            return s.hough_indexing(phase_list, indexer, **kwargs)


@contextlib.contextmanager
def keep_numba_cache_dir():
    """Undo PyEBSDIndex's process-wide ``NUMBA_CACHE_DIR`` on exit.

    PyEBSDIndex sets ``os.environ["NUMBA_CACHE_DIR"]`` when imported. Child
    processes (dask workers, notebook kernels, ``torchrun`` ranks) inherit it
    and then load kikuchipy's numba caches from PyEBSDIndex's folder, which
    crashed them with a segmentation fault here (PyEBSDIndex 0.3.10, numba
    0.68). This process has read its numba configuration already.
    """
    before = os.environ.get("NUMBA_CACHE_DIR")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("NUMBA_CACHE_DIR", None)
        else:
            os.environ["NUMBA_CACHE_DIR"] = before


def orientation_deviation(
    xmap_a, xmap_b, threshold: float = 4.0
) -> tuple[np.ndarray, float]:
    """Misorientation angle (deg) between two indexings, point by point.

    Parameters
    ----------
    xmap_a, xmap_b
        orix ``CrystalMap`` of the same points (e.g. from :func:`hough_index`
        of measured and reconstructed patterns), one phase.
    threshold
        Angle in degrees for the reported fraction.

    Returns
    -------
    angles
        Misorientation angles in degrees, the map's shape.
    fraction
        Share of points with an angle >= ``threshold``.
    """
    from orix.quaternion import Orientation

    if xmap_a.size != xmap_b.size:
        raise ValueError(f"Maps differ in size: {xmap_a.size} and {xmap_b.size}")
    symmetry = xmap_a.phases[xmap_a.phases.ids[0]].point_group
    oa = Orientation(xmap_a.rotations, symmetry=symmetry)
    ob = Orientation(xmap_b.rotations, symmetry=symmetry)
    angles = np.rad2deg(oa.angle_with(ob)).reshape(xmap_a.shape)
    return angles, float((angles >= threshold).mean())
