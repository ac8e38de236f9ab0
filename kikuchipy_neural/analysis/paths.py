"""Analysis along a straight path through the scan (the paper's Fig. 6c).

:func:`path_profile` decodes patterns along a segment with
``NeuralEBSD.neural_path``, Hough-indexes them with kikuchipy/PyEBSDIndex and
collects, per point, the indexing confidence, the misorientation to the
start and to the previous point, and the diffraction gradient of the model;
:meth:`PathProfile.plot` draws them against the distance along the path.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

from kikuchipy_neural.analysis.metrics import keep_numba_cache_dir

__all__ = ["PathProfile", "hough_index", "path_profile"]


@dataclass
class PathProfile:
    """Per-point results along a path (see :func:`path_profile`).

    Attributes
    ----------
    xy
        ``(n, 2)`` calibrated positions, ``xy[0]`` the start.
    distance
        ``(n,)`` distance from the start, calibrated units.
    units
        Units of positions and distances.
    xmap
        orix ``CrystalMap`` of the Hough indexing (properties ``cm``
        (confidence metric), ``pq`` (pattern quality), ``fit`` (mean
        angular deviation, deg), ``nmatch`` (bands matched)).
    misorientation_to_start
        ``(n,)`` disorientation angle (deg) of each point to the first.
    misorientation_step
        ``(n,)`` disorientation angle (deg) to the previous point (0 first).
    gradient
        ``(n,)`` diffraction gradient ``S`` of the model (per calibrated
        unit), or None when not asked for.
    patterns
        The decoded path, a kikuchipy ``EBSD`` signal (background-corrected
        as it was indexed).
    """

    xy: np.ndarray
    distance: np.ndarray
    units: str
    xmap: object
    misorientation_to_start: np.ndarray
    misorientation_step: np.ndarray
    gradient: np.ndarray | None
    patterns: object

    @property
    def confidence(self) -> np.ndarray:
        """PyEBSDIndex's confidence metric ``cm`` along the path, in [0, 1]."""
        return np.asarray(self.xmap.prop["cm"])

    def plot(self, boundaries=None, reference=None, axes=None):
        """Confidence, misorientation and diffraction gradient vs distance.

        Parameters
        ----------
        boundaries
            Distances (calibrated units) at which to draw vertical lines,
            e.g. where the path crosses known grain boundaries.
        reference
            Optional ``(label, profile)``: another :class:`PathProfile` over
            the same path (e.g. of the measured patterns at the nearest
            scan points) drawn for comparison.
        axes
            Three matplotlib axes to draw on; default a new figure.

        Returns
        -------
        figure
            The matplotlib figure.
        """
        import matplotlib.pyplot as plt

        n_rows = 3 if self.gradient is not None else 2
        if axes is None:
            fig, axes = plt.subplots(
                n_rows,
                1,
                sharex=True,
                figsize=(7, 1.9 * n_rows + 0.6),
                layout="constrained",
            )
        else:
            fig = axes[0].figure
        d = self.distance
        axes[0].plot(d, self.confidence, ".-", color="C0", label="neural path")
        axes[1].plot(
            d, self.misorientation_to_start, ".-", color="C0", label="to start"
        )
        axes[1].plot(
            d, self.misorientation_step, ".-", color="C1", label="to previous point"
        )
        if reference is not None:
            label, other = reference
            axes[0].plot(
                other.distance,
                other.confidence,
                "s",
                mfc="none",
                color="k",
                label=label,
            )
            axes[1].plot(
                other.distance,
                other.misorientation_to_start,
                "s",
                mfc="none",
                color="k",
                label=f"{label}, to start",
            )
        axes[0].set_ylabel("confidence\nmetric")
        axes[1].set_ylabel("misorientation\n(deg)")
        if self.gradient is not None:
            axes[2].plot(d, self.gradient, ".-", color="C2")
            axes[2].set_ylabel(f"diffraction\ngradient S\n(per {self.units})")
        for ax in axes[:n_rows]:
            for b in [] if boundaries is None else np.atleast_1d(boundaries):
                ax.axvline(b, color="0.5", ls="--", lw=0.8)
        axes[0].legend(frameon=False, fontsize="small")
        axes[1].legend(frameon=False, fontsize="small")
        axes[n_rows - 1].set_xlabel(f"distance along the path ({self.units})")
        return fig


