"""Tests of the model file (kikuchipy_neural.io.model_file) and lazy decoding.

Every test reuses the session's ``small_model`` (12x12 scan of 40x40
patterns); corruption cases each damage a freshly saved copy of it.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import FAST_FIT

import kikuchipy_neural as kn
from kikuchipy_neural.io import array_codec, model_file
from kikuchipy_neural.io.model_file import ModelFileError, file_summary, load_model

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture()
def saved(small_model, tmp_path):
    """Path of ``small_model`` saved at float32."""
    return small_model.save(tmp_path / "model.h5", precision="float32")


def _state(model):
    return {k: v.detach().cpu().numpy() for k, v in model.field.state_dict().items()}


def _packed(path):
    """The header (dict, as stored) and the concatenated array streams of a
    format-5 file, read with no checks."""
    with h5py.File(path) as f:
        payload = f["payload"][()].tobytes()
    n = int.from_bytes(payload[:4], "little")
    text = array_codec.decompress_header(payload[4 : 4 + n], 2**26, "header")
    return json.loads(text), payload[4 + n :]


def _pack(path, header, streams):
    """Write ``header`` (dict) and the array ``streams`` (bytes) as the
    payload of the format-5 file at ``path``, its checksum untouched."""
    stream = array_codec.compress_header(json.dumps(header).encode())
    with h5py.File(path, "r+") as f:
        del f["payload"]
        f["payload"] = np.frombuffer(
            len(stream).to_bytes(4, "little") + stream + streams, np.uint8
        )


def _layout(header):
    """The tensors' layout that a format-5 header implies."""
    shapes = model_file._architecture_shapes(
        header["field"], tuple(header["geometry"]["pattern_shape"]), Path("x")
    )
    return model_file._tensor_layout(shapes, header["precision"])


def _stored(path):
    """The header (dict) and the arrays of a format-5 file as stored (int8
    basis codes not yet integrated, the history as JSON bytes), read with no
    checks: what a crafted file starts from."""
    header, payload = _packed(path)
    geometry = model_file._check_header(header, path, 5)
    shapes = model_file._architecture_shapes(
        header["field"], geometry.pattern_shape, path
    )
    expected = model_file._expected_arrays(
        {**header, "tensors": _layout(header)},
        header["precision"],
        geometry,
        shapes,
        5,
        path,
    )
    arrays, offset = {}, 0
    for name, (codec, nbytes) in zip(sorted(expected), header["storage"], strict=True):
        dtype, shape = expected[name]
        stream = payload[offset : offset + nbytes]
        offset += nbytes
        data = array_codec.decode(
            stream, codec, math.prod(shape) * dtype.itemsize, dtype.itemsize, ""
        )
        arrays[name] = np.frombuffer(data, dtype).reshape(shape)
    return header, arrays


def _rewrite(path, edit_arrays=None, edit_header=None, keep_checksum=False):
    """Write the file again through the model file's writer, after editing
    its arrays and header: a crafted file whose checksum matches its content
    (unless ``keep_checksum``: then the original's, as a file altered after
    it was written would have)."""
    header, arrays = _stored(path)
    arrays = dict(arrays)
    with h5py.File(path) as f:
        checksum = model_file._attr_str(f, "checksum", path)
    if edit_arrays is not None:
        edit_arrays(arrays)
    if edit_header is not None:
        edit_header(header)
    model_file._write_file(path, arrays, header)
    if keep_checksum:
        with h5py.File(path, "r+") as f:
            model_file._set_string_attr(f, "checksum", checksum)


# --------------------------------------------------------------- round trip


def test_float32_round_trip_is_bit_exact(small_model, saved):
    loaded = load_model(saved)
    a, b = _state(small_model), _state(loaded)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype == np.float32
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(loaded.reconstruct(), small_model.reconstruct())
    assert loaded.geometry == small_model.geometry
    assert loaded.intensity_range == small_model.intensity_range
    assert loaded.field.config == small_model.field.config
    # The history's floats are stored at float32 (7 significant digits).
    assert loaded.history.keys() == small_model.history.keys()
    for key, values in small_model.history.items():
        if all(isinstance(v, str) for v in values):
            assert loaded.history[key] == values
        else:
            np.testing.assert_allclose(
                np.asarray(loaded.history[key], float),
                np.asarray(values, float),
                rtol=2**-22,  # float32 rounding, then its shortest decimal
                equal_nan=True,
            )
    assert loaded.options == json.loads(json.dumps(small_model.options))
    assert {
        k: v for k, v in loaded.info.items() if k != "model_file"
    } == small_model.info
    assert loaded.info["model_file"]["precision"] == "float32"
    np.testing.assert_array_equal(
        loaded.spectrum.eigenvalues, small_model.spectrum.eigenvalues
    )
    assert loaded.spectrum.noise_variance == small_model.spectrum.noise_variance
    assert loaded.rank == small_model.rank


def test_detector_and_phases_round_trip(small_model, saved):
    loaded = load_model(saved)
    d0, d1 = small_model.detector, loaded.detector
    assert d1.shape == d0.shape
    for name in ("px_size", "binning", "tilt", "azimuthal", "twist", "sample_tilt"):
        assert getattr(d1, name) == getattr(d0, name), name
    np.testing.assert_array_equal(d1.pc_average, d0.pc_average)
    p0, p1 = small_model.phases, loaded.phases
    assert p1.ids == p0.ids
    for (_, a), (_, b) in zip(p0, p1, strict=True):
        assert b.name == a.name
        assert b.space_group.number == a.space_group.number
        assert b.point_group.name == a.point_group.name
        assert b.color == a.color
        np.testing.assert_allclose(
            b.structure.lattice.abcABG(), a.structure.lattice.abcABG()
        )
        assert [str(x.element) for x in b.structure] == [
            str(x.element) for x in a.structure
        ]


