"""Diffraction gradient: spatial derivatives of a field, by autograd.

``S(x, y) = ||d descriptor / d(x, y)||_F`` where the descriptor is the
factorized field's coefficient vector (in pattern units) or the joint field's
whole pattern. Derivatives come from forward-mode automatic differentiation:
two Jacobian-vector products (one per scan direction) give every output's
d/dx and d/dy at the cost of about two forward passes, never by finite
differences.
"""

from __future__ import annotations

import torch
from torch.func import jvp

from kikuchipy_neural.fields.base import NeuralField

__all__ = ["spatial_jacobian"]


def spatial_jacobian(field: NeuralField, xy: torch.Tensor) -> torch.Tensor:
    """Jacobian of ``field.descriptor`` with respect to network coordinates.

    Parameters
    ----------
    field
        Any neural field.
    xy
        ``(n, 2)`` network coordinates.

    Returns
    -------
    jacobian
        ``(n, d, 2)``: ``[..., 0]`` is d/dx, ``[..., 1]`` is d/dy.
    """
    columns = []
    with torch.no_grad():  # forward-mode AD needs no backward graph
        for axis in range(2):
            tangent = torch.zeros_like(xy)
            tangent[:, axis] = 1.0
            _, derivative = jvp(field.descriptor, (xy,), (tangent,))
            columns.append(derivative)
    return torch.stack(columns, dim=-1)
