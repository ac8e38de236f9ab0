"""NeuralEBSD registration and the survival of kikuchipy's attributes."""

from __future__ import annotations

import subprocess
import sys

import hyperspy.api as hs
import kikuchipy as kp
import numpy as np
import pytest
from conftest import CALVAT_FIXTURE

from kikuchipy_neural.signals import LazyNeuralEBSD, NeuralEBSD


def _neural_nickel(lazy: bool = False):
    s = kp.data.nickel_ebsd_small(lazy=lazy)
    s.set_signal_type("NeuralEBSD")
    return s


def _assert_same_attributes(a, b):
    np.testing.assert_allclose(a.detector.pc, b.detector.pc)
    assert a.detector.sample_tilt == b.detector.sample_tilt
    assert a.xmap is not None
    np.testing.assert_allclose(a.xmap.rotations.data, b.xmap.rotations.data, atol=1e-12)


def test_registration_without_importing_the_package():
    # HyperSpy must find the signal type through the entry point alone, and
    # resolving it must not import torch.
    code = (
        "import sys, hyperspy.api as hs, kikuchipy as kp\n"
        "assert 'kikuchipy_neural' not in sys.modules\n"
        "from hyperspy.extensions import ALL_EXTENSIONS\n"
        "assert 'NeuralEBSD' in ALL_EXTENSIONS['signals']\n"
        "s = kp.data.nickel_ebsd_small()\n"
        "s.set_signal_type('NeuralEBSD')\n"
        "l = kp.data.nickel_ebsd_small(lazy=True)\n"
        "l.set_signal_type('NeuralEBSD')\n"
        "print(type(s).__name__, type(l).__name__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-3:] == ["NeuralEBSD", "LazyNeuralEBSD", "False"]


def test_set_signal_type_keeps_data_axes_metadata_detector_xmap():
    ref = kp.data.nickel_ebsd_small()
    s = ref.deepcopy()
    s.set_signal_type("NeuralEBSD")
    assert type(s) is NeuralEBSD and isinstance(s, kp.signals.EBSD)
    np.testing.assert_array_equal(s.data, ref.data)
    assert (
        s.axes_manager.navigation_axes[0].scale
        == ref.axes_manager.navigation_axes[0].scale
    )
    assert s.metadata.General.title == ref.metadata.General.title
    assert s.metadata.Signal.signal_type == "NeuralEBSD"
    _assert_same_attributes(s, ref)
    np.testing.assert_array_equal(s.static_background, ref.static_background)
    # Back to EBSD keeps them too.
    s.set_signal_type("EBSD")
    assert type(s) is kp.signals.EBSD
    _assert_same_attributes(s, ref)


def test_lazy_set_signal_type():
    ref = kp.data.nickel_ebsd_small()
    s = _neural_nickel(lazy=True)
    assert type(s) is LazyNeuralEBSD
    _assert_same_attributes(s, ref)
    s.compute()
    assert type(s) is NeuralEBSD
    _assert_same_attributes(s, ref)


def _apply(operation: str, s):
    if operation == "as_lazy":
        return s.as_lazy()
    if operation == "compute":
        out = s.as_lazy()
        out.compute()
        return out
    if operation == "deepcopy":
        return s.deepcopy()
    if operation == "change_dtype":
        out = s.deepcopy()
        out.change_dtype("float32")
        return out
    if operation == "map":
        return s.map(lambda x: x * 2, inplace=False, show_progressbar=False)
    if operation == "rebin":
        return s.rebin(scale=(1, 1, 2, 2))
    if operation == "inav":
        return s.inav[1:, :2]
    return s.isig[:30, :30]


@pytest.mark.parametrize(
    "operation",
    ["as_lazy", "compute", "deepcopy", "change_dtype", "map", "rebin", "inav", "isig"],
)
def test_attributes_survive_operations(operation):
    # Whatever kikuchipy's EBSD does to its attributes (cropping the detector
    # with isig, slicing PCs and the crystal map with inav), NeuralEBSD does too.
    expected = _apply(operation, kp.data.nickel_ebsd_small())
    if operation == "map":
        # EBSD.map resets the detector; NeuralEBSD keeps the original one.
        expected = kp.data.nickel_ebsd_small()
    out = _apply(operation, _neural_nickel())
    assert isinstance(out, NeuralEBSD)
    assert out._lazy == expected._lazy
    assert out.data.shape == expected.data.shape
    np.testing.assert_allclose(out.detector.pc, expected.detector.pc)
    assert out.detector.shape == expected.detector.shape
    assert out.xmap is not None
    np.testing.assert_allclose(
        out.xmap.rotations.data, expected.xmap.rotations.data, atol=1e-12
    )
    if expected.static_background is not None:
        np.testing.assert_array_equal(
            np.asarray(out.static_background), np.asarray(expected.static_background)
        )


def test_kikuchipy_methods_work_on_neural_signal():
    s = _neural_nickel()
    s.change_dtype("float32")
    s.remove_static_background(show_progressbar=False)
    s.remove_dynamic_background(show_progressbar=False)
    assert np.isfinite(s.data).all()
    vbse = s.get_virtual_bse_intensity(roi=hs.roi.RectangularROI(0, 0, 10, 10))
    assert vbse.data.shape == (3, 3)


def test_h5ebsd_and_hspy_round_trips(tmp_path):
    # Documented in README: kikuchipy's h5ebsd reader returns a plain EBSD
    # with the detector; HyperSpy's .hspy keeps the class, not the detector.
    s = _neural_nickel()
    s.save(tmp_path / "scan.h5")
    back = kp.load(tmp_path / "scan.h5")
    assert type(back) is kp.signals.EBSD
    np.testing.assert_array_equal(back.data, s.data)
    np.testing.assert_allclose(back.detector.pc, s.detector.pc, atol=1e-6)
    back.set_signal_type("NeuralEBSD")
    assert type(back) is NeuralEBSD

    s.save(tmp_path / "scan.hspy")
    back = hs.load(tmp_path / "scan.hspy")
    assert type(back) is NeuralEBSD
    np.testing.assert_array_equal(back.data, s.data)


def test_methods_without_model_name_fit_neural():
    s = _neural_nickel()
    assert s.neural_model is None
    for method in (s.neural_reconstruct, s.neural_denoise):
        with pytest.raises(RuntimeError, match="fit_neural"):
            method()


def _same_model(a, b) -> bool:
    pa, pb = a.field.state_dict(), b.field.state_dict()
    return pa.keys() == pb.keys() and all(
        np.array_equal(pa[k].numpy(), pb[k].numpy()) for k in pa
    )


def test_model_is_carried_and_checked(fitted_map, small_model):
    # Models are custom attributes: kikuchipy deep-copies them with the signal.
    assert _same_model(fitted_map.deepcopy().neural_model, small_model)
    assert _same_model(fitted_map.inav[2:5, 1:4].neural_model, small_model)
    plain = fitted_map.deepcopy()
    plain.set_signal_type("EBSD")
    assert not hasattr(plain, "neural_model")
    with pytest.raises(ValueError, match="patterns of shape"):
        fitted_map.isig[:20, :20].neural_model = small_model
    with pytest.raises(TypeError, match="must be a NeuralEBSDModel"):
        fitted_map.deepcopy().neural_model = "model.h5"


def test_real_nickel_scan_converts():
    s = kp.data.nickel_ebsd_small()
    s.set_signal_type("NeuralEBSD")
    assert s.data.shape == (3, 3, 60, 60)


@pytest.mark.skipif(not CALVAT_FIXTURE.exists(), reason=f"missing {CALVAT_FIXTURE}")
def test_real_superalloy_fixture_converts():
    s = kp.load(CALVAT_FIXTURE, lazy=True)
    s.set_signal_type("NeuralEBSD")
    assert type(s) is LazyNeuralEBSD
    assert s.data.shape == (40, 40, 60, 60)
    assert s.data.dtype == np.uint8
