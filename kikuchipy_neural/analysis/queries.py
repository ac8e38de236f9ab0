"""Decoding a model into kikuchipy signals, eagerly or lazily.

:func:`decode` turns calibrated positions into patterns, either at once or as
a dask array whose chunks are decoded on demand (memory bounded for any
output size). :func:`patterns_to_signal` wraps patterns as a kikuchipy
``EBSD``/``LazyEBSD`` with calibrated axes and a detector.
"""

from __future__ import annotations

import copy

import dask
import dask.array as da
import numpy as np

from kikuchipy_neural.model import NeuralEBSDModel

__all__ = ["decode", "patterns_to_signal", "want_lazy"]

# Outputs larger than this are returned lazily when lazy=None.
LAZY_THRESHOLD_BYTES = 1024**3
# Decoded bytes per dask chunk.
_CHUNK_BYTES = 64 * 1024**2


def want_lazy(lazy: bool | None, n_points: int, model: NeuralEBSDModel, signal=None) -> bool:
    """Resolve ``lazy=None``: lazy for lazy input signals or large outputs."""
    if lazy is not None:
        return bool(lazy)
    if signal is not None and getattr(signal, "_lazy", False):
        return True
    return n_points * model.geometry.n_pixels * 4 > LAZY_THRESHOLD_BYTES


def _decode_block(xy_block: np.ndarray, model: NeuralEBSDModel) -> np.ndarray:
    # Points were checked against the scan once, for the whole request.
    return model.query(xy_block, extrapolate=True)


def decode(
    model: NeuralEBSDModel,
    xy: np.ndarray,
    lazy: bool = False,
    extrapolate: bool = False,
) -> np.ndarray | da.Array:
    """Patterns at calibrated positions ``xy`` ``(..., 2)``.

    Returns float32 ``(..., rows, columns)``: numpy, or dask when ``lazy``.
    The model enters the dask graph once (as one delayed object), so a
    distributed scheduler ships it to each worker once, not once per chunk.
    """
    xy = np.asarray(xy, dtype=np.float64)
    model.geometry.check_inside(xy, extrapolate)
    if not lazy:
        return model.query(xy, extrapolate=True)
    lead = xy.shape[:-1]
    n_pixels = model.geometry.n_pixels
    per_chunk = max(1, _CHUNK_BYTES // (4 * n_pixels))
    # Chunk along the first axes: whole rows where possible.
    chunks = []
    remaining = per_chunk
    for size in reversed(lead):
        take = int(min(size, max(1, remaining)))
        chunks.insert(0, take)
        remaining = max(1, remaining // size)
    xy_d = da.from_array(xy, chunks=(*chunks, 2))
    model_d = dask.delayed(model, pure=True, traverse=False)
    return da.map_blocks(
        _decode_block,
        xy_d,
        model_d,
        drop_axis=len(lead),
        new_axis=[len(lead), len(lead) + 1],
        chunks=(*xy_d.chunks[:-1], (model.pattern_shape[0],), (model.pattern_shape[1],)),
        dtype=np.float32,
        meta=np.empty((0,) * (len(lead) + 2), np.float32),
    )


def patterns_to_signal(
    patterns: np.ndarray | da.Array,
    nav_axes: list[dict],
    signal_axes: list[dict],
    detector=None,
    title: str = "",
):
    """Wrap patterns ``(*nav, rows, columns)`` as kikuchipy ``EBSD``/``LazyEBSD``.

    ``nav_axes`` and ``signal_axes`` are HyperSpy axis dicts in array order
    (slowest first). The detector is copied.
    """
    from kikuchipy.signals import EBSD, LazyEBSD

    axes = [dict(a, navigate=True) for a in nav_axes]
    axes += [dict(a, navigate=False) for a in signal_axes]
    cls = LazyEBSD if isinstance(patterns, da.Array) else EBSD
    signal = cls(patterns, axes=axes)
    signal.metadata.General.title = title
    if detector is not None:
        signal.detector = copy.deepcopy(detector)
    return signal


def axis_dicts(axes) -> list[dict]:
    """HyperSpy axes (in array order) as plain dicts for :func:`patterns_to_signal`."""
    return [
        {
            "size": int(a.size),
            "scale": float(a.scale),
            "offset": float(a.offset),
            "units": a.units,
            "name": a.name,
        }
        for a in axes
    ]
