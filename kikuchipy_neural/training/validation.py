"""What a fit knows about its own error: held-out points against baselines.

After training, the field predicts the patterns of the validation points,
which it never trained on, and so do two simple methods a user could have
used instead, from the same training patterns:

``interpolation``
    Linear interpolation of the measured training patterns on their Delaunay
    triangulation (bilinear-like on a grid, the nearest training pattern
    outside their hull): what super-resolution and filling masked points
    must beat.
``pca``
    The same interpolation of the training patterns denoised by PCA at the
    field's rank (fitted on training points only): a rank-``R`` linear model
    of the map, what the field's rank-``R`` model must beat. Projection and
    interpolation are both linear, so this is the PCA projection of the
    interpolated pattern. Factorized fits only.

None of the three reads the held-out pattern, so their errors against it
compare directly: each is the prediction's own error plus the same noise.
(PCA projecting the held-out pattern itself would keep part of that
pattern's noise and profit from seeing a boundary point's blend, which no
interpolation can; it answers a different question.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from kikuchipy_neural.training.data import HeldPatterns, PatternSource, iter_patterns
from kikuchipy_neural.training.preprocessing import Preprocessed

__all__ = ["held_out_report", "warn_if_worse_than_baselines"]

# Training points per validation point taken into the local triangulation:
# enough to surround a point on any mask, and bounded for maps of any size.
_NEIGHBOURS = 16
# Validation points judged at most (evenly spread), and values per chunk of
# predictions: the report's memory is bounded whatever the map and detector.
_MAX_POINTS = 512
_CHUNK_VALUES = 2**16


def held_out_report(
    model,
    prep: Preprocessed,
    source: PatternSource,
    held: Sequence[HeldPatterns] = (),
    masked: bool = False,
) -> dict[str, Any] | None:
    """The field's error on its validation points next to the baselines'.

    Parameters
    ----------
    model
        The fitted :class:`~kikuchipy_neural.NeuralEBSDModel`, before any
        per-point intensities (those are fitted to the validation points'
        own patterns).
    prep
        The fit's preprocessing: validation and training points, their
        patterns, the PCA and the noise estimate.
    source
        The scan's patterns, for the training neighbours of the validation
        points that are not in ``held``.
    held
        Patterns already in memory.
    masked
        Whether the fit was given a mask (points it may not read); recorded
        in the report.

    Returns
    -------
    report
        None without validation points, else a plain dict: ``n_points``
        (the validation points judged: all, or 512 evenly spread),
        ``masked``; ``mae`` and ``rmse`` (counts, over every pixel) of
        ``"field"``, ``"interpolation"`` and ``"pca"`` (None for the joint
        formulation) against the measured patterns; ``noise_rms`` (counts,
        the fit's estimate of the noise in one measured pixel, None if
        unknown), the floor of every RMS error; ``worse_than``, the
        baselines the field is significantly worse than: its per-point
        squared errors higher on average by more than twice their paired
        standard error.
    """
    val = np.asarray(prep.val_points)
    if len(val) == 0 or len(prep.train_points) == 0:
        return None
    # Evenly spread over the (sorted) validation points: a bounded cost.
    val_patterns = prep.val_patterns
    if len(val) > _MAX_POINTS:
        subset = np.linspace(0, len(val) - 1, _MAX_POINTS).round().astype(int)
        val, val_patterns = val[subset], val_patterns[subset]
    geometry = model.geometry
    lo, hi = prep.intensity_range
    val_xy = geometry.index_to_xy(val)
    weights, rows, neighbours = _interpolation(geometry, prep, val_xy, source, held)
    with_pca = prep.mean is not None and prep.components is not None
    names = (
        ("field", "interpolation", "pca") if with_pca else ("field", "interpolation")
    )
    squared = {name: np.empty(len(val)) for name in names}
    absolute = dict.fromkeys(names, 0.0)
    step = max(1, _CHUNK_VALUES // geometry.n_pixels)
    for start in range(0, len(val), step):
        chunk = slice(start, start + step)
        measured = val_patterns[chunk].reshape(-1, geometry.n_pixels).astype(np.float32)
        interpolated = np.einsum(
            "nk,nkp->np",
            weights[chunk],
            neighbours[rows[chunk]],
            dtype=np.float32,
            casting="unsafe",  # float64 or integer data in float32 arithmetic
        )
        predictions = {
            "field": model.query(val_xy[chunk]).reshape(len(measured), -1),
            "interpolation": interpolated,
        }
        if with_pca:
            scores = ((interpolated - lo) / (hi - lo) - prep.mean) @ prep.components.T
            projected = scores @ prep.components
            projected += prep.mean
            projected *= hi - lo
            projected += lo
            predictions["pca"] = projected
        for name, predicted in predictions.items():
            predicted -= measured  # in place: the difference
            squared[name][chunk] = np.einsum("ij,ij->i", predicted, predicted) / (
                geometry.n_pixels
            )
            absolute[name] += float(np.abs(predicted, out=predicted).sum())
    n_values = len(val) * geometry.n_pixels
    noise = None
    if prep.spectrum is not None and prep.spectrum.noise_variance is not None:
        noise = float(prep.spectrum.noise_variance) * (hi - lo) ** 2
    worse = [
        name
        for name in names[1:]
        if _significantly_worse(squared["field"], squared[name])
    ]
    return {
        "n_points": int(len(val)),
        "masked": bool(masked),
        "mae": {
            name: absolute[name] / n_values if name in names else None
            for name in ("field", "interpolation", "pca")
        },
        "rmse": {
            name: float(np.sqrt(squared[name].mean())) if name in names else None
            for name in ("field", "interpolation", "pca")
        },
        "noise_rms": None if noise is None else float(np.sqrt(noise)),
        "worse_than": worse,
    }


def warn_if_worse_than_baselines(report: dict[str, Any] | None, info: dict) -> None:
    """Warn, with what to try, when the field lost to a baseline."""
    if not report or not report["worse_than"]:
        return
    mae = report["mae"]
    lines = [f"On {report['n_points']} held-out points the field is worse than"]
    baselines = []
    if "interpolation" in report["worse_than"]:
        baselines.append(
            f"linear interpolation of the training points (MAE "
            f"{mae['interpolation']:.4g} vs the field's {mae['field']:.4g} counts)"
        )
    if "pca" in report["worse_than"]:
        baselines.append(
            f"PCA at the same rank (MAE {mae['pca']:.4g} vs {mae['field']:.4g} "
            "counts, from the same training points)"
        )
    lines[0] += " " + " and than ".join(baselines) + "."
    if info.get("stop_reason") in ("time_budget", "max_steps"):
        lines.append(
            f"The fit stopped at its {info['stop_reason']} before converging: "
            "give it more time or steps."
        )
    if "interpolation" in report["worse_than"]:
        lines.append(
            "A field that does not interpolate varies too fast between "
            "training points: leave first_omega_0 unset, or lower "
            "phase_per_step (e.g. 0.25)."
        )
    if "pca" in report["worse_than"]:
        lines.append(
            "A field worse than PCA at its own rank has not learnt the map's "
            "patterns: try a longer fit or a higher rank."
        )
    warnings.warn(" ".join(lines) + " See model.validation.", UserWarning, stacklevel=3)


def _significantly_worse(field: np.ndarray, baseline: np.ndarray) -> bool:
    """Whether the field's per-point squared errors exceed the baseline's
    by more than twice the standard error of their mean difference (paired
    over the same points): a loss beyond the noise of a few held-out points."""
    difference = field - baseline
    mean = float(difference.mean())
    if len(difference) < 2:
        return mean > 0
    standard_error = float(difference.std(ddof=1)) / np.sqrt(len(difference))
    return mean > 2 * standard_error


def _interpolation(
    geometry,
    prep: Preprocessed,
    val_xy: np.ndarray,
    source: PatternSource,
    held: Sequence[HeldPatterns],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation of training patterns at ``val_xy`` ``(n, 2)``.

    Returns the weights ``(n, 3)``, the rows ``(n, 3)`` of the neighbour
    patterns they weigh, and those patterns ``(m, n_pixels)`` in the data's
    own dtype (read once: from memory where held, else from the tiles that
    hold them).
    """
    from scipy.spatial import Delaunay, QhullError, cKDTree

    train = np.asarray(prep.train_points)
    train_xy = geometry.index_to_xy(train)
    k = min(_NEIGHBOURS, len(train))
    near = cKDTree(train_xy).query(val_xy, k=k)[1].reshape(len(val_xy), k)
    # A local triangulation: the training points around the validation
    # points (the same triangles there as the map's, bounded cost).
    local = np.unique(near)
    weights = np.zeros((len(val_xy), 3))
    vertices = np.zeros((len(val_xy), 3), dtype=np.int64)
    inside = np.zeros(len(val_xy), bool)
    try:
        tri = Delaunay(train_xy[local])
    except QhullError:  # collinear training points (a line): all nearest
        tri = None
    if tri is not None:
        simplex = tri.find_simplex(val_xy)
        inside = simplex >= 0
        transform = tri.transform[simplex[inside]]
        b = np.einsum("nij,nj->ni", transform[:, :2], val_xy[inside] - transform[:, 2])
        weights[inside] = np.column_stack([b, 1 - b.sum(axis=1)])
        vertices[inside] = local[tri.simplices[simplex[inside]]]
    outside = np.flatnonzero(~inside)
    vertices[outside] = near[outside, :1]  # the nearest, three times
    weights[outside] = (1.0, 0.0, 0.0)
    needed = np.unique(vertices)
    selected = np.zeros(geometry.n_points, bool)
    selected[train[needed]] = True
    row_of = np.full(geometry.n_points, -1, dtype=np.int64)
    patterns = np.empty((len(needed), source.n_pixels), source.data.dtype)
    filled = 0
    for points, raw in iter_patterns(source, selected, held):
        patterns[filled : filled + len(points)] = raw
        row_of[points] = np.arange(filled, filled + len(points))
        filled += len(points)
    return weights.astype(np.float32), row_of[train[vertices]], patterns
