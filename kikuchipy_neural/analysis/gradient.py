"""Diffraction gradient: spatial derivatives of a field, by autograd.

``S(x, y) = ||d descriptor / d(x, y)||_F`` where the descriptor is the
factorized field's coefficient vector (in pattern units) or the joint field's
whole pattern. Derivatives come from forward-mode automatic differentiation:
two Jacobian-vector products (one per scan direction) give every output's
d/dx and d/dy at the cost of about two forward passes, never by finite
differences.

Everything here reaches the field through
:meth:`~kikuchipy_neural.NeuralEBSDModel.gradient` (chunked, chain rule to
calibrated units), which calls :func:`spatial_jacobian`, which calls
:meth:`~kikuchipy_neural.fields.NeuralField.descriptor`: one path for every
formulation.

Besides the norm ``S``, the 2 x 2 structure tensor ``T = J^T J`` of the
Jacobian ``J`` (descriptor components x (x, y)) gives the direction in which
the patterns change fastest (its leading eigenvector, the boundary normal at a
boundary) and how one-directional the change is (the coherence
``(l1 - l2) / (l1 + l2)``, 1 across a straight boundary).
"""

from __future__ import annotations

import math
import threading

import dask
import dask.array as da
import numpy as np
import torch
from torch.func import jvp

from kikuchipy_neural.analysis.queries import (
    check_fits_in_memory,
    check_inside,
    lead_chunks,
)
from kikuchipy_neural.fields.base import NeuralField

__all__ = [
    "evaluate_gradient",
    "gradient_signal",
    "spatial_jacobian",
    "structure_tensor",
    "tensor_to_normal",
]

# torch's forward-mode AD levels are process-wide state: two threads (e.g.
# dask's threaded scheduler computing two chunks) entering jvp at once corrupt
# each other's levels. One Jacobian at a time; torch still uses every core
# inside each one.
_JVP_LOCK = threading.Lock()

# Outputs larger than this are returned lazily when lazy=None.
LAZY_THRESHOLD_BYTES = 1024**3
# Points per dask chunk / per progress-bar step of an eager evaluation. The
# model chunks further inside (bounded by its network width).
_POINTS_PER_BLOCK = 2**16


def spatial_jacobian(field: NeuralField, xy: torch.Tensor) -> torch.Tensor:
    """Jacobian of ``field.descriptor`` with respect to network coordinates.

    Parameters
    ----------
    field
        Any neural field.
    xy
        ``(n, 2)`` network coordinates.

    Returns
    -------
    jacobian
        ``(n, d, 2)``: ``[..., 0]`` is d/dx, ``[..., 1]`` is d/dy.
    """
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must have shape (n, 2), got {tuple(xy.shape)}")
    columns = []
    with _JVP_LOCK, torch.no_grad():  # forward-mode AD needs no backward graph
        for axis in range(2):
            tangent = torch.zeros_like(xy)
            tangent[:, axis] = 1.0
            _, derivative = jvp(field.descriptor, (xy,), (tangent,))
            columns.append(derivative)
    return torch.stack(columns, dim=-1)


# --------------------------------------------------------------- tensors


def structure_tensor(jacobian: np.ndarray) -> np.ndarray:
    """``T = J^T J`` of Jacobians ``(..., d, 2)`` -> ``(..., 3)``.

    Returns the three distinct entries ``(Txx, Txy, Tyy)``; ``S**2`` is
    ``Txx + Tyy``. Summing tensors (not normals) is how directions of several
    points are averaged without the sign ambiguity of a normal.
    """
    j = np.asarray(jacobian, dtype=np.float64)
    gx, gy = j[..., 0], j[..., 1]
    return np.stack(
        [(gx * gx).sum(-1), (gx * gy).sum(-1), (gy * gy).sum(-1)], axis=-1
    ).astype(np.float32)


