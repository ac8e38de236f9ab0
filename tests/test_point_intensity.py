"""Per-point gain and offset (fit option ``point_intensity``): recovered on a
map with known per-pattern intensity changes, applied wherever the model
decodes, never fitted from unreadable points, stored in model files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAST_FIT

from kikuchipy_neural import load_model
from kikuchipy_neural.training.point_intensity import apply_point_intensity


@pytest.fixture(scope="module")
def flickering_map(small_map):
    """``small_map`` with a random gain (5 %) and offset (300 counts) per
    pattern, the kind of point-to-point intensity change a continuous field
    cannot follow; returns the signal, the truth and the gains."""
    rng = np.random.default_rng(7)
    nav = small_map.data.shape[:2]
    gain = 1 + 0.05 * rng.standard_normal(nav)
    offset = 300 * rng.standard_normal(nav)
    s = small_map.deepcopy()
    s.change_dtype("float32")
    s.data = (gain[..., None, None] * s.data + offset[..., None, None]).astype(
        np.float32
    )
    truth = gain[..., None, None] * small_map.truth.clean + offset[..., None, None]
    return s, truth, gain


def test_point_intensity_recovers_per_pattern_gain_and_offset(flickering_map):
    s, truth, gain = flickering_map
    plain = s.deepcopy().fit_neural(seed=0, **FAST_FIT)
    model = s.deepcopy().fit_neural(seed=0, point_intensity=True, **FAST_FIT)
    assert plain.point_intensity is None
    table = model.point_intensity
    assert table.shape == (gain.size, 2) and np.isfinite(table).all()
    # The fitted gains follow the true ones (up to the field's own scale).
    assert np.corrcoef(table[:, 0], gain.ravel())[0, 1] > 0.9
    err_plain = np.abs(plain.reconstruct() - truth).mean()
    err = np.abs(model.reconstruct() - truth).mean()
    # Offsets of 300 counts (std) cost the plain field about 0.8 x 300 on
    # average; with a gain and offset per point, most of that goes.
    assert err < 0.5 * err_plain, (err, err_plain)


def test_unreadable_points_are_never_used_and_take_their_neighbours(flickering_map):
    s, _, _ = flickering_map
    s = s.deepcopy()
    mask = np.ones(s.data.shape[:2], bool)
    mask[4:6, 4:6] = False
    s.data[~mask] = np.nan  # would poison any gain or offset fitted from them
    model = s.fit_neural(seed=0, mask=mask, point_intensity=True, **FAST_FIT)
    table = model.point_intensity.reshape(*mask.shape, 2)
    assert np.isfinite(table).all()
    # (4, 4)'s nearest readable points are its row and column neighbours.
    neighbours = [table[3, 4], table[4, 3]]
    assert any(np.array_equal(table[4, 4], n) for n in neighbours)


def test_gains_are_fitted_in_small_float64_blocks(small_map, small_model, monkeypatch):
    """The least squares run in float64 on blocks of rows, not on a whole
    piece of patterns: the traced peak is the piece's float32 field (0.9 MB
    here), its raw patterns and the query's work arrays (2.4 MB in all),
    where float64 copies and temporaries of the whole piece took 7.9 MB. The
    result does not depend on the block size."""
    import tracemalloc

    from kikuchipy_neural.training import point_intensity as pi
    from kikuchipy_neural.training.data import PatternSource

    source = PatternSource(small_map.data)
    readable = np.ones(small_model.geometry.n_points, bool)
    whole = pi.fit_point_intensity(small_model, source, readable)
    monkeypatch.setattr(pi, "_ROWS", 16)
    tracemalloc.start()
    try:
        blocks = pi.fit_point_intensity(small_model, source, readable)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(blocks, whole)
    field_bytes = small_map.data[..., 0, 0].size * small_map.data[0, 0].size * 4
    assert peak < 4 * field_bytes, (peak, field_bytes)


def test_between_points_gain_and_offset_are_bilinear(small_model):
    g = small_model.geometry
    table = np.zeros((g.n_points, 2), np.float32)
    table[:, 0] = 1 + np.arange(g.n_points) / 1000
    table[:, 1] = np.arange(g.n_points)
    a, b = g.index_to_xy(np.array([0, 1]))  # two neighbours along x
    xy = np.stack([a, (a + b) / 2, b])
    ones = np.ones((3, 4), np.float32)
    apply_point_intensity(g, table, xy, ones)
    np.testing.assert_allclose(ones[:, 0], [1.0 + 0.0, 1.0005 + 0.5, 1.001 + 1.0])

    small_model.point_intensity = table
    try:
        grid = small_model.query(g.grid_xy())
        np.testing.assert_array_equal(grid, small_model.reconstruct())
        small_model.point_intensity = None
        plain = small_model.reconstruct()
    finally:
        small_model.point_intensity = None
    expected = table[:, :1].reshape(*g.nav_shape, 1, 1) * plain + table[:, 1:].reshape(
        *g.nav_shape, 1, 1
    )
    np.testing.assert_allclose(grid, expected, rtol=1e-5, atol=1e-3)


def test_point_intensity_is_saved_and_loaded(flickering_map, tmp_path):
    s, _, _ = flickering_map
    model = s.deepcopy().fit_neural(
        seed=0, point_intensity=True, max_steps=5, **FAST_FIT
    )
    exact = load_model(model.save(tmp_path / "m32.h5", precision="float32"))
    np.testing.assert_array_equal(exact.point_intensity, model.point_intensity)
    half = load_model(model.save(tmp_path / "m16.h5", precision="float16"))
    np.testing.assert_allclose(
        half.point_intensity[:, 0], model.point_intensity[:, 0], atol=1e-4
    )
    np.testing.assert_allclose(
        half.point_intensity[:, 1], model.point_intensity[:, 1], rtol=1e-3, atol=0.05
    )
    plain = s.deepcopy().fit_neural(seed=0, max_steps=5, **FAST_FIT)
    assert load_model(plain.save(tmp_path / "p.h5")).point_intensity is None


def test_point_intensity_option_is_checked():
    from kikuchipy_neural.training import FitOptions

    with pytest.raises(ValueError, match="point_intensity"):
        FitOptions.from_kwargs(point_intensity="yes")
