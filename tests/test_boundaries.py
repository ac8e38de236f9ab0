"""Boundaries and grains from the diffraction gradient, without indexing.

Two kinds of truth: closed-form fields whose boundaries are known exactly
(bisectors of a smooth Voronoi membership), which test the ridge pipeline
itself to a hundredth of a step, and a fitted two-grain map with a straight
boundary at a sub-step position, which tests it on a real field.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from kikuchipy_neural.analysis import boundaries as B  # noqa: E402
from kikuchipy_neural.analysis.plotting import (  # noqa: E402
    gradient_profile,
    plot_boundaries,
    plot_profile,
)
from kikuchipy_neural.fields.base import NeuralField  # noqa: E402
from kikuchipy_neural.geometry import ScanGeometry  # noqa: E402
from kikuchipy_neural.model import NeuralEBSDModel  # noqa: E402

# ------------------------------------------------------------ closed forms


class SoftVoronoiField(NeuralField):
    """Descriptor = softmax(-k |p - seed_i|^2) over seeds, p calibrated.

    Between two seeds the membership is a logistic function of the signed
    distance to their bisector, so ``S`` is symmetric about the bisector:
    the true boundaries are exactly the Voronoi edges.
    """

    formulation = "soft_voronoi"

    def __init__(self, geometry: ScanGeometry, seeds, sharpness: float):
        super().__init__(geometry.pattern_shape)
        centre, half = geometry._centre_and_half_extent
        self.register_buffer("centre", torch.tensor(centre, dtype=torch.float32))
        self.half = float(half)
        self.register_buffer(
            "seeds", torch.tensor(np.asarray(seeds), dtype=torch.float32)
        )
        self.k = float(sharpness)
        self.dummy = nn.Parameter(torch.zeros(()))

    def descriptor(self, xy):
        p = xy * self.half + self.centre
        d2 = ((p[:, None, :] - self.seeds[None]) ** 2).sum(-1)
        return torch.softmax(-self.k * d2, dim=1)

    def pattern_values(self, xy, pixels=None):
        raise NotImplementedError

    def values_at(self, xy, pixels):
        raise NotImplementedError

    @property
    def config(self):
        return {"formulation": self.formulation}


def _voronoi_model(seeds, nx=16, ny=12, step=1.0, sharpness=None):
    geometry = ScanGeometry(
        nx=nx, ny=ny, x0=0.0, y0=0.0, dx=step, dy=step, units="um", pattern_shape=(4, 4)
    )
    seeds = np.asarray(seeds, float)
    if sharpness is None:
        # Transition about one step wide for seeds ~ 8 steps apart.
        sharpness = 0.5 / step**2
    field = SoftVoronoiField(geometry, seeds, sharpness)
    return NeuralEBSDModel(field, geometry, (0.0, 1.0))


def _bisector_distance(xy, seeds):
    """Distance to the nearest Voronoi edge (exact for convex cells)."""
    xy = np.asarray(xy, float)
    d = np.linalg.norm(xy[..., None, :] - seeds, axis=-1)
    own = d.argmin(-1)
    best = np.full(xy.shape[:-1], np.inf)
    for j in range(len(seeds)):
        si = seeds[own]
        sj = seeds[j]
        normal = sj - si
        norm = np.linalg.norm(normal, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            dist = ((xy - (si + sj) / 2) * normal).sum(-1) / norm
        dist = np.where(own == j, np.inf, np.abs(dist))
        best = np.minimum(best, dist)
    return best


TWO_SEEDS = np.array([[4.0, 5.5], [11.6, 5.5]])  # bisector x = 7.8 (sub-step)
THREE_SEEDS = np.array([[3.0, 3.0], [12.0, 4.0], [7.0, 10.0]])


def test_ridge_trace_closed_form_two_grains():
    model = _voronoi_model(TWO_SEEDS)
    trace = B.ridge_trace(model, factor=6)
    # One straight vertical trace at x = 7.8 over the whole scan height.
    assert len(trace.polylines) == 1
    line = trace.polylines[0]
    np.testing.assert_allclose(line[:, 0], 7.8, atol=0.01)
    assert np.ptp(line[:, 1]) == pytest.approx(11.0, abs=0.2)
    assert trace.total_length == pytest.approx(11.0, abs=0.3)
    np.testing.assert_allclose(np.abs(trace.normals[:, 0]), 1.0, atol=1e-3)
    assert trace.low < trace.high
    # Without refinement the points are fine-grid pixels: off by up to half
    # a fine step (1/12 step), and the nearest column is 7.8333.
    raw = B.ridge_trace(model, factor=6, refine=None)
    np.testing.assert_allclose(raw.points[:, 0], 7.0 + 5 / 6, atol=1e-9)
    peak = B.ridge_trace(model, factor=6, refine="peak")
    np.testing.assert_allclose(peak.points[:, 0], 7.8, atol=0.01)


def test_ridge_trace_closed_form_junction():
    model = _voronoi_model(THREE_SEEDS, sharpness=0.6)
    trace = B.ridge_trace(model, factor=6)
    dist = _bisector_distance(trace.points, THREE_SEEDS)
    # The junction (circumcentre) distorts S within a step or so of it.
    a, b, c = THREE_SEEDS
    centre = _circumcentre(a, b, c)
    far = np.linalg.norm(trace.points - centre, axis=1) > 1.5
    assert np.median(dist) < 0.01
    assert dist[far].max() < 0.05
    # Three boundaries meeting near the junction: three polylines whose ends
    # come within a step of the circumcentre.
    long_lines = [p for p in trace.polylines if len(p) > 5]
    assert len(long_lines) == 3
    ends = np.array(
        [min(np.linalg.norm(p[[0, -1]] - centre, axis=1)) for p in long_lines]
    )
    assert ends.max() < 1.0
    # Recall: every point of the true edges inside the scan is near a trace.
    grid = model.geometry.grid_xy(10)
    on_edge = grid[_bisector_distance(grid, THREE_SEEDS) < 0.05]
    assert (trace.distance_to(on_edge) < 0.5).mean() > 0.97


def _circumcentre(a, b, c):
    d = 2 * (a[0] * (b[1] - c[1]) + b[0] * (c[1] - a[1]) + c[0] * (a[1] - b[1]))
    ux = (
        (a @ a) * (b[1] - c[1]) + (b @ b) * (c[1] - a[1]) + (c @ c) * (a[1] - b[1])
    ) / d
    uy = (
        (a @ a) * (c[0] - b[0]) + (b @ b) * (a[0] - c[0]) + (c @ c) * (b[0] - a[0])
    ) / d
    return np.array([ux, uy])


def test_segment_grains_closed_form():
    model = _voronoi_model(THREE_SEEDS, sharpness=0.6)
    seg = B.segment_grains(model, factor=4)
    assert seg.n_grains == 3
    truth = np.linalg.norm(seg.xy[..., None, :] - THREE_SEEDS, axis=-1).argmin(-1)
    interior = _bisector_distance(seg.xy, THREE_SEEDS) > 0.5
    # Same partition (labels may be permuted).
    pairs = {
        (int(a), int(b))
        for a, b in zip(seg.labels[interior], truth[interior], strict=True)
    }
    assert len(pairs) == 3
    # Areas: pixel counts of the 4x grid, summing to the grid's area.
    assert seg.areas.sum() == pytest.approx(seg.labels.size / 16)
    true_areas = np.sort(np.bincount(truth.ravel()) / 16)
    np.testing.assert_allclose(np.sort(seg.areas), true_areas, atol=1.0)
    assert seg.equivalent_diameters.shape == (3,)
    # grain_id_at reads the map at arbitrary points.
    ids = seg.grain_id_at(THREE_SEEDS)
    assert len(set(ids.tolist())) == 3


def test_ridge_trace_on_isotropic_scaling():
    """Everything is in calibrated units: a 0.25 um step gives the same
    traces scaled by 0.25."""
    one = B.ridge_trace(_voronoi_model(THREE_SEEDS, sharpness=0.6), factor=6)
    quarter = B.ridge_trace(
        _voronoi_model(THREE_SEEDS * 0.25, step=0.25, sharpness=0.6 * 16), factor=6
    )
    assert quarter.total_length == pytest.approx(one.total_length * 0.25, rel=1e-3)
    np.testing.assert_allclose(
        np.sort(quarter.points[:, 0]), np.sort(one.points[:, 0]) * 0.25, atol=1e-3
    )


def test_ridge_trace_errors():
    model = _voronoi_model(TWO_SEEDS)
    with pytest.raises(ValueError, match="factor"):
        B.ridge_trace(model, factor=0)
    with pytest.raises(ValueError, match="refine"):
        B.ridge_trace(model, refine="parabola")
    with pytest.raises(ValueError, match="half_width"):
        B.ridge_trace(model, half_width=-1)
    with pytest.raises(ValueError, match="min_length"):
        B.ridge_trace(model, min_length=-1)
    with pytest.raises(ValueError, match="low"):
        B.ridge_trace(model, low=2.0, high=1.0)
    with pytest.raises(ValueError, match="high"):
        B.ridge_trace(model, high=np.nan)
    line_geometry = ScanGeometry(
        nx=16, ny=1, x0=0.0, y0=0.0, dx=1.0, dy=1.0, units="um", pattern_shape=(4, 4)
    )
    line = NeuralEBSDModel(
        SoftVoronoiField(line_geometry, TWO_SEEDS, 0.5), line_geometry, (0, 1)
    )
    with pytest.raises(ValueError, match="2D scan"):
        B.ridge_trace(line)
    with pytest.raises(ValueError, match="2D scan"):
        B.segment_grains(line)


def test_explicit_thresholds():
    model = _voronoi_model(TWO_SEEDS)
    trace = B.ridge_trace(model, high=1e9)
    assert len(trace.points) == 0 and trace.polylines == []
    assert trace.total_length == 0.0
    assert np.isinf(trace.distance_to(np.zeros((3, 2)))).all()
    trace = B.ridge_trace(model, high=0.01)
    assert trace.low == pytest.approx(0.005)


# ------------------------------------------------------ pieces on arrays


def test_trace_chains_junction_and_loop():
    mask = np.zeros((12, 12), bool)
    mask[1:6, 5] = True  # a T: stem ...
    mask[6, 1:10] = True  # ... and bar
    mask[9:11, 1:3] = True  # a 2x2 block is a loop of 4 pixels
    chains = B._trace_chains(mask)
    lengths = sorted(len(r) for r, _ in chains)
    # Stem 5 + junction, the two halves of the bar (4 + junction each), and
    # the loop (4 pixels, the first repeated at the end).
    assert lengths == [5, 5, 5, 6]
    junction = (6, 5)
    with_junction = [
        (r, c)
        for r, c in chains
        if junction in set(zip(r.tolist(), c.tolist(), strict=True))
    ]
    assert len(with_junction) == 3
    loop = [(r, c) for r, c in chains if (r[0], c[0]) == (r[-1], c[-1])]
    assert len(loop) == 1 and loop[0][0].min() == 9
    # Every mask pixel is in some chain.
    covered = {(int(a), int(b)) for r, c in chains for a, b in zip(r, c, strict=True)}
    assert covered == set(zip(*np.nonzero(mask), strict=True))


def test_trace_chains_diagonal_staircase_is_one_chain():
    mask = np.zeros((10, 10), bool)
    rows = [0, 1, 1, 2, 3, 3, 4, 5, 5, 6]
    cols = [0, 0, 1, 2, 2, 3, 4, 4, 5, 6]
    mask[rows, cols] = True
    chains = B._trace_chains(mask)
    assert len(chains) == 1
    assert len(chains[0][0]) == len(rows)


def test_hysteresis_follows_diagonals():
    ridge = np.eye(8, dtype=bool)
    strength = np.full((8, 8), 0.5)
    strength[0, 0] = 2.0  # one strong pixel
    kept = B._hysteresis(ridge, strength, low=0.2, high=1.0)
    assert kept.sum() == 8  # the whole diagonal, via 8-connectivity
    assert not B._hysteresis(ridge, strength, low=0.6, high=1.0)[1:].any()


def test_auto_thresholds_bimodal(rng):
    interior = rng.lognormal(np.log(0.05), 0.3, 5000)
    ridges = rng.lognormal(np.log(2.0), 0.3, 500)
    low, high = B.auto_thresholds(
        np.concatenate([interior, ridges]), np.concatenate([interior[:500], ridges])
    )
    assert 0.15 < high < 1.0
    assert np.median(interior) < low < high
    with pytest.raises(ValueError, match="zero everywhere"):
        B.auto_thresholds(np.zeros(10))


def test_auto_thresholds_unimodal_ripples_give_no_boundary(rng):
    """One mode (the ripples of a map without boundaries): ISODATA would
    split it anyway; the thresholds stay far above all of it."""
    ripples = rng.lognormal(np.log(0.05), 0.4, 20000)
    low, high = B.auto_thresholds(ripples, ripples[::10])
    assert high >= B.HIGH_CONTRAST * np.percentile(ripples, 25) * 0.999
    assert low >= B.LOW_CONTRAST * np.percentile(ripples, 25) * 0.999
    assert ripples.max() < low <= high


def test_non_maximum_suppression_thin():
    x = np.arange(40) / 4.0
    strength = np.exp(-((x - 5.1) ** 2))[None, :].repeat(5, axis=0)
    d_row = np.zeros_like(strength)
    d_col = np.ones_like(strength)
    nms = B._non_maximum_suppression(strength, d_row, d_col)
    assert (nms.sum(axis=1) == 1).all()
    assert (np.nonzero(nms)[1] == 20).all()


# ------------------------------------------------ orientation-based route


def test_orientation_boundaries_on_true_orientations(two_grain):
    s, truth = two_grain
    ob = B.orientation_boundaries(s.xmap, thresholds=(2, 10))
    ny, nx = s.axes_manager.navigation_shape[::-1]
    # One vertical line of pixel edges between the columns either side of
    # x = 7.8: at the grid midpoint 7.5, 0.3 step off the truth.
    assert len(ob.points) == ny
    np.testing.assert_allclose(ob.points[:, 0], 7.5)
    np.testing.assert_allclose(np.sort(ob.points[:, 1]), np.arange(ny))
    true_angle = truth.orientations[0, 0].angle_with(
        truth.orientations[0, -1], degrees=True
    )
    np.testing.assert_allclose(ob.angles, float(np.squeeze(true_angle)), atol=1e-3)
    assert ob.select(10).all() and not ob.select(2, 10).any()
    np.testing.assert_allclose(ob.segments[:, :, 0], 7.5)
    np.testing.assert_allclose(np.abs(ob.segments[:, 1, 1] - ob.segments[:, 0, 1]), 1.0)


def test_orientation_boundaries_errors(two_grain):
    s, _ = two_grain
    with pytest.raises(ValueError, match="ascending"):
        B.orientation_boundaries(s.xmap, thresholds=(10, 2))
    with pytest.raises(ValueError, match="ascending"):
        B.orientation_boundaries(s.xmap, thresholds=(-1,))


# ---------------------------------------------------------- fitted field


@pytest.fixture(scope="module")
def two_grain():
    """8x16 scan of 40x40 px, one vertical boundary at x = 7.8 (0.3 step
    right of the midpoint between columns 7 and 8)."""
    from kikuchipy_neural.data import two_grain_map

    s = two_grain_map((8, 16), (40, 40), seed=1)
    truth = s.truth
    assert truth.boundary_x == pytest.approx(7.8)
    s.set_signal_type("NeuralEBSD")
    return s, truth


@pytest.fixture(scope="module")
def two_grain_fitted(two_grain):
    from conftest import FAST_FIT

    s, truth = two_grain
    s = s.deepcopy()
    # This test's small network (FAST_FIT) places the two-grain boundary
    # reliably only with the warm start at the paper's lr: fit seeds 0-3 put
    # the main ridge's median 0.07-0.10 step from the truth at 1e-4, but two
    # of four 0.7 step off at a fixed 2e-4 (the default start, chosen for
    # the default 512-wide network, whose boundary accuracy
    # benchmarks/boundaries.py measures; measured before the warm start
    # halved its rate on a stall).
    s.fit_neural(seed=0, **dict(FAST_FIT, warm_start_lr=1e-4))
    return s, truth


def test_two_grain_s_peaks_at_boundary(two_grain_fitted):
    """S peaks at the boundary.

    The field knows where the boundary is only through the beam mixture at
    column 8 (0.2 step from the boundary); the peak of a smooth interpolant
    through the scan points lies between the grid midpoint (7.5, where any
    grid method must put it) and the truth (7.8). Every row's peak must lie
    in the boundary's cell, within 0.35 step of the truth (on a 0.1 step
    grid, the midpoint counts); on average over the rows the peaks must sit
    at least 0.1 step right of the midpoint, towards the truth. Fits of
    this test's small network with fit seeds 0-3 and warm-start learning
    rates 1e-4 and 2e-4 put the row mean at 7.65-7.70 and single rows at
    7.5-7.9. The centroid of S across the ridge (the trace's refinement)
    does not depend on the interpolant's shape and is held to 0.1 step
    below.
    """
    s, truth = two_grain_fitted
    s_map = s.diffraction_gradient(factor=10)
    x = s_map.axes_manager["x"].axis
    peaks = x[s_map.data.argmax(axis=1)]
    assert np.all(np.abs(peaks - truth.boundary_x) < 0.35)
    midpoint = 7.5  # between columns 7 and 8
    assert peaks.mean() >= midpoint + 0.1
    # The boundary dominates: S there is far above the interiors.
    interior = np.abs(x - truth.boundary_x) > 1.5
    assert s_map.data.max(axis=1).min() > 5 * np.median(s_map.data[:, interior])


def test_two_grain_ridge_is_straight_and_in_place(two_grain_fitted):
    s, truth = two_grain_fitted
    trace = s.neural_boundaries(factor=8)
    main = max(trace.polylines, key=len)
    # Spans the scan from top to bottom ...
    assert np.ptp(main[:, 1]) > 6.5
    # ... as a straight vertical line: a fitted x = a + b y has a slope of
    # at most 0.02 and residuals within 0.05 step.
    b, a = np.polyfit(main[:, 1], main[:, 0], 1)
    assert abs(b) < 0.02
    assert np.abs(main[:, 0] - (a + b * main[:, 1])).max() < 0.05
    # In place: within 0.1 step of x = 7.8 (the grid midpoint is 0.3 off).
    assert np.abs(np.median(main[:, 0]) - truth.boundary_x) < 0.1
    assert np.all(np.abs(trace.points[:, 0] - truth.boundary_x) < 0.15)
    assert trace.total_length == pytest.approx(7.0, abs=0.5)


def test_two_grain_segmentation(two_grain_fitted):
    s, truth = two_grain_fitted
    seg = s.neural_grains(factor=4)
    assert seg.n_grains == 2
    clear = np.abs(seg.xy[..., 0] - truth.boundary_x) > 0.5
    truth_ids = truth.grain_id_at(seg.xy)
    pairs = {
        (int(a), int(b))
        for a, b in zip(seg.labels[clear], truth_ids[clear], strict=True)
    }
    assert len(pairs) == 2
    # Areas (grid pixels times pixel area) within half a step times the map's
    # height of the true ones on the same grid: the watershed line follows
    # the S peak (within 0.25 step, above) to within one 0.25-step pixel.
    pixel = 1 / 16
    true_areas = np.bincount(truth_ids.ravel()) * pixel
    height = seg.labels.shape[0] * 0.25
    assert seg.areas.sum() == pytest.approx(true_areas.sum())
    np.testing.assert_allclose(
        np.sort(seg.areas), np.sort(true_areas), atol=0.5 * height
    )


def test_plots(two_grain_fitted):
    s, truth = two_grain_fitted
    s_map = s.diffraction_gradient(factor=4)
    trace = s.neural_boundaries(factor=4)
    ob = B.orientation_boundaries(s.xmap)
    ax = plot_boundaries(s_map, trace, ob)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "S ridges (field)" in labels
    assert any("indexed" in label for label in labels)
    assert len(ax.collections) == 2
    plt.close(ax.figure)
    ax = plot_profile(s, (0.0, 3.0), (15.0, 3.0), n=151, trace=trace, orientation=ob)
    marks = [line.get_xdata()[0] for line in ax.lines[1:]]
    assert len(marks) == 2
    # The ridge mark is at the truth within 0.15, the indexed one at 7.5.
    assert min(abs(m - truth.boundary_x) for m in marks) < 0.15
    assert min(abs(m - 7.5) for m in marks) < 1e-6
    plt.close(ax.figure)
    distance, values = gradient_profile(s, (0.0, 3.0), (15.0, 3.0), n=151)
    assert distance[-1] == pytest.approx(15.0)
    assert abs(distance[values.argmax()] - truth.boundary_x) < 0.25
    with pytest.raises(TypeError, match="Signal2D"):
        plot_boundaries(np.zeros((3, 3)))
    with pytest.raises(TypeError, match="NeuralEBSDModel"):
        plot_profile(np.zeros(3), (0, 0), (1, 1))


def test_hough_baseline(two_grain):
    """Hough indexing (PyEBSDIndex) recovers the two orientations, and its
    boundaries sit at the grid midpoint."""
    from kikuchipy_neural.analysis.metrics import hough_index

    s, truth = two_grain
    xmap = hough_index(s)
    error = truth.orientation_error(xmap)
    assert np.median(error) < 2.0
    ob = B.orientation_boundaries(xmap, thresholds=(2, 10))
    high = ob.points[ob.select(10)]
    assert len(high) >= 6
    assert np.median(np.abs(high[:, 0] - 7.5)) < 1e-6


# ------------------------------------------- defaults on fitted fields


def _default_fit(s):
    """A fit with the package's default coordinate frequency."""
    from conftest import FAST_FIT

    options = {k: v for k, v in FAST_FIT.items() if k != "first_omega_0"}
    s.fit_neural(seed=0, **options)
    return s


def test_map_without_boundaries_gives_no_trace():
    """One grain and Poisson noise: the field's ripples are no boundary."""
    from orix.quaternion import Rotation

    from kikuchipy_neural.data import Microstructure, synthetic_polycrystal

    grain = Microstructure.from_seeds(
        [[8.0, 8.0]], Rotation.from_axes_angles([1, 2, 3], 0.4)
    )
    s = synthetic_polycrystal((16, 16), (32, 32), microstructure=grain, seed=1)
    s.set_signal_type("NeuralEBSD")
    s = _default_fit(s)
    trace = s.neural_boundaries(show_progressbar=False)
    assert trace.polylines == [] and len(trace.points) == 0
    assert s.neural_grains(show_progressbar=False).n_grains == 1


def test_one_straight_boundary_gives_one_polyline():
    from kikuchipy_neural.data import two_grain_map

    s = two_grain_map((16, 16), (32, 32), seed=1)
    truth = s.truth
    s.set_signal_type("NeuralEBSD")
    s = _default_fit(s)
    trace = s.neural_boundaries(show_progressbar=False)
    assert len(trace.polylines) == 1
    line = trace.polylines[0]
    assert np.ptp(line[:, 1]) > 14  # from the top of the scan to its bottom
    assert np.abs(trace.points[:, 0] - truth.boundary_x).max() < 0.3
