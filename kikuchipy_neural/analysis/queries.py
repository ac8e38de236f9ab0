"""Decoding a model into kikuchipy signals, eagerly or lazily.

:func:`decode` turns calibrated positions into patterns, either at once or as
a dask array whose chunks are decoded on demand (memory bounded for any
output size). :func:`patterns_to_signal` wraps patterns as a kikuchipy
``EBSD``/``LazyEBSD`` with calibrated axes and a detector.

On top of these, the signal methods' work: :func:`query_signal` (patterns at
any positions, with the detector's pattern centres interpolated to them),
:func:`upsample_xy` (a finer grid over the scanned area), :func:`path_xy`
(points along a segment) and :func:`fill` (replace some scan points by the
model's patterns).
"""

from __future__ import annotations

import copy

import dask
import dask.array as da
import numpy as np

from kikuchipy_neural.geometry import ScanGeometry
from kikuchipy_neural.model import NeuralEBSDModel

__all__ = [
    "axis_dicts",
    "carry_detector",
    "decode",
    "fill",
    "interpolate_pc",
    "path_xy",
    "patterns_to_signal",
    "query_signal",
    "upsample_xy",
    "want_lazy",
]

# Outputs larger than this are returned lazily when lazy=None.
LAZY_THRESHOLD_BYTES = 1024**3
# Decoded bytes per dask chunk.
_CHUNK_BYTES = 64 * 1024**2


def want_lazy(
    lazy: bool | None, n_points: int, model: NeuralEBSDModel, signal=None
) -> bool:
    """Resolve ``lazy=None``: lazy for lazy input signals or large outputs."""
    if lazy is not None:
        return bool(lazy)
    if signal is not None and getattr(signal, "_lazy", False):
        return True
    return n_points * model.geometry.n_pixels * 4 > LAZY_THRESHOLD_BYTES


