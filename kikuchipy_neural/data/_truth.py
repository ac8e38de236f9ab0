"""The ground truth attached to synthetic EBSD maps as ``s.truth``."""

from __future__ import annotations

from functools import cached_property

import numpy as np
from kikuchipy.detectors import EBSDDetector
from numpy.typing import ArrayLike
from orix.crystal_map import CrystalMap
from orix.quaternion import Orientation, Rotation

from kikuchipy_neural.data._microstructure import _as_xy
from kikuchipy_neural.data._patterns import _PatternModel


class SyntheticTruth:
    """Ground truth of a synthetic EBSD map (attached as ``s.truth``).

    Positions are continuous calibrated scan coordinates ``xy`` with x first;
    scan point (row i, column j) sits at ``(x0 + j * step, y0 + i * step)``.
    Distances are in calibrated units (um by default).

    Attributes
    ----------
    microstructure : Microstructure
        Seeds, orientations, twins and gradients of the map.
    grain_id : numpy.ndarray
        (ny, nx) grain id under each scan point (twins have their own ids,
        from ``n_grains`` on; see ``parent_grain``).
    orientations : orix.quaternion.Orientation
        (ny, nx) true orientations at the beam centres, m-3m symmetry.
    grain_orientations : orix.quaternion.Orientation
        (n_grain_ids,) orientation of every grain id at its parent's seed.
    parent_grain, is_twin : numpy.ndarray
        (n_grain_ids,) Voronoi cell of every grain id; whether it is a twin.
    xy : numpy.ndarray
        (ny, nx, 2) scan-point coordinates.
    clean : numpy.ndarray
        (ny, nx, h, w) float32 noise-free expected counts, bit for bit
        ``patterns(xy)``.
    background : numpy.ndarray
        (h, w) float32 expected counts of the background alone.
    band_contrast : numpy.ndarray
        (n_grain_ids,) rms band contrast of every grain.
    detector : kikuchipy.detectors.EBSDDetector
        The map's detector (per-point PCs when a PC gradient was asked for).
    dose, gain : float
        Mean electrons per pixel; counts per electron.
    noise : bool
        Whether the map's counts carry Poisson noise.
    beam_radius, beam_aspect : float
        Footprint radius along x (calibrated units) and y/x axis ratio.
    step : float
        Scan step (calibrated units); origin ``(x0, y0)``.
    seed : int
        Seed that reproduces the map (drawn when None was passed).
    """

    def __init__(
        self,
        model: _PatternModel,
        xy: np.ndarray,
        clean: np.ndarray,
        detector: EBSDDetector,
        noise: bool,
        seed: int,
        noise_seed: int | None,
        beam_radius: float,
        beam_aspect: float,
    ) -> None:
        ms = model.microstructure
        self._model = model
        self.microstructure = ms
        self.xy = xy
        self.clean = clean
        self.detector = detector
        self.noise = noise
        self.seed = seed
        self.noise_seed = noise_seed
        self.beam_radius = beam_radius
        self.beam_aspect = beam_aspect
        self.step = model.step
        self.origin = (float(xy[0, 0, 0]), float(xy[0, 0, 1]))
        self.grain_id = ms.grain_id_at(xy)
        self.orientations = self.orientation_at(xy)
        self.grain_orientations = ms.grain_orientations()
        self.parent_grain = ms.parent
        self.is_twin = ms.is_twin
        self.band_contrast = model.band_contrast
        self._noise_floor = float("nan")  # set by the builder

    # ------------------------------------------------------- descriptions

    @property
    def kind(self) -> str:
        """``"voronoi"`` (random polycrystal), ``"two_grain"`` or ``"custom"``."""
        return self.microstructure.kind

    @property
    def n_grains(self) -> int:
        """Number of Voronoi grains (before twinning), as asked for."""
        return self.microstructure.n_cells

    @property
    def n_twins(self) -> int:
        """Number of twin lamellae."""
        return self.microstructure.n_twins

    @property
    def n_grain_ids(self) -> int:
        """Number of grain ids: grains plus twin lamellae."""
        return self.microstructure.n_grain_ids

    @property
    def boundary_x(self) -> float | None:
        """x of the vertical boundary of a two-grain map, else None."""
        return self.microstructure.boundary_x

    @property
    def dose(self) -> float:
        """Mean number of electrons per detector pixel."""
        return self._model.dose

    @property
    def gain(self) -> float:
        """Counts per electron (count variance = gain x expected counts)."""
        return self._model.gain

    @property
    def background(self) -> np.ndarray:
        """(h, w) float32 expected counts of the background alone."""
        m = self._model
        return (m.background * (m.gain * m.dose)).astype(np.float32)

    @property
    def beam_reach(self) -> float:
        """Largest distance of the beam footprint from its centre."""
        return self.beam_radius * max(1.0, self.beam_aspect)

    @cached_property
    def boundary_distance_grid(self) -> np.ndarray:
        """(ny, nx) distance of every scan point to the nearest boundary."""
        return self.boundary_distance(self.xy)

    def interior_mask(self, margin: float = 0.0) -> np.ndarray:
        """(ny, nx) True where the whole beam footprint, grown by ``margin``
        (calibrated units), lies inside one grain: pure, unmixed patterns."""
        return self.boundary_distance_grid > self.beam_reach + margin

    # ------------------------------------------------------------ queries

    def grain_id_at(self, xy: ArrayLike) -> np.ndarray:
        """Grain id at points ``xy`` (..., 2) -> (...) int."""
        return self.microstructure.grain_id_at(xy)

    def orientation_at(self, xy: ArrayLike) -> Orientation:
        """True orientation at points ``xy`` (..., 2) -> Orientation (...)."""
        return self.microstructure.orientation_at(xy)

    def boundary_distance(self, xy: ArrayLike) -> np.ndarray:
        """Distance (calibrated units) of points ``xy`` (..., 2) to the
        nearest grain or twin boundary -> (...); exact, ``inf`` if the map
        has a single grain."""
        return self.microstructure.boundary_distance(xy)

    def pc_at(self, xy: ArrayLike) -> np.ndarray:
        """Projection centre (Bruker) of a beam at points ``xy`` -> (..., 3)."""
        return self._model.pc_at(_as_xy(xy))

    def beam_fractions(self, xy: ArrayLike) -> np.ndarray:
        """Fraction of the beam footprint at ``xy`` (..., 2) in each grain id
        -> (..., n_grain_ids), rows summing to 1."""
        xy = _as_xy(xy)
        p = xy.reshape(-1, 2)
        out = np.zeros((len(p), self.n_grain_ids))
        index, grain, fraction, _ = self._model.footprint(p)
        out[index, grain] = fraction
        return out.reshape(xy.shape[:-1] + (self.n_grain_ids,))

    def patterns(self, xy: ArrayLike) -> np.ndarray:
        """Noise-free expected-count patterns at any beam positions.

        Parameters
        ----------
        xy
            (..., 2) positions, x first, calibrated units.

        Returns
        -------
        numpy.ndarray
            (..., h, w) float32; beam mixtures near boundaries included.
            Within a mixture, each grain's pattern takes the orientation at
            the centroid of that grain's part of the footprint (exact mean
            orientation of a linear gradient) and the PC of the beam centre.
        """
        xy = _as_xy(xy)
        out = self._model.render(xy.reshape(-1, 2))
        return out.reshape(xy.shape[:-1] + out.shape[1:])

    def grain_patterns(self, grain_id: ArrayLike, xy: ArrayLike) -> np.ndarray:
        """Noise-free patterns of a beam at ``xy`` taken wholly inside the
        given grains: the pure patterns that beam mixtures are made of.

        Parameters
        ----------
        grain_id
            Grain ids, broadcastable with ``xy.shape[:-1]``.
        xy
            (..., 2) beam positions; the grain's orientation field (gradient
            included) is evaluated there, as is the PC.

        Returns
        -------
        numpy.ndarray
            (..., h, w) float32 expected counts.
        """
        xy = _as_xy(xy)
        grain_id = np.asarray(grain_id)
        if not np.issubdtype(grain_id.dtype, np.integer) or np.any(
            (grain_id < 0) | (grain_id >= self.n_grain_ids)
        ):
            raise ValueError(f"grain ids must be ints in [0, {self.n_grain_ids})")
        shape = np.broadcast_shapes(grain_id.shape, xy.shape[:-1])
        g = np.broadcast_to(grain_id, shape).reshape(-1)
        p = np.broadcast_to(xy, shape + (2,)).reshape(-1, 2)
        out = self._model.render(p, grain=g)
        return out.reshape(shape + out.shape[1:])

    def orientation_error(self, rotations: Rotation | CrystalMap) -> np.ndarray:
        """Disorientation angle (deg, m-3m) of estimated orientations to the
        truth, shape (ny, nx); e.g. of the crystal map Hough indexing returns.
        """
        if isinstance(rotations, CrystalMap):
            rotations = rotations.rotations
        est = Orientation(rotations.data.reshape(self.grain_id.shape + (4,)))
        est.symmetry = self.orientations.symmetry
        return np.rad2deg(est.angle_with(self.orientations))

    def noise_floor_mae(self, measured: ArrayLike | None = None) -> float:
        """Mean absolute difference (counts) between measured patterns
        (default: the map's counts as built) and ``clean``: the error of a
        "denoiser" that returns its noisy input, a floor for comparisons."""
        if measured is None:
            # Computed when the map was built: s.data may since have been
            # processed in place (e.g. by remove_static_background).
            return self._noise_floor
        data = np.asarray(measured)
        if data.shape != self.clean.shape:
            raise ValueError(
                f"measured must have the map's shape {self.clean.shape}, got {data.shape}"
            )
        return float(np.mean(np.abs(data.astype(np.float64) - self.clean)))

    def __repr__(self) -> str:
        ny, nx, h, w = self.clean.shape
        return (
            f"<SyntheticTruth {self.kind}: {ny}x{nx} scan of {h}x{w} patterns, "
            f"{self.n_grains} grains + {self.n_twins} twins, seed {self.seed}>"
        )