def test_per_point_pattern_centres_are_kept(small_model, tmp_path):
    import copy

    model = copy.deepcopy(small_model)
    ny, nx = model.geometry.nav_shape
    pc = np.zeros((ny, nx, 3))
    pc[..., 0] = 0.5 + 0.001 * np.arange(nx)[None, :]
    pc[..., 1] = 0.3 + 0.002 * np.arange(ny)[:, None]
    pc[..., 2] = 0.55
    model.detector.pc = pc
    loaded = load_model(model.save(tmp_path / "pc.h5"))
    np.testing.assert_array_equal(loaded.detector.pc, pc)


def test_explicit_scan_positions_round_trip(small_model, tmp_path):
    import copy
    import dataclasses

    from kikuchipy_neural.geometry import ScanGeometry

    model = copy.deepcopy(small_model)
    g = model.geometry
    # A hexagonal-like list of 144 points inside the same area.
    xy = g.grid_xy().reshape(-1, 2).copy()
    xy[1::2, 0] = np.minimum(xy[1::2, 0] + 0.5 * g.dx, g.x_range[1])
    line = dataclasses.replace(g, nx=g.n_points, ny=1, positions=None)
    model.geometry = ScanGeometry.with_positions(line, xy)
    model.detector = None  # one PC per grid point would not match the list
    path = model.save(tmp_path / "hex.h5", precision="float32")
    loaded = load_model(path)
    assert loaded.geometry == model.geometry and loaded.geometry.scattered
    s = kn.load(path)
    assert s.axes_manager.navigation_shape == (g.n_points,)
    np.testing.assert_array_equal(s.data.compute(), model.query(xy))


def _half_step_of_row_codes(original, decoded):
    """Affine 8-bit codes per row: at most half a step off."""
    step = (original.max(axis=1) - original.min(axis=1)) / 255
    return np.all(np.abs(decoded - original) <= step[:, None] / 2 * (1 + 1e-4) + 1e-12)


@pytest.mark.parametrize("precision", ["float16", "int8"])
def test_lower_precisions_have_bounded_error(small_model, tmp_path, precision):
    path = small_model.save(tmp_path / f"{precision}.h5", precision=precision)
    loaded = load_model(path)
    a, b = _state(small_model), _state(loaded)
    lo, hi = small_model.intensity_range
    xy = small_model.geometry.grid_xy()
    coded = []
    for key in a:
        long_rows = a[key].ndim == 2 and a[key].shape[1] >= model_file._QUANTISE_MIN_ROW
        if precision == "int8" and long_rows:
            # The bases and the hidden layers' weight matrices.
            coded.append(key)
            assert _half_step_of_row_codes(a[key], b[key]), key
        else:
            # float16: relative rounding error 2**-11 (plus subnormals).
            np.testing.assert_allclose(b[key], a[key], rtol=2**-11, atol=2**-24)
    if precision == "int8":
        # Every hidden matrix is coded; the first layer (2 inputs) is not.
        assert "bases" in coded and "siren.net.1.linear.weight" in coded
        assert "siren.net.0.linear.weight" not in coded
        assert _stored(path)[1]["network_codes"].dtype == np.uint8
        with h5py.File(path) as f:
            assert f.attrs["format_version"] == model_file.FORMAT_VERSION
    err = np.abs(loaded.reconstruct() - small_model.reconstruct())
    assert err.max() > 0
    if precision == "float16":
        # Pattern error: with the coefficients A of the loaded network, the
        # basis error contributes at most sum_r |A_r| * max|dB_r| ([0, 1] units);
        # the float16 network's own rounding gets as much again plus a slack.
        with torch.no_grad():
            coeffs = loaded.field.coefficients(
                torch.from_numpy(small_model.geometry.normalize(xy.reshape(-1, 2)))
            )
        basis_err = np.abs(b["bases"] - a["bases"]).max(axis=1)
        bound_basis = (np.abs(coeffs.numpy()) @ basis_err).max() * (hi - lo)
        assert err.max() <= 2 * bound_basis + 1e-3 * (hi - lo)
    # Either way, small against the range (int8: mean 7e-4, max 2.4e-3).
    assert err.mean() < 2e-3 * (hi - lo)
    assert err.max() < 5e-3 * (hi - lo)


def test_narrow_weight_matrices_share_one_step(small_map, tmp_path):
    """At int8, the weight matrices of a network narrower than 32 are coded
    too, with one offset and step per matrix (repeated per row, as the
    format stores them): each value within half that step."""
    options = {**FAST_FIT, "siren_width": 16}
    model = small_map.deepcopy().fit_neural(seed=0, max_steps=20, **options)
    path = model.save(tmp_path / "narrow.h5", precision="int8")
    header, arrays = _stored(path)
    original = _state(model)
    entries = {e["name"]: e for e in _layout(header)}
    coded = [k for k, e in entries.items() if e["dataset"] == "network_codes"]
    # The hidden and last layers (rows of 16); not the first (2 inputs).
    assert sorted(coded) == sorted(
        k for k, v in original.items() if k.endswith("weight") and v.shape[1] == 16
    )
    assert len(coded) == 3
    decoded = _state(load_model(path))
    for key in coded:
        row, rows = entries[key]["row"], original[key].shape[0]
        lo = arrays["network_codes_offset"][row : row + rows]
        step = arrays["network_codes_step"][row : row + rows]
        assert np.all(lo == lo[0]) and np.all(step == step[0])
        np.testing.assert_allclose(lo[0], original[key].min())
        np.testing.assert_allclose(step[0], np.ptp(original[key]) / 255, rtol=1e-6)
        assert np.all(np.abs(decoded[key] - original[key]) <= step[0] / 2 * (1 + 1e-4))
    # Smaller than the same file with those matrices in float16 (the rule
    # until 2026-12-03), which is what per-row steps would have cost too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_file, "_QUANTISE_MIN_ROW", 32)
        float16_path = model.save(tmp_path / "float16_matrices.h5", precision="int8")
    assert path.stat().st_size < float16_path.stat().st_size - 300


