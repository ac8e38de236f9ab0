"""Reading and writing models: the model file and on-demand decoding.

- :mod:`.model_file`: :func:`~.model_file.save_model` /
  :func:`~.model_file.load_model`, one HDF5 file per model, safe to load.
- :mod:`.lazy_decoding`: :func:`~.lazy_decoding.load`, a model file as a
  ``LazyNeuralEBSD`` whose patterns are decoded chunk by chunk on demand.
"""

from kikuchipy_neural.io.lazy_decoding import load
from kikuchipy_neural.io.model_file import (
    FORMAT_VERSION,
    PRECISIONS,
    file_summary,
    load_model,
    save_model,
)

__all__ = [
    "FORMAT_VERSION",
    "PRECISIONS",
    "file_summary",
    "load",
    "load_model",
    "save_model",
]
