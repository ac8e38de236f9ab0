"""Figures of the diffraction gradient and of grain boundaries.

:func:`plot_boundaries` draws an ``S`` map with the sub-step boundary traces
of :func:`~kikuchipy_neural.analysis.boundaries.ridge_trace` and the
pixel-edge boundaries of an indexed map
(:func:`~kikuchipy_neural.analysis.boundaries.orientation_boundaries`) on
top, as the paper's Fig. 7; :func:`plot_profile` draws ``S`` along a straight
path.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gradient_profile", "plot_boundaries", "plot_profile"]


def _as_model(model_or_signal):
    """A model, from a model or a signal with one attached."""
    if hasattr(model_or_signal, "_require_model"):
        return model_or_signal._require_model()
    if hasattr(model_or_signal, "gradient") and hasattr(model_or_signal, "geometry"):
        return model_or_signal
    raise TypeError(
        "Expected a NeuralEBSDModel or a NeuralEBSD signal with a model, got "
        f"{type(model_or_signal).__name__}"
    )


def _signal_extent(signal) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) of a Signal2D image."""
    ax_x, ax_y = signal.axes_manager.signal_axes
    x, y = ax_x.axis, ax_y.axis
    hx = ax_x.scale / 2
    hy = ax_y.scale / 2
    return (x[0] - hx, x[-1] + hx, y[-1] + hy, y[0] - hy)