def _phase_list(signal, phase_list):
    if phase_list is not None:
        return phase_list
    from orix.crystal_map import PhaseList

    xmap = getattr(signal, "xmap", None)
    phases = None if xmap is None else xmap.phases_in_data
    if (
        phases is None
        or len(phases.ids) == 0
        or phases[phases.ids[0]].point_group is None
    ):
        model = signal.neural_model
        phases = None if model is None else model.phases
    if phases is None or len(phases.ids) == 0:
        raise ValueError(
            "No phase to index with: pass phase_list=orix.crystal_map.PhaseList(...)"
        )
    return PhaseList(phases[phases.ids[0]])


def hough_index(patterns, phase_list, indexer=None, **indexer_kwargs):
    """Background-correct ``patterns`` (in place) and Hough-index them.

    The static background is removed when the signal carries one, then the
    dynamic background; PyEBSDIndex's report is silenced. ``indexer``
    defaults to ``patterns.detector.get_indexer(phase_list, nBands=9,
    **indexer_kwargs)``. Returns the crystal map.
    """
    if patterns.static_background is not None:
        patterns.remove_static_background(show_progressbar=False)
    patterns.remove_dynamic_background(show_progressbar=False)
    with keep_numba_cache_dir(), contextlib.redirect_stdout(io.StringIO()):
        if indexer is None:
            indexer = patterns.detector.get_indexer(
                phase_list, **{"nBands": 9, **indexer_kwargs}
            )
        return patterns.hough_indexing(phase_list, indexer, verbose=0)


def path_profile(
    signal,
    start,
    end,
    n: int = 100,
    *,
    phase_list=None,
    indexer=None,
    gradient: bool = True,
    extrapolate: bool = False,
    **indexer_kwargs,
) -> PathProfile:
    """Decode, Hough-index and characterise the patterns along a segment.

    Parameters
    ----------
    signal
        A ``NeuralEBSD`` signal with a fitted model.
    start, end
        ``(x, y)`` ends of the segment, calibrated units.
    n
        Number of points, both ends included.
    phase_list
        orix ``PhaseList`` with one FCC or BCC phase; default the phase of
        ``signal.xmap`` (or of the model).
    indexer
        A PyEBSDIndex ``EBSDIndexer``; default one from the path's detector
        (per-point PCs interpolated along the path), ``nBands=9``.
    gradient
        Also compute the model's diffraction gradient ``S`` along the path.
    extrapolate
        Allow ends outside the scanned rectangle.
    **indexer_kwargs
        Passed to ``EBSDDetector.get_indexer`` when no indexer is given.

    Returns
    -------
    profile
        :class:`PathProfile`; ``profile.plot()`` draws it.
    """
    from orix.quaternion import Orientation

    from kikuchipy_neural.analysis.queries import path_xy

    model = signal._require_model()
    phase_list = _phase_list(signal, phase_list)
    path = signal.neural_path(start, end, n, lazy=False, extrapolate=extrapolate)
    xy, _ = path_xy(start, end, n)
    xmap = hough_index(path, phase_list, indexer, **indexer_kwargs)
    symmetry = phase_list[phase_list.ids[0]].point_group
    ori = Orientation(xmap.rotations.data, symmetry=symmetry)
    to_start = np.rad2deg(ori.angle_with(ori[0]))
    step = np.zeros(ori.size)
    step[1:] = np.rad2deg(ori[1:].angle_with(ori[:-1]))
    axis = path.axes_manager.navigation_axes[0]
    return PathProfile(
        xy=xy,
        distance=np.asarray(axis.axis, dtype=np.float64),
        units=model.geometry.units,
        xmap=xmap,
        misorientation_to_start=np.asarray(to_start, dtype=np.float64),
        misorientation_step=step,
        gradient=model.gradient(xy, extrapolate=True) if gradient else None,
        patterns=path,
    )