def lead_chunks(lead: tuple[int, ...], points_per_chunk: int) -> tuple[int, ...]:
    """Dask chunk sizes along the leading (point) axes ``lead`` for chunks of
    about ``points_per_chunk`` points: whole rows where possible, so that a
    chunk is a contiguous band of the output grid."""
    chunks: list[int] = []
    remaining = points_per_chunk
    for size in reversed(lead):
        take = int(min(size, max(1, remaining)))
        chunks.insert(0, take)
        remaining = max(1, remaining // size)
    return tuple(chunks)


def _decode_block(
    xy_block: np.ndarray, model: NeuralEBSDModel, sharpen_boundaries: bool = False
) -> np.ndarray:
    # Points were checked against the scan once, for the whole request.
    return model.query(
        xy_block, extrapolate=True, sharpen_boundaries=sharpen_boundaries
    )


def decode(
    model: NeuralEBSDModel,
    xy: np.ndarray,
    lazy: bool = False,
    extrapolate: bool = False,
    sharpen_boundaries: bool = False,
) -> np.ndarray | da.Array:
    """Patterns at calibrated positions ``xy`` ``(..., 2)``.

    Returns float32 ``(..., rows, columns)``: numpy, or dask when ``lazy``.
    The model enters the dask graph once (as one delayed object), so a
    distributed scheduler ships it to each worker once, not once per chunk.
    ``sharpen_boundaries`` as in :meth:`NeuralEBSDModel.query`.
    """
    xy = np.asarray(xy, dtype=np.float64)
    model.geometry.check_inside(xy, extrapolate)
    if not lazy:
        return model.query(xy, extrapolate=True, sharpen_boundaries=sharpen_boundaries)
    lead = xy.shape[:-1]
    n_pixels = model.geometry.n_pixels
    per_chunk = max(1, _CHUNK_BYTES // (4 * n_pixels))
    xy_d = da.from_array(xy, chunks=(*lead_chunks(lead, per_chunk), 2))
    model_d = dask.delayed(model, pure=True, traverse=False)
    return da.map_blocks(
        _decode_block,
        xy_d,
        model_d,
        sharpen_boundaries,
        drop_axis=len(lead),
        new_axis=[len(lead), len(lead) + 1],
        chunks=(
            *xy_d.chunks[:-1],
            (model.pattern_shape[0],),
            (model.pattern_shape[1],),
        ),
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


# ------------------------------------------------------ pattern centres


def interpolate_pc(
    detector, geometry: ScanGeometry, xy: np.ndarray
) -> np.ndarray | None:
    """Pattern centres of ``detector`` interpolated to positions ``xy``.

    Parameters
    ----------
    detector
        kikuchipy ``EBSDDetector`` of a scan with ``geometry``.
    geometry
        The scan whose points the detector's PCs belong to.
    xy
        ``(..., 2)`` calibrated positions.

    Returns
    -------
    pc
        ``(..., 3)`` PCs, linear in the position (bilinear on a grid, on the
        Delaunay triangulation of scattered points, extended linearly beyond
        the scan), or None when the detector has a single PC (nothing to
        interpolate) or PCs that do not match the scan's points.
    """
    pc = np.asarray(detector.pc, dtype=np.float64)
    if pc.reshape(-1, 3).shape[0] == 1 or pc.size != 3 * geometry.n_points:
        return None
    return geometry.interpolate(pc.reshape(-1, 3), xy)


def carry_detector(detector, geometry: ScanGeometry, xy: np.ndarray):
    """A copy of ``detector`` for patterns at ``xy`` ``(..., 2)``.

    Per-point PCs are interpolated to the new positions (see
    :func:`interpolate_pc`); a detector with one PC is copied as it is.
    """
    if detector is None:
        return None
    new = copy.deepcopy(detector)
    pc = interpolate_pc(detector, geometry, xy)
    if pc is not None:
        new.pc = pc if pc.ndim > 1 else pc[None]
    elif np.asarray(detector.pc).reshape(-1, 3).shape[0] > 1:
        # PCs that do not belong to the scan's points cannot be placed:
        # their mean is the best single estimate.
        new.pc = np.asarray(detector.pc).reshape(-1, 3).mean(axis=0)
    return new


# --------------------------------------------------------------- queries


def _regular_grid_axes(xy: np.ndarray, units: str) -> list[dict] | None:
    """Calibrated y, x axes if ``xy`` ``(ny, nx, 2)`` is an axis-aligned
    evenly spaced grid, else None."""
    if xy.ndim != 3 or min(xy.shape[:2]) < 2:
        return None
    x, y = xy[..., 0], xy[..., 1]
    dx, dy = x[0, 1] - x[0, 0], y[1, 0] - y[0, 0]
    if dx == 0 or dy == 0:
        return None
    tol = 1e-9 * max(abs(dx), abs(dy), np.abs(xy).max())
    expected_x = x[0, 0] + np.arange(xy.shape[1]) * dx
    expected_y = y[0, 0] + np.arange(xy.shape[0]) * dy
    if (
        np.abs(x - expected_x[None, :]).max() > tol
        or np.abs(y - expected_y[:, None]).max() > tol
    ):
        return None
    return [
        {
            "size": xy.shape[0],
            "scale": float(dy),
            "offset": float(y[0, 0]),
            "units": units,
            "name": "y",
        },
        {
            "size": xy.shape[1],
            "scale": float(dx),
            "offset": float(x[0, 0]),
            "units": units,
            "name": "x",
        },
    ]


def _index_axes(lead: tuple[int, ...]) -> list[dict]:
    names = ["point"] if len(lead) == 1 else [f"index {k}" for k in range(len(lead))]
    return [
        {"size": int(n), "scale": 1.0, "offset": 0.0, "units": "", "name": name}
        for n, name in zip(lead, names, strict=True)
    ]


def query_signal(
    model: NeuralEBSDModel,
    xy,
    *,
    lazy: bool | None = None,
    extrapolate: bool = False,
    sharpen_boundaries: bool = False,
    nav_axes: list[dict] | None = None,
    detector=None,
    detector_geometry: ScanGeometry | None = None,
    signal_axes: list[dict] | None = None,
    static_background=None,
    signal=None,
    title: str = "",
):
    """Patterns at calibrated positions as a kikuchipy ``EBSD``/``LazyEBSD``.

    Parameters
    ----------
    model
        The fitted model.
    xy
        ``(..., 2)`` calibrated ``(x, y)``; the navigation shape of the
        result is ``xy.shape[:-1]``.
    lazy
        None: lazy for lazy ``signal`` or outputs above 1 GiB.
    extrapolate
        Allow points outside the scanned rectangle (else ``ValueError``).
    sharpen_boundaries
        Decode with :meth:`NeuralEBSDModel.query`'s boundary sharpening.
    nav_axes
        Axis dicts of the navigation axes (array order); default: calibrated
        y, x axes when ``xy`` is an evenly spaced grid, else index axes.
    detector, detector_geometry
        The detector to carry over and the scan its PCs belong to (default:
        the model's detector and geometry).
    signal_axes
        Axis dicts of the detector axes; default: pixel axes ``dy, dx``.
    static_background
        Copied to the result (so ``remove_static_background`` works on it).
    signal
        The signal the query comes from (only to resolve ``lazy=None``).
    title
        Title of the result.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim == 0 or xy.shape[-1] != 2:
        raise ValueError(
            f"xy must have a last axis of length 2 (x, y), got shape {xy.shape}"
        )
    geometry = model.geometry
    geometry.check_inside(xy, extrapolate)
    lead = xy.shape[:-1]
    lazy = want_lazy(lazy, int(np.prod(lead)), model, signal)
    patterns = decode(
        model, xy, lazy=lazy, extrapolate=True, sharpen_boundaries=sharpen_boundaries
    )
    if nav_axes is None:
        nav_axes = _regular_grid_axes(xy, geometry.units) or _index_axes(lead)
    if signal_axes is None:
        h, w = geometry.pattern_shape
        signal_axes = [
            {"size": h, "scale": 1.0, "offset": 0.0, "units": "px", "name": "dy"},
            {"size": w, "scale": 1.0, "offset": 0.0, "units": "px", "name": "dx"},
        ]
    if detector is None:
        detector, detector_geometry = model.detector, geometry
    out = patterns_to_signal(
        patterns,
        nav_axes,
        signal_axes,
        detector=carry_detector(detector, detector_geometry or geometry, xy),
        title=title,
    )
    if static_background is not None:
        # In the patterns' dtype, as kikuchipy expects of a background.
        out.static_background = static_background.astype(np.float32)
    return out


def upsample_xy(geometry: ScanGeometry, factor: float) -> tuple[np.ndarray, list[dict]]:
    """Positions and axes of a grid ``factor`` times finer over the scan.

    A grid scan is refined with :meth:`ScanGeometry.grid_xy` (axes keep the
    scan's offsets, steps divided by ``factor``); a scattered scan is
    resampled onto a square grid of spacing ``step / factor``. A line scan
    (one row) stays a line.

    Returns
    -------
    xy
        ``(ny', nx', 2)`` or, for a line scan, ``(nx', 2)``.
    nav_axes
        Matching axis dicts (array order).
    """
    if isinstance(factor, bool) or not isinstance(factor, int | float | np.number):
        raise TypeError(f"factor must be a number, got {factor!r}")
    factor = float(factor)
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be a positive number, got {factor}")
    g = geometry
    if g.scattered:
        step = g.step / factor
        xy = g.square_grid_xy(step)
        dx = dy = step
        x0, y0 = g.x_range[0], g.y_range[0]
    else:
        xy = g.grid_xy(factor)
        dx, dy, x0, y0 = g.dx / factor, g.dy / factor, g.x0, g.y0
    axes = [
        {"size": xy.shape[0], "scale": dy, "offset": y0, "units": g.units, "name": "y"},
        {"size": xy.shape[1], "scale": dx, "offset": x0, "units": g.units, "name": "x"},
    ]
    if not g.scattered and g.ny == 1:
        return xy[0], axes[1:]
    return xy, axes


def path_xy(start, end, n: int) -> tuple[np.ndarray, float]:
    """``n`` evenly spaced points from ``start`` to ``end``, both included.

    Returns the ``(n, 2)`` points (the ends exactly as given) and the
    segment's length.
    """
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    for name, p in (("start", start), ("end", end)):
        if p.shape != (2,) or not np.all(np.isfinite(p)):
            raise ValueError(f"{name} must be two finite numbers (x, y), got {p!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(
            f"n must be an integer >= 2 (both ends are included), got {n!r}"
        )
    length = float(np.hypot(*(end - start)))
    if length == 0:
        raise ValueError("start and end are the same point: a path needs a length")
    t = np.linspace(0.0, 1.0, int(n))[:, None]
    xy = start + t * (end - start)
    xy[0], xy[-1] = start, end
    return xy, length


# ------------------------------------------------------------------- fill


def _cast(patterns: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Decoded float patterns in the data's dtype (rounded, clipped for ints)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(patterns), info.min, info.max).astype(dtype)
    return patterns.astype(dtype, copy=False)


def _fill_block(block, model, mask, xy, sharpen_boundaries, block_info=None):
    location = block_info[0]["array-location"][:-2]
    index = tuple(slice(a, b) for a, b in location)
    replace = mask[index]
    if not replace.any():
        return block
    out = np.array(block, copy=True)
    decoded = model.query(
        xy[index][replace], extrapolate=True, sharpen_boundaries=sharpen_boundaries
    )
    out[replace] = _cast(decoded, out.dtype)
    return out


def fill(
    model: NeuralEBSDModel,
    data,
    mask: np.ndarray,
    xy: np.ndarray,
    sharpen_boundaries: bool = False,
):
    """``data`` with the patterns at ``mask`` replaced by the model's.

    Parameters
    ----------
    model
        The fitted model.
    data
        numpy or dask array ``(*nav, rows, columns)``.
    mask
        Boolean ``nav`` array, True where the pattern is replaced.
    xy
        ``(*nav, 2)`` calibrated positions of the scan points.
    sharpen_boundaries
        Decode with :meth:`NeuralEBSDModel.query`'s boundary sharpening.

    Returns
    -------
    filled
        A new array of ``data``'s type, dtype and shape (decoded intensities
        rounded and clipped for integer data); dask input gives a dask array
        whose chunks decode only their own masked points.
    """
    if isinstance(data, da.Array):
        data = data.rechunk({data.ndim - 2: -1, data.ndim - 1: -1})
        return da.map_blocks(
            _fill_block,
            data,
            dask.delayed(model, pure=True, traverse=False),
            dask.delayed(np.asarray(mask), pure=True),
            dask.delayed(np.asarray(xy), pure=True),
            sharpen_boundaries,
            dtype=data.dtype,
            meta=np.empty((0,) * data.ndim, data.dtype),
        )
    out = np.array(data, copy=True)
    idx = np.flatnonzero(mask)
    flat_out = out.reshape(-1, *out.shape[-2:])
    flat_xy = np.asarray(xy).reshape(-1, 2)
    step = max(1, _CHUNK_BYTES // (4 * model.geometry.n_pixels))
    for start in range(0, len(idx), step):
        chunk = idx[start : start + step]
        decoded = model.query(
            flat_xy[chunk], extrapolate=True, sharpen_boundaries=sharpen_boundaries
        )
        flat_out[chunk] = _cast(decoded, out.dtype)
    return out
