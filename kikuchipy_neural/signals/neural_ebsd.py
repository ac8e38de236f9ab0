"""The ``NeuralEBSD`` signal: a kikuchipy EBSD signal with a neural field.

The classes stay thin: every method validates its arguments, hands the work to
a module under :mod:`kikuchipy_neural.training` or
:mod:`kikuchipy_neural.analysis`, and wraps the result as a signal. HyperSpy
imports this module to resolve the signal type, so torch is imported only
inside the methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kikuchipy.signals import EBSD, LazyEBSD
from kikuchipy.signals import _kikuchipy_signal

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
