"""Image formation of the synthetic EBSD maps: beam, background, patterns.

See :mod:`kikuchipy_neural.data.synthetic` for the model.
"""

from __future__ import annotations

import numpy as np
from kikuchipy.detectors import EBSDDetector
from orix.quaternion import Rotation
from scipy.sparse import csr_matrix

from kikuchipy_neural.data._microstructure import Microstructure

#: Default projection centre (Bruker convention) at the map's centre point.
DEFAULT_PC = (0.5, 0.3, 0.55)
#: Default mean number of electrons per detector pixel (noise ~4 % at mean).
DEFAULT_DOSE = 600.0
#: Default rms band contrast (relative modulation of the background).
DEFAULT_BAND_CONTRAST = 0.1
#: The brightest noise-free pixel of a map gets this many counts (auto gain).
FULL_SCALE = 50_000.0
#: Points of the beam-footprint quadrature (equal-area sunflower).
BEAM_STENCIL_POINTS = 64
#: Unbinned pixel size (um) and pixels across of the physical detector; the
#: binning of ``s.detector`` is chosen so that the patterns span this width.
DETECTOR_PX_SIZE = 70.0
DETECTOR_UNBINNED_PX = 480

_BLOCK = 1024  # beam positions rendered per block (bounds memory)
_PATTERN_CHUNK = 512  # patterns per get_patterns call with per-pattern PCs


# --------------------------------------------------------------------------
# master pattern (cached: loading and copying costs ~0.1 s)


_MASTER = {}


def _master_pattern():
    """Ni master pattern (Lambert, upper hemisphere) as float32.

    ``get_patterns`` rescales every pattern to the full range of the output
    dtype unless it equals the master pattern's dtype; a float32 copy keeps
    the projected intensities on one absolute scale for all orientations.
    """
    if "mp" not in _MASTER:
        import kikuchipy as kp

        mp = kp.data.nickel_ebsd_master_pattern_small(
            projection="lambert", hemisphere="upper"
        )
        mp.change_dtype("float32")
        data = np.asarray(mp.data, dtype=np.float64)
        _MASTER["mp"] = mp
        _MASTER["mean_std"] = (float(data.mean()), float(data.std()))
    return _MASTER["mp"], _MASTER["mean_std"]


# --------------------------------------------------------------------------
# image formation


def detector_background(pattern_shape: tuple[int, int]) -> np.ndarray:
    """Smooth relative detector background of mean 1, shape ``pattern_shape``.

    A Gaussian bump over a floor, centred slightly up and left of the
    detector centre, falling to about a quarter of the maximum in the far
    corner, like the static background of kikuchipy's Ni example data.
    """
    h, w = pattern_shape
    y = (np.arange(h) + 0.5) / h
    x = (np.arange(w) + 0.5) / w
    r2 = (x[None, :] - 0.45) ** 2 + (y[:, None] - 0.42) ** 2
    b = 0.2 + np.exp(-r2 / (2 * 0.35**2))
    return b / b.mean()


