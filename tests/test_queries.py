"""Continuous queries: neural_query, upsample, neural_path, neural_fill,
scattered positions, interpolation baselines, path analysis and a tiny
super-resolution run."""

from __future__ import annotations

import contextlib
import io

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import FAST_FIT
from kikuchipy.signals import EBSD, LazyEBSD
from orix.crystal_map import PhaseList
from orix.quaternion import Orientation

from kikuchipy_neural.analysis import queries
from kikuchipy_neural.analysis.interpolation import (
    interpolate_missing,
    sparse_grid_mask,
)
from kikuchipy_neural.data import synthetic_polycrystal
from kikuchipy_neural.geometry import ScanGeometry

RTOL = 1e-5  # float32 decoding of the same point in different batches


def _grid_xy(s) -> np.ndarray:
    return ScanGeometry.from_signal(s).grid_xy()


def _linear_pc(xy: np.ndarray) -> np.ndarray:
    """A PC field linear in the position (as a tilted sample gives)."""
    x, y = xy[..., 0], xy[..., 1]
    return np.stack(
        [0.5 + 0.002 * x, 0.3 - 0.003 * y, 0.55 + 0.001 * x + 0.001 * y], -1
    )


# ---------------------------------------------------------------- queries


def test_query_at_grid_points_equals_reconstruction(fitted_map):
    rec = fitted_map.neural_reconstruct()
    q = fitted_map.neural_query(_grid_xy(fitted_map))
    assert type(q) is EBSD and q.data.dtype == np.float32
    np.testing.assert_allclose(q.data, rec.data, rtol=RTOL)
    # An evenly spaced grid gets calibrated axes, the scan's here.
    for a, b in zip(
        q.axes_manager.navigation_axes,
        fitted_map.axes_manager.navigation_axes,
        strict=True,
    ):
        assert (a.size, a.scale, a.offset, a.units) == (
            b.size,
            b.scale,
            b.offset,
            b.units,
        )
    # ... and the values are the model's, in counts.
    np.testing.assert_allclose(
        rec.data, fitted_map.neural_model.reconstruct(), rtol=RTOL
    )


def test_decoding_writes_into_the_callers_array(small_model, monkeypatch):
    import torch

    field = small_model.field
    xy = torch.rand(7, 2) * 2 - 1
    expected = field.pattern_values(xy)
    out = torch.empty(7, field.n_pixels)
    assert field.pattern_values_into(xy, out).data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    # Another dtype (or device) than the bases': the generic copy.
    out64 = torch.empty(7, field.n_pixels, dtype=torch.float64)
    field.pattern_values_into(xy, out64)
    torch.testing.assert_close(out64, expected.double(), rtol=1e-6, atol=1e-6)
    # query decodes into its output, chunk by chunk: in counts as before.
    monkeypatch.setattr(type(small_model), "_chunk_points", lambda self, v: 5)
    grid = small_model.geometry.grid_xy()[:3]
    lo, hi = small_model.intensity_range
    with torch.no_grad():
        net = torch.from_numpy(small_model.geometry.normalize(grid.reshape(-1, 2)))
        counts = field.pattern_values(net).numpy() * (hi - lo) + lo
    np.testing.assert_allclose(
        small_model.query(grid).reshape(len(counts), -1), counts, rtol=1e-6
    )


def test_query_shapes_and_detector(fitted_map, rng):
    xy = rng.uniform(0, 11, size=(3, 4, 2))
    q = fitted_map.neural_query(xy)
    assert q.data.shape == (3, 4, 40, 40)
    assert q.axes_manager.navigation_shape == (4, 3)
    np.testing.assert_allclose(q.data, fitted_map.neural_model.query(xy), rtol=RTOL)
    line = fitted_map.neural_query(xy[0])
    assert line.axes_manager.navigation_shape == (4,)
    single = fitted_map.neural_query(xy[0, 0])
    assert single.axes_manager.navigation_dimension == 0
    np.testing.assert_allclose(single.data, line.data[0], rtol=RTOL)
    # One PC: copied as it is; the static background comes along as float32.
    np.testing.assert_array_equal(q.detector.pc_average, fitted_map.detector.pc_average)
    assert q.detector.navigation_shape == (1,)
    assert q.static_background.dtype == np.float32
    np.testing.assert_array_equal(q.static_background, fitted_map.static_background)


