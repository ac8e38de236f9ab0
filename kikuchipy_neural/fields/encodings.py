"""Input encodings of coordinate networks.

:class:`FourierFeatures` is the random Fourier feature map of Tancik et al.
(2020), ``gamma(v) = [cos(2 pi B v), sin(2 pi B v)]`` with a fixed Gaussian
frequency matrix ``B``. It lets a SIREN fit the sharp Kikuchi band edges of
the detector coordinates without raising its ``omega_0`` for every input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FourierFeatures"]


class FourierFeatures(nn.Module):
    """``v -> [cos(2 pi v B^T), sin(2 pi v B^T)]`` with fixed random ``B``.

    ``B`` (``(n_features, in_features)``, entries drawn from
    ``N(0, sigma^2)``) is a buffer: it is part of the ``state_dict``, so a
    saved and loaded model uses the frequencies it was trained with, and it
    is never trained.

    Parameters
    ----------
    in_features
        Dimension of the encoded coordinates.
    n_features
        Number of frequencies ``m``; the output has ``2 m`` features (all
        cosines, then all sines).
    sigma
        Standard deviation of the frequencies, in cycles per unit of input.
    generator
        Random generator for ``B``; None: torch's global generator (seeded
        by ``fit(seed=...)``).
    """

    def __init__(
        self,
        in_features: int,
        n_features: int,
        sigma: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or n_features < 1:
            raise ValueError(
                "in_features and n_features must be >= 1, got "
                f"{in_features} and {n_features}"
            )
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.in_features, self.n_features = int(in_features), int(n_features)
        self.sigma = float(sigma)
        frequencies = torch.randn(
            self.n_features, self.in_features, generator=generator
        )
        self.register_buffer("frequencies", frequencies * self.sigma)

    @property
    def out_features(self) -> int:
        return 2 * self.n_features

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Encode ``(n, in_features)`` coordinates as ``(n, 2 n_features)``."""
        phase = (2 * math.pi) * (v @ self.frequencies.T)
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, n_features={self.n_features}, "
            f"sigma={self.sigma}"
        )
