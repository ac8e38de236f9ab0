"""Closed-form refit of a factorized field's bases after training.

A factorized pattern ``A(x, y) @ B`` is linear in the bases ``B``: given the
trained coefficient network, the bases with the least squared error over the
training patterns solve the normal equations ``(A^T A) B = A^T X``, one
``R x R`` system shared by every pixel. Stochastic training ends near that
optimum, not on it (network and bases still move together at a finite
learning rate when early stopping or the time budget ends the fit, and the
loss weights band pixels twice); one more pass over the data lands on it.
Measured on the real 200 x 200 crop of ``benchmarks/compression.py``
(solved on 95 % of the points): the map MAE drops by 2 to 8 counts (0.6 to
1.7 %) at ranks 8 to 206; int8 model files stay within 1.6 % of their size
up to rank 32 and grow by 4-5 % at ranks 128 and 206, whose high-order bases
come out noisier than trained.

The refit is kept only when it lowers the mean absolute error on the
validation points, which it never reads for the solve; without validation
points it is kept whenever the solve is finite (it cannot raise the squared
error of the points it was solved on). The check matters on small, noisy
fits: on the super-resolution benchmark's matched map (1035 training points
of noisy 60 x 60 patterns, rank 9) the least-squares bases fit the training
points' noise and raised the validation MAE by 3-5 counts at every seed, so
those fits keep their trained bases; so did the default rank-206 fit of the
real crop (+1.7 counts). Where the map's own points are all that matters
(compression), fit with ``refit_bases="all"``: the solve then reads every
point the fit reads, validation points included, and is kept (it lowers the
map's squared error by construction).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from kikuchipy_neural.training.data import HeldPatterns, iter_patterns

__all__ = ["refit_bases"]

# Relative ridge on the normal equations: negligible for any usable fit
# (whitened coefficients give a Gram matrix of order n), it only keeps the
# solve finite when two coefficients are collinear.
_RIDGE = 1e-9
# Points per network evaluation and Gram product.
_CHUNK = 4096


@torch.no_grad()
def refit_bases(
    model,
    source,
    points: np.ndarray,
    validation_points: np.ndarray | None = None,
    validation_patterns: np.ndarray | None = None,
    show_progressbar: bool = False,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    held: Sequence[HeldPatterns] = (),
) -> dict[str, Any]:
    """Replace the bases of ``model`` by their least-squares fit, in place.

    Parameters
    ----------
    model
        A factorized :class:`~kikuchipy_neural.NeuralEBSDModel` without
        per-point intensities (those are fitted to the final bases).
    source
        :class:`~kikuchipy_neural.training.data.PatternSource` of the scan
        the model was fitted to.
    points
        Flat (row-major) scan indices whose patterns the bases are solved on
        (the fit's training points).
    validation_points, validation_patterns
        Held-out flat indices and their raw patterns ``(n, n_pixels)``: the
        refit is kept only if it lowers their MAE. None: kept if finite.
    show_progressbar
        Show a progress bar over the patterns.
    reduce
        In a data-parallel fit, each process passes its own shard as
        ``points`` and a function that sums a tensor over the processes
        (:meth:`~kikuchipy_neural.training.distributed.DistributedContext.sum_over_ranks`):
        every process then solves the same system. None: one process.
    held
        Patterns of some of ``points`` already in memory (e.g. the fit's
        buffer), taken instead of reading them from ``source``.

    Returns
    -------
    summary
        ``applied`` (bool), ``reason`` (why not, None when applied),
        ``points`` (number solved on, over all processes),
        ``validation_mae_before`` and ``validation_mae_after`` (counts, None
        without validation points), ``seconds``.
    """
    field = model.field
    if model.rank is None:
        raise ValueError("Only factorized models have bases to refit")
    if model.point_intensity is not None:
        raise ValueError(
            "Refit the bases before fitting per-point intensities: those are "
            "fitted to the bases"
        )
    g = model.geometry
    if tuple(source.pattern_shape) != tuple(g.pattern_shape) or (
        source.ny * source.nx != g.n_points
    ):
        raise ValueError(
            f"The patterns ({source.ny}x{source.nx} of "
            f"{source.pattern_shape[0]}x{source.pattern_shape[1]}) are not the "
            f"model's scan ({g.n_points} points of {g.pattern_shape[0]}x"
            f"{g.pattern_shape[1]})"
        )
    points = np.unique(np.asarray(points, np.int64))
    if points.size and (points[0] < 0 or points[-1] >= g.n_points):
        raise ValueError(f"points must be flat indices in [0, {g.n_points})")
    started = time.perf_counter()
    rank = model.rank
    summary: dict[str, Any] = {
        "applied": False,
        "reason": None,
        "points": int(points.size),
        "validation_mae_before": None,
        "validation_mae_after": None,
    }
    try:
        gram, moments = _normal_equations(model, source, points, held, show_progressbar)
    except KeyboardInterrupt:
        # The bases change only at the end: the trained ones are intact.
        warnings.warn(
            "The bases' refit was interrupted: keeping the trained bases",
            stacklevel=2,
        )
        return _done(summary, started, "interrupted")
    if reduce is not None:
        # One reduction for the Gram matrix, the moments and the point count.
        packed = torch.cat(
            [gram.ravel(), moments.ravel(), gram.new_tensor([points.size])]
        )
        packed = reduce(packed)
        gram = packed[: rank * rank].view(rank, rank)
        moments = packed[rank * rank : -1].view(rank, -1)
        summary["points"] = int(packed[-1])
    if summary["points"] < rank:
        return _done(summary, started, f"fewer points than bases ({rank})")
    gram += _RIDGE * torch.trace(gram) / rank * torch.eye(rank, device=gram.device)
    bases = torch.linalg.solve(gram, moments).to(field.bases.dtype)
    if not torch.isfinite(bases).all():
        return _done(summary, started, "the solve is not finite")

    if validation_points is not None and len(validation_points):
        a = torch.cat(
            [
                _coefficients(model, validation_points[s : s + _CHUNK])
                for s in range(0, len(validation_points), _CHUNK)
            ]
        )
        x = model._normalize(validation_patterns)
        lo, hi = model.intensity_range
        before = float((a @ field.bases - x).abs().mean()) * (hi - lo)
        after = float((a @ bases - x).abs().mean()) * (hi - lo)
        summary.update(validation_mae_before=before, validation_mae_after=after)
        if not after < before:
            return _done(summary, started, "it raised the validation MAE")
    field.bases.copy_(bases)
    summary["applied"] = True
    return _done(summary, started)


def _normal_equations(
    model,
    source,
    points: np.ndarray,
    held: Sequence[HeldPatterns],
    show_progressbar: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A^T A`` ``(R, R)`` and ``A^T X`` ``(R, n_pixels)`` over ``points``
    (float64, on the model's device): one pass over their patterns, from
    ``held`` or else from the tiles holding them."""
    from tqdm.auto import tqdm

    selected = np.zeros(model.geometry.n_points, bool)
    selected[points] = True
    gram = torch.zeros(model.rank, model.rank, dtype=torch.float64, device=model.device)
    moments = torch.zeros(
        model.rank, model.geometry.n_pixels, dtype=torch.float64, device=model.device
    )
    with tqdm(
        total=len(points),
        desc="refit_bases",
        unit="pattern",
        disable=not show_progressbar,
    ) as bar:
        for index, flat in iter_patterns(source, selected, held):
            for start in range(0, len(flat), _CHUNK):
                a = _coefficients(model, index[start : start + _CHUNK])
                x = model._normalize(flat[start : start + _CHUNK])
                gram += (a.T @ a).double()
                moments += (a.T @ x).double()
            bar.update(len(flat))
    return gram, moments


def _done(summary: dict[str, Any], started: float, reason: str | None = None):
    summary["reason"] = reason
    summary["seconds"] = time.perf_counter() - started
    return summary


def _coefficients(model, flat_index: np.ndarray) -> torch.Tensor:
    """``A`` (constant 1 first) at flat scan indices, float32 ``(n, R)``."""
    net = model._to_network(model.geometry.index_to_xy(flat_index), False)
    return model.field.coefficients(net.to(model.device))
