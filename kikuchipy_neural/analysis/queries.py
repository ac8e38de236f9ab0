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
import math
import os

import dask
import dask.array as da
import numpy as np

from kikuchipy_neural.geometry import ScanGeometry
from kikuchipy_neural.model import NeuralEBSDModel

__all__ = [
    "axis_dicts",
    "available_memory",
    "carry_detector",
    "check_fits_in_memory",
    "decode",
    "fill",
    "interpolate_pc",
    "path_xy",
    "patterns_to_signal",
    "query_signal",
    "upsample_shape",
    "upsample_xy",
    "want_lazy",
]

# Outputs larger than this are returned lazily when lazy=None.
LAZY_THRESHOLD_BYTES = 1024**3
# Decoded bytes per dask chunk.
_CHUNK_BYTES = 64 * 1024**2


def _address_space_left() -> int | None:
    """What ``ulimit -v`` (``RLIMIT_AS``) leaves this process, if set."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as f:
            size = next(int(x.split()[1]) for x in f if x.startswith("VmSize"))
    except (ImportError, OSError, StopIteration, ValueError):
        return None
    return max(0, limit - size * 1024)


def available_memory() -> int | None:
    """Bytes of memory available to this process now (the system's, or
    less under ``ulimit -v``), or None if unknown."""
    try:
        import psutil

        system = int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with dask's and hyperspy's extras
        try:
            system = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            system = None
    left = _address_space_left()
    known = [v for v in (system, left) if v is not None]
    return min(known) if known else None


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Raise ``ValueError`` when an eager result of ``nbytes`` would not fit
    in the memory available (``what`` names it): before it is allocated,
    not as a ``MemoryError`` (or the OOM killer) minutes later."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise ValueError(
            f"{what} would take {nbytes / 1024**3:.3g} GiB, more than the "
            f"{available / 1024**3:.3g} GiB of memory available; pass lazy=True for "
            "a result computed chunk by chunk (bounded memory for any size)"
        )


def want_lazy(
    lazy: bool | None, n_points: int, model: NeuralEBSDModel, signal=None
) -> bool:
    """Resolve ``lazy=None``: lazy for lazy input signals or large outputs.

    An eager result (patterns and their coordinates) larger than the memory
    available raises ``ValueError`` (:func:`check_fits_in_memory`).
    """
    if lazy is None:
        lazy = bool(signal is not None and getattr(signal, "_lazy", False))
        lazy = lazy or n_points * model.geometry.n_pixels * 4 > LAZY_THRESHOLD_BYTES
    if not lazy:
        check_fits_in_memory(
            n_points * (model.geometry.n_pixels * 4 + 16),
            f"{n_points} decoded patterns",
        )
    return bool(lazy)


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
    xy = _coordinates(xy)
    check_inside(model.geometry, xy, extrapolate)
    if not lazy:
        return model.query(
            np.asarray(xy), extrapolate=True, sharpen_boundaries=sharpen_boundaries
        )
    lead = xy.shape[:-1]
    chunks = (*lead_chunks(lead, points_per_chunk(model)), 2)
    if isinstance(xy, da.Array):
        xy_d = xy.rechunk(chunks)
    else:
        xy_d = da.from_array(xy, chunks=chunks)
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


def points_per_chunk(model: NeuralEBSDModel) -> int:
    """Points per dask chunk of decoded patterns (about 64 MiB)."""
    return max(1, _CHUNK_BYTES // (4 * model.geometry.n_pixels))


def _coordinates(xy) -> np.ndarray | da.Array:
    """``xy`` as float64, numpy unless it is a dask array (kept lazy)."""
    if isinstance(xy, da.Array):
        return xy.astype(np.float64)
    return np.asarray(xy, dtype=np.float64)


def check_inside(geometry: ScanGeometry, xy, extrapolate: bool) -> None:
    """:meth:`ScanGeometry.check_inside` for numpy ``xy``; for a dask ``xy``
    (a lazy grid or path, monotonic along each axis: see
    :func:`lazy_grid_xy`) only its first and last points, so that no chunk
    but theirs is computed."""
    if not isinstance(xy, da.Array):
        geometry.check_inside(xy, extrapolate)
        return
    if xy.ndim < 1 or xy.shape[-1] != 2:
        raise ValueError(f"xy must have a last axis of length 2, got {xy.shape}")
    if 0 in xy.shape:
        return
    k = xy.ndim - 1
    ends = np.stack([np.asarray(xy[(0,) * k]), np.asarray(xy[(-1,) * k])])
    geometry.check_inside(ends, extrapolate)


def _grid_block(
    x0: float, sx: float, y0: float, sy: float, div: float, block_info=None
) -> np.ndarray:
    """One chunk ``(rows, columns, 2)`` of :func:`lazy_grid_xy`'s grid."""
    (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
    # The same arithmetic as ScanGeometry.grid_xy, per index: equal values.
    xs = x0 + np.arange(c0, c1) * sx / div
    ys = y0 + np.arange(r0, r1) * sy / div
    x, y = np.meshgrid(xs, ys)
    return np.stack([x, y], axis=-1)


def lazy_grid_xy(
    x0: float,
    sx: float,
    nx: int,
    y0: float,
    sy: float,
    ny: int,
    points_per_chunk: int,
    div: float = 1.0,
) -> da.Array:
    """The grid ``(x0 + j * sx / div, y0 + i * sy / div)``, ``(ny, nx, 2)``, as a dask
    array whose chunks (bands of about ``points_per_chunk`` points) are
    computed on demand: memory bounded for any size, where a numpy grid of
    a factor 1000 refinement took 2 GB before anything was decoded."""
    chunks = (*lead_chunks((ny, nx), points_per_chunk), 2)
    normalised = da.core.normalize_chunks(chunks, (ny, nx, 2))
    return da.map_blocks(
        _grid_block,
        float(x0),
        float(sx),
        float(y0),
        float(sy),
        float(div),
        chunks=normalised,
        dtype=np.float64,
        meta=np.empty((0, 0, 0), np.float64),
    )


def _path_block(start, end, n: int, block_info=None) -> np.ndarray:
    """One chunk of :func:`path_xy`'s points."""
    (i0, i1), _ = block_info[None]["array-location"]
    # np.linspace(0, 1, n)'s values.
    t = (np.arange(i0, i1) * (1.0 / (n - 1)))[:, None]
    xy = start + t * (end - start)
    # The ends exactly as given.
    if i0 == 0:
        xy[0] = start
    if i1 == n:
        xy[-1] = end
    return xy


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
    if isinstance(xy, da.Array):
        per_point = np.asarray(detector.pc).reshape(-1, 3).shape[0] > 1
        if per_point and np.asarray(detector.pc).size == 3 * geometry.n_points:
            # A detector holds its PCs as one numpy array: one per point.
            n = math.prod(xy.shape[:-1])
            check_fits_in_memory(
                n * 2 * 3 * 8, f"the detector's {n} interpolated pattern centres"
            )
        xy = np.asarray(xy) if per_point else xy[(0,) * (xy.ndim - 1)][None]
        xy = np.asarray(xy)
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
    xy = _coordinates(xy)
    if xy.ndim == 0 or xy.shape[-1] != 2:
        raise ValueError(
            f"xy must have a last axis of length 2 (x, y), got shape {xy.shape}"
        )
    geometry = model.geometry
    check_inside(geometry, xy, extrapolate)
    lead = xy.shape[:-1]
    lazy = want_lazy(lazy, math.prod(lead), model, signal)
    patterns = decode(
        model, xy, lazy=lazy, extrapolate=True, sharpen_boundaries=sharpen_boundaries
    )
    # HyperSpy builds every axis's coordinates (8 bytes a point), lazy
    # signals' too: a path of 10^9 points needs 8 GB for its axis alone.
    check_fits_in_memory(8 * sum(lead), f"HyperSpy's axes of {lead} points")
    if nav_axes is None and isinstance(xy, da.Array):
        nav_axes = _index_axes(lead)
    elif nav_axes is None:
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


def _upsample_grid(
    geometry: ScanGeometry, factor: float
) -> tuple[float, float, int, float, float, int, float]:
    """``(x0, sx, nx, y0, sy, ny, div)`` of :func:`upsample_xy`'s grid
    (steps ``sx / div``, ``sy / div``)."""
    if isinstance(factor, bool) or not isinstance(factor, int | float | np.number):
        raise TypeError(f"factor must be a number, got {factor!r}")
    factor = float(factor)
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be a positive number, got {factor}")
    g = geometry
    if g.scattered:
        # As ScanGeometry.square_grid_xy.
        step = g.step / factor
        (xa, xb), (ya, yb) = g.x_range, g.y_range
        nx = int(np.floor((xb - xa) / step + 1e-9)) + 1
        ny = int(np.floor((yb - ya) / step + 1e-9)) + 1
        return xa, step, nx, ya, step, ny, 1.0
    ny, nx = g.fine_shape(factor)
    return g.x0, g.dx, nx, g.y0, g.dy, ny, factor


def upsample_shape(geometry: ScanGeometry, factor: float) -> tuple[int, ...]:
    """The navigation shape of :func:`upsample_xy`'s grid, without it."""
    _, _, nx, _, _, ny, _ = _upsample_grid(geometry, factor)
    if not geometry.scattered and geometry.ny == 1:
        return (nx,)
    return (ny, nx)


def upsample_xy(
    geometry: ScanGeometry,
    factor: float,
    lazy: bool = False,
    points_per_chunk: int = 2**16,
) -> tuple[np.ndarray | da.Array, list[dict]]:
    """Positions and axes of a grid ``factor`` times finer over the scan.

    With ``lazy``, the positions are a dask array computed per chunk of
    about ``points_per_chunk`` points (:func:`lazy_grid_xy`): memory
    bounded for any factor.

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
    g = geometry
    x0, sx, nx, y0, sy, ny, div = _upsample_grid(g, factor)
    if lazy:
        xy = lazy_grid_xy(x0, sx, nx, y0, sy, ny, points_per_chunk, div)
    else:
        check_fits_in_memory(nx * ny * 16, f"the coordinates of {nx} x {ny} points")
        xy = _grid_block(
            x0, sx, y0, sy, div, {None: {"array-location": _whole(ny, nx)}}
        )
    dx, dy = sx / div, sy / div
    axes = [
        {"size": ny, "scale": dy, "offset": y0, "units": g.units, "name": "y"},
        {"size": nx, "scale": dx, "offset": x0, "units": g.units, "name": "x"},
    ]
    if not g.scattered and g.ny == 1:
        return xy[0], axes[1:]
    return xy, axes


def _whole(ny: int, nx: int) -> list[tuple[int, int]]:
    """The ``array-location`` of a whole ``(ny, nx, 2)`` grid."""
    return [(0, ny), (0, nx), (0, 2)]


def path_xy(
    start, end, n: int, lazy: bool = False, points_per_chunk: int = 2**16
) -> tuple[np.ndarray | da.Array, float]:
    """``n`` evenly spaced points from ``start`` to ``end``, both included.

    Returns the ``(n, 2)`` points (the ends exactly as given) and the
    segment's length. With ``lazy``, the points are a dask array computed
    per chunk of ``points_per_chunk`` (memory bounded for any ``n``);
    eager points that would not fit in memory raise ``ValueError``.
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
    n = int(n)
    if lazy:
        chunks = da.core.normalize_chunks((points_per_chunk, 2), (n, 2))
        xy = da.map_blocks(
            _path_block,
            start,
            end,
            n,
            chunks=chunks,
            dtype=np.float64,
            meta=np.empty((0, 0), np.float64),
        )
        return xy, length
    check_fits_in_memory(n * 16, f"the coordinates of {n} points")
    return _path_block(
        start, end, n, {None: {"array-location": [(0, n), (0, 2)]}}
    ), length


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