def tensor_to_normal(tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S, unit normal and coherence from structure tensors ``(..., 3)``.

    Returns
    -------
    S
        ``(...)``: ``sqrt(Txx + Tyy)``, the Frobenius norm of the Jacobian.
    normal
        ``(..., 2)`` unit ``(nx, ny)``: the leading eigenvector of ``T``, the
        direction of fastest change (sign arbitrary).
    coherence
        ``(...)`` in [0, 1]: ``(l1 - l2) / (l1 + l2)``; 0 where ``S`` is 0.
    """
    t = np.asarray(tensor, dtype=np.float64)
    txx, txy, tyy = t[..., 0], t[..., 1], t[..., 2]
    trace = txx + tyy
    split = np.hypot(txx - tyy, 2 * txy)  # l1 - l2
    theta = 0.5 * np.arctan2(2 * txy, txx - tyy)
    normal = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        coherence = np.where(trace > 0, split / trace, 0.0)
    return np.sqrt(trace).astype(np.float32), normal, coherence.astype(np.float32)


# ------------------------------------------------------------ evaluation


def _want_lazy(lazy: bool | None, nbytes: int, n_points: int = 0) -> bool:
    """Resolve ``lazy=None`` for ``nbytes`` of output at ``n_points``; an
    eager result (with its coordinates) larger than the memory available
    raises ``ValueError``."""
    lazy = bool(lazy) if lazy is not None else nbytes > LAZY_THRESHOLD_BYTES
    if not lazy:
        check_fits_in_memory(
            nbytes + 16 * n_points, f"the diffraction gradient at {n_points} points"
        )
    return lazy


def _gradient_block(xy_block: np.ndarray, model, kind: str) -> np.ndarray:
    # Points were checked against the scan once, for the whole request.
    if kind == "norm":
        return model.gradient(xy_block, extrapolate=True)
    jac = model.gradient(xy_block, extrapolate=True, per_component=True)
    return jac if kind == "jacobian" else structure_tensor(jac)


def evaluate_gradient(
    model,
    xy,
    kind: str = "norm",
    lazy: bool | None = False,
    extrapolate: bool = False,
    show_progressbar: bool | None = None,
) -> np.ndarray | da.Array:
    """Diffraction gradient at calibrated positions, eagerly or lazily.

    Parameters
    ----------
    model
        A :class:`~kikuchipy_neural.NeuralEBSDModel`.
    xy
        ``(..., 2)`` calibrated positions.
    kind
        ``"norm"``: ``S`` ``(...)``; ``"jacobian"``: ``(..., d, 2)``, the
        derivative of every descriptor component (per-coefficient gradients of
        a factorized field, in pattern units); ``"tensor"``: the structure
        tensor ``(..., 3)`` (see :func:`structure_tensor`).
    lazy
        Return a dask array computed chunk by chunk on demand (the model
        enters the graph once). None: lazy above 1 GiB of output.
    extrapolate
        Allow points outside the scanned rectangle.
    show_progressbar
        Progress bar over blocks of an eager evaluation (None: HyperSpy's
        preference).

    Returns
    -------
    values
        float32 numpy or dask array, see ``kind``.
    """
    if kind not in ("norm", "jacobian", "tensor"):
        raise ValueError(f"kind must be 'norm', 'jacobian' or 'tensor', got {kind!r}")
    # A dask xy (a lazy grid) stays lazy: its chunks are computed on demand.
    if isinstance(xy, da.Array):
        xy = xy.astype(np.float64)
    else:
        xy = np.asarray(xy, dtype=np.float64)
    check_inside(model.geometry, xy, extrapolate)
    lead = xy.shape[:-1]
    n = math.prod(lead)
    tail: tuple[int, ...] = ()
    if kind != "norm":
        first = np.asarray(xy[(0,) * len(lead)]).reshape(1, 2)
        d = model.gradient(first, extrapolate=True, per_component=True)
        tail = d.shape[1:] if kind == "jacobian" else (3,)
    if _want_lazy(lazy, 4 * n * math.prod(tail), n):
        return _lazy_gradient(model, xy, kind, tail)
    flat = np.asarray(xy).reshape(-1, 2)
    out = np.empty((n, *tail), np.float32)
    starts = range(0, n, _POINTS_PER_BLOCK)
    from tqdm.auto import tqdm

    for start in tqdm(
        starts,
        desc="Diffraction gradient",
        unit="block",
        disable=not _show_progressbar(show_progressbar) or len(starts) < 2,
    ):
        block = flat[start : start + _POINTS_PER_BLOCK]
        out[start : start + len(block)] = _gradient_block(block, model, kind)
    return out.reshape(*lead, *tail)


def _lazy_gradient(model, xy: np.ndarray, kind: str, tail: tuple[int, ...]) -> da.Array:
    lead = xy.shape[:-1]
    chunks = (*lead_chunks(lead, _POINTS_PER_BLOCK), 2)
    if isinstance(xy, da.Array):
        xy_d = xy.rechunk(chunks)
    else:
        xy_d = da.from_array(xy, chunks=chunks)
    model_d = dask.delayed(model, pure=True, traverse=False)
    nlead = len(lead)
    kwargs: dict = dict(
        dtype=np.float32, meta=np.empty((0,) * (nlead + len(tail)), np.float32)
    )
    if not tail:
        return da.map_blocks(
            _gradient_block, xy_d, model_d, kind, drop_axis=nlead,
            chunks=xy_d.chunks[:-1], **kwargs,
        )  # fmt: skip
    new_axes = list(range(nlead + 1, nlead + len(tail)))
    return da.map_blocks(
        _gradient_block,
        xy_d,
        model_d,
        kind,
        new_axis=new_axes or None,
        chunks=(*xy_d.chunks[:-1], *((s,) for s in tail)),
        **kwargs,
    )


def _show_progressbar(show: bool | None) -> bool:
    if show is not None:
        return bool(show)
    from hyperspy.defaults_parser import preferences

    return bool(preferences.General.show_progressbar)


# -------------------------------------------------------------- wrapping


def gradient_signal(
    model,
    factor: float = 1,
    lazy: bool | None = None,
    title: str = "",
    show_progressbar: bool | None = None,
):
    """``S`` on a grid ``factor`` times finer than the scan, as a signal.

    Parameters
    ----------
    model
        A :class:`~kikuchipy_neural.NeuralEBSDModel`.
    factor
        Grid refinement (any positive number), the grid of
        :meth:`~kikuchipy_neural.signals.NeuralEBSD.upsample`: the scan's
        first corner, steps divided by ``factor``; a scan fitted at explicit
        positions is sampled on a square grid of spacing ``step / factor``.
    lazy
        Return a lazy signal computed chunk by chunk on demand. None: lazy
        above 1 GiB.
    title
        Title of the signal.
    show_progressbar
        Progress bar of an eager evaluation.

    Returns
    -------
    hyperspy.signals.Signal2D
        float32 image ``(ny', nx')`` with signal axes y, x calibrated as the
        scan (a ``Signal1D`` along x for a line scan). The value is the
        descriptor's change per calibrated unit, in the field's normalised
        intensity units (the measured range ``model.intensity_range`` maps to
        [0, 1]), summed in quadrature over the detector.
    """
    from hyperspy.signals import LazySignal1D, LazySignal2D, Signal1D, Signal2D

    from kikuchipy_neural.analysis.queries import upsample_shape, upsample_xy

    geometry = model.geometry
    # Lazy or not first: a lazy grid is built per chunk (memory bounded for
    # any factor), an eager one larger than memory is refused.
    n = math.prod(upsample_shape(geometry, factor))
    lazy = _want_lazy(lazy, 4 * n, n)
    xy, axes = upsample_xy(
        geometry, factor, lazy=lazy, points_per_chunk=_POINTS_PER_BLOCK
    )
    s_map = evaluate_gradient(
        model, xy, "norm", lazy=lazy, show_progressbar=show_progressbar
    )
    lazy_out = isinstance(s_map, da.Array)
    if len(axes) == 2:
        cls = LazySignal2D if lazy_out else Signal2D
    else:
        cls = LazySignal1D if lazy_out else Signal1D
    signal = cls(s_map, axes=[dict(a, navigate=False) for a in axes])
    signal.metadata.General.title = title or "Diffraction gradient"
    signal.metadata.set_item("Signal.quantity", f"S (1 / {geometry.units})")
    signal.metadata.set_item(
        "Signal.neural_gradient",
        {
            "factor": float(factor),
            "formulation": model.formulation,
            "definition": "||d descriptor / d(x, y)||_F by forward-mode autograd",
        },
    )
    return signal
