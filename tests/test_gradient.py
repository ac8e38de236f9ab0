"""The diffraction gradient: autograd against closed forms, chain rule to
calibrated units, lazy/eager agreement and the Signal2D wrapper."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
from torch import nn

from kikuchipy_neural.analysis.gradient import (
    evaluate_gradient,
    gradient_signal,
    spatial_jacobian,
    structure_tensor,
    tensor_to_normal,
)
from kikuchipy_neural.fields import FactorizedField
from kikuchipy_neural.fields.base import NeuralField
from kikuchipy_neural.geometry import ScanGeometry
from kikuchipy_neural.model import NeuralEBSDModel


class ClosedFormField(NeuralField):
    """A field whose descriptor has a Jacobian known in closed form:
    ``(sin(a x + b y), x^2 y, c x)`` in network coordinates."""

    formulation = "closed_form"

    def __init__(self, a=3.0, b=-2.0, c=0.5):
        super().__init__((2, 2))
        self.a, self.b, self.c = a, b, c
        self.dummy = nn.Parameter(torch.zeros(()))  # a device for the model

    def descriptor(self, xy):
        x, y = xy[:, 0], xy[:, 1]
        return torch.stack(
            [torch.sin(self.a * x + self.b * y), x**2 * y, self.c * x], dim=1
        )

    def jacobian(self, xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        phase = np.cos(self.a * x + self.b * y)
        return np.stack(
            [
                np.stack([self.a * phase, self.b * phase], -1),
                np.stack([2 * x * y, x**2], -1),
                np.stack([np.full_like(x, self.c), np.zeros_like(x)], -1),
            ],
            axis=1,
        )

    def pattern_values(self, xy, pixels=None):
        raise NotImplementedError  # not needed for gradients

    def values_at(self, xy, pixels):
        raise NotImplementedError

    @property
    def config(self):
        return {"formulation": self.formulation}


def _geometry(**kw) -> ScanGeometry:
    values = dict(
        nx=9, ny=6, x0=-3.0, y0=10.0, dx=0.25, dy=0.25, units="um", pattern_shape=(8, 8)
    )
    values.update(kw)
    return ScanGeometry(**values)


def _model(field, **kw) -> NeuralEBSDModel:
    return NeuralEBSDModel(field, _geometry(**kw), (0.0, 1.0))


def test_spatial_jacobian_matches_closed_form(rng):
    field = ClosedFormField()
    xy = rng.uniform(-1, 1, (50, 2)).astype(np.float32)
    jac = spatial_jacobian(field, torch.from_numpy(xy)).numpy()
    assert jac.shape == (50, 3, 2)
    np.testing.assert_allclose(jac, field.jacobian(xy.astype(np.float64)), atol=1e-5)


def test_spatial_jacobian_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        spatial_jacobian(ClosedFormField(), torch.zeros(4, 3))


def test_model_gradient_chain_rule_to_calibrated_units(rng):
    """S in calibrated units = S in network units / half the longer extent."""
    field = ClosedFormField()
    model = _model(field)
    g = model.geometry
    xy = np.stack(
        [rng.uniform(*g.x_range, 40), rng.uniform(*g.y_range, 40)], axis=-1
    ).reshape(5, 8, 2)
    net = g.normalize(xy.reshape(-1, 2)).astype(np.float64)
    expected_jac = field.jacobian(net) * g.normalized_per_unit
    # Longer side: x spans 8 * 0.25 = 2 um -> network units per um = 1.
    assert g.normalized_per_unit == pytest.approx(1.0)
    jac = model.gradient(xy, per_component=True)
    assert jac.shape == (5, 8, 3, 2)
    np.testing.assert_allclose(jac.reshape(-1, 3, 2), expected_jac, atol=1e-5)
    s = model.gradient(xy)
    expected = np.sqrt((expected_jac**2).sum(axis=(1, 2)))
    np.testing.assert_allclose(s.ravel(), expected, rtol=1e-5, atol=1e-6)


def test_gradient_scales_inversely_with_step():
    """The same field on a scan with a 4x larger step has a 4x smaller S."""
    field = ClosedFormField()
    small, large = _model(field), _model(field, dx=1.0, dy=1.0, x0=0.0, y0=0.0)
    xy_small = small.geometry.grid_xy(2)
    xy_large = large.geometry.grid_xy(2)
    np.testing.assert_allclose(
        small.gradient(xy_small), 4 * large.gradient(xy_large), rtol=1e-5
    )


def test_factorized_gradient_closed_form(rng):
    """A one-layer SIREN has Jacobian W2 diag(w cos(w (W1 x + b1))) W1;
    S of the model is its Frobenius norm times the bases' norms."""
    torch.manual_seed(0)
    field = FactorizedField(4, (8, 8), width=16, layers=1, first_omega_0=3.0)
    with torch.no_grad():
        field.bases.copy_(torch.randn(4, 64))
    model = NeuralEBSDModel(field, _geometry(pattern_shape=(8, 8)), (0.0, 1.0))
    xy = model.geometry.grid_xy(1.5)
    net = model.geometry.normalize(xy.reshape(-1, 2)).astype(np.float64)
    lin1 = field.siren.net[0].linear
    w1 = lin1.weight.detach().double().numpy()
    b1 = lin1.bias.detach().double().numpy()
    w2 = field.siren.last.weight.detach().double().numpy()
    omega = field.siren.net[0].omega_0
    norms = field.bases[1:].detach().double().norm(dim=1).numpy()
    cos = np.cos(omega * (net @ w1.T + b1))  # (n, width)
    jac = np.einsum("rk,nk,kj->nrj", w2, omega * cos, w1)
    jac *= norms[None, :, None] * model.geometry.normalized_per_unit
    expected = np.sqrt((jac**2).sum(axis=(1, 2))).reshape(xy.shape[:-1])
    np.testing.assert_allclose(model.gradient(xy), expected, rtol=1e-4)
    per = model.gradient(xy, per_component=True)
    np.testing.assert_allclose(per.reshape(-1, 3, 2), jac, rtol=1e-4, atol=1e-6)


