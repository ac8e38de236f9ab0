"""Band-region masks and the weighted losses.

Kikuchi bands carry the orientation information but cover a small part of the
detector, so the loss weighs band pixels twice: a pixel is a band pixel when
its gradient magnitude is among the top 15 % of its own (smoothed) pattern.
The paper's loss is the weighted squared error; the weighted absolute error
(``fit(loss="mae")``) is the error maps are judged by, and outlying pixels
pull it far less.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "LOSS_FUNCTIONS",
    "band_mask",
    "pack_mask",
    "unpack_mask",
    "weighted_mae",
    "weighted_mse",
]

# Rows per numpy partition when thresholding band masks (its copy of them is
# the one work array outside torch).
_PARTITION_ROWS = 16


def band_mask(
    patterns: torch.Tensor, pattern_shape: tuple[int, int], top_fraction: float = 0.15
) -> torch.Tensor:
    """Band pixels of each pattern: the ``top_fraction`` of Sobel magnitude.

    Patterns are smoothed with a 5x5 binomial kernel first, so that Poisson
    noise does not decide which pixels count as band edges; edges are
    replicated. Both filters are applied as 1D passes of shifted sums (a
    single-channel ``conv2d`` was 5x slower on CPUs), without their
    normalisation (a power-of-two scale, exact in floating point, which the
    top fraction does not depend on). For integer patterns below 2^14 counts
    every sum is exact in float32, so the masks equal the 2D convolutions'
    bit for bit; above, the two round differently (on the real 16-bit crop
    a few pixels in a million differ, ties at the threshold).

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
    rows, cols = pattern_shape
    im = F.pad(patterns.reshape(n, 1, rows, cols).float(), (2, 2, 2, 2), "replicate")
    im = _binomial(_binomial(im[:, 0], 2, cols), 1, rows)
    im = F.pad(im[:, None], (1, 1, 1, 1), "replicate")[:, 0]
    # Sobel: a central difference along one axis, [1 2 1] along the other.
    across = im[:, :, 2:] - im[:, :, :-2]
    gx = across[:, :-2] + across[:, 2:]
    gx += 2 * across[:, 1:-1]
    along = im[:, :, :-2] + im[:, :, 2:]
    along += 2 * im[:, :, 1:-1]
    gy = along[:, 2:] - along[:, :-2]
    gx *= gx
    gy *= gy
    magnitude = gx.add_(gy).reshape(n, -1)
    k = max(1, int(round(top_fraction * magnitude.shape[1])))
    return magnitude >= _kth_largest(magnitude, k)


def _kth_largest(
    values: torch.Tensor, k: int, use_numpy: bool | None = None
) -> torch.Tensor:
    """The ``k``-th largest value of each row, ``(n, 1)``: by numpy's
    ``partition`` (about 8x faster than ``torch.topk`` on CPUs) for CPU
    tensors, else by ``torch.kthvalue``; ``use_numpy`` overrides the choice."""
    p = values.shape[1]
    if use_numpy is None:
        use_numpy = values.device.type == "cpu"
    if use_numpy:
        rows = values.numpy()
        kth = np.empty((len(rows), 1), rows.dtype)
        # partition works on a copy: a few rows at a time keep it small.
        for start in range(0, len(rows), _PARTITION_ROWS):
            block = rows[start : start + _PARTITION_ROWS]
            kth[start : start + len(block), 0] = np.partition(block, p - k, axis=1)[
                :, p - k
            ]
        return torch.from_numpy(kth)
    return values.kthvalue(p - k + 1, dim=1, keepdim=True).values


