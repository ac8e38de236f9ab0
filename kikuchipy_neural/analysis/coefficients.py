"""The factorized field's coefficient maps and bases, as numbers and figures.

:func:`coefficient_map` samples ``A(x, y)`` on a grid; :func:`coefficients_to_rgb`
projects the coefficient vectors on their three principal directions and
shows them as colour (the paper's Fig. 4): points with similar patterns get
similar colours, so grains, twins and gradients appear without indexing.
"""

from __future__ import annotations

import numpy as np
import torch

from kikuchipy_neural.model import NeuralEBSDModel

__all__ = [
    "coefficient_map",
    "coefficients_to_rgb",
    "plot_bases",
    "plot_coefficient_field",
]


def _require_factorized(model: NeuralEBSDModel) -> None:
    if model.formulation != "factorized":
        raise ValueError(
            f"Coefficient maps need a factorized model, this one is {model.formulation!r}"
        )


@torch.no_grad()
def coefficient_map(model: NeuralEBSDModel, factor: float = 1.0) -> np.ndarray:
    """Coefficients ``A(x, y)`` (constant excluded) on a grid ``factor`` times
    finer than the scan, in pattern units (times each basis's norm).

    Returns
    -------
    coefficients
        float32 ``(ny', nx', rank - 1)``.
    """
    _require_factorized(model)
    xy = model.geometry.grid_xy(factor)
    net = torch.from_numpy(model.geometry.normalize(xy.reshape(-1, 2)))
    out = []
    for start in range(0, len(net), 65536):
        out.append(
            model.field.descriptor(net[start : start + 65536].to(model.device)).cpu()
        )
    return torch.cat(out).numpy().reshape(*xy.shape[:2], -1)


def coefficients_to_rgb(coefficients: np.ndarray) -> np.ndarray:
    """Colour coefficient vectors by their 3 principal components.

    Each component is stretched to [0, 1] between its 1st and 99th
    percentile, so a few extreme points do not wash the map out.

    Parameters
    ----------
    coefficients
        ``(..., d)``.

    Returns
    -------
    rgb
        ``(..., 3)`` in [0, 1].
    """
    a = np.asarray(coefficients, np.float64)
    flat = a.reshape(-1, a.shape[-1])
    centred = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:3].T
    if proj.shape[1] < 3:  # rank 2 or 3: pad the missing colours
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, [1, 99], axis=0)
    rgb = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return rgb.reshape(*a.shape[:-1], 3)


def plot_coefficient_field(model: NeuralEBSDModel, factor: float = 1.0, ax=None):
    """The coefficient field as colour, in calibrated scan coordinates."""
    import matplotlib.pyplot as plt

    rgb = coefficients_to_rgb(coefficient_map(model, factor))
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    (xa, xb), (ya, yb) = model.geometry.x_range, model.geometry.y_range
    ax.imshow(rgb, extent=(xa, xb, yb, ya), interpolation="nearest")
    units = model.geometry.units
    ax.set_xlabel(f"x ({units})")
    ax.set_ylabel(f"y ({units})")
    ax.set_title(f"coefficient field, PCA to RGB (rank {model.rank})")
    return ax


def plot_bases(model: NeuralEBSDModel, n: int = 6, axes=None):
    """The first ``n`` learned basis patterns (``B_0`` is the mean pattern)."""
    import matplotlib.pyplot as plt

    _require_factorized(model)
    bases = model.field.bases.detach().cpu().numpy().reshape(-1, *model.pattern_shape)
    n = min(n, len(bases))
    if axes is None:
        _, axes = plt.subplots(1, n, figsize=(1.8 * n, 2.1))
    for k, ax in enumerate(np.atleast_1d(axes)[:n]):
        ax.imshow(bases[k], cmap="gray")
        ax.set_title("mean" if k == 0 else f"$B_{{{k}}}$", fontsize=9)
        ax.axis("off")
    return axes
