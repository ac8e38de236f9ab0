"""Loader of the real Ni-superalloy crop shared by the benchmarks.

``../shared/data/real/rx_ni_superalloy_calvat`` holds a 200 x 200 crop of
120 x 120 px patterns (Calvat et al., Dryad, CC0) as WebP tiles of 20 x 20
patterns with per-pattern intensity ranges; its README.txt gives the decoding
recipe implemented here. Step size and pattern centre are not given: the
returned signal has a step of 1 (units "step") and kikuchipy's default PC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CALVAT_DIR", "decode_calvat", "load_calvat_crop"]

CALVAT_DIR = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "real"
    / "rx_ni_superalloy_calvat"
)
_SIZE, _TILE, _PX = 200, 20, 120
# The producer's normalised space -> detector counts (README.txt).
_SCALE, _BIAS = 3.7376889868994e-05, -1.28683025285466


def _tile(ty: int, tx: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    tiles = CALVAT_DIR / "tiles"
    with Image.open(tiles / f"tile_{ty}_{tx}.webp") as image:
        gray = np.asarray(image)[..., 0]  # channel 0, as the README says
    ranges = np.fromfile(tiles / f"ranges_{ty}_{tx}.bin", dtype="<f4").reshape(
        _TILE, _TILE, 2
    )
    return gray, ranges


def decode_calvat(
    rows: slice = slice(None), cols: slice = slice(None), binning: int = 1
) -> np.ndarray:
    """Counts of the real crop as a numpy array (no kikuchipy needed).

    Parameters
    ----------
    rows, cols
        Scan rows and columns of the 200 x 200 crop (slices, steps allowed).
    binning
        Detector binning (mean of ``binning x binning`` pixels); must divide
        120.

    Returns
    -------
    counts
        uint16 ``(len(rows), len(cols), 120 / binning, 120 / binning)``.
    """
    if not (CALVAT_DIR / "tiles").is_dir():
        raise FileNotFoundError(f"The real crop is not at {CALVAT_DIR}")
    if isinstance(binning, bool) or not isinstance(binning, int) or _PX % binning:
        raise ValueError(f"binning must be an integer dividing {_PX}, got {binning!r}")
    iy = np.arange(_SIZE)[rows]
    ix = np.arange(_SIZE)[cols]
    if iy.size == 0 or ix.size == 0:
        raise ValueError("rows and cols must select at least one scan point each")
    px = _PX // binning
    out = np.empty((iy.size, ix.size, px, px), np.uint16)
    for ty in np.unique(iy // _TILE):
        for tx in np.unique(ix // _TILE):
            gray, ranges = _tile(int(ty), int(tx))
            for r in np.flatnonzero(iy // _TILE == ty):
                a = iy[r] % _TILE
                block = gray[a * _PX : (a + 1) * _PX].reshape(_PX, _TILE, _PX)
                for c in np.flatnonzero(ix // _TILE == tx):
                    b = ix[c] % _TILE
                    lo, hi = ranges[a, b]
                    v = lo + block[:, b].astype(np.float64) / 255.0 * (hi - lo)
                    counts = (v - _BIAS) / _SCALE
                    if binning > 1:
                        counts = counts.reshape(px, binning, px, binning).mean(
                            axis=(1, 3)
                        )
                    out[r, c] = np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max)
    return out


def load_calvat_crop(
    rows: slice = slice(None), cols: slice = slice(None), binning: int = 1
):
    """Patterns of the real crop as a kikuchipy ``EBSD`` signal in counts.

    Parameters
    ----------
    rows, cols, binning
        As for :func:`decode_calvat`.

    Returns
    -------
    signal
        ``EBSD`` of uint16 counts ``(len(rows), len(cols), 120 / binning,
        120 / binning)``, navigation step 1 (unit "step", offsets the crop's
        row and column indices), a detector of the right shape with
        kikuchipy's default PC (the true one is not known: estimate it).
    """
    import kikuchipy as kp

    data = decode_calvat(rows, cols, binning)
    iy, ix = np.arange(_SIZE)[rows], np.arange(_SIZE)[cols]
    step_y = int(rows.step or 1) if isinstance(rows, slice) else 1
    step_x = int(cols.step or 1) if isinstance(cols, slice) else 1
    s = kp.signals.EBSD(data)
    for axis, name, offset, step in (
        (s.axes_manager.navigation_axes[1], "y", iy[0], step_y),
        (s.axes_manager.navigation_axes[0], "x", ix[0], step_x),
    ):
        axis.name, axis.units, axis.offset, axis.scale = (
            name,
            "step",
            float(offset),
            float(step),
        )
    for axis, name in zip(s.axes_manager.signal_axes, ("dx", "dy"), strict=True):
        axis.name, axis.units = name, "px"
    s.detector = kp.detectors.EBSDDetector(shape=data.shape[2:], sample_tilt=70.0)
    s.metadata.General.title = "Ni superalloy (Calvat et al., CC0), real crop"
    return s