def _assert_same_decoding(actual, expected):
    """The patterns of a reference file, as the release that wrote it
    decoded them: equal up to float32 rounding, as the same parameters give
    on another CPU (torch's kernels differ by instruction set: 44 of 9216
    values 2e-7 apart between two of this project's machines)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)


def test_format_1_int8_files_still_load():
    """A version-1 int8 file (network in float16, written by the release before
    network codes) decodes to what that release decoded."""
    loaded = load_model(DATA / "model_format1_int8.h5")
    assert loaded.info["model_file"]["format_version"] == 1
    expected = np.load(DATA / "model_format1_int8_reconstruct.npy")
    _assert_same_decoding(loaded.reconstruct(), expected)
    assert file_summary(DATA / "model_format1_int8.h5")["precision"] == "int8"


def test_format_2_int8_files_still_load():
    """A version-2 int8 file (basis codes stored undifferenced, written by the
    release before format 3) decodes to what that release decoded."""
    loaded = load_model(DATA / "model_format2_int8.h5")
    assert loaded.info["model_file"]["format_version"] == 2
    expected = np.load(DATA / "model_format2_int8_reconstruct.npy")
    _assert_same_decoding(loaded.reconstruct(), expected)


def test_format_3_int8_files_still_load():
    """A version-3 int8 file (one gzip-compressed HDF5 dataset per array,
    written by the release before format 4) decodes to what that release
    decoded."""
    loaded = load_model(DATA / "model_format3_int8.h5")
    assert loaded.info["model_file"]["format_version"] == 3
    expected = np.load(DATA / "model_format3_int8_reconstruct.npy")
    _assert_same_decoding(loaded.reconstruct(), expected)
    summary = file_summary(DATA / "model_format3_int8.h5")
    # Each array's bytes in its own dataset (these, under 4 kB, uncompressed).
    assert summary["stored_bytes"] == summary["array_bytes"]


def test_format_4_int8_files_still_load():
    """A version-4 int8 file (the header an LZMA stream in a dataset of its
    own, with the tensors' layout and the history in it) decodes to what
    the release before format 5 decoded."""
    loaded = load_model(DATA / "model_format4_int8.h5")
    assert loaded.info["model_file"]["format_version"] == 4
    expected = np.load(DATA / "model_format4_int8_reconstruct.npy")
    _assert_same_decoding(loaded.reconstruct(), expected)
    assert loaded.history["step"] == [0, 10, 20, 30]
    summary = file_summary(DATA / "model_format4_int8.h5")
    assert summary["precision"] == "int8"
    assert summary["training"]["n_evaluations"] == 4


@pytest.mark.parametrize("version", [2, 3, 4])
def test_older_int8_files_upgrade_without_loss(tmp_path, version):
    """Loading a format-2 or format-3 int8 file and saving it at int8 writes
    the current format with every parameter bit-exact: the 8-bit codes of
    decoded values are the codes they came from (format 1 files keep their
    weight matrices in float16; saved at int8 they are quantised anew)."""
    old = load_model(DATA / f"model_format{version}_int8.h5")
    new = load_model(old.save(tmp_path / "upgraded.h5", precision="int8"))
    assert new.info["model_file"]["format_version"] == model_file.FORMAT_VERSION
    a, b = _state(old), _state(new)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_basis_codes_are_stored_as_exact_2d_differences(small_model, tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (3, 5 * 7), dtype=np.uint8)
    diffs = model_file._difference_2d(codes, (5, 7))
    np.testing.assert_array_equal(model_file._integrate_2d(diffs, (5, 7)), codes)
    # The smaller under the file's codec: smooth images are differenced,
    # noise (whose differences spread wider) is not.
    yy, xx = np.mgrid[:40, :40]
    smooth = np.rint(127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 9.0)).astype(np.uint8)
    noise = rng.integers(100, 156, (2, 40 * 40), dtype=np.uint8)
    stored, differenced = model_file._smaller_of_codes_or_differences(
        np.stack([smooth.ravel()] * 2), (40, 40)
    )
    assert differenced
    stored, differenced = model_file._smaller_of_codes_or_differences(noise, (40, 40))
    assert not differenced
    np.testing.assert_array_equal(stored, noise)
    # In a file: the stored array holds the chosen form, the header says
    # which, and loading recovers the codes exactly, either way.
    path = small_model.save(tmp_path / "int8.h5", precision="int8")
    shape = small_model.geometry.pattern_shape
    codes, _, _ = model_file._quantise_rows(small_model.field.bases.detach().numpy())
    header, arrays = _stored(path)
    diffs = model_file._difference_2d(codes, shape)
    smaller = len(array_codec.encode(diffs)[1]) < len(array_codec.encode(codes)[1])
    assert header["bases_differenced"] is smaller
    np.testing.assert_array_equal(arrays["bases"], diffs if smaller else codes)
    np.testing.assert_array_equal(
        model_file._read_verified(path).arrays["bases"], codes
    )
    for differenced in (True, False):

        def store(arrays, differenced=differenced):
            arrays["bases"] = diffs if differenced else codes

        def flag(header, differenced=differenced):
            header["bases_differenced"] = differenced

        _rewrite(path, edit_arrays=store, edit_header=flag)
        content = model_file._read_verified(path)
        np.testing.assert_array_equal(content.arrays["bases"], codes)


@pytest.mark.parametrize("flag", [None, 1, "true", [True]])
def test_invalid_difference_flags_raise(small_model, tmp_path, flag):
    path = small_model.save(tmp_path / "int8.h5", precision="int8")

    def edit(header):
        if flag is None:
            header.pop("bases_differenced", None)
        else:
            header["bases_differenced"] = flag

    _rewrite(path, edit_header=edit, keep_checksum=True)
    # The checksum catches the edit first; a crafted file with a matching
    # checksum gets the flag's own error.
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)
    _rewrite(path, edit_header=edit)
    with pytest.raises(ModelFileError, match="must be true or false"):
        load_model(path)


def test_lower_precisions_are_smaller(small_model, tmp_path):
    sizes = {
        p: small_model.save(tmp_path / f"{p}.h5", precision=p).stat().st_size
        for p in ("float32", "float16", "int8")
    }
    assert sizes["float32"] > sizes["float16"] > sizes["int8"]


def test_balanced_basis_steps_spend_twice_the_error_where_it_is_cheapest():
    bases = np.array([[0.0, 2.55, 1.0], [0.0, 0.255, 0.1], [0.0, 0.51, 0.2]])
    # Errors with 256 codes over each range (rms * range / 255): 0.01, 0.02
    # and 0.008, variance sum 5.64e-4. Twice that, shared: the 0.02 basis
    # keeps its step (it cannot be finer), the other two add e each, with
    # 2 e**2 + 0.02**2 = 2 * 5.64e-4.
    steps = model_file._balanced_basis_steps(bases, np.array([1.0, 20.0, 4.0]))
    e = math.sqrt((2 * 5.64e-4 - 0.02**2) / 2)
    np.testing.assert_allclose(steps, [e, 0.001, e / 4], rtol=1e-9)
    # A basis whose coefficient is zero gets its range (it adds no error);
    # the others share twice their own variance: 2 e**2 = 2 * (0.01**2 +
    # 0.0005**2).
    steps = model_file._balanced_basis_steps(bases, np.array([1.0, 0.5, 0.0]))
    e = math.sqrt(0.01**2 + 0.0005**2)
    np.testing.assert_allclose(steps, [e, e / 0.5, 0.51], rtol=1e-9)


def _field_with(model, state):
    """A copy of ``model``'s field holding ``state``."""
    from kikuchipy_neural.fields import build_field

    field = build_field(model.field.config)
    field.load_state_dict(state)
    return field


@torch.no_grad()
def test_principal_axes_keep_the_patterns_and_decorrelate_the_coefficients(
    small_model,
):
    from kikuchipy_neural.io import principal_axes

    state = small_model.field.state_dict()
    before = {k: v.clone() for k, v in state.items()}
    mean, cov = principal_axes.coefficient_moments(small_model)
    rotated = principal_axes.principal_axes_state(state, mean, cov)
    assert all(torch.equal(state[k], before[k]) for k in state)  # untouched
    field = _field_with(small_model, rotated)
    g = small_model.geometry
    xy = torch.from_numpy(g.normalize(g.grid_xy().reshape(-1, 2)))
    # The same patterns ([0, 1] units) up to float32 rounding.
    original = small_model.field.pattern_values(xy)
    np.testing.assert_allclose(field.pattern_values(xy), original, atol=2e-6)
    # Over the scan (all 144 points: fewer than the moments' limit), the new
    # coefficients have mean 0 and unit covariance, the first basis is the
    # mean pattern, the others are orthogonal with decreasing norms.
    a = field.coefficients(xy)[:, 1:].double()
    np.testing.assert_allclose(a.mean(dim=0), 0, atol=1e-5)
    np.testing.assert_allclose(
        torch.cov(a.T, correction=0), np.eye(len(mean)), atol=1e-5
    )
    bases = rotated["bases"].double()
    np.testing.assert_allclose(bases[0], original.double().mean(dim=0), atol=1e-6)
    gram = bases[1:] @ bases[1:].T
    norms = gram.diagonal()
    np.testing.assert_allclose(gram - torch.diag(norms), 0, atol=1e-6 * norms.max())
    assert torch.all(norms[:-1] >= norms[1:]) and norms[-1] < 0.5 * norms[0]
    # A constant coefficient (its row of the last layer zero) makes the
    # covariance singular: no principal axes, the field stays as it is.
    flat = dict(state)
    flat["siren.last.weight"] = state["siren.last.weight"].clone()
    flat["siren.last.weight"][1] = 0
    field = _field_with(small_model, flat)
    a = field.coefficients(xy)[:, 1:].double()
    moments = a.mean(dim=0).numpy(), torch.cov(a.T, correction=0).numpy()
    assert principal_axes.principal_axes_state(flat, *moments) is None
    nan_cov = np.full_like(cov, np.nan)
    assert principal_axes.principal_axes_state(state, mean, nan_cov) is None


def test_balanced_bases_keep_the_errors_bounded_and_pack_tighter(small_model, tmp_path):
    before = _state(small_model)
    plain = small_model.save(tmp_path / "int8.h5", precision="int8")
    balanced = small_model.save(
        tmp_path / "balanced.h5", precision="int8", balanced_bases=True
    )
    # The model saved is left as it was.
    for key, value in _state(small_model).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    header, arrays = _stored(balanced)
    # What the file stores: the field in its principal axes, where every
    # coefficient has RMS 1 over the scan (mean 0, variance 1), as the mean
    # pattern's constant 1 has.
    from kikuchipy_neural.io import principal_axes

    rotated = principal_axes.principal_axes_state(
        small_model.field.state_dict(),
        *principal_axes.coefficient_moments(small_model),
    )
    bases = rotated["bases"].numpy().astype(np.float64)
    ranges = np.ptp(bases, axis=1)
    step = arrays["bases_step"].astype(np.float64)
    # The bases' errors (RMS 1 times step) sum to twice the variance of 256
    # codes over each range; the coarsened ones add the same error, and none
    # is finer than 256 codes allow.
    own = ranges / 255
    np.testing.assert_allclose(np.sum(step**2), 2 * np.sum(own**2), rtol=1e-5)
    assert np.all(step >= own * (1 - 1e-6))
    coarsened = step > own * 1.01
    assert 1 <= coarsened.sum() < len(step)
    np.testing.assert_allclose(step[coarsened], step[coarsened].max(), rtol=1e-5)
    loaded = load_model(balanced)
    decoded = _state(loaded)
    assert np.all(np.abs(decoded["bases"] - bases) <= step[:, None] / 2 * (1 + 1e-4))
    # The layers before the last are coded as in a plain int8 file.
    plain_state = _state(load_model(plain))
    for key in decoded:
        if key != "bases" and not key.startswith("siren.last."):
            np.testing.assert_array_equal(decoded[key], plain_state[key], err_msg=key)
    assert balanced.stat().st_size < plain.stat().st_size
    # Patterns as close to the model's as the plain int8 file's are
    # (test_lower_precisions_have_bounded_error), the error spread over
    # more of the bases.
    lo, hi = small_model.intensity_range
    err = np.abs(loaded.reconstruct() - small_model.reconstruct())
    err_plain = np.abs(load_model(plain).reconstruct() - small_model.reconstruct())
    assert 0 < err.mean() < 2e-3 * (hi - lo) and err.max() < 5e-3 * (hi - lo)
    assert err.mean() < 2 * err_plain.mean()
    # The same format: any reader of int8 files reads it.
    assert arrays.keys() == _stored(plain)[1].keys()


def test_balanced_bases_need_int8(small_model, tmp_path):
    with pytest.raises(ValueError, match="needs precision='int8'"):
        small_model.save(tmp_path / "m.h5", precision="float16", balanced_bases=True)
    assert not (tmp_path / "m.h5").exists()


def test_save_arguments(small_model, tmp_path):
    path = tmp_path / "m.h5"
    with pytest.raises(ValueError, match="precision must be one of"):
        small_model.save(path, precision="bfloat7")
    small_model.save(path)
    with pytest.raises(FileExistsError):
        small_model.save(path, overwrite=False)
    with pytest.raises(FileNotFoundError, match="no folder .*missing"):
        small_model.save(tmp_path / "missing" / "m.h5")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert file_summary(path)["precision"] == "float16"


def test_file_structure_is_small(small_model, tmp_path):
    # HDF5's share of an int8 file: the file's size minus its one dataset's
    # bytes. Each array has no dataset of its own (a few hundred bytes each
    # in format 3), the header none either (0.3 kB in format 4), and h5py's
    # default variable-length string attributes would add a 4 kB global heap.
    path = small_model.save(tmp_path / "m.h5", precision="int8")
    with h5py.File(path) as f:
        assert sorted(f.attrs) == ["checksum", "format", "format_version"]
        for name in ("format", "checksum"):
            assert h5py.check_string_dtype(f.attrs.get_id(name).dtype).length
        assert sorted(f) == ["payload"]
        stored = f["payload"].id.get_storage_size()
    header, arrays = _stored(path)
    # 0.65 kB here (1.1 kB in format 4; 2.0 kB with 2 kB metadata blocks
    # and contiguous datasets).
    assert path.stat().st_size - stored < 700
    # Each stream is no longer than its array, the bases' shorter.
    storage = dict(zip(sorted(arrays), header["storage"], strict=True))
    for name, array in arrays.items():
        assert storage[name][1] <= array.nbytes
    assert storage["bases"][1] < 0.9 * arrays["bases"].nbytes
    assert storage["bases"][0] == "lzma"
    # The header packs against its preset dictionary to a fraction of what
    # deflate makes of it alone.
    text = json.dumps(header, separators=(",", ":")).encode()
    alone = zlib.compressobj(9, zlib.DEFLATED, -15)
    assert len(array_codec.compress_header(text)) < 0.4 * len(
        alone.compress(text) + alone.flush()
    )

    # The history's floats are written with 3 significant digits at int8,
    # 4 at float16, at float32 in float32 files; not with 17 digits.
    def history_digits(path) -> list[int]:
        history = _stored(path)[1]["history"].tobytes().decode()
        return [
            len(m.strip("-").split("e")[0].replace(".", "").strip("0"))
            for m in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", history)
        ]

    assert history_digits(path) and max(history_digits(path)) == 3
    path16 = small_model.save(tmp_path / "m16.h5", precision="float16")
    assert max(history_digits(path16)) == 4
    digits = history_digits(small_model.save(tmp_path / "m32.h5", precision="float32"))
    assert 4 < max(digits) <= 9
    loaded = load_model(path)
    assert loaded.history["step"] == small_model.history["step"]
    for key, values in small_model.history.items():
        if not all(isinstance(v, str) for v in values):
            np.testing.assert_allclose(
                np.asarray(loaded.history[key], float),
                np.asarray(values, float),
                rtol=5e-3,  # 3 significant digits
                equal_nan=True,
            )


def test_history_steps_are_stored_as_differences():
    history = {"step": [0, 25, 50, 75, 90], "loss": [1.0, 0.5, 0.25, 0.125, 0.1]}
    raw = model_file._history_json(history, 3)
    assert json.loads(raw)["step"] == [0, 25, 25, 25, 15]
    parsed = model_file._parse_history(np.frombuffer(raw, np.uint8), Path("x"))
    assert parsed == {"step": [0, 25, 50, 75, 90], "loss": [1.0, 0.5, 0.25, 0.125, 0.1]}
    # A step column that is not all integers is stored as it is.
    odd = {"step": [0, 2.5, None]}
    raw = model_file._history_json(odd, 3)
    assert json.loads(raw) == odd
    assert model_file._parse_history(np.frombuffer(raw, np.uint8), Path("x")) == odd


# ------------------------------------------------------------ lazy loading


def test_lazy_load_decodes_the_model(small_map, small_model, saved, tmp_path):
    s = kn.load(saved)
    assert type(s).__name__ == "LazyNeuralEBSD"
    assert s.neural_model is not None
    assert s.data.shape == small_map.data.shape
    assert s.data.dtype == np.float32
    for new, old in zip(
        s.axes_manager.navigation_axes,
        small_map.axes_manager.navigation_axes,
        strict=True,
    ):
        assert (new.size, new.scale, new.offset, new.units) == (
            old.size,
            old.scale,
            old.offset,
            old.units,
        )
    np.testing.assert_array_equal(
        s.detector.pc_average, small_model.detector.pc_average
    )
    np.testing.assert_array_equal(s.data.compute(), small_model.reconstruct())
    # A slice decodes only its chunks, and to the same values.
    np.testing.assert_array_equal(
        s.inav[2:5, 7].data.compute(), small_model.reconstruct()[7, 2:5]
    )
    eager = kn.load(saved, lazy=False)
    assert type(eager).__name__ == "NeuralEBSD"
    np.testing.assert_array_equal(eager.data, small_model.reconstruct())
    # Methods of the signal use the attached model.
    np.testing.assert_array_equal(
        s.neural_reconstruct(lazy=False).data, small_model.reconstruct()
    )


def test_lazy_load_saves_to_h5ebsd(small_model, saved, tmp_path):
    import kikuchipy as kp

    s = kn.load(saved)
    s.save(tmp_path / "patterns.h5")
    back = kp.load(tmp_path / "patterns.h5")
    assert type(back).__name__ == "EBSD"
    np.testing.assert_array_equal(back.data, small_model.reconstruct())
    assert back.axes_manager.navigation_shape == s.axes_manager.navigation_shape


def test_lazy_load_under_process_schedulers(small_model, saved):
    s = kn.load(saved)
    expected = small_model.reconstruct()
    # The model travels to other processes by pickling (the model object,
    # never the file): the multiprocessing scheduler ...
    np.testing.assert_array_equal(
        s.data.compute(scheduler="processes", num_workers=2), expected
    )
    # ... and dask.distributed with a worker process.
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        np.testing.assert_array_equal(s.data.compute(), expected)


# ---------------------------------------------------------- crafted files


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bytes(tmp_path):
    return np.void(pickle.dumps(_Payload(tmp_path / "PWNED")))


def _edit_header(path, edit):
    """Edit the header in place, the arrays' streams and checksum untouched."""
    header, streams = _packed(path)
    edit(header)
    _pack(path, header, streams)


def _flip_bytes(path, part):
    """Invert 8 bytes a third into the payload's ``part`` ("header" or
    "arrays"), found in the file by the payload's content (a compact
    dataset lives in its object header)."""
    with h5py.File(path, "r") as f:
        data = f["payload"][()].tobytes()
    n = int.from_bytes(data[:4], "little")
    start, size = (4, n) if part == "header" else (4 + n, len(data) - 4 - n)
    raw = bytearray(path.read_bytes())
    offset = raw.find(data)
    assert offset > 0 and raw.find(data, offset + 1) < 0
    first = offset + start + size // 3
    for k in range(first, first + 8):
        raw[k] ^= 0xFF
    path.write_bytes(bytes(raw))


def _replace(name, value):
    def edit(f):
        del f[name]
        f[name] = value

    return edit


def _set_attr(name, value):
    def edit(f):
        f.attrs[name] = value

    return edit


def _delete(name):
    def edit(f):
        del f[name]

    return edit


def _huge_dataset(f):
    """A payload that declares 1 TiB and starts with its real header."""
    start = f["payload"][:4096]
    del f["payload"]
    f.create_dataset("payload", shape=(2**40,), dtype="u1", chunks=(2**16,))
    f["payload"][:4096] = start


def _set_rank(rank):
    def edit(header):
        header["field"]["rank"] = rank

    return edit


def _external_link(f):
    f["linked"] = h5py.ExternalLink("/etc/passwd", "/")


CORRUPTIONS = {
    "pickle dataset": (
        lambda tp: _set_ds("extra", _pickle_bytes(tp)),
        "unexpected dataset",
    ),
    "pickle root attribute": (
        lambda tp: _set_attr("payload", _pickle_bytes(tp)),
        "unexpected attribute",
    ),
    "pickle instead of the arrays": (
        lambda tp: _replace("payload", _pickle_bytes(tp)),
        "has dtype",
    ),
    "object payload": (lambda tp: _replace("payload", _vlen_pickle(tp)), "has dtype"),
    "group": (lambda tp: lambda f: f.create_group("extra"), "not a dataset"),
    "external link": (lambda tp: _external_link, "ExternalLink"),
    "payload too short for its header": (
        lambda tp: _replace("payload", np.zeros(3, np.uint8)),
        "has shape",
    ),
    "header longer than the payload": (
        lambda tp: _replace("payload", np.full(10, 255, np.uint8)),
        "declares a header of",
    ),
    "huge declared dataset": (lambda tp: _huge_dataset, "has shape"),
    "missing dataset": (lambda tp: _delete("payload"), "'payload' is missing"),
    "a header dataset beside": (
        lambda tp: _set_ds("header", np.zeros(4, np.uint8)),
        "unexpected dataset",
    ),
    "old format version": (lambda tp: _set_attr("format_version", 0), "old format"),
    "newer format version": (lambda tp: _set_attr("format_version", 99), "newer"),
    "text format version": (
        lambda tp: _set_attr("format_version", "1"),
        "not an integer",
    ),
    "not a model file": (
        lambda tp: _set_attr("format", "h5ebsd"),
        "not a kikuchipy-neural model",
    ),
    "format 4's precision attribute": (
        lambda tp: _set_attr("precision", "int8"),
        "unexpected attribute",
    ),
    "header not deflate": (
        lambda tp: _replace("payload", _payload_of(b"\xff\xff\xff\xff")),
        "not a deflate stream",
    ),
    "header not json": (
        lambda tp: _replace(
            "payload", _payload_of(array_codec.compress_header(b"\x80\x04K"))
        ),
        "not valid JSON",
    ),
}


def _payload_of(header_stream):
    """A format-5 payload holding ``header_stream`` and nothing else."""
    return np.frombuffer(
        len(header_stream).to_bytes(4, "little") + header_stream, np.uint8
    )


def _vlen_pickle(tmp_path):
    data = np.empty(1, dtype=h5py.vlen_dtype(np.uint8))
    data[0] = np.frombuffer(pickle.dumps(_Payload(tmp_path / "PWNED")), np.uint8)
    return data


def _set_ds(name, value):
    def edit(f):
        f[name] = value

    return edit


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_crafted_files_raise(saved, tmp_path, case):
    make, message = CORRUPTIONS[case]
    with h5py.File(saved, "r+") as f:
        make(tmp_path)(f)
    with pytest.raises(ModelFileError, match=message):
        load_model(saved)
    with pytest.raises(ModelFileError, match=message):
        file_summary(saved)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set_rank(10**9), "rank=1000000000, outside"),
        # Every size within its bound, their product beyond the parameters'.
        (
            lambda h: h["field"].update(width=2**16, layers=256),
            "more than the limit",
        ),
        (lambda h: h["field"].update(layers=10**6), "layers=1000000, outside"),
        (lambda h: h["field"].update(layers=True), "not an integer"),
        (lambda h: h["field"].update(first_omega_0=math.inf), "first_omega_0=inf"),
        # Another rank than the arrays': the bases' stream is longer than
        # the bases that rank has.
        (_set_rank(3), "declares a stream of"),
        (lambda h: h["geometry"].update(nx=2**40), "outside"),
        (lambda h: h["geometry"].update(pattern_shape=[40, 41]), "pattern shape"),
        (lambda h: h["field"].update(formulation="os.system"), "unknown formulation"),
        (lambda h: h["field"].update(width="512; import os"), "not an integer"),
        (lambda h: h.pop("history_bytes"), "has no 'history_bytes'"),
        (lambda h: h.update(history_bytes=2**40), "a history of"),
        (lambda h: h.update(precision="int3"), "unknown precision"),
        (lambda h: h.pop("package_version"), "has no 'package_version'"),
        (
            lambda h: h["detector"].update(pc_shape=[10**9, 3]),
            "invalid detector PC shape",
        ),
        # A consistent edit that only the checksum can catch.
        (lambda h: h.update(intensity_range=[0.0, 1.0]), "checksum mismatch"),
    ],
)
def test_crafted_headers_raise(saved, edit, message):
    _edit_header(saved, edit)
    with pytest.raises(ModelFileError, match=message):
        load_model(saved)


