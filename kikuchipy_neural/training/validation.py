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
        None without validation points, else a plain dict: ``n_points``,
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
    geometry = model.geometry
    lo, hi = prep.intensity_range
    measured = np.asarray(prep.val_patterns, np.float32).reshape(len(val), -1)
    val_xy = geometry.index_to_xy(val)
    interpolated = _interpolate(geometry, prep, val_xy, source, held)
    predictions = {
        "field": model.query(val_xy).reshape(len(val), -1),
        "interpolation": interpolated,
        "pca": None,
    }
    if prep.mean is not None and prep.components is not None:
        centred = (interpolated - lo) / (hi - lo) - prep.mean
        projected = (centred @ prep.components.T) @ prep.components + prep.mean
        predictions["pca"] = projected * (hi - lo) + lo
    noise = None
    if prep.spectrum is not None and prep.spectrum.noise_variance is not None:
        noise = float(prep.spectrum.noise_variance) * (hi - lo) ** 2
    per_point = {
        name: None if p is None else np.mean((p - measured) ** 2, axis=1)
        for name, p in predictions.items()
    }
    mae = {
        name: None if p is None else float(np.mean(np.abs(p - measured)))
        for name, p in predictions.items()
    }
    worse = [
        name
        for name in ("interpolation", "pca")
        if per_point[name] is not None
        and _significantly_worse(per_point["field"], per_point[name])
    ]
    return {
        "n_points": int(len(val)),
        "masked": bool(masked),
        "mae": mae,
        "rmse": {
            k: None if v is None else float(np.sqrt(v.mean()))
            for k, v in per_point.items()
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
            "To denoise, try a higher rank, or PCA itself (HyperSpy's decomposition)."
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


def _interpolate(
    geometry,
    prep: Preprocessed,
    val_xy: np.ndarray,
    source: PatternSource,
    held: Sequence[HeldPatterns],
) -> np.ndarray:
    """Linear interpolation of training patterns at ``val_xy`` ``(n, 2)``."""
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
        simplex = tri.find_simplex(val_xy)
        inside = simplex >= 0
        transform = tri.transform[simplex[inside]]
        b = np.einsum("nij,nj->ni", transform[:, :2], val_xy[inside] - transform[:, 2])
        weights[inside] = np.column_stack([b, 1 - b.sum(axis=1)])
        vertices[inside] = local[tri.simplices[simplex[inside]]]
    except QhullError:
        pass  # collinear training points (a line): nearest below
    nearest = np.flatnonzero(~inside)
    vertices[nearest, 0] = near[nearest, 0]
    weights[nearest] = (1.0, 0.0, 0.0)
    needed = np.unique(vertices)
    selected = np.zeros(geometry.n_points, bool)
    selected[train[needed]] = True
    row_of = np.full(geometry.n_points, -1, dtype=np.int64)
    patterns = np.empty((len(needed), source.n_pixels), np.float32)
    filled = 0
    for points, raw in iter_patterns(source, selected, held):
        patterns[filled : filled + len(points)] = raw
        row_of[points] = np.arange(filled, filled + len(points))
        filled += len(points)
    rows = row_of[train[vertices]]
    return np.einsum("nk,nkp->np", weights, patterns[rows]).astype(np.float32)