def test_points_outside_the_scan_raise(fitted_map):
    for bad in ([11.5, 3.0], [3.0, -0.2], [[1.0, 1.0], [20.0, 1.0]]):
        with pytest.raises(ValueError, match="outside the scanned area"):
            fitted_map.neural_query(np.array(bad))
    q = fitted_map.neural_query(np.array([[11.5, 3.0], [-1.0, -1.0]]), extrapolate=True)
    assert np.isfinite(q.data).all()
    with pytest.raises(ValueError, match="outside"):
        fitted_map.neural_path((0, 0), (12, 0), 5)
    assert (
        fitted_map.neural_path((0, 0), (12, 0), 5, extrapolate=True).data.shape[0] == 5
    )
    with pytest.raises(ValueError, match="NaN"):
        fitted_map.neural_query(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="last axis"):
        fitted_map.neural_query(np.zeros((4, 3)))


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.neural_query(np.zeros(2)),
        lambda s: s.upsample(2),
        lambda s: s.neural_path((0, 0), (1, 1), 3),
        lambda s: s.neural_fill(np.eye(12, dtype=bool), refit=False),
    ],
)
def test_methods_without_model_raise(small_map, call):
    s = small_map.deepcopy()
    with pytest.raises(RuntimeError, match="fit_neural"):
        call(s)


# --------------------------------------------------------------- upsample


def test_upsample_one_equals_reconstruction(fitted_map):
    rec = fitted_map.neural_reconstruct()
    up = fitted_map.upsample(1)
    np.testing.assert_allclose(up.data, rec.data, rtol=RTOL)
    assert up.axes_manager.navigation_shape == rec.axes_manager.navigation_shape


def test_upsample_grid_axes_and_values(fitted_map):
    up = fitted_map.upsample(2)
    assert up.data.shape == (23, 23, 40, 40)
    for a, b in zip(
        up.axes_manager.navigation_axes,
        fitted_map.axes_manager.navigation_axes,
        strict=True,
    ):
        assert a.scale == pytest.approx(b.scale / 2)
        assert (a.offset, a.units, a.name) == (b.offset, b.units, b.name)
    # Every other point of the finer grid is a scan point.
    np.testing.assert_allclose(
        up.data[::2, ::2], fitted_map.neural_reconstruct().data, rtol=RTOL
    )
    # Non-integer factors: steps 1 / 2.5, never past the scan.
    odd = fitted_map.upsample(2.5)
    x = odd.axes_manager.navigation_axes[0]
    assert x.scale == pytest.approx(0.4) and x.size == 28
    assert x.axis[-1] <= 11 + 1e-9
    with pytest.raises(ValueError, match="positive"):
        fitted_map.upsample(0)
    with pytest.raises(TypeError, match="number"):
        fitted_map.upsample("2")


# ------------------------------------------------------------------ paths