def _set_array(name, value):
    def edit(arrays):
        arrays[name] = value(arrays[name]) if callable(value) else value

    return edit


def _drop_array(name):
    return lambda arrays: arrays.pop(name)


# Arrays of another shape, dtype or set than the header's architecture
# implies, written by the model file's own writer (checksum and storage list
# consistent with them): only the reader's own checks can catch these.
ARRAY_CORRUPTIONS = {
    # Arrays are not named in a format-5 file: one more or one less than
    # the header implies is caught by the storage list's length.
    "missing bases": ("float32", _drop_array("bases"), "storage list has 4 entries"),
    "extra array": (
        "float32",
        _set_array("payload", np.zeros(4, np.uint8)),
        "storage list has 6 entries",
    ),
    "one basis more": (
        "float32",
        _set_array("bases", lambda b: np.concatenate([b, b[:1]])),
        "declares a stream of|decodes to more",
    ),
    "one basis less": ("float32", _set_array("bases", lambda b: b[:-1]), "decodes to"),
    "missing codes": ("int8", _drop_array("network_codes"), "storage list has"),
    "missing code steps": (
        "int8",
        _drop_array("network_codes_step"),
        "storage list has",
    ),
    "wrong code scale shape": (
        "int8",
        _set_array("network_codes_offset", np.zeros(3, "<f4")),
        "holds 12 bytes, but its shape and dtype need",
    ),
    "codes as float": (
        "int8",
        _set_array("network_codes", lambda c: c.astype("<f2")),
        "declares a stream of|decodes to more",
    ),
}


