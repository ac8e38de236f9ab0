"""Known 2D microstructures for synthetic EBSD maps: geometry and orientations.

A :class:`Microstructure` lives in continuous, calibrated scan coordinates
(x to the right along the scan columns, y downwards along the rows, the EDAX
TSL sample frame that kikuchipy uses). It answers three questions for any
points: which grain, which orientation, and how far to the nearest grain or
twin boundary. Nothing here knows about detectors or patterns.

Grain ids: Voronoi cells are ``0 .. n_cells - 1``; twin lamellae follow as
``n_cells .. n_cells + n_twins - 1`` (a twin boundary is a boundary like any
other for EBSD, so a lamella is its own grain). :attr:`Microstructure.parent`
maps every grain id to its Voronoi cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from orix.quaternion import Orientation, Rotation
from orix.quaternion.symmetry import Oh, Symmetry
from orix.vector import Vector3d
from scipy.spatial import Delaunay, QhullError, cKDTree

#: The four <111> directions of a cubic crystal (unit vectors, crystal frame).
CUBIC_111 = np.array([[1, 1, 1], [-1, 1, 1], [1, -1, 1], [1, 1, -1]]) / np.sqrt(3)
SIGMA3_ANGLE = np.pi / 3  # annealing twin: 60 deg about <111>


def uniform_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``n`` rotations uniformly distributed on SO(3), as (n, 4) unit
    quaternions with a non-negative scalar part.

    A normalised 4D Gaussian vector is uniform on the 3-sphere, hence the
    rotations are uniform (Haar); this keeps the draw tied to ``rng``, which
    ``orix.quaternion.Rotation.random`` does not take.
    """
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    return q


