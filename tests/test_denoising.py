"""Denoising measured patterns with the field as the prior (known truth)."""

from __future__ import annotations

import numpy as np
import pytest

from kikuchipy_neural.analysis.denoising import denoise


def _pca_projection(data: np.ndarray, rank: int) -> np.ndarray:
    flat = data.reshape(len(data), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    v = vt[: rank - 1]
    return mean + ((flat - mean) @ v.T) @ v


def test_beats_the_field_pca_and_the_measured_patterns(small_map, small_model):
    s = small_map.deepcopy()
    s.neural_model = small_model
    truth = small_map.truth.clean.reshape(144, -1).astype(np.float64)
    measured = np.asarray(small_map.data, np.float64).reshape(144, -1)
    denoised = s.neural_denoise()
    assert denoised.data.dtype == np.float32
    assert denoised.data.shape == small_map.data.shape
    assert denoised.detector.pc.shape == small_map.detector.pc.shape

    def error(x):
        return np.abs(np.asarray(x, np.float64).reshape(144, -1) - truth).mean()

    field = error(s.neural_reconstruct().data)
    pca = error(_pca_projection(measured, small_model.rank))
    ours = error(denoised.data)
    assert ours < pca and ours < error(measured) / 3
    assert ours <= 1.05 * field


def test_shrinkage_limits(small_map, small_model):
    """No noise: the prior plus the whole in-span residual; overwhelming
    noise: the prior itself."""
    xy = small_model.geometry.grid_xy().reshape(-1, 2)[:20]
    measured = np.asarray(small_map.data).reshape(144, 40, 40)[:20]
    prior = small_model.query(xy).reshape(20, -1).astype(np.float64)
    bases = small_model.field.bases[1:].detach().double().numpy()
    q, _ = np.linalg.qr(bases.T)
    residual = measured.reshape(20, -1) - prior
    projected = prior + (residual @ q) @ q.T
    exact = denoise(small_model, measured, xy, noise_variance=0.0)
    np.testing.assert_allclose(exact.reshape(20, -1), projected, atol=0.05)
    smooth = denoise(small_model, measured, xy, noise_variance=1e12)
    np.testing.assert_allclose(smooth.reshape(20, -1), prior, atol=0.05)


def test_lazy_equals_eager(small_map, small_model):
    s = small_map.deepcopy()
    s.neural_model = small_model
    eager = s.neural_denoise()
    lazy = s.neural_denoise(lazy=True)
    assert lazy._lazy
    np.testing.assert_array_equal(np.asarray(lazy.data.compute()), eager.data)
    s_lazy = s.as_lazy()
    s_lazy.neural_model = small_model
    np.testing.assert_array_equal(
        np.asarray(s_lazy.neural_denoise().data.compute()), eager.data
    )


def test_errors(small_map, small_model):
    xy = small_model.geometry.grid_xy().reshape(-1, 2)[:3]
    with pytest.raises(ValueError, match="do not describe the same"):
        denoise(small_model, np.zeros((2, 40, 40)), xy)
    with pytest.raises(ValueError, match="noise_variance must be"):
        denoise(small_model, np.zeros((3, 40, 40)), xy, noise_variance=-1.0)

    class Joint:
        rank = None

    with pytest.raises(ValueError, match="factorized"):
        denoise(Joint(), np.zeros((3, 40, 40)), xy)