@pytest.mark.parametrize("case", sorted(ARRAY_CORRUPTIONS))
def test_crafted_arrays_raise(small_model, tmp_path, case):
    precision, edit, message = ARRAY_CORRUPTIONS[case]
    path = small_model.save(tmp_path / "model.h5", precision=precision)
    _rewrite(path, edit_arrays=edit)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def _storage_entry(index, value):
    """Edit storage entry ``index`` (arrays in name order: 0 is the bases)."""

    def edit(header):
        header["storage"][index] = value(header["storage"][index])

    return edit


STORAGE_CORRUPTIONS = {
    "unknown codec": (_storage_entry(0, lambda e: ["pickle", e[1]]), "unknown codec"),
    "stream longer than its array": (
        _storage_entry(0, lambda e: [e[0], 10**12]),
        "declares a stream of",
    ),
    "negative length": (
        _storage_entry(0, lambda e: [e[0], -1]),
        "declares a stream of",
    ),
    "length as text": (_storage_entry(0, lambda e: [e[0], "12"]), "invalid storage"),
    "entry as a dict": (
        _storage_entry(0, lambda e: {"codec": e[0], "bytes": e[1]}),
        "invalid storage",
    ),
    "no storage list": (lambda h: h.pop("storage"), "has no 'storage'"),
    "one entry more": (
        lambda h: h["storage"].append(list(h["storage"][0])),
        "storage list has",
    ),
    "one entry less": (lambda h: h["storage"].pop(), "storage list has"),
}


