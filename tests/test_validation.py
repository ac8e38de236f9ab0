"""A fit that knows its own error: held-out points against simple baselines."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import FAST_FIT

from kikuchipy_neural.training.validation import _significantly_worse

# The package's default coordinate frequency, the fast network otherwise.
DEFAULT_FREQUENCY = {k: v for k, v in FAST_FIT.items() if k != "first_omega_0"}


@pytest.fixture(scope="module")
def subgrid_map():
    """16x16 of 32x32 px, 3 grains: a fit on [::2, ::2] has 64 points."""
    from kikuchipy_neural.data import synthetic_polycrystal

    s = synthetic_polycrystal((16, 16), (32, 32), n_grains=3, seed=5)
    s.set_signal_type("NeuralEBSD")
    return s


def _subgrid_mask(shape) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[::2, ::2] = True
    return mask


def test_report_of_a_grid_fit(small_model, small_map):
    report = small_model.validation
    assert report["n_points"] == len(small_model.validation_points) > 0
    assert report["masked"] is False
    assert set(report["mae"]) == {"field", "interpolation", "pca"}
    data = np.asarray(small_map.data, np.float64).reshape(144, -1)
    val = small_model.validation_points
    # The field's MAE recomputed from the model on the held-out points.
    field = small_model.query(small_model.geometry.index_to_xy(val))
    expected = np.abs(field.reshape(len(val), -1) - data[val]).mean()
    assert report["mae"]["field"] == pytest.approx(expected, rel=1e-5)
    assert report["noise_rms"] > 0
    # Survives the model file.
    assert isinstance(report["worse_than"], list)


def test_report_survives_the_model_file(small_model, tmp_path):
    import kikuchipy_neural as kpn

    path = small_model.save(tmp_path / "m.h5", precision="float32")
    loaded = kpn.load_model(path)
    assert loaded.validation["mae"] == pytest.approx(small_model.validation["mae"])
    assert loaded.validation["worse_than"] == small_model.validation["worse_than"]


def test_masked_fit_reports_on_points_it_never_read(subgrid_map):
    """The points outside the mask are poisoned: a report that read them
    (as training data, or for its interpolation) would show it."""
    s = subgrid_map.deepcopy()
    mask = _subgrid_mask((16, 16))
    s.data[~mask] = np.iinfo(np.uint16).max
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = s.fit_neural(mask=mask, seed=0, **DEFAULT_FREQUENCY)
    report = model.validation
    assert report["masked"] is True
    val = model.validation_points
    assert mask.ravel()[val].all()  # held out of the mask's own points
    clean = np.asarray(subgrid_map.data, np.float64).reshape(256, -1)
    # Linear interpolation from the training points, computed independently.
    from scipy.interpolate import griddata

    g = model.geometry
    train = np.setdiff1d(np.flatnonzero(mask), val)
    interpolated = griddata(
        g.index_to_xy(train), clean[train], g.index_to_xy(val), method="linear"
    )
    inside = ~np.isnan(interpolated).any(axis=1)
    assert inside.sum() >= 1
    assert report["mae"]["interpolation"] < 0.2 * np.iinfo(np.uint16).max
    ours = report["mae"]["interpolation"]
    theirs_inside = np.abs(interpolated[inside] - clean[val][inside]).mean()
    if inside.all():
        assert ours == pytest.approx(theirs_inside, rel=1e-4)
    # PCA's baseline is the same interpolation, denoised at the field's rank.
    assert report["mae"]["pca"] < 0.2 * np.iinfo(np.uint16).max
    assert report["worse_than"] == []


def test_warning_fires_on_a_bad_configuration_only(subgrid_map):
    mask = _subgrid_mask((16, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good = subgrid_map.deepcopy().fit_neural(mask=mask, seed=0, **DEFAULT_FREQUENCY)
    assert not [w for w in caught if "held-out" in str(w.message)]
    assert good.validation["worse_than"] == []
    assert good.validation["mae"]["field"] < good.validation["mae"]["interpolation"]
    # 19 rad between training neighbours: the field fits each training
    # point and knows nothing in between.
    with pytest.warns(UserWarning, match="worse than linear interpolation"):
        bad = subgrid_map.deepcopy().fit_neural(
            mask=mask, seed=0, **{**DEFAULT_FREQUENCY, "first_omega_0": 150.0}
        )
    assert "interpolation" in bad.validation["worse_than"]


def test_significance_of_a_loss():
    rng = np.random.default_rng(0)
    base = rng.normal(100, 10, 200)
    assert not _significantly_worse(base + rng.normal(0, 5, 200), base)
    assert _significantly_worse(base + 20 + rng.normal(0, 5, 200), base)
    assert not _significantly_worse(base - 20, base)
