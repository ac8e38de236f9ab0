"""Denoising measured patterns with the field as the prior.

The field's pattern ``f`` at a scan point is a prediction from the whole map
(smooth inside grains, blurred where the beam straddles a boundary); the
measured pattern ``m`` is the point's own evidence, noisy. PCA at the
field's rank keeps the part of ``m`` in the span of the bases and all the
noise of that span. Here the in-span residual ``P (m - f)`` (``P`` the
orthogonal projection onto the span of the varying bases, ``d`` of them) is
added back to ``f``, shrunk by the positive-part James-Stein factor

    s = max(0, 1 - (d - 2) sigma^2 / ||P (m - f)||^2)

with ``sigma^2`` the noise variance per pixel. Where the field explains the
point (a grain interior) the residual is noise, ``||P (m - f)||^2`` is about
``d sigma^2`` and little of it comes back; where it does not (a boundary
blend, a defect the field smoothed away) the residual is large and almost
all of it comes back. For Gaussian noise of known variance and a prior
independent of the point's noise, this estimate has a lower expected squared
error than the projection ``f + P (m - f)`` (PCA of the same span) whenever
``d >= 3`` (Stein 1956; James & Stein 1961); the field is fitted to all
points, so its dependence on any one point's noise is small.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["denoise", "denoise_scan"]

# Patterns per chunk: a few float64 arrays of this many patterns at a time.
_CHUNK_VALUES = 2**23


def denoise(
    model,
    patterns: np.ndarray,
    xy: np.ndarray,
    noise_variance: float | None = None,
) -> np.ndarray:
    """Measured patterns denoised with the field as the prior.

    Parameters
    ----------
    model
        A factorized :class:`~kikuchipy_neural.NeuralEBSDModel`.
    patterns
        ``(n, rows, columns)`` (or ``(n, n_pixels)``) measured patterns, any
        real dtype, in the model's intensity scale.
    xy
        ``(n, 2)`` calibrated positions of the patterns.
    noise_variance
        Noise variance of one pixel, counts squared; None: the fit's
        estimate (``model.spectrum``, from neighbouring training points).

    Returns
    -------
    denoised
        float32, ``patterns``' shape.

    Raises
    ------
    ValueError
        For a joint model (no bases), an unknown noise level, or shapes
        that do not match.
    """
    if model.rank is None:
        raise ValueError(
            "Denoising with the field as prior needs a factorized model (its "
            "bases span the patterns); this one is joint."
        )
    lo, hi = model.intensity_range
    if noise_variance is None:
        spectrum = model.spectrum
        if spectrum is None or spectrum.noise_variance is None:
            raise ValueError(
                "The model has no noise estimate (its fit had no neighbouring "
                "training points): pass noise_variance= (counts squared)."
            )
        noise_variance = float(spectrum.noise_variance) * (hi - lo) ** 2
    if not (np.isfinite(noise_variance) and noise_variance >= 0):
        raise ValueError(f"noise_variance must be >= 0, got {noise_variance}")
    n_pixels = model.geometry.n_pixels
    shape = np.shape(patterns)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if np.prod(shape) != len(xy) * n_pixels:
        raise ValueError(
            f"patterns {shape} and positions {xy.shape} do not describe the same "
            f"points of {model.pattern_shape} px"
        )
    flat = np.asarray(patterns).reshape(len(xy), n_pixels)
    # The projection onto the span of the varying bases, by a QR basis.
    varying = model.field.bases[1:].detach().to("cpu", torch.float64).numpy()
    q, _ = np.linalg.qr(varying.T)  # (n_pixels, d), orthonormal columns
    d = q.shape[1]
    out = np.empty((len(flat), n_pixels), np.float32)
    step = max(1, _CHUNK_VALUES // n_pixels)
    for start in range(0, len(flat), step):
        chunk = slice(start, start + step)
        prior = model.query(xy[chunk]).reshape(-1, n_pixels).astype(np.float64)
        scores = (flat[chunk].astype(np.float64) - prior) @ q  # (k, d)
        energy = (scores**2).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = np.where(
                energy > 0,
                np.clip(1.0 - (d - 2) * noise_variance / energy, 0.0, 1.0),
                0.0,
            )
        out[chunk] = prior + (scores * shrink[:, None]) @ q.T
    return out.reshape(shape)


def _denoise_block(block, model, xy, noise_variance, block_info=None):
    location = block_info[0]["array-location"][:-2]
    index = tuple(slice(a, b) for a, b in location)
    return denoise(model, block, xy[index], noise_variance)


def denoise_scan(model, data, xy: np.ndarray, noise_variance: float | None = None):
    """:func:`denoise` of a whole scan, numpy or dask.

    Parameters
    ----------
    model
        A factorized model.
    data
        numpy or dask array ``(*nav, rows, columns)``.
    xy
        ``(*nav, 2)`` calibrated positions of the scan points.
    noise_variance
        As in :func:`denoise`.

    Returns
    -------
    denoised
        float32 ``data.shape``: numpy, or dask (chunk by chunk, on demand)
        for dask input.
    """
    import dask
    import dask.array as da

    if isinstance(data, da.Array):
        data = data.rechunk({data.ndim - 2: -1, data.ndim - 1: -1})
        # Fail now, not at compute: the same checks on an empty request.
        denoise(
            model, np.zeros((0, *data.shape[-2:])), np.zeros((0, 2)), noise_variance
        )
        return da.map_blocks(
            _denoise_block,
            data,
            dask.delayed(model, pure=True, traverse=False),
            dask.delayed(np.asarray(xy), pure=True),
            noise_variance,
            dtype=np.float32,
            meta=np.empty((0,) * data.ndim, np.float32),
        )
    nav = data.shape[:-2]
    flat = np.asarray(data).reshape(-1, *data.shape[-2:])
    return denoise(model, flat, np.asarray(xy).reshape(-1, 2), noise_variance).reshape(
        *nav, *data.shape[-2:]
    )