def test_factorized_gradient_ignores_scale_split():
    """Moving a factor between a basis and its coefficient leaves S unchanged."""
    torch.manual_seed(1)
    field = FactorizedField(3, (8, 8), width=16, layers=2)
    with torch.no_grad():
        field.bases.copy_(torch.randn(3, 64))
    model = NeuralEBSDModel(field, _geometry(pattern_shape=(8, 8)), (0.0, 1.0))
    xy = model.geometry.grid_xy(1)
    before = model.gradient(xy)
    patterns = model.query(xy)
    with torch.no_grad():
        field.bases[1] *= 5.0
        field.siren.last.weight[0] /= 5.0
        field.siren.last.bias[0] /= 5.0
    np.testing.assert_allclose(model.query(xy), patterns, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.gradient(xy), before, rtol=1e-4)


def test_structure_tensor_normal_of_a_plane_wave():
    """A descriptor that varies along one direction only: the normal is that
    direction, the coherence 1, S the closed-form slope."""
    phi = np.deg2rad(30.0)
    direction = np.array([np.cos(phi), np.sin(phi)])
    slopes = np.array([2.0, -1.0, 0.5])
    jac = slopes[None, :, None] * direction[None, None, :]
    jac = np.repeat(jac, 4, axis=0)
    s, normal, coherence = tensor_to_normal(structure_tensor(jac))
    np.testing.assert_allclose(s, np.linalg.norm(slopes), rtol=1e-6)
    np.testing.assert_allclose(np.abs(normal @ direction), 1.0, atol=1e-6)
    np.testing.assert_allclose(coherence, 1.0, atol=1e-6)
    # Isotropic change: coherence 0.
    iso = np.stack([np.eye(2)] * 3)[None]
    assert tensor_to_normal(structure_tensor(iso))[2][0] == pytest.approx(0.0, abs=1e-6)


def test_evaluate_gradient_lazy_equals_eager():
    model = _model(ClosedFormField())
    xy = model.geometry.grid_xy(3)
    for kind in ("norm", "jacobian", "tensor"):
        eager = evaluate_gradient(model, xy, kind)
        lazy = evaluate_gradient(model, xy, kind, lazy=True)
        assert isinstance(lazy, da.Array)
        assert lazy.shape == eager.shape
        np.testing.assert_allclose(lazy.compute(), eager, rtol=1e-6)


