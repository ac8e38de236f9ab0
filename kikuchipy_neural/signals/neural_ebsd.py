"""The ``NeuralEBSD`` signal: a kikuchipy EBSD signal with a neural field.

The classes stay thin: every method validates its arguments, hands the work to
a module under :mod:`kikuchipy_neural.training` or
:mod:`kikuchipy_neural.analysis`, and wraps the result as a signal. HyperSpy
imports this module to resolve the signal type, so torch is imported only
inside the methods.
"""

from __future__ import annotations

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
            checkpointing then continues into it.
        nonfinite
            ``"raise"`` (default) on NaN/inf patterns, or ``"mask"`` to leave
            them out of training.
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
        from kikuchipy_neural.geometry import ScanGeometry

        model = self._require_model()
        nav_shape = self.data.shape[: self.axes_manager.navigation_dimension]
        xy = ScanGeometry.from_signal(self).grid_xy().reshape(*nav_shape, 2)
        lazy = queries.want_lazy(lazy, int(np.prod(nav_shape)), model, self)
        patterns = queries.decode(model, xy, lazy=lazy)
        title = self.metadata.get_item("General.title", "")
        return queries.patterns_to_signal(
            patterns,
            queries.axis_dicts(self.axes_manager.navigation_axes[::-1]),
            queries.axis_dicts(self.axes_manager.signal_axes[::-1]),
            detector=self.detector,
            title=f"Neural reconstruction of {title}".strip(),
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
