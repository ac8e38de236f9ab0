"""Grain boundaries without indexing, from the diffraction gradient.

A boundary is where the patterns change fastest: a ridge of
``S(x, y) = ||d descriptor / d(x, y)||`` (see
:mod:`kikuchipy_neural.analysis.gradient`). Because a neural field can be
differentiated anywhere, ridges are located below the scan step:

1. ``S`` and the direction of fastest change (the leading eigenvector of the
   Jacobian's structure tensor, the boundary normal) on a grid ``factor``
   times finer than the scan;
2. non-maximum suppression along that normal (Canny's thinning);
3. hysteresis: keep ridges that exceed a low threshold and are connected to
   a part above a high one (automatic default: the ISODATA threshold of the
   logarithm of the ridge maxima, which separates boundary ridges from the
   faint ripples of grain interiors, held well above the interiors' level
   so that a map without boundaries gives none; :func:`auto_thresholds`);
4. every ridge pixel moved to the maximum of ``S`` along its normal by a
   parabola through three values of ``S`` evaluated exactly (autograd at
   arbitrary points, no interpolation of the grid);
5. ridge pixels linked into polylines in calibrated units, split at junctions.

Grains come from a marker-controlled watershed of ``S``: markers are the
connected low-``S`` regions (grain interiors), and neighbouring regions whose
shared watershed line is weak are merged.

The conventional route for comparison, :func:`orientation_boundaries`,
thresholds the disorientation between neighbouring scan points of an indexed
crystal map (e.g. from :func:`kikuchipy_neural.analysis.metrics.hough_index`):
boundary points then sit at the midpoints between scan points, up to half a
step from the true boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from kikuchipy_neural.analysis.gradient import evaluate_gradient, tensor_to_normal

__all__ = [
    "BoundaryTrace",
    "GrainSegmentation",
    "OrientationBoundaries",
    "auto_thresholds",
    "orientation_boundaries",
    "ridge_trace",
    "segment_grains",
]

_EIGHT = np.ones((3, 3), dtype=bool)


# ------------------------------------------------------------------ results


@dataclass
class BoundaryTrace:
    """Sub-step boundary traces: ridges of the diffraction gradient.

    Attributes
    ----------
    polylines
        List of ``(k, 2)`` arrays of calibrated ``(x, y)``: boundary segments
        between junctions or ends (closed loops repeat their first point).
    points
        ``(n, 2)`` every ridge point (sub-step position, calibrated units).
    strength
        ``(n,)`` ``S`` at the ridge points (the parabola's peak value).
    normals
        ``(n, 2)`` unit boundary normals (sign arbitrary).
    low, high
        Hysteresis thresholds on ``S`` that were used.
    factor
        Refinement of the grid the ridges were searched on.
    step
        Scan step (calibrated units), the unit of the tolerances.
    units
        Calibrated units of the scan.
    """

    polylines: list[np.ndarray]
    points: np.ndarray
    strength: np.ndarray
    normals: np.ndarray
    low: float
    high: float
    factor: float
    step: float
    units: str
    _tree: cKDTree | None = field(default=None, repr=False, compare=False)

    @property
    def lengths(self) -> np.ndarray:
        """Length of every polyline, calibrated units."""
        return np.array(
            [np.linalg.norm(np.diff(p, axis=0), axis=1).sum() for p in self.polylines]
        )

    @property
    def total_length(self) -> float:
        """Total boundary length, calibrated units."""
        return float(self.lengths.sum()) if self.polylines else 0.0

    def distance_to(self, xy) -> np.ndarray:
        """Distance of points ``(..., 2)`` to the nearest ridge point."""
        xy = np.asarray(xy, dtype=np.float64)
        if len(self.points) == 0:
            return np.full(xy.shape[:-1], np.inf)
        if self._tree is None:
            self._tree = cKDTree(self.points)
        return self._tree.query(xy.reshape(-1, 2))[0].reshape(xy.shape[:-1])

    def plot(
        self, ax=None, color: str = "w", linewidth: float = 1.0, label=None, **kwargs
    ):
        """Draw the polylines on a matplotlib axes (calibrated units)."""
        from matplotlib.collections import LineCollection

        ax = _axes(ax)
        lines = LineCollection(
            self.polylines, colors=color, linewidths=linewidth, label=label, **kwargs
        )
        ax.add_collection(lines)
        ax.autoscale_view()
        return ax

    def __repr__(self) -> str:
        return (
            f"<BoundaryTrace: {len(self.polylines)} polylines, {len(self.points)} "
            f"points, {self.total_length:.4g} {self.units}, thresholds "
            f"({self.low:.3g}, {self.high:.3g})>"
        )


@dataclass
class GrainSegmentation:
    """Grains from a watershed of the diffraction gradient.

    Attributes
    ----------
    labels
        ``(ny', nx')`` grain id of every point of :attr:`xy`, ``0 .. n - 1``.
    xy
        ``(ny', nx', 2)`` calibrated coordinates of the grid.
    areas
        ``(n,)`` grain areas, calibrated units squared.
    threshold
        ``S`` below which a point seeds a grain interior.
    merge_threshold
        Neighbouring regions whose shared watershed line has a mean ``S``
        below this were merged.
    factor
        Refinement of the grid.
    units
        Calibrated units of the scan.
    """

    labels: np.ndarray
    xy: np.ndarray
    areas: np.ndarray
    threshold: float
    merge_threshold: float
    factor: float
    units: str

    @property
    def n_grains(self) -> int:
        return int(len(self.areas))

    @property
    def equivalent_diameters(self) -> np.ndarray:
        """Diameter of the circle of each grain's area, calibrated units."""
        return 2 * np.sqrt(self.areas / np.pi)

    def grain_id_at(self, xy) -> np.ndarray:
        """Grain id at calibrated points ``(..., 2)`` (nearest grid point)."""
        xy = np.asarray(xy, dtype=np.float64)
        x0, y0 = self.xy[0, 0]
        dx = self.xy[0, 1, 0] - x0 if self.xy.shape[1] > 1 else 1.0
        dy = self.xy[1, 0, 1] - y0 if self.xy.shape[0] > 1 else 1.0
        ny, nx = self.labels.shape
        col = np.clip(np.rint((xy[..., 0] - x0) / dx), 0, nx - 1).astype(int)
        row = np.clip(np.rint((xy[..., 1] - y0) / dy), 0, ny - 1).astype(int)
        return self.labels[row, col]

    def plot(self, ax=None, cmap: str = "tab20", **kwargs):
        """Grain ids as an image in calibrated units."""
        ax = _axes(ax)
        ax.imshow(
            self.labels % 20 if cmap == "tab20" else self.labels,
            cmap=cmap,
            extent=_extent(self.xy),
            interpolation="nearest",
            **kwargs,
        )
        return ax

    def __repr__(self) -> str:
        d = self.equivalent_diameters
        median = np.median(d) if len(d) else np.nan
        return (
            f"<GrainSegmentation: {self.n_grains} grains on a {self.labels.shape[0]}x"
            f"{self.labels.shape[1]} grid, median diameter {median:.3g} {self.units}>"
        )


@dataclass
class OrientationBoundaries:
    """Boundaries between neighbouring scan points by disorientation.

    Attributes
    ----------
    points
        ``(n, 2)`` midpoints between neighbouring scan points whose
        disorientation is at least the smallest threshold.
    angles
        ``(n,)`` their disorientation angles, degrees.
    segments
        ``(n, 2, 2)`` the shared edge of the two points' pixels: the
        staircase line usually drawn for indexed maps.
    thresholds
        Angle classes, degrees (e.g. ``(2, 10)``: low-angle 2-10 deg and
        high-angle >= 10 deg boundaries).
    """

    points: np.ndarray
    angles: np.ndarray
    segments: np.ndarray
    thresholds: tuple[float, ...]

    def select(self, min_angle: float, max_angle: float = np.inf) -> np.ndarray:
        """Boolean mask of points with ``min_angle <= angle < max_angle``."""
        return (self.angles >= min_angle) & (self.angles < max_angle)

    def plot(
        self, ax=None, colors=("tab:orange", "k"), linewidth: float = 1.5, **kwargs
    ):
        """Draw the pixel-edge segments, one colour per angle class."""
        from matplotlib.collections import LineCollection

        ax = _axes(ax)
        bounds = [*self.thresholds, np.inf]
        for k in range(len(self.thresholds)):
            sel = self.select(bounds[k], bounds[k + 1])
            if not sel.any():
                continue
            name = (
                f"{bounds[k]:g}-{bounds[k + 1]:g} deg"
                if np.isfinite(bounds[k + 1])
                else f">= {bounds[k]:g} deg"
            )
            ax.add_collection(
                LineCollection(
                    self.segments[sel],
                    colors=colors[k % len(colors)],
                    linewidths=linewidth,
                    label=f"indexed, {name}",
                    **kwargs,
                )
            )
        ax.autoscale_view()
        return ax


# ------------------------------------------------------------- thresholds


# The grain interiors' level of S: a low percentile of the map, which
# boundaries (a minority of the points even in fine-grained maps) do not
# reach. A fitted field's interiors ripple with the noise it absorbed: their
# highest ridges stand 4-7x above this level in converged fits (up to ~14x in
# a fit stopped early), boundaries 35-190x (benchmarks/README.md, Quality
# across maps). A boundary must rise this many times above the interiors:
INTERIOR_PERCENTILE = 25.0
HIGH_CONTRAST = 16.0  # to start a boundary
LOW_CONTRAST = 8.0  # to continue one


def auto_thresholds(
    strength: np.ndarray, ridge_values: np.ndarray | None = None
) -> tuple[float, float]:
    """Hysteresis thresholds for a map of ``S``.

    ``high`` is the ISODATA (Ridler-Calvard) threshold of ``log S`` at the
    ridge maxima (or of the whole map): the ridge maxima are bimodal, faint
    ripples of the grain interiors and boundaries, separated by a factor
    rather than a difference, hence the logarithm; ISODATA puts the threshold
    halfway between the two classes' means, in the middle of the gap between
    well separated modes, where Otsu's criterion is flat and may pick the
    edge of the gap. ``low`` is the geometric mean of ``high`` and the
    median of ``S`` over the map, so a boundary is followed while it stands
    clearly out of the interiors.

    A map without boundaries has no second mode, and ISODATA would split its
    ripples in two all the same. So both thresholds are also held above the
    interiors' level (the :data:`INTERIOR_PERCENTILE` of ``S``): ``high`` at
    least :data:`HIGH_CONTRAST` times it, ``low`` at least
    :data:`LOW_CONTRAST` times it. A map of one grain then gives no
    boundary, and the ripples beside a boundary do not branch off it.

    Parameters
    ----------
    strength
        ``S`` map (any shape).
    ridge_values
        ``S`` at the ridge maxima; default: the whole map.

    Returns
    -------
    low, high
    """
    from skimage.filters import threshold_isodata

    s = np.asarray(strength, dtype=np.float64).ravel()
    s = s[np.isfinite(s) & (s > 0)]
    if s.size == 0:
        raise ValueError("The diffraction gradient is zero everywhere: no boundaries")
    values = s if ridge_values is None else np.asarray(ridge_values, np.float64).ravel()
    values = values[np.isfinite(values) & (values > 0)]
    if values.size < 2 or np.ptp(values) == 0:
        values = s
    log_values = np.log(values)
    if np.ptp(log_values) > 0:
        high = float(np.exp(threshold_isodata(log_values, nbins=1024)))
    else:
        high = float(values[0])
    interior = float(np.percentile(s, INTERIOR_PERCENTILE))
    high = max(high, HIGH_CONTRAST * interior)
    low = float(np.sqrt(min(float(np.median(s)), high) * high))
    low = min(max(low, LOW_CONTRAST * interior), high)
    return low, high


# ---------------------------------------------------------------- ridges


def _normal_in_pixels(normal: np.ndarray, fine_dx: float, fine_dy: float, h: float):
    """Offsets (rows, columns) of a step ``h`` along calibrated normals."""
    return normal[..., 1] * h / fine_dy, normal[..., 0] * h / fine_dx


def _non_maximum_suppression(
    strength: np.ndarray, d_row: np.ndarray, d_col: np.ndarray
) -> np.ndarray:
    """True where ``S`` is a maximum along the normal (bilinear neighbours)."""
    rows, cols = np.indices(strength.shape, dtype=np.float64)
    plus = ndi.map_coordinates(
        strength, [rows + d_row, cols + d_col], order=1, mode="nearest"
    )
    minus = ndi.map_coordinates(
        strength, [rows - d_row, cols - d_col], order=1, mode="nearest"
    )
    # >= on one side and > on the other: a flat-topped pair keeps one pixel.
    return (strength >= plus) & (strength > minus)


def _refine_peak(
    model, xy: np.ndarray, normal: np.ndarray, h: float, iterations: int = 3
):
    """Move points to the maximum of ``S`` along their normal.

    Evaluates ``S`` exactly at ``c - h n, c, c + h n`` (autograd at arbitrary
    points), walks uphill by ``h`` while the middle value is not the largest,
    then puts the point at the vertex of the parabola through the three
    values. Returns the positions and the peak values.
    """
    centre = xy.copy()
    offsets = np.array([-1.0, 0.0, 1.0])
    for _ in range(iterations + 1):
        probes = centre[:, None, :] + offsets[None, :, None] * h * normal[:, None, :]
        s = evaluate_gradient(model, probes, "norm", extrapolate=True).astype(
            np.float64
        )
        sm, s0, sp = s[:, 0], s[:, 1], s[:, 2]
        move = np.where(sp > s0, 1.0, np.where(sm > s0, -1.0, 0.0))
        if not move.any():
            break
        centre = centre + (move * h)[:, None] * normal
    curvature = sm - 2 * s0 + sp
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(curvature < 0, 0.5 * (sm - sp) / curvature, 0.0)
    t = np.clip(t, -1.0, 1.0)
    peak = s0 - 0.25 * (sm - sp) * t
    return centre + (t * h)[:, None] * normal, peak


def _refine_centroid(
    model, xy: np.ndarray, normal: np.ndarray, half_width: float, samples: int = 21
):
    """Move points to the centroid of ``S`` across the ridge.

    ``S`` is evaluated exactly (autograd) at ``samples`` points on the segment
    ``xy +- half_width * normal``; its values minus their minimum weigh the
    positions. Across a boundary between two grains the descriptor is
    ``A0 + g(t) (A1 - A0)`` with ``g`` the beam's share of the second grain,
    so ``S = |g'| ||A1 - A0||`` and the centroid is
    ``t_end - integral(g) / (g(t_end) - g(t_start))``: it depends on the
    *area* under the field's transition, which the fit pins down at the scan
    points, not on the shape the network gives the transition between scan
    points, which is what moves the peak. For a symmetric beam the centroid
    of the true transition is the boundary itself.

    Returns the positions and ``S`` at them (interpolated in the profile).
    """
    ts = np.linspace(-half_width, half_width, samples)
    probes = xy[:, None, :] + ts[None, :, None] * normal[:, None, :]
    s = evaluate_gradient(model, probes, "norm", extrapolate=True).astype(np.float64)
    weights = s - s.min(axis=1, keepdims=True)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(total > 0, (weights * ts).sum(axis=1) / total, 0.0)
    value = np.array([np.interp(c, ts, row) for c, row in zip(shift, s, strict=True)])
    return xy + shift[:, None] * normal, value


def ridge_trace(
    model,
    factor: float = 8,
    low: float | None = None,
    high: float | None = None,
    min_length: float | None = None,
    refine: str | None = "centroid",
    half_width: float | None = None,
    show_progressbar: bool | None = None,
) -> BoundaryTrace:
    """Sub-step boundary traces: ridges of the diffraction gradient.

    Parameters
    ----------
    model
        A :class:`~kikuchipy_neural.NeuralEBSDModel`.
    factor
        The ridges are searched on a grid this many times finer than the scan
        (4-10 is plenty: refinement makes the positions continuous).
    low, high
        Hysteresis thresholds on ``S`` (units of
        :meth:`~kikuchipy_neural.NeuralEBSDModel.gradient`); None: automatic
        (:func:`auto_thresholds`). A given ``high`` with ``low=None`` uses
        ``low = high / 2``.
    min_length
        Connected boundary networks shorter than this (calibrated units) are
        dropped; default one scan step.
    refine
        How each ridge pixel is moved across the ridge, with ``S`` evaluated
        exactly (autograd) along its normal: ``"centroid"`` (default), the
        centroid of ``S`` over ``+- half_width``, which does not depend on the
        shape the network gives a transition between scan points (see the
        module notes and ``benchmarks/README.md``); ``"peak"``, the vertex of
        a parabola through ``S`` at the maximum (classic sub-pixel
        non-maximum suppression); None, the fine-grid pixel itself.
    half_width
        Half-length of the centroid's window, calibrated units; default one
        scan step (a beam footprint about a step wide spreads a boundary over
        the two scan points either side of it). Use more for beams much
        wider than the step, less for boundaries closer than two steps.
    show_progressbar
        Progress bar of the ``S`` evaluation.

    Returns
    -------
    BoundaryTrace
    """
    from skimage.morphology import skeletonize

    geometry = model.geometry
    if refine not in (None, "centroid", "peak"):
        raise ValueError(f"refine must be 'centroid', 'peak' or None, got {refine!r}")
    half_width = geometry.step if half_width is None else float(half_width)
    if not (np.isfinite(half_width) and half_width > 0):
        raise ValueError(f"half_width must be a positive length, got {half_width}")
    min_length = geometry.step if min_length is None else float(min_length)
    if min_length < 0:
        raise ValueError(f"min_length must be >= 0, got {min_length}")
    xy, fine_dx, fine_dy = _grid(geometry, factor)
    tensor = evaluate_gradient(model, xy, "tensor", show_progressbar=show_progressbar)
    strength, normal, _ = tensor_to_normal(tensor)
    h = min(abs(fine_dx), abs(fine_dy))
    d_row, d_col = _normal_in_pixels(normal, fine_dx, fine_dy, h)
    maxima = _non_maximum_suppression(strength.astype(np.float64), d_row, d_col)
    low, high = _resolve_thresholds(strength, strength[maxima], low, high)

    ridge = skeletonize(_hysteresis(maxima, strength, low, high))
    ridge = _drop_short(ridge, min_length / h)

    rows, cols = np.nonzero(ridge)
    points = xy[rows, cols].astype(np.float64)
    normals = normal[rows, cols]
    values = strength[rows, cols].astype(np.float64)
    if refine == "centroid" and len(points):
        points, values = _refine_centroid(model, points, normals, half_width)
    elif refine == "peak" and len(points):
        points, values = _refine_peak(model, points, normals, h)
    if refine is not None and len(points):
        (xa, xb), (ya, yb) = geometry.x_range, geometry.y_range
        points[:, 0] = np.clip(points[:, 0], xa, xb)
        points[:, 1] = np.clip(points[:, 1], ya, yb)
    position = np.full(ridge.shape + (2,), np.nan)
    position[rows, cols] = points
    polylines = [position[r, c] for r, c in _trace_chains(ridge)]
    return BoundaryTrace(
        polylines=polylines,
        points=points,
        strength=values,
        normals=normals,
        low=low,
        high=high,
        factor=float(factor),
        step=geometry.step,
        units=geometry.units,
    )


def _hysteresis(ridge: np.ndarray, strength: np.ndarray, low: float, high: float):
    """Ridge pixels above ``low`` 8-connected (along the ridge) to one above
    ``high``.

    Canny's hysteresis on the thinned ridges; ``skimage.filters.
    apply_hysteresis_threshold`` links 4-connected pixels only, which would cut
    every diagonal ridge into single pixels, and applied to the un-thinned map
    it would keep faint side ridges that merely touch a strong boundary's
    shoulder.
    """
    candidates = ridge & (strength > low)
    labels, n = ndi.label(candidates, structure=_EIGHT)
    strong = np.zeros(n + 1, dtype=bool)
    strong[np.unique(labels[candidates & (strength > high)])] = True
    strong[0] = False
    return strong[labels]


def _resolve_thresholds(strength, ridge_values, low, high) -> tuple[float, float]:
    for name, value in (("low", low), ("high", high)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if high is None:
        auto_low, high = auto_thresholds(strength, ridge_values)
        low = auto_low if low is None else low
    elif low is None:
        low = high / 2
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    return float(low), float(high)


def _drop_short(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """Remove 8-connected components with fewer than ``min_pixels`` pixels."""
    if min_pixels <= 1:
        return mask
    labels, n = ndi.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def _pixel_graph(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Neighbour lists of a thin mask's pixels.

    4-neighbours always connect; diagonal neighbours only when they share no
    4-neighbour in the mask, so that a staircase corner is a path, not a
    triangle that would look like a junction.
    """
    rows, cols = np.nonzero(mask)
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[rows, cols] = np.arange(len(rows))
    padded = np.pad(index, 1, constant_values=-1)
    neighbours: list[list[int]] = [[] for _ in range(len(rows))]
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == 0 and dc == 0:
                continue
            other = padded[rows + 1 + dr, cols + 1 + dc]
            ok = other >= 0
            if dr != 0 and dc != 0:
                shared = (padded[rows + 1 + dr, cols + 1] >= 0) | (
                    padded[rows + 1, cols + 1 + dc] >= 0
                )
                ok &= ~shared
            for a, b in zip(np.flatnonzero(ok), other[ok], strict=True):
                neighbours[a].append(int(b))
    return rows, cols, neighbours


def _trace_chains(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a thin mask into pixel chains between ends and junctions.

    Returns ``(rows, cols)`` of every chain in order; a chain between two
    junctions includes both junction pixels, so polylines meet there, and
    closed loops repeat their first pixel.
    """
    rows, cols, neighbours = _pixel_graph(mask)
    degree = np.array([len(n) for n in neighbours])
    visited: set[tuple[int, int]] = set()
    chains = []

    def walk(start: int, nxt: int) -> list[int]:
        path = [start]
        previous, current = start, nxt
        visited.add((min(start, nxt), max(start, nxt)))
        while True:
            path.append(current)
            if degree[current] != 2 or current == start:
                return path
            following = [k for k in neighbours[current] if k != previous]
            if not following:
                return path
            k = following[0]
            edge = (min(current, k), max(current, k))
            if edge in visited:
                return path
            visited.add(edge)
            previous, current = current, k

    for node in np.flatnonzero(degree != 2):
        if degree[node] == 0:
            chains.append([int(node)])
            continue
        for k in neighbours[node]:
            if (min(node, k), max(node, k)) not in visited:
                chains.append(walk(int(node), k))
    # Loops made only of degree-2 pixels.
    for node in np.flatnonzero(degree == 2):
        k = neighbours[node][0]
        if (min(node, k), max(node, k)) not in visited:
            chains.append(walk(int(node), k))
    return [(rows[c], cols[c]) for c in chains]


# ------------------------------------------------------------- segmentation


def segment_grains(
    model,
    factor: float = 4,
    threshold: float | None = None,
    merge_threshold: float | None = None,
    min_area: float | None = None,
    show_progressbar: bool | None = None,
) -> GrainSegmentation:
    """Grain segmentation by a marker-controlled watershed of ``S``.

    Parameters
    ----------
    model
        A :class:`~kikuchipy_neural.NeuralEBSDModel`.
    factor
        Grid refinement of the segmentation.
    threshold
        Points with ``S`` below it seed grain interiors (markers are their
        connected regions); default the automatic low hysteresis threshold
        (:func:`auto_thresholds`).
    merge_threshold
        Neighbouring watershed regions whose shared line has a mean ``S``
        below this are one grain; default the automatic high threshold.
    min_area
        Markers smaller than this (calibrated units squared) are ignored;
        default a quarter of a scan step squared.
    show_progressbar
        Progress bar of the ``S`` evaluation.

    Returns
    -------
    GrainSegmentation
    """
    geometry = model.geometry
    xy, fine_dx, fine_dy = _grid(geometry, factor)
    strength = evaluate_gradient(model, xy, "norm", show_progressbar=show_progressbar)
    auto_low, auto_high = auto_thresholds(strength, _local_maxima(strength))
    threshold = auto_low if threshold is None else float(threshold)
    merge_threshold = auto_high if merge_threshold is None else float(merge_threshold)
    pixel_area = abs(fine_dx * fine_dy)
    min_area = 0.25 * geometry.step**2 if min_area is None else float(min_area)

    labels = _watershed_grains(
        strength, threshold, merge_threshold, min_area / pixel_area
    )
    areas = np.bincount(labels.ravel()) * pixel_area
    return GrainSegmentation(
        labels=labels.astype(np.int32),
        xy=xy,
        areas=areas,
        threshold=threshold,
        merge_threshold=merge_threshold,
        factor=float(factor),
        units=geometry.units,
    )


def _watershed_grains(
    strength: np.ndarray, threshold: float, merge_threshold: float, min_pixels: float
) -> np.ndarray:
    """Grain labels ``0 .. n - 1`` of an ``S`` map (see :func:`segment_grains`)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from skimage.measure import label
    from skimage.segmentation import watershed

    markers = label(strength < threshold, connectivity=1)
    sizes = np.bincount(markers.ravel())
    small = sizes < min_pixels
    small[0] = False
    markers[small[markers]] = 0
    regions = watershed(strength, markers)

    # Merge neighbours separated by a weak line: mean S over the pairs of
    # 4-adjacent pixels that straddle their shared border.
    pairs, weights = [], []
    for a, b, sa, sb in (
        (regions[:, :-1], regions[:, 1:], strength[:, :-1], strength[:, 1:]),
        (regions[:-1], regions[1:], strength[:-1], strength[1:]),
    ):
        cross = a != b
        lo = np.minimum(a[cross], b[cross])
        hi = np.maximum(a[cross], b[cross])
        pairs.append(np.stack([lo, hi], axis=1))
        weights.append(np.maximum(sa[cross], sb[cross]))
    n = int(regions.max()) + 1
    merged = np.arange(n)
    if pairs and len(np.concatenate(pairs)):
        pairs_all = np.concatenate(pairs)
        w = np.concatenate(weights).astype(np.float64)
        key = pairs_all[:, 0] * n + pairs_all[:, 1]
        unique, inverse = np.unique(key, return_inverse=True)
        mean = np.bincount(inverse, w) / np.bincount(inverse)
        weak = mean < merge_threshold
        u, v = np.divmod(unique[weak], n)
        graph = coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n))
        _, merged = connected_components(graph, directed=False)
    labels = merged[regions]
    _, labels = np.unique(labels, return_inverse=True)
    labels = labels.reshape(regions.shape)
    # A merged label may hold pieces that do not touch: split them.
    labels = label(labels + 1, connectivity=1, background=0) - 1
    return labels


def _local_maxima(strength: np.ndarray) -> np.ndarray:
    """Values of ``S`` at its 3 x 3 maxima along rows or columns (ridge samples)."""
    s = np.asarray(strength, dtype=np.float64)
    along_x = s >= ndi.maximum_filter1d(s, 3, axis=1)
    along_y = s >= ndi.maximum_filter1d(s, 3, axis=0)
    return s[along_x | along_y]


# ------------------------------------------------------ orientation route


def orientation_boundaries(xmap, thresholds=(2.0, 10.0)) -> OrientationBoundaries:
    """Boundaries between neighbouring scan points by disorientation (orix).

    Parameters
    ----------
    xmap
        orix ``CrystalMap`` on a 2D grid (e.g. from
        :func:`kikuchipy_neural.analysis.metrics.hough_index`).
        Points of different phases or non-indexed points always count as a
        boundary (angle ``inf``).
    thresholds
        Ascending angle classes, degrees; points below the first are not
        boundaries.

    Returns
    -------
    OrientationBoundaries
    """
    from orix.quaternion import Orientation

    thresholds = tuple(float(t) for t in np.atleast_1d(thresholds))
    if (
        not thresholds
        or any(t <= 0 for t in thresholds)
        or list(thresholds) != sorted(thresholds)
    ):
        raise ValueError(
            f"thresholds must be ascending positive angles, got {thresholds}"
        )
    if len(xmap.shape) != 2:
        raise ValueError(f"Expected a 2D crystal map, got shape {xmap.shape}")
    ny, nx = xmap.shape
    dy, dx = xmap.dy, xmap.dx
    x = (
        xmap.x.reshape(ny, nx)
        if xmap.x is not None
        else np.tile(np.arange(nx) * dx, (ny, 1))
    )
    y = (
        xmap.y.reshape(ny, nx)
        if xmap.y is not None
        else np.tile((np.arange(ny) * dy)[:, None], (1, nx))
    )
    quats = xmap.rotations.data.reshape(ny, nx, 4)
    phase_id = xmap.phase_id.reshape(ny, nx)
    angles = np.full((ny, nx, 2), np.nan)  # to the right, downwards
    for pid, phase in xmap.phases:
        if pid < 0:
            continue
        sym = phase.point_group
        for k, (a, b) in enumerate(
            ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :]))
        ):
            same = (phase_id[a] == pid) & (phase_id[b] == pid)
            if not same.any():
                continue
            oa = Orientation(quats[a][same], symmetry=sym)
            ob = Orientation(quats[b][same], symmetry=sym)
            target = angles[a][..., k]
            target[same] = np.rad2deg(oa.angle_with(ob))
            angles[a + (k,)] = target
    points, values, segments = [], [], []
    for k, (a, b) in enumerate(
        ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :]))
    ):
        ang = angles[a][..., k]
        ang = np.where(np.isnan(ang), np.inf, ang)
        sel = ang >= thresholds[0]
        xa, ya, xb, yb = x[a][sel], y[a][sel], x[b][sel], y[b][sel]
        mid = np.stack([(xa + xb) / 2, (ya + yb) / 2], axis=-1)
        # The shared pixel edge is perpendicular to the a-b link.
        half = np.stack([-(yb - ya), xb - xa], axis=-1) / 2
        points.append(mid)
        values.append(ang[sel])
        segments.append(np.stack([mid - half, mid + half], axis=1))
    return OrientationBoundaries(
        points=np.concatenate(points),
        angles=np.concatenate(values),
        segments=np.concatenate(segments),
        thresholds=thresholds,
    )


# ------------------------------------------------------------------ helpers


def _grid(geometry, factor) -> tuple[np.ndarray, float, float]:
    """The grid of ``upsample(factor)``: ``(ny', nx', 2)`` and its steps."""
    from kikuchipy_neural.analysis.queries import upsample_xy

    xy, axes = upsample_xy(geometry, factor)
    if len(axes) != 2 or min(xy.shape[:2]) < 3:
        raise ValueError(
            "Boundaries need a 2D scan and a grid of at least 3 x 3 points; "
            f"got a grid of shape {xy.shape[:-1]} at factor {factor}"
        )
    return xy, float(axes[1]["scale"]), float(axes[0]["scale"])


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def _extent(xy: np.ndarray) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) of a grid of pixel centres."""
    x, y = xy[0, :, 0], xy[:, 0, 1]
    hx = (x[1] - x[0]) / 2 if len(x) > 1 else 0.5
    hy = (y[1] - y[0]) / 2 if len(y) > 1 else 0.5
    return (x[0] - hx, x[-1] + hx, y[-1] + hy, y[0] - hy)