def test_evaluate_gradient_bounded_chunks(monkeypatch):
    """A lazy evaluation is split into chunks of bounded size."""
    from kikuchipy_neural.analysis import gradient as gradient_module

    monkeypatch.setattr(gradient_module, "_POINTS_PER_BLOCK", 100)
    model = _model(ClosedFormField())
    xy = model.geometry.grid_xy(10)  # 51 x 81 points
    lazy = evaluate_gradient(model, xy, lazy=True)
    assert max(np.prod(c) for c in _block_shapes(lazy)) <= 100
    np.testing.assert_allclose(lazy.compute(), model.gradient(xy), rtol=1e-6)


def _block_shapes(array):
    import itertools

    return [tuple(s) for s in itertools.product(*array.chunks)]


def test_evaluate_gradient_errors():
    model = _model(ClosedFormField())
    with pytest.raises(ValueError, match="outside the scanned area"):
        evaluate_gradient(model, np.array([[100.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_gradient(model, np.array([[np.nan, 10.0]]))
    with pytest.raises(ValueError, match="kind"):
        evaluate_gradient(model, np.array([[-3.0, 10.0]]), kind="hessian")
    # Outside is fine when asked for.
    assert np.isfinite(
        evaluate_gradient(model, np.array([[100.0, 0.0]]), extrapolate=True)
    ).all()


@pytest.mark.parametrize("factor", [1, 2.5, 4])
def test_gradient_signal_axes(factor):
    model = _model(ClosedFormField())
    g = model.geometry
    signal = gradient_signal(model, factor)
    ny, nx = g.fine_shape(factor)
    assert signal.data.shape == (ny, nx)
    ax_x, ax_y = signal.axes_manager.signal_axes
    assert (ax_x.name, ax_y.name) == ("x", "y")
    assert ax_x.scale == pytest.approx(g.dx / factor)
    assert ax_y.scale == pytest.approx(g.dy / factor)
    assert (ax_x.offset, ax_y.offset) == (g.x0, g.y0)
    assert ax_x.units == ax_y.units == "um"
    # Values at the axes' coordinates are the model's S there.
    xy = np.stack(np.meshgrid(ax_x.axis, ax_y.axis), axis=-1)
    np.testing.assert_allclose(signal.data, model.gradient(xy), rtol=1e-6)
    lazy = gradient_signal(model, factor, lazy=True)
    assert lazy._lazy
    np.testing.assert_allclose(lazy.data.compute(), signal.data, rtol=1e-6)


def test_gradient_signal_rejects_bad_factor():
    model = _model(ClosedFormField())
    for bad in (0, -1, np.nan):
        with pytest.raises(ValueError, match="factor"):
            gradient_signal(model, bad)


# ----------------------------------------------------------- signal method


def test_diffraction_gradient_method(fitted_map):
    s_map = fitted_map.diffraction_gradient(factor=2)
    model = fitted_map.neural_model
    ny, nx = model.geometry.fine_shape(2)
    assert s_map.data.shape == (ny, nx)
    assert s_map.axes_manager.signal_axes[0].scale == pytest.approx(
        fitted_map.axes_manager["x"].scale / 2
    )
    np.testing.assert_allclose(
        s_map.data, model.gradient(model.geometry.grid_xy(2)), rtol=1e-6
    )
    lazy = fitted_map.diffraction_gradient(factor=2, lazy=True)
    assert lazy._lazy
    np.testing.assert_allclose(lazy.data.compute(), s_map.data, rtol=1e-6)


def test_diffraction_gradient_needs_model(small_map):
    s = small_map.deepcopy()
    with pytest.raises(RuntimeError, match="fit_neural"):
        s.diffraction_gradient()
    s.neural_model = None
    with pytest.raises(RuntimeError, match="load_model"):
        s.diffraction_gradient()


def test_diffraction_gradient_bad_factor(fitted_map):
    for bad in (0, -2, np.inf):
        with pytest.raises(ValueError, match="factor"):
            fitted_map.diffraction_gradient(factor=bad)
    with pytest.raises(TypeError, match="factor"):
        fitted_map.diffraction_gradient(factor="2")