@pytest.mark.parametrize("case", sorted(STORAGE_CORRUPTIONS))
def test_crafted_storage_lists_raise(saved, case):
    edit, message = STORAGE_CORRUPTIONS[case]
    _edit_header(saved, edit)
    with pytest.raises(ModelFileError, match=message):
        load_model(saved)


def test_crafted_streams_cannot_exhaust_memory(saved):
    """A stream that would decode to far more than its array needs (an LZMA
    "bomb": 10 MB of zeros in a few kB) stops at the declared size."""
    header, payload = _packed(saved)
    arrays = _stored(saved)[1]
    names = sorted(arrays)
    target = names.index("network")
    nbytes = arrays["network"].nbytes
    bomb = array_codec.lzma.compress(
        bytes(10**7),
        format=array_codec.lzma.FORMAT_RAW,
        filters=array_codec._lzma_filters(nbytes, encode=True),
    )
    assert len(bomb) < nbytes
    streams, offset = [], 0
    for k, entry in enumerate(header["storage"]):
        stream = payload[offset : offset + entry[1]]
        offset += entry[1]
        if k == target:
            stream, header["storage"][k] = bomb, ["lzma", len(bomb)]
        streams.append(stream)
    _pack(saved, header, b"".join(streams))
    with pytest.raises(ModelFileError, match="decodes to more than"):
        load_model(saved)


