"""The GPU path of a fit: precision, host-to-device transfers, OOM backoff.

Precision (``precision=`` fit option)
    ``"float32"`` (default) everywhere. ``"tf32"`` lets CUDA matmuls and
    convolutions use TensorFloat-32 (10-bit mantissa inputs, float32
    accumulation) during the fit, the SIREN's sine layers included; it is
    only offered because the error it adds to the sine arguments was
    measured (``benchmarks/gpu_projection.py`` reports it) and is far below
    the noise; on a CPU it changes nothing. ``"bf16"`` computes the
    factorized field's basis product ``A(x, y) @ B`` in bfloat16 autocast
    during training: the coefficients are still computed in float32, so no
    sine layer ever sees a bfloat16 input (an 8-bit mantissa would shift a
    sine argument of omega_0 * z ~ 30 by ~0.1 rad). Validation, decoding and
    gradients always run in float32.

Transfers
    On a GPU a batch's patterns travel as their raw integer counts (2 bytes
    per value for 16-bit data instead of 4) from pinned memory with
    ``non_blocking=True``, and are normalised on the device.

Out of memory
    A training step that runs out of GPU memory is retried with half the
    positions (or coordinates) per batch, with a warning, down to one.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from kikuchipy_neural.training.options import PRECISIONS

__all__ = [
    "OUT_OF_MEMORY",
    "PRECISIONS",
    "matmul_precision",
    "out_of_memory_backoff",
    "pattern_values",
    "shrink_batch",
    "to_device",
]


# torch >= 2.5 has torch.OutOfMemoryError; earlier versions the CUDA one.
OUT_OF_MEMORY: type[Exception] = getattr(
    torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError
)


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """TF32 matmuls and convolutions on CUDA while the block runs (restored
    after) when ``precision == "tf32"``; nothing otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def pattern_values(
    field, xy: torch.Tensor, pixels: torch.Tensor | None, precision: str
) -> torch.Tensor:
    """``field.pattern_values(xy, pixels)``, with a factorized field's basis
    product in bfloat16 when ``precision == "bf16"`` (float32 result)."""
    bases = getattr(field, "bases", None)
    if precision != "bf16" or bases is None or not hasattr(field, "coefficients"):
        return field.pattern_values(xy, pixels)
    coefficients = field.coefficients(xy)  # float32: sine arguments stay exact
    if pixels is not None:
        bases = bases[:, pixels]
    with torch.autocast(xy.device.type, dtype=torch.bfloat16):
        product = coefficients @ bases
    return product.float()


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``: pinned and non-blocking for CUDA.

    16-bit unsigned counts travel as int16 bits (torch before 2.3 has no
    uint16) and are widened on the device, so the result of a ``uint16``
    array is ``int32``; other dtypes keep theirs.
    """
    array = np.ascontiguousarray(array)
    unsigned16 = array.dtype == np.uint16
    tensor = torch.from_numpy(array.view(np.int16) if unsigned16 else array)
    if device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    else:
        tensor = tensor.to(device)
    if unsigned16:
        tensor = tensor.to(torch.int32) & 0xFFFF
    return tensor


def shrink_batch(sampler) -> int | None:
    """Halve a sampler's batch (``n_positions`` or ``batch_size``); returns
    the new size, or None when it is 1 already (nothing left to shrink)."""
    for name in ("n_positions", "batch_size"):
        size = getattr(sampler, name, None)
        if isinstance(size, int):
            if size <= 1:
                return None
            setattr(sampler, name, size // 2)
            return size // 2
    return None


def out_of_memory_backoff(stage_name: str, sampler) -> bool:
    """Shrink the batch after an out-of-memory error, with a warning; False
    when the batch cannot shrink (the caller raises the error again)."""
    new = shrink_batch(sampler)
    if new is None:
        return False
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    warnings.warn(
        f"Out of GPU memory in stage {stage_name!r}: retrying with batches of "
        f"{new} (pass positions_per_batch={new} or batch_size={new} to start "
        "there)",
        stacklevel=3,
    )
    return True
