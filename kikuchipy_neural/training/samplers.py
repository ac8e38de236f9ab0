"""Samplers: how a training batch is drawn.

- :class:`PositionSampler` (the default): ``P`` scan positions times ``Q``
  detector pixels (all, or a band-biased subset shared by the batch), so the
  field's position network runs once per position.
- :class:`CoordinateSampler` (the paper's): independent random ``(x, y, u, v)``
  coordinates, band pixels over-represented.
- :class:`ScoreSampler`: positions with their whitened PCA scores, for the
  warm start of the factorized field (no pattern reads at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kikuchipy_neural.training.accelerate import to_device
from kikuchipy_neural.training.data import _Sampling
from kikuchipy_neural.training.preprocessing import Preprocessed

__all__ = [
    "Batch",
    "CoordinateSampler",
    "PositionSampler",
    "ScoreSampler",
    "band_share",
]


def band_share(
    band_weight: float, top_fraction: float, clip: tuple[float, float]
) -> float:
    """Share of band pixels in a sampled batch: band pixels are drawn in
    proportion to their loss weight, clipped to ``clip`` (the paper's
    [0.15, 0.50])."""
    return float(np.clip(band_weight * top_fraction, *clip))


@dataclass
class Batch:
    """Scan points (flat indices), pixels and normalised targets.

    ``pixels is None``: every pixel, targets ``(n, n_pixels)``. For a
    pattern batch ``pixels`` has shape ``(Q,)`` and targets ``(n, Q)``; for a
    coordinate batch both ``points`` and ``pixels`` have shape ``(n,)`` and
    targets ``(n,)``.
    """

    kind: str  # "patterns" | "coordinates" | "scores"
    points: np.ndarray
    target: torch.Tensor
    weight: torch.Tensor
    pixels: torch.Tensor | None = None


class PositionSampler:
    """``positions_per_batch`` points x all (or ``pixels_per_position``) pixels."""

    def __init__(
        self,
        buffer: _Sampling,
        prep: Preprocessed,
        n_positions: int,
        n_pixels: int | None,
        band_weight: float,
        share: float,
        device: torch.device | None = None,
    ) -> None:
        self.buffer, self.prep = buffer, prep
        self.n_positions, self.n_pixels = n_positions, n_pixels
        self.band_weight, self.share = band_weight, share
        self.device = device
        self._arrays: dict[str, torch.Tensor] = {}

    def __call__(self, rng: np.random.Generator) -> Batch:
        points, raw, band = self.buffer.sample(self.n_positions, rng)
        if self.device is not None and self.device.type == "cuda":
            return self._on_device(points, raw, band, rng)
        pixels = None
        if self.n_pixels is not None and self.n_pixels < raw.shape[1]:
            pixels = self._band_biased_pixels(band, rng)
            raw, band = raw[:, pixels.numpy()], band[:, pixels.numpy()]
        # Targets and weights go into the previous batch's arrays (a step is
        # done with its batch before the next is drawn, and the loss keeps
        # neither): fresh arrays of this size cost more to page in than to
        # fill.
        target = self.prep.normalize(raw, out=self._workspace("target", raw.shape))
        # 1 + (band_weight - 1) * band
        weight = self._workspace("weight", band.shape)
        np.copyto(weight.numpy(), band, casting="unsafe")
        weight.mul_(self.band_weight - 1.0).add_(1.0)
        return Batch("patterns", points, target, weight, pixels)

    def _workspace(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 array of ``shape``, the same one from call to call."""
        array = self._arrays.get(name)
        if array is None or tuple(array.shape) != tuple(shape):
            array = self._arrays[name] = torch.empty(shape, dtype=torch.float32)
        return array

    def _on_device(self, points, raw, band, rng) -> Batch:
        # Raw counts and band flags travel to the GPU (pinned, non-blocking)
        # and are normalised there: half the bytes of float32 targets for
        # 16-bit data, and no float work on the host.
        pixels = None
        if self.n_pixels is not None and self.n_pixels < raw.shape[1]:
            pixels = self._band_biased_pixels(band, rng)
            raw, band = raw[:, pixels.numpy()], band[:, pixels.numpy()]
        lo, hi = self.prep.intensity_range
        target = (to_device(raw, self.device).float() - lo) / (hi - lo)
        band_t = to_device(band, self.device)
        weight = 1.0 + (self.band_weight - 1.0) * band_t.float()
        return Batch("patterns", points, target, weight, pixels)

    def _band_biased_pixels(
        self, band: np.ndarray, rng: np.random.Generator
    ) -> torch.Tensor:
        # One pixel subset for the whole batch keeps the basis product dense.
        # Pixel j is drawn with probability proportional to 1 + c * b_j, b_j
        # the share of the batch's patterns in which j is a band pixel, with c
        # chosen so that the expected band share is self.share.
        b = band.mean(axis=0)
        total, total_sq, n = b.sum(), (b**2).sum(), len(b)
        denom = total_sq - self.share * total
        c = max(0.0, (self.share * n - total) / denom) if denom > 0 else 0.0
        p = 1.0 + c * b
        chosen = rng.choice(n, size=self.n_pixels, replace=False, p=p / p.sum())
        return torch.from_numpy(np.sort(chosen))


class CoordinateSampler:
    """``batch_size`` independent (point, pixel) pairs, the paper's batches."""

    def __init__(
        self,
        buffer: _Sampling,
        prep: Preprocessed,
        batch_size: int,
        band_weight: float,
        share: float,
    ) -> None:
        self.buffer, self.prep = buffer, prep
        self.batch_size, self.band_weight, self.share = batch_size, band_weight, share

    def __call__(self, rng: np.random.Generator) -> Batch:
        points, pixels, values, is_band = self.buffer.sample_pairs(
            self.batch_size, self.share, rng
        )
        weight = 1.0 + (self.band_weight - 1.0) * torch.from_numpy(is_band).float()
        return Batch(
            "coordinates",
            points,
            self.prep.normalize(values),
            weight,
            torch.from_numpy(pixels),
        )


class ScoreSampler:
    """Training points with their whitened PCA scores (warm start).

    The loss weight of score ``k`` is its share of the total score variance,
    so the weighted squared error equals the pattern-space squared error of
    the PCA reconstruction up to a constant factor.
    """

    def __init__(
        self, prep: Preprocessed, n_positions: int, points: np.ndarray | None = None
    ) -> None:
        scores = torch.from_numpy(prep.scores.astype(np.float32, copy=False))
        self.std = scores.std(dim=0).clamp_min(1e-12)
        self.whitened = scores / self.std
        variance = self.std**2
        self.weight = (variance / variance.sum())[None, :] * len(variance)
        self.points = prep.train_points
        if points is not None:
            # A subset (a distributed rank's shard), whitened as the whole.
            rows = np.searchsorted(self.points, points)
            self.points, self.whitened = self.points[rows], self.whitened[rows]
        self.n_positions = n_positions

    def __call__(self, rng: np.random.Generator) -> Batch:
        n = len(self.points)
        if self.n_positions >= n:
            rows = np.arange(n)
        else:
            rows = np.sort(rng.choice(n, size=self.n_positions, replace=False))
        return Batch("scores", self.points[rows], self.whitened[rows], self.weight)
