"""Training: data access, samplers, losses, the loop and checkpoints."""

from kikuchipy_neural.training.fit import fit
from kikuchipy_neural.training.options import FitOptions

__all__ = ["FitOptions", "fit"]
