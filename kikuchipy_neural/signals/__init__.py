"""HyperSpy signal classes registered by kikuchipy-neural."""

from kikuchipy_neural.signals.neural_ebsd import LazyNeuralEBSD, NeuralEBSD

__all__ = ["NeuralEBSD", "LazyNeuralEBSD"]
