"""kikuchipy-neural: EBSD scans as continuous, differentiable neural fields.

HyperSpy imports this package to resolve the ``NeuralEBSD`` signal type, so
nothing heavy (torch, kikuchipy's numba code) is imported here: the public
functions are loaded on first use.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kikuchipy-neural")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# public name -> (module that defines it, attribute; None for the module itself)
_LAZY = {
    "load_model": ("kikuchipy_neural.io.model_file", "load_model"),
    "load": ("kikuchipy_neural.io.lazy_decoding", "load"),
    "NeuralEBSDModel": ("kikuchipy_neural.model", "NeuralEBSDModel"),
    "data": ("kikuchipy_neural.data", None),
    "analysis": ("kikuchipy_neural.analysis", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'kikuchipy_neural' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
