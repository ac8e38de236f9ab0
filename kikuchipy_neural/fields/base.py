"""The interface every neural field implements.

A field maps normalised scan coordinates (and detector pixels) to normalised
intensities. Training, queries, the diffraction gradient and the model file
all talk to a field only through this interface, so the factorized and the
joint formulations share every code path above it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["NeuralField"]


class NeuralField(nn.Module, ABC):
    """Base class of the fields; subclasses set ``formulation``.

    Coordinates ``xy`` are network coordinates (see
    :meth:`kikuchipy_neural.geometry.ScanGeometry.normalize`), shape ``(n, 2)``.
    Pixels are flat (row-major) detector indices.
    """

    formulation: ClassVar[str]

    def __init__(self, pattern_shape: tuple[int, int]) -> None:
        super().__init__()
        self.pattern_shape = (int(pattern_shape[0]), int(pattern_shape[1]))

    @property
    def n_pixels(self) -> int:
        return self.pattern_shape[0] * self.pattern_shape[1]

    @abstractmethod
    def pattern_values(
        self, xy: torch.Tensor, pixels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Intensities at every position for the given pixels, ``(n, n_pix)``.

        ``pixels=None`` means the whole pattern.
        """

    @torch.no_grad()
    def pattern_values_into(self, xy: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``pattern_values(xy)`` (whole patterns) written into ``out``, a
        ``(n, n_pixels)`` tensor on any device, e.g. a view of the caller's
        numpy array; for decoding, so without gradients. Fields that can
        write there directly override this: decoding then allocates no
        pattern-sized temporaries."""
        out.copy_(self.pattern_values(xy))
        return out

    @abstractmethod
    def values_at(self, xy: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """One intensity per (position, pixel) pair, ``(n,)``."""

    @abstractmethod
    def descriptor(self, xy: torch.Tensor) -> torch.Tensor:
        """Per-position vector whose spatial Jacobian defines the diffraction
        gradient ``S = ||d descriptor / d(x, y)||``, ``(n, d)``."""

    @property
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Plain numbers and strings that rebuild this architecture."""

    def penalty(self) -> torch.Tensor:
        """Regulariser weighted by the ``basis_l2`` option (0 if none)."""
        return torch.zeros((), device=next(self.parameters()).device)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return self.pattern_values(xy)


def build_field(config: dict[str, Any]) -> NeuralField:
    """Rebuild an (untrained) field from its :attr:`NeuralField.config`."""
    from kikuchipy_neural.fields import FIELDS

    config = dict(config)
    formulation = config.pop("formulation")
    if formulation not in FIELDS:
        raise ValueError(
            f"Unknown formulation {formulation!r}; expected one of {sorted(FIELDS)}"
        )
    return FIELDS[formulation](**config)
