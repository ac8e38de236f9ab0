"""Tests of the simulated Ni EBSD maps with known truth (kikuchipy_neural.data).

Maps are tiny (a few to 12 x 12 scan points of 32 x 32 or 40 x 40 px
patterns); the whole file runs in well under a minute once kikuchipy's and
PyEBSDIndex's numba code is compiled and cached.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from kikuchipy.detectors import EBSDDetector
from orix.crystal_map import PhaseList
from orix.quaternion import Orientation, Rotation

from kikuchipy_neural.data import (
    Microstructure,
    SyntheticTruth,
    synthetic_polycrystal,
    two_grain_map,
)

SMALL = dict(shape=(8, 8), pattern_shape=(32, 32))


@pytest.fixture(scope="module")
def twinned():
    """A small map with every optional effect switched on."""
    return synthetic_polycrystal(
        (10, 10),
        (32, 32),
        n_grains=3,
        seed=7,
        twins=1.0,
        orientation_gradient=0.5,
        pc_gradient=[[1e-3, 0, 0], [0, -1e-3, 5e-4]],
    )


def _segment_fraction(d: float, r: float) -> float:
    """Area fraction of a disk of radius r beyond a chord at distance d."""
    return (r**2 * np.arccos(d / r) - d * np.sqrt(r**2 - d**2)) / (np.pi * r**2)


# ------------------------------------------------------------------ basics


def test_deterministic_by_seed_uint16():
    a = synthetic_polycrystal(**SMALL, n_grains=3, seed=3)
    b = synthetic_polycrystal(**SMALL, n_grains=3, seed=3)
    c = synthetic_polycrystal(**SMALL, n_grains=3, seed=4)
    d = synthetic_polycrystal(**SMALL, n_grains=3, seed=3, noise_seed=99)
    assert a.data.dtype == np.uint16 and a.data.shape == (8, 8, 32, 32)
    assert np.array_equal(a.data, b.data)
    assert np.array_equal(a.truth.grain_id, b.truth.grain_id)
    assert not np.array_equal(a.data, c.data)
    # Another noise realisation of the same map.
    assert np.array_equal(a.truth.clean, d.truth.clean)
    assert not np.array_equal(a.data, d.data)
    # Realistic 16-bit full scale.
    assert 40_000 < a.data.max() < 65_535
    assert isinstance(a.truth, SyntheticTruth)
    assert a.truth.seed == 3 and a.truth.n_grains == 3 and a.truth.kind == "voronoi"


def test_seed_none_is_recorded_and_reproducible():
    a = synthetic_polycrystal((4, 4), (32, 32), n_grains=2, seed=None)
    b = synthetic_polycrystal((4, 4), (32, 32), n_grains=2, seed=a.truth.seed)
    assert np.array_equal(a.data, b.data)


def test_axes_calibrated_and_coordinates():
    s = synthetic_polycrystal(
        (5, 7), (32, 32), n_grains=2, step=0.5, origin=(2.0, -1.0)
    )
    am = s.axes_manager
    (ax_x, ax_y), (ax_dx, ax_dy) = am.navigation_axes, am.signal_axes
    assert (ax_x.name, ax_y.name, ax_dx.name, ax_dy.name) == ("x", "y", "dx", "dy")
    assert (ax_x.size, ax_y.size) == (7, 5)
    assert ax_x.scale == ax_y.scale == 0.5
    assert (ax_x.offset, ax_y.offset) == (2.0, -1.0)
    assert ax_x.units == ax_y.units == "um"
    assert ax_dx.units == ax_dy.units == "px" and ax_dx.scale == 1
    # Row i, column j sits at (x0 + j dx, y0 + i dy).
    xy = s.truth.xy
    assert np.allclose(xy[2, 3], [2.0 + 3 * 0.5, -1.0 + 2 * 0.5])
    assert np.allclose(xy[..., 0], ax_x.axis[None, :])
    assert np.allclose(xy[..., 1], ax_y.axis[:, None])
    assert s.truth.step == 0.5 and s.truth.origin == (2.0, -1.0)


def test_detector_and_xmap_consistent_with_truth():
    s = synthetic_polycrystal(**SMALL, n_grains=3, seed=1, pc=(0.48, 0.25, 0.6))
    t = s.truth
    det = s.detector
    assert det.shape == (32, 32) and det.sample_tilt == 70
    assert np.allclose(det.pc, [0.48, 0.25, 0.6])
    assert t.detector is det
    xmap = s.xmap
    assert xmap.shape == (8, 8) and xmap.phases[0].name == "ni"
    assert xmap.phases[0].point_group.name == "m-3m"
    assert xmap.scan_unit == "um" and xmap.dx == xmap.dy == 1.0
    assert np.allclose(xmap.x.reshape(8, 8), t.xy[..., 0])
    assert np.allclose(xmap.y.reshape(8, 8), t.xy[..., 1])
    assert np.array_equal(xmap.get_map_data("grain_id"), t.grain_id)
    assert np.allclose(xmap.get_map_data("boundary_distance"), t.boundary_distance_grid)
    assert np.allclose(xmap.rotations.data.reshape(8, 8, 4), t.orientations.data)
    assert t.orientations.shape == (8, 8)
    assert t.orientations.symmetry.name == "m-3m"
    # Truth orientations are those of the grains (no gradient here).
    assert np.allclose(t.orientations.data, t.grain_orientations.data[t.grain_id])
    # The background kikuchipy can remove.
    assert s.static_background.shape == (32, 32)
    assert s.static_background.dtype == np.uint16


def test_truth_survives_set_signal_type_not_deepcopy():
    s = synthetic_polycrystal((4, 4), (32, 32), n_grains=2)
    truth = s.truth
    s.set_signal_type("NeuralEBSD")
    assert s.truth is truth
    assert not hasattr(s.deepcopy(), "truth")


# ------------------------------------------------------ indexing the truth


def test_hough_indexing_of_noise_free_patterns_recovers_truth():
    # 40 x 40 px is the smallest size that indexed reliably: at 32 x 32 px,
    # 2 of 240 random orientations (noise-free) were misindexed by
    # PyEBSDIndex, at 40, 48 and 60 px none.
    s = synthetic_polycrystal((12, 12), (40, 40), n_grains=3, seed=2, noise=False)
    s.remove_static_background(show_progressbar=False)
    s.remove_dynamic_background(show_progressbar=False)
    phase_list = PhaseList(s.xmap.phases[0])
    indexer = s.detector.get_indexer(phase_list, nBands=9)
    with contextlib.redirect_stdout(io.StringIO()):  # PyEBSDIndex's report
        xmap = s.hough_indexing(phase_list, indexer, verbose=0)
    error = s.truth.orientation_error(xmap)  # deg, under m-3m
    # Points farther than the beam reach + half a step from any boundary.
    interior = s.truth.interior_mask(margin=0.5)
    assert interior.sum() > 50
    assert np.mean(error[interior] < 1) >= 0.99
    # Same comparison spelled out with orix.
    est = Orientation(
        xmap.rotations.data.reshape(12, 12, 4), symmetry=s.truth.orientations.symmetry
    )
    angle = np.rad2deg(est.angle_with(s.truth.orientations))
    assert np.allclose(angle, error)


# -------------------------------------------------------------- geometry


def test_two_grain_map_boundary_distance_and_ids():
    s = two_grain_map((4, 10), (32, 32), boundary_x=4.3, seed=5)
    t = s.truth
    assert t.kind == "two_grain" and t.boundary_x == 4.3 and t.n_grains == 2
    x = t.xy[..., 0]
    assert np.array_equal(t.grain_id, (x > 4.3).astype(int))
    assert np.allclose(t.boundary_distance_grid, np.abs(x - 4.3))
    pts = np.array([[4.3, 0.0], [0.0, 2.5], [9.75, -3.0]])
    assert np.allclose(t.boundary_distance(pts), [0.0, 4.3, 5.45])
    # Default: a sub-step position right of the middle.
    u = two_grain_map((2, 8), (32, 32))
    assert u.truth.boundary_x == pytest.approx(3.5 + 0.3)
    # The two grains are clearly misoriented.
    o = u.truth.grain_orientations
    assert np.rad2deg(o[0].angle_with(o[1]))[0] >= 15


def test_boundary_distance_by_hand_with_twin():
    # Cell 0 is {x < 10, y < 10}; its lamella is the strip 2 < x < 4 (normal
    # along +x, midline 2 left of the seed, width 2), twin variant [111].
    rotations = Rotation.from_euler(
        np.deg2rad([[10, 20, 30], [40, 50, 60], [70, 80, 90]])
    )
    ms = Microstructure.from_seeds(
        [[5, 5], [15, 5], [5, 15]], rotations, twins=[[0, 0.0, -2.0, 2.0, 0]]
    )
    pts = np.array(
        [
            [3.5, 5.0],  # in the twin: 0.5 to its right edge
            [6.0, 5.0],  # parent: twin edge x = 4 at 2, x = 10 at 4
            [8.0, 8.0],  # parent: x = 10 and y = 10 at 2, twin edge at 4
            [3.0, 9.5],  # twin: y = 10 at 0.5 nearer than its edges (1)
            [3.0, 12.0],  # cell 2: y = 10 at 2; the twin's line is not its own
            [12.0, 5.0],  # cell 1: x = 10 at 2; bisector x = y at 4.95
            [12.0, 11.0],  # cell 1: bisector x = y at 1/sqrt(2)
        ]
    )
    expected = [0.5, 2.0, 2.0, 0.5, 2.0, 2.0, 1 / np.sqrt(2)]
    assert np.allclose(ms.boundary_distance(pts), expected)
    assert list(ms.grain_id_at(pts)) == [3, 0, 0, 3, 2, 1, 1]
    assert ms.n_cells == 3 and ms.n_twins == 1 and list(ms.parent) == [0, 1, 2, 0]
    # Sigma3: the twin is the parent rotated 60 deg about crystal [111].
    q = ms.grain_rotations
    parent, twin = Rotation(q[0]), Rotation(q[3])
    mis = twin * ~parent
    assert np.isclose(np.rad2deg(mis.angle[0]), 60)
    axis = mis.axis.data.ravel() * np.sign(mis.axis.data.ravel()[0])
    assert np.allclose(axis, np.ones(3) / np.sqrt(3))
    # And the same through a map built on it.
    s = synthetic_polycrystal((20, 20), (32, 32), microstructure=ms, noise=False)
    assert np.allclose(s.truth.boundary_distance(pts), expected)
    assert s.truth.n_twins == 1 and s.truth.kind == "custom"


def test_random_twins_are_sigma3_lamellae(twinned):
    t = twinned.truth
    o = t.grain_orientations
    n, m = t.n_grains, t.n_twins
    assert m == 3 and t.n_grain_ids == 6 and t.is_twin[n:].all()
    angles = np.rad2deg(o[n:].angle_with(o[t.parent_grain[n:]]))
    assert np.allclose(angles, 60)
    # Every lamella shows up in the map, with boundaries on both sides.
    for k in range(n, n + m):
        assert (t.grain_id == k).any()
    # Twins leave the grains and their orientations unchanged.
    plain = synthetic_polycrystal(
        (10, 10), (32, 32), n_grains=3, seed=7, orientation_gradient=0.5
    )
    assert np.allclose(plain.truth.microstructure.seeds, t.microstructure.seeds)
    assert np.allclose(plain.truth.grain_orientations.data, o[:n].data)


def test_orientation_gradient_is_linear(twinned):
    ms = twinned.truth.microstructure
    rate = np.rad2deg(ms.gradient_rate)  # deg per um; step is 1 um
    assert rate == pytest.approx(0.5)
    # One step along a grain's gradient direction turns it by 0.5 deg.
    for cell in range(ms.n_cells):
        p = ms.seeds[cell]
        q = p + ms.gradient_direction[cell]
        ids = np.array([cell, cell])
        o = Orientation(ms.rotations_of(ids, np.stack([p, q])), symmetry=ms.symmetry)
        assert np.rad2deg(o[0].angle_with(o[1]))[0] == pytest.approx(0.5)


# ------------------------------------------------------------- patterns


def test_boundary_patterns_are_area_weighted_mixtures():
    bx, r = 3.8, 1.0
    s = two_grain_map((3, 8), (32, 32), boundary_x=bx, beam_radius=r, noise=False)
    t = s.truth
    pure0, pure1 = t.patterns(np.array([[0.0, 1.0], [7.0, 1.0]]))
    for col, side in ((3, 0), (4, 1)):
        xy = t.xy[1, col]
        d = abs(xy[0] - bx)
        assert d < r  # the beam straddles the boundary
        f = t.beam_fractions(xy)
        other = _segment_fraction(d, r)  # area beyond the boundary
        assert f[1 - side] == pytest.approx(other, abs=0.03)
        assert f.sum() == pytest.approx(1)
        mix = t.clean[1, col]
        assert np.allclose(mix, f[0] * pure0 + f[1] * pure1, rtol=1e-5)
        here = t.grain_patterns([0, 1], xy)  # the pure patterns at this point
        assert np.allclose(mix, np.tensordot(f, here, axes=1), rtol=1e-5)
        # It differs from both pure patterns, by the fraction of the other.
        gap = np.abs(pure0 - pure1).mean()
        assert gap > 0.05 * pure0.mean()
        for g, pure in enumerate((pure0, pure1)):
            assert np.abs(mix - pure).mean() == pytest.approx(
                (1 - f[g]) * gap, rel=1e-4
            )
            assert 1 - f[g] > 0.04
    # Beyond the beam's reach, patterns are pure (and one per grain).
    assert np.array_equal(t.clean[1, 0], t.clean[2, 1])
    assert np.allclose(t.clean[1, 0], pure0, rtol=1e-6)
    assert np.allclose(t.clean[1, 7], pure1, rtol=1e-6)


def test_patterns_at_grid_points_equal_clean(twinned):
    t = twinned.truth
    rows = [0, 4, 9]
    # Same arithmetic for any positions: equal bit for bit.
    assert np.array_equal(t.patterns(t.xy[rows]), t.clean[rows])
    # Any continuous positions, any leading shape.
    xy = np.array([[[0.25, 3.7], [8.1, 0.0]]])
    out = t.patterns(xy)
    assert out.shape == (1, 2, 32, 32) and out.dtype == np.float32
    assert t.orientation_at(xy).shape == (1, 2)
    assert t.boundary_distance(xy).shape == (1, 2)
    assert t.grain_id_at(xy).shape == (1, 2)


def test_pc_gradient_is_what_extrapolate_pc_gives():
    s = synthetic_polycrystal(
        (6, 9), (32, 32), n_grains=2, step=200.0, pc_gradient=True
    )
    det = s.detector
    assert det.navigation_shape == (6, 9)
    ref = EBSDDetector(
        shape=det.shape,
        pc=s.truth.pc_at(s.truth.xy[3, 4]),
        sample_tilt=det.sample_tilt,
        px_size=det.px_size,
        binning=det.binning,
    )
    extrapolated = ref.extrapolate_pc([3, 4], (6, 9), (200.0, 200.0))
    assert np.allclose(det.pc, extrapolated.pc, atol=1e-12)
    assert np.ptp(det.pc[..., 0]) > 0.01  # a visible drift at this step
    assert np.allclose(s.truth.pc_at(s.truth.xy), det.pc)
    # A free linear drift, per scan step along x and y.
    drift = [[0.002, 0.0, 0.0], [0.0, 0.001, -0.001]]
    u = synthetic_polycrystal((4, 5), (32, 32), n_grains=2, pc_gradient=drift)
    pc = u.detector.pc
    assert np.allclose(pc[2, 2], (0.5, 0.3, 0.55))
    assert np.allclose(pc[0, 4] - pc[2, 2], [0.004, -0.002, 0.002])


def test_poisson_noise_statistics_match_gain():
    s = synthetic_polycrystal((8, 8), (40, 40), n_grains=2, seed=11)
    t = s.truth
    expected = t.clean.astype(np.float64)
    residual = s.data - expected
    # Counts are gain x Poisson(electrons): variance = gain x expected.
    assert expected.max() == pytest.approx(50_000, rel=1e-6)  # auto gain
    assert np.mean(residual) == pytest.approx(
        0, abs=0.01 * np.sqrt(t.gain * expected.mean())
    )
    assert np.mean(residual**2) / np.mean(expected) == pytest.approx(t.gain, rel=0.02)
    low = expected < np.median(expected)
    for part in (low, ~low):
        ratio = np.mean(residual[part] ** 2) / np.mean(expected[part])
        assert ratio == pytest.approx(t.gain, rel=0.03)
    # Mean |noise| of a Gaussian-like Poisson count: sqrt(2 / pi) sigma.
    mae = np.mean(np.sqrt(2 / np.pi * t.gain * expected))
    assert t.noise_floor_mae() == pytest.approx(mae, rel=0.02)
    assert t.noise_floor_mae(s.data) == t.noise_floor_mae()
    s.remove_static_background(show_progressbar=False)  # in place
    assert t.noise_floor_mae() == pytest.approx(mae, rel=0.02)
    # dose is the mean number of electrons per pixel.
    assert np.mean(expected) / t.gain == pytest.approx(t.dose, rel=0.1)
    # Noise-free: expected counts rounded.
    u = synthetic_polycrystal((8, 8), (40, 40), n_grains=2, seed=11, noise=False)
    assert np.array_equal(u.data, np.rint(t.clean).astype(np.uint16))
    assert u.truth.noise_floor_mae() < 0.5


# ------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(0, 4)), "shape"),
        (dict(shape=(4, 4.5)), "shape"),
        (dict(pattern_shape=(32, -1)), "pattern_shape"),
        (dict(n_grains=0), "n_grains"),
        (dict(n_grains=2.5), "n_grains"),
        (dict(dose=0), "dose"),
        (dict(dose=-5.0), "dose"),
        (dict(dose=None), "dose"),
        (dict(dose=float("nan")), "dose"),
        (dict(gain=0), "gain"),
        (dict(step=0), "step"),
        (dict(beam_radius=-0.1), "beam_radius"),
        (dict(twins=1.5), "twins"),
        (dict(pc=(0.5, 0.5)), "pc"),
        (dict(pc_gradient=[1, 2, 3]), "pc_gradient"),
        (dict(seed=-1), "seed"),
        (dict(band_contrast=2.0), "band_contrast"),
        (dict(microstructure="voronoi"), "microstructure"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    kwargs = {"shape": (4, 4), "pattern_shape": (32, 32), **kwargs}
    with pytest.raises(ValueError, match=match):
        synthetic_polycrystal(**kwargs)


def test_bad_inputs_two_grain_and_queries():
    with pytest.raises(ValueError, match="boundary_x"):
        two_grain_map((4, 8), (32, 32), boundary_x=9.0)
    with pytest.raises(ValueError, match="twins"):
        two_grain_map((4, 8), (32, 32), twins=True)
    with pytest.raises(ValueError, match="microstructure"):
        ms = Microstructure.from_seeds(
            [[0, 0], [1, 1]], np.tile([1.0, 0, 0, 0], (2, 1))
        )
        synthetic_polycrystal((4, 4), (32, 32), microstructure=ms, n_grains=3)
    s = synthetic_polycrystal((4, 4), (32, 32), n_grains=2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        s.truth.boundary_distance(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        s.truth.patterns([np.nan, 0.0])
    with pytest.raises(ValueError, match="grain ids"):
        s.truth.grain_patterns(2, [0.0, 0.0])
