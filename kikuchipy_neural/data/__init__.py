"""Simulated EBSD data with a known ground truth.

:func:`synthetic_polycrystal` and :func:`two_grain_map` return kikuchipy
``EBSD`` signals of Ni patterns for a known microstructure; the truth is
``s.truth`` (:class:`SyntheticTruth`).
"""

from kikuchipy_neural.data._microstructure import Microstructure
from kikuchipy_neural.data.synthetic import (
    SyntheticTruth,
    synthetic_polycrystal,
    two_grain_map,
)

__all__ = ["Microstructure", "SyntheticTruth", "synthetic_polycrystal", "two_grain_map"]
