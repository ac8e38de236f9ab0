"""Simulated Ni EBSD maps with a known ground truth.

Patterns are projected from kikuchipy's bundled Ni master pattern with
:meth:`kikuchipy.signals.EBSDMasterPattern.get_patterns` onto a
:class:`kikuchipy.detectors.EBSDDetector`, for a known 2D microstructure
(:class:`~kikuchipy_neural.data.Microstructure`). The image formation model,
per detector pixel ``u`` and beam position ``p``::

    E(p, u) = gain * dose * B(u) * sum_g f_g(p) * (1 + c_g * m_g(p, u))

with ``B`` a smooth background of mean 1 (bright, slightly off-centre
maximum), ``f_g`` the fraction of the beam footprint in grain g (a top-hat
disk of radius ``beam_radius``), ``c_g`` a per-grain band contrast and
``m_g`` the master-pattern intensity of grain g's pattern standardised with
the master pattern's mean and standard deviation (the same constants for
every pattern, so brightness differences between orientations are kept).
``E`` is the noise-free expected count; measured counts are
``gain * Poisson(E / gain)`` rounded to uint16, i.e. ``dose`` is the mean
number of electrons per pixel and the count variance is ``gain * E``.

The truth (:class:`SyntheticTruth`) is attached to the returned signal as
``s.truth``: a plain attribute, which survives ``s.set_signal_type(...)``
(HyperSpy keeps the object's ``__dict__``) but not ``s.deepcopy()``,
``s.inav[...]`` or saving to file.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from kikuchipy.detectors import EBSDDetector
from kikuchipy.signals import EBSD
from numpy.typing import ArrayLike
from orix.crystal_map import CrystalMap, PhaseList
from orix.quaternion import Orientation, Rotation

from kikuchipy_neural.data._microstructure import (
    Microstructure,
    uniform_quaternions,
)
from kikuchipy_neural.data._patterns import (
    DEFAULT_BAND_CONTRAST,
    DEFAULT_DOSE,
    DEFAULT_PC,
    DETECTOR_PX_SIZE,
    DETECTOR_UNBINNED_PX,
    FULL_SCALE,
    _master_pattern,
    _PatternModel,
)
from kikuchipy_neural.data._truth import SyntheticTruth

__all__ = ["SyntheticTruth", "synthetic_polycrystal", "two_grain_map"]

# --------------------------------------------------------------------------
# builders


def synthetic_polycrystal(
    shape: tuple[int, int] = (64, 64),
    pattern_shape: tuple[int, int] = (60, 60),
    *,
    n_grains: int | None = None,
    seed: int | None = 0,
    step: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    twins: bool | float = False,
    orientation_gradient: float = 0.0,
    microstructure: Microstructure | None = None,
    beam_radius: float = 0.5,
    beam_aspect: float = 1.0,
    pc: ArrayLike = DEFAULT_PC,
    pc_gradient: bool | ArrayLike = False,
    sample_tilt: float = 70.0,
    detector_px_size: float = DETECTOR_PX_SIZE,
    detector_binning: int | None = None,
    dose: float = DEFAULT_DOSE,
    gain: float | None = None,
    band_contrast: float = DEFAULT_BAND_CONTRAST,
    noise: bool = True,
    noise_seed: int | None = None,
) -> EBSD:
    """Simulated Ni EBSD map of a known polycrystal, with its ground truth.

    Parameters
    ----------
    shape
        Scan shape (ny, nx): rows, columns.
    pattern_shape
        Detector shape (h, w) in pixels.
    n_grains
        Number of Voronoi grains, seeded inside the scanned field of view
        (a hard-core random sequential addition: equiaxed grains). Default
        one per 100 scan points, at least 2.
    seed
        Seed of everything random (non-negative int); None draws one, kept in
        ``s.truth.seed``. Grains, orientations, twins, gradients, contrasts
        and noise use independent streams: switching twins or gradients on
        keeps the same grains and orientations.
    step
        Scan step, um (``scale`` of the navigation axes).
    origin
        (x0, y0), um: position of the first scan point (axes offsets).
    twins
        Annealing twins: True (half of the grains) or the fraction of grains
        that get one straight, parallel-sided lamella with the Sigma3
        orientation (60 deg about <111>) to its parent, its edges on the
        trace of that {111} plane, at least ``max(2, 2 * beam_radius + 1)``
        steps wide (grains too small for that get none).
    orientation_gradient
        Intragranular orientation gradient, deg per scan step: each grain's
        lattice rotates about a random crystal axis by an angle growing
        linearly along a random in-plane direction (zero at its seed).
        Twins follow their parent.
    microstructure
        A ready :class:`Microstructure` (e.g. ``Microstructure.from_seeds``
        with hand-placed seeds); excludes ``n_grains``, ``twins`` and
        ``orientation_gradient``.
    beam_radius
        Radius of the (top-hat) beam footprint, in scan steps; patterns of
        footprints that straddle a boundary are area-weighted mixtures.
        0 gives a point beam.
    beam_aspect
        Footprint y/x axis ratio (> 1 mimics the elongation of the
        interaction volume on a tilted sample).
    pc
        Projection centre (PCx, PCy, PCz), Bruker convention, at the scan
        point (ny // 2, nx // 2).
    pc_gradient
        False: one PC for the whole map. True: PCs varying with the beam
        position as in :meth:`kikuchipy.detectors.EBSDDetector.extrapolate_pc`
        (detector geometry, ``step`` in um). Or an array (2, 3): the PC
        change per scan step along x (row 0) and along y (row 1), any drift.
        ``s.detector`` then holds (ny, nx, 3) PCs.
    sample_tilt
        Sample tilt, deg.
    detector_px_size, detector_binning
        Unbinned detector pixel size (um) and binning of ``s.detector``;
        the default binning makes the detector about 480 unbinned pixels
        (34 mm) wide. Only the PC gradient of ``pc_gradient=True`` uses them.
    dose
        Mean number of electrons per detector pixel (> 0); Poisson noise
        is ``1 / sqrt(dose)`` relative at mean intensity.
    gain
        Counts per electron. Default: the brightest noise-free pixel of the
        map gets 50 000 counts (uint16 full scale 65 535).
    band_contrast
        Mean rms Kikuchi band contrast relative to the background; each grain
        gets a random factor in [0.75, 1.25] of it.
    noise
        Whether to add Poisson noise; False returns the noise-free expected
        counts rounded to uint16.
    noise_seed
        Seed of the noise alone (another noise realisation of the same map);
        default derived from ``seed``.

    Returns
    -------
    kikuchipy.signals.EBSD
        uint16 patterns (ny, nx | h, w) with navigation axes y, x (scale
        ``step``, offsets ``origin``, um) and signal axes dy, dx (px),
        ``s.detector``, ``s.xmap`` (true beam-centre orientations, Ni phase,
        ``grain_id`` and ``boundary_distance`` properties; None for a single
        row or column, which orix cannot shape (1, n)),
        ``s.static_background`` (expected background counts, uint16) and
        ``s.truth`` (:class:`SyntheticTruth`).

    Notes
    -----
    ``s.truth`` is a plain attribute: it survives ``set_signal_type`` but
    not ``deepcopy``, ``inav`` slicing or saving. A 64 x 64 map of 60 x 60
    patterns takes a few seconds after kikuchipy's numba code is compiled.

    Examples
    --------
    >>> from kikuchipy_neural.data import synthetic_polycrystal
    >>> s = synthetic_polycrystal((16, 16), (40, 40), n_grains=4, seed=1)
    >>> s.data.dtype, s.truth.grain_id.shape, s.truth.clean.shape
    (dtype('uint16'), (16, 16), (16, 16, 40, 40))
    """
    ny, nx = _shape_pair("shape", shape)
    h, w = _shape_pair("pattern_shape", pattern_shape)
    step = _positive("step", step)
    x0, y0 = _finite_pair("origin", origin)
    beam_radius = _non_negative("beam_radius", beam_radius)
    beam_aspect = _positive("beam_aspect", beam_aspect)
    dose = _positive("dose", dose, hint="; use noise=False for noise-free counts")
    if gain is not None:
        gain = _positive("gain", gain)
    band_contrast = _non_negative("band_contrast", band_contrast)
    if band_contrast > 0.5:
        raise ValueError(f"band_contrast must be at most 0.5, got {band_contrast}")
    sample_tilt = _finite("sample_tilt", sample_tilt)
    detector_px_size = _positive("detector_px_size", detector_px_size)
    if detector_binning is None:
        detector_binning = max(1, round(DETECTOR_UNBINNED_PX / w))
    elif not _is_int(detector_binning) or detector_binning < 1:
        raise ValueError(
            f"detector_binning must be a positive int, got {detector_binning!r}"
        )
    seed = _seed("seed", seed)
    if noise_seed is not None:
        noise_seed = _seed("noise_seed", noise_seed)
    pc = np.asarray(pc, dtype=float)
    if pc.shape != (3,) or not np.all(np.isfinite(pc)) or pc[2] <= 0:
        raise ValueError(f"pc must be 3 finite numbers with PCz > 0, got {pc!r}")

    extent = (
        x0 - step / 2,
        x0 + (nx - 0.5) * step,
        y0 - step / 2,
        y0 + (ny - 0.5) * step,
    )
    beam_reach = beam_radius * max(1.0, beam_aspect)
    if microstructure is None:
        if n_grains is None:
            n_grains = max(2, round(ny * nx / 100))
        if not _is_int(n_grains) or n_grains < 1:
            raise ValueError(f"n_grains must be an int >= 1, got {n_grains!r}")
        if isinstance(twins, (bool, np.bool_)):
            twin_fraction = 0.5 if twins else 0.0
        elif isinstance(twins, numbers.Real) and 0 <= twins <= 1:
            twin_fraction = float(twins)
        else:
            raise ValueError(
                f"twins must be a bool or a fraction in [0, 1], got {twins!r}"
            )
        gradient = _finite("orientation_gradient", orientation_gradient)
        microstructure = Microstructure.random_voronoi(
            extent,
            int(n_grains),
            seed=seed,
            twin_fraction=twin_fraction,
            min_twin_width=max(2.0, 2 * beam_reach + 1.0) * step,
            gradient=np.deg2rad(gradient) / step,
        )
    elif not isinstance(microstructure, Microstructure):
        raise ValueError(
            "microstructure must be a kikuchipy_neural.data.Microstructure"
        )
    elif n_grains is not None or twins is not False or orientation_gradient != 0:
        raise ValueError(
            "n_grains, twins and orientation_gradient describe a random "
            "microstructure; they cannot be combined with microstructure="
        )

    # Detector and projection centres.
    i_ref, j_ref = ny // 2, nx // 2
    ref_xy = np.array([x0 + j_ref * step, y0 + i_ref * step])
    pc_grad = _pc_gradient(
        pc_gradient, step, (h, w), sample_tilt, detector_px_size, detector_binning
    )
    j, i = np.meshgrid(np.arange(nx), np.arange(ny))
    xy = np.stack([x0 + j * step, y0 + i * step], axis=-1).astype(float)
    det_kwargs = dict(
        shape=(h, w),
        sample_tilt=sample_tilt,
        px_size=detector_px_size,
        binning=int(detector_binning),
    )
    model = _PatternModel(
        microstructure,
        EBSDDetector(pc=pc, **det_kwargs),
        pc_reference=pc,
        pc_reference_xy=ref_xy,
        pc_gradient=pc_grad,
        step=step,
        beam_radius=beam_radius * step,
        beam_aspect=beam_aspect,
        band_contrast=_grain_contrasts(microstructure, band_contrast, seed),
        dose=dose,
    )
    detector = EBSDDetector(pc=pc if pc_grad is None else model.pc_at(xy), **det_kwargs)

    # Noise-free expected counts: render in electrons (gain 1), then apply
    # the gain as the model does for any later positions.
    clean = model.render(xy.reshape(-1, 2)).reshape(ny, nx, h, w)
    if gain is None:
        gain = FULL_SCALE / float(clean.max())
    model.gain = float(gain)
    clean *= np.float32(gain)
    if clean.max() > np.iinfo(np.uint16).max:
        warnings.warn(
            f"expected counts reach {clean.max():.0f}: uint16 data clip at 65 535; "
            "lower the gain or the dose",
            stacklevel=2,
        )
    if noise:
        streams = np.random.SeedSequence(seed, spawn_key=(6,))
        rng = np.random.default_rng(streams if noise_seed is None else noise_seed)
        data = np.empty(clean.shape, np.uint16)
        flat_in, flat_out = clean.reshape(-1, h * w), data.reshape(-1, h * w)
        for start in range(0, len(flat_in), 4096):
            electrons = rng.poisson(flat_in[start : start + 4096] / gain)
            flat_out[start : start + 4096] = np.clip(
                np.rint(electrons * gain), 0, np.iinfo(np.uint16).max
            )
    else:
        data = np.clip(np.rint(clean), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    truth = SyntheticTruth(
        model,
        xy,
        clean,
        detector,
        noise=bool(noise),
        seed=seed,
        noise_seed=noise_seed,
        beam_radius=beam_radius * step,
        beam_aspect=beam_aspect,
    )
    truth._noise_floor = truth.noise_floor_mae(data)
    return _as_signal(data, truth, step, (x0, y0))


def two_grain_map(
    shape: tuple[int, int] = (12, 24),
    pattern_shape: tuple[int, int] = (60, 60),
    *,
    boundary_x: float | None = None,
    rotations: Rotation | ArrayLike | None = None,
    seed: int | None = 0,
    step: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    **kwargs,
) -> EBSD:
    """Simulated Ni map of two grains split by one straight vertical boundary.

    Parameters
    ----------
    shape, pattern_shape
        Scan (ny, nx) and detector (h, w) shapes.
    boundary_x
        x position (um) of the boundary, strictly inside the scanned field of
        view. Default ``x0 + ((nx - 1) / 2 + 0.3) * step``: a sub-step
        position, 0.3 step right of the middle of the scan. Points with
        ``x < boundary_x`` are grain 0.
    rotations
        Orientations of grain 0 (left) and 1 (right): orix ``Rotation`` of
        size 2 or (2, 4) quaternions. Default: random by ``seed``, at least
        15 deg apart.
    seed, step, origin
        As in :func:`synthetic_polycrystal`.
    **kwargs
        Any other keyword of :func:`synthetic_polycrystal` (beam, PC, dose,
        noise, ...), except those describing the microstructure.

    Returns
    -------
    kikuchipy.signals.EBSD
        As :func:`synthetic_polycrystal`; ``s.truth.boundary_x`` and
        ``s.truth.kind == "two_grain"``.
    """
    ny, nx = _shape_pair("shape", shape)
    step = _positive("step", step)
    x0, y0 = _finite_pair("origin", origin)
    seed = _seed("seed", seed)
    for key in ("microstructure", "n_grains", "twins", "orientation_gradient"):
        if key in kwargs:
            raise ValueError(f"two_grain_map does not take {key}=")
    if boundary_x is None:
        boundary_x = x0 + ((nx - 1) / 2 + 0.3) * step
    boundary_x = _finite("boundary_x", boundary_x)
    if not x0 - step / 2 < boundary_x < x0 + (nx - 0.5) * step:
        raise ValueError(
            f"boundary_x must lie inside the scanned field of view "
            f"({x0 - step / 2}, {x0 + (nx - 0.5) * step}), got {boundary_x}"
        )
    if rotations is None:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
        while True:  # a clear boundary: not a low-angle one
            q = uniform_quaternions(2, rng)
            o = Orientation(q, symmetry=_master_pattern()[0].phase.point_group)
            if np.rad2deg(o[0].angle_with(o[1]))[0] >= 15:
                break
    else:
        q = rotations.data if isinstance(rotations, Rotation) else rotations
        q = np.asarray(q, dtype=float).reshape(-1, 4)
        if q.shape != (2, 4):
            raise ValueError("rotations must hold exactly two orientations")
    microstructure = Microstructure.two_grains(
        boundary_x,
        y_centre=y0 + (ny - 1) * step / 2,
        half_spacing=max(nx, ny) * step,
        rotations=q,
        seed=seed,
    )
    return synthetic_polycrystal(
        (ny, nx),
        pattern_shape,
        microstructure=microstructure,
        seed=seed,
        step=step,
        origin=(x0, y0),
        **kwargs,
    )


# --------------------------------------------------------------------------
# helpers


def _as_signal(
    data: np.ndarray, truth: SyntheticTruth, step: float, origin: tuple[float, float]
) -> EBSD:
    ny, nx, h, w = data.shape
    axes = [
        dict(
            name="y", size=ny, scale=step, offset=origin[1], units="um", navigate=True
        ),
        dict(
            name="x", size=nx, scale=step, offset=origin[0], units="um", navigate=True
        ),
        dict(name="dy", size=h, scale=1, offset=0, units="px", navigate=False),
        dict(name="dx", size=w, scale=1, offset=0, units="px", navigate=False),
    ]
    s = EBSD(data, axes=axes)
    s.metadata.General.title = f"Synthetic Ni ({truth.kind}, seed {truth.seed})"
    s.detector = truth.detector
    mp = _master_pattern()[0]
    xy = truth.xy.reshape(-1, 2)
    xmap = CrystalMap(
        rotations=Rotation(truth.orientations.data.reshape(-1, 4)),
        x=xy[:, 0],
        y=xy[:, 1],
        phase_list=PhaseList(mp.phase.deepcopy()),
        prop={
            "grain_id": truth.grain_id.ravel(),
            "boundary_distance": truth.boundary_distance_grid.ravel(),
        },
        scan_unit="um",
    )
    # orix drops size-1 dimensions (a 1 x n map is a line of shape (n,)),
    # which kikuchipy refuses for a (1, n) navigation shape.
    if xmap.shape == (ny, nx):
        s.xmap = xmap
    s.static_background = np.clip(np.rint(truth.background), 0, 65535).astype(np.uint16)
    s.truth = truth
    return s


def _grain_contrasts(ms: Microstructure, band_contrast: float, seed: int) -> np.ndarray:
    """Random band contrast per grain id (cells and twins drawn from separate
    streams, so twins leave the cells' contrasts unchanged)."""
    rng_cells = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,)))
    rng_twins = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(5,)))
    factor = np.concatenate(
        [
            rng_cells.uniform(0.75, 1.25, ms.n_cells),
            rng_twins.uniform(0.75, 1.25, ms.n_twins),
        ]
    )
    return band_contrast * factor


