"""Coordinate frequencies set per spacing of the training points.

The same microstructure scanned at two densities, or trained on a subgrid,
must give the field the same phase between neighbouring training points.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAST_FIT

from kikuchipy_neural.geometry import ScanGeometry
from kikuchipy_neural.training.fit import coordinate_frequencies
from kikuchipy_neural.training.options import FitOptions


def _geometry(n: int, step: float) -> ScanGeometry:
    return ScanGeometry(n, n, 0.0, 0.0, step, step, "um", (8, 8))


def _phase_per_training_step(geometry: ScanGeometry, points) -> float:
    """Radians between neighbouring training points in the first layer."""
    spacing = geometry.point_spacing(points) * geometry.normalized_per_unit
    omega = coordinate_frequencies("factorized", FitOptions(), spacing)
    return omega["first_omega_0"] / 2 * spacing


def test_point_spacing_of_grids_masks_and_random_subsets():
    g = _geometry(32, 0.5)
    assert g.point_spacing() == pytest.approx(0.5)
    sub = np.zeros((32, 32), bool)
    sub[::2, ::2] = True
    assert g.point_spacing(np.flatnonzero(sub)) == pytest.approx(1.0)
    sub3 = np.zeros((32, 32), bool)
    sub3[::3, ::3] = True
    assert g.point_spacing(np.flatnonzero(sub3)) == pytest.approx(1.5)
    # A random quarter: about one over the square root of the density.
    rand = np.random.default_rng(0).random((32, 32)) < 0.25
    assert 1.5 * 0.5 < g.point_spacing(np.flatnonzero(rand)) < 2.3 * 0.5
    # A few points missing here and there change nothing.
    holes = np.random.default_rng(1).random(32 * 32) > 0.05
    assert g.point_spacing(np.flatnonzero(holes)) == pytest.approx(0.5)
    small = _geometry(12, 1.0)
    some = np.random.default_rng(2).permutation(144)[:136]
    assert small.point_spacing(some) == pytest.approx(1.0)
    # A half-map without holes is as dense as the full grid.
    half = np.zeros((32, 32), bool)
    half[:, :16] = True
    assert g.point_spacing(np.flatnonzero(half)) == pytest.approx(0.5)
    # A line scan: neighbours one step apart.
    line = ScanGeometry(20, 1, 0.0, 0.0, 0.25, 0.25, "um", (8, 8))
    assert line.point_spacing() == pytest.approx(0.25)


@pytest.mark.parametrize("n", [16, 32, 64, 256, 2000])
def test_same_phase_per_step_on_maps_of_any_size(n):
    # The same area scanned at n points across: the normalised step shrinks
    # as 1 / n, the frequency grows with it, the phase per step stays.
    g = _geometry(n, 32.0 / n)
    assert _phase_per_training_step(g, None) == pytest.approx(0.5)
    sub = np.zeros((n, n), bool)
    sub[::2, ::2] = True
    assert _phase_per_training_step(g, np.flatnonzero(sub)) == pytest.approx(0.5)
    # The paper's fixed value drifts with the map size instead.
    paper = FitOptions(first_omega_0=30.0)
    spacing = g.step * g.normalized_per_unit
    fixed = coordinate_frequencies("factorized", paper, spacing)["first_omega_0"]
    assert fixed == 30.0
    assert fixed / 2 * spacing == pytest.approx(30.0 / (n - 1))


def test_joint_positions_scaled_per_training_spacing():
    opts = FitOptions.from_kwargs(formulation="joint")
    for n in (16, 64, 200):
        g = _geometry(n, 1.0)
        spacing = g.step * g.normalized_per_unit
        scale = coordinate_frequencies("joint", opts, spacing)["position_scale"]
        # One training spacing is the same distance in the network's input.
        assert scale * spacing == pytest.approx(1 / 31.5)
    given = FitOptions.from_kwargs(formulation="joint", position_scale=2.0)
    assert coordinate_frequencies("joint", given, 0.1)["position_scale"] == 2.0


def test_two_densities_of_one_microstructure_fit_the_same_phase_per_step():
    """A fit records the frequency it chose: the same phase per training
    step for a 24-point scan, a 12-point scan of the same area and the
    24-point scan trained on every other point."""
    from kikuchipy_neural.data import Microstructure, synthetic_polycrystal

    ms = Microstructure.random_voronoi((0.0, 23.0, 0.0, 23.0), 4, seed=2)
    fast = {k: v for k, v in FAST_FIT.items() if k != "first_omega_0"}
    phases = []
    for shape, step, mask in (
        ((24, 24), 1.0, None),
        ((12, 12), 23.0 / 11, None),
        ((24, 24), 1.0, np.s_[::2, ::2]),
    ):
        s = synthetic_polycrystal(shape, (16, 16), microstructure=ms, step=step, seed=2)
        s.set_signal_type("NeuralEBSD")
        train = None
        if mask is not None:
            train = np.zeros(shape, bool)
            train[mask] = True
        model = s.fit_neural(mask=train, max_steps=0, rank=3, **fast)
        g = model.geometry
        spacing = model.info["training_spacing"]
        omega = model.field.config["first_omega_0"]
        phases.append(omega / 2 * spacing * g.normalized_per_unit)
        expected = step * (2 if mask is not None else 1)
        assert spacing == pytest.approx(expected)
    assert phases == pytest.approx([0.5, 0.5, 0.5])


def test_given_first_omega_0_is_kept_and_warned_about_when_too_high(small_map):
    with pytest.warns(UserWarning, match="rad apart"):
        model = small_map.deepcopy().fit_neural(
            max_steps=0, rank=3, **{**FAST_FIT, "first_omega_0": 60.0}
        )
    assert model.field.config["first_omega_0"] == 60.0


@pytest.mark.parametrize(
    "options",
    [
        {"phase_per_step": 0},
        {"phase_per_step": -1.0},
        {"first_omega_0": 0.0},
        {"first_omega_0": float("nan")},
    ],
)
def test_bad_frequency_options_are_refused(options):
    with pytest.raises(ValueError, match="must be"):
        FitOptions.from_kwargs(**options)
    with pytest.raises(TypeError, match="do not apply"):
        FitOptions.from_kwargs(position_scale=2.0)
    with pytest.raises(TypeError, match="do not apply"):
        FitOptions.from_kwargs(formulation="joint", phase_per_step=0.3)
