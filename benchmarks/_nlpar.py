"""NLPAR denoising of an in-memory scan through PyEBSDIndex, for the benchmarks.

Non-local pattern averaging (NLPAR; Brewick, Wright and Rowenhorst,
Ultramicroscopy 200, 50-61, 2019) is the denoising a materials scientist
applies to a noisy EBSD map today. ``benchmarks/quality_across_maps.py`` uses
:func:`nlpar_denoise` as the conventional baseline that the neural field's
denoising is compared against.

PyEBSDIndex (``pyebsdindex.nlpar.NLPAR``, tested with 0.3.10) runs NLPAR on
pattern *files* only, so :func:`nlpar_denoise` writes the scan to a plain
HDF5 file in a temporary folder, lets PyEBSDIndex choose lambda
(``NLPAR.opt_lambda``) and average (``NLPAR.calcnlpar``) into a second file
there, and reads that back with PyEBSDIndex's own reader. The file stores
float32: ``calcnlpar`` writes its output in the input file's data type
(truncating floats to integers for ``uint8``/``uint16`` files), and float32
keeps the averaged intensities unrounded and in the input's counts. It always
runs PyEBSDIndex's CPU (numba) implementation, never OpenCL.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from kikuchipy_neural.analysis.metrics import keep_numba_cache_dir

__all__ = ["nlpar_denoise"]

# HDF5 dataset holding the (n_patterns, h, w) stack; PyEBSDIndex's generic
# HDF5 reader takes its path explicitly and keeps it for the output file.
_DATASET = "/scan/EBSD/Data/patterns"


def nlpar_denoise(
    patterns: np.ndarray, search_radius: int = 3, lam: float | None = None
) -> tuple[np.ndarray, float]:
    """NLPAR (non-local pattern averaging, PyEBSDIndex's ``NLPAR``) of a scan.

    Parameters
    ----------
    patterns
        Scan of shape ``(ny, nx, h, w)``: unsigned/signed integers (e.g. the
        detector's ``uint16`` counts) or finite floats.
    search_radius
        Half width of the square window of neighbours averaged, in scan
        steps (PyEBSDIndex's ``searchradius``; its default is 3).
    lam
        NLPAR's lambda (weight decay). ``None`` (default): PyEBSDIndex's
        automatic choice, ``NLPAR.opt_lambda`` (the median of the lambdas
        that give a mean self weight of 0.5, 0.34 and 0.25), as a materials
        scientist would use it.

    Returns
    -------
    denoised
        float32 array of the shape of ``patterns``, in the same intensity
        counts (each pattern is a weighted mean of its neighbours, weights
        summing to one; no rescaling, no rounding).
    lam_used
        The lambda NLPAR averaged with.

    Notes
    -----
    PyEBSDIndex's defaults are kept otherwise: pattern distances are taken
    inside a circular mask (``automask``), pixels at 99.9 % or more of the
    scan's maximum are left out of the distances (``saturation_protect``),
    and each point's noise sigma is estimated from its nearest neighbours.
    Values are stored as float32, so float64 input loses precision beyond
    float32's (about 7 digits). Runs on the CPU with numba's threads.
    """
    data = np.asarray(patterns)
    if data.ndim != 4:
        raise ValueError(
            f"patterns must have shape (ny, nx, h, w), got shape {data.shape}"
        )
    if not (
        np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
    ):
        raise TypeError(f"patterns must be integers or floats, got {data.dtype}")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise ValueError("patterns must be finite (no NaN or inf)")
    if int(search_radius) < 1:
        raise ValueError(f"search_radius must be >= 1, got {search_radius}")
    if lam is not None and not lam > 0:
        raise ValueError(f"lam must be positive, got {lam}")
    ny, nx, h, w = data.shape
    stack = data.reshape(ny * nx, h, w).astype(np.float32)

    import h5py

    with keep_numba_cache_dir():
        from pyebsdindex import ebsd_pattern
        from pyebsdindex.nlpar_cpu import NLPAR  # the CPU path, never OpenCL

        with tempfile.TemporaryDirectory(prefix="nlpar_") as tmp:
            path_in = Path(tmp) / "patterns.h5"
            path_out = Path(tmp) / "patterns_nlpar.h5"
            with h5py.File(path_in, "w") as f:
                f.create_dataset(_DATASET, data=stack)

            with contextlib.redirect_stdout(io.StringIO()):
                nl = NLPAR(
                    filename=[str(path_in), _DATASET],
                    searchradius=int(search_radius),
                    nrows=ny,
                    ncols=nx,
                )
                if lam is None:
                    nl.opt_lambda(autoupdate=True)
                else:
                    nl.lam = float(lam)
                lam_used = float(np.asarray(nl.lam).ravel()[0])
                written = nl.calcnlpar(
                    fileout=str(path_out), searchradius=int(search_radius)
                )
                if Path(written).resolve() != path_out.resolve():
                    raise RuntimeError(f"NLPAR wrote {written}, not {path_out}")

                out_file = ebsd_pattern.get_pattern_file_obj([str(path_out), _DATASET])
                out_file.nRows, out_file.nCols = ny, nx
                denoised, _ = out_file.read_data(
                    patStartCount=[0, ny * nx],
                    convertToFloat=True,
                    returnArrayOnly=True,
                )
                # Drop the reader's object (and the HDF5 handle its factory
                # opened) before the folder is deleted.
                del out_file

    denoised = np.asarray(denoised, dtype=np.float32)
    if denoised.shape != (ny * nx, h, w):
        raise RuntimeError(
            f"NLPAR output has shape {denoised.shape}, expected {(ny * nx, h, w)}"
        )
    return denoised.reshape(ny, nx, h, w), lam_used
