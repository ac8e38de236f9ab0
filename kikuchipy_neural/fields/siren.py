"""SIREN: a multilayer perceptron with sine activations (Sitzmann et al. 2020).

A network in a page, after Sitzmann's reference implementation and lucidrains'
siren-pytorch: ``layers`` sine layers of width ``width`` and a linear output.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SineLayer", "Siren"]


class SineLayer(nn.Module):
    """``sin(omega_0 * (W x + b))`` with Sitzmann's initialisation.

    The first layer's weights are uniform in ``[-1/n, 1/n]`` so that its
    outputs span several periods over [-1, 1]; later layers use
    ``[-sqrt(6/n)/omega_0, sqrt(6/n)/omega_0]``, which keeps the distribution
    of pre-activations stationary through depth.
    """

    def __init__(
        self, in_features: int, out_features: int, omega_0: float, is_first: bool
    ) -> None:
        super().__init__()
        self.omega_0 = float(omega_0)
        self.linear = nn.Linear(in_features, out_features)
        bound = 1 / in_features if is_first else math.sqrt(6 / in_features) / omega_0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega_0 * self.linear(x))


class Siren(nn.Module):
    """Sine layers followed by a linear layer.

    Parameters
    ----------
    in_features, out_features
        Input and output dimensions.
    width
        Width of every sine layer.
    layers
        Number of sine layers (the input layer included); the paper uses 5.
    first_omega_0, hidden_omega_0
        Frequency factors of the first and the later sine layers.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int = 512,
        layers: int = 5,
        first_omega_0: float = 30.0,
        hidden_omega_0: float = 30.0,
    ) -> None:
        super().__init__()
        if layers < 1 or width < 1:
            raise ValueError(f"layers and width must be >= 1, got {layers}, {width}")
        sines = [SineLayer(in_features, width, first_omega_0, is_first=True)]
        sines += [
            SineLayer(width, width, hidden_omega_0, is_first=False)
            for _ in range(layers - 1)
        ]
        self.net = nn.Sequential(*sines)
        self.last = nn.Linear(width, out_features)
        bound = math.sqrt(6 / width) / hidden_omega_0
        with torch.no_grad():
            self.last.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.net(x))
