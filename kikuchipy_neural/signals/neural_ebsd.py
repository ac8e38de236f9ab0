"""The ``NeuralEBSD`` signal: a kikuchipy EBSD signal with a neural field.

The classes stay thin: every method validates its arguments, hands the work to
a module under :mod:`kikuchipy_neural.training` or
:mod:`kikuchipy_neural.analysis`, and wraps the result as a signal. HyperSpy
imports this module to resolve the signal type, so torch is imported only
inside the methods.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import numpy as np
from kikuchipy.signals import EBSD, LazyEBSD, _kikuchipy_signal

if TYPE_CHECKING:  # pragma: no cover
    from kikuchipy_neural.model import NeuralEBSDModel

SIGNAL_TYPE = "NeuralEBSD"

# kikuchipy carries its custom attributes (detector, xmap, static background)
# through set_signal_type, as_lazy, deepcopy and change_dtype only for signal
# types listed here, and deletes them for any other type.
if SIGNAL_TYPE not in _kikuchipy_signal.SIGNAL_TYPES:
    _kikuchipy_signal.SIGNAL_TYPES.append(SIGNAL_TYPE)


class NeuralEBSD(EBSD):
    """EBSD signal that can be fitted with, and queried through, a neural field.

    Obtained from any kikuchipy ``EBSD`` signal with
    ``s.set_signal_type("NeuralEBSD")``; everything of ``EBSD`` is kept.
    """

    _signal_type = SIGNAL_TYPE
    _custom_attributes = ["detector", "static_background", "xmap", "neural_model"]

    def __init__(self, *args, **kwargs) -> None:
        # HyperSpy's set_signal_type re-runs __init__ on the same object, and
        # EBSD.__init__ would replace the detector and crystal map by defaults:
        # keep what the object already holds unless new values are passed.
        carried = {
            name: self.__dict__["_" + name]
            for name in self._custom_attributes
            if "_" + name in self.__dict__ and name not in kwargs
        }
        super().__init__(*args, **kwargs)
        self._neural_model = kwargs.get("neural_model")
        for name, value in carried.items():
            setattr(self, "_" + name, value)

    # ------------------------------------------------------------------ model

    @property
    def neural_model(self) -> NeuralEBSDModel | None:
        """The attached :class:`~kikuchipy_neural.NeuralEBSDModel`, or None.

        Set by :meth:`fit_neural`, or by assigning a model loaded with
        :func:`kikuchipy_neural.load_model`.
        """
        return self._neural_model

    @neural_model.setter
    def neural_model(self, model: NeuralEBSDModel | None) -> None:
        if model is not None:
            from kikuchipy_neural.model import NeuralEBSDModel

            if not isinstance(model, NeuralEBSDModel):
                raise TypeError(
                    "neural_model must be a NeuralEBSDModel (from fit_neural or "
                    f"kikuchipy_neural.load_model) or None, got {type(model).__name__}"
                )
            model.check_signal_compatible(self)
        self._neural_model = model

    def _require_model(self) -> NeuralEBSDModel:
        if self._neural_model is None:
            raise RuntimeError(
                "No neural model is attached to this signal: fit one with "
                "`s.fit_neural()` or attach a saved one with "
                "`s.neural_model = kikuchipy_neural.load_model(path)`."
            )
        self._neural_model.check_signal_compatible(self)
        return self._neural_model

    # -------------------------------------------------------------- fitting

    def fit_neural(
        self,
        formulation: str = "factorized",
        rank: int | str = "auto",
        variance: float | None = None,
        mask=None,
        max_steps: int | None = None,
        time_budget: float | None = None,
        device=None,
        seed: int = 0,
        show_progressbar: bool | None = None,
        resume=None,
        nonfinite: str = "raise",
        positions=None,
        **options,
    ) -> NeuralEBSDModel:
        """Fit a neural field to the scan and attach it as ``neural_model``.

        Parameters
        ----------
        formulation
            ``"factorized"`` (TF-INR: a SIREN of (x, y) weighting learnable
            basis patterns) or ``"joint"`` (4D-INR: one SIREN of (x, y, u, v)).
        rank
            Number of bases (mean pattern included), or ``"auto"``: every PCA
            component above the noise edge of the spectrum (see
            :mod:`kikuchipy_neural.training.preprocessing`).
        variance
            Instead of ``rank``: the smallest rank explaining this share of
            the variance (the paper's guide, e.g. 0.95).
        mask
            Boolean array of the navigation shape; True = train on the point.
            Points with False are never read into the loss.
        max_steps, time_budget
            Stop after this many optimiser steps (default 200 000) or seconds
            (preprocessing included), besides early stopping.
        device
            ``"cpu"``, ``"cuda"``, ... ; None: CUDA when available.
        seed
            Seed of every random choice; the same seed gives the same model
            on the same machine.
        show_progressbar
            None: HyperSpy's preference.
        resume
            Path of a checkpoint (``checkpoint=`` option) to continue from;
            checkpointing then continues into it. The checkpoint's rank,
            network, training and validation points carry over (a rank,
            variance or option of
            ``kikuchipy_neural.training.options.FIXED_ON_RESUME`` that
            differs raises); limits, learning rates and patience may change.
        nonfinite
            ``"raise"`` (default) on NaN/inf patterns, or ``"mask"`` to leave
            them out of training.
        positions
            ``(n, 2)`` calibrated ``(x, y)`` of every pattern of a signal
            with one navigation axis, for scans off a square grid (e.g. a
            hexagonal grid given as coordinates). Queries then address the
            bounding rectangle of the points, and :meth:`upsample`
            resamples onto a square grid.
        **options
            Every hyper-parameter, see
            :class:`~kikuchipy_neural.training.FitOptions`.

        Returns
        -------
        model
            The fitted :class:`~kikuchipy_neural.NeuralEBSDModel`, also kept
            as ``s.neural_model``.
        """
        from kikuchipy_neural.training.fit import fit

        if resume is None:
            _check_fit_up_front(self, formulation, rank, mask, options)
        model = fit(
            self,
            formulation=formulation,
            rank=rank,
            variance=variance,
            mask=mask,
            max_steps=max_steps,
            time_budget=time_budget,
            device=device,
            seed=seed,
            show_progressbar=show_progressbar,
            resume=resume,
            nonfinite=nonfinite,
            positions=positions,
            **options,
        )
        self._neural_model = model
        return model

    # ------------------------------------------------------------- decoding

    def neural_reconstruct(self, lazy: bool | None = None) -> EBSD:
        """The model's patterns on this signal's scan grid.

        Parameters
        ----------
        lazy
            Return a ``LazyEBSD`` decoded chunk by chunk on demand. None:
            lazy for lazy signals and outputs above 1 GiB.

        Returns
        -------
        signal
            ``EBSD``/``LazyEBSD`` of float32 patterns in the measured
            intensity scale, with this signal's axes and detector.
        """
        from kikuchipy_neural.analysis import queries

        model = self._require_model()
        nav_shape = self.data.shape[: self.axes_manager.navigation_dimension]
        xy = self._scan_geometry(model).grid_xy().reshape(*nav_shape, 2)
        lazy = queries.want_lazy(lazy, int(np.prod(nav_shape)), model, self)
        patterns = queries.decode(model, xy, lazy=lazy)
        return self._on_scan_grid(patterns, "Neural reconstruction of")

    def neural_denoise(
        self, noise_variance: float | None = None, lazy: bool | None = None
    ) -> EBSD:
        """This signal's patterns denoised, with the fitted field as prior.

        Each measured pattern's part in the span of the model's bases is
        shrunk towards the field's pattern by the James-Stein factor: the
        noise goes where the field explains the point (grain interiors),
        the point's own detail stays where it does not (boundary blends,
        defects). Expected error at most that of PCA of the same span. See
        :mod:`kikuchipy_neural.analysis.denoising`. Factorized models only.

        Parameters
        ----------
        noise_variance
            Noise variance of one pixel (counts squared); None: the fit's
            estimate.
        lazy
            Return a ``LazyEBSD`` computed chunk by chunk. None: as this
            signal.

        Returns
        -------
        signal
            ``EBSD``/``LazyEBSD`` of float32 patterns with this signal's
            axes and detector.
        """
        import dask.array as da

        from kikuchipy_neural.analysis.denoising import denoise_scan

        model = self._require_model()
        nav_shape = self.data.shape[: self.axes_manager.navigation_dimension]
        xy = self._scan_geometry(model).grid_xy().reshape(*nav_shape, 2)
        data = self.data
        if lazy is None:
            lazy = isinstance(data, da.Array)
        if lazy and not isinstance(data, da.Array):
            data = da.from_array(data, chunks=("auto",) * (data.ndim - 2) + (-1, -1))
        elif not lazy and isinstance(data, da.Array):
            data = data.compute()
        return self._on_scan_grid(
            denoise_scan(model, data, xy, noise_variance), "Neurally denoised"
        )

    def _on_scan_grid(self, patterns, title_prefix: str) -> EBSD:
        """Patterns of this signal's scan points as an ``EBSD``/``LazyEBSD``
        with this signal's axes and detector."""
        from kikuchipy_neural.analysis import queries

        title = self.metadata.get_item("General.title", "")
        return queries.patterns_to_signal(
            patterns,
            queries.axis_dicts(self.axes_manager.navigation_axes[::-1]),
            queries.axis_dicts(self.axes_manager.signal_axes[::-1]),
            detector=self.detector,
            title=f"{title_prefix} {title}".strip(),
        )

    def _scan_geometry(self, model: NeuralEBSDModel):
        """Where this signal's patterns sit: its axes, or the model's explicit
        positions for a scattered scan."""
        from kikuchipy_neural.geometry import ScanGeometry

        if model.geometry.scattered:
            return model.geometry
        return ScanGeometry.from_signal(self)

    def _decoded(
        self, model, xy, lazy, extrapolate, sharpen, title, nav_axes=None
    ) -> EBSD:
        from kikuchipy_neural.analysis import queries

        return queries.query_signal(
            model,
            xy,
            lazy=lazy,
            extrapolate=extrapolate,
            sharpen_boundaries=sharpen,
            nav_axes=nav_axes,
            detector=self.detector,
            detector_geometry=self._scan_geometry(model),
            signal_axes=queries.axis_dicts(self.axes_manager.signal_axes[::-1]),
            static_background=self.static_background,
            signal=self,
            title=title,
        )

    def neural_query(
        self,
        xy,
        lazy: bool | None = None,
        extrapolate: bool = False,
        sharpen_boundaries: bool = False,
    ) -> EBSD:
        """The model's patterns at arbitrary scan positions.

        Parameters
        ----------
        xy
            Array ``(..., 2)`` of calibrated ``(x, y)`` positions (x first, in
            the navigation axes' units).
        lazy
            Return a ``LazyEBSD`` decoded chunk by chunk on demand (any dask
            scheduler, distributed included). None: lazy for lazy signals
            and outputs above 1 GiB.
        extrapolate
            Allow positions outside the scanned rectangle; by default they
            raise ``ValueError``.
        sharpen_boundaries
            Replace the blend of two grains' patterns decoded near a boundary
            by the dominant grain's pattern (see
            :meth:`NeuralEBSDModel.query`): for indexing orientations at
            points that were not measured, at about 4x the decoding time.

        Returns
        -------
        signal
            ``EBSD``/``LazyEBSD`` of float32 patterns in the measured
            intensity scale with navigation shape ``xy.shape[:-1]``:
            calibrated ``y, x`` axes when ``xy`` is an evenly spaced grid,
            index axes otherwise. The detector is carried over, with its
            pattern centres interpolated to ``xy`` when it has one per scan
            point; the static background is carried over too.

        Examples
        --------
        >>> xy = np.array([[2.5, 3.25], [7.1, 0.4]])
        >>> s2 = s.neural_query(xy)  # doctest: +SKIP
        >>> s2.axes_manager.navigation_shape  # doctest: +SKIP
        (2,)
        """
        model = self._require_model()
        title = self.metadata.get_item("General.title", "")
        return self._decoded(
            model,
            xy,
            lazy,
            extrapolate,
            sharpen_boundaries,
            f"Neural query of {title}".strip(),
        )

    def upsample(
        self,
        factor: float = 2,
        lazy: bool | None = None,
        sharpen_boundaries: bool = False,
    ) -> EBSD:
        """The model's patterns on a grid ``factor`` times finer.

        Parameters
        ----------
        factor
            Refinement along x and y (any positive number; 1 gives the scan
            grid). The grid keeps the scan's first corner and steps
            ``dx / factor``, ``dy / factor``, and never reaches past the
            scan (its far corner is kept when ``(n - 1) * factor`` is whole).
            A scan fitted at explicit ``positions`` (e.g. a hexagonal grid)
            is resampled onto a square grid of spacing ``step / factor``
            over its bounding rectangle, ``step`` being the median distance
            between neighbouring points.
        lazy
            Return a ``LazyEBSD`` decoded chunk by chunk on demand. None:
            lazy for lazy signals and outputs above 1 GiB.
        sharpen_boundaries
            Replace the blend of two grains' patterns decoded near a boundary
            by the dominant grain's pattern (see
            :meth:`NeuralEBSDModel.query`): for indexing orientations at
            points that were not measured, at about 4x the decoding time.

        Returns
        -------
        signal
            ``EBSD``/``LazyEBSD`` of float32 patterns with calibrated axes
            (scales divided by ``factor``) and the detector carried over
            (per-point pattern centres interpolated to the finer grid).
        """
        from kikuchipy_neural.analysis import queries

        model = self._require_model()
        geometry = self._scan_geometry(model)
        # Lazy or not first: a lazy grid is built per chunk (memory bounded
        # for any factor), an eager one larger than memory is refused.
        n = math.prod(queries.upsample_shape(geometry, factor))
        lazy = queries.want_lazy(lazy, n, model, self)
        xy, nav_axes = queries.upsample_xy(
            geometry,
            factor,
            lazy=lazy,
            points_per_chunk=queries.points_per_chunk(model),
        )
        if not geometry.scattered:
            # Keep this signal's axis names and units.
            for new, old in zip(
                nav_axes,
                queries.axis_dicts(self.axes_manager.navigation_axes[::-1]),
                strict=True,
            ):
                new.update(name=old["name"], units=old["units"])
        title = self.metadata.get_item("General.title", "")
        return self._decoded(
            model,
            xy,
            lazy,
            False,
            sharpen_boundaries,
            f"Neural upsampling (x{float(factor):g}) of {title}".strip(),
            nav_axes=nav_axes,
        )

    def neural_path(
        self,
        start,
        end,
        n: int,
        lazy: bool | None = None,
        extrapolate: bool = False,
        sharpen_boundaries: bool = False,
    ) -> EBSD:
        """The model's patterns along a straight segment.

        Parameters
        ----------
        start, end
            ``(x, y)`` of the segment's ends, calibrated units.
        n
            Number of patterns, both ends included (>= 2).
        lazy
            Return a ``LazyEBSD``. None: lazy for lazy signals and outputs
            above 1 GiB.
        extrapolate
            Allow ends outside the scanned rectangle.
        sharpen_boundaries
            Replace the blend of two grains' patterns decoded near a boundary
            by the dominant grain's pattern (see
            :meth:`NeuralEBSDModel.query`): for indexing orientations at
            points that were not measured, at about 4x the decoding time.

        Returns
        -------
        signal
            ``EBSD``/``LazyEBSD`` with one navigation axis, ``distance``
            along the segment from ``start`` (calibrated units), and the
            detector carried over. See
            :func:`kikuchipy_neural.analysis.paths.path_profile` for Hough
            indexing along the path.
        """
        from kikuchipy_neural.analysis import queries

        model = self._require_model()
        if isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 2:
            lazy = queries.want_lazy(lazy, int(n), model, self)
        xy, length = queries.path_xy(
            start,
            end,
            n,
            lazy=bool(lazy),
            points_per_chunk=queries.points_per_chunk(model),
        )
        nav_axes = [
            {
                "size": int(n),
                "scale": length / (int(n) - 1),
                "offset": 0.0,
                "units": model.geometry.units,
                "name": "distance",
            }
        ]
        title = self.metadata.get_item("General.title", "")
        out = self._decoded(
            model,
            xy,
            lazy,
            extrapolate,
            sharpen_boundaries,
            f"Neural path of {title}".strip(),
            nav_axes,
        )
        out.metadata.set_item("Neural.path_start", xy[0])
        out.metadata.set_item("Neural.path_end", xy[-1])
        return out

    def neural_fill(
        self,
        mask,
        refit: bool = True,
        sharpen_boundaries: bool = False,
        **fit_kwargs,
    ) -> NeuralEBSD:
        """This signal with some scan points replaced by the model's patterns.

        Parameters
        ----------
        mask
            Boolean array of the navigation shape, True at the points to
            replace (non-indexed, damaged, missing: anything, NaN
            included, since they are never read).
        refit
            Fit a new model without the masked points first (default),
            passing ``fit_kwargs`` to :meth:`fit_neural`; it is attached as
            ``neural_model``. False: use the attached model as it is (it
            should have been fitted with ``mask=~mask``).
        sharpen_boundaries
            Replace the blend of two grains' patterns decoded near a boundary
            by the dominant grain's pattern (see
            :meth:`NeuralEBSDModel.query`): for indexing orientations at
            points that were not measured, at about 4x the decoding time.
        **fit_kwargs
            Arguments of :meth:`fit_neural` (not ``mask``).

        Returns
        -------
        signal
            A new signal of this type, dtype and shape (decoded intensities
            rounded and clipped for integer data), lazy for lazy signals,
            with the detector, crystal map and model carried over.
        """
        from kikuchipy_neural.analysis import queries

        nav_shape = self.data.shape[: self.axes_manager.navigation_dimension]
        mask = np.asarray(mask.compute() if hasattr(mask, "compute") else mask)
        if mask.dtype != bool:
            raise TypeError(f"mask must be a boolean array, got dtype {mask.dtype}")
        if mask.shape != nav_shape:
            if mask.size != int(np.prod(nav_shape)) or mask.ndim != 1:
                raise ValueError(
                    f"mask must have the navigation shape {nav_shape}, got {mask.shape}"
                )
            mask = mask.reshape(nav_shape)
        if not mask.any():
            raise ValueError("mask selects no point to fill")
        if mask.all():
            raise ValueError("mask selects every point: nothing is left to fit from")
        if refit:
            if "mask" in fit_kwargs:
                raise TypeError("neural_fill sets the fit's mask itself (~mask)")
            self.fit_neural(mask=~mask, **fit_kwargs)
        elif fit_kwargs:
            raise TypeError(f"Fit arguments {sorted(fit_kwargs)} need refit=True")
        model = self._require_model()
        xy = self._scan_geometry(model).grid_xy().reshape(*nav_shape, 2)
        filled = queries.fill(model, self.data, mask, xy, sharpen_boundaries)
        return self._deepcopy_with_new_data(filled)

    # ------------------------------------------------- diffraction gradient

    def diffraction_gradient(
        self,
        factor: float = 1,
        lazy: bool | None = None,
        show_progressbar: bool | None = None,
    ):
        """The diffraction gradient ``S(x, y)`` on a grid ``factor`` times finer.

        ``S = ||d A / d(x, y)||_F``, the Frobenius norm of the spatial
        Jacobian of the factorized field's coefficients ``A`` (in pattern
        units, so that how a scale is split between bases and coefficients
        does not matter), or of the whole pattern ``I`` for the joint field:
        how fast the patterns change with the beam position. Computed
        analytically by forward-mode automatic differentiation of the
        network, never by finite differences. Large along grain boundaries,
        small inside grains; see :meth:`neural_boundaries` and
        :meth:`neural_grains`.

        Parameters
        ----------
        factor
            Refinement along x and y (any positive number; 1 gives the scan
            grid), the grid of :meth:`upsample`.
        lazy
            Return a ``LazySignal2D`` computed chunk by chunk on demand
            (bounded memory for any factor). None: lazy for lazy signals and
            outputs above 1 GiB.
        show_progressbar
            Progress bar of an eager evaluation; None: HyperSpy's preference.

        Returns
        -------
        hyperspy.signals.Signal2D
            float32 image with signal axes y, x calibrated as this scan
            (offsets kept, scales divided by ``factor``); units of
            normalised intensity per navigation unit. A line scan gives a
            ``Signal1D``.

        Examples
        --------
        >>> s_map = s.diffraction_gradient(factor=4)  # doctest: +SKIP
        >>> s_map.plot()  # doctest: +SKIP
        """
        from kikuchipy_neural.analysis.gradient import gradient_signal

        model = self._require_model()
        if lazy is None and self._lazy:
            lazy = True
        title = self.metadata.get_item("General.title", "")
        return gradient_signal(
            model,
            factor,
            lazy=lazy,
            title=f"Diffraction gradient of {title}".strip(),
            show_progressbar=show_progressbar,
        )

    def neural_boundaries(
        self,
        factor: float = 8,
        low: float | None = None,
        high: float | None = None,
        min_length: float | None = None,
        refine: str | None = "centroid",
        show_progressbar: bool | None = None,
    ):
        """Grain boundaries as sub-step traces of ridges of ``S``, no indexing.

        Non-maximum suppression of :meth:`diffraction_gradient` along the
        direction of fastest change, hysteresis thresholds, each ridge point
        moved across the ridge by exact evaluations of ``S``, and ridge
        points linked into polylines. See
        :func:`kikuchipy_neural.analysis.boundaries.ridge_trace`.

        Parameters
        ----------
        factor
            Refinement of the search grid (4-10).
        low, high
            Hysteresis thresholds on ``S``; None: automatic.
        min_length
            Drop boundary networks shorter than this (calibrated units);
            default one scan step.
        refine
            ``"centroid"`` (default), ``"peak"`` or None.
        show_progressbar
            Progress bar of the ``S`` evaluation.

        Returns
        -------
        kikuchipy_neural.analysis.boundaries.BoundaryTrace
            Polylines and points in calibrated units, with ``plot(ax)``.
        """
        from kikuchipy_neural.analysis.boundaries import ridge_trace

        return self._boundary_analysis(
            ridge_trace,
            show_progressbar,
            factor=factor,
            low=low,
            high=high,
            min_length=min_length,
            refine=refine,
        )

    def neural_grains(
        self,
        factor: float = 4,
        threshold: float | None = None,
        merge_threshold: float | None = None,
        min_area: float | None = None,
        show_progressbar: bool | None = None,
    ):
        """Grains by a watershed of the diffraction gradient, no indexing.

        See :func:`kikuchipy_neural.analysis.boundaries.segment_grains`.

        Parameters
        ----------
        factor
            Refinement of the grid of the grain-id map.
        threshold
            ``S`` below which points seed grain interiors; None: automatic.
        merge_threshold
            Neighbouring regions whose shared line has a mean ``S`` below
            this are merged; None: automatic.
        min_area
            Smallest seed region, calibrated units squared; default a
            quarter of a scan step squared.
        show_progressbar
            Progress bar of the ``S`` evaluation.

        Returns
        -------
        kikuchipy_neural.analysis.boundaries.GrainSegmentation
            Grain-id map on the grid, grain areas and sizes, with
            ``grain_id_at(xy)`` and ``plot(ax)``.
        """
        from kikuchipy_neural.analysis.boundaries import segment_grains

        return self._boundary_analysis(
            segment_grains,
            show_progressbar,
            factor=factor,
            threshold=threshold,
            merge_threshold=merge_threshold,
            min_area=min_area,
        )

    def _boundary_analysis(self, analysis, show_progressbar: bool | None, **kwargs):
        """``analysis(model, show_progressbar=..., **kwargs)`` with HyperSpy's
        progress-bar preference following ``show_progressbar``
        (:func:`_progressbar_preference`)."""
        with _progressbar_preference(show_progressbar):
            return analysis(
                self._require_model(), show_progressbar=show_progressbar, **kwargs
            )

    # ---------------------------------------------------- HyperSpy overrides

    def set_signal_type(self, signal_type: str = "") -> None:
        # Going back to EBSD (or another kikuchipy type) would otherwise reset
        # the detector and crystal map; attributes the new class does not know
        # (the neural model) are dropped by _set_custom_attributes.
        attributes = self._get_custom_attributes()
        super().set_signal_type(signal_type)
        if hasattr(self, "_set_custom_attributes"):
            self._set_custom_attributes(attributes)


