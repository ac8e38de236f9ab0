"""Factorized field (TF-INR): ``I(x, y, u, v) = sum_r A_r(x, y) B_r(u, v)``.

A SIREN maps ``(x, y)`` to ``R - 1`` coefficients, a constant coefficient 1 is
prepended, and the pattern is the coefficient vector times ``R`` learnable
basis patterns (``B_0`` starts as the mean pattern, the rest as principal
components). Because the SIREN depends on the position only, a batch of ``P``
positions times ``Q`` pixels costs ``P`` SIREN evaluations and one dense
``(P, R) @ (R, Q)`` product.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kikuchipy_neural.fields.base import NeuralField
from kikuchipy_neural.fields.siren import Siren

__all__ = ["FactorizedField"]


class FactorizedField(NeuralField):
    """Coefficient SIREN and learnable bases.

    Parameters
    ----------
    rank
        Number of bases ``R`` (the mean pattern included), >= 2.
    pattern_shape
        Detector shape ``(rows, columns)``.
    width, layers, first_omega_0, hidden_omega_0
        SIREN architecture; see :class:`~kikuchipy_neural.fields.siren.Siren`.
    """

    formulation = "factorized"

    def __init__(
        self,
        rank: int,
        pattern_shape: tuple[int, int],
        width: int = 512,
        layers: int = 5,
        first_omega_0: float = 30.0,
        hidden_omega_0: float = 30.0,
    ) -> None:
        super().__init__(pattern_shape)
        if rank < 2:
            raise ValueError(f"rank must be >= 2 (mean pattern + 1 basis), got {rank}")
        self.rank = int(rank)
        self.siren = Siren(2, rank - 1, width, layers, first_omega_0, hidden_omega_0)
        self.bases = nn.Parameter(torch.zeros(rank, self.n_pixels))
        self._arch = dict(
            width=int(width),
            layers=int(layers),
            first_omega_0=float(first_omega_0),
            hidden_omega_0=float(hidden_omega_0),
        )

    @property
    def config(self) -> dict[str, Any]:
        return dict(
            formulation=self.formulation,
            rank=self.rank,
            pattern_shape=list(self.pattern_shape),
            **self._arch,
        )

    def coefficients(self, xy: torch.Tensor) -> torch.Tensor:
        """``A(x, y)`` with the constant 1 first, ``(n, R)``."""
        a = self.siren(xy)
        return torch.cat([torch.ones_like(a[:, :1]), a], dim=1)

    def pattern_values(
        self, xy: torch.Tensor, pixels: torch.Tensor | None = None
    ) -> torch.Tensor:
        bases = self.bases if pixels is None else self.bases[:, pixels]
        return self.coefficients(xy) @ bases

    @torch.no_grad()
    def pattern_values_into(self, xy: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # The product straight into the caller's array: on CPUs a
        # pattern-sized temporary costs more than the product (fresh pages
        # each time; query decoded about 3x slower with them).
        if out.device != self.bases.device or out.dtype != self.bases.dtype:
            return super().pattern_values_into(xy, out)
        return torch.matmul(self.coefficients(xy), self.bases, out=out)

    def values_at(self, xy: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return (self.coefficients(xy) * self.bases[:, pixels].T).sum(dim=1)

    def penalty(self) -> torch.Tensor:
        """``||B||_F^2``, the paper's basis regulariser."""
        return (self.bases**2).sum()

    def descriptor(self, xy: torch.Tensor) -> torch.Tensor:
        # Coefficients in pattern units (times each basis's norm), so that the
        # diffraction gradient does not depend on how bases and coefficients
        # share a scale factor.
        norms = self.bases[1:].detach().norm(dim=1)
        return self.siren(xy) * norms

    @torch.no_grad()
    def initialize_bases(
        self, mean: torch.Tensor, components: torch.Tensor, score_std: torch.Tensor
    ) -> None:
        """``B_0`` = mean pattern, ``B_r`` = principal component times the
        standard deviation of its scores, so that the SIREN's targets (the
        whitened scores) have unit variance whatever the component's weight."""
        self.bases[0].copy_(mean)
        self.bases[1:].copy_(components * score_std[:, None])