def _pc_gradient(
    pc_gradient, step, pattern_shape, sample_tilt, px_size, binning
) -> np.ndarray | None:
    """PC change per scan step along x (row 0) and y (row 1), or None."""
    if isinstance(pc_gradient, (bool, np.bool_)):
        if not pc_gradient:
            return None
        # The beam-shift model of EBSDDetector.extrapolate_pc (Singh et al.
        # 2017), with zero detector tilt.
        h, w = pattern_shape
        alpha = np.deg2rad(90 - sample_tilt)
        width = px_size * binning
        return np.array(
            [
                [-step / (width * w), 0.0, 0.0],
                [
                    0.0,
                    -step * np.cos(alpha) / (width * h),
                    step * np.sin(alpha) / (width * h),
                ],
            ]
        )
    g = np.asarray(pc_gradient, dtype=float)
    if g.shape != (2, 3) or not np.all(np.isfinite(g)):
        raise ValueError(
            "pc_gradient must be True/False or a finite (2, 3) array of PC changes "
            f"per scan step along x and y, got {pc_gradient!r}"
        )
    return g


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(
        value, (bool, np.bool_)
    )


def _shape_pair(name: str, value) -> tuple[int, int]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a pair of positive ints, got {value!r}"
        ) from None
    if not (_is_int(a) and _is_int(b)) or a < 1 or b < 1:
        raise ValueError(f"{name} must be a pair of positive ints, got {value!r}")
    return int(a), int(b)


def _finite(name: str, value) -> float:
    if not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive(name: str, value, hint: str = "") -> float:
    if not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a positive finite number, got {value!r}{hint}"
        )
    return float(value)


def _non_negative(name: str, value) -> float:
    if not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _finite_pair(name: str, value) -> tuple[float, float]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a pair of finite numbers, got {value!r}"
        ) from None
    return _finite(name, a), _finite(name, b)


def _seed(name: str, value) -> int:
    if value is None:
        return int(np.random.SeedSequence().entropy)
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
    return int(value)
