"""Band masks of the paper's weighted loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kikuchipy_neural.training.losses import _kth_largest, band_mask


def _band_mask_2d(patterns: torch.Tensor, shape, top_fraction=0.15) -> torch.Tensor:
    """The same filters as 2D convolutions (the former implementation)."""
    n = patterns.shape[0]
    binomial = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    im = patterns.reshape(n, 1, *shape).float()
    im = F.conv2d(
        F.pad(im, (2, 2, 2, 2), mode="replicate"),
        torch.outer(binomial, binomial)[None, None],
    )
    padded = F.pad(im, (1, 1, 1, 1), mode="replicate")
    magnitude = (
        F.conv2d(padded, sobel[None, None]) ** 2
        + F.conv2d(padded, sobel.T[None, None]) ** 2
    )
    magnitude = magnitude.reshape(n, -1)
    k = max(1, int(round(top_fraction * magnitude.shape[1])))
    return magnitude >= magnitude.topk(k, dim=1).values[:, -1:]  # fmt: skip


def test_band_mask_equals_the_2d_convolutions(small_map):
    import kikuchipy as kp

    real = kp.data.nickel_ebsd_small().data  # real Ni patterns, uint8 60 x 60
    simulated = small_map.data  # uint16 40 x 40, up to 52 548 counts
    for data, exact in [(real, True), (simulated // 4, True), (simulated, False)]:
        shape = data.shape[-2:]
        patterns = torch.from_numpy(data.reshape(-1, shape[0] * shape[1]))
        mask = band_mask(patterns, shape, 0.15)
        reference = _band_mask_2d(patterns, shape, 0.15)
        if exact:
            # Below 2^14 counts every sum is exact in float32: bit for bit.
            assert data.max() < 2**14
            assert torch.equal(mask, reference)
        else:
            # Above, only ties at the threshold may round either way.
            assert (mask != reference).float().mean() < 1e-4
        assert mask.sum(dim=1).min() >= round(0.15 * shape[0] * shape[1])


def test_band_mask_marks_the_edges_of_a_band():
    # One bright vertical band, columns 20-29 of a 40 x 40 pattern: the
    # strongest gradients lie on its two edges (between columns 19|20 and
    # 29|30), smeared by the 5 x 5 blur over at most 3 columns each side.
    pattern = np.full((40, 40), 100.0, np.float32)
    pattern[:, 20:30] = 1000.0
    mask = band_mask(torch.from_numpy(pattern.reshape(1, -1)), (40, 40), 0.15)
    columns = np.flatnonzero(mask.reshape(40, 40).any(dim=0).numpy())
    assert set(columns) <= set(range(17, 23)) | set(range(27, 33))
    assert {19, 20, 29, 30} <= set(columns)
    assert band_mask(torch.zeros(0, 1600), (40, 40)).shape == (0, 1600)


def test_kth_largest_both_ways_equals_topk():
    # Few distinct values: many ties at the k-th largest.
    values = torch.from_numpy(
        np.random.default_rng(0).integers(0, 20, (64, 300)).astype(np.float32)
    )
    for k in (1, 7, 45, 300):
        expected = values.topk(k, dim=1).values[:, -1:]
        for use_numpy in (True, False):  # CPU tensors / other devices
            assert torch.equal(_kth_largest(values, k, use_numpy), expected)


def _assert_loss_equals_formula(loss_fn, formula, rng) -> None:
    """Value and all three gradients of ``loss_fn`` equal autograd through
    ``formula(prediction, target, weight)``, for full and broadcast weights."""
    for weight_shape in ((50, 70), (1, 70)):  # full, and broadcast as scores
        ours = [
            torch.from_numpy(rng.random(shape, np.float32)).requires_grad_()
            for shape in ((50, 70), (50, 70), weight_shape)
        ]
        plain = [t.detach().clone().requires_grad_() for t in ours]
        loss = loss_fn(*ours)
        expected = formula(*plain)
        loss.backward()
        expected.backward()
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
        for a, b in zip(ours, plain, strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-12)


def test_weighted_mse_value_and_gradients_equal_the_formula():
    from kikuchipy_neural.training.losses import weighted_mse

    rng = np.random.default_rng(1)
    _assert_loss_equals_formula(
        weighted_mse, lambda p, t, w: (w * (p - t) ** 2).mean(), rng
    )
    # Only the prediction's gradient, as in training.
    target = torch.rand(50, 70)
    prediction = torch.rand(50, 70, requires_grad=True)
    weighted_mse(prediction, target, torch.ones(50, 70)).backward()
    torch.testing.assert_close(
        prediction.grad, 2 * (prediction - target).detach() / 3500
    )
    with torch.no_grad():  # evaluation without autograd works too
        assert float(weighted_mse(target, target, torch.ones(1, 70))) == 0.0
    # Training's case (equal shapes, only the prediction's gradient): the
    # difference made a block of rows at a time, here blocks of 7 of 50.
    import kikuchipy_neural.training.losses as losses

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(losses, "_BLOCK_VALUES", 7 * 70)
        weight = torch.from_numpy(rng.random((50, 70), np.float32))
        prediction.grad = None
        loss = weighted_mse(prediction, target, weight)
        loss.backward()
    expected = (weight * (prediction - target) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        prediction.grad, 2 * weight * (prediction - target).detach() / 3500
    )
    # The saved array becomes the gradient: a second backward through the
    # same graph raises instead of computing from the modified array.
    loss = weighted_mse(prediction, target, torch.ones(50, 70))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_weighted_mae_value_and_gradients_equal_the_formula():
    import kikuchipy_neural.training.losses as losses
    from kikuchipy_neural.training.losses import weighted_mae

    rng = np.random.default_rng(2)
    _assert_loss_equals_formula(
        weighted_mae, lambda p, t, w: (w * (p - t).abs()).mean(), rng
    )
    # Training's case, the difference made in blocks of 7 rows of 50; at a
    # zero difference the gradient is 0.
    target = torch.rand(50, 70)
    prediction = torch.rand(50, 70)
    prediction[3, :10] = target[3, :10]
    prediction.requires_grad_()
    weight = torch.from_numpy(rng.random((50, 70), np.float32))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(losses, "_BLOCK_VALUES", 7 * 70)
        loss = weighted_mae(prediction, target, weight)
        loss.backward()
    diff = (prediction - target).detach()
    torch.testing.assert_close(loss, (weight * diff.abs()).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(prediction.grad, weight * diff.sign() / 3500)
    assert torch.all(prediction.grad[3, :10] == 0)
    with torch.no_grad():
        assert float(weighted_mae(target, target, torch.ones(1, 70))) == 0.0


def test_every_loss_option_has_its_function():
    from kikuchipy_neural.training.losses import LOSS_FUNCTIONS
    from kikuchipy_neural.training.options import LOSSES

    assert set(LOSS_FUNCTIONS) == set(LOSSES)
