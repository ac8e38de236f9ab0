"""Scan geometry: calibrated scan coordinates and the network's input space.

Scan positions are ``(x, y)`` in the signal's calibrated navigation units: a
point at row ``i``, column ``j`` sits at ``(x0 + j*dx, y0 + i*dy)``. The
networks see coordinates normalised isotropically: the centre of the scanned
rectangle maps to 0 and its longer side spans [-1, 1]. Isotropy keeps grains
round in network space, so a SIREN's frequencies mean the same along x and y.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

__all__ = ["ScanGeometry"]


@dataclass(frozen=True)
class ScanGeometry:
    """Navigation axes of a 2D scan and the pattern shape.

    Parameters
    ----------
    nx, ny
        Number of scan columns and rows.
    x0, y0
        Calibrated coordinate of column 0 and row 0.
    dx, dy
        Calibrated step along x (columns) and y (rows); may be negative.
    units
        Units of the navigation axes (e.g. ``"um"``).
    pattern_shape
        Detector shape ``(rows, columns)``.
    positions
        Explicit ``(x, y)`` of every scan point, for scans that are not on a
        square grid (e.g. hexagonal grids, or any scattered points) of a
        signal with one navigation axis; build with :meth:`with_positions`.
        Such a geometry is a line of ``nx`` points (``ny = 1``) whose
        scanned area is the bounding rectangle of the points; ``x0, y0`` are
        its lower corner and ``dx = dy`` the median nearest-neighbour
        distance (the "step").
    """

    nx: int
    ny: int
    x0: float
    y0: float
    dx: float
    dy: float
    units: str
    pattern_shape: tuple[int, int]
    positions: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        # HyperSpy's unset units are traits' Undefined, whose str() is
        # "<undefined>"; one spelling ("px") for every way a geometry is made
        # (signals, stand-ins, model files) keeps scans comparable.
        if str(self.units) in ("", "None", "<undefined>"):
            object.__setattr__(self, "units", "px")

    # ------------------------------------------------------------ building

    @classmethod
    def from_signal(cls, signal) -> ScanGeometry:
        """Read the geometry from a HyperSpy/kikuchipy signal.

        A 1D navigation space (a line scan) is treated as one row.
        """
        nav = signal.axes_manager.navigation_axes
        sig = signal.axes_manager.signal_axes
        if len(sig) != 2:
            raise ValueError(f"Expected 2D patterns, got {len(sig)} signal dimensions")
        if len(nav) == 0:
            raise ValueError(
                "The signal has no navigation axes: a neural field needs a scan "
                "(at least one navigation axis), not a single pattern."
            )
        if len(nav) > 2:
            raise ValueError(f"Expected at most 2 navigation axes, got {len(nav)}")
        ax_x = nav[0]
        units = str(ax_x.units) if ax_x.units not in (None, "<undefined>") else "px"
        if len(nav) == 1:
            y0, dy, ny = 0.0, float(ax_x.scale), 1
        else:
            ax_y = nav[1]
            y0, dy, ny = float(ax_y.offset), float(ax_y.scale), int(ax_y.size)
        for name, step in (("x", ax_x.scale), ("y", dy)):
            if not np.isfinite(step) or step == 0:
                raise ValueError(f"Navigation axis {name} has an invalid scale {step}")
        return cls(
            nx=int(ax_x.size),
            ny=ny,
            x0=float(ax_x.offset),
            y0=y0,
            dx=float(ax_x.scale),
            dy=dy,
            units=units,
            pattern_shape=(int(sig[1].size), int(sig[0].size)),
        )

    def with_positions(self, positions) -> ScanGeometry:
        """This geometry with explicit point coordinates (scattered scan).

        Parameters
        ----------
        positions
            ``(n_points, 2)`` calibrated ``(x, y)`` of every scan point, in
            the order of the (single) navigation axis.

        Raises
        ------
        ValueError
            For a 2D scan, a wrong shape, non-finite or repeated points.
        """
        xy = np.asarray(positions, dtype=np.float64)
        if self.ny != 1:
            raise ValueError(
                "Explicit positions need a signal with one navigation axis (the "
                f"patterns as a list); this scan is {self.ny}x{self.nx}."
            )
        if xy.shape != (self.nx, 2):
            raise ValueError(
                f"positions must have shape ({self.nx}, 2) (one (x, y) per "
                f"pattern), got {xy.shape}"
            )
        if not np.all(np.isfinite(xy)):
            raise ValueError("positions contain NaN or infinite coordinates")
        if len(xy) < 2:
            raise ValueError("A scattered scan needs at least two positions")
        from scipy.spatial import cKDTree

        nearest = cKDTree(xy).query(xy, k=2)[0][:, 1]
        if not nearest.min() > 0:
            raise ValueError(
                f"positions contain {int((nearest == 0).sum())} repeated point(s)"
            )
        step = float(np.median(nearest))
        return ScanGeometry(
            nx=self.nx,
            ny=1,
            x0=float(xy[:, 0].min()),
            y0=float(xy[:, 1].min()),
            dx=step,
            dy=step,
            units=self.units,
            pattern_shape=self.pattern_shape,
            positions=tuple((float(x), float(y)) for x, y in xy),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["positions"] is None:
            # Grid scans keep the keys they always had (file formats).
            del d["positions"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ScanGeometry:
        d = dict(d)
        d["pattern_shape"] = tuple(int(v) for v in d["pattern_shape"])
        if d.get("positions") is not None:
            d["positions"] = tuple(
                (float(x), float(y))
                for x, y in np.asarray(d["positions"]).reshape(-1, 2)
            )
        return cls(**d)

    # ---------------------------------------------------------- properties

    @property
    def scattered(self) -> bool:
        """Whether the scan points have explicit coordinates (no grid)."""
        return self.positions is not None

    @cached_property
    def _positions_array(self) -> np.ndarray:
        # cached_property writes the instance __dict__ directly, which a
        # frozen dataclass allows; converting the tuples once keeps queries fast.
        return np.asarray(self.positions, dtype=np.float64).reshape(-1, 2)

    @cached_property
    def _triangulation(self):
        # Interpolation of scattered scans runs once per decoded chunk:
        # triangulate the points once, not per call.
        from scipy.spatial import Delaunay

        return Delaunay(self._positions_array)

    @cached_property
    def _tree(self):
        from scipy.spatial import cKDTree

        return cKDTree(self._positions_array)

    @property
    def nav_shape(self) -> tuple[int, int]:
        """Scan shape ``(ny, nx)``."""
        return (self.ny, self.nx)

    @property
    def n_points(self) -> int:
        return self.ny * self.nx

    @property
    def n_pixels(self) -> int:
        return self.pattern_shape[0] * self.pattern_shape[1]

    @property
    def x_range(self) -> tuple[float, float]:
        if self.scattered:
            x = self._positions_array[:, 0]
            return (float(x.min()), float(x.max()))
        ends = (self.x0, self.x0 + (self.nx - 1) * self.dx)
        return (min(ends), max(ends))

    @property
    def y_range(self) -> tuple[float, float]:
        if self.scattered:
            y = self._positions_array[:, 1]
            return (float(y.min()), float(y.max()))
        ends = (self.y0, self.y0 + (self.ny - 1) * self.dy)
        return (min(ends), max(ends))

    @property
    def step(self) -> float:
        """The smaller absolute scan step, the unit of "one step"."""
        steps = [abs(self.dx)] + ([abs(self.dy)] if self.ny > 1 else [])
        return float(min(steps))

    @property
    def _centre_and_half_extent(self) -> tuple[np.ndarray, float]:
        (xa, xb), (ya, yb) = self.x_range, self.y_range
        centre = np.array([(xa + xb) / 2, (ya + yb) / 2])
        half = max(xb - xa, yb - ya) / 2
        # A single point or a single row still needs a finite scale.
        return centre, (half if half > 0 else self.step)

    # --------------------------------------------------------- coordinates

    def grid_xy(self, factor: float = 1.0) -> np.ndarray:
        """Calibrated coordinates of a grid ``factor`` times finer than the scan.

        The finer grid covers the same rectangle with steps ``dx / factor``
        and ``dy / factor``: ``floor((n - 1) * factor) + 1`` points per axis,
        so ``factor=1`` gives the scan grid, the first corner is always kept,
        and so is the far one when ``(n - 1) * factor`` is whole (a
        non-integer factor never reaches past the scan).

        A scattered scan (:attr:`scattered`) has no grid: ``factor=1`` gives
        its points as ``(1, n, 2)``, other factors raise ``ValueError`` (see
        :meth:`square_grid_xy`).

        Returns
        -------
        xy
            Array of shape ``(ny', nx', 2)``; ``xy[..., 0]`` is x.
        """
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"factor must be a positive number, got {factor}")
        if self.scattered:
            if factor != 1:
                raise ValueError(
                    "A scan with explicit positions has no grid to refine; use "
                    "square_grid_xy(step) for a square grid over its area."
                )
            return self._positions_array.reshape(1, -1, 2).copy()
        nx, ny = self.fine_shape(factor)[::-1]
        xs = self.x0 + np.arange(nx) * self.dx / factor
        ys = self.y0 + np.arange(ny) * self.dy / factor
        x, y = np.meshgrid(xs, ys)
        return np.stack([x, y], axis=-1)

    def fine_shape(self, factor: float) -> tuple[int, int]:
        """``(ny', nx')`` of :meth:`grid_xy` at ``factor``."""
        if self.scattered:
            if factor != 1:
                raise ValueError("A scan with explicit positions has no grid to refine")
            return self.nav_shape
        # The tolerance keeps whole products whole despite rounding errors.
        return (
            int(np.floor((self.ny - 1) * factor + 1e-9)) + 1,
            int(np.floor((self.nx - 1) * factor + 1e-9)) + 1,
        )

    def square_grid_xy(self, step: float | None = None) -> np.ndarray:
        """A square grid of spacing ``step`` over the scanned rectangle.

        Starts at the lower corner ``(min x, min y)`` and never reaches past
        the scan, so every point can be queried without extrapolation. This
        is how a scattered scan (e.g. a hexagonal grid) is resampled onto a
        square grid.

        Parameters
        ----------
        step
            Grid spacing in calibrated units; default :attr:`step`.

        Returns
        -------
        xy
            ``(ny', nx', 2)`` calibrated coordinates, x increasing along
            columns and y along rows.
        """
        step = self.step if step is None else float(step)
        if not np.isfinite(step) or step <= 0:
            raise ValueError(f"step must be a positive number, got {step}")
        axes = []
        for lo, hi in (self.x_range, self.y_range):
            n = int(np.floor((hi - lo) / step + 1e-9)) + 1
            axes.append(lo + np.arange(n) * step)
        x, y = np.meshgrid(*axes)
        return np.stack([x, y], axis=-1)

    def point_spacing(self, flat_index: np.ndarray | None = None) -> float:
        """Typical distance between neighbouring points of a subset of the scan.

        The median over the points of the distance to their third nearest
        neighbour (the second on a line scan): one step for the full grid,
        or any region of it, also with a few points missing (the edges and
        scattered holes keep three neighbours one step away); ``k`` steps
        for a ``[::k, ::k]`` subgrid; about ``0.9 / sqrt(density)`` for
        points drawn at random; the lattice constant of a hexagonal grid.
        This is the distance a field trained on those points has to
        interpolate over, so it sets the coordinate frequencies of the
        fields (see :class:`kikuchipy_neural.training.FitOptions`).

        Parameters
        ----------
        flat_index
            Flat (row-major) indices of the points; default all.

        Returns
        -------
        spacing
            In calibrated units; :attr:`step` for too few points.
        """
        from scipy.spatial import cKDTree

        index = np.arange(self.n_points) if flat_index is None else flat_index
        xy = self.index_to_xy(np.asarray(index, dtype=np.int64).ravel())
        line = not self.scattered and min(self.nx, self.ny) == 1
        k = 2 if line else 3
        if len(xy) <= k:
            return self.step
        distance = cKDTree(xy).query(xy, k=k + 1)[0][:, k]
        return float(np.median(distance))

    def check_inside(self, xy: np.ndarray, extrapolate: bool = False) -> None:
        """Raise ``ValueError`` for points outside the scanned rectangle.

        Points within a millionth of a step of the edge count as inside, so
        grid points computed in floating point always pass.
        """
        xy = np.asarray(xy, dtype=np.float64)
        if xy.shape[-1] != 2:
            raise ValueError(f"xy must have a last axis of length 2, got {xy.shape}")
        if not np.all(np.isfinite(xy)):
            raise ValueError("xy contains NaN or infinite coordinates")
        if extrapolate or xy.size == 0:
            return
        tol = 1e-6 * self.step
        (xa, xb), (ya, yb) = self.x_range, self.y_range
        x, y = xy[..., 0], xy[..., 1]
        outside = (x < xa - tol) | (x > xb + tol) | (y < ya - tol) | (y > yb + tol)
        if outside.any():
            first = xy.reshape(-1, 2)[np.flatnonzero(outside.ravel())[0]]
            raise ValueError(
                f"{int(outside.sum())} point(s) lie outside the scanned area "
                f"x in [{xa:g}, {xb:g}], y in [{ya:g}, {yb:g}] {self.units} "
                f"(e.g. ({first[0]:g}, {first[1]:g})); pass extrapolate=True to "
                "query them anyway."
            )

    def normalize(self, xy: np.ndarray) -> np.ndarray:
        """Calibrated ``(x, y)`` -> network input coordinates (float32)."""
        centre, half = self._centre_and_half_extent
        return ((np.asarray(xy, dtype=np.float64) - centre) / half).astype(np.float32)

    @property
    def normalized_per_unit(self) -> float:
        """Network-coordinate units per calibrated unit (for chain rules)."""
        return 1.0 / self._centre_and_half_extent[1]

    def index_to_xy(self, flat_index: np.ndarray) -> np.ndarray:
        """Calibrated coordinates of flat (row-major) scan indices."""
        if self.scattered:
            return self._positions_array[np.asarray(flat_index)]
        rows, cols = np.divmod(np.asarray(flat_index), self.nx)
        return np.stack([self.x0 + cols * self.dx, self.y0 + rows * self.dy], -1)

    def interpolate(self, values: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Per-point ``values`` ``(n_points, k)`` linearly interpolated to ``xy``.

        Bilinear on a grid (constant along an axis of one point), on the
        Delaunay triangulation of scattered points (the nearest point's
        values beyond their convex hull); grids extend linearly beyond the
        scan. Returns ``(..., k)`` float64.
        """
        from scipy.interpolate import LinearNDInterpolator, RegularGridInterpolator

        values = np.asarray(values, dtype=np.float64).reshape(self.n_points, -1)
        xy = np.asarray(xy, dtype=np.float64)
        flat = xy.reshape(-1, 2)
        k = values.shape[1]
        if self.scattered:
            out = LinearNDInterpolator(self._triangulation, values)(flat)
            outside = np.isnan(out).any(axis=1)
            if outside.any():
                out[outside] = values[self._tree.query(flat[outside])[1]]
            return out.reshape(*xy.shape[:-1], k)
        grid = values.reshape(self.ny, self.nx, k)
        coords, samples = [], []
        # Axes with one point are constant along them; the others are made
        # ascending for the interpolator.
        for axis, (n, start, step, column) in enumerate(
            ((self.ny, self.y0, self.dy, 1), (self.nx, self.x0, self.dx, 0))
        ):
            if n == 1:
                grid = grid.take([0], axis=axis)
                continue
            ticks = start + np.arange(n) * step
            if step < 0:
                ticks, grid = ticks[::-1], np.flip(grid, axis=axis)
            coords.append(ticks)
            samples.append(flat[:, column])
        grid = grid.reshape(*(len(c) for c in coords), k)
        if not coords:
            return np.broadcast_to(grid.reshape(k), (*xy.shape[:-1], k)).copy()
        interpolator = RegularGridInterpolator(
            tuple(coords), grid, method="linear", bounds_error=False, fill_value=None
        )
        return interpolator(np.stack(samples, axis=-1)).reshape(*xy.shape[:-1], k)