class LazyNeuralEBSD(LazyEBSD, NeuralEBSD):
    """Lazy (dask-backed) :class:`NeuralEBSD`."""


@contextlib.contextmanager
def _progressbar_preference(show: bool | None):
    """HyperSpy's progress-bar preference set to ``show`` (None: left as it
    is) for the duration: the boundary analyses evaluate ``S`` at probe
    points with the preference's default, which drew bars although
    ``show_progressbar=False`` was asked for."""
    if show is None:
        yield
        return
    from hyperspy.defaults_parser import preferences

    previous = preferences.General.show_progressbar
    preferences.General.show_progressbar = bool(show)
    try:
        yield
    finally:
        preferences.General.show_progressbar = previous


def _check_fit_up_front(signal, formulation: str, rank, mask, options: dict) -> None:
    """What a fit would refuse only after reading the data: an integer rank
    outside ``[2, min(points, pixels)]`` (PCA's limit, a sampled-pattern
    limit aside) and a checkpoint that cannot be written."""
    from kikuchipy_neural.safe_files import check_destination

    if options.get("checkpoint") is not None:
        check_destination(options["checkpoint"], "checkpoint")
    if formulation != "factorized" or isinstance(rank, bool):
        return
    if not isinstance(rank, int | np.integer):
        return
    n_pixels = math.prod(signal.axes_manager.signal_shape)
    n_points = math.prod(signal.axes_manager.navigation_shape) or 1
    if mask is not None and hasattr(mask, "sum") and not hasattr(mask, "compute"):
        n_points = int(np.sum(mask))
    limit = min(n_points, n_pixels)
    if not 2 <= rank <= limit:
        raise ValueError(
            f"rank={rank} is not possible here: it must be between 2 and {limit} "
            f"(points to train on: {n_points}, pixels per pattern: {n_pixels})"
        )
