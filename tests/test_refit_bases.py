"""Closed-form refit of the bases after training (fit option ``refit_bases``):
a fit ends on the least-squares bases of its training patterns (numpy's
``lstsq`` is the truth), leaves the network as trained, keeps a refit only
when it lowers the validation MAE, keeps the trained model when the refit is
interrupted, and rejects requests it cannot serve."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import FAST_FIT

from kikuchipy_neural import NeuralEBSDModel
from kikuchipy_neural.fields import JointField
from kikuchipy_neural.training import FitOptions
from kikuchipy_neural.training.data import PatternSource
from kikuchipy_neural.training.refit_bases import refit_bases

# A short fit stops well before the bases settle: the refit has work to do.
SHORT = dict(FAST_FIT, max_steps=60)


@pytest.fixture(scope="module")
def short_fits(small_map):
    """The same short fit with and without the refit."""
    refitted = small_map.deepcopy().fit_neural(seed=0, **SHORT)
    plain = small_map.deepcopy().fit_neural(seed=0, refit_bases=False, **SHORT)
    return refitted, plain


def _coefficients(model, flat_index) -> np.ndarray:
    g = model.geometry
    xy = torch.from_numpy(g.normalize(g.index_to_xy(flat_index)))
    with torch.no_grad():
        return model.field.coefficients(xy).double().numpy()


def _normalized(model, raw) -> np.ndarray:
    lo, hi = model.intensity_range
    return (np.asarray(raw, np.float64) - lo) / (hi - lo)


def test_fit_ends_on_the_least_squares_bases(small_map, short_fits):
    refitted, plain = short_fits
    n = refitted.geometry.n_points
    train = np.setdiff1d(np.arange(n), refitted.validation_points)
    summary = refitted.info["refit_bases"]
    assert summary["applied"] and summary["reason"] is None
    assert summary["points"] == len(train)
    assert summary["points"] == refitted.info["n_train_points"]

    # The network is the trained one; only the bases moved.
    for name, value in plain.field.state_dict().items():
        same = torch.equal(value, refitted.field.state_dict()[name])
        assert same == (name != "bases"), name

    # Truth: numpy's least squares on the training patterns, given the
    # trained coefficients.
    flat = small_map.data.reshape(n, -1)
    a = _coefficients(refitted, train)
    expected = np.linalg.lstsq(a, _normalized(refitted, flat[train]), rcond=None)[0]
    got = refitted.field.bases.detach().double().numpy()
    np.testing.assert_allclose(
        got, expected, rtol=0, atol=2e-5 * np.abs(expected).max()
    )
    trained = plain.field.bases.detach().double().numpy()
    assert np.abs(trained - expected).max() > 100 * np.abs(got - expected).max()

    # The validation MAE it reports, recomputed: before is the trained
    # bases', after the refitted ones', and it dropped.
    lo, hi = refitted.intensity_range
    val = refitted.validation_points
    a_val = _coefficients(refitted, val)
    x_val = _normalized(refitted, flat[val])
    before = np.abs(a_val @ trained - x_val).mean() * (hi - lo)
    after = np.abs(a_val @ got - x_val).mean() * (hi - lo)
    assert summary["validation_mae_before"] == pytest.approx(before, rel=1e-4)
    assert summary["validation_mae_after"] == pytest.approx(after, rel=1e-4)
    assert after < before

    # The map as a whole moves closer to the noise-free truth.
    clean = small_map.truth.clean
    assert (
        np.abs(refitted.reconstruct() - clean).mean()
        < np.abs(plain.reconstruct() - clean).mean()
    )


def test_refit_on_every_point_for_compression(small_map, short_fits):
    refitted, plain = short_fits
    every = small_map.deepcopy().fit_neural(seed=0, refit_bases="all", **SHORT)
    n = every.geometry.n_points
    summary = every.info["refit_bases"]
    assert summary["applied"] and summary["points"] == n
    assert summary["validation_mae_before"] is None
    for name, value in plain.field.state_dict().items():
        same = torch.equal(value, every.field.state_dict()[name])
        assert same == (name != "bases"), name
    # Truth: least squares on every pattern of the map, validation included.
    flat = _normalized(every, small_map.data.reshape(n, -1))
    a = _coefficients(every, np.arange(n))
    expected = np.linalg.lstsq(a, flat, rcond=None)[0]
    got = every.field.bases.detach().double().numpy()
    np.testing.assert_allclose(
        got, expected, rtol=0, atol=2e-5 * np.abs(expected).max()
    )
    # So the map's squared error is below the default refit's.
    held_out = refitted.field.bases.detach().double().numpy()
    assert ((a @ got - flat) ** 2).sum() < ((a @ held_out - flat) ** 2).sum()


def test_a_refit_that_raises_the_validation_mae_is_not_kept(small_map, short_fits):
    _, plain = short_fits
    model = copy.deepcopy(plain)  # the fixture stays as fitted
    bases = model.field.bases.detach().clone()
    val = plain.validation_points
    # Validation patterns the trained bases reproduce exactly: any other
    # bases can only do worse on them.
    own = model.query(model.geometry.index_to_xy(val)).reshape(len(val), -1)
    train = np.setdiff1d(np.arange(model.geometry.n_points), val)
    summary = refit_bases(model, PatternSource(small_map.data), train, val, own)
    assert not summary["applied"] and "validation MAE" in summary["reason"]
    assert summary["validation_mae_after"] > summary["validation_mae_before"]
    assert torch.equal(model.field.bases, bases)

    # Without validation points the least-squares bases are kept.
    summary = refit_bases(model, PatternSource(small_map.data), train)
    assert summary["applied"] and summary["validation_mae_before"] is None
    assert not torch.equal(model.field.bases, bases)


def test_an_interrupted_refit_keeps_the_trained_model(
    small_map, short_fits, monkeypatch
):
    from kikuchipy_neural.training import refit_bases as module

    _, plain = short_fits

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "_coefficients", interrupted)
    with pytest.warns(UserWarning, match="refit was interrupted"):
        model = small_map.deepcopy().fit_neural(seed=0, **SHORT)
    assert model.info["refit_bases"]["reason"] == "interrupted"
    assert not model.info["refit_bases"]["applied"]
    for name, value in plain.field.state_dict().items():
        assert torch.equal(value, model.field.state_dict()[name]), name


def test_bad_requests_raise(small_map, short_fits):
    _, plain = short_fits
    source = PatternSource(small_map.data)
    points = np.arange(10)
    joint = NeuralEBSDModel(
        JointField(plain.pattern_shape, width=8, layers=2, fourier_features=4),
        plain.geometry,
        plain.intensity_range,
    )
    with pytest.raises(ValueError, match="factorized"):
        refit_bases(joint, source, points)
    with pytest.raises(ValueError, match="not the model's scan"):
        refit_bases(plain, PatternSource(small_map.data[:, :5]), points)
    with pytest.raises(ValueError, match="flat indices"):
        refit_bases(plain, source, [0, plain.geometry.n_points])
    plain.point_intensity = np.ones((plain.geometry.n_points, 2), np.float32)
    try:
        with pytest.raises(ValueError, match="before fitting per-point"):
            refit_bases(plain, source, points)
    finally:
        plain.point_intensity = None
    # Too few points for the rank: nothing is solved, nothing changes.
    bases = plain.field.bases.detach().clone()
    summary = refit_bases(plain, source, points[: plain.rank - 1])
    assert not summary["applied"] and "fewer points" in summary["reason"]
    assert torch.equal(plain.field.bases, bases)

    with pytest.raises(ValueError, match="refit_bases must be True, False or 'all'"):
        FitOptions.from_kwargs(refit_bases="yes")
    with pytest.raises(TypeError, match="'refit_bases' do not apply"):
        FitOptions.from_kwargs(formulation="joint", refit_bases=False)