def beam_stencil(
    radius: float, aspect: float = 1.0, n: int = BEAM_STENCIL_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature of a uniform (top-hat) elliptical beam footprint.

    Returns ``(offsets (n, 2), weights (n,))``: an equal-area sunflower
    (Vogel) spiral over the disk, stretched by ``aspect`` along y, recentred
    so that its centroid is exactly the beam centre. ``radius = 0`` gives a
    point beam (one sample).
    """
    if radius == 0:
        return np.zeros((1, 2)), np.ones(1)
    k = np.arange(n)
    r = radius * np.sqrt((k + 0.5) / n)
    phi = k * np.pi * (3 - np.sqrt(5))  # golden angle
    off = np.stack([r * np.cos(phi), aspect * r * np.sin(phi)], axis=-1)
    off -= off.mean(axis=0)
    return off, np.full(n, 1.0 / n)


class _PatternModel:
    """Renders noise-free expected-count patterns at any beam positions."""

    def __init__(
        self,
        microstructure: Microstructure,
        detector: EBSDDetector,
        pc_reference: np.ndarray,
        pc_reference_xy: np.ndarray,
        pc_gradient: np.ndarray | None,
        step: float,
        beam_radius: float,
        beam_aspect: float,
        band_contrast: np.ndarray,
        dose: float,
    ) -> None:
        self.microstructure = microstructure
        self.pattern_shape = tuple(detector.shape)
        self._detector_kwargs = dict(
            shape=detector.shape,
            sample_tilt=detector.sample_tilt,
            tilt=detector.tilt,
            px_size=detector.px_size,
            binning=detector.binning,
        )
        self.pc_reference = pc_reference
        self.pc_reference_xy = pc_reference_xy
        self.pc_gradient = pc_gradient
        self.step = step
        self.offsets, self.weights = beam_stencil(beam_radius, beam_aspect)
        self.band_contrast = band_contrast
        self.background = detector_background(self.pattern_shape)
        self.dose = dose
        self.gain = 1.0  # set by the caller once the map's maximum is known
        # Without gradients and with one PC, a grain has one pattern.
        self._per_grain = microstructure.gradient_rate == 0 and pc_gradient is None
        self._grain_modulation = None

    def pc_at(self, xy: np.ndarray) -> np.ndarray:
        """PCs (..., 3) of beam positions (..., 2), linear in position."""
        pc = np.broadcast_to(self.pc_reference, xy.shape[:-1] + (3,)).copy()
        if self.pc_gradient is not None:
            d = (xy - self.pc_reference_xy) / self.step
            pc += d[..., :1] * self.pc_gradient[0] + d[..., 1:] * self.pc_gradient[1]
        return pc

    def modulation(self, q: np.ndarray, pc: np.ndarray | None) -> np.ndarray:
        """Standardised master-pattern intensities (M, h * w), float32."""
        mp, (mean, std) = _master_pattern()
        out = np.empty((len(q), int(np.prod(self.pattern_shape))), np.float32)
        size = len(q) if pc is None else _PATTERN_CHUNK
        for start in range(0, len(q), max(size, 1)):
            sl = slice(start, start + size)
            pcs = self.pc_reference if pc is None else pc[sl]
            det = EBSDDetector(pc=pcs, **self._detector_kwargs)
            sim = mp.get_patterns(
                Rotation(q[sl]), det, compute=True, show_progressbar=False
            )
            out[sl] = (sim.data.reshape(len(out[sl]), -1) - mean) / std
        return out

    def footprint(self, xy: np.ndarray):
        """Beam footprint split by grain, for beam positions (n, 2).

        Returns per (position, grain) entry: position index, grain id,
        area fraction and the centroid of the grain's part of the footprint.
        """
        n, k = len(xy), len(self.weights)
        ms = self.microstructure
        samples = xy[:, None, :] + self.offsets
        gid = ms.grain_id_at(samples)
        key = np.arange(n)[:, None] * ms.n_grain_ids + gid
        keys, inverse = np.unique(key.ravel(), return_inverse=True)
        w = np.broadcast_to(self.weights, (n, k)).ravel()
        fraction = np.bincount(inverse, weights=w)
        centroid = np.stack(
            [
                np.bincount(inverse, weights=w * samples[..., i].ravel()) / fraction
                for i in range(2)
            ],
            axis=-1,
        )
        index, grain = np.divmod(keys, ms.n_grain_ids)
        # A footprint inside one grain is centred on the beam (exactly).
        full = fraction > 1 - 1e-9
        centroid[full] = xy[index[full]]
        fraction[full] = 1.0
        return index, grain, fraction, centroid

    def render(self, xy: np.ndarray, grain: np.ndarray | None = None) -> np.ndarray:
        """Expected counts (n, h, w), float32, at beam positions (n, 2).

        Computed in electrons, then times the gain in float32, the same
        arithmetic for any positions: a map's ``clean`` and later calls agree
        bit for bit.

        With ``grain`` (n,), each beam is taken to lie wholly in that grain
        (its orientation field extended to the position): pure patterns.
        """
        h, w = self.pattern_shape
        out = np.empty((len(xy), h * w), np.float32)
        ms = self.microstructure
        if self._per_grain and self._grain_modulation is None:
            q = ms.grain_rotations
            self._grain_modulation = self.modulation(q, None)
        bg = self.background.ravel() * self.dose
        for start in range(0, len(xy), _BLOCK):
            p = xy[start : start + _BLOCK]
            if grain is None:
                index, g, fraction, centroid = self.footprint(p)
            else:
                index, g = np.arange(len(p)), grain[start : start + _BLOCK]
                fraction, centroid = np.ones(len(p)), p
            if self._per_grain:
                mod = self._grain_modulation[g]
            else:
                q = ms.rotations_of(g, centroid)
                pc = None if self.pc_gradient is None else self.pc_at(p)[index]
                mod = self.modulation(q, pc)
            # Mixing is linear in counts: sum_g f_g (1 + c_g m_g) with
            # sum_g f_g = 1, done as one sparse (positions x entries) product.
            mix = csr_matrix(
                (fraction * self.band_contrast[g], (index, np.arange(len(index)))),
                shape=(len(p), len(index)),
            )
            signal = 1.0 + mix @ mod.astype(np.float64)
            out[start : start + len(p)] = bg * np.maximum(signal, 0.0)
        out *= np.float32(self.gain)
        return out.reshape(len(xy), h, w)