def _binomial(im: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``[1 4 6 4 1]`` (unnormalised) along ``dim`` of an image padded by 2
    there, as ``(a0 + a4) + 4 (a1 + a3) + 6 a2``."""

    def shifted(i: int) -> torch.Tensor:
        return im.narrow(dim, i, size)

    out = shifted(0) + shifted(4)
    out += 4 * (shifted(1) + shifted(3))
    out += 6 * shifted(2)
    return out


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """Boolean ``(n, p)`` -> bits ``(n, ceil(p / 8))`` (8x less memory)."""
    return np.packbits(mask.cpu().numpy(), axis=1)


def unpack_mask(bits: np.ndarray, n_pixels: int) -> np.ndarray:
    # unpackbits gives 0/1 bytes: a boolean view, not a copy.
    return np.unpackbits(bits, axis=1, count=n_pixels).view(bool)


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Mean of ``weight * (prediction - target)**2`` (``weight`` broadcasts).

    Differentiable in all three. A batch of the default sampler holds 15 M
    values; written out, the loss makes three arrays of that size and its
    gradient three more (each page-faulted in afresh on CPUs). This keeps
    ``weight * (prediction - target)``, turns it into the gradient in place
    and takes the value as dot products; in training on CPUs (equal shapes,
    only the prediction's gradient) it makes the difference a block of rows
    at a time, so that the kept array is the only batch-sized one.
    """
    return _WeightedLoss.apply(prediction, target, weight, 2)


def weighted_mae(
    prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Mean of ``weight * |prediction - target|`` (``weight`` broadcasts).

    The loss of ``fit(loss="mae")``: the mean absolute error is what maps are
    judged by, and a few outlying pixels (dead or saturated pixels, cosmic
    rays) pull it far less than the squared error. Computed like :func:`weighted_mse`,
    keeping ``weight * sign(prediction - target)``; the gradient at a zero
    difference is 0.
    """
    return _WeightedLoss.apply(prediction, target, weight, 1)


#: The training losses by their names in ``FitOptions.loss``.
LOSS_FUNCTIONS = {"mse": weighted_mse, "mae": weighted_mae}

# Values per block when the loss makes the difference a block at a time.
_BLOCK_VALUES = 2**18


class _WeightedLoss(torch.autograd.Function):
    """``mean(weight * |d|**power)``, ``d = prediction - target``, power 1 or 2.

    Both keep ``weight * d**(power - 1)`` (``weight * sign(d)`` for power 1):
    the value is its dot product with ``d``, and the prediction's gradient is
    the kept array times ``power / n``.
    """

    @staticmethod
    def forward(ctx, prediction, target, weight, power):
        ctx.shapes = (target.shape, weight.shape)
        ctx.power = power
        if (
            ctx.needs_input_grad[2]
            or prediction.device.type != "cpu"
            or prediction.dim() == 0
            or not prediction.shape == target.shape == weight.shape
        ):
            # The weight's gradient needs the difference itself (never in
            # training: weights are data); broadcast shapes are small; on
            # GPUs fresh arrays come from torch's cache (nothing to page in)
            # and blocks would only add kernel launches.
            diff = prediction - target
            kept = weight * (diff if power == 2 else diff.sign())
            ctx.save_for_backward(kept, diff if ctx.needs_input_grad[2] else None)
            # sum(w |d|^power) / n as one dot product: no squared array.
            return torch.dot(diff.reshape(-1), kept.reshape(-1)) / diff.numel()
        # A batch's difference is made a block of rows at a time: of the
        # batch-sized arrays only the kept one is new.
        kept = torch.empty_like(prediction)
        rows = max(1, _BLOCK_VALUES // max(1, prediction[0].numel()))
        value = prediction.new_zeros(())
        for start in range(0, len(prediction), rows):
            block = slice(start, start + rows)
            diff = prediction[block] - target[block]
            if power == 2:
                torch.mul(diff, weight[block], out=kept[block])
            else:
                torch.sign(diff, out=kept[block]).mul_(weight[block])
            value += torch.dot(diff.reshape(-1), kept[block].reshape(-1))
        ctx.save_for_backward(kept, None)
        return value / prediction.numel()

    @staticmethod
    def backward(ctx, grad):
        kept, diff = ctx.saved_tensors
        target_shape, weight_shape = ctx.shapes
        # The saved array becomes the gradient, not a fresh batch-sized one
        # (a second backward through the same graph fails torch's check of
        # saved tensors modified in place instead of computing garbage).
        d_prediction = kept.mul_(ctx.power * grad / kept.numel())
        d_target = d_weight = None
        if ctx.needs_input_grad[1]:
            d_target = (-d_prediction).sum_to_size(target_shape)
        if ctx.needs_input_grad[2]:
            d_abs = diff * diff if ctx.power == 2 else diff.abs()
            d_weight = (d_abs * (grad / diff.numel())).sum_to_size(weight_shape)
        if not ctx.needs_input_grad[0]:
            d_prediction = None
        return d_prediction, d_target, d_weight, None