def test_path_ends_equal_endpoint_queries(fitted_map):
    start, end = (0.5, 1.25), (10.0, 9.5)
    path = fitted_map.neural_path(start, end, 9)
    ends = fitted_map.neural_query(np.array([start, end]))
    np.testing.assert_allclose(path.data[0], ends.data[0], rtol=RTOL)
    np.testing.assert_allclose(path.data[-1], ends.data[1], rtol=RTOL)
    axis = path.axes_manager.navigation_axes[0]
    length = np.hypot(10.0 - 0.5, 9.5 - 1.25)
    assert axis.name == "distance" and axis.units == "um"
    assert axis.scale == pytest.approx(length / 8) and axis.size == 9
    # The middle point is the query at the middle.
    mid = fitted_map.neural_query(np.array([(0.5 + 10.0) / 2, (1.25 + 9.5) / 2]))
    np.testing.assert_allclose(path.data[4], mid.data, rtol=RTOL)
    for bad_n in (1, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            fitted_map.neural_path(start, end, bad_n)
    with pytest.raises(ValueError, match="same point"):
        fitted_map.neural_path(start, start, 5)


# ------------------------------------------------------------------- lazy


def test_lazy_and_eager_agree_chunk_by_chunk(fitted_map, monkeypatch):
    # Small chunks: 7 patterns each, so the graph has many blocks.
    monkeypatch.setattr(queries, "_CHUNK_BYTES", 7 * 40 * 40 * 4)
    xy = np.random.default_rng(1).uniform(0, 11, size=(5, 9, 2))
    cases = [
        (lambda lazy: fitted_map.neural_query(xy, lazy=lazy)),
        (lambda lazy: fitted_map.upsample(1.5, lazy=lazy)),
        (lambda lazy: fitted_map.neural_path((0, 0), (11, 7), 30, lazy=lazy)),
        (lambda lazy: fitted_map.neural_query(xy, lazy=lazy, sharpen_boundaries=True)),
    ]
    for make in cases:
        lazy, eager = make(True), make(False)
        assert type(lazy) is LazyEBSD and type(eager) is EBSD
        assert lazy.data.npartitions > 1
        np.testing.assert_allclose(lazy.data.compute(), eager.data, rtol=RTOL)
        np.testing.assert_array_equal(lazy.detector.pc, eager.detector.pc)
    # A lazy signal gives lazy results by default.
    lazy_signal = fitted_map.as_lazy()
    assert lazy_signal.upsample(2)._lazy
    assert not fitted_map.upsample(2)._lazy


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_any_dask_scheduler(fitted_map, scheduler):
    q = fitted_map.neural_query(_grid_xy(fitted_map)[:4], lazy=True)
    with dask.config.set(scheduler=scheduler):
        out = q.data.compute()
    np.testing.assert_allclose(
        out, fitted_map.neural_model.query(_grid_xy(fitted_map)[:4]), rtol=RTOL
    )


def test_distributed_cluster(fitted_map):
    distributed = pytest.importorskip("distributed")
    xy = _grid_xy(fitted_map)[:3]
    q = fitted_map.neural_query(xy, lazy=True)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        # The model travels to a worker process by pickling.
        out = q.data.compute()
    np.testing.assert_allclose(out, fitted_map.neural_model.query(xy), rtol=RTOL)


# ------------------------------------------------------- pattern centres


def test_per_point_pattern_centres_are_interpolated(fitted_map, rng):
    s = fitted_map
    s.detector.pc = _linear_pc(_grid_xy(s))
    xy = rng.uniform(0, 11, size=(6, 2))
    q = s.neural_query(xy)
    assert q.detector.navigation_shape == (6,)
    np.testing.assert_allclose(q.detector.pc, _linear_pc(xy), atol=1e-12)
    up = s.upsample(2)
    assert up.detector.navigation_shape == (23, 23)
    fine = queries.upsample_xy(ScanGeometry.from_signal(s), 2)[0]
    np.testing.assert_allclose(up.detector.pc, _linear_pc(fine), atol=1e-12)
    path = s.neural_path((0, 0), (11, 11), 5)
    np.testing.assert_allclose(
        path.detector.pc, _linear_pc(np.linspace([0, 0], [11, 11], 5)), atol=1e-12
    )
    # Extrapolated points continue the linear field.
    far = s.neural_query(np.array([[12.0, -1.0]]), extrapolate=True)
    np.testing.assert_allclose(
        far.detector.pc, _linear_pc(np.array([[12.0, -1.0]])), atol=1e-12
    )


def test_output_feeds_hough_and_dictionary_indexing(fitted_map):
    import kikuchipy as kp

    s = fitted_map
    s.detector.pc = np.broadcast_to(s.detector.pc_average, (12, 12, 3)).copy()
    # A grid query carries per-point PCs; kikuchipy indexes it unchanged.
    q = s.neural_query(_grid_xy(s))
    phase_list = PhaseList(s.xmap.phases[0])
    q.remove_static_background(show_progressbar=False)
    q.remove_dynamic_background(show_progressbar=False)
    indexer = q.detector.get_indexer(phase_list, nBands=9)
    with contextlib.redirect_stdout(io.StringIO()):
        xmap = q.hough_indexing(phase_list, indexer, verbose=0)
    assert xmap.shape == (12, 12)
    ori = Orientation(
        xmap.rotations.data.reshape(12, 12, 4), symmetry=phase_list[0].point_group
    )
    true = Orientation(
        s.xmap.rotations.data.reshape(12, 12, 4), symmetry=phase_list[0].point_group
    )
    error = np.rad2deg(ori.angle_with(true))
    interior = s.xmap.prop["boundary_distance"].reshape(12, 12) > 1.5
    assert np.mean(error[interior] < 2) > 0.9
    # Dictionary indexing against the grains' true orientations.
    mp = kp.data.nickel_ebsd_master_pattern_small(
        projection="lambert", hemisphere="upper"
    )
    grains = Orientation(s.xmap.rotations.data, symmetry=phase_list[0].point_group)
    grain_id = s.xmap.prop["grain_id"].astype(int)
    ids = np.unique(grain_id)
    rotations = grains[[np.flatnonzero(grain_id == g)[0] for g in ids]]
    det = q.detector.deepcopy()
    det.pc = det.pc_average
    dictionary = mp.get_patterns(
        rotations, det, energy=20, compute=True, show_progressbar=False
    )
    with contextlib.redirect_stdout(io.StringIO()):
        dmap = q.dictionary_indexing(dictionary, keep_n=1)
    found = ids[dmap.simulation_indices.reshape(12, 12)]
    assert np.mean(found[interior] == grain_id.reshape(12, 12)[interior]) > 0.95


# ------------------------------------------------------------------- fill


def test_masked_points_are_never_read(small_map):
    data = small_map.data.astype(np.float32)
    mask = np.zeros((12, 12), bool)
    mask[4:7, 3:6] = True
    mask[0, 11] = mask[10, 2] = True

    def filled(values_at_mask):
        s = small_map.deepcopy()
        s.change_dtype("float32")
        s.data[:] = data
        s.data[mask] = values_at_mask
        out = s.neural_fill(mask, seed=0, max_steps=60, **FAST_FIT)
        return s, out

    # NaN at the masked points: the default nonfinite="raise" would fail on
    # any NaN pattern that is read.
    s_nan, out_nan = filled(np.nan)
    assert np.isfinite(out_nan.data).all()
    np.testing.assert_array_equal(out_nan.data[~mask], data[~mask])
    info = s_nan.neural_model.info
    assert info["n_train_points"] + info["n_val_points"] == 144 - mask.sum()
    assert out_nan.data.dtype == np.float32 and type(out_nan) is type(s_nan)
    # Any other values there give the same model, bit for bit.
    s_junk, out_junk = filled(1e6)
    np.testing.assert_array_equal(out_junk.data, out_nan.data)
    for key, value in s_nan.neural_model.field.state_dict().items():
        np.testing.assert_array_equal(
            value.numpy(), s_junk.neural_model.field.state_dict()[key].numpy()
        )
    # The filled patterns are the model's.
    np.testing.assert_allclose(
        out_nan.data[mask], s_nan.neural_model.reconstruct()[mask], rtol=RTOL
    )


def test_fill_keeps_dtype_and_laziness(fitted_map):
    mask = np.zeros((12, 12), bool)
    mask[2, 3] = mask[7, 7] = True
    out = fitted_map.neural_fill(mask, refit=False)
    assert out.data.dtype == np.uint16 and out.neural_model is not None
    rec = fitted_map.neural_model.reconstruct()
    # Rounded decoded counts (to 1 count: float32 batches differ in the last bit).
    assert np.abs(out.data[mask].astype(np.int64) - np.rint(rec[mask])).max() <= 1
    np.testing.assert_array_equal(out.data[~mask], fitted_map.data[~mask])
    lazy = fitted_map.as_lazy()
    lazy.data = lazy.data.rechunk((5, 5, 40, 40))
    out_lazy = lazy.neural_fill(mask, refit=False)
    assert out_lazy._lazy and isinstance(out_lazy.data, da.Array)
    lazy_data = out_lazy.data.compute()
    np.testing.assert_array_equal(lazy_data[~mask], out.data[~mask])
    assert np.abs(lazy_data[mask].astype(np.int64) - out.data[mask]).max() <= 1
    with pytest.raises(ValueError, match="navigation shape"):
        fitted_map.neural_fill(np.zeros((3, 3), bool), refit=False)
    with pytest.raises(TypeError, match="boolean"):
        fitted_map.neural_fill(np.zeros((12, 12)), refit=False)
    with pytest.raises(ValueError, match="no point"):
        fitted_map.neural_fill(np.zeros((12, 12), bool), refit=False)
    with pytest.raises(TypeError, match="refit=True"):
        fitted_map.neural_fill(mask, refit=False, seed=3)
    # Sharpened fill-in, eager and lazy: the model's sharpened patterns there.
    sharp = fitted_map.neural_model.query(
        _grid_xy(fitted_map)[mask], sharpen_boundaries=True
    )
    for signal in (fitted_map, lazy):
        filled = signal.neural_fill(mask, refit=False, sharpen_boundaries=True)
        data = np.asarray(filled.data)
        assert np.abs(data[mask].astype(np.int64) - np.rint(sharp)).max() <= 1
        np.testing.assert_array_equal(data[~mask], out.data[~mask])


# ------------------------------------------------------ scattered points


def _hexagonal_xy(nx: int, ny: int, step: float) -> np.ndarray:
    rows = []
    for i in range(ny):
        shift = step / 2 if i % 2 else 0.0
        rows.append(
            np.stack(
                [shift + step * np.arange(nx), np.full(nx, i * step * np.sqrt(3) / 2)],
                -1,
            )
        )
    return np.concatenate(rows)


def test_scattered_positions_fit_and_square_resampling():
    s = synthetic_polycrystal((12, 12), (40, 40), n_grains=4, seed=3, noise=False)
    truth = s.truth
    hex_xy = _hexagonal_xy(12, 13, 0.9)  # inside the 0..11 um map
    rng = np.random.default_rng(0)
    clean = truth.patterns(hex_xy)
    counts = rng.poisson(clean / truth.gain) * truth.gain
    hexscan = EBSD(counts.astype(np.float32))
    hexscan.axes_manager.navigation_axes[0].units = "um"
    hexscan.set_signal_type("NeuralEBSD")
    model = hexscan.fit_neural(positions=hex_xy, seed=0, **FAST_FIT)
    g = model.geometry
    assert g.scattered and g.step == pytest.approx(0.9)
    # The reconstruction is at the given positions.
    np.testing.assert_allclose(
        hexscan.neural_reconstruct().data, model.query(hex_xy), rtol=RTOL
    )
    # Resampled onto a square grid of the hexagonal step.
    square = hexscan.upsample(1)
    ny, nx = square.data.shape[:2]
    x_axis, y_axis = square.axes_manager.navigation_axes
    assert x_axis.scale == pytest.approx(0.9) and y_axis.scale == pytest.approx(0.9)
    # x spans 0 .. 11.5 steps (odd rows are shifted by half a step), y spans
    # 12 rows of sqrt(3)/2 steps: 12 x 11 points of 0.9 um.
    assert x_axis.offset == pytest.approx(0.0) and (nx, ny) == (12, 11)
    xy = np.stack(np.meshgrid(x_axis.axis, y_axis.axis), -1)
    error = np.abs(square.data - truth.patterns(xy)).mean()
    # Better than the measured patterns of the nearest hexagonal points.
    from scipy.spatial import cKDTree

    nearest = counts[cKDTree(hex_xy).query(xy.reshape(-1, 2))[1]]
    assert (
        error < np.abs(nearest.reshape(square.data.shape) - truth.patterns(xy)).mean()
    )
    with pytest.raises(ValueError, match="explicit positions"):
        model.geometry.grid_xy(2)
    with pytest.raises(ValueError, match="repeated"):
        hexscan.fit_neural(positions=np.zeros_like(hex_xy), **FAST_FIT)
    with pytest.raises(ValueError, match="shape"):
        hexscan.fit_neural(positions=hex_xy[:-1], **FAST_FIT)
    grid_signal = s.deepcopy()
    grid_signal.set_signal_type("NeuralEBSD")
    with pytest.raises(ValueError, match="one navigation axis"):
        grid_signal.fit_neural(positions=truth.xy.reshape(-1, 2), **FAST_FIT)


def test_scattered_geometry_round_trip_and_pcs():
    g = ScanGeometry(5, 1, 0.0, 0.0, 1.0, 1.0, "um", (8, 8))
    xy = np.array([[0, 0], [2, 0], [0, 2], [2, 2], [1, 1.5]], float)
    h = g.with_positions(xy)
    assert ScanGeometry.from_dict(h.to_dict()) == h
    assert "positions" not in g.to_dict()
    np.testing.assert_array_equal(h.index_to_xy(np.arange(5)), xy)
    assert h.x_range == (0.0, 2.0) and h.square_grid_xy(0.5).shape == (5, 5, 2)
    from kikuchipy.detectors import EBSDDetector

    det = EBSDDetector(shape=(8, 8), pc=_linear_pc(xy))
    inside = np.array([[0.5, 0.5], [1.5, 1.0]])
    np.testing.assert_allclose(
        queries.interpolate_pc(det, h, inside), _linear_pc(inside)
    )


# ---------------------------------------------------- interpolation baselines


def test_interpolation_baselines_on_a_linear_field():
    ny, nx = 7, 9
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    base = np.random.default_rng(0).random((2, 3, 3))
    data = (xx[..., None, None] * base[0] + yy[..., None, None] * base[1]).astype(
        np.float32
    )
    known = sparse_grid_mask((ny, nx))
    assert known.sum() == 4 * 5
    linear = interpolate_missing(data, known, "linear")
    np.testing.assert_allclose(linear, data, rtol=1e-5, atol=1e-5)
    nearest = interpolate_missing(data, known, "nearest")
    np.testing.assert_array_equal(nearest[known], data[known])
    # Each unknown point got the pattern of a known point one step away.
    for i, j in np.argwhere(~known):
        candidates = [
            (a, b)
            for a in (i - 1, i, i + 1)
            for b in (j - 1, j, j + 1)
            if 0 <= a < ny and 0 <= b < nx and known[a, b]
        ]
        assert any(np.array_equal(nearest[i, j], data[a, b]) for a, b in candidates)
    # Masks that are not a sub-grid: triangulation, exact for a linear field.
    scattered = np.random.default_rng(1).random((ny, nx)) < 0.5
    scattered[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    np.testing.assert_allclose(
        interpolate_missing(data, scattered, "linear"), data, atol=1e-4
    )
    with pytest.raises(ValueError, match="method"):
        interpolate_missing(data, known, "cubic")


# ------------------------------------------------------------ path profile


def test_path_profile_across_a_boundary(fitted_map, small_map):
    from kikuchipy_neural.analysis.paths import path_profile

    s = fitted_map
    truth = small_map.truth
    # A horizontal path through the middle row, crossing grain boundaries.
    start, end = (0.0, 6.0), (11.0, 6.0)
    profile = path_profile(s, start, end, 23)
    assert profile.xy.shape == (23, 2) and profile.distance[-1] == pytest.approx(11.0)
    assert profile.confidence.shape == (23,)
    assert np.all((profile.confidence >= 0) & (profile.confidence <= 1))
    assert profile.gradient.shape == (23,) and np.isfinite(profile.gradient).all()
    ids = truth.grain_id_at(profile.xy)
    crossings = np.flatnonzero(np.diff(ids) != 0)
    assert len(crossings) >= 1
    # The largest jump in orientation is at a true crossing (within a step).
    jump = int(np.argmax(profile.misorientation_step))
    assert np.min(np.abs(jump - 1 - crossings)) <= 2
    # Orientations far from boundaries match the truth.
    ori = Orientation(profile.xmap.rotations.data, symmetry=truth.orientations.symmetry)
    err = np.rad2deg(ori.angle_with(truth.orientation_at(profile.xy)))
    far = truth.boundary_distance(profile.xy) > 1.5
    assert np.mean(err[far] < 2) > 0.9
    fig = profile.plot(boundaries=profile.distance[crossings] + 0.25)
    assert len(fig.axes) == 3


# ------------------------------------------------------ boundary sharpening


def _ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def test_sharpening_turns_boundary_blends_into_the_grain_under_the_beam(
    fitted_map, small_map
):
    model = fitted_map.neural_model
    truth = small_map.truth
    xy = np.random.default_rng(5).uniform(0, 11, size=(4000, 2))
    distance = truth.boundary_distance(xy)
    near, far = xy[distance < 0.25][:100], xy[distance > 2][:100]
    assert len(near) == len(far) == 100
    changes = {}
    for name, points in (("near", near), ("far", far)):
        plain = model.query(points)
        sharp = model.query(points, sharpen_boundaries=True)
        assert sharp.shape == plain.shape and sharp.dtype == np.float32
        # The noise-free pattern of the grain under the beam centre.
        pure = truth.grain_patterns(truth.grain_id_at(points), points)
        before, after = _ncc(plain, pure), _ncc(sharp, pure)
        changes[name] = np.abs(sharp - plain).mean()
        if name == "near":
            # Blends move towards the pure pattern of the right grain.
            assert np.mean(after > before) > 0.75
            assert after.mean() > before.mean() + 0.002
        else:
            assert after.mean() == pytest.approx(before.mean(), abs=1e-3)
    # Inside grains the patterns barely change; at boundaries they do.
    assert changes["far"] < 0.05 * changes["near"]
    # Through the signal methods: the same patterns.
    signal = fitted_map.neural_query(near[:5], sharpen_boundaries=True)
    np.testing.assert_allclose(
        signal.data, model.query(near[:5], sharpen_boundaries=True), rtol=RTOL
    )
    up = fitted_map.upsample(1, sharpen_boundaries=True)
    assert not np.allclose(up.data, fitted_map.neural_reconstruct().data)


def test_sharpening_distance_must_be_positive(fitted_map):
    from kikuchipy_neural.analysis.sharpening import sharpen_boundaries

    model = fitted_map.neural_model
    xy = np.array([[3.0, 4.0]])
    patterns = model.query(xy).reshape(1, -1)
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="distance must be a positive"):
            sharpen_boundaries(model, xy, patterns, distance=bad)
    # A query outside the scan still raises before any sharpening.
    with pytest.raises(ValueError, match="outside the scanned area"):
        model.query(np.array([[30.0, 4.0]]), sharpen_boundaries=True)


# ------------------------------------------------------- super-resolution


def test_tiny_super_resolution_beats_nearest_neighbour():
    s = synthetic_polycrystal((17, 17), (40, 40), n_grains=5, seed=7, twins=True)
    truth = s.truth
    s.set_signal_type("NeuralEBSD")
    known = sparse_grid_mask((17, 17))
    model = s.fit_neural(mask=known, seed=0, **FAST_FIT)
    held = ~known
    neural = model.reconstruct()[held]
    nearest = interpolate_missing(s.data, known, "nearest")[held]
    measured = s.data[held].astype(np.float32)
    clean = truth.clean[held]

    def mae(a, b):
        return float(np.abs(a - b).mean())

    assert mae(neural, clean) < mae(nearest, clean)
    assert mae(neural, measured) < mae(nearest, measured)
