"""A model file as a signal: the training grid decoded on demand.

:func:`load` returns a ``LazyNeuralEBSD`` whose dask chunks are decoded from
the model when computed (the dask graph comes from
:func:`kikuchipy_neural.analysis.queries.decode`: the model enters it once,
as one delayed object, so any scheduler works, ``dask.distributed``
included). The result behaves as any kikuchipy signal: it can be sliced,
processed, or saved to h5ebsd without ever holding the whole map in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kikuchipy_neural.io.model_file import load_model

__all__ = ["load", "training_grid"]


def training_grid(
    geometry, lazy: bool = False, points_per_chunk: int = 2**16
) -> tuple[np.ndarray, list[dict] | None]:
    """Positions and navigation axes of the points a model was trained on.

    ``lazy``: a grid's positions as a dask array computed per chunk of
    ``points_per_chunk`` (memory bounded for any number of points).

    Returns
    -------
    xy
        ``(ny, nx, 2)`` for a 2D grid, ``(nx, 2)`` for a line scan or a scan
        at explicit positions.
    nav_axes
        Axis dicts (array order), or None for explicit positions (index axis).
    """
    from kikuchipy_neural.analysis.queries import upsample_xy

    if geometry.scattered:
        return geometry.grid_xy().reshape(-1, 2), None
    return upsample_xy(geometry, 1.0, lazy=lazy, points_per_chunk=points_per_chunk)


def load(
    path: str | os.PathLike,
    lazy: bool = True,
    device: str | None = "cpu",
    trust: bool = False,
):
    """Open a model file as a ``LazyNeuralEBSD`` (or ``NeuralEBSD``).

    Parameters
    ----------
    path
        A file written by :meth:`~kikuchipy_neural.NeuralEBSDModel.save`.
    lazy
        True (default): patterns are decoded from the model chunk by chunk
        when computed, so memory stays bounded for any map size. False:
        decode everything now.
    device
        Device the model decodes on.
    trust
        See :func:`~kikuchipy_neural.io.model_file.load_model`.

    Returns
    -------
    signal
        ``LazyNeuralEBSD`` (``NeuralEBSD`` with ``lazy=False``) of float32
        patterns on the training grid, in measured intensity units, with the
        scan's calibrated axes, the training detector and the model attached
        as ``signal.neural_model``.

    Examples
    --------
    >>> import kikuchipy_neural as kn
    >>> s = kn.load("model.h5")  # doctest: +SKIP
    >>> s.inav[10:20, 5].compute()  # decodes 10 patterns  # doctest: +SKIP
    >>> s.save("patterns.h5")  # kikuchipy h5ebsd, written chunk by chunk  # doctest: +SKIP
    """
    from kikuchipy_neural.analysis.queries import points_per_chunk, query_signal

    path = Path(path)
    model = load_model(path, device=device, trust=trust)
    xy, nav_axes = training_grid(
        model.geometry, lazy=bool(lazy), points_per_chunk=points_per_chunk(model)
    )
    signal = query_signal(
        model, xy, lazy=bool(lazy), nav_axes=nav_axes, title=f"Decoded from {path.name}"
    )
    signal.set_signal_type("NeuralEBSD")
    signal.neural_model = model
    return signal