def test_a_header_that_decodes_too_large_is_refused(saved):
    huge = array_codec.compress_header(b" " * (model_file._MAX_HEADER_BYTES + 1))
    with h5py.File(saved, "r+") as f:
        del f["payload"]
        f["payload"] = _payload_of(huge)
    with pytest.raises(ModelFileError, match="decodes to more than"):
        load_model(saved)


def test_a_history_that_is_not_json_is_refused(saved):
    _rewrite(
        saved,
        edit_arrays=_set_array("history", np.frombuffer(b"[1,", np.uint8)),
        edit_header=lambda h: h.update(history_bytes=3),
    )
    with pytest.raises(ModelFileError, match="history is not valid JSON"):
        load_model(saved)


def test_format_5_files_declare_no_tensor_layout(small_model, tmp_path):
    """The tensors' layout follows from the architecture and the
    precision; the int8 file's layout codes the hidden and last layers."""
    path = small_model.save(tmp_path / "model.h5", precision="int8")
    header, _ = _stored(path)
    assert "tensors" not in header and "history" not in header
    coded = [e["name"] for e in _layout(header) if e["dataset"] == "network_codes"]
    assert coded and all(name.endswith("weight") for name in coded)
    assert header["precision"] == "int8"


def _format_3_copy(tmp_path):
    path = tmp_path / "format3.h5"
    path.write_bytes((DATA / "model_format3_int8.h5").read_bytes())
    return path


