"""Band-region masks and the weighted loss of the paper.

Kikuchi bands carry the orientation information but cover a small part of the
detector, so the loss weighs band pixels twice: a pixel is a band pixel when
its gradient magnitude is among the top 15 % of its own (smoothed) pattern.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["band_mask", "pack_mask", "unpack_mask", "weighted_mse"]

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def band_mask(
    patterns: torch.Tensor, pattern_shape: tuple[int, int], top_fraction: float = 0.15
) -> torch.Tensor:
    """Band pixels of each pattern: the ``top_fraction`` of Sobel magnitude.

    Patterns are smoothed with a 5x5 binomial kernel first, so that Poisson
    noise does not decide which pixels count as band edges.

    Parameters
    ----------
    patterns
        ``(n, rows * columns)`` intensities.
    pattern_shape
        ``(rows, columns)``.
    top_fraction
        Share of pixels marked per pattern.

    Returns
    -------
    mask
        Boolean ``(n, rows * columns)``.
    """
    n = patterns.shape[0]
    if n == 0:
        return torch.zeros_like(patterns, dtype=torch.bool)
    im = patterns.reshape(n, 1, *pattern_shape).float()
    kernel = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(im)[None, None]
    im = F.conv2d(F.pad(im, (2, 2, 2, 2), mode="replicate"), kernel)
    sobel = _SOBEL.to(im)[None, None]
    padded = F.pad(im, (1, 1, 1, 1), mode="replicate")
    magnitude = (
        F.conv2d(padded, sobel) ** 2 + F.conv2d(padded, sobel.transpose(2, 3)) ** 2
    )
    magnitude = magnitude.reshape(n, -1)
    k = max(1, int(round(top_fraction * magnitude.shape[1])))
    threshold = magnitude.topk(k, dim=1).values[:, -1:]
    return magnitude >= threshold


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """Boolean ``(n, p)`` -> bits ``(n, ceil(p / 8))`` (8x less memory)."""
    return np.packbits(mask.cpu().numpy(), axis=1)


def unpack_mask(bits: np.ndarray, n_pixels: int) -> np.ndarray:
    return np.unpackbits(bits, axis=1, count=n_pixels).astype(bool)


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Mean of ``weight * (prediction - target)**2``."""
    return (weight * (prediction - target) ** 2).mean()
