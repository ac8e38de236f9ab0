"""A factorized field rewritten in its principal axes, for compact int8 files.

A factorized pattern is ``B_0 + sum_k a_k(x, y) B_k``, and the coefficients
``a = W h + b`` come out of the SIREN's last, linear layer. Any affine change
of the coefficients, ``a' = T (a - mu)``, undone in the bases, ``B_0' = B_0 +
mu @ B``, ``B' = T^-T B``, and absorbed into that layer (``W' = T W``, ``b' =
T (b - mu)``), leaves every pattern as it was. Training does not pick the
change that stores best: its bases are correlated, their coefficients share
energy, and ``B_0`` is no mean pattern. Rewritten in the principal axes of
the field's own patterns over the scan (coefficients centred and
decorrelated with unit variance, bases orthogonal and ordered by energy),
``B_0`` becomes the field's mean pattern, smooth where a trained basis is
not, and the high-order bases carry little energy, so that balanced 8-bit
steps (:func:`~kikuchipy_neural.io.model_file._balanced_basis_steps`) give
them few distinct codes: PCA's form, at the field's own rank. Measured on the
real 200 x 200 crop of ``benchmarks/compression.py`` (balanced int8 files,
same models): rank 3 20,482 -> 18,453 bytes and rank 4 24,444 -> 22,939 at
the same MAE within 0.3 counts.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["coefficient_moments", "principal_axes_state"]

# Scan points whose coefficients give the moments (evenly spread over the
# scan): enough for stable moments, bounded time on any map.
_MOMENT_POINTS = 65_536
# Below this ratio of smallest to largest coefficient variance the
# whitening would amplify float rounding: such a field stays as it is.
_MIN_VARIANCE_RATIO = 1e-10

_LAST_WEIGHT = "siren.last.weight"
_LAST_BIAS = "siren.last.bias"


@torch.no_grad()
def coefficient_moments(model) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(R - 1,)`` and covariance ``(R - 1, R - 1)`` (float64) of a
    factorized model's coefficients ``a_k(x, y)`` (the constant 1 of the
    mean pattern left out) over the scan's points, up to
    :data:`_MOMENT_POINTS` of them, evenly spread."""
    from kikuchipy_neural.training.refit_bases import _coefficients

    n_points = model.geometry.n_points
    n = min(n_points, _MOMENT_POINTS)
    index = np.unique(np.linspace(0, n_points - 1, n).round().astype(np.int64))
    rank = model.field.rank
    sums = torch.zeros(rank - 1, dtype=torch.float64)
    products = torch.zeros(rank - 1, rank - 1, dtype=torch.float64)
    shift = None  # the first chunk's mean: sums about it lose no digits
    for start in range(0, len(index), 8192):
        a = _coefficients(model, index[start : start + 8192])[:, 1:].double().cpu()
        if shift is None:
            shift = a.mean(dim=0)
        a = a - shift
        sums += a.sum(dim=0)
        products += a.T @ a
    centred_mean = sums / len(index)
    cov = products / len(index) - torch.outer(centred_mean, centred_mean)
    return (shift + centred_mean).numpy(), ((cov + cov.T) / 2).numpy()


def principal_axes_state(
    state: dict[str, torch.Tensor], mean: np.ndarray, cov: np.ndarray
) -> dict[str, torch.Tensor] | None:
    """A factorized field's ``state`` (as ``state_dict()``) rewritten in its
    principal axes, the same patterns; ``None`` when the coefficients'
    covariance is (nearly) singular, as when one of them is constant, or not
    finite.

    Parameters
    ----------
    state
        The field's parameters; left unchanged (new tensors are returned for
        the bases and the last layer, the others are shared).
    mean, cov
        The coefficients' moments over the scan
        (:func:`coefficient_moments`).

    Returns
    -------
    state
        Coefficients ``a'`` with mean 0 and identity covariance over the
        scan, bases ``B_1' ... B_{R-1}'`` orthogonal with decreasing norms,
        ``B_0'`` the pattern at the mean coefficients.
    """
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    if not bool(torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        return None  # a diverged network: nothing to rewrite
    bases = state["bases"].double()
    variances, axes = torch.linalg.eigh(cov)
    if variances[0] <= _MIN_VARIANCE_RATIO * variances[-1].clamp(min=0):
        return None
    # cov = L L^T; whitened coefficients L^-1 (a - mu) have unit covariance.
    root = axes * variances.sqrt()
    root_inv = (axes / variances.sqrt()).T
    # The field's patterns about their mean have covariance B^T cov B in
    # pixel space; its eigenvectors within span(B) are U^T L^T B, with U the
    # eigenvectors of L^T (B B^T) L (the same eigenvalues, R - 1 of them).
    high = bases[1:]
    energies, u = torch.linalg.eigh(root.T @ (high @ high.T) @ root)
    u = u[:, torch.argsort(energies, descending=True)]
    to_axes = u.T @ root_inv  # a' = to_axes (a - mu)
    out = dict(state)
    new_bases = torch.cat([(bases[0] + mean @ high)[None], u.T @ root.T @ high])
    out["bases"] = new_bases.to(state["bases"].dtype)
    weight = state[_LAST_WEIGHT].double()
    bias = state[_LAST_BIAS].double()
    out[_LAST_WEIGHT] = (to_axes @ weight).to(state[_LAST_WEIGHT].dtype)
    out[_LAST_BIAS] = (to_axes @ (bias - mean)).to(state[_LAST_BIAS].dtype)
    return out