def _edit_format_3_header(path, edit):
    """Format 3's header: plain JSON in a dataset of its own."""
    with h5py.File(path, "r+") as f:
        header = json.loads(f["header"][()].tobytes())
        edit(header)
        del f["header"]
        f["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)


def _shift_code_rows(header):
    entry = next(e for e in header["tensors"] if e["dataset"] == "network_codes")
    entry["row"] += 1


def test_declared_int8_code_layouts_are_checked(tmp_path):
    """Formats 1-4 declare the tensors' layout: a reader checks it."""
    path = _format_3_copy(tmp_path)
    _edit_format_3_header(path, _shift_code_rows)
    with pytest.raises(ModelFileError, match="expected 0 and 0"):
        load_model(path)
    path = _format_3_copy(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["precision"] = np.bytes_(b"float16")
    with pytest.raises(ModelFileError, match="only 2D tensors of int8 files"):
        load_model(path)
    path = _format_3_copy(tmp_path)
    _edit_format_3_header(path, lambda h: h.pop("tensors"))
    with pytest.raises(ModelFileError, match="has no 'tensors'"):
        load_model(path)


def test_a_float16_header_on_int8_arrays_is_refused(small_model, tmp_path):
    path = small_model.save(tmp_path / "model.h5", precision="int8")
    _edit_header(path, lambda h: h.update(precision="float16"))
    with pytest.raises(ModelFileError, match="storage list has|checksum"):
        load_model(path)


@pytest.mark.parametrize("precision", ["float32", "int8"])
@pytest.mark.parametrize("part", ["arrays", "header"])
def test_flipped_bytes_are_detected(small_model, tmp_path, precision, part):
    path = small_model.save(tmp_path / "model.h5", precision=precision)
    _flip_bytes(path, part)
    # Caught by HDF5 (a compact dataset's object header has a checksum), by
    # the LZMA decoder, or by the file's SHA-256: whichever comes first.
    with pytest.raises((ValueError, OSError), match="checksum|corrupted"):
        load_model(path)


def test_files_that_are_not_models(tmp_path, small_map):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(OSError, match="not a readable HDF5 file"):
        load_model(junk)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing.h5")
    small_map.save(tmp_path / "scan.h5")
    with pytest.raises(ModelFileError, match="not a kikuchipy-neural model file"):
        load_model(tmp_path / "scan.h5")
    # A checkpoint given where a model file is expected says so.
    ckpt = str(tmp_path / "fit.ckpt")
    small_map.deepcopy().fit_neural(max_steps=3, checkpoint=ckpt, **FAST_FIT)
    with pytest.raises(OSError, match="training checkpoint, not a model file"):
        load_model(tmp_path / "fit.ckpt")


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_checksum_covers_every_dataset(small_model, precision):
    arrays, _ = model_file._encode(small_model, precision)
    digest = model_file._checksum(arrays)
    for name in arrays:
        changed = dict(arrays)
        changed[name] = arrays[name].copy()
        changed[name].reshape(-1).view(np.uint8)[0] ^= 1
        assert model_file._checksum(changed) != digest, name


# --------------------------------------------------------------------- info


def test_file_summary_sizes(small_model, saved):
    s = file_summary(saved)
    # 12 x 12 points of 40 x 40 uint16 patterns.
    assert s["raw_bytes"] == 12 * 12 * 40 * 40 * 2
    assert s["file_bytes"] == saved.stat().st_size
    assert s["compression_ratio"] == pytest.approx(s["raw_bytes"] / s["file_bytes"])
    assert s["rank"] == small_model.rank
    assert s["n_network_parameters"] + s["n_basis_values"] == small_model.n_parameters
    assert s["array_bytes"]["bases"] == small_model.rank * 40 * 40 * 4
    # The payload: the header's stream after its 4-byte length, then the arrays'.
    with h5py.File(saved) as f:
        payload = f["payload"].size
    assert payload == 4 + s["header_stored_bytes"] + sum(s["stored_bytes"].values())
    s8 = file_summary(small_model.save(saved.with_name("int8.h5"), precision="int8"))
    assert s8["n_network_parameters"] == s["n_network_parameters"]
    assert s8["array_bytes"]["bases"] == small_model.rank * 40 * 40