def _unit_vectors_3d(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _as_xy(xy: ArrayLike) -> np.ndarray:
    """Validate points as a float array of shape (..., 2), x first."""
    xy = np.asarray(xy, dtype=float)
    if xy.ndim == 0 or xy.shape[-1] != 2:
        raise ValueError(
            f"points must have shape (..., 2) with x first, got shape {xy.shape}"
        )
    if not np.all(np.isfinite(xy)):
        raise ValueError("points must be finite")
    return xy


@dataclass(frozen=True, eq=False)
class Microstructure:
    """A 2D grain structure with known orientations and boundaries.

    Voronoi cells of ``seeds`` (convex, so boundary distances are exact),
    optionally cut by straight, parallel-sided annealing-twin lamellae and
    with a linear intragranular orientation gradient. Build one with
    :meth:`random_voronoi`, :meth:`two_grains` or the constructor (hand-placed
    seeds); all lengths are in calibrated scan units.

    Attributes
    ----------
    seeds
        (n_cells, 2) Voronoi seed positions (x, y).
    cell_rotations
        (n_cells, 4) unit quaternions: orientation of each cell at its seed,
        sample -> crystal (orix convention).
    twin_parent
        (n_twins,) Voronoi cell that holds each lamella. At most one lamella
        per cell is generated; lamellae given by hand must not overlap.
    twin_normal
        (n_twins, 2) unit in-plane normal of the lamella's boundary traces.
    twin_offset
        (n_twins,) signed distance of the lamella midline from the parent
        seed, along ``twin_normal``.
    twin_width
        (n_twins,) lamella width in the scan plane.
    twin_axis
        (n_twins, 3) crystal <111> axis (unit) of the Sigma3 relation; the
        twin orientation is ``R(twin_axis, 60 deg) * parent``.
    gradient_direction
        (n_cells, 2) unit in-plane direction along which the orientation
        changes inside each cell.
    gradient_axis
        (n_cells, 3) unit rotation axis (crystal frame) of that change.
    gradient_rate
        Rotation per unit length along ``gradient_direction``, in radians.
    symmetry
        Crystal point group of the orientations (m-3m for Ni).
    kind
        What built it: ``"voronoi"``, ``"two_grain"`` or ``"custom"``.
    seed
        Random seed it was generated from, if any.
    boundary_x
        x of the vertical boundary of a ``"two_grain"`` structure, else None.
    """

    seeds: np.ndarray
    cell_rotations: np.ndarray
    twin_parent: np.ndarray
    twin_normal: np.ndarray
    twin_offset: np.ndarray
    twin_width: np.ndarray
    twin_axis: np.ndarray
    gradient_direction: np.ndarray
    gradient_axis: np.ndarray
    gradient_rate: float = 0.0
    symmetry: Symmetry = Oh
    kind: str = "custom"
    seed: int | None = None
    boundary_x: float | None = None

    def __post_init__(self) -> None:
        n = len(self.seeds)
        if n < 1 or self.seeds.shape != (n, 2):
            raise ValueError("seeds must have shape (n_cells, 2) with n_cells >= 1")
        if self.cell_rotations.shape != (n, 4):
            raise ValueError("cell_rotations must have shape (n_cells, 4)")
        if len(np.unique(self.seeds, axis=0)) != n:
            raise ValueError("seeds must be distinct")
        m = len(self.twin_parent)
        if np.any((self.twin_parent < 0) | (self.twin_parent >= n)):
            raise ValueError(f"twin parents must be Voronoi cells 0..{n - 1}")
        if np.unique(self.twin_parent).size != m:
            raise ValueError("at most one twin lamella per Voronoi cell")
        if np.any(self.twin_width <= 0):
            raise ValueError("twin widths must be positive")
        # Voronoi neighbours (Delaunay edges) make the boundary distance
        # O(neighbours) per point; the minimum over every other seed would
        # give the same (exact) value, since a bisector that is not a facet
        # of the convex cell is farther away than the cell's boundary.
        object.__setattr__(self, "_tree", cKDTree(self.seeds))
        object.__setattr__(self, "_neighbours", _voronoi_neighbours(self.seeds))
        twin_of_cell = np.full(n, -1)
        twin_of_cell[self.twin_parent] = np.arange(m)
        object.__setattr__(self, "_twin_of_cell", twin_of_cell)

    # ------------------------------------------------------------ builders

    @classmethod
    def from_seeds(
        cls,
        seeds: ArrayLike,
        rotations: Rotation | ArrayLike,
        *,
        twins: ArrayLike | None = None,
        gradient: float = 0.0,
        gradient_direction: ArrayLike | None = None,
        gradient_axis: ArrayLike | None = None,
        symmetry: Symmetry = Oh,
        kind: str = "custom",
        seed: int | None = None,
        boundary_x: float | None = None,
    ) -> Microstructure:
        """Build a microstructure from hand-placed seeds.

        Parameters
        ----------
        seeds
            (n, 2) seed positions (x, y), calibrated units.
        rotations
            Orientation of each cell at its seed: orix ``Rotation`` /
            ``Orientation`` of size n, or (n, 4) quaternions.
        twins
            Optional (m, 5) rows ``(parent_cell, normal_angle_deg, offset,
            width, variant)``: a lamella in ``parent_cell`` whose boundaries
            have the in-plane normal at ``normal_angle_deg`` from +x (towards
            +y), midline ``offset`` from the seed along that normal, the given
            ``width``, twinned about ``CUBIC_111[variant]``.
        gradient
            Orientation gradient in radians per calibrated unit of length.
        gradient_direction, gradient_axis
            (n, 2) in-plane directions and (n, 3) crystal rotation axes of
            the gradient (normalised here); default +x and [001].
        """
        seeds = np.atleast_2d(np.asarray(seeds, dtype=float))
        n = len(seeds)
        q = rotations.data if isinstance(rotations, Rotation) else rotations
        q = np.asarray(q, dtype=float).reshape(-1, 4)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        rows = np.zeros((0, 5)) if twins is None else np.atleast_2d(twins)
        rows = np.asarray(rows, dtype=float)
        if rows.ndim != 2 or rows.shape[1] != 5:
            raise ValueError(
                "twins must be rows (parent_cell, normal_angle_deg, offset, "
                "width, variant)"
            )
        if np.any((rows[:, 4] < 0) | (rows[:, 4] > 3)):
            raise ValueError("twin variants must be 0..3 (the four <111>)")
        angle = np.deg2rad(rows[:, 1])
        if gradient_direction is None:
            gradient_direction = np.tile([1.0, 0.0], (n, 1))
        if gradient_axis is None:
            gradient_axis = np.tile([0.0, 0.0, 1.0], (n, 1))
        g_dir = np.asarray(gradient_direction, dtype=float).reshape(n, 2)
        g_axis = np.asarray(gradient_axis, dtype=float).reshape(n, 3)
        return cls(
            seeds=seeds,
            cell_rotations=q,
            twin_parent=rows[:, 0].astype(int),
            twin_normal=np.stack([np.cos(angle), np.sin(angle)], axis=-1),
            twin_offset=rows[:, 2],
            twin_width=rows[:, 3],
            twin_axis=CUBIC_111[rows[:, 4].astype(int)],
            gradient_direction=g_dir / np.linalg.norm(g_dir, axis=1, keepdims=True),
            gradient_axis=g_axis / np.linalg.norm(g_axis, axis=1, keepdims=True),
            gradient_rate=float(gradient),
            symmetry=symmetry,
            kind=kind,
            seed=seed,
            boundary_x=boundary_x,
        )

    @classmethod
    def random_voronoi(
        cls,
        extent: tuple[float, float, float, float],
        n_grains: int,
        *,
        seed: int | None,
        twin_fraction: float = 0.0,
        min_twin_width: float = 0.0,
        gradient: float = 0.0,
        symmetry: Symmetry = Oh,
    ) -> Microstructure:
        """Random Voronoi polycrystal over ``extent = (xmin, xmax, ymin, ymax)``.

        Seeds are drawn uniformly with a soft hard-core distance (about half
        the mean seed spacing, relaxed when crowded), which gives the
        equiaxed, not too disperse grain sizes of a recrystallised metal
        rather than the many slivers of a Poisson-Voronoi tessellation.

        Independent random streams feed the seeds, orientations, twins and
        gradients, so that switching twins or gradients on keeps the same
        grains with the same orientations.
        """
        streams = np.random.SeedSequence(seed).spawn(4)
        rng_seeds, rng_ori, rng_twin, rng_grad = map(np.random.default_rng, streams)
        seeds = _hard_core_points(extent, n_grains, rng_seeds)
        q = uniform_quaternions(n_grains, rng_ori)

        # Gradients: a random in-plane direction and crystal axis per cell.
        phi = rng_grad.uniform(0, 2 * np.pi, n_grains)
        g_dir = np.stack([np.cos(phi), np.sin(phi)], axis=-1)
        g_axis = _unit_vectors_3d(n_grains, rng_grad)

        # Twins: one lamella in a random subset of cells.
        twin_rows = []
        if twin_fraction > 0 and n_grains > 0:
            # Distance from each seed to its own cell boundary: the disk of
            # this radius lies inside the cell, so a lamella that stays
            # within it near the seed leaves parent on both sides.
            if n_grains > 1:
                d, _ = cKDTree(seeds).query(seeds, k=2)
                r_in = d[:, 1] / 2
            else:
                r_in = np.full(1, min(extent[1] - extent[0], extent[3] - extent[2]))
            n_twinned = int(round(twin_fraction * n_grains))
            order = rng_twin.permutation(n_grains)
            u = rng_twin.uniform(size=(n_grains, 4))  # drawn for all: stable
            cells = [i for i in order if r_in[i] >= min_twin_width]
            for i in sorted(cells[:n_twinned]):
                variant, angle = _twin_plane_trace(q[i], u[i, 0])
                # Width in [0.5, 1] r_in and |offset| <= (r_in - width / 2) / 2:
                # the lamella stays inside 3/4 of the seed's inscribed disk.
                width = max((0.5 + 0.5 * u[i, 1]) * r_in[i], min_twin_width)
                offset = (u[i, 2] - 0.5) * (r_in[i] - width / 2)
                twin_rows.append((i, angle, offset, width, variant))
        return cls.from_seeds(
            seeds,
            q,
            twins=np.array(twin_rows).reshape(-1, 5),
            gradient=gradient,
            gradient_direction=g_dir,
            gradient_axis=g_axis,
            symmetry=symmetry,
            kind="voronoi",
            seed=seed,
        )

    @classmethod
    def two_grains(
        cls,
        boundary_x: float,
        y_centre: float,
        half_spacing: float,
        rotations: ArrayLike,
        *,
        seed: int | None = None,
    ) -> Microstructure:
        """Two grains split by the vertical line ``x = boundary_x``.

        Seeds sit symmetrically at ``boundary_x -/+ half_spacing``, so their
        bisector, the only boundary, is exactly that line.
        """
        seeds = [
            [boundary_x - half_spacing, y_centre],
            [boundary_x + half_spacing, y_centre],
        ]
        return cls.from_seeds(
            seeds, rotations, kind="two_grain", seed=seed, boundary_x=boundary_x
        )

    # ---------------------------------------------------------- properties

    @property
    def n_cells(self) -> int:
        """Number of Voronoi cells (grains before twinning)."""
        return len(self.seeds)

    @property
    def n_twins(self) -> int:
        """Number of twin lamellae."""
        return len(self.twin_parent)

    @property
    def n_grain_ids(self) -> int:
        """Number of grain ids: Voronoi cells plus twin lamellae."""
        return self.n_cells + self.n_twins

    @property
    def parent(self) -> np.ndarray:
        """(n_grain_ids,) Voronoi cell of every grain id (itself for cells)."""
        return np.concatenate([np.arange(self.n_cells), self.twin_parent])

    @property
    def is_twin(self) -> np.ndarray:
        """(n_grain_ids,) whether a grain id is a twin lamella."""
        return np.arange(self.n_grain_ids) >= self.n_cells

    @property
    def grain_rotations(self) -> np.ndarray:
        """(n_grain_ids, 4) quaternions of every grain at its parent's seed."""
        ids = np.arange(self.n_grain_ids)
        return self.rotations_of(ids, self.seeds[self.parent])

    def grain_orientations(self) -> Orientation:
        """Orientation of every grain id at its parent's seed."""
        return Orientation(self.grain_rotations, symmetry=self.symmetry)

    # ------------------------------------------------------------ geometry

    def cell_at(self, xy: ArrayLike) -> np.ndarray:
        """Voronoi cell (nearest seed) of points (..., 2) -> (...)."""
        xy = _as_xy(xy)
        _, cell = self._tree.query(xy.reshape(-1, 2))
        return cell.reshape(xy.shape[:-1])

    def _twin_coordinate(self, xy: np.ndarray, cell: np.ndarray):
        """Per point: its cell's lamella (-1 if none) and the point's signed
        distance from that lamella's midline."""
        twin = self._twin_of_cell[cell]
        has = twin >= 0
        t = np.full(cell.shape, np.inf)
        k = twin[has]
        rel = xy[has] - self.seeds[self.twin_parent[k]]
        t[has] = np.einsum("...i,...i->...", rel, self.twin_normal[k])
        t[has] -= self.twin_offset[k]
        return twin, t

    def grain_id_at(self, xy: ArrayLike) -> np.ndarray:
        """Grain id of points (..., 2) -> (...) int."""
        xy = _as_xy(xy)
        cell = self.cell_at(xy)
        if self.n_twins == 0:
            return cell
        twin, t = self._twin_coordinate(xy, cell)
        inside = (twin >= 0) & (np.abs(t) < self.twin_width[np.maximum(twin, 0)] / 2)
        return np.where(inside, self.n_cells + twin, cell)

    def boundary_distance(self, xy: ArrayLike) -> np.ndarray:
        """Distance of points (..., 2) to the nearest grain or twin boundary.

        Exact: inside convex cell i the distance to its boundary is
        ``min_j (|p - s_j|^2 - |p - s_i|^2) / (2 |s_j - s_i|)`` over the
        Voronoi neighbours j, and a lamella's boundary clipped to the cell is
        never nearer than ``min(cell boundary, infinite trace line)``; other
        cells' lamellae are beyond the own cell's boundary. ``inf`` for a
        single grain.
        """
        xy = _as_xy(xy)
        cell = self.cell_at(xy)
        p = xy.reshape(-1, 2)
        c = cell.reshape(-1)
        d = np.full(len(p), np.inf)
        nb = self._neighbours
        if nb.shape[1]:
            # Chunked to keep the (points, neighbours, 2) temporaries small.
            for start in range(0, len(p), 65536):
                sl = slice(start, start + 65536)
                j = nb[c[sl]]
                valid = j >= 0
                sj = self.seeds[np.maximum(j, 0)]
                si = self.seeds[c[sl]][:, None]
                pp = p[sl][:, None]
                num = ((pp - sj) ** 2).sum(-1) - ((pp - si) ** 2).sum(-1)
                den = 2 * np.linalg.norm(sj - si, axis=-1)
                dist = np.where(valid, num / np.where(valid, den, 1.0), np.inf)
                d[sl] = dist.min(axis=1)
        twin, t = self._twin_coordinate(p, c)
        has = twin >= 0
        half = self.twin_width[twin[has]] / 2
        d[has] = np.minimum(d[has], np.abs(np.abs(t[has]) - half))
        return np.maximum(d, 0.0).reshape(cell.shape)

    # -------------------------------------------------------- orientations

    def rotations_of(self, grain_id: ArrayLike, xy: ArrayLike) -> np.ndarray:
        """Quaternions (..., 4) of given grains evaluated at positions.

        The grain is given explicitly (not looked up from ``xy``) so that the
        orientation of a grain's part of a beam footprint can be taken at
        that part's centroid, which may lie outside the grain when the grain
        is not convex (a parent cut in two by a lamella).
        """
        grain_id = np.asarray(grain_id, dtype=int)
        xy = _as_xy(xy)
        shape = np.broadcast_shapes(grain_id.shape, xy.shape[:-1])
        g = np.broadcast_to(grain_id, shape).reshape(-1)
        p = np.broadcast_to(xy, shape + (2,)).reshape(-1, 2)
        cell = self.parent[g]
        rot = Rotation(self.cell_rotations[cell])
        if self.gradient_rate != 0:
            # Lattice curvature: the lattice rotates about a fixed crystal
            # axis by an angle growing linearly along a fixed direction.
            along = np.einsum(
                "ij,ij->i", p - self.seeds[cell], self.gradient_direction[cell]
            )
            bend = Rotation.from_axes_angles(
                self.gradient_axis[cell], self.gradient_rate * along
            )
            rot = bend * rot
        twin = g - self.n_cells
        is_twin = twin >= 0
        if np.any(is_twin):
            # A rotation about a crystal axis multiplies from the left (orix
            # orientations map sample to crystal), which makes the
            # misorientation exactly 60 deg about that <111>. Non-twins get
            # the identity (angle 0).
            axes = self.twin_axis[np.where(is_twin, twin, 0)]
            angles = np.where(is_twin, SIGMA3_ANGLE, 0.0)
            rot = Rotation.from_axes_angles(axes, angles) * rot
        q = rot.data
        q = np.where(q[:, :1] < 0, -q, q)
        return q.reshape(shape + (4,))

    def orientation_at(self, xy: ArrayLike) -> Orientation:
        """Orientations of the grain under points (..., 2), shape (...)."""
        xy = _as_xy(xy)
        q = self.rotations_of(self.grain_id_at(xy), xy)
        return Orientation(q, symmetry=self.symmetry)


def _voronoi_neighbours(seeds: np.ndarray) -> np.ndarray:
    """(n, max_degree) Voronoi neighbours of each seed, padded with -1."""
    n = len(seeds)
    if n == 1:
        return np.zeros((1, 0), dtype=int)
    try:
        if n < 4:
            raise QhullError  # too few for a robust triangulation
        indptr, indices = Delaunay(seeds).vertex_neighbor_vertices
        lists = [indices[indptr[i] : indptr[i + 1]] for i in range(n)]
    except (QhullError, ValueError):
        # Few or collinear seeds: every other seed (still exact, see above).
        lists = [np.delete(np.arange(n), i) for i in range(n)]
    out = np.full((n, max(len(v) for v in lists)), -1)
    for i, v in enumerate(lists):
        out[i, : len(v)] = v
    return out


def _hard_core_points(
    extent: tuple[float, float, float, float], n: int, rng: np.random.Generator
) -> np.ndarray:
    """Uniform points in a box, no two closer than a shrinking hard-core
    distance (random sequential addition)."""
    xmin, xmax, ymin, ymax = extent
    area = (xmax - xmin) * (ymax - ymin)
    r = 0.5 * np.sqrt(area / n)
    points = np.empty((0, 2))
    while len(points) < n:
        for _ in range(200):
            p = rng.uniform((xmin, ymin), (xmax, ymax))
            if len(points) == 0 or np.min(np.linalg.norm(points - p, axis=1)) >= r:
                points = np.vstack([points, p])
                break
        else:
            r *= 0.9  # crowded: relax the hard core
    return points


def _twin_plane_trace(q: np.ndarray, u: float) -> tuple[int, float]:
    """Pick a {111} twin plane of a grain and return ``(variant, angle_deg)``
    of its trace normal in the scan plane.

    Coherent twin boundaries lie on the {111} twinning plane, so the
    lamella's straight edges are that plane's trace on the surface. Steep
    planes are preferred: a plane nearly parallel to the surface would give
    an ill-defined, very wide trace.
    """
    # Sample-frame normals of the four {111} planes: v_s = ~O * v_c.
    normals = ((~Rotation(q)) * Vector3d(CUBIC_111)).data.reshape(-1, 3)
    nz = np.abs(normals[:, 2])
    steep = np.flatnonzero(nz < 0.8)
    variant = int(steep[int(u * len(steep))] if len(steep) else np.argmin(nz))
    nx, ny = normals[variant, :2]
    return variant, float(np.rad2deg(np.arctan2(ny, nx)))