def plot_boundaries(
    s_map,
    trace=None,
    orientation=None,
    ax=None,
    log: bool = True,
    cmap: str = "gray",
    trace_color: str = "tab:red",
    orientation_colors=("tab:cyan", "tab:orange"),
    legend: bool = True,
    colorbar: bool = True,
):
    """``S`` map with boundaries from the field and from indexing on top.

    Parameters
    ----------
    s_map
        ``Signal2D`` from :meth:`~kikuchipy_neural.signals.NeuralEBSD.diffraction_gradient`
        (lazy ones are computed).
    trace
        :class:`~kikuchipy_neural.analysis.boundaries.BoundaryTrace` to draw
        as lines, or None.
    orientation
        :class:`~kikuchipy_neural.analysis.boundaries.OrientationBoundaries`
        to draw as pixel-edge segments, one colour per angle class, or None.
    ax
        Matplotlib axes; default a new figure.
    log
        Show ``log10 S`` (boundaries span orders of magnitude).
    cmap
        Colour map of the image.
    trace_color, orientation_colors
        Line colours.
    legend, colorbar
        Whether to add them.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    if (
        getattr(s_map, "axes_manager", None) is None
        or s_map.axes_manager.signal_dimension != 2
    ):
        raise TypeError("s_map must be the Signal2D of diffraction_gradient()")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 6))
    data = np.asarray(s_map.data.compute() if s_map._lazy else s_map.data, np.float64)
    if log:
        positive = data[data > 0]
        floor = positive.min() if positive.size else 1.0
        data = np.log10(np.maximum(data, floor))
    image = ax.imshow(
        data, cmap=cmap, extent=_signal_extent(s_map), interpolation="nearest"
    )
    if orientation is not None:
        orientation.plot(ax, colors=orientation_colors, linewidth=1.2)
    if trace is not None:
        trace.plot(ax, color=trace_color, linewidth=1.0, label="S ridges (field)")
    ax.set_xlim(*_signal_extent(s_map)[:2])
    ax.set_ylim(*_signal_extent(s_map)[2:])
    units = s_map.axes_manager.signal_axes[0].units
    ax.set_xlabel(f"x ({units})")
    ax.set_ylabel(f"y ({units})")
    if colorbar:
        label = "log10 S" if log else "S"
        quantity = s_map.metadata.get_item("Signal.quantity", "")
        plt.colorbar(
            image,
            ax=ax,
            shrink=0.8,
            label=f"{label} [{quantity}]" if quantity else label,
        )
    if legend and (trace is not None or orientation is not None):
        ax.legend(loc="upper right", fontsize="small", framealpha=0.8)
    return ax


def gradient_profile(
    model_or_signal, start, end, n: int = 200, extrapolate: bool = False
):
    """``S`` along a straight segment.

    Parameters
    ----------
    model_or_signal
        A :class:`~kikuchipy_neural.NeuralEBSDModel` or a signal with one.
    start, end
        ``(x, y)`` ends, calibrated units (both included).
    n
        Number of samples (>= 2).
    extrapolate
        Allow ends outside the scan.

    Returns
    -------
    distance
        ``(n,)`` distance from ``start``, calibrated units.
    s
        ``(n,)`` ``S`` at those points (autograd, exact at each point).
    """
    from kikuchipy_neural.analysis.gradient import evaluate_gradient
    from kikuchipy_neural.analysis.queries import path_xy

    model = _as_model(model_or_signal)
    xy, length = path_xy(start, end, n)
    s = evaluate_gradient(model, xy, "norm", extrapolate=extrapolate)
    return np.linspace(0.0, length, len(xy)), s


def plot_profile(
    model_or_signal,
    start,
    end,
    n: int = 200,
    ax=None,
    trace=None,
    orientation=None,
    tolerance: float | None = None,
    extrapolate: bool = False,
    label: str | None = None,
):
    """``S`` along a straight path, with the boundaries it crosses marked.

    Parameters
    ----------
    model_or_signal
        A :class:`~kikuchipy_neural.NeuralEBSDModel` or a signal with one.
    start, end
        ``(x, y)`` ends of the path, calibrated units.
    n
        Number of samples.
    ax
        Matplotlib axes; default a new figure.
    trace
        A :class:`~kikuchipy_neural.analysis.boundaries.BoundaryTrace`: its
        points within ``tolerance`` of the path are marked (solid lines).
    orientation
        :class:`~kikuchipy_neural.analysis.boundaries.OrientationBoundaries`:
        its midpoints within ``tolerance`` of the path are marked (dashed).
    tolerance
        Distance from the path for the marks; default half a scan step.
    extrapolate
        Allow ends outside the scan.
    label
        Legend label of the curve.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    model = _as_model(model_or_signal)
    distance, s = gradient_profile(model, start, end, n, extrapolate)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3))
    ax.plot(distance, s, "-", color="k", label=label or "S")
    tol = model.geometry.step / 2 if tolerance is None else float(tolerance)
    start = np.asarray(start, float)
    end = np.asarray(end, float)
    for name, points, style in (
        (
            "S ridge",
            None if trace is None else trace.points,
            dict(color="tab:red", ls="-"),
        ),
        (
            "indexed boundary",
            None if orientation is None else orientation.points,
            dict(color="tab:orange", ls="--"),
        ),
    ):
        if points is None or len(points) == 0:
            continue
        along, across = _project(points, start, end)
        hits = np.sort(
            along[(np.abs(across) <= tol) & (along >= 0) & (along <= distance[-1])]
        )
        for k, t in enumerate(_merge_close(hits, tol)):
            ax.axvline(t, lw=1, alpha=0.8, label=name if k == 0 else None, **style)
    units = model.geometry.units
    ax.set_xlabel(f"distance along the path ({units})")
    ax.set_ylabel(f"S (1 / {units})")
    ax.legend(fontsize="small", frameon=False)
    return ax


def _project(points: np.ndarray, start: np.ndarray, end: np.ndarray):
    """Distance along and across the segment ``start -> end``."""
    direction = end - start
    length = np.linalg.norm(direction)
    if length == 0:
        raise ValueError("start and end must differ")
    u = direction / length
    rel = np.asarray(points, float) - start
    return rel @ u, rel @ np.array([-u[1], u[0]])


def _merge_close(values: np.ndarray, tol: float) -> list[float]:
    """Means of runs of sorted values closer than ``tol`` (one mark per crossing)."""
    groups: list[list[float]] = []
    for v in values:
        if groups and v - groups[-1][-1] <= tol:
            groups[-1].append(float(v))
        else:
            groups.append([float(v)])
    return [float(np.mean(g)) for g in groups]
